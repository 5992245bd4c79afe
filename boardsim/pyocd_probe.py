"""pyOCD probe plugin ``boardsim``: a simulated NuLink3 reached over a Unix socket.

Everything above the USB interface is pyOCD's own: DAPAccessCMSISDAP, CMSISDAPProbe, the debug port
and AP code, the built-in m2354kjfae target and its flash loader. Only the USB transport is replaced by
a socket to ``boardsim serve``. Select a probe with the unique id ``boardsim:<serial>``::

    pyocd list
    pyocd commander -u boardsim:NULINK3-SIM-01 -t m2354kjfae -c "read32 0x40000000"
    pyocd load -u boardsim:NULINK3-SIM-01 -t m2354kjfae bootloader.bin --base-address 0
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from pyocd.core.plugin import Plugin
from pyocd.probe.cmsis_dap_probe import CMSISDAPProbe
from pyocd.probe.pydapaccess.dap_access_api import DAPAccessIntf
from pyocd.probe.pydapaccess.dap_access_cmsis_dap import DAPAccessCMSISDAP
from pyocd.probe.pydapaccess.interface.interface import Interface

from boardsim.links import FRAME, frame, published_probes

USB_TIMEOUT_S = 10.0
NUVOTON_VID, NULINK3_PID = 0x0416, 0x2008


class SocketInterface(Interface):  # type: ignore[misc]  # pyOCD is untyped
    """pyOCD's USB interface contract, carried over a Unix socket."""

    def __init__(self, path: Path, serial: str) -> None:
        super().__init__()
        self.path = path
        self.serial_number = serial
        self.vendor_name = "Nuvoton"
        self.product_name = "Nu-Link3 (boardsim)"
        self.vid, self.pid = NUVOTON_VID, NULINK3_PID
        self.packet_size = 512
        self._socket: socket.socket | None = None

    @property
    def is_bulk(self) -> bool:
        return True

    def get_serial_number(self) -> str:
        return self.serial_number

    def open(self) -> None:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.settimeout(USB_TIMEOUT_S)
        try:
            connection.connect(str(self.path))
        except OSError as error:
            connection.close()
            raise DAPAccessIntf.DeviceError(f"probe {self.serial_number} not reachable: {error}") from error
        self._socket = connection

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def write(self, data: Any) -> None:
        try:
            self._connected().sendall(frame(bytes(data)))
        except OSError as error:
            raise DAPAccessIntf.DeviceError(f"probe {self.serial_number} unplugged: {error}") from error

    def read(self) -> bytearray:
        try:
            (length,) = FRAME.unpack(self._receive(FRAME.size))
            packet = self._receive(length)
        except OSError as error:
            raise DAPAccessIntf.DeviceError(f"probe {self.serial_number} unplugged: {error}") from error
        return bytearray(packet.ljust(self.packet_size, b"\0"))

    def _connected(self) -> socket.socket:
        if self._socket is None:
            raise DAPAccessIntf.DeviceError(f"probe {self.serial_number} is not open")
        return self._socket

    def _receive(self, count: int) -> bytes:
        data = bytearray()
        while len(data) < count:
            chunk = self._connected().recv(count - len(data))
            if not chunk:
                raise ConnectionResetError("the probe closed the connection")
            data += chunk
        return bytes(data)


class BoardsimProbe(CMSISDAPProbe):  # type: ignore[misc]  # pyOCD is untyped
    """pyOCD's CMSISDAPProbe, unchanged, over a :class:`SocketInterface`."""

    @classmethod
    def get_all_connected_probes(cls, unique_id: str | None = None, is_explicit: bool = False) -> list[Any]:
        return [
            cls(DAPAccessCMSISDAP(None, interface=SocketInterface(path, serial)))
            for serial, path in published_probes().items()
        ]

    @classmethod
    def get_probe_with_id(cls, unique_id: str, is_explicit: bool = False) -> Any:
        path = published_probes().get(unique_id)
        if path is None:
            return None
        return cls(DAPAccessCMSISDAP(None, interface=SocketInterface(path, unique_id)))


class BoardsimProbePlugin(Plugin):  # type: ignore[misc]  # pyOCD is untyped
    @property
    def name(self) -> str:
        return "boardsim"

    @property
    def description(self) -> str:
        return "Simulated Nu-Link3 probes served by `boardsim serve`"

    def load(self) -> type[BoardsimProbe]:
        return BoardsimProbe
