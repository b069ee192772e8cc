"""Gates that fail when they should, on real data (GloVe vectors), real stores and indexes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from tests.conftest import Sandbox
from tests.test_records import GOLDEN, reference_fold
from vecmigrate.catalog.journal import Journal, Truth
from vecmigrate.data.backfill import copy_shard, open_source, open_target, prepare
from vecmigrate.data.datasets import glove
from vecmigrate.errors import ArtifactError, PreconditionError
from vecmigrate.indexes.build import artifact_dir, build_shard, load_index_version, register_index
from vecmigrate.model.gates import GateReport, RetrievalFigures, ShardCheck, ShardProfile
from vecmigrate.model.spec import GatePolicy, MigrationSpec
from vecmigrate.model.tasks import PrepareResult
from vecmigrate.records.checksums import record_hashes
from vecmigrate.records.vectors import repeated_ids
from vecmigrate.stores import BuiltinStore
from vecmigrate.validation import (
    check_shard,
    exclude_self,
    gate_queries,
    judge,
    measure,
    overlap_at_k,
    rank_correlation,
    recall_at_k,
    same_data,
    timed_search,
    validate_migration,
)
from vecmigrate.validation.distribution import ks_two_sample, spectrum_shift
from vecmigrate.validation.profile import ProfileBuilder
from vecmigrate.validation.run import distribution_values

N = 4000
IVF = {"kind": "faiss_ivf_flat", "nlist": 32, "nprobe": 8}
# A copy, an index build and the whole gate suite over real vectors take a second or more a test:
# those tests run with the integration tier; the figures' own arithmetic stays fast.
INTEGRATION_FIXTURES = frozenset({"words"})


@pytest.fixture(scope="module")
def words() -> np.ndarray:
    return glove(N)


def migrate(
    sandbox: Sandbox,
    words: np.ndarray,
    index: dict[str, Any] | None = None,
    normalized: bool = False,
    metric: str = "l2",
    **overrides: Any,
) -> tuple[MigrationSpec, PrepareResult, str]:
    """Seed v1 with real vectors, copy to v2 and build v2's index; validation comes next."""
    sandbox.seed(vectors=words)
    target = sandbox.version(
        "v2", index or {"kind": "hnswlib_hnsw", "m": 16}, normalized=normalized, metric=metric
    )
    spec = sandbox.spec(target=target.model_dump(mode="json"), **overrides)
    return spec, *copy_and_build(sandbox, spec)


def copy_and_build(sandbox: Sandbox, spec: MigrationSpec) -> tuple[PrepareResult, str]:
    """The migration prepared, every shard copied to v2 and v2's index built, as the workflow
    does before validating: the plan and the index's id."""
    prep = prepare(sandbox.catalog, spec, "test")
    for shard in prep.shards:
        copy_shard(spec, shard, Journal(sandbox.catalog))
    return prep, rebuild(sandbox, spec, prep)


def rebuild(sandbox: Sandbox, spec: MigrationSpec, prep: PrepareResult) -> str:
    target = open_target(spec)
    directory = artifact_dir(spec.target.store, spec.tenant, spec.collection, spec.target.name)
    arts = [build_shard(target, spec.target, s, directory, threads=1) for s in prep.shards]
    return register_index(sandbox.catalog, spec.tenant, spec.collection, spec.target, arts, None).id


def validate(
    sandbox: Sandbox, spec: MigrationSpec, prep: PrepareResult, index_id: str
) -> GateReport:
    return validate_migration(
        sandbox.catalog,
        spec,
        open_source(spec),
        open_target(spec),
        prep.shards,
        prep.source_index,
        index_id,
    )


def failed(report: GateReport) -> set[str]:
    return {v.name for v in report.verdicts if not v.passed}


def shard_ids(store: BuiltinStore, prep: PrepareResult, shard: int) -> np.ndarray:
    return next(iter(store.iter_shard(prep.shards[shard], 10**6))).ids


