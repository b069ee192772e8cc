"""The gate's statistics: intervals that cover what they claim, a query sample spread over
every shard, and gates that decide on the interval (a worse index fails, an equal one passes)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import Sandbox
from tests.test_validation import copy_and_build, validate
from vecmigrate.data.backfill import open_source, open_target
from vecmigrate.model.gates import (
    PAIRS_STRETCH,
    GateAdjustment,
    GateReport,
    GateVerdict,
    RetrievalFigures,
    adjust,
    decide,
    pairs_arrive_in_time,
)
from vecmigrate.model.spec import GatePolicy, MigrationSpec, as_applied_before, parse_spec
from vecmigrate.model.tasks import PrepareResult, hash_shards
from vecmigrate.stores.base import COUNTED_STRATA, in_shard, proportional_quotas
from vecmigrate.validation import gate_queries, measure
from vecmigrate.validation.gates import retrieval_verdicts
from vecmigrate.validation.intervals import (
    mean_score_interval,
    paired_difference_interval,
    quantile_interval,
    queries_for_half_width,
    ratio_interval,
)


def coverage(trials: int, draw, truth: float, interval) -> float:  # type: ignore[no-untyped-def]
    hits = 0
    for _ in range(trials):
        lo, hi = interval(draw())
        hits += lo <= truth <= hi
    return hits / trials


def test_binomial_interval_covers_its_confidence() -> None:
    """One neighbour a query: the plain Wilson interval, 95% coverage within simulation error
    (2,000 trials: a standard error of 0.5%), near the edge of [0, 1] too."""
    rng = np.random.default_rng(11)
    for p, n in ((0.5, 100), (0.9, 200), (0.98, 400)):
        got = coverage(
            2000,
            lambda p=p, n=n: (rng.random(n) < p).astype(float),
            p,
            lambda s: mean_score_interval(s, 1),
        )
        assert 0.93 <= got <= 0.97, (p, n, got)


def test_clustered_recall_interval_covers_its_confidence() -> None:
    """Recall@10 of queries whose own difficulty varies (beta-binomial): neighbours of one query
    are found together, and the design effect keeps the coverage at 95%."""
    rng = np.random.default_rng(12)
    got = coverage(
        2000,
        lambda: rng.binomial(10, rng.beta(6, 2, 300)) / 10,
        0.75,
        lambda s: mean_score_interval(s, 10),
    )
    assert 0.93 <= got <= 0.97, got
    # Every query perfect: still an interval below 1, not certainty.
    lo, hi = mean_score_interval(np.ones(200), 10) or (0.0, 0.0)
    assert 0.995 < lo < 1.0
    assert hi == pytest.approx(1.0)


def test_paired_difference_and_quantile_intervals_cover() -> None:
    rng = np.random.default_rng(13)

    def diff(_: object) -> tuple[float, float]:
        base = rng.beta(5, 2, 400)
        new = np.clip(base + rng.normal(0.01, 0.05, 400), 0, 1)
        # The clip moves the mean a little: the truth is what the clip gives, by Monte Carlo.
        return (paired_difference_interval(new, base) or (0.0, (0.0, 0.0)))[1]

    truth_rng = np.random.default_rng(99)
    base = truth_rng.beta(5, 2, 400_000)
    truth = float((np.clip(base + truth_rng.normal(0.01, 0.05, 400_000), 0, 1) - base).mean())
    assert 0.93 <= coverage(1000, lambda: None, truth, diff) <= 0.97
    median = coverage(
        1000,
        lambda: rng.exponential(1.0, 500),
        float(np.log(2)),
        lambda s: quantile_interval(s, 0.5),
    )
    assert 0.93 <= median <= 0.985  # order statistics: at least the confidence, discretely
    p99 = coverage(
        500,
        lambda: rng.exponential(1.0, 2000),
        float(np.log(100)),
        lambda s: quantile_interval(s, 0.99),
    )
    assert p99 >= 0.93


def test_ratio_interval_of_equal_and_slower_latencies() -> None:
    rng = np.random.default_rng(14)
    old = rng.lognormal(1.0, 0.3, 400)
    same = ratio_interval(old * rng.lognormal(0, 0.05, 400), old, 0.99, 1.0)
    slow = ratio_interval(old * 3, old, 0.99, 1.0)
    assert same is not None
    assert slow is not None
    assert same[1][0] <= 1.0 <= same[1][1]
    assert slow[1][0] > 2.0
    # Below the floor both sides read as the floor: microseconds do not make a ratio.
    tiny = ratio_interval(np.full(100, 0.05), np.full(100, 0.01), 0.99, 1.0)
    assert tiny is not None
    assert tiny[0] == 1.0


def test_decision_rule() -> None:
    assert decide(0.95, (0.93, 0.97), 0.9, ">=") == (True, True)
    assert decide(0.85, (0.83, 0.87), 0.9, ">=") == (False, True)
    assert decide(0.91, (0.88, 0.94), 0.9, ">=") == (True, False)
    assert decide(0.89, (0.86, 0.92), 0.9, ">=") == (False, False)
    assert decide(1.5, (1.2, 1.9), 2.0, "<=") == (True, True)
    assert decide(2.5, (2.1, 3.0), 2.0, "<=") == (False, True)
    assert decide(0.9, None, 0.9, ">=") == (True, True)
    assert queries_for_half_width(0.02) == 2401


def test_verdict_says_when_the_sample_cannot_tell() -> None:
    figures = RetrievalFigures(
        queries=200, target_recall=0.905, target_recall_ci=(0.89, 0.92), confidence=0.95
    )
    (recall,) = [v for v in retrieval_verdicts(GatePolicy(), figures) if v.name == "recall@10"]
    assert recall.passed
    assert recall.undecided
    assert recall.interval == (0.89, 0.92)
    assert recall.queries_needed is not None
    assert recall.queries_needed > 200
    assert "cannot tell" in recall.line()
    # An approver's new threshold is judged by the same rule.
    (moved,) = adjust([recall], [GateAdjustment(gate="recall@10", threshold=0.95)])
    assert not moved.passed
    assert not moved.undecided


def test_proportional_quotas() -> None:
    assert proportional_quotas(10, [50, 30, 20]) == [5, 3, 2]
    assert proportional_quotas(10, [1, 1, 1]) == [1, 1, 1]
    assert sum(proportional_quotas(7, [10, 10, 10])) == 7
    assert proportional_quotas(7, [10, 10, 10]) == [3, 2, 2]
    assert proportional_quotas(5, [0, 100]) == [0, 5]
    assert proportional_quotas(5, [0, 0]) == [0, 0]


def test_query_sample_is_stratified_over_every_shard(sandbox: Sandbox) -> None:
    """Queries come from every shard in proportion to its records, the same from one call to
    the next and another with another seed; the old sample (one run of the key ring) came from
    one shard alone."""
    sandbox.seed(n=3000, shards=2)
    spec = sandbox.spec(shards={"by": "hash", "count": 4}, gates={"sample_queries": 200})
    source, target = open_source(spec), open_target(spec)
    q = gate_queries(spec, source, target)
    assert q.ids is not None
    assert len(q.ids) == 200
    assert len(np.unique(q.ids)) == 200
    shards = hash_shards(4)
    counts = source.shard_counts(shards)
    for s in shards:
        share = 200 * counts[s.index] / 3000
        assert abs(int(in_shard(q.ids, s).sum()) - share) <= 1
    assert q.per_shard == {s.index: int(in_shard(q.ids, s).sum()) for s in shards}
    again = gate_queries(spec, source, target)
    assert np.array_equal(again.ids, q.ids)
    assert again.digest() == q.digest()
    other = gate_queries(
        spec.model_copy(update={"gates": spec.gates.model_copy(update={"seed": 5})}), source, target
    )
    assert other.ids is not None
    assert not np.array_equal(np.sort(other.ids), np.sort(q.ids))
    old = source.sample_records(200, seed=0).labels
    assert sum(bool(in_shard(old, s).any()) for s in shards) <= 2  # one run of the ring


def _built(
    sandbox: Sandbox, target_index: dict[str, object]
) -> tuple[MigrationSpec, PrepareResult, str]:
    """v1 seeded, copied to v2 and v2's index built."""
    sandbox.seed(n=3000, shards=3)
    spec = sandbox.spec(
        target=sandbox.version("v2", target_index).model_dump(mode="json"),
        gates={"min_recall": None, "sample_queries": 400, "max_p99_ratio": None},
    )
    return spec, *copy_and_build(sandbox, spec)


