"""The lifecycle table and its rules, without Temporal: every strategy's path, the moves out of
each phase, what each message means where, and a state machine driving random messages."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tests.conftest import Sandbox, status_in
from vecmigrate.model.lifecycle import (
    LIFECYCLE,
    OFFLINE_CUTOVER,
    OUTCOMES,
    REGIONAL,
    SIGNALS,
    TERMINAL,
    UPDATES,
    IllegalTransitionError,
    Message,
    Phase,
    Situation,
    Strategy,
    builds_while_copying,
    check_transition,
    describe,
    figures,
)
from vecmigrate.model.lifecycle import rule as judge
from vecmigrate.model.status import MigrationStatus, ShardProgress

STRATEGIES = list(LIFECYCLE.values())


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.name)
def test_every_strategy_walks_its_phases_in_order(strategy: Strategy) -> None:
    assert strategy.phases[0] == Phase.PLANNED
    assert strategy.phases[-1] == Phase.COMPLETED
    for a, b in itertools.pairwise(strategy.phases):
        check_transition(strategy, a, b)


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.name)
def test_rollback_is_reachable_until_finalizing_and_refused_after(strategy: Strategy) -> None:
    for phase in strategy.phases:
        ruling = judge(strategy, Message.ROLLBACK, Situation(phase=phase))
        if strategy.before(phase, Phase.FINALIZING):
            assert ruling.accepted, (phase, ruling)
            assert strategy.step(phase).rollback in strategy.moves(phase)
        else:
            assert not ruling.accepted
            assert ruling.reason
    assert (
        "would lose them"
        in judge(strategy, Message.ROLLBACK, Situation(phase=Phase.FINALIZING)).reason
    )
    check_transition(strategy, Phase.ROLLING_BACK, Phase.ROLLED_BACK)


def test_illegal_moves() -> None:
    bg = LIFECYCLE["blue_green"]
    for current, new in (
        (Phase.BACKFILLING, Phase.CUT_OVER),
        (Phase.COMPLETED, Phase.ROLLING_BACK),
        (Phase.ROLLING_BACK, Phase.COMPLETED),
        (Phase.FINALIZING, Phase.ROLLING_BACK),
        (Phase.BAKING, Phase.AWAITING_CUTOVER),  # only online reverses a cut-over
    ):
        with pytest.raises(IllegalTransitionError):
            check_transition(bg, current, new)
    check_transition(LIFECYCLE["online"], Phase.BAKING, Phase.AWAITING_CUTOVER)


def test_an_approval_before_the_gates_passed_is_held_only_when_it_says_so() -> None:
    bg = LIFECYCLE["blue_green"]
    early = Situation(phase=Phase.BACKFILLING)
    ignored = judge(bg, Message.APPROVE_CUTOVER, early)
    assert not ignored.accepted
    assert "preapprove=true" in ignored.reason
    held = judge(bg, Message.APPROVE_CUTOVER, early, preapprove=True)
    assert held.accepted
    assert held.reason.startswith("pre-approved")
    failed = Situation(phase=Phase.VALIDATING, paused=True, gate_failed=True)
    assert "a gate failed" in judge(bg, Message.APPROVE_CUTOVER, failed).reason
    assert judge(bg, Message.APPROVE_CUTOVER, Situation(phase=Phase.AWAITING_CUTOVER)).accepted
    automatic = Situation(phase=Phase.AWAITING_CUTOVER, approval_needed=False)
    assert "automatic" in judge(bg, Message.APPROVE_CUTOVER, automatic).reason
    assert "past the cut-over" in judge(bg, Message.APPROVE_CUTOVER, Situation(Phase.BAKING)).reason
    shadow = LIFECYCLE["shadow_only"]
    assert "never switches" in judge(shadow, Message.APPROVE_CUTOVER, early).reason


def test_messages_mean_something_only_where_the_table_says() -> None:
    online, bg = LIFECYCLE["online"], LIFECYCLE["blue_green"]
    assert judge(online, Message.SET_RAMP, Situation(Phase.RAMPING)).accepted
    assert "no canary ramp" in judge(bg, Message.SET_RAMP, Situation(Phase.VALIDATING)).reason
    assert judge(bg, Message.SET_THROTTLE, Situation(Phase.BACKFILLING)).accepted
    assert (
        "nothing is being copied"
        in judge(bg, Message.SET_THROTTLE, Situation(Phase.AWAITING_CUTOVER)).reason
    )
    assert "already paused" in judge(bg, Message.PAUSE, Situation(Phase.BACKFILLING, True)).reason
    assert "nothing to resume" in judge(bg, Message.RESUME, Situation(Phase.BACKFILLING)).reason
    unchanged = Situation(Phase.VALIDATING, paused=True, gate_failed=True, gate_unchanged=True)
    assert "verdict would be the same" in judge(bg, Message.RESUME, unchanged).reason
    assert judge(bg, Message.RESUME, replace(unchanged, gate_unchanged=False)).accepted
    assert "no gate has failed" in judge(bg, Message.SET_GATE, Situation(Phase.VALIDATING)).reason
    for phase in TERMINAL:
        for message in (*SIGNALS, *UPDATES):
            assert "has ended" in judge(bg, message, Situation(phase)).reason
    stopping = Situation(Phase.BACKFILLING, stopping=True)
    assert "under way" in judge(bg, Message.ABORT, stopping).reason


def test_offline_honours_the_cutover_mode_and_bake_except_in_runs_started_before() -> None:
    offline = LIFECYCLE["offline"]
    assert {Phase.AWAITING_CUTOVER, Phase.BAKING, Phase.FINALIZING} <= set(offline.phases)
    before = offline.variant(lambda patch: patch != OFFLINE_CUTOVER)
    assert before.phases == (
        Phase.PLANNED,
        Phase.PREPARING,
        Phase.BACKFILLING,
        Phase.BUILDING_INDEX,
        Phase.VALIDATING,
        Phase.CUT_OVER,
        Phase.COMPLETED,
    )


def test_outcomes_close_an_execution_that_did_not_complete_with_a_typed_error() -> None:
    assert OUTCOMES[Phase.COMPLETED].error is None
    assert OUTCOMES[Phase.ROLLED_BACK].error == "MigrationRolledBack"
    assert OUTCOMES[Phase.ABORTED].error == "MigrationAborted"
    assert set(OUTCOMES) == TERMINAL


@pytest.mark.parametrize("strategy", [*STRATEGIES, REGIONAL], ids=lambda s: s.name)
def test_every_phase_is_described_with_the_specs_figures(
    sandbox: Sandbox, strategy: Strategy
) -> None:
    """Plan, status and report read these sentences; a missing figure used to end `plan` and
    `start` of every online spec in a KeyError."""
    name = strategy.name if strategy is not REGIONAL else "blue_green"
    spec = sandbox.spec(strategy=name)
    values = {
        **figures(spec, 12_345),
        "rollout": "eu then us",
        "max_parallel": 2,
        "barrier": "all pass",
        "cutover_order": "eu -> us",
    }
    for phase in (*strategy.phases, Phase.ROLLING_BACK):
        text = describe(strategy, phase, values)
        assert text
        assert "{" not in text
    if strategy is not REGIONAL:
        assert "12,345 vectors" in describe(strategy, Phase.BACKFILLING, values)


# -- a state machine over the table ---------------------------------------------------------


class Lifecycle(RuleBasedStateMachine):
    """A migration as the table moves it: its work completes phase by phase, gates fail, and
    operators send any message at any moment. The moves taken must be the table's, rollback
    stays possible until FINALIZING, and nothing cuts over without its approval."""

    @initialize(name=st.sampled_from(sorted(LIFECYCLE)), manual=st.booleans())
    def start(self, name: str, manual: bool) -> None:
        self.strategy = LIFECYCLE[name]
        self.manual = manual
        self.phase = Phase.PLANNED
        self.paused = False
        self.stop: Message | None = None
        self.gate_failed = False
        self.changed = False
        self.approved = False
        self.cutovers = 0

    def now(self) -> Situation:
        return Situation(
            phase=self.phase,
            paused=self.paused,
            stopping=self.stop is not None,
            gate_failed=self.gate_failed,
            gate_unchanged=self.gate_failed and not self.changed,
            cutover_approved=self.approved,
            approval_needed=self.manual or self.cutovers > 0,
        )

    def move(self, new: Phase) -> None:
        check_transition(self.strategy, self.phase, new)
        if new == Phase.CUT_OVER:
            assert not self.gate_failed
            assert self.approved or not (self.manual or self.cutovers > 0)
            self.cutovers += 1
        self.phase = new

    @precondition(lambda self: self.phase not in TERMINAL and not self.paused)
    @rule()
    def work_done(self) -> None:
        if self.stop == Message.ABORT:
            self.stop = None
            self.move(Phase.ABORTED)
        elif self.stop == Message.ROLLBACK:
            self.stop = None
            target = self.strategy.step(self.phase).rollback
            assert target is not None
            self.move(target)
            if target == Phase.AWAITING_CUTOVER:
                self.approved = False  # a reversed cut-over waits for a new approval
        elif self.phase == Phase.ROLLING_BACK:
            self.move(Phase.ROLLED_BACK)
        elif self.phase == Phase.AWAITING_CUTOVER and self.now().approval_needed:
            if self.approved:
                self.move(self.strategy.after(self.phase))
        else:
            self.move(self.strategy.after(self.phase))

    @precondition(
        lambda self: (
            self.phase in (Phase.VALIDATING, Phase.SHADOWING, Phase.RAMPING)
            and not self.paused
            and self.stop is None
        )
    )
    @rule()
    def gate_fails(self) -> None:
        self.gate_failed, self.changed, self.paused = True, False, True

    @rule(
        message=st.sampled_from([*SIGNALS, Message.SET_RAMP, Message.SET_THROTTLE]),
        preapprove=st.booleans(),
    )
    def send(self, message: Message, preapprove: bool) -> None:
        before = self.now()
        ruling = judge(self.strategy, message, before, preapprove=preapprove)
        if not ruling.accepted:
            assert ruling.reason, message
            return
        if message == Message.APPROVE_CUTOVER:
            early = self.strategy.before(self.phase, Phase.AWAITING_CUTOVER) or self.gate_failed
            assert preapprove or not early, "an early approval was held without preapprove"
            self.approved = True
        elif message == Message.PAUSE:
            self.paused = True
        elif message == Message.RESUME:
            assert not before.gate_unchanged
            self.paused = self.gate_failed = False
        elif message in (Message.ROLLBACK, Message.ABORT):
            self.stop = message
            self.paused = self.gate_failed = False

    @precondition(lambda self: self.gate_failed)
    @rule()
    def adjust_gate(self) -> None:
        assert judge(self.strategy, Message.SET_GATE, self.now()).accepted
        self.changed = True

    @invariant()
    def rollback_stays_reachable_until_finalizing(self) -> None:
        if self.stop is None and self.strategy.before(self.phase, Phase.FINALIZING):
            assert judge(self.strategy, Message.ROLLBACK, self.now()).accepted

    @invariant()
    def an_ended_migration_takes_no_message(self) -> None:
        if self.phase in TERMINAL:
            for message in (*SIGNALS, *UPDATES):
                assert not judge(self.strategy, message, self.now()).accepted


class TestLifecycle(Lifecycle.TestCase):
    """A sample of sequences, in the fast tier; the thorough run is the integration tier's."""

    settings = settings(max_examples=40, stateful_step_count=60, deadline=None)