def corrupt(store: BuiltinStore, ids: np.ndarray, change: Any) -> None:
    """Rewrite stored vector bytes behind the store's back, as a bad disk or script would."""
    found, vecs = store.fetch(ids)
    with store.engine.begin() as conn:
        for i, v in zip(found.tolist(), change(vecs), strict=True):
            conn.execute(
                text("UPDATE vm_vectors SET vec = :v WHERE ns = :ns AND id = :id"),
                {"v": np.asarray(v, np.float32).tobytes(), "ns": store.ns, "id": i},
            )


def test_faithful_migration_passes_every_gate(sandbox: Sandbox, words: np.ndarray) -> None:
    spec, prep, index_id = migrate(
        sandbox,
        words,
        gates={
            "min_recall": 0.9,
            "max_recall_drop": 0.05,
            "min_overlap": 0.5,
            "min_rank_correlation": 0.5,
            "max_p99_ratio": 50.0,
        },
    )
    report = validate(sandbox, spec, prep, index_id)
    assert report.passed, report.failures()
    names = {v.name for v in report.verdicts}
    assert {
        "count_parity",
        "checksum_parity",
        "nonfinite",
        "zero_vectors",
        "norm_range",
        "recall@10",
        "recall@10_vs_old",
        "overlap@10",
        "rank_correlation",
        "p99_ratio",
        "norm_ks",
        "mean_shift",
        "spectrum_shift",
    } <= names
    f = report.figures
    assert f is not None
    assert f.mean_shift == 0.0
    assert f.norm_ks == 0.0
    assert sum(c.target.count for c in report.shards) == N


def test_identical_data_reads_one_sample_for_the_distribution_figures(
    sandbox: Sandbox, words: np.ndarray
) -> None:
    """Once the shard checks prove the target holds the source's bytes, the target's sample
    stands for both sides: the same figures as drawing both, one read fewer."""
    spec, prep, index_id = migrate(sandbox, words)
    report = validate(sandbox, spec, prep, index_id)
    assert same_data(spec, report.shards)
    source, target = open_source(spec), open_target(spec)
    both = distribution_values(spec, source, target)
    one = distribution_values(spec, source, target, same=True)
    assert one == both
    assert both["distribution_sample"] > 0


def test_folded_ground_truth_is_the_exact_search(sandbox: Sandbox, words: np.ndarray) -> None:
    """The shard checks' read also runs the exact search: same figures as searching apart."""
    spec, prep, index_id = migrate(sandbox, words, gates={"max_recall_drop": 0.05})
    source, target = open_source(spec), open_target(spec)
    queries = gate_queries(spec, source, target)
    knn = queries.exact_search(spec)
    checks = [check_shard(spec, source, target, s, truth=knn) for s in prep.shards]
    _, searched = target.search(queries.target, queries.ask)
    assert np.array_equal(np.sort(knn.result()[1], axis=1), np.sort(searched, axis=1))
    assert same_data(spec, checks)
    args = (sandbox.catalog, spec, source, target, prep.source_index, index_id)
    folded = measure(*args, queries=queries, truth=knn.result(), source_is_target=True)
    apart = measure(*args)
    assert folded.truth_source == "shard checks"
    assert apart.truth_source == "search"
    assert folded.target_recall == apart.target_recall
    assert folded.source_recall == apart.source_recall
    assert folded.overlap == apart.overlap

    # One record differs between the sides: the checks no longer prove the same data, so the
    # source's recall needs its own exact search.
    corrupt(target, shard_ids(target, prep, 0)[:1], lambda v: v + 1.0)
    checks = [check_shard(spec, source, target, s) for s in prep.shards]
    assert not same_data(spec, checks)


def _untimed(fig: RetrievalFigures) -> dict[str, Any]:
    """Every figure but the measured ones (latencies, their ratio, the seconds taken)."""
    timed = ("p50_ms", "p99_ms", "p99_ratio", "seconds")
    return {k: v for k, v in fig.model_dump().items() if not k.startswith(timed)}


