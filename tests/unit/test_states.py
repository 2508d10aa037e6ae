"""The lifecycle table, exhaustively: every state x action."""

from __future__ import annotations

import itertools

import pytest

from fcd_api import states
from fcd_api.models import VMState
from fcd_api.states import Action, Step
from fcd_common.errors import FailedPrecondition, Internal

S = VMState

EXPECTED: dict[tuple[Action, VMState], Step] = {
    (Action.START, S.STOPPED): Step(S.STARTING, S.RUNNING),
    (Action.START, S.ERROR): Step(S.STARTING, S.RUNNING),
    (Action.STOP, S.RUNNING): Step(S.STOPPING, S.STOPPED),
    (Action.STOP, S.PAUSED): Step(S.STOPPING, S.STOPPED),
    (Action.PAUSE, S.RUNNING): Step(S.PAUSING, S.PAUSED),
    (Action.RESUME, S.PAUSED): Step(None, S.RUNNING),
    (Action.DELETE, S.STOPPED): Step(None, None),
    (Action.DELETE, S.ERROR): Step(None, None),
    (Action.DELETE, S.SUSPENDED): Step(None, None),  # its files go with its disks
    (Action.DELETE, S.DELETING): Step(None, None),  # a delete cut short is finished
}


@pytest.mark.parametrize(("action", "state"), list(itertools.product(Action, VMState)))
def test_every_action_in_every_state(action: Action, state: VMState) -> None:
    want = EXPECTED.get((action, state))
    if want is not None:
        assert states.check(action, state) == want
        return
    with pytest.raises(FailedPrecondition) as info:
        states.check(action, state)
    err = info.value
    assert err.code == "failed_precondition"
    assert err.details["state"] == state.value
    assert err.details["action"] == action.value
    assert state.value in err.message


@pytest.mark.parametrize("state", list(VMState))
def test_force_delete_from_any_state(state: VMState) -> None:
    assert states.check(Action.DELETE, state, force=True) == Step(None, None)


@pytest.mark.parametrize("action", [a for a in Action if a is not Action.DELETE])
@pytest.mark.parametrize("state", list(VMState))
def test_force_widens_only_delete(action: Action, state: VMState) -> None:
    plain = (action, state) in EXPECTED
    if plain:
        assert states.check(action, state, force=True) == EXPECTED[(action, state)]
    else:
        with pytest.raises(FailedPrecondition):
            states.check(action, state, force=True)


def test_table_steps_are_legal_edges() -> None:
    for (_action, state), step in states.TABLE.items():
        path = [state, *(s for s in (step.via, step.to) if s is not None)]
        for a, b in itertools.pairwise(path):
            assert states.can_move(a, b), (a, b)


def test_create_path_and_error_from_anywhere() -> None:
    states.move(None, S.CREATING)
    states.move(S.CREATING, S.STARTING)
    states.move(S.STARTING, S.RUNNING)
    for s in [None, *VMState]:
        assert states.move(s, S.ERROR) is S.ERROR


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (None, S.RUNNING),
        (S.STOPPED, S.RUNNING),
        (S.CREATING, S.RUNNING),
        (S.PAUSED, S.STOPPED),
        (S.ERROR, S.STOPPED),
        (S.SUSPENDED, S.RUNNING),
        (S.RUNNING, S.PAUSED),
    ],
)
def test_illegal_edges_are_bugs(old: VMState | None, new: VMState) -> None:
    with pytest.raises(Internal):
        states.move(old, new)


def test_transient_states() -> None:
    assert {S.CREATING, S.STARTING, S.STOPPING, S.PAUSING, S.DELETING} == states.TRANSIENT
    vias = {step.via for step in states.TABLE.values() if step.via is not None}
    assert vias | {S.CREATING, S.DELETING} == states.TRANSIENT  # both written by their flows


def test_a_delete_passes_through_deleting_from_anywhere_and_an_error_vm_can_be_adopted() -> None:
    for s in VMState:
        if s is not S.DELETING:
            assert states.can_move(s, S.DELETING)
    assert states.can_move(S.ERROR, S.RUNNING) and states.can_move(S.ERROR, S.PAUSED)
