"""Waits to a deadline to the microsecond: the simulator's hardware timing (a 0.25 ms USB round
trip, 1.6 ms for a SecureISP packet at 921600 baud) would otherwise be rounded up to the event
loop's whole millisecond (its selector waits in ms: a 0.25 ms wait cost 1.1 ms).

A Linux timerfd armed at the deadline (CLOCK_MONOTONIC, the clock of ``time.monotonic()`` and of
the asyncio loop) becomes readable when the kernel's high-resolution timer fires; the task waits
for that as for any file. Elsewhere (no timerfd) it falls back to ``anyio.sleep``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import time

import anyio

CLOCK_MONOTONIC, TFD_NONBLOCK, TFD_CLOEXEC, TFD_TIMER_ABSTIME = 1, os.O_NONBLOCK, os.O_CLOEXEC, 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.timerfd_settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    except (OSError, AttributeError):  # not Linux
        return None
    return libc


_LIBC = _libc()


class Deadline:
    """One task's precise waits (one timerfd; not shared between tasks)."""

    def __init__(self) -> None:
        self._fd = -1 if _LIBC is None else _LIBC.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)

    def __repr__(self) -> str:
        return f"<Deadline fd={self._fd}>"

    async def wait_until(self, deadline: float) -> None:
        """Return at ``deadline`` (``time.monotonic()`` seconds), not before, and not a millisecond late."""
        delay = deadline - time.monotonic()
        if delay <= 0:
            return
        if self._fd < 0 or _LIBC is None:
            await anyio.sleep(delay)
            return
        with contextlib.suppress(BlockingIOError):
            os.read(self._fd, 8)  # an expiry left by a wait that was cancelled
        seconds = int(deadline)
        value = _Itimerspec(_Timespec(0, 0), _Timespec(seconds, int((deadline - seconds) * 1e9)))
        if _LIBC.timerfd_settime(self._fd, TFD_TIMER_ABSTIME, ctypes.byref(value), None) != 0:
            await anyio.sleep(delay)  # pragma: no cover - the kernel refused a valid time
            return
        await anyio.wait_readable(self._fd)
        with contextlib.suppress(BlockingIOError):
            os.read(self._fd, 8)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
