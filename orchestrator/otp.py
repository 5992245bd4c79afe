"""One OTP planner for step 3 (OTP 0..7 over SWD) and step 8 (OTP 8..11 over SecureISP).

OTP cannot be erased (../shared/DESIGN.md invariants 1 and 7): an entry that already holds our
value is done, a blank word where ours belongs is written (after its intent is journaled, by the
caller), and a word that is neither is read again: the same value twice is QUARANTINE, two
different values are a doubtful read (the caller's retryable ``doubt``), never a verdict.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from orchestrator.errors import ProvisioningError, Quarantine

ERASED = 0xFFFFFFFF
Value = tuple[int, int]
Read = Callable[[list[int]], Awaitable[dict[int, Value]]]


def _show(value: Value) -> str:
    return f"(0x{value[0]:08X}, 0x{value[1]:08X})"


async def plan(
    wanted: dict[int, Value], read: Read, doubt: Callable[[str], ProvisioningError]
) -> dict[int, Value]:
    """The entries still to write, each with what it holds now (ours or blank, word by word)."""
    found = await read(list(wanted))
    foreign = [
        e
        for e, want in wanted.items()
        if any(h not in (w, ERASED) for h, w in zip(found[e], want, strict=True))
    ]
    if foreign:
        again = await read(foreign)  # evidence: the same value read twice
        for entry in foreign:
            if again[entry] != found[entry]:
                raise doubt(f"OTP entry {entry} read {_show(found[entry])}, then {_show(again[entry])}")
        entry = foreign[0]
        raise Quarantine(f"OTP entry {entry} holds {_show(found[entry])}, expected {_show(wanted[entry])}")
    return {entry: found[entry] for entry, want in wanted.items() if found[entry] != want}


async def confirm(wanted: dict[int, Value], read: Read, doubt: Callable[[str], ProvisioningError]) -> None:
    """After the writes: every entry reads back as ours. A foreign value (read twice) is QUARANTINE;
    a word still blank is a write that did not take (a brown-out, a lost transfer): the caller's
    retryable ``doubt``, and the retry writes it again (a blank OTP word can still be written)."""
    left = await plan(wanted, read, doubt)
    if left:
        raise doubt(f"OTP entries {sorted(left)} still blank after the write")