def test_stages_overlapped_give_the_figures_of_one_after_another(
    sandbox: Sandbox, words: np.ndarray
) -> None:
    """Without a latency budget the old index is loaded and searched, and the distribution
    samples read, beside the target's recall: the figures are those of running the stages one
    after another (as with a budget's pause), on a target whose recall, agreement and
    distribution all differ from the source's; and a tampered old index still stops them."""
    one_probe = {"kind": "faiss_ivf_flat", "nlist": 64, "nprobe": 1}
    spec, prep, index_id = migrate(sandbox, words, index=one_probe)
    source, target = open_source(spec), open_target(spec)
    corrupt(target, shard_ids(target, prep, 1)[:300], lambda v: v * 3.0)
    queries = gate_queries(spec, source, target)
    truth = target.search(queries.target, queries.ask, metric="l2")
    args = (sandbox.catalog, spec, source, target, prep.source_index, index_id)
    # Told the sides hold the same data, the recall stages read no store: both reads go ahead.
    overlapped = measure(*args, queries=queries, truth=truth, source_is_target=True)
    serial = measure(*args, queries=queries, truth=truth, source_is_target=True, pause=lambda: 0.0)
    assert _untimed(overlapped) == _untimed(serial)
    assert overlapped.target_recall is not None
    assert overlapped.target_recall < 0.9
    assert overlapped.overlap is not None
    assert overlapped.overlap < 0.9
    assert overlapped.rank_correlation is not None
    # Told the sides are the same, the target's sample stands for both.
    assert overlapped.mean_shift == 0
    assert overlapped.norm_ks == 0
    assert overlapped.distribution_sample
    assert overlapped.p99_ms_old is not None
    assert overlapped.p99_ms_new is not None
    # The source's own exact search (the sides not proven the same): the distribution read
    # waits for its stage, the old index still goes ahead.
    apart = measure(*args, queries=queries, truth=truth)
    assert _untimed(apart) == _untimed(
        measure(*args, queries=queries, truth=truth, pause=lambda: 0.0)
    )
    assert apart.mean_shift is not None
    assert apart.mean_shift > 0
    assert apart.norm_ks is not None
    assert apart.norm_ks > 0

    old = sandbox.catalog.get_index(prep.source_index)
    manifest = Path(old.artifacts[0]["uri"])
    data = manifest.parent / json.loads(manifest.read_text())["file"]
    data.write_bytes(data.read_bytes() + b"\0")
    for pause in (None, lambda: 0.0):
        with pytest.raises(ArtifactError, match="does not match its checksum"):
            measure(*args, queries=queries, truth=truth, source_is_target=True, pause=pause)


def test_one_batch_search_gives_recall_and_a_sample_is_timed_singly(
    sandbox: Sandbox, words: np.ndarray
) -> None:
    """Recall comes from one batch search per index, the same answers as searching query by
    query; only ``latency_queries`` of the queries are timed one at a time."""
    spec, prep, index_id = migrate(
        sandbox, words, gates={"sample_queries": 120, "latency_queries": 30}
    )
    source = open_source(spec)
    _, queries = source.sample(120, seed=3)
    for searcher in (
        load_index_version(sandbox.catalog, sandbox.catalog.get_index(index_id)),
        load_index_version(sandbox.catalog, sandbox.catalog.get_index(prep.source_index)),
    ):
        ids, millis = timed_search(searcher, queries, 11, timed=30)
        singly = np.vstack([searcher.search(queries[r : r + 1], 11)[1] for r in range(120)])
        assert np.array_equal(ids, singly)
        assert len(millis) == 30
        assert (millis > 0).all()
        assert len(timed_search(searcher, queries, 11)[1]) == 120  # all, when not bounded
    report = validate(sandbox, spec, prep, index_id)
    assert report.figures is not None
    assert report.figures.queries == 120
    assert report.figures.latency_queries == 30
    assert report.figures.p99_ms_new is not None


