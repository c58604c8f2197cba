"""The order state machine: only legal transitions, terminal states stay terminal."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from bagbot_core.errors import IllegalTransitionError
from bagbot_core.status import TERMINAL_STATUSES, OrderStatus, can_transition, check_transition

S = OrderStatus


@pytest.mark.parametrize(("old", "new"), [
    (S.PENDING, S.OPEN), (S.PENDING, S.FILLED), (S.PENDING, S.UNKNOWN), (S.PENDING, S.REJECTED),
    (S.UNKNOWN, S.FILLED), (S.UNKNOWN, S.REJECTED), (S.OPEN, S.PARTIALLY_FILLED),
    (S.PARTIALLY_FILLED, S.FILLED), (S.PARTIALLY_FILLED, S.CANCELED), (S.OPEN, S.EXPIRED),
])
def test_legal(old: S, new: S) -> None:
    assert check_transition(old, new) is new


@pytest.mark.parametrize(("old", "new"), [
    (S.FILLED, S.OPEN), (S.CANCELED, S.FILLED), (S.REJECTED, S.OPEN), (S.OPEN, S.PENDING),
    (S.UNKNOWN, S.PENDING), (S.OPEN, S.UNKNOWN), (S.PARTIALLY_FILLED, S.OPEN),
    (S.PARTIALLY_FILLED, S.REJECTED), (S.EXPIRED, S.CANCELED),
])
def test_illegal(old: S, new: S) -> None:
    with pytest.raises(IllegalTransitionError, match=f"from {old} to {new}"):
        check_transition(old, new)


def test_terminal_statuses_never_change() -> None:
    for old, new in itertools.product(TERMINAL_STATUSES, S):
        assert can_transition(old, new) == (old == new)


def test_nothing_goes_back_to_pending() -> None:
    assert [s for s in S if s != S.PENDING and can_transition(s, S.PENDING)] == []


@given(st.lists(st.sampled_from(list(S)), max_size=30))
def test_any_path_of_legal_moves_never_leaves_a_terminal_state(path: list[S]) -> None:
    current = S.PENDING
    for new in path:
        if can_transition(current, new):
            was_terminal = current.is_terminal
            current = new
            assert not was_terminal or current == new


class OrderLifecycle(RuleBasedStateMachine):
    """Random walks over statuses: the machine's answers stay consistent with its table."""

    def __init__(self) -> None:
        super().__init__()
        self.status = S.PENDING
        self.history = [S.PENDING]

    @rule(new=st.sampled_from(list(S)))
    def move(self, new: S) -> None:
        try:
            previous, self.status = self.status, check_transition(self.status, new)
            if self.status != previous:
                self.history.append(self.status)
        except IllegalTransitionError:
            assert not can_transition(self.status, new)

    @invariant()
    def terminal_is_forever(self) -> None:
        terminal: S | None = None
        for status in self.history:
            if terminal is not None:
                assert status == terminal
            elif status.is_terminal:
                terminal = status

    @invariant()
    def pending_only_at_the_start(self) -> None:
        assert S.PENDING not in self.history[1:]


TestOrderLifecycle = OrderLifecycle.TestCase
