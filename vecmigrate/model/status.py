"""What a migration knows about itself: the ``status`` query's answer, and what a run hands to
the next one when it continues as new."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from vecmigrate.model.base import Model as _Model
from vecmigrate.model.gates import GateAdjustment, GateReport, ReconcileReport, ShadowFigures
from vecmigrate.model.lifecycle import TERMINAL, Phase
from vecmigrate.model.messages import Interrupt
from vecmigrate.model.routing import RoutingView
from vecmigrate.model.spec import MigrationSpec
from vecmigrate.model.tasks import Promotion, ShardRef
from vecmigrate.model.tuning import TuningResult


class ShardProgress(_Model):
    """Copy, index and validation progress of one shard.

    Kept small on purpose: a migration of thousands of shards carries one of these per shard
    into every continued run. Artifacts and profiles live in the catalog's shard journal.
    """

    shard: int
    total: int = 0
    copied: int = 0
    state: str = "pending"
    checksum: str | None = None
    recopied: int = 0


class OperatorAction(_Model):
    """An operator message as the workflow received it, and what became of it."""

    at: str
    operator: str
    action: str
    reason: str = ""
    # "applied", or "ignored" with ``note`` saying why (a message that meant nothing then).
    outcome: Literal["applied", "ignored"] = "applied"
    note: str = ""


class RetryingStep(_Model):
    """An activity Temporal is retrying, as its pending-activity record shows it.

    The workflow does not see retries (it hears of an activity only when it succeeds or runs
    out of attempts); the client adds these to the status from the execution's description.
    """

    activity: str
    shard: int | None = None
    attempt: int
    maximum_attempts: int = 0
    last_error: str = ""
    error_type: str = ""
    next_retry: str = ""


class BudgetState(_Model):
    """Where a migration's latency budget stands: the limit, the search p99 last measured by
    the routers, and the share of its full pace the copy and the build run at (written by the
    copy between batches; the ``status`` command adds it)."""

    limit_ms: float | None = None
    idle_p99_ms: float | None = None
    p99_ms: float | None = None
    share: float = 1.0
    throttled: bool = False
    why: str = ""
    at: float = 0.0  # when it was written, seconds since the epoch

    def line(self) -> str:
        """The budget in one line: throttled or not, the p99 against the limit, and why."""
        limit = f"{self.limit_ms:.1f} ms" if self.limit_ms is not None else "no limit yet"
        p99 = f"{self.p99_ms:.1f} ms" if self.p99_ms is not None else "no reading"
        idle = f", idle p99 {self.idle_p99_ms:.1f} ms" if self.idle_p99_ms is not None else ""
        state = "throttling" if self.throttled else "within budget"
        return f"{state}: pace {100 * self.share:.0f}%, search p99 {p99} of {limit}{idle}" + (
            f" ({self.why})" if self.why else ""
        )


class IndexBuildProgress(_Model):
    """Where a native index build stands, as the database reports it (PostgreSQL's
    ``pg_stat_progress_create_index``, read on a connection of its own while the build runs).

    The build's activity heartbeats it; the client adds it to the status.
    """

    index: str
    command: str = ""
    phase: str = ""
    blocks_done: int = 0
    blocks_total: int = 0
    tuples_done: int = 0
    tuples_total: int = 0
    lockers_done: int = 0
    lockers_total: int = 0
    # Whichever of blocks, tuples or lockers the phase counts, done over total (None: the
    # phase counts nothing, or not yet).
    fraction: float | None = None
    seconds: float = 0.0

    def line(self) -> str:
        """The build in one line: index, phase, percentage and what it counts."""
        text = f"{self.index}: {self.phase or 'starting'}"
        if self.fraction is not None:
            text += f", {100 * self.fraction:.0f}%"
        if self.blocks_total:
            text += f" ({self.blocks_done:,} of {self.blocks_total:,} blocks)"
        elif self.tuples_total:
            text += f" ({self.tuples_done:,} of {self.tuples_total:,} tuples)"
        elif self.tuples_done:
            text += f" ({self.tuples_done:,} tuples)"
        elif self.lockers_total:
            text += f" (waiting for {self.lockers_total - self.lockers_done:,} transactions)"
        return text + f", {self.seconds:,.0f} s"


class CaptureStatus(_Model):
    """The capture of writes made to the adopted source table with plain SQL."""

    table: str = ""
    installed: bool = False
    removed: bool = False
    captured: int = 0
    lag: int = 0
    bytes: int = 0
    created_at: str = ""

    def alert(self, phase: Phase) -> str:
        """Why this capture needs an operator, or "": a change table left behind by a migration
        that ended fills the source database's disk with every later write."""
        if phase in TERMINAL and self.installed and not self.removed:
            return (
                f"change table {self.table} outlived the migration and grows with every write "
                f"to the source: DROP FUNCTION {self.table}_fn() CASCADE; DROP TABLE "
                f"{self.table} (the trigger goes with its function)"
            )
        return ""