def test_stored_truths_answer_only_their_queries(sandbox: Sandbox) -> None:
    journal = Journal(sandbox.catalog)
    d = np.arange(6, dtype=np.float32).reshape(2, 3)
    i = np.arange(6, dtype=np.int64).reshape(2, 3)
    # With the shard's check, in its transaction (a shard with no row yet gets one), or alone.
    journal.set_check("m", 0, 1, {"ok": True}, Truth("digest-a", d, i))
    journal.set_truth("m", 1, 1, Truth("digest-a", d + 10, i + 10))
    assert journal.outcomes("m", "check_result") == {0: {"ok": True}}
    assert journal.check_rounds("m") == {0: 1}
    parts = journal.truths("m", 1, "digest-a", [0, 1])
    assert parts is not None
    assert np.array_equal(parts[1][1], i + 10)
    assert journal.truths("m", 1, "digest-b", [0, 1]) is None  # other queries
    assert journal.truths("m", 2, "digest-a", [0, 1]) is None  # another round
    assert journal.truths("m", 1, "digest-a", [0, 1, 2]) is None  # a shard not checked
    journal.set_truth("m", 1, 2, Truth("digest-a", d, i))  # round 2 replaces shard 1's truth
    assert journal.truths("m", 1, "digest-a", [0, 1]) is None


def test_lowered_recall_fails_the_recall_gate(sandbox: Sandbox, words: np.ndarray) -> None:
    ivf_one_probe = {"kind": "faiss_ivf_flat", "nlist": 64, "nprobe": 1}
    spec, prep, index_id = migrate(
        sandbox, words, index=ivf_one_probe, gates={"min_recall": 0.9, "min_overlap": 0.9}
    )
    report = validate(sandbox, spec, prep, index_id)
    assert failed(report) == {"recall@10", "recall@10_vs_old", "overlap@10"}
    assert report.target_recall is not None
    assert report.target_recall < 0.9


def test_nan_in_one_shard_fails_integrity(sandbox: Sandbox, words: np.ndarray) -> None:
    spec, prep, index_id = migrate(sandbox, words)
    target = open_target(spec)
    victims = shard_ids(target, prep, 1)[:3]
    corrupt(target, victims, lambda v: np.where(np.arange(v.shape[1]) == 0, np.nan, v))
    report = validate(sandbox, spec, prep, index_id)
    assert {"nonfinite", "checksum_parity"} <= failed(report)
    nonfinite = next(v for v in report.verdicts if v.name == "nonfinite")
    assert nonfinite.value == 3
    assert "shards 1" in nonfinite.detail


def test_wrong_norm_in_one_shard_fails_the_norm_gates(sandbox: Sandbox, words: np.ndarray) -> None:
    spec, prep, index_id = migrate(sandbox, words)
    target = open_target(spec)
    corrupt(target, shard_ids(target, prep, 2)[:50], lambda v: v * 25.0)
    report = validate(sandbox, spec, prep, index_id)
    assert {"norm_range", "checksum_parity"} <= failed(report)
    norm = next(v for v in report.verdicts if v.name == "norm_range")
    assert norm.detail.startswith("shard 2:")


def test_missing_records_fail_count_parity(sandbox: Sandbox, words: np.ndarray) -> None:
    spec, prep, index_id = migrate(sandbox, words)
    target = open_target(spec)
    lost = shard_ids(target, prep, 0)[:7]
    target.delete(lost)
    index_id = rebuild(sandbox, spec, prep)
    report = validate(sandbox, spec, prep, index_id)
    assert {"count_parity", "checksum_parity"} <= failed(report)
    count = next(v for v in report.verdicts if v.name == "count_parity")
    assert (
        f"shard 0: {report.source_counts[0]} source vs {report.source_counts[0] - 7}"
        in count.detail
    )


def test_normalised_migration_passes_with_id_parity(sandbox: Sandbox, words: np.ndarray) -> None:
    spec, prep, index_id = migrate(sandbox, words, normalized=True)
    report = validate(sandbox, spec, prep, index_id)
    assert report.passed, report.failures()
    names = {v.name for v in report.verdicts}
    assert "id_parity" in names
    assert "unit_norm" in names
    assert "checksum_parity" not in names


