"""Gate figures and verdicts, and the operator's adjustments to them.

A verdict holds the figure measured, the threshold it was held to and whether it passed. An
approver can override a named gate or change its threshold (the ``set_gate`` update); the
adjustment is applied to the figures already measured, so it changes the verdict without
measuring again. Pure models and functions: the workflow applies them inside its sandbox.
"""

from __future__ import annotations

import math

from pydantic import Field

from vecmigrate.model.base import Model as _Model
from vecmigrate.model.spec import ShadowPolicy

# Two-sided confidence of every interval the gate reports on a sampled figure.
CONFIDENCE = 0.95


class GateVerdict(_Model):
    """One check: the figure measured, the threshold it was held to, and the verdict."""

    name: str
    value: float | None = None
    threshold: float | None = None
    comparison: str = ">="
    passed: bool
    detail: str = ""
    # Who changed this verdict's threshold or overrode it, and why (empty: as measured).
    adjusted: str = ""
    # A sampled figure's confidence interval (see docs/validation.md for the rule that decides
    # on it); None for a figure counted exactly, and in reports written before intervals.
    interval: tuple[float, float] | None = None
    # The interval lies across the threshold: the point estimate decided, the sample could not
    # tell; ``queries_needed`` is about how many queries would.
    undecided: bool = False
    queries_needed: int | None = None

    @property
    def judged(self) -> bool:
        """Whether the verdict decides anything (``info`` figures do not)."""
        return self.comparison != "info"

    def line(self) -> str:
        """``name = value [lo, hi] (needs >= threshold): detail``."""
        shown = f"{self.value}" + ("" if self.interval is None else f" {interval(self.interval)}")
        line = f"{self.name} = {shown} (needs {self.comparison} {self.threshold})"
        if self.undecided:
            line += " (the sample cannot tell" + (
                f"; about {self.queries_needed:,} queries would)" if self.queries_needed else ")"
            )
        return f"{line}: {self.detail}" if self.detail else line


def interval(bounds: tuple[float, float]) -> str:
    """An interval as ``[lo, hi]``, to four significant digits."""
    return f"[{bounds[0]:.4g}, {bounds[1]:.4g}]"


# Gates whose interval across the threshold passes instead of leaving it to the point
# estimate: a latency ratio fails only when the sample shows the new index slower. Timings on
# a shared machine stall now and then, and the p99 of a few hundred queries is their slowest
# two or three, so one stall cannot be told from a slow index without more queries.
BENEFIT_OF_DOUBT = frozenset({"p99_ratio"})


def decide(
    value: float,
    bounds: tuple[float, float] | None,
    threshold: float,
    comparison: str,
    doubt_passes: bool = False,
) -> tuple[bool, bool]:
    """``(passed, sure)`` for ``value comparison threshold`` (``>=`` or ``<=``) measured with
    the interval ``bounds``: an interval wholly on one side of the threshold decides
    (``sure``); one across it leaves the decision to the point estimate, or passes with
    ``doubt_passes`` (see :data:`BENEFIT_OF_DOUBT`). Without an interval (a figure counted
    exactly), the value decides."""
    ok = value >= threshold if comparison == ">=" else value <= threshold
    if bounds is None:
        return ok, True
    lo, hi = bounds
    if comparison == ">=":
        if lo >= threshold:
            return True, True
        if hi < threshold:
            return False, True
    else:
        if hi <= threshold:
            return True, True
        if lo > threshold:
            return False, True
    return ok or doubt_passes, False


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
    # Where the profiles come from: "streamed" (computed by the copy, the target checked by its
    # count and a read-back sample), "read" (both versions read in full), or "read: <why>"
    # (read in full because the streamed figures could not be used).
    basis: str = "read"


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
    # Confidence intervals of the sampled figures above (at ``confidence``, two-sided), and
    # the paired figures judged on them: the new index's recall less the old one's over the
    # same queries, and the ratio of the p99s (each read as at least LATENCY_FLOOR_MS). None in
    # reports written before intervals.
    confidence: float | None = None
    source_recall_ci: tuple[float, float] | None = None
    target_recall_ci: tuple[float, float] | None = None
    overlap_ci: tuple[float, float] | None = None
    recall_change: float | None = None
    recall_change_ci: tuple[float, float] | None = None
    p50_ms_old_ci: tuple[float, float] | None = None
    p99_ms_old_ci: tuple[float, float] | None = None
    p50_ms_new_ci: tuple[float, float] | None = None
    p99_ms_new_ci: tuple[float, float] | None = None
    p99_ratio: float | None = None
    p99_ratio_ci: tuple[float, float] | None = None
    # Queries drawn from each shard of the sample (stratified in proportion to the records).
    queries_per_shard: dict[int, int] = Field(default_factory=dict)
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
    # What each index takes on disk (its artifacts; None for a database's own index), and the
    # vectors it holds: a cheaper format is judged on its bytes beside its recall.
    source_index_bytes: int | None = None
    target_index_bytes: int | None = None
    source_vectors: int = 0
    target_vectors: int = 0