@pytest.mark.integration  # 300 sequences of up to 60 messages take seconds
class TestLifecycleThoroughly(Lifecycle.TestCase):
    settings = settings(max_examples=300, stateful_step_count=60, deadline=None)


# -- the status's clock ---------------------------------------------------------------------


def backfilling(copied: int, total: int, seconds: float, as_of: datetime) -> MigrationStatus:
    return status_in(
        Phase.BACKFILLING,
        shards=[ShardProgress(shard=0, copied=copied, total=total, state="copying")],
        phase_seconds={Phase.BACKFILLING: seconds},
        as_of=as_of.isoformat(),
    )


def test_a_status_counts_its_phase_up_to_the_readers_clock() -> None:
    then = datetime(2026, 1, 1, tzinfo=UTC)
    st_ = backfilling(1000, 4000, 2.0, then)
    st_.caught_up(then + timedelta(seconds=8))
    assert st_.phase_seconds[Phase.BACKFILLING] == 10.0
    st_.estimate()
    assert st_.rate == 100.0
    assert st_.eta_seconds == 30.0
    # Counted once: a second reading at the same instant adds nothing.
    st_.caught_up(then + timedelta(seconds=8))
    assert st_.phase_seconds[Phase.BACKFILLING] == 10.0
    # A reader's clock behind the server's changes nothing; an ended migration's time is final.
    late = backfilling(1000, 4000, 2.0, then)
    late.caught_up(then - timedelta(seconds=3))
    assert late.phase_seconds[Phase.BACKFILLING] == 2.0
    done = backfilling(1000, 4000, 2.0, then).model_copy(update={"phase": Phase.COMPLETED})
    done.caught_up(then + timedelta(seconds=8))
    assert done.phase_seconds[Phase.BACKFILLING] == 2.0


