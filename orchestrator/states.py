"""A station's state as one table: which event may move it where (as nuwire/secureisp/states.py
does for a SecureISP session).

The station (orchestrator/station.py) changes state only by :meth:`StationMachine.fire`; an event
missing from the table for the current state raises :class:`IllegalTransition` and changes
nothing. ``paused`` remembers the state it was entered from and ``resume`` goes back there. The
state names are what the status API, the dashboard and /metrics show. docs/orchestrator.md shows
this table as a diagram made by :func:`mermaid` (tests/test_docs.py keeps it in step).
"""

from __future__ import annotations

from enum import Enum


class State(Enum):
    STARTING = "starting"  # its probe worker and first look at the fixture are on the way
    IDLE = "idle"  # the board was swapped out: nothing looked at since
    WAITING = "waiting"  # no board in the fixture
    BLOCKED = "blocked"  # preflight failed: the reason is the status's last_error
    PROVISIONING = "provisioning"
    PAUSED = "paused"
    STOPPED = "stopped"  # the board is parked at a safe point, its journal open
    PASS = "pass"  # noqa: S105  # an outcome, not a password
    FAIL = "fail"
    QUARANTINE = "quarantine"
    CRASHED = "crashed"  # a bug escaped the station's task: it starts again in 5 s, from here


class Event(Enum):
    BLOCKED = "blocked"  # a preflight check failed, or a journal write did
    EMPTY = "empty"  # nothing in the fixture (a result stays shown until the next board)
    FOUND = "found"  # a board to provision or resume
    PASSED = "passed"  # a board ended PASS, or a finished board is shown again
    FAILED = "failed"
    QUARANTINED = "quarantined"
    SWAPPED = "swapped"  # not the board being provisioned: touch nothing
    PARKED = "parked"  # the station stops: the board waits at a safe point
    PAUSE = "pause"
    RESUME = "resume"
    CRASHED = "crashed"


RESULTS = (State.PASS, State.FAIL, State.QUARANTINE)
BETWEEN = (State.STARTING, State.IDLE, State.WAITING, State.BLOCKED, *RESULTS, State.CRASHED)
"""States between boards: a station in one of them has no board open."""
_OUTCOME = {Event.PASSED: State.PASS, Event.FAILED: State.FAIL, Event.QUARANTINED: State.QUARANTINE}


def _table() -> dict[tuple[State, Event], State]:
    table: dict[tuple[State, Event], State] = {}
    for state in BETWEEN:
        table[(state, Event.BLOCKED)] = State.BLOCKED
        table[(state, Event.EMPTY)] = state if state in RESULTS else State.WAITING
        table[(state, Event.FOUND)] = State.PROVISIONING
        table.update({(state, event): result for event, result in _OUTCOME.items()})  # shown again
        table[(state, Event.PAUSE)] = State.PAUSED
    table.update({(State.PROVISIONING, event): result for event, result in _OUTCOME.items()})
    table[(State.PROVISIONING, Event.BLOCKED)] = State.BLOCKED  # a journal write failed: board open
    table[(State.PROVISIONING, Event.SWAPPED)] = State.IDLE
    table[(State.PROVISIONING, Event.PARKED)] = State.STOPPED
    table[(State.PROVISIONING, Event.PAUSE)] = State.PAUSED
    for state in State:
        table[(state, Event.CRASHED)] = State.CRASHED
    return table


TRANSITIONS: dict[tuple[State, Event], State] = _table()
PAUSABLE = tuple(state for state in State if (state, Event.PAUSE) in TRANSITIONS)


class IllegalTransition(RuntimeError):
    """An event the table does not allow in the current state: nothing changed."""


class StationMachine:
    def __init__(self) -> None:
        self.state = State.STARTING
        self._before_pause: State | None = None

    def __repr__(self) -> str:
        return f"<StationMachine {self.state.value}>"

    def fire(self, event: Event) -> State:
        """Move by ``event`` and return the new state, or raise IllegalTransition."""
        if event is Event.RESUME and self.state is State.PAUSED and self._before_pause is not None:
            self.state, self._before_pause = self._before_pause, None
            return self.state
        after = TRANSITIONS.get((self.state, event))
        if after is None:
            raise IllegalTransition(f"station: {event.value} is not allowed while {self.state.value}")
        if after is State.PAUSED:
            self._before_pause = self.state
        self.state = after
        return after


def mermaid() -> str:
    """The table as a Mermaid state diagram (``crashed`` drawn once, not from every state)."""
    lines = ["stateDiagram-v2", "    [*] --> starting"]
    for (state, event), after in TRANSITIONS.items():
        if event is not Event.CRASHED and after is not state:
            lines.append(f"    {state.value} --> {after.value}: {event.value}")
    lines.extend(f"    paused --> {state.value}: resume (to where it paused)" for state in PAUSABLE)
    lines.append("    note right of crashed: from every state, when a bug escapes the station's task")
    return "\n".join(lines)