class GateAdjustment(_Model):
    """An approver's change to one gate: a new threshold, or an override with a reason."""

    gate: str
    threshold: float | None = None
    override: bool = False
    operator: str = "unknown"
    reason: str = ""
    at: str = ""

    def note(self) -> str:
        """How the verdict shows the change."""
        what = "overridden" if self.override else f"threshold set to {self.threshold}"
        return f"{what} by {self.operator}" + (f": {self.reason}" if self.reason else "")


def _compare(
    value: float | None,
    comparison: str,
    threshold: float | None,
    bounds: tuple[float, float] | None = None,
    doubt_passes: bool = False,
) -> bool:
    if comparison == "info":
        return True
    if value is None or threshold is None or math.isnan(value):
        return False
    if comparison in (">=", "<="):
        return decide(value, bounds, threshold, comparison, doubt_passes)[0]
    return value == threshold


def adjust(verdicts: list[GateVerdict], adjustments: list[GateAdjustment]) -> list[GateVerdict]:
    """``verdicts`` with the latest adjustment of each gate applied (as measured otherwise)."""
    latest = {a.gate: a for a in adjustments}
    out = []
    for v in verdicts:
        a = latest.get(v.name)
        if a is None or not v.judged:
            out.append(v)
        elif a.override:
            out.append(v.model_copy(update={"passed": True, "adjusted": a.note()}))
        else:
            doubt = v.name in BENEFIT_OF_DOUBT
            passed = _compare(v.value, v.comparison, a.threshold, v.interval, doubt)
            sure = (
                v.value is None
                or a.threshold is None
                or v.comparison not in (">=", "<=")
                or decide(v.value, v.interval, a.threshold, v.comparison)[1]
            )
            out.append(
                v.model_copy(
                    update={
                        "threshold": a.threshold,
                        "passed": passed,
                        "adjusted": a.note(),
                        "undecided": not sure,
                        "queries_needed": None,
                    }
                )
            )
    return out


def remedies(verdicts: list[GateVerdict]) -> list[str]:
    """For each failed verdict, what would change it (for ``status`` after a failed gate)."""
    out = []
    for v in verdicts:
        if v.passed or not v.judged:
            continue
        if v.value is None:
            out.append(
                f"{v.name} was not measured ({v.detail or 'no figure'}): override it with a "
                "reason (set_gate), or roll back"
            )
        elif v.comparison == "==":
            out.append(
                f"{v.name}: {v.detail}: the data differ; repair them and resume with "
                "revalidate=true, override it with a reason (set_gate), or roll back"
            )
        else:
            out.append(
                f"{v.name} is {v.value:g}, needs {v.comparison} {v.threshold:g}: it passes with a "
                f"threshold of {v.value:g} or an override with a reason (set_gate); or roll back"
            )
    return out


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
    # What the data looked like when measured (counts and change-log head): a resume measures
    # again only when it changed.
    data_state: str = ""

    def failures(self) -> list[str]:
        """One line per failed verdict, for ``status`` and the ledger."""
        return [v.line() for v in self.verdicts if not v.passed]

    def adjusted(self, adjustments: list[GateAdjustment]) -> GateReport:
        """This report with the approvers' adjustments applied to its verdicts."""
        verdicts = adjust(self.verdicts, adjustments)
        return self.model_copy(
            update={"verdicts": verdicts, "passed": all(v.passed for v in verdicts)}
        )


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
    verdicts: list[GateVerdict] = Field(default_factory=list)


