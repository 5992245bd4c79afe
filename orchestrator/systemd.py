"""systemd's notification protocol (sd_notify), for a Type=notify unit with WatchdogSec.

READY=1 once every station has started, RELOADING=1 around a reload, STOPPING=1 on the way out, and
WATCHDOG=1 every half watchdog period, sent from the event loop and only while every station makes
progress: a blocked loop or a stuck station stops the pings and systemd restarts the daemon, which
resumes from the journal. Without NOTIFY_SOCKET (not under systemd) every call does nothing.
"""

from __future__ import annotations

import os
import socket


def _address() -> str | None:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return None
    return "\0" + path[1:] if path.startswith("@") else path  # "@": Linux abstract namespace


def notify(*fields: str) -> bool:
    """Send ``KEY=value`` fields in one datagram; False when there is no socket to send to."""
    address = _address()
    if address is None:
        return False
    # Never blocking: a reader that stopped reading must not stop the event loop (the message is
    # dropped instead; a watchdog ping missed that way is what systemd would act on anyway).
    with socket.socket(
        socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
    ) as sock:
        try:
            sock.sendto("\n".join(fields).encode(), address)
        except OSError:  # BlockingIOError when the queue is full; gone or refused otherwise
            return False
    return True


def watchdog_period() -> float | None:
    """The watchdog period in seconds, when systemd set one for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 1_000_000
    except ValueError:
        return None
