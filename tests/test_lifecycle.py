"""The lifecycle rules, without Temporal."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from vecmigrate.model.lifecycle import (
    STRATEGY_PHASES,
    IllegalTransitionError,
    MigrationStatus,
    Phase,
    ShardProgress,
    check_transition,
)


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


def backfilling(copied: int, total: int, seconds: float, as_of: datetime) -> MigrationStatus:
    return MigrationStatus(
        migration_id="m",
        tenant="t",
        collection="c",
        strategy="blue_green",
        source_version="v1",
        target_version="v2",
        phase=Phase.BACKFILLING,
        shards=[ShardProgress(shard=0, copied=copied, total=total, state="copying")],
        phase_seconds={Phase.BACKFILLING: seconds},
        as_of=as_of.isoformat(),
    )


def test_a_status_counts_its_phase_up_to_the_readers_clock() -> None:
    then = datetime(2026, 1, 1, tzinfo=UTC)
    st = backfilling(1000, 4000, 2.0, then)
    st.caught_up(then + timedelta(seconds=8))
    assert st.phase_seconds[Phase.BACKFILLING] == 10.0
    st.estimate()
    assert st.rate == 100.0
    assert st.eta_seconds == 30.0
    # Counted once: a second reading at the same instant adds nothing.
    st.caught_up(then + timedelta(seconds=8))
    assert st.phase_seconds[Phase.BACKFILLING] == 10.0
    # A reader's clock behind the server's changes nothing; an ended migration's time is final.
    late = backfilling(1000, 4000, 2.0, then)
    late.caught_up(then - timedelta(seconds=3))
    assert late.phase_seconds[Phase.BACKFILLING] == 2.0
    done = backfilling(1000, 4000, 2.0, then).model_copy(update={"phase": Phase.COMPLETED})
    done.caught_up(then + timedelta(seconds=8))
    assert done.phase_seconds[Phase.BACKFILLING] == 2.0


def test_the_copy_rate_is_the_copys_while_builds_go_on() -> None:
    then = datetime(2026, 1, 1, tzinfo=UTC)
    st = backfilling(4000, 4000, 60.0, then)
    st.copy_seconds = 20.0  # the last copy completed at 20 s; builds took the phase to 60
    st.estimate()
    assert st.rate == 200.0
    assert st.eta_seconds == 0.0
