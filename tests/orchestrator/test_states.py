"""The station's state table: what it allows, what it refuses, and that a refusal changes nothing."""

from __future__ import annotations

import pytest

from orchestrator.states import (
    BETWEEN,
    PAUSABLE,
    TRANSITIONS,
    Event,
    IllegalTransition,
    State,
    StationMachine,
)


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
