"""The lifecycle rules, without Temporal."""

from __future__ import annotations

import itertools

import pytest

from vecmigrate.lifecycle import STRATEGY_PHASES, IllegalTransitionError, Phase, check_transition


def test_blue_green_walks_its_phases_in_order() -> None:
    order = STRATEGY_PHASES["blue_green"]
    for a, b in itertools.pairwise(order):
        check_transition("blue_green", a, b)


@pytest.mark.parametrize(
    "phase", [p for p in STRATEGY_PHASES["blue_green"] if p != Phase.COMPLETED]
)
def test_rollback_and_abort_reachable_from_any_live_phase(phase: Phase) -> None:
    check_transition("blue_green", phase, Phase.ROLLING_BACK)
    check_transition("blue_green", phase, Phase.ABORTED)


def test_illegal_moves() -> None:
    with pytest.raises(IllegalTransitionError):
        check_transition("blue_green", Phase.BACKFILLING, Phase.CUT_OVER)
    with pytest.raises(IllegalTransitionError):
        check_transition("blue_green", Phase.COMPLETED, Phase.ROLLING_BACK)
    with pytest.raises(IllegalTransitionError):
        check_transition("blue_green", Phase.ROLLING_BACK, Phase.COMPLETED)
    check_transition("blue_green", Phase.ROLLING_BACK, Phase.ROLLED_BACK)