# A shadow step short of its pairs after its first wait goes on collecting, while the pairs'
# rate says the rest will come, for up to this many times that wait in all.
PAIRS_STRETCH = 4


def pairs_arrive_in_time(need: int, have: int, watched: float, left: float) -> bool:
    """Whether the ``need - have`` pairs still missing come within ``left`` seconds at the rate
    the ``have`` pairs came over ``watched`` seconds. No pair yet says no rate: False. (A budget
    that cut the share of reads mirrored slows the pairs; it does not stop them.)"""
    if have >= need:
        return True
    if have <= 0 or watched <= 0:
        return False
    return (need - have) * watched / have <= left


# The shadow latency gate compares p99s against at least this many milliseconds: below it a
# ratio measures scheduler noise, not the index.
LATENCY_FLOOR_MS = 1.0


def shadow_verdicts(
    figures: ShadowFigures, policy: ShadowPolicy, adjustments: list[GateAdjustment]
) -> list[GateVerdict]:
    """The shadow gate's verdicts on ``figures``: enough pairs, overlap, p99 ratio."""
    verdicts = [
        GateVerdict(
            name="shadow.samples",
            value=float(figures.samples),
            threshold=float(policy.min_samples),
            comparison=">=",
            passed=figures.samples >= policy.min_samples,
            detail="shadow pairs (no traffic is not a pass)",
        )
    ]
    if policy.min_overlap is not None:
        verdicts.append(
            GateVerdict(
                name="shadow.overlap",
                value=figures.overlap,
                threshold=policy.min_overlap,
                comparison=">=",
                passed=_compare(figures.overlap, ">=", policy.min_overlap),
                detail="old vs new top-k on the same live queries",
            )
        )
    if policy.max_p99_ratio is not None and figures.samples:
        old, new = figures.p99_ms_old or 0.0, figures.p99_ms_new or 0.0
        ratio = round(new / max(old, LATENCY_FLOOR_MS), 4)
        verdicts.append(
            GateVerdict(
                name="shadow.p99_ratio",
                value=ratio,
                threshold=policy.max_p99_ratio,
                comparison="<=",
                passed=ratio <= policy.max_p99_ratio,
                detail=f"p99 {new:.2f} ms on the new version vs {old:.2f} ms",
            )
        )
    return adjust(verdicts, adjustments)


# What a reconcile tells apart, in this order: records of the source the target lacks, records
# of the target the source lacks, and records on both sides whose vectors or payload differ.
DIFF_KINDS = ("missing", "extra", "vector", "payload")


class DiffCounts(_Model):
    """Records per kind of difference (see :data:`DIFF_KINDS`)."""

    missing: int = 0
    extra: int = 0
    vector: int = 0
    payload: int = 0

    def total(self) -> int:
        """Every difference (a record whose vector and payload both differ counts twice)."""
        return self.missing + self.extra + self.vector + self.payload

    def plus(self, other: DiffCounts) -> DiffCounts:
        """The counts of both."""
        return DiffCounts(
            missing=self.missing + other.missing,
            extra=self.extra + other.extra,
            vector=self.vector + other.vector,
            payload=self.payload + other.payload,
        )

    def line(self) -> str:
        """``missing 1, extra 2, ...`` (kinds with none left out); ``none`` when all are 0."""
        parts = [f"{k} {getattr(self, k):,}" for k in DIFF_KINDS if getattr(self, k)]
        return ", ".join(parts) or "none"


