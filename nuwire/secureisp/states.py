"""The host's SecureISP session as one table: what may be sent in which phase.

Nuvoton's target runs three stages (SecureISP.c ProcessConnect, ProcessECDH, ProcessCommands): CONNECT,
then the two ECDH rounds, then commands. A command missing from the table for the current phase is
illegal: the host refuses to send it (TransitionError) and nothing changes. A transition happens
when the target answers with STS_OK, or at once for the requests nothing answers (RESET, and the
vendor REBOOT_TO_BOOTLOADER): the target resets. Nuvoton's target ends SecureISP after a damaged
or unknown request, a refused key and DISCONNECT, and is silent until the chip is reset: the host
then sits in FAILED or CLOSED, which only a reset of the board and RESYNC leave. RESYNC is legal in
every phase and returns to IDLE. docs/protocols.md shows this table as a diagram made by
:func:`mermaid`.
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
    CLOSED = "closed"
    FAILED = "failed"


class Role(Enum):
    """Who answers on the target side: the ROM's SecureISP, or the bootloader's."""

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

_QUERIES = (
    Command.GET_ID,
    Command.GET_VERSION,
    Command.READ_CONFIG,
    Command.ERASE,
    Command.WRITE,
    Command.VENDOR,
)
_COMMANDS: tuple[tuple[Phase, Command, Phase], ...] = (
    *((phase, command, phase) for phase in (Phase.READY, Phase.MASS_WRITE) for command in _QUERIES),
    (Phase.READY, Command.SET_MASS_WRITE, Phase.MASS_WRITE),
    (Phase.MASS_WRITE, Command.SET_MASS_WRITE, Phase.MASS_WRITE),
    (Phase.MASS_WRITE, Command.MASS_WRITE, Phase.MASS_WRITE),
    *((phase, Command.RESET, Phase.CLOSED) for phase in (Phase.READY, Phase.MASS_WRITE)),
    *((phase, Command.DISCONNECT, Phase.CLOSED) for phase in (Phase.READY, Phase.MASS_WRITE)),
)


def _table() -> dict[tuple[Phase, Command], Phase]:
    table = {(phase, command): after for phase, command, after in KEY_EXCHANGE + _COMMANDS}
    for phase in Phase:
        table[(phase, Command.RESYNC)] = Phase.IDLE
    return table


TRANSITIONS: dict[tuple[Phase, Command], Phase] = _table()


def next_phase(phase: Phase, command: int) -> Phase | None:
    """The phase after an OK answer to ``command``, or None when the command is illegal now."""
    try:
        return TRANSITIONS.get((phase, Command(command)))
    except ValueError:
        return None


def mermaid() -> str:
    """The table as a Mermaid state diagram (RESYNC edges drawn once)."""
    lines = ["stateDiagram-v2", "    [*] --> idle"]
    for (phase, command), after in TRANSITIONS.items():
        if command is not Command.RESYNC:
            lines.append(f"    {phase.value} --> {after.value}: {command.name}")
    lines.append("    failed --> idle: RESYNC after a reset")
    lines.append("    closed --> idle: RESYNC after a reset")
    lines.append("    note right of failed: a refused key exchange, a damaged or unknown request")
    return "\n".join(lines)
