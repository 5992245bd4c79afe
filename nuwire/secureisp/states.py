"""The SecureISP session as one table, shared by host and target, ROM and bootloader.

A transition happens when the target answers a command with STS_OK. A command missing from the
table for the current phase is illegal: the host refuses to send it (TransitionError), the target
answers ERR_CMD_INVALID, and neither changes. A refusal during the key exchange moves both sides to
FAILED, which only RESYNC leaves. RESYNC is legal in every phase and returns to IDLE.
docs/protocols.md shows this table as a diagram made by :func:`mermaid`.
"""

from __future__ import annotations

from enum import Enum

from nuwire.secureisp.commands import Command


class Phase(Enum):
    IDLE = "idle"
    CONNECTED = "connected"
    STATIC_X_SENT = "static_x_sent"
    STATIC_KEY = "static_key"
    STATIC_X_CHECKED = "static_x_checked"
    AUTHENTICATED = "authenticated"
    RANDOM_X_SENT = "random_x_sent"
    RANDOM_SENT = "random_sent"
    RANDOM_X_RECEIVED = "random_x_received"
    READY = "ready"
    MASS_WRITE = "mass_write"
    DOWNLOAD = "download"
    CLOSED = "closed"
    FAILED = "failed"


class Role(Enum):
    """Who answers on the target side: the ROM's SecureISP, or the bootloader's download."""

    ROM = "rom"
    BOOTLOADER = "bootloader"


KEY_EXCHANGE: tuple[tuple[Phase, Command, Phase], ...] = (
    (Phase.IDLE, Command.CONNECT, Phase.CONNECTED),
    (Phase.CONNECTED, Command.ECDH_PUB0, Phase.STATIC_X_SENT),
    (Phase.STATIC_X_SENT, Command.ECDH_PUB1, Phase.STATIC_KEY),
    (Phase.STATIC_KEY, Command.ECDH_GET_PUB0, Phase.STATIC_X_CHECKED),
    (Phase.STATIC_X_CHECKED, Command.ECDH_GET_PUB1, Phase.AUTHENTICATED),
    (Phase.AUTHENTICATED, Command.ECDH_RAND_PUB0, Phase.RANDOM_X_SENT),
    (Phase.RANDOM_X_SENT, Command.ECDH_RAND_PUB1, Phase.RANDOM_SENT),
    (Phase.RANDOM_SENT, Command.ECDH_GET_RAND_PUB0, Phase.RANDOM_X_RECEIVED),
    (Phase.RANDOM_X_RECEIVED, Command.ECDH_GET_RAND_PUB1, Phase.READY),
)
KEY_EXCHANGE_PHASES = frozenset(phase for phase, _, _ in KEY_EXCHANGE) - {Phase.IDLE}

_ROM_QUERIES = (
    Command.GET_ID,
    Command.GET_VERSION,
    Command.READ_OTP,
    Command.WRITE_OTP,
    Command.ERASE,
    Command.WRITE,
)
_ROM: tuple[tuple[Phase, Command, Phase], ...] = (
    *((phase, command, phase) for phase in (Phase.READY, Phase.MASS_WRITE) for command in _ROM_QUERIES),
    (Phase.READY, Command.SET_MASS_WRITE, Phase.MASS_WRITE),
    (Phase.MASS_WRITE, Command.SET_MASS_WRITE, Phase.MASS_WRITE),
    (Phase.MASS_WRITE, Command.MASS_WRITE, Phase.MASS_WRITE),
    (Phase.READY, Command.RESET, Phase.CLOSED),
    (Phase.MASS_WRITE, Command.RESET, Phase.CLOSED),
    (Phase.READY, Command.REBOOT_TO_BOOTLOADER, Phase.CLOSED),
    (Phase.MASS_WRITE, Command.REBOOT_TO_BOOTLOADER, Phase.CLOSED),
)
_BOOTLOADER: tuple[tuple[Phase, Command, Phase], ...] = (
    (Phase.READY, Command.GET_ID, Phase.READY),
    (Phase.READY, Command.GET_VERSION, Phase.READY),
    (Phase.READY, Command.DL_BEGIN, Phase.DOWNLOAD),
    (Phase.DOWNLOAD, Command.DL_BEGIN, Phase.DOWNLOAD),
    (Phase.DOWNLOAD, Command.MASS_WRITE, Phase.DOWNLOAD),
    (Phase.DOWNLOAD, Command.DL_FINISH, Phase.CLOSED),
    (Phase.READY, Command.RESET, Phase.CLOSED),
    (Phase.DOWNLOAD, Command.RESET, Phase.CLOSED),
)


def _table(role: Role) -> dict[tuple[Phase, Command], Phase]:
    rows = KEY_EXCHANGE + (_ROM if role is Role.ROM else _BOOTLOADER)
    table = {(phase, command): after for phase, command, after in rows}
    for phase in Phase:
        table[(phase, Command.RESYNC)] = Phase.IDLE
        if phase not in (Phase.IDLE, Phase.CLOSED, Phase.FAILED):
            table[(phase, Command.DISCONNECT)] = Phase.IDLE
    return table


TRANSITIONS: dict[Role, dict[tuple[Phase, Command], Phase]] = {role: _table(role) for role in Role}


def next_phase(role: Role, phase: Phase, command: int) -> Phase | None:
    """The phase after an OK answer to ``command``, or None when the command is illegal now."""
    try:
        return TRANSITIONS[role].get((phase, Command(command)))
    except ValueError:
        return None


def mermaid(role: Role) -> str:
    """The role's table as a Mermaid state diagram (RESYNC and DISCONNECT edges left out)."""
    lines = ["stateDiagram-v2", "    [*] --> idle"]
    for (phase, command), after in TRANSITIONS[role].items():
        if command in (Command.RESYNC, Command.DISCONNECT):
            continue
        lines.append(f"    {phase.value} --> {after.value}: {command.name}")
    lines.append("    failed --> idle: RESYNC")
    lines.append("    closed --> [*]")
    return "\n".join(lines)
