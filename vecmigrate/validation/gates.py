"""Turning figures into verdicts: each check, its threshold and whether it passed.

Pure Python over the models, so the rules can be read and tested on their own.
"""

from __future__ import annotations

from collections.abc import Sized

from vecmigrate.model.gates import (
    BENEFIT_OF_DOUBT,
    LATENCY_FLOOR_MS,
    GateReport,
    GateVerdict,
    RetrievalFigures,
    ShardCheck,
    decide,
    interval,
)
from vecmigrate.model.spec import GatePolicy, QuarantinePolicy
from vecmigrate.validation.intervals import queries_needed


def _shards(names: list[int]) -> str:
    return "shards " + ", ".join(str(s) for s in names)


def _bounded(
    name: str,
    value: float | None,
    threshold: float | None,
    comparison: str,
    detail: str = "",
    bounds: tuple[float, float] | None = None,
    queries: int = 0,
) -> GateVerdict | None:
    """A verdict for ``value comparison threshold``; None when the check is switched off.

    With ``bounds`` (the figure's confidence interval over ``queries`` queries) the interval
    decides when it lies wholly on one side of the threshold, and the point estimate when it
    lies across it (the verdict then says the sample cannot tell, and about how many queries
    would): see :func:`~vecmigrate.model.gates.decide`.
    """
    if threshold is None:
        return None
    if value is None:
        return GateVerdict(
            name=name,
            threshold=threshold,
            comparison=comparison,
            passed=False,
            detail="not measured" + (f": {detail}" if detail else ""),
        )
    ok, sure = decide(value, bounds, threshold, comparison, name in BENEFIT_OF_DOUBT)
    return GateVerdict(
        name=name,
        value=round(value, 4),
        threshold=threshold,
        comparison=comparison,
        passed=ok,
        detail=detail,
        interval=bounds,
        undecided=not sure,
        queries_needed=None
        if sure or bounds is None
        else queries_needed(queries, value, bounds, threshold),
    )


def _count(name: str, per_shard: dict[int, int], limit: int, what: str) -> GateVerdict:
    bad = {s: n for s, n in per_shard.items() if n > 0}
    total = sum(bad.values())
    return GateVerdict(
        name=name,
        value=float(total),
        threshold=float(limit),
        comparison="<=",
        passed=total <= limit,
        detail=f"{what} in {_shards(sorted(bad))}" if bad else f"no {what}",
    )


def _none_failed(name: str, failed: Sized, detail: str) -> GateVerdict:
    """A verdict that passes only when nothing failed; its value is how many things did."""
    return GateVerdict(
        name=name,
        value=float(len(failed)),
        threshold=0.0,
        comparison="==",
        passed=not failed,
        detail=detail,
    )


def parity_verdicts(
    policy: GatePolicy, same_bytes: bool, checks: list[ShardCheck]
) -> list[GateVerdict]:
    """Counts per shard, then ids and bytes (or the id set where the vectors were transformed)."""
    out = []
    if policy.require_count_parity:
        diff = [c for c in checks if c.source.count != c.target.count]
        out.append(
            _none_failed(
                "count_parity",
                diff,
                "; ".join(
                    f"shard {c.shard}: {c.source.count} source vs {c.target.count} target"
                    for c in diff
                )
                or f"{sum(c.target.count for c in checks)} records in {len(checks)} shards",
            )
        )
    if policy.require_checksum_parity:
        name, field = (
            ("checksum_parity", "checksum") if same_bytes else ("id_parity", "id_checksum")
        )
        bad = [c.shard for c in checks if getattr(c.source, field) != getattr(c.target, field)]
        what = (
            "ids and vector bytes" if same_bytes else "id sets (vectors transformed or re-embedded)"
        )
        out.append(
            _none_failed(
                name, bad, f"{what} differ in {_shards(bad)}" if bad else f"{what} identical"
            )
        )
        if any(c.source.payload_checksum or c.target.payload_checksum for c in checks):
            moved = [
                c.shard for c in checks if c.source.payload_checksum != c.target.payload_checksum
            ]
            sums = "; ".join(
                f"shard {c.shard}: {c.source.payload_checksum} / {c.target.payload_checksum}"
                for c in checks[:4]
            )
            out.append(
                GateVerdict(
                    name="payload_parity",
                    value=float(len(moved)),
                    threshold=0.0,
                    comparison="==",
                    passed=not moved,
                    detail=(
                        f"ids with payloads differ in {_shards(moved)}"
                        if moved
                        else "ids with payloads identical"
                    )
                    + f" (source / target: {sums}{' ...' if len(checks) > 4 else ''})",
                )
            )
    return out