def test_the_copy_rate_is_the_copys_while_builds_go_on() -> None:
    then = datetime(2026, 1, 1, tzinfo=UTC)
    st_ = backfilling(4000, 4000, 60.0, then)
    st_.copy_seconds = 20.0  # the last copy completed at 20 s; builds took the phase to 60
    st_.estimate()
    assert st_.rate == 200.0
    assert st_.eta_seconds == 0.0


@pytest.mark.parametrize(
    ("strategy", "beside"),
    [("blue_green", True), ("offline", True), ("online", False), ("shadow_only", False)],
)
def test_a_copys_exact_search_leaves_the_cores_to_the_builds_that_run_beside_it(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, strategy: str, beside: bool
) -> None:
    """Where each shard's index is built as its copy ends, the next copies run beside builds
    that take every core given them: the copy's streamed search then runs on one thread (two
    OpenMP threads spinning beside a build slowed both). Elsewhere the shard's share of the
    cores less the one the copy's own reads and writes take. A database's own index is built
    once, after the copy: nothing runs beside it."""
    from vecmigrate.data.backfill import copy_search_threads
    from vecmigrate.model.spec import PgvectorHnsw

    cores = set(range(16))
    monkeypatch.setattr("vecmigrate.indexes.artifacts.os.sched_getaffinity", lambda _: cores)
    spec = sandbox.spec(strategy=strategy, max_parallel_shards=2)
    assert builds_while_copying(spec) is beside
    assert copy_search_threads(spec, 4) == (1 if beside else 16 // 2 - 1)
    target = spec.target.model_copy(update={"index": PgvectorHnsw()})
    native = spec.model_copy(update={"target": target})
    assert not builds_while_copying(native)