def _migrate(sandbox: Sandbox, target_index: dict[str, object]) -> GateReport:
    return validate(sandbox, *_built(sandbox, target_index))


def test_default_recall_drop_gate_fails_a_worse_index(sandbox: Sandbox) -> None:
    report = _migrate(
        sandbox, {"kind": "hnswlib_hnsw", "m": 2, "ef_search": 1, "ef_construction": 4}
    )
    (vs_old,) = [v for v in report.verdicts if v.name == "recall@10_vs_old"]
    assert not vs_old.passed, vs_old.line()
    assert not vs_old.undecided, vs_old.line()
    assert vs_old.interval is not None
    assert vs_old.interval[1] < (vs_old.threshold or 0)
    f = report.figures
    assert f is not None
    assert f.recall_change is not None
    assert f.recall_change < -0.02
    assert f.target_recall_ci is not None
    assert f.source_recall_ci is not None
    assert f.p99_ms_new_ci is not None
    assert f.p99_ratio_ci is not None


def test_default_recall_drop_gate_passes_an_equal_index(sandbox: Sandbox) -> None:
    report = _migrate(sandbox, {"kind": "faiss_ivf_flat", "nlist": 16, "nprobe": 4})
    (vs_old,) = [v for v in report.verdicts if v.name == "recall@10_vs_old"]
    assert vs_old.passed, vs_old.line()
    f = report.figures
    assert f is not None
    assert f.recall_change_ci is not None
    assert f.recall_change_ci[0] <= 0.0 <= f.recall_change_ci[1] or abs(f.recall_change or 0) < 0.01


