"""The VM lifecycle: one pure transition table, checked in one place.

``TABLE`` says, for each (action, current state) that is allowed, which
transient state the VM passes through while the helpers work and where it
ends (``None`` = the record is removed). Anything not in the table is illegal
and :func:`check` raises :class:`FailedPrecondition` (HTTP 409) carrying the
current state.

``EDGES`` lists every state change the flows may write (including the create
flow's, which starts from no record); :func:`move` guards the registry writes
against a bug in a flow. Any state may go to ``error``.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from fcd_common.errors import FailedPrecondition, Internal

from .models import VMState

S = VMState


class Action(enum.StrEnum):
    START = "start"
    STOP = "stop"
    PAUSE = "pause"
    RESUME = "resume"
    DELETE = "delete"


class Step(NamedTuple):
    via: VMState | None
    """Transient state written before calling the helpers (None: none)."""
    to: VMState | None
    """State on success (None: the record is removed)."""


TABLE: dict[tuple[Action, VMState], Step] = {
    (Action.START, S.STOPPED): Step(S.STARTING, S.RUNNING),
    (Action.START, S.ERROR): Step(S.STARTING, S.RUNNING),  # when its parts are intact
    (Action.STOP, S.RUNNING): Step(S.STOPPING, S.STOPPED),
    (Action.STOP, S.PAUSED): Step(S.STOPPING, S.STOPPED),
    (Action.PAUSE, S.RUNNING): Step(S.PAUSING, S.PAUSED),
    (Action.RESUME, S.PAUSED): Step(None, S.RUNNING),
    (Action.DELETE, S.STOPPED): Step(None, None),
    (Action.DELETE, S.ERROR): Step(None, None),
    (Action.DELETE, S.SUSPENDED): Step(None, None),
    (Action.DELETE, S.DELETING): Step(None, None),  # finish a delete cut short
}

FORCE_DELETE = Step(None, None)

# None = no record yet (the create flow's first write).
EDGES: frozenset[tuple[VMState | None, VMState]] = frozenset(
    {
        (None, S.CREATING),
        (S.CREATING, S.STARTING),
        (S.STARTING, S.RUNNING),
        (S.STARTING, S.PAUSED),  # restored from a snapshot without resuming
        (S.STOPPED, S.STARTING),
        (S.ERROR, S.STARTING),
        # Firecracker ended on its own (fcd_api.supervise): exit 0 is the guest's shutdown
        (S.RUNNING, S.STOPPED),
        (S.RUNNING, S.PAUSING),
        (S.PAUSING, S.PAUSED),
        (S.PAUSED, S.RUNNING),
        (S.RUNNING, S.STOPPING),
        (S.PAUSED, S.STOPPING),
        (S.STOPPING, S.STOPPED),
        # suspend: (pause), save memory, kill; wake: load it in a fresh Firecracker
        (S.STOPPING, S.SUSPENDED),
        (S.SUSPENDED, S.STARTING),
        (S.STARTING, S.SUSPENDED),  # a wake that failed: the files are still there
        (S.STOPPING, S.PAUSED),  # a suspend whose kill failed: the guest is still paused
        # a helper that could not be reached changed nothing: back where the VM was
        (S.PAUSING, S.RUNNING),
        (S.STOPPING, S.RUNNING),
        (S.STARTING, S.STOPPED),
        # fcd_api.reconcile: an error VM whose Firecracker is alive is what it really is
        (S.ERROR, S.RUNNING),
        (S.ERROR, S.PAUSED),
    }
    # a delete writes ``deleting`` first, from any state it is allowed from
    | {(s, S.DELETING) for s in S if s is not S.DELETING}
)

TRANSIENT: frozenset[VMState] = frozenset(
    {S.CREATING, S.STARTING, S.PAUSING, S.STOPPING, S.DELETING}
)
"""States that only exist while a flow is running; found at start-up, they mean a crash."""


def allowed_from(action: Action) -> list[VMState]:
    return [state for (a, state) in TABLE if a is action]


def check(action: Action, state: VMState, *, force: bool = False) -> Step:
    """The step for ``action`` on a VM in ``state``; FailedPrecondition if illegal.

    ``force`` only widens ``delete`` (to any state).
    """
    if force and action is Action.DELETE:
        return FORCE_DELETE
    step = TABLE.get((action, state))
    if step is None:
        allowed = allowed_from(action)
        hint = " (or use force)" if action is Action.DELETE else ""
        raise FailedPrecondition(
            f"cannot {action.value} a VM that is {state.value}: allowed from "
            f"{', '.join(s.value for s in allowed)}{hint}",
            details={
                "state": state.value,
                "action": action.value,
                "allowed_from": [s.value for s in allowed],
            },
        )
    return step


def can_move(old: VMState | None, new: VMState) -> bool:
    return new is S.ERROR or (old, new) in EDGES


def move(old: VMState | None, new: VMState) -> VMState:
    """Guard a state write; an illegal one is a bug in a flow (Internal)."""
    if not can_move(old, new):
        raise Internal(f"illegal state change {old} -> {new.value}")
    return new
