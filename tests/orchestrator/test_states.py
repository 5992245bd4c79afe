"""The station's state table and its error tree: what they allow, what they refuse, and that the
drawings in the docs are the code's own."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import errors
from orchestrator.states import (
    BETWEEN,
    PAUSABLE,
    TRANSITIONS,
    Event,
    IllegalTransition,
    State,
    StationMachine,
)
from orchestrator.steps import STEPS, checked


def test_a_board_goes_from_found_to_its_outcome() -> None:
    machine = StationMachine()
    for event, state in [
        (Event.EMPTY, State.WAITING),
        (Event.FOUND, State.PROVISIONING),
        (Event.PASSED, State.PASS),
        (Event.EMPTY, State.PASS),  # the result stays shown until the next board
        (Event.FOUND, State.PROVISIONING),
        (Event.PARKED, State.STOPPED),
    ]:
        assert machine.fire(event) is state


@pytest.mark.parametrize("state", PAUSABLE)
def test_resume_goes_back_to_where_the_station_paused(state: State) -> None:
    machine = StationMachine()
    machine.state = state
    assert machine.fire(Event.PAUSE) is State.PAUSED
    assert machine.fire(Event.RESUME) is state


def test_an_illegal_event_raises_and_changes_nothing() -> None:
    machine = StationMachine()
    machine.fire(Event.FOUND)
    with pytest.raises(IllegalTransition, match="found is not allowed while provisioning"):
        machine.fire(Event.FOUND)  # a second board while one is open
    assert machine.fire(Event.PAUSE) is State.PAUSED  # and the refusal left it provisioning
    assert machine.fire(Event.RESUME) is State.PROVISIONING
    stopped = machine.fire(Event.PARKED)
    assert stopped is State.STOPPED
    for event in (Event.PASSED, Event.FOUND, Event.RESUME, Event.SWAPPED):
        with pytest.raises(IllegalTransition):
            machine.fire(event)  # a stopped station does nothing more
        assert machine.state is stopped


def test_only_a_station_with_a_board_can_swap_park_or_end_it_fresh() -> None:
    for event in (Event.SWAPPED, Event.PARKED):
        froms = {state for (state, e) in TRANSITIONS if e is event}
        assert froms == {State.PROVISIONING}
    assert all((state, Event.FOUND) not in TRANSITIONS for state in State if state not in BETWEEN)
    assert all((state, Event.CRASHED) in TRANSITIONS for state in State)


def _drawn(block: str) -> list[tuple[int, str]]:
    """(depth, class name) of each line of a tree drawn as in orchestrator/errors.py."""
    lines = block.strip("\n").splitlines()
    return [((len(line) - len(line.lstrip(" │├└─"))) // 5, line.lstrip(" │├└─").split()[0]) for line in lines]


def _walk(cls: type[Exception], depth: int = 0) -> list[tuple[int, str]]:
    subclasses: list[type[Exception]] = cls.__subclasses__()
    return [(depth, cls.__name__)] + [row for sub in subclasses for row in _walk(sub, depth + 1)]


def test_the_error_tree_is_drawn_as_the_classes_are() -> None:
    drawing = (errors.__doc__ or "").split("::\n\n", 1)[1].split("\n\n", 1)[0]
    assert _drawn(drawing) == _walk(errors.ProvisioningError)
    page = (Path(__file__).parents[2] / "docs" / "orchestrator.md").read_text()
    shown = page.split("## Errors", 1)[1].split("```text\n", 1)[1].split("\n```", 1)[0]
    assert shown == drawing


def test_a_step_failure_says_where_it_happened() -> None:
    failure = errors.ProbeFailure("transfer", "SWD WAIT")
    assert failure.retryable
    assert failure.kind == "transfer"
    failure.at("station-01", 4, "53494D01").at("station-02", 5, "other")  # the innermost step wins
    assert (failure.station, failure.step, failure.uid) == ("station-01", 4, "53494D01")
    assert not errors.ProbeFailure("not_detected", "no ACK").retryable
    assert errors.CloudFailure("404 not found", retryable=False, status=404).status == 404
    assert not errors.Quarantine("OTP entry 3 holds 0x1").retryable


def test_an_irreversible_step_runs_only_after_its_uid_check() -> None:
    for step in STEPS:
        if step.irreversible:
            with pytest.raises(TypeError, match="runs only after its UID check"):
                checked(step.number, None)
        assert checked(step.number, object()) is step
    assert [s.number for s in STEPS if s.irreversible] == [3, 6, 8]


def test_the_step_backoff_waits_as_long_as_the_cloud_asked() -> None:
    from types import SimpleNamespace  # noqa: PLC0415

    from orchestrator.errors import CloudFailure, ProbeFailure  # noqa: PLC0415
    from orchestrator.station import _asked  # noqa: PLC0415

    def after(error: Exception) -> SimpleNamespace:
        return SimpleNamespace(outcome=SimpleNamespace(exception=lambda: error))

    wait = _asked(lambda _: 0.2)
    assert wait(after(CloudFailure("429", retryable=True, retry_after=3.0))) == 3.0
    assert wait(after(CloudFailure("503", retryable=True))) == 0.2
    assert wait(after(ProbeFailure("probe", "unplugged"))) == 0.2
    assert wait(after(CloudFailure("429", retryable=True, retry_after=3600.0))) == 60.0  # bounded
