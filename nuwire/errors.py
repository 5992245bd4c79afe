"""The one error type of the wire formats.

Every malformed input raises :class:`ProtocolError`, naming the field and the expected and actual
values, so a log line or an operator can tell which byte was wrong::

    ProtocolError                 any malformed frame, record, image or illegal protocol step
     ├── TransitionError          a command that the session's current state does not allow
     └── StaleReply               a well-formed answer to another request (a late answer)
"""

from __future__ import annotations


def _show(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"0x{value:X}" if value > 0xFF else str(value)
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex() if len(value) <= 16 else f"{len(value)} bytes"
    return str(value)


class ProtocolError(ValueError):
    """Malformed input: ``field`` names what was wrong; ``expected`` and ``actual`` say how."""

    def __init__(self, field: str, expected: object, actual: object, detail: str = "") -> None:
        self.field = field
        self.expected = expected
        self.actual = actual
        self.detail = detail
        message = f"{field}: expected {_show(expected)}, got {_show(actual)}"
        super().__init__(f"{message} ({detail})" if detail else message)


class TransitionError(ProtocolError):
    """A command that the session's current state does not allow; the session is unchanged."""


class StaleReply(ProtocolError):
    """A well-formed answer that belongs to another request (a late answer): keep listening."""
