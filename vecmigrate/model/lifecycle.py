"""The migration lifecycle as data: phases, legal transitions, operator messages and status.

Pure and deterministic (no I/O, no clock): the workflow drives it, the CLI and client read it,
and the transition rules are tested without Temporal.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from vecmigrate.model.spec import MigrationSpec, ShardLayout


class Phase(StrEnum):
    """Where a migration is. ``paused`` is a flag beside the phase, not a phase."""

    PLANNED = "PLANNED"
    PREPARING = "PREPARING"
    BACKFILLING = "BACKFILLING"
    CATCHING_UP = "CATCHING_UP"
    BUILDING_INDEX = "BUILDING_INDEX"
    VALIDATING = "VALIDATING"
    SHADOWING = "SHADOWING"
    RAMPING = "RAMPING"
    AWAITING_CUTOVER = "AWAITING_CUTOVER"
    CUT_OVER = "CUT_OVER"
    BAKING = "BAKING"
    FINALIZING = "FINALIZING"
    COMPLETED = "COMPLETED"
    ROLLING_BACK = "ROLLING_BACK"
    ROLLED_BACK = "ROLLED_BACK"
    ABORTED = "ABORTED"


TERMINAL = frozenset({Phase.COMPLETED, Phase.ROLLED_BACK, Phase.ABORTED})

STRATEGY_PHASES: dict[str, tuple[Phase, ...]] = {
    "blue_green": (
        Phase.PLANNED,
        Phase.PREPARING,
        Phase.BACKFILLING,
        Phase.BUILDING_INDEX,
        Phase.VALIDATING,
        Phase.AWAITING_CUTOVER,
        Phase.CUT_OVER,
        Phase.BAKING,
        Phase.FINALIZING,
        Phase.COMPLETED,
    ),
    # Dual-write from before the snapshot, catch-up from the change log, shadow reads and a
    # canary ramp: the collection serves reads and writes throughout.
    "online": (
        Phase.PLANNED,
        Phase.PREPARING,
        Phase.BACKFILLING,
        Phase.CATCHING_UP,
        Phase.BUILDING_INDEX,
        Phase.VALIDATING,
        Phase.SHADOWING,
        Phase.RAMPING,
        Phase.AWAITING_CUTOVER,
        Phase.CUT_OVER,
        Phase.BAKING,
        Phase.FINALIZING,
        Phase.COMPLETED,
    ),
    # Writes are refused (503 with Retry-After at the gateway) from PREPARING until the switch.
    "offline": (
        Phase.PLANNED,
        Phase.PREPARING,
        Phase.BACKFILLING,
        Phase.BUILDING_INDEX,
        Phase.VALIDATING,
        Phase.CUT_OVER,
        Phase.COMPLETED,
    ),
}

# Phases after which reads are served by the target: a rollback from here must move routing back.
SERVING_TARGET = frozenset({Phase.CUT_OVER, Phase.BAKING, Phase.FINALIZING})

# Phases in which some reads may go to the target (canary) or are mirrored to it (shadow).
READING_TARGET = frozenset({Phase.SHADOWING, Phase.RAMPING, Phase.AWAITING_CUTOVER})


class IllegalTransitionError(Exception):
    """A phase change the lifecycle does not allow (a bug in the caller, never user input)."""


def check_transition(strategy: str, current: Phase, new: Phase) -> None:
    """Raise :class:`IllegalTransitionError` unless ``strategy`` allows ``current -> new``."""
    if current in TERMINAL:
        raise IllegalTransitionError(f"{current} is terminal; cannot move to {new}")
    if new in (Phase.ROLLING_BACK, Phase.ABORTED):
        return
    if current == Phase.ROLLING_BACK:
        if new == Phase.ROLLED_BACK:
            return
        raise IllegalTransitionError(f"{current} can only end in {Phase.ROLLED_BACK}")
    reversal = current in (Phase.CUT_OVER, Phase.BAKING) and new == Phase.AWAITING_CUTOVER
    if strategy == "online" and reversal:
        return  # reads moved back to the old version, which dual-write kept current
    order = STRATEGY_PHASES[strategy]
    if current not in order or new not in order:
        raise IllegalTransitionError(f"{current} -> {new} is not part of strategy {strategy}")
    if order.index(new) != order.index(current) + 1:
        raise IllegalTransitionError(f"{current} -> {new} skips or repeats a phase of {strategy}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OperatorMessage(_Model):
    """Payload of every signal: who sent it and why. Both optional so a bare signal works."""

    operator: str = "unknown"
    reason: str = ""


HASH_SPACE = 1 << 32


class ShardRef(_Model):
    """One shard: a half-open range ``[lo, hi)`` of a key.

    The key is the 32-bit hash of the id for ``by="hash"`` and the id itself for ``by="range"``,
    so every shard is a contiguous range of an index and scans in a stable order.
    """

    index: int
    by: Literal["hash", "range"]
    lo: int
    hi: int


def hash_shards(count: int) -> list[ShardRef]:
    """``count`` equal ranges of the 32-bit hash space (pure arithmetic: the workflow recomputes
    them instead of carrying thousands of them across runs)."""
    bounds = [i * HASH_SPACE // count for i in range(count + 1)]
    return [ShardRef(index=i, by="hash", lo=bounds[i], hi=bounds[i + 1]) for i in range(count)]


def selected_hash_shards(layout: ShardLayout) -> list[ShardRef]:
    """The hash shards a layout selects, in order."""
    wanted = set(layout.selected())
    return [s for s in hash_shards(layout.count) if s.index in wanted]


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


class GateVerdict(_Model):
    """One check: the figure measured, the threshold it was held to, and the verdict."""

    name: str
    value: float | None = None
    threshold: float | None = None
    comparison: str = ">="
    passed: bool
    detail: str = ""


class ShardProfile(_Model):
    """What one scan of a shard saw: counts, bad vectors, norms and checksums."""

    count: int = 0
    nonfinite: int = 0
    zero: int = 0
    duplicate_ids: int = 0
    off_unit_norm: int = 0
    norm_min: float | None = None
    norm_max: float | None = None
    norm_mean: float | None = None
    checksum: str = ""
    id_checksum: str = ""
    # Ids with their payloads alone (empty for records without payload): the payload must cross
    # unchanged whatever happens to the vectors.
    payload_checksum: str = ""
    # Records left out of the shard, by reason (see the quarantine); on the source side only.
    quarantined: dict[str, int] = Field(default_factory=dict)


class ShardCheck(_Model):
    """Source and target profiles of one shard (the source seen through the transform)."""

    shard: int
    source: ShardProfile
    target: ShardProfile
    seconds: float = 0.0
    # Records left out of both profiles because they were written during the migration.
    excluded: int = 0


class ReadOption(_Model):
    """One way to serve text queries during a re-embedding migration, measured on known-item
    queries: how much of its top-k the new model's exact top-k shares, and how often the
    record a query came from is in its top-k (``hit_rate``, with ``mrr``)."""

    name: str
    via: str
    overlap: float | None = None
    hit_rate: float | None = None
    mrr: float | None = None
    detail: str = ""


class RetrievalFigures(_Model):
    """Figures of the retrieval and distribution checks; ``None`` where not measured."""

    query_source: str = "sampled"
    # Where the exact ground truth came from: "search" (a search of the target here) or "shard
    # checks" (folded into the shard checks' read of the target).
    truth_source: str = "search"
    queries: int = 0
    latency_queries: int = 0  # of those, searched one at a time for p50/p99
    k: int = 10
    source_recall: float | None = None
    target_recall: float | None = None
    overlap: float | None = None
    rank_correlation: float | None = None
    p50_ms_old: float | None = None
    p99_ms_old: float | None = None
    p50_ms_new: float | None = None
    p99_ms_new: float | None = None
    norm_ks: float | None = None
    norm_ks_pvalue: float | None = None
    mean_shift: float | None = None
    spectrum_shift: float | None = None
    distribution_sample: int = 0
    # Re-embedding migrations: the models on each side, and each way of serving text queries.
    source_model: str | None = None
    target_model: str | None = None
    task_queries: int = 0
    read_options: list[ReadOption] = Field(default_factory=list)
    skipped: list[str] = Field(default_factory=list)
    seconds: float = 0.0


class GateReport(_Model):
    """All verdicts of one validation run plus the figures behind them."""

    passed: bool
    verdicts: list[GateVerdict]
    source_recall: float | None = None
    target_recall: float | None = None
    k: int = 10
    queries: int = 0
    source_counts: dict[int, int] = Field(default_factory=dict)
    target_counts: dict[int, int] = Field(default_factory=dict)
    shards: list[ShardCheck] = Field(default_factory=list)
    figures: RetrievalFigures | None = None

    def failures(self) -> list[str]:
        """One line per failed verdict, for ``status`` and the ledger."""
        lines = []
        for v in self.verdicts:
            if not v.passed:
                line = f"{v.name} = {v.value} (needs {v.comparison} {v.threshold})"
                lines.append(f"{line}: {v.detail}" if v.detail else line)
        return lines


class ThrottleRequest(_Model):
    """Argument of the ``set_throttle`` update: vectors/s over all shards, ``None`` for none."""

    max_vectors_per_second: float | None = None
    operator: str = "unknown"
    reason: str = ""

    def problem(self) -> str | None:
        """Why this request cannot be applied, or ``None``."""
        rate = self.max_vectors_per_second
        if rate is not None and not (rate > 0 and rate != float("inf")):
            return (
                f"max_vectors_per_second must be a positive, finite number of vectors per "
                f"second (or null to lift the throttle), got {rate}"
            )
        return None


class RampRequest(_Model):
    """Argument of the ``set_ramp`` update: the share of reads the new version serves."""

    percent: float
    operator: str = "unknown"
    reason: str = ""

    def problem(self) -> str | None:
        """Why this request cannot be applied, or ``None``."""
        if not 0.0 <= self.percent < 100.0:  # NaN fails too
            return (
                f"percent must be at least 0 and below 100 (100 is the cut-over: approve it "
                f"instead), got {self.percent}"
            )
        return None


class ShadowFigures(_Model):
    """What the shadow reads measured during one gate (shadowing, or one ramp step)."""

    step: str = ""
    passed: bool = False
    failures: list[str] = Field(default_factory=list)
    samples: int = 0
    overlap: float | None = None
    p50_ms_old: float | None = None
    p99_ms_old: float | None = None
    p50_ms_new: float | None = None
    p99_ms_new: float | None = None
    errors: int = 0


class OperatorAction(_Model):
    """An operator message as the workflow received it."""

    at: str
    operator: str
    action: str
    reason: str = ""


class RoutingView(_Model):
    """The routing row of a collection as last seen by the workflow.

    Reads go to ``read_version`` (through ``read_index``), except ``ramp_percent`` of them (by
    a stable hash of the request key) to ``candidate_version``; ``shadow_percent`` of the reads
    are also run on the candidate and compared. Writes go to every one of ``write_versions``,
    or are refused while ``writes_paused``.
    """

    read_version: str | None
    read_index: str | None = None
    write_versions: list[str] = Field(default_factory=list)
    generation: int = 0
    candidate_version: str | None = None
    candidate_index: str | None = None
    ramp_percent: float = 0.0
    shadow_percent: float = 0.0
    writes_paused: bool = False


class Interrupt(_Model):
    """A rollback or abort an operator (or a gate policy) asked for."""

    action: Literal["rollback", "abort"]
    message: OperatorMessage


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
    validation_round: int = 0
    # Where the target's index snapshot stands in the change log: taken before the first shard
    # is built (during the backfill or after it) and kept by a continued run; later writes are
    # overlaid on reads.
    index_log_position: int | None = None
    # Online migrations: change-log position the catch-up replays from, how far the target is
    # behind, the canary share, and the last shadow figures per gate.
    watermark: int | None = None
    catchup_lag: int | None = None
    ramp_percent: float = 0.0
    shadow: list[ShadowFigures] = Field(default_factory=list)
    cutovers: int = 0

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
