"""structlog JSON lines to stdout and/or a file; context bound per station task; nothing secret."""

from __future__ import annotations

import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, TextIO

import structlog

SECRET_WORDS = ("private", "secret", "session_key", "pin", "password", "aes")


def redact(_: object, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Drop any field whose name says it is secret: a guard on top of never logging one."""
    for name in list(event):
        if any(word in name.lower() for word in SECRET_WORDS):
            event[name] = "<redacted>"
    return event


class _Tee:
    def __init__(self, streams: list[TextIO]) -> None:
        self.streams = streams

    def write(self, text: str) -> None:
        for stream in self.streams:
            stream.write(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


def configure(log_file: Path | None, *, stdout: bool = True) -> None:
    streams: list[TextIO] = [sys.stdout] if stdout else []
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        streams.append(log_file.open("a", buffering=1))  # lives as long as the process
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            structlog.processors.format_exc_info,  # the traceback as text: never local variables
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(_Tee(streams)),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
