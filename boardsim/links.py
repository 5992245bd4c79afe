"""Where the simulated probes are found, and how a CMSIS-DAP packet is framed on their socket.

Each probe is a Unix socket carrying CMSIS-DAP packets, each as a u16 little-endian length then the
packet. ``boardsim serve`` makes STATE_DIR/probes/<serial>.sock and links it into the probe directory
(``$BOARDSIM_PROBES``, else /tmp/boardsim-<user id>/probes), where the pyOCD plugin looks.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

FRAME = struct.Struct("<H")


def probe_directory() -> Path:
    configured = os.environ.get("BOARDSIM_PROBES")
    return Path(configured) if configured else Path(f"/tmp/boardsim-{os.getuid()}/probes")  # noqa: S108  # per-user, made 0700


def published_probes() -> dict[str, Path]:
    """Serial number -> socket path of every probe a running ``boardsim serve`` offers."""
    directory = probe_directory()
    if not directory.is_dir():
        return {}
    return {path.stem: path for path in sorted(directory.glob("*.sock")) if path.exists()}


def frame(packet: bytes) -> bytes:
    return FRAME.pack(len(packet)) + packet
