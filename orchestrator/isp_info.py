"""``orchestrator isp-info``: who answers on a UART, over SecureISP, writing nothing.

RESYNC, CONNECT, both ECDH rounds (the target's static key checked as the profile's firmware sends
it), GET_ID and GET_VERSION. A line's first check of a new UART: it needs no probe, cloud or journal.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import anyio

from nuwire.errors import ProtocolError
from nuwire.keys import public_key_from_raw
from nuwire.pem import load_private_key
from nuwire.profiles import profile
from nuwire.secureisp import messages as m
from nuwire.secureisp.session import HostSession
from nuwire.secureisp.states import Role
from orchestrator.errors import UartFailure
from orchestrator.uart import UartLink


async def isp_info(  # noqa: PLR0917  # the command line's six options
    device: str, baud: int, profile_name: str, station_key_pem: str, target_key: str | None, answer_s: float
) -> dict[str, object]:
    target = profile(profile_name)
    raw_key = bytes.fromhex(target_key) if target_key else target.firmware.published_key
    session = HostSession(
        Role.ROM,
        load_private_key(Path(station_key_pem)),
        public_key_from_raw(raw_key, "target static key"),
        firmware=target.firmware,
    )
    async with UartLink(device, baud, timeout=answer_s) as link:
        await link.open_session(session)
        ident = await link.send(session, m.GetId())
        version = await link.send(session, m.GetVersion())
    if ident is None or not ident.ok or version is None or not version.ok:
        raise UartFailure(f"{device}: GET_ID or GET_VERSION refused")
    device_id = m.DeviceId.from_payload(ident.payload)
    return {
        "device": device,
        "profile": target.name,
        "firmware": target.firmware.name,
        "pdid": f"0x{device_id.pdid:08X}",
        "uid": [f"0x{word:08X}" for word in device_id.uid],
        "ucid": [f"0x{word:08X}" for word in device_id.ucid],
        "cid": f"0x{device_id.cid:02X}",
        "version": f"0x{m.single_word(version.payload, 'GET_VERSION'):08X}",
    }


def isp_info_command(args: argparse.Namespace) -> int:
    try:
        info = anyio.run(
            isp_info, args.uart, args.baud, args.profile, str(args.station_key), args.target_key, args.timeout
        )
    except (UartFailure, ProtocolError, OSError, ValueError) as error:
        print(f"orchestrator isp-info: {error}".splitlines()[0], file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2))
    return 0