def quarantine_verdict(policy: QuarantinePolicy, checks: list[ShardCheck]) -> GateVerdict:
    """Source records left out of the migration, by reason, against the spec's limit (with no
    limit, a verdict that passes with the figures)."""
    reasons: dict[str, int] = {}
    for c in checks:
        for reason, n in c.source.quarantined.items():
            reasons[reason] = reasons.get(reason, 0) + n
    total = sum(reasons.values())
    detail = ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items()))
    limit = policy.max_records
    return GateVerdict(
        name="quarantine",
        value=float(total),
        threshold=None if limit is None else float(limit),
        comparison="info" if limit is None else "<=",
        passed=limit is None or total <= limit,
        detail=(detail or "no record left out")
        + ("" if limit is not None or not total else "; the spec lets the migration pass"),
    )


def integrity_verdicts(
    policy: GatePolicy, normalized_target: bool, checks: list[ShardCheck], same_model: bool = True
) -> list[GateVerdict]:
    """Bad vectors, duplicate ids and norms of the target, shard by shard (norms against the
    source's only within one model: another model's norms live on another scale)."""
    ip = policy.integrity
    out = [
        _count(
            "nonfinite",
            {c.shard: c.target.nonfinite for c in checks},
            ip.max_nonfinite,
            "NaN/inf vectors",
        ),
        _count(
            "duplicate_ids",
            {c.shard: c.target.duplicate_ids for c in checks},
            ip.max_duplicate_ids,
            "duplicate ids",
        ),
    ]
    if ip.max_zero_vectors is not None:
        new_zeros = {c.shard: max(0, c.target.zero - c.source.zero) for c in checks}
        out.append(_count("zero_vectors", new_zeros, ip.max_zero_vectors, "new zero vectors"))
    if normalized_target:
        out.append(
            _count(
                "unit_norm",
                {c.shard: c.target.off_unit_norm for c in checks},
                0,
                f"vectors off unit norm by more than {ip.unit_norm_tolerance}",
            )
        )
    if ip.norm_range_tolerance is not None and same_model:
        bad = []
        for c in checks:
            s_lo, s_hi, t_lo, t_hi = (
                c.source.norm_min,
                c.source.norm_max,
                c.target.norm_min,
                c.target.norm_max,
            )
            if s_lo is None or s_hi is None or t_lo is None or t_hi is None:
                continue
            slack = ip.norm_range_tolerance * max(s_hi, 1e-12)
            if t_lo < s_lo - slack or t_hi > s_hi + slack:
                bad.append(
                    f"shard {c.shard}: [{t_lo:.4g}, {t_hi:.4g}] vs source [{s_lo:.4g}, {s_hi:.4g}]"
                )
        out.append(
            _none_failed(
                "norm_range", bad, "; ".join(bad) or "target norms within the source's range"
            )
        )
    lo = [c.target.norm_min for c in checks if c.target.norm_min is not None]
    hi = [c.target.norm_max for c in checks if c.target.norm_max is not None]
    if ip.norm_min is not None and lo:
        v = _bounded("norm_min", min(lo), ip.norm_min, ">=")
        assert v is not None
        out.append(v)
    if ip.norm_max is not None and hi:
        v = _bounded("norm_max", max(hi), ip.norm_max, "<=")
        assert v is not None
        out.append(v)
    return out