class ShardReconcile(_Model):
    """One shard compared record by record (and repaired, and compared again)."""

    shard: int
    found: DiffCounts = Field(default_factory=DiffCounts)
    repaired: DiffCounts = Field(default_factory=DiffCounts)
    # The pass after the repair (None when nothing was repaired or no repair was asked).
    again: DiffCounts | None = None
    source_records: int = 0
    target_records: int = 0
    # Source records no target can hold (the quarantine's): left out, never "missing".
    quarantined: int = 0
    # Records written while the shard was compared (the change log names them): left out.
    excluded: int = 0
    # False when the migration changes vectors (a new model, dimension or transform that
    # cannot be replayed): then ids and payload are compared, not vectors.
    vectors_compared: bool = True
    # True when both versions read the same records (``records: shared``): nothing to compare.
    shared: bool = False
    # How the shard was compared: "streamed" (the copy's figures of both versions agree and the
    # stores checked out against them; the records written during the migration read from both),
    # "read" (both versions read in full), or "read: <why>" (in full, the figures not standing).
    basis: str = "read"
    seconds: float = 0.0

    def left(self) -> DiffCounts:
        """What differs after this shard's work: the second pass's finding, else the first's
        less what was repaired."""
        if self.again is not None:
            return self.again
        return DiffCounts(
            **{k: getattr(self.found, k) - getattr(self.repaired, k) for k in DIFF_KINDS}
        )


class ReconcileReport(_Model):
    """The reconcile gate of a migration: what it found and repaired, per shard and in total,
    and whether the pass after the repair found nothing (the verdict)."""

    found: DiffCounts = Field(default_factory=DiffCounts)
    repaired: DiffCounts = Field(default_factory=DiffCounts)
    left: DiffCounts = Field(default_factory=DiffCounts)
    shards: int = 0
    # Only the shards where something differed (a clean shard is counted, not listed).
    differing: list[ShardReconcile] = Field(default_factory=list)
    quarantined: int = 0
    excluded: int = 0
    vectors_compared: bool = True
    passed: bool = True
    seconds: float = 0.0
    # Shards compared from the copy's streamed figures rather than by reading both versions.
    streamed: int = 0

    # Whether every shard has been compared (a gate in progress is not judged yet).
    done: bool = False
    # While it runs: the shards compared so far (a run continued as new goes on with the
    # rest); emptied when done, so a migration of thousands of shards does not carry them.
    compared: list[int] = Field(default_factory=list)

    def add(self, result: ShardReconcile) -> None:
        """Fold in one shard's result."""
        left = result.left()
        self.found = self.found.plus(result.found)
        self.repaired = self.repaired.plus(result.repaired)
        self.left = self.left.plus(left)
        self.shards += 1
        if result.found.total() or left.total():
            self.differing = sorted([*self.differing, result], key=lambda r: r.shard)
        self.quarantined += result.quarantined
        self.excluded += result.excluded
        self.vectors_compared = self.vectors_compared and result.vectors_compared
        self.passed = not self.left.total()
        self.seconds = round(self.seconds + result.seconds, 3)
        self.streamed += result.basis == "streamed"
        self.compared.append(result.shard)

    @classmethod
    def of(cls, results: list[ShardReconcile]) -> ReconcileReport:
        """The report of these shards' results (every shard compared)."""
        report = cls()
        for r in results:
            report.add(r)
        report.finish()
        return report

    def finish(self) -> None:
        """Every shard compared: the report is judged."""
        self.done = True
        self.compared = []

    def failures(self) -> list[str]:
        """Why the gate failed (empty when it passed)."""
        if self.passed:
            return []
        shards = [r.shard for r in self.differing if r.left().total()]
        return [
            f"reconcile: after the repair {self.left.line()} still differ "
            f"(shards {shards[:10]}{' ...' if len(shards) > 10 else ''})"
        ]

    def line(self) -> str:
        """One line for a status or a report."""
        what = "ids, vectors and payload" if self.vectors_compared else "ids and payload"
        verdict = "passed" if self.passed else "FAILED"
        return (
            f"reconcile {verdict}: {self.shards} shards compared by {what}; found "
            f"{self.found.line()}; repaired {self.repaired.line()}; left {self.left.line()}"
        )
