"""The provisioning sequence as one table (numbers as in ../shared/DESIGN.md, used in logs,
journal and reports).

Each step is data: its class (which ``defaults`` of stations.yaml it takes: retries, timeout_s),
whether it is irreversible (the executor runs its UID check first, in every attempt), its group
(steps that share one SecureISP session: a pause or a stop waits before the group, never inside
it, and the group retries as one) and its deadline: one attempt may take ``deadline`` times its
class's ``timeout_s`` (``anyio.fail_after``), after which the attempt is a retryable failure.
The UART group has no step deadline: each packet has its own (``uart.timeout_s``), since a
download's length depends on the image and the baud rate.
"""

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
    group: str | None = None
    deadline: float | None = 1.0


SESSION = "secureisp"
"""The group of steps 8-13: one SecureISP session (see isp_steps.py)."""
STEPS: tuple[Step, ...] = (
    Step(1, "read UID and OBJ_ID", StepClass.DEBUG),
    Step(2, "bootloader key and signed bootloader", StepClass.CLOUD),
    Step(3, "write bootloader key into OTP", StepClass.DEBUG, irreversible=True),
    Step(4, "program signed bootloader", StepClass.DEBUG, deadline=2.0),
    Step(5, "reset", StepClass.DEBUG, deadline=2.0),
    Step(6, "lock debug port", StepClass.DEBUG, irreversible=True, deadline=2.0),
    Step(7, "application key", StepClass.CLOUD),
    Step(
        8,
        "write application key hash into OTP",
        StepClass.UART,
        irreversible=True,
        group=SESSION,
        deadline=None,
    ),
    Step(9, "reboot into bootloader", StepClass.UART, group=SESSION, deadline=None),
    Step(10, "ECDH session key", StepClass.UART, group=SESSION, deadline=None),
    Step(11, "signed application", StepClass.CLOUD, group=SESSION),
    Step(12, "encrypted application download", StepClass.UART, group=SESSION, deadline=None),
    Step(13, "verify, boot and report", StepClass.CHECK, group=SESSION, deadline=None),
)
BY_NUMBER = {step.number: step for step in STEPS}


def checked(number: int, before: object) -> Step:
    """Step ``number`` from the table; an irreversible one refuses to run without its UID check."""
    step = BY_NUMBER[number]
    if step.irreversible and before is None:
        raise TypeError(f"step {number} ({step.name}) is irreversible: it runs only after its UID check")
    return step