def retrieval_verdicts(
    policy: GatePolicy, f: RetrievalFigures, same_model: bool = True
) -> list[GateVerdict]:
    """Recall, old-vs-new agreement, latency and distribution figures against thresholds.

    Across models the distribution checks do not apply (another model's vectors follow another
    distribution by design); the read options of the re-embedding are reported instead.
    """
    k = f.k
    dist = policy.distribution if same_model else None
    why = "skipped: " + ", ".join(f.skipped) if f.skipped else ""
    n = f.queries
    old_recall = f.source_recall
    vs_old = None if old_recall is None or f.recall_change_ci is None else f.recall_change_ci
    if f.p99_ratio is not None:
        ratio: float | None = f.p99_ratio
    elif f.p99_ms_old and f.p99_ms_new is not None:  # a report from before the paired ratio
        ratio = f.p99_ms_new / f.p99_ms_old
    else:
        ratio = None
    candidates = [
        _bounded(
            f"recall@{k}",
            f.target_recall,
            policy.min_recall,
            ">=",
            f"new index vs exact search, {f.queries} {f.query_source} queries"
            + ("" if same_model else f" embedded by {f.target_model}")
            + _per_shard(f),
            f.target_recall_ci,
            n,
        ),
        _bounded(
            f"recall@{k}_vs_old",
            f.target_recall,
            None
            if policy.max_recall_drop is None or old_recall is None
            else round(old_recall - policy.max_recall_drop, 4),
            ">=",
            f"old index recall@{k} is {old_recall}"
            + ("" if f.source_recall_ci is None else f" {interval(f.source_recall_ci)}")
            + (
                ""
                if f.recall_change is None or f.recall_change_ci is None
                else f"; new - old {f.recall_change:+.4f} {interval(f.recall_change_ci)}, "
                "paired over the same queries"
            ),
            # The old recall plus the paired difference's interval: the new index's recall as
            # the comparison with the old one knows it (far tighter than the two apart).
            None
            if vs_old is None or old_recall is None
            else (
                round(max(0.0, old_recall + vs_old[0]), 4),
                round(min(1.0, old_recall + vs_old[1]), 4),
            ),
            n,
        ),
        _bounded(
            f"overlap@{k}",
            f.overlap,
            policy.min_overlap,
            ">=",
            "old vs new top-k",
            f.overlap_ci,
            n,
        ),
        _bounded(
            "rank_correlation",
            f.rank_correlation,
            policy.min_rank_correlation,
            ">=",
            "Spearman, ids both return",
        ),
        _bounded(
            "p99_ratio",
            ratio,
            policy.max_p99_ratio,
            "<=",
            f"p99 new {f.p99_ms_new} ms / old {f.p99_ms_old} ms"
            + (
                ""
                if f.p99_ratio is None
                else f", each read as at least {LATENCY_FLOOR_MS:g} ms, "
                f"{f.latency_queries} queries timed in turns"
            ),
            f.p99_ratio_ci,
            f.latency_queries,
        ),
    ]
    # The distribution figures, each bounded above by the policy's ``max_<name>``.
    for name, detail in (
        (
            "norm_ks",
            f"two-sample KS on norms, p = {f.norm_ks_pvalue}, {f.distribution_sample} each",
        ),
        ("mean_shift", "distance of means / mean norm"),
        ("spectrum_shift", "total variation of covariance spectra"),
    ):
        value = getattr(f, name)
        candidates.append(
            _bounded(
                name,
                value,
                None if dist is None else getattr(dist, f"max_{name}"),
                "<=",
                detail if value is not None else why,
            )
        )
    out = [v for v in candidates if v is not None]
    out.extend(index_bytes_verdicts(f))
    for name in ("p50_ms_old", "p99_ms_old", "p50_ms_new", "p99_ms_new"):
        value = getattr(f, name)
        if value is not None:
            out.append(
                GateVerdict(
                    name=name,
                    value=value,
                    comparison="info",
                    passed=True,
                    interval=getattr(f, f"{name}_ci"),
                )
            )
    if not same_model:
        out.append(
            GateVerdict(
                name="distribution",
                comparison="info",
                passed=True,
                detail=f"not compared: {f.source_model} and {f.target_model} are different models",
            )
        )
    for option in f.read_options:
        for figure in ("overlap", "hit_rate"):
            value = getattr(option, figure)
            out.append(
                GateVerdict(
                    name=f"read.{option.name}.{figure}@{k}",
                    value=value,
                    comparison="info",
                    passed=True,
                    detail=f"{option.via}, {f.task_queries} known-item queries"
                    + (f"; {option.detail}" if option.detail else ""),
                )
            )
    return out