def _spec_data(**extra: object) -> dict[str, object]:
    emb = {"model_id": "m", "model_version": "1", "dimension": 64, "metric": "l2"}
    return {
        "collection": "docs",
        "source": {"name": "v1", "embedding": emb, "index": {"kind": "faiss_ivf_flat"}},
        "target": {"name": "v2", "embedding": dict(emb), "index": {"kind": "hnswlib_hnsw"}},
        **extra,
    }


def test_new_defaults_keep_applied_specs_unchanged() -> None:
    """A file applied before the recall-drop and latency defaults parses to them today; as
    that release parsed it, it hashes as it did (apply does not call it edited)."""
    data = _spec_data()
    today = parse_spec(data)
    assert today.gates.max_recall_drop == 0.02
    assert today.gates.max_p99_ratio == 2.0
    recorded = today.model_dump(mode="json")
    recorded["gates"].update(max_recall_drop=None, max_p99_ratio=None)
    before = parse_spec(recorded)  # a stored spec keeps its explicit values and its hash
    assert before.gates.max_recall_drop is None
    assert as_applied_before(today, before).spec_hash() == before.spec_hash()
    edited = parse_spec({**data, "gates": {"max_recall_drop": 0.1}})
    assert as_applied_before(edited, before).spec_hash() != before.spec_hash()


def test_each_index_is_judged_on_the_records_it_was_built_from(sandbox: Sandbox) -> None:
    """Writes after the indexes were built (an online migration's) would count as misses of
    indexes that never saw them; left out, the figures are those of before the writes."""
    spec, prep, index_id = _built(sandbox, {"kind": "faiss_ivf_flat", "nlist": 16, "nprobe": 4})
    source, target = open_source(spec), open_target(spec)
    q = gate_queries(spec, source, target)
    before = measure(sandbox.catalog, spec, source, target, prep.source_index, index_id, queries=q)
    # A near twin of every query, written to both stores after both indexes were built.
    written = np.arange(100_000, 100_000 + len(q.source), dtype=np.int64)
    for store in (source, target):
        store.upsert(written, q.source + np.float32(1e-4))
    stale = measure(sandbox.catalog, spec, source, target, prep.source_index, index_id, queries=q)
    fair = measure(
        sandbox.catalog,
        spec,
        source,
        target,
        prep.source_index,
        index_id,
        queries=q,
        unindexed=(written, written),
    )
    assert before.source_recall is not None
    assert before.target_recall is not None
    assert stale.source_recall is not None
    assert stale.source_recall < before.source_recall - 0.05
    assert fair.source_recall == before.source_recall
    assert fair.target_recall == before.target_recall
    assert fair.overlap == before.overlap