class MigrationStatus(_Model):
    """What the ``status`` query returns."""

    migration_id: str
    tenant: str
    collection: str
    strategy: str
    source_version: str
    target_version: str
    phase: Phase = Phase.PLANNED
    paused: bool = False
    pause_reason: str = ""
    blocked_reason: str = ""
    shards: list[ShardProgress] = Field(default_factory=list)
    phase_seconds: dict[str, float] = Field(default_factory=dict)
    phase_started_at: str = ""
    # When the status query counted ``phase_seconds``: in workflow time, the last event the
    # workflow handled, which is minutes old during a long copy (``caught_up`` adds the rest).
    as_of: str = ""
    gates: GateReport | None = None
    # The reconcile gate before the index build: what it found and repaired, and its verdict.
    reconcile: ReconcileReport | None = None
    routing: RoutingView | None = None
    operators: list[OperatorAction] = Field(default_factory=list)
    cutover_approved: bool = False
    error: str = ""
    index_version: str | None = None
    # The newest ledger entry this migration wrote, kept in Temporal's history: a ledger whose
    # tail was cut no longer contains it, whatever was done to the catalog.
    ledger_seq: int = 0
    ledger_head: str = ""
    ledger_entries: int = 0
    # Throttle of the copy (vectors/s over all shards; None: as fast as the stores go).
    max_vectors_per_second: float | None = None
    # Vectors/s of the current copy phase so far, and the seconds it still needs at that rate.
    rate: float | None = None
    eta_seconds: float | None = None
    # Seconds of BACKFILLING the copy took, set when the last shard's copy completes (builds
    # can go on in the phase after it): the rate is the copy's, not diluted by the builds.
    copy_seconds: float | None = None
    # Temporal runs this migration has gone through (continue-as-new keeps histories small).
    runs: int = 1
    # The identity that started it (its connection's, not the declared operator): the
    # four-eyes rule keeps it from approving its own cut-over.
    started_by: str = ""
    validation_round: int = 0
    # Where the target's index snapshot stands in the change log: taken before the first shard
    # is built (during the backfill or after it) and kept by a continued run; later writes are
    # overlaid on reads.
    index_log_position: int | None = None
    # Online migrations: change-log position the catch-up replays from, how far the target is
    # behind, the canary share, and the last shadow figures per gate.
    watermark: int | None = None
    catchup_lag: int | None = None
    # Writes made to an adopted PostgreSQL source with plain SQL, captured by a trigger.
    capture: CaptureStatus | None = None
    ramp_percent: float = 0.0
    shadow: list[ShadowFigures] = Field(default_factory=list)
    # Search-parameter tuning in the canary window (``online.tuning``): every candidate's
    # figures and the value chosen.
    tuning: TuningResult | None = None
    cutovers: int = 0
    # The spec this migration runs (its hash: activities load the spec by it).
    spec_hash: str = ""
    # What the current phase does, with the spec's figures (from the lifecycle table).
    doing: str = ""
    # Once ended: how (and by whom, and why) it ended.
    outcome: str = ""
    approved_by: str = ""
    # Approvers' overrides and thresholds, and what would change a failed gate's verdict.
    gate_adjustments: list[GateAdjustment] = Field(default_factory=list)
    remedies: list[str] = Field(default_factory=list)
    # Steps Temporal is retrying (added by the client; the workflow cannot see retries).
    retrying: list[RetryingStep] = Field(default_factory=list)
    # The target is a retained version going back into service: the log is replayed onto it
    # from where it stopped being written, and its index reused (no copy, no build).
    promotion: Promotion | None = None
    # Bytes of both versions and the change log, measured at each stage (peak, finalized).
    storage_bytes: dict[str, int] = Field(default_factory=dict)
    # Held outside the spec's maintenance windows: when the next one opens, and why it waits.
    window_until: str = ""
    window_note: str = ""
    # A native index build in flight (added by the client from its activity's heartbeat).
    index_build: IndexBuildProgress | None = None
    # The latency budget's throttle (added by the status command from the catalog).
    budget: BudgetState | None = None

    def copied(self) -> tuple[int, int]:
        """Vectors copied and total, over all shards."""
        return sum(s.copied for s in self.shards), sum(s.total for s in self.shards)

    def caught_up(self, now: datetime) -> None:
        """Count the current phase's seconds up to ``now`` (a reader's clock) from ``as_of``.

        A running workflow's clock stands still between the events it handles; a phase's
        seconds in a query are as old as its last event. Clocks a little behind the server's
        change nothing.
        """
        if self.phase in TERMINAL or not self.as_of:
            return
        behind = (now - datetime.fromisoformat(self.as_of)).total_seconds()
        if behind > 0:
            self.phase_seconds[self.phase] = round(
                self.phase_seconds.get(self.phase, 0.0) + behind, 3
            )
            self.as_of = now.isoformat()

    def estimate(self) -> None:
        """Set ``rate`` and ``eta_seconds`` from the vectors copied so far in BACKFILLING."""
        if self.phase != Phase.BACKFILLING:
            return
        copied, total = self.copied()
        spent = self.copy_seconds or self.phase_seconds.get(Phase.BACKFILLING, 0.0)
        if copied and spent > 0:
            self.rate = round(copied / spent, 1)
            self.eta_seconds = round(max(0, total - copied) / self.rate, 1)

    def shard_states(self) -> dict[str, int]:
        """How many shards are in each state."""
        counts: dict[str, int] = {}
        for s in self.shards:
            counts[s.state] = counts.get(s.state, 0) + 1
        return counts

    def ignored(self) -> list[OperatorAction]:
        """The operator messages that were recorded and ignored."""
        return [a for a in self.operators if a.outcome == "ignored"]


class Carried(_Model):
    """What a migration hands to its next Temporal run when it continues as new.

    Everything the lifecycle needs to pick up where it stood: the status (phase, per-shard
    states, routing, gates, ledger anchor), the shard plan, and the counters that keep ledger
    event keys unique across runs.
    """

    status: MigrationStatus
    # Range shards come from the source's id quantiles and must be carried; hash shards are
    # recomputed from the layout (empty here).
    shards: list[ShardRef] = Field(default_factory=list)
    source_index: str | None = None
    target_registered: bool = False
    events: int = 0
    interrupt: Interrupt | None = None


class MigrationInput(_Model):
    """Input of the migration workflow; ``carried`` is set only by continue-as-new."""

    spec: MigrationSpec
    requested_by: str = "unknown"
    carried: Carried | None = None