def _per_shard(f: RetrievalFigures) -> str:
    """``; per shard 0: 50, 1: 49, ...`` (the query sample's strata), or nothing."""
    if not f.queries_per_shard:
        return ""
    shown = ", ".join(f"{s}: {n}" for s, n in sorted(f.queries_per_shard.items())[:8])
    more = " ..." if len(f.queries_per_shard) > 8 else ""
    return f" (by shard {shown}{more})"


def index_bytes_verdicts(f: RetrievalFigures) -> list[GateVerdict]:
    """The bytes of both indexes beside the recall they buy (figures, not gates)."""
    out = []
    for name, size, count in (
        ("index_bytes_old", f.source_index_bytes, f.source_vectors),
        ("index_bytes_new", f.target_index_bytes, f.target_vectors),
    ):
        if size is None:
            continue
        per = f"{size / count:,.1f} bytes a vector, " if count else ""
        out.append(
            GateVerdict(
                name=name,
                value=float(size),
                comparison="info",
                passed=True,
                detail=f"{per}{size / 1e6:,.2f} MB on disk",
            )
        )
    if f.source_index_bytes and f.target_index_bytes is not None:
        ratio = f.target_index_bytes / f.source_index_bytes
        recall = (
            f"; recall@{f.k} {f.source_recall} -> {f.target_recall}"
            if f.target_recall is not None
            else ""
        )
        out.append(
            GateVerdict(
                name="index_bytes_ratio",
                value=round(ratio, 4),
                comparison="info",
                passed=True,
                detail=f"new index / old index{recall}",
            )
        )
    return out


def judge(
    policy: GatePolicy,
    *,
    quarantine: QuarantinePolicy | None = None,
    same_bytes: bool,
    normalized_target: bool,
    same_model: bool = True,
    checks: list[ShardCheck],
    figures: RetrievalFigures,
) -> GateReport:
    """The gate report: every verdict, passed only if all pass."""
    listed = checks if len(checks) <= REPORT_SHARDS else _suspect(checks)[:REPORT_SHARDS]
    verdicts = parity_verdicts(policy, same_bytes, checks)
    verdicts.append(quarantine_verdict(quarantine or QuarantinePolicy(), checks))
    verdicts += integrity_verdicts(policy, normalized_target, checks, same_model)
    verdicts += retrieval_verdicts(policy, figures, same_model)
    return GateReport(
        passed=all(v.passed for v in verdicts),
        verdicts=verdicts,
        source_recall=figures.source_recall,
        target_recall=figures.target_recall,
        k=figures.k,
        queries=figures.queries,
        source_counts={c.shard: c.source.count for c in listed},
        target_counts={c.shard: c.target.count for c in listed},
        shards=listed,
        figures=figures,
    )


# A report lists every shard's profiles up to this many shards; beyond, only the shards that
# look wrong (the report rides in workflow payloads, and every profile is in the shard journal).
REPORT_SHARDS = 64


def _suspect(checks: list[ShardCheck]) -> list[ShardCheck]:
    def wrong(c: ShardCheck) -> bool:
        s, t = c.source, c.target
        return (
            s.count != t.count
            or s.checksum != t.checksum
            or s.payload_checksum != t.payload_checksum
            or bool(s.quarantined)
            or t.nonfinite > 0
            or t.duplicate_ids > 0
            or t.zero > 0
        )

    return [c for c in checks if wrong(c)]
