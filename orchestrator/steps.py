"""The provisioning sequence as one table (numbers as in ../shared/DESIGN.md, used in logs,
journal and reports)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class StepClass(Enum):
    DEBUG = "debug"
    CLOUD = "cloud"
    UART = "uart"
    CHECK = "check"


@dataclass(frozen=True, slots=True)
class Step:
    number: int
    name: str
    kind: StepClass
    irreversible: bool = False


STEPS: tuple[Step, ...] = (
    Step(1, "read UID and OBJ_ID", StepClass.DEBUG),
    Step(2, "bootloader key and signed bootloader", StepClass.CLOUD),
    Step(3, "write bootloader key into OTP", StepClass.DEBUG, irreversible=True),
    Step(4, "program signed bootloader", StepClass.DEBUG),
    Step(5, "reset", StepClass.DEBUG),
    Step(6, "lock debug port", StepClass.DEBUG, irreversible=True),
    Step(7, "application key", StepClass.CLOUD),
    Step(8, "write application key hash into OTP", StepClass.UART, irreversible=True),
    Step(9, "reboot into bootloader", StepClass.UART),
    Step(10, "ECDH session key", StepClass.UART),
    Step(11, "signed application", StepClass.CLOUD),
    Step(12, "encrypted application download", StepClass.UART),
    Step(13, "verify, boot and report", StepClass.CHECK),
)
BY_NUMBER = {step.number: step for step in STEPS}


def checked(number: int, before: object) -> Step:
    """Step ``number`` from the table; an irreversible one refuses to run without its UID check."""
    step = BY_NUMBER[number]
    if step.irreversible and before is None:
        raise TypeError(f"step {number} ({step.name}) is irreversible: it runs only after its UID check")
    return step
