"""The one OTP planner of steps 3 and 8: ours is done, blank is written, anything else is read
again, and only the same foreign value read twice is QUARANTINE (invariants 1 and 7)."""

from __future__ import annotations

import anyio
import pytest

from orchestrator import otp
from orchestrator.errors import Quarantine, UartFailure

OURS = {8: (0x11111111, 0x22222222), 9: (0x33333333, 0x44444444)}
BLANK = (otp.ERASED, otp.ERASED)


def reads(*answers: dict[int, otp.Value]) -> otp.Read:
    """A board whose OTP reads give these answers in turn (the last one from then on)."""
    seen = list(answers)

    async def read(entries: list[int]) -> dict[int, otp.Value]:
        answer = seen.pop(0) if len(seen) > 1 else seen[0]
        return {entry: answer[entry] for entry in entries}

    return read


def plan(read: otp.Read) -> dict[int, otp.Value]:
    return anyio.run(otp.plan, OURS, read, UartFailure)


def test_ours_is_done_and_blank_words_are_written() -> None:
    assert plan(reads(OURS)) == {}
    half = {8: OURS[8], 9: (0x33333333, otp.ERASED)}
    assert plan(reads(half)) == {9: (0x33333333, otp.ERASED)}
    assert plan(reads({8: BLANK, 9: BLANK})) == {8: BLANK, 9: BLANK}


def test_a_foreign_value_read_twice_is_quarantine() -> None:
    foreign = {8: OURS[8], 9: (0xDEADBEEF, otp.ERASED)}
    with pytest.raises(Quarantine, match=r"OTP entry 9 holds \(0xDEADBEEF, 0xFFFFFFFF\)"):
        plan(reads(foreign))


def test_a_foreign_value_read_once_is_a_doubt_never_a_verdict() -> None:
    flaky = {8: OURS[8], 9: (0x33333330, otp.ERASED)}  # a bit lost on the way, once
    with pytest.raises(UartFailure, match="OTP entry 9 read") as doubt:
        plan(reads(flaky, {8: OURS[8], 9: BLANK}))
    assert doubt.value.retryable


def test_confirm_after_the_writes() -> None:
    anyio.run(otp.confirm, OURS, reads(OURS), UartFailure)
    foreign = {8: OURS[8], 9: (0x33333333, 0x00000001)}
    with pytest.raises(Quarantine, match=r"OTP entry 9 holds"):
        anyio.run(otp.confirm, OURS, reads(foreign), UartFailure)


def test_a_write_that_did_not_take_is_a_retry_never_quarantine() -> None:
    """A word still blank after its write (a brown-out, a transfer lost): the chaos run once
    quarantined a blank board this way; a blank word can be written again."""
    for after in ({8: OURS[8], 9: BLANK}, {8: OURS[8], 9: (0x33333333, otp.ERASED)}):
        with pytest.raises(UartFailure, match=r"entries \[9\] still blank") as doubt:
            anyio.run(otp.confirm, OURS, reads(after), UartFailure)
        assert doubt.value.retryable