def test_stratified_sample_is_the_same_read_either_way(sandbox: Sandbox) -> None:
    """A store without shard keys (one read of everything) draws the very records a keyed
    store draws by reading a window of each shard: every adapter gives the same queries."""
    sandbox.seed(n=2500, shards=2)
    spec = sandbox.spec(shards={"by": "hash", "count": 5})
    keyed = open_source(spec)
    shards = hash_shards(5)
    windowed = keyed.sample_shards(shards, 137, seed=3)
    scanned = open_source(spec)
    scanned.keyed = False
    read_once = scanned.sample_shards(shards, 137, seed=3)
    assert len(windowed) == 137
    assert np.array_equal(windowed.labels, read_once.labels)
    assert np.array_equal(windowed.vectors(), read_once.vectors())


def test_sample_sized_from_the_precision_the_gate_needs() -> None:
    """``half_width`` sizes the sample for any figure; ``sample_queries`` stays the least, and a
    spec that does not set it hashes as before."""
    assert GatePolicy().queries == 200
    assert GatePolicy(half_width=0.02).queries == queries_for_half_width(0.02) == 2401
    assert GatePolicy(half_width=0.1, sample_queries=500).queries == 500
    # What it promises: the widest recall interval (p = 0.5, one neighbour) at 2,401 queries.
    lo, hi = mean_score_interval(np.r_[np.ones(1200), np.zeros(1201)], 1) or (0.0, 1.0)
    assert (hi - lo) / 2 <= 0.02
    plain = parse_spec(_spec_data())
    assert plain.spec_hash() == parse_spec(_spec_data(gates={"half_width": None})).spec_hash()
    assert plain.spec_hash() != parse_spec(_spec_data(gates={"half_width": 0.02})).spec_hash()


def test_thousands_of_shards_share_the_sample_by_key_range(sandbox: Sandbox) -> None:
    """Past COUNTED_STRATA shards the sample is shared by key range (no count per shard on
    every draw), alike with and without shard keys, and still spread over the shards."""
    sandbox.seed(n=3000, shards=2)
    spec = sandbox.spec(shards={"by": "hash", "count": 4})
    shards = hash_shards(COUNTED_STRATA + 44)
    keyed = open_source(spec)
    windowed = keyed.sample_shards(shards, 600, seed=1)
    scanned = open_source(spec)
    scanned.keyed = False
    read_once = scanned.sample_shards(shards, 600, seed=1)
    assert np.array_equal(windowed.labels, read_once.labels)
    assert 590 <= len(windowed) <= 600  # a shard may hold fewer records than its share
    held = {s.index for s in shards if in_shard(windowed.labels, s).any()}
    assert len(held) == len(shards)


def test_latency_ratio_fails_only_on_evidence() -> None:
    """One stalled query among a few dozen makes a wide interval: the latency gate then passes
    and says the sample cannot tell; an interval wholly above the threshold fails."""
    assert decide(6.5, (1.17, 8.0), 2.0, "<=", doubt_passes=True) == (True, False)
    assert decide(6.5, (2.5, 8.0), 2.0, "<=", doubt_passes=True) == (False, True)

    def ratio_verdict(value: float, bounds: tuple[float, float]) -> GateVerdict:
        figures = RetrievalFigures(
            queries=50,
            latency_queries=50,
            p99_ms_new=value,
            p99_ms_old=1.0,
            p99_ratio=value,
            p99_ratio_ci=bounds,
        )
        (v,) = [v for v in retrieval_verdicts(GatePolicy(), figures) if v.name == "p99_ratio"]
        return v

    stalled = ratio_verdict(6.5, (1.17, 8.0))
    assert stalled.passed
    assert stalled.undecided
    slower = ratio_verdict(3.0, (2.4, 3.6))
    assert not slower.passed
    assert not slower.undecided
    # An approver's threshold is held to the same rule.
    (moved,) = adjust([stalled], [GateAdjustment(gate="p99_ratio", threshold=1.0)])
    assert not moved.passed


def test_a_shadow_step_short_of_pairs_waits_only_as_long_as_their_rate_says() -> None:
    # 6 pairs in 12 s is one every 2 s: the 4 missing come in 8 s
    assert pairs_arrive_in_time(10, 6, watched=12.0, left=8.0)
    assert not pairs_arrive_in_time(10, 6, watched=12.0, left=7.9)
    # no pair yet is no rate at all, however long is left
    assert not pairs_arrive_in_time(10, 0, watched=12.0, left=1e9)
    # enough already: nothing to wait for
    assert pairs_arrive_in_time(10, 10, watched=0.0, left=0.0)
    assert PAIRS_STRETCH > 1