@pytest.mark.parametrize("metric", ["cosine", "ip"])
def test_metric_change_with_normalisation_is_gated(
    sandbox: Sandbox, words: np.ndarray, metric: str
) -> None:
    # L2 on raw GloVe vectors -> cosine / inner product on unit vectors: the copy normalises,
    # recall is measured against exact search under the new metric, and unit norms are checked.
    spec, prep, index_id = migrate(sandbox, words, normalized=True, metric=metric)
    report = validate(sandbox, spec, prep, index_id)
    assert report.passed, report.failures()
    verdicts = {v.name: v for v in report.verdicts}
    assert verdicts["unit_norm"].passed
    assert verdicts["recall@10"].value is not None
    assert verdicts["recall@10"].value > 0.9
    # Under the new metric the neighbours differ from L2's on raw vectors, and the report says
    # by how much (old vs new top-k), without failing a gate nobody set.
    assert report.figures is not None
    assert report.figures.overlap is not None
    assert report.figures.overlap < 0.95
    # A target vector written off unit length fails the unit-norm gate.
    ids, vectors = open_target(spec).fetch(np.array([5, 6], np.int64))
    open_target(spec).upsert(ids, vectors * 3.0)
    report = validate(sandbox, spec, prep, rebuild(sandbox, spec, prep))
    assert "unit_norm" in failed(report)


def test_a_different_distribution_fails_the_distribution_gates(
    sandbox: Sandbox, words: np.ndarray
) -> None:
    # Same ids, same counts, unit norms: only the distribution gates can see that the target's
    # vectors are other words' vectors (a wrong model or a mixed-up join in production).
    spec, prep, index_id = migrate(sandbox, words, normalized=True)
    target = open_target(spec)
    others = glove(2 * N)[N:]
    for part in np.array_split(np.arange(N), 8):
        ids = (part + 1).astype(np.int64)
        rotated = others[part][:, ::-1] * np.linspace(0.2, 2.0, others.shape[1])
        target.upsert(ids, rotated / np.linalg.norm(rotated, axis=1, keepdims=True))
    index_id = rebuild(sandbox, spec, prep)
    report = validate(sandbox, spec, prep, index_id)
    assert {"mean_shift", "spectrum_shift"} <= failed(report)
    assert "count_parity" not in failed(report)
    assert "id_parity" not in failed(report)
    assert "unit_norm" not in failed(report)


def test_recorded_query_log(sandbox: Sandbox, words: np.ndarray, tmp_path: Path) -> None:
    log = tmp_path / "queries.npy"
    np.save(log, words[:60] + 0.01)
    spec, prep, index_id = migrate(
        sandbox, words, gates={"query_log": str(log), "sample_queries": 100}
    )
    report = validate(sandbox, spec, prep, index_id)
    assert report.figures is not None
    assert report.figures.query_source == "recorded"
    assert report.figures.queries == 60
    np.save(log, np.ones((5, 7), np.float32))
    with pytest.raises(PreconditionError, match="needs rows of 50 floats"):
        validate(sandbox, spec, prep, index_id)


def test_time_budget_skips_and_fails_rather_than_guessing(
    sandbox: Sandbox, words: np.ndarray
) -> None:
    spec, prep, index_id = migrate(sandbox, words, gates={"time_budget_seconds": 1e-9})
    report = validate(sandbox, spec, prep, index_id)
    assert report.figures is not None
    assert report.figures.skipped == ["target recall", "source recall", "distribution"]
    recall = next(v for v in report.verdicts if v.name == "recall@10")
    assert not recall.passed
    assert recall.detail.startswith("not measured")


def test_retrieval_figures() -> None:
    truth = np.array([[1, 2, 3], [4, 5, 6]])
    assert recall_at_k(np.array([[1, 2, 3], [4, 5, 9]]), truth) == (1 + 2 / 3) / 2
    assert exclude_self(np.array([[7, 1, 2, 3], [4, 5, 6, -1]]), np.array([7, 9]), 3).tolist() == [
        [1, 2, 3],
        [4, 5, 6],
    ]
    assert overlap_at_k(np.array([[1, 2, 3, 4]]), np.array([[4, 3, 9, 8]])) == 0.5
    assert rank_correlation(np.array([[1, 2, 3, 4]]), np.array([[1, 2, 3, 4]])) == 1.0
    assert rank_correlation(np.array([[1, 2, 3, 4]]), np.array([[4, 3, 2, 1]])) == -1.0


def test_distribution_statistics() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=2000), rng.normal(size=2000)
    d_same, p_same = ks_two_sample(a, b)
    d_diff, p_diff = ks_two_sample(a, b + 0.5)
    assert d_same < 0.05 < d_diff
    assert p_same > 0.05 > p_diff
    x = rng.normal(size=(1000, 16)).astype(np.float32)
    stretched = x * np.linspace(0.1, 3, 16).astype(np.float32)
    assert spectrum_shift(x, x) == 0.0
    assert spectrum_shift(x, stretched) > 0.2


def test_judge_without_figures_fails_closed() -> None:
    profile = ShardProfile(count=10, checksum="a", id_checksum="b", norm_min=1, norm_max=2)
    report = judge(
        GatePolicy(),
        same_bytes=True,
        normalized_target=False,
        checks=[ShardCheck(shard=0, source=profile, target=profile)],
        figures=RetrievalFigures(),
    )
    assert not report.passed
    assert "recall@10" in failed(report)


def test_profile_arithmetic_matches_the_plain_definitions() -> None:
    """The faster forms give what the definitions give: repeated ids counted by a sort, norms
    summed in float32 (float64 where the squares overflow), hashes computed in row chunks."""
    assert repeated_ids(np.array([3, 1, 3, 2, 1, 3], np.int64)) == 3
    assert repeated_ids(np.array([], np.int64)) == repeated_ids(np.array([7])) == 0
    rng = np.random.default_rng(5)
    v = rng.standard_normal((5000, 33)).astype(np.float32)
    v[7] = 1e20  # squares overflow float32
    ids = rng.permutation(10**6)[:5000].astype(np.int64)
    builder = ProfileBuilder()
    builder.add(ids, v)
    exact = np.linalg.norm(v.astype(np.float64), axis=1)
    profile = builder.result()
    assert profile.norm_max == pytest.approx(exact.max(), rel=1e-6)
    assert profile.norm_min == pytest.approx(exact.min(), rel=1e-5)
    assert profile.norm_mean == pytest.approx(exact.mean(), rel=1e-5)
    assert profile.duplicate_ids == 0
    in_parts = np.concatenate(
        [record_hashes(ids[s : s + 1000], v[s : s + 1000]) for s in range(0, 5000, 1000)]
    )
    assert np.array_equal(record_hashes(ids, v), in_parts)


def _reference_hash(record_id: int, vector: np.ndarray) -> int:
    """The record hash as its docstring defines it, one Python integer at a time."""
    raw = vector.astype("<f4").tobytes()
    raw += b"\0" * (len(raw) % 8)  # an odd dimension: the last word zero-padded
    return reference_fold(record_id + GOLDEN, raw)


def test_record_hashes_follow_their_definition_across_chunks() -> None:
    """The in-place, chunked arithmetic gives the defined hash for every row, whatever the
    dimension (odd ones padded), the id (negative ones too) and the row's place in a chunk:
    the copy's checksums must stay comparable with those computed before."""
    rng = np.random.default_rng(11)
    n = 20_000  # more than two chunks of 8,192
    for dim in (1, 33, 128):
        v = rng.standard_normal((n, dim)).astype(np.float32)
        ids = rng.integers(-(2**62), 2**62, n).astype(np.int64)
        got = record_hashes(ids, v)
        assert got.dtype == np.uint64
        for row in (0, 1, 8191, 8192, 8193, 16_384, n - 1):
            assert int(got[row]) == _reference_hash(int(ids[row]) & ((1 << 64) - 1), v[row])
        halves = np.concatenate(
            [record_hashes(ids[:7000], v[:7000]), record_hashes(ids[7000:], v[7000:])]
        )
        assert np.array_equal(got, halves)
    assert record_hashes(np.array([], np.int64), np.empty((0, 4), np.float32)).shape == (0,)
    # One record's hash as every earlier release computed it: a journal's running checksum
    # and a copy's result stay comparable across an upgrade.
    pinned = record_hashes(np.array([42], np.int64), np.arange(3, dtype=np.float32)[None, :])
    assert int(pinned[0]) == 0x1B0308E389CE9214
