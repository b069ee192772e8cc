"""Running the checks of a migration against its stores and indexes."""

from __future__ import annotations

import contextvars
import hashlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import faiss
import numpy as np
import numpy.typing as npt

from vecmigrate.catalog.catalog import Catalog, IndexVersionRecord
from vecmigrate.data.backfill import same_records, shard_plan, target_limits
from vecmigrate.data.transforms import Transform, make_transform
from vecmigrate.embedding.registry import model_key
from vecmigrate.errors import PreconditionError
from vecmigrate.indexes.artifacts import set_openmp_threads
from vecmigrate.indexes.build import Searcher, load_index_version
from vecmigrate.indexes.sizes import artifact_bytes
from vecmigrate.model.gates import (
    CONFIDENCE,
    LATENCY_FLOOR_MS,
    GateReport,
    RetrievalFigures,
    ShardCheck,
)
from vecmigrate.model.spec import NATIVE_INDEX_KINDS, MigrationSpec
from vecmigrate.model.tasks import ShardRef
from vecmigrate.records.screening import screen
from vecmigrate.records.vectors import Distances, ExactKnn, Ids, Vectors
from vecmigrate.stores import VectorStore
from vecmigrate.stores.base import WHOLE, in_shard
from vecmigrate.validation.distribution import ks_two_sample, mean_shift, spectrum_shift
from vecmigrate.validation.gates import judge
from vecmigrate.validation.intervals import (
    mean_score_interval,
    paired_difference_interval,
    quantile_interval,
    ratio_interval,
    rounded,
)
from vecmigrate.validation.options import read_options
from vecmigrate.validation.profile import scan_shard
from vecmigrate.validation.retrieval import (
    exclude_self,
    paired_latency,
    rank_correlation,
    recall_scores,
)

Scores = npt.NDArray[np.float64]
T = TypeVar("T")


def check_shard(
    spec: MigrationSpec,
    source: VectorStore,
    target: VectorStore,
    shard: ShardRef,
    volatile: Callable[[], Ids] | None = None,
    truth: ExactKnn | None = None,
) -> ShardCheck:
    """Profile one shard on both sides (the source seen through the migration's transform).

    With ``truth``, the target's read also feeds the exact search of the recall gate, so the
    ground truth costs no read of its own (the figures search a shard's data once, not twice).

    While the collection takes writes, ``volatile`` names the records written since the
    migration began, read after both scans: they are left out of both profiles (a write between
    the two scans would otherwise look like a difference), and counted in ``excluded``.
    """
    began = time.monotonic()
    transform: Transform | None = None
    if not spec.model_change:
        # Vectors of another model cannot be compared with the source's: the source side is
        # profiled as it is (counts and ids still compare; norms are left out by the gates).
        name, made = make_transform(spec.source.embedding, spec.target.embedding)
        transform = None if name == "identity" else made
    tol = spec.gates.integrity.unit_norm_tolerance
    also = None if truth is None else truth.add
    limits = target_limits(spec, target)
    # The records read are kept only to leave the volatile ones out afterwards.
    keep = volatile is not None
    # One set of records (``records: shared``) is read once: a write landing between two reads
    # of it would look like a difference between the versions.
    shared = same_records(source, target)
    src = (
        None
        if shared
        else scan_shard(source, shard, transform, unit_norm_tolerance=tol, keep=keep, limits=limits)
    )
    dst = scan_shard(target, shard, unit_norm_tolerance=tol, keep=keep, also=also)
    src = dst if src is None else src
    if volatile is None:
        return ShardCheck(
            shard=shard.index,
            source=src.result(),
            target=dst.result(),
            seconds=round(time.monotonic() - began, 3),
        )
    changed = volatile()
    seen = np.unique(np.concatenate([r.labels for r in src.batches + dst.batches] or [changed]))
    return ShardCheck(
        shard=shard.index,
        source=src.without(changed),
        target=dst.without(changed),
        seconds=round(time.monotonic() - began, 3),
        excluded=int(np.isin(seen, changed).sum()),
    )


def same_data(spec: MigrationSpec, checks: list[ShardCheck]) -> bool:
    """Whether the checks prove the target holds exactly the source's records, byte for byte.

    Then exact search over either side gives the same answer, and the source recall figure can
    use the target's ground truth instead of searching the source again.
    """
    name, _ = make_transform(spec.source.embedding, spec.target.embedding)
    return (
        bool(checks)
        and name == "identity"
        and not spec.model_change
        and spec.source.embedding.metric == spec.target.embedding.metric
        and all(c.excluded == 0 and c.source.checksum == c.target.checksum for c in checks)
    )


def load_queries(spec: MigrationSpec, source: VectorStore) -> tuple[Ids | None, Vectors, str]:
    """Queries for the retrieval checks: the recorded log if the spec names one, else a sample.

    Raises:
        PreconditionError: the query log is missing or has the wrong dimension.
    """
    g = spec.gates
    if g.query_log:
        path = Path(g.query_log)
        try:
            log = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise PreconditionError(f"gates.query_log {path} cannot be read: {exc}") from None
        if log.ndim != 2 or log.shape[1] != source.dimension:
            raise PreconditionError(
                f"gates.query_log {path} holds shape {log.shape}; it needs rows of "
                f"{source.dimension} floats (the source's dimension)"
            )
        queries = np.ascontiguousarray(log[: g.queries], dtype=np.float32)
        return None, queries, "recorded"
    sample = source.sample_shards(query_strata(spec, source), g.queries, seed=g.seed)
    return sample.labels, sample.vectors(), "sampled"


def query_strata(spec: MigrationSpec, source: VectorStore) -> list[ShardRef]:
    """The strata of the gate's query sample: the migration's shards, each giving queries in
    proportion to its records (one contiguous key range would stand for one shard alone)."""
    return shard_plan(spec, source)


@dataclass
class GateQueries:
    """The queries of the retrieval checks, as each side's index sees them."""

    ids: Ids | None  # the records the queries are (None for a recorded query log)
    source: Vectors  # for the source index and the source's exact search
    target: Vectors  # in the target's space
    kind: str  # "sampled" or "recorded"
    ask: int  # neighbours to ask for: k, plus one for the query's own record
    per_shard: dict[int, int] = field(default_factory=dict)  # sampled queries by shard

    def digest(self) -> str:
        """What the queries are: a ground truth stored for one set is never used for another."""
        h = hashlib.sha256(f"{self.kind}|{self.ask}|".encode())
        if self.ids is not None:
            h.update(np.ascontiguousarray(self.ids, np.int64).tobytes())
        h.update(np.ascontiguousarray(self.target, np.float32).tobytes())
        return h.hexdigest()

    def exact_search(self, spec: MigrationSpec) -> ExactKnn:
        """An exact search of these queries in the target's space, fed batch by batch."""
        return ExactKnn(self.target, self.ask, str(spec.target.embedding.metric))


def gate_queries(spec: MigrationSpec, source: VectorStore, target: VectorStore) -> GateQueries:
    """The retrieval checks' queries: sampled records (or the spec's query log), transformed
    into the target's space, or for a new model the same records as the new model embedded
    them."""
    if not spec.model_change:
        _, transform = make_transform(spec.source.embedding, spec.target.embedding)
        qids, queries, kind = load_queries(spec, source)
        extra = 1 if qids is not None else 0
        return GateQueries(
            qids,
            queries,
            transform(queries),
            kind,
            spec.gates.k + extra,
            _per_shard(spec, source, qids),
        )
    # The same records, as the new model embedded them (self excluded on both sides).
    sample = source.sample_shards(
        query_strata(spec, source), spec.gates.queries, seed=spec.gates.seed
    )
    found = target.fetch_records(sample.ids)
    row = {label: i for i, label in enumerate(found.labels.tolist())}
    keep = np.array([label in row for label in sample.labels.tolist()], bool)
    qids = sample.labels[keep]
    tq = found.vectors()[[row[label] for label in qids.tolist()]]
    return GateQueries(
        qids,
        sample.vectors()[keep],
        tq,
        "sampled",
        spec.gates.k + 1,
        _per_shard(spec, source, qids),
    )


def _per_shard(spec: MigrationSpec, source: VectorStore, qids: Ids | None) -> dict[int, int]:
    """How many of the sampled queries each shard holds."""
    if qids is None:
        return {}
    return {s.index: int(in_shard(qids, s).sum()) for s in query_strata(spec, source)}


# Per-shard ground truths are stored in the catalog (queries x neighbours x 12 bytes each); past
# this many bytes for a whole migration (about 500 shards at 1,000 queries) the figures search
# the target themselves instead.
TRUTH_BYTES_MAX = 64 << 20


def fold_truth(spec: MigrationSpec) -> bool:
    """Whether the shard checks should run the recall gate's exact search as they read
    (decided from the spec, before any query is drawn: at most ``gates.queries`` of them)."""
    per_shard = spec.gates.queries * (spec.gates.k + 1) * 12
    return 0 < per_shard * len(spec.shards.selected()) <= TRUTH_BYTES_MAX


def measure(
    catalog: Catalog,
    spec: MigrationSpec,
    source: VectorStore,
    target: VectorStore,
    source_index: str | None,
    target_index: str,
    queries: GateQueries | None = None,
    truth: tuple[Distances, Ids] | None = None,
    source_is_target: bool = False,
    unsettled: Ids | None = None,
    unindexed: tuple[Ids | None, Ids | None] = (None, None),
    pause: Callable[[], float] | None = None,
) -> RetrievalFigures:
    """Recall, agreement, latency and distribution figures, within the spec's time budget.

    Stages run cheapest-first after the ground truth; a stage that would start after the
    budget is spent is skipped and named in ``skipped`` (its gates then fail as not measured).
    ``truth`` is the target's exact search of ``queries``, folded into the shard checks' read
    (without it the target is searched here); with ``source_is_target`` (see
    :func:`same_data`) the source's exact search is that same answer. ``unsettled`` names
    records the two sides may hold differently for now (written to the source with plain SQL,
    their capture not replayed yet): the distribution samples leave them out on both sides.

    ``unindexed`` names, for the old index and then the new one, the records written (or
    deleted) since that index was built, as the change log knows them: each index is judged
    against the exact answer over the records it was built from, so those are left out of its
    exact search and of its answers (in an online migration the stores hold writes the index
    never saw, which would count as misses of an index that could not have found them).

    ``pause`` (the latency budget's, ``vecmigrate.data.budget.between``) is called between
    stages, never inside a timed search, and returns the seconds it waited; they extend the
    time budget.

    Without ``pause``, work a later stage needs and no earlier one touches runs on a second
    thread while the target's recall is measured (see :class:`_Ahead`): loading the old index
    (and its batch search, when FAISS runs one thread), and reading the distribution samples
    and computing their figures when nothing else reads a store meanwhile. Every figure is
    computed from the same answers as one after the other; a stage the budget skips leaves
    what was fetched for it unused; and the latency gate starts only when that thread is done,
    so nothing of the suite's own runs beside a timed search. With ``pause`` (a latency
    budget), stages run one at a time.
    """
    g = spec.gates
    old_out, new_out = (u if u is not None and u.size else None for u in unindexed)
    began = time.monotonic()
    deadline = began + g.time_budget_seconds
    k = g.k
    fig = RetrievalFigures(k=k, confidence=CONFIDENCE)
    q = queries if queries is not None else gate_queries(spec, source, target)
    qids, tq = q.ids, q.target
    fig.query_source, fig.queries = q.kind, int(q.source.shape[0])
    fig.queries_per_shard = dict(q.per_shard)
    if spec.model_change:
        fig.source_model = model_key(spec.source.embedding)
        fig.target_model = model_key(spec.target.embedding)

    def over(stage: str) -> bool:
        nonlocal deadline
        if pause is not None:  # the latency budget's wait between stages
            deadline += pause()
        if time.monotonic() > deadline:
            fig.skipped.append(stage)
            return True
        return False

    with _Ahead(pause is None) as ahead:
        new_record = catalog.get_index(target_index) if fig.queries else None
        old_record = None
        if fig.queries and source_index is not None:
            old_record = catalog.get_index(source_index)
        own_reads = new_record is None or truth is None or new_out is not None
        own_reads |= _native(new_record)
        old_side = None
        if old_record is not None:
            # The old index's artifacts, loaded (and with one FAISS thread, searched) beside
            # the target's recall; a native index searches a store, which is left alone.
            own_reads |= _native(old_record) or not (
                source_is_target and old_out is None and new_out is None
            )
            old_side = ahead.start(
                not _native(old_record),
                _old_side,
                catalog,
                old_record,
                q.source,
                q.ask,
                old_out,
                faiss.omp_get_max_threads(),
            )
        samples = None
        if not spec.model_change:
            # Read ahead only while the recall stages read no store of their own.
            samples = ahead.start(
                not own_reads,
                distribution_values,
                spec,
                source,
                target,
                unsettled,
                source_is_target,
            )

        target_exact: Ids | None = None
        new_found: Ids | None = None
        new_scores: Scores | None = None
        sides: dict[str, tuple[Searcher, Vectors]] = {}  # "new", "old": timed for latency
        if new_record is not None and not over("target recall"):
            if truth is not None and new_out is None:
                target_exact = truth[1]
                fig.truth_source = "shard checks"
            else:
                target_exact = exact_without(
                    target, tq, q.ask, spec.target.embedding.metric, new_out
                )
            new_index = load_index_version(catalog, new_record)
            new_raw = index_answer(new_index, tq, q.ask, new_out)
            new_found = exclude_self(new_raw, qids, k)
            new_scores = recall_scores(new_found, exclude_self(target_exact, qids, k))
            fig.target_recall, fig.target_recall_ci = _mean(new_scores, k)
            sides["new"] = (new_index, tq)
        if old_side is not None and not over("source recall"):
            if (
                source_is_target
                and target_exact is not None
                and old_out is None
                and new_out is None
            ):
                # The checks proved both sides hold the same bytes: the same exact answer.
                exact = target_exact
            else:
                exact = exact_without(
                    source, q.source, q.ask, spec.source.embedding.metric, old_out
                )
            old_index, searched = old_side()
            old_raw = (
                searched
                if searched is not None
                else index_answer(old_index, q.source, q.ask, old_out)
            )
            old_found = exclude_self(old_raw, qids, k)
            old_scores = recall_scores(old_found, exclude_self(exact, qids, k))
            fig.source_recall, fig.source_recall_ci = _mean(old_scores, k)
            sides["old"] = (old_index, q.source)
            if new_found is not None and new_scores is not None:
                # Agreement over the records both indexes were built from.
                both_out = _union(old_out, new_out)
                if both_out is not None:
                    new_found = exclude_self(_blank(new_raw, both_out), qids, k)
                    old_found = exclude_self(_blank(old_raw, both_out), qids, k)
                fig.overlap, fig.overlap_ci = _mean(recall_scores(new_found, old_found), k)
                rho = rank_correlation(old_found, new_found)
                fig.rank_correlation = None if rho is None else round(rho, 4)
                change = paired_difference_interval(new_scores, old_scores)
                if change is not None:
                    fig.recall_change = round(change[0], 4)
                    fig.recall_change_ci = rounded(change[1])
        # Nothing of the suite's own runs beside the latency gate's timed searches.
        ahead.finish()
        if sides and pause is not None:
            deadline += pause()
        if sides:
            timed = paired_latency(list(sides.values()), q.ask, g.latency_queries)
            latency_figures(fig, dict(zip(sides, timed, strict=True)), g.seed)
        if spec.model_change:
            if spec.reembed.task_queries and not over("read options"):
                fig.task_queries, fig.read_options = read_options(
                    catalog, spec, source, target, source_index, target_index
                )
        elif samples is not None and not over("distribution"):
            for name, value in samples().items():
                setattr(fig, name, value)
    _index_sizes(catalog, fig, source_index, target_index)
    fig.seconds = round(time.monotonic() - began, 3)
    return fig


class _Ahead:
    """Work a later stage of :func:`measure` needs, started early on one thread of its own
    (when ``parallel``), or run where it is first asked for, as one stage after another would.

    :meth:`start` returns the call that gives the work's result (raising what it raised) at
    the point of use; work that no stage asks for (its stage skipped by the time budget) is
    waited for and its result dropped. :meth:`finish` waits until the thread is idle.
    """

    def __init__(self, parallel: bool) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="gates") if parallel else None
        self._started: list[Any] = []

    def __enter__(self) -> _Ahead:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def start(self, early: bool, work: Callable[..., T], *args: Any) -> Callable[[], T]:
        """``work(*args)``, begun now on the thread when ``early`` and parallel."""
        if self._pool is None or not early:
            return lambda: work(*args)
        # In the caller's context: the trace its spans belong to, the budget's settings.
        future = self._pool.submit(contextvars.copy_context().run, work, *args)
        self._started.append(future)
        return future.result

    def finish(self) -> None:
        for future in self._started:
            future.exception()  # waits; what it raised is raised where its result is used


def _native(record: IndexVersionRecord | None) -> bool:
    """Whether an index is the store's own (searching it reads the store)."""
    return record is not None and record.spec.get("kind") in NATIVE_INDEX_KINDS


def _old_side(
    catalog: Catalog,
    record: IndexVersionRecord,
    queries: Vectors,
    ask: int,
    left_out: Ids | None,
    threads: int,
) -> tuple[Searcher, Ids | None]:
    """The old index loaded, and its answers to the queries when FAISS runs one thread in the
    caller (``threads``): a second search of several threads beside the target's would only
    take cores from it; the caller then searches (None)."""
    index = load_index_version(catalog, record)
    if threads != 1:
        return index, None
    set_openmp_threads(1)  # OpenMP's setting is per thread: this one's as the caller's
    return index, index_answer(index, queries, ask, left_out)


def exact_without(
    store: VectorStore, queries: Vectors, ask: int, metric: str, left_out: Ids | None
) -> Ids:
    """The exact ``ask`` nearest records of each query in ``store``, leaving out the records
    ``left_out`` names (one streamed read, as the store's own exact search)."""
    if left_out is None:
        return store.search(queries, ask, metric=str(metric))[1]
    knn = ExactKnn(queries, ask, str(metric))
    for batch in store.iter_shard(WHOLE, 100_000):
        keep = ~np.isin(batch.ids, left_out)
        knn.add(batch.ids[keep], batch.vectors[keep])
    return knn.result()[1]


def index_answer(index: Searcher, queries: Vectors, ask: int, left_out: Ids | None) -> Ids:
    """The index's answers with the records ``left_out`` names blanked (-1), asking for up to
    ``ask`` more so that k remain."""
    if left_out is None:
        return index.search(queries, ask)[1]
    _, found = index.search(queries, ask + min(int(left_out.size), ask))
    return _blank(found, left_out)


def _blank(found: Ids, left_out: Ids) -> Ids:
    return np.where(np.isin(found, left_out), -1, found)


def _union(a: Ids | None, b: Ids | None) -> Ids | None:
    if a is None or b is None:
        return a if b is None else b
    return np.union1d(a, b)


def _mean(scores: Scores, k: int) -> tuple[float, tuple[float, float] | None]:
    """A mean per-query score (recall, overlap) and its interval, rounded for the report."""
    kept = scores[~np.isnan(scores)]
    bounds = mean_score_interval(kept, k)
    return (
        round(float(kept.mean()), 4) if len(kept) else 0.0,
        rounded(bounds),
    )


def latency_figures(fig: RetrievalFigures, millis: dict[str, Scores], seed: int) -> None:
    """p50 and p99 of each side (``new``, ``old``) with their order-statistic intervals, and
    the ratio of the p99s (new over old, each read as at least LATENCY_FLOOR_MS) with its
    paired bootstrap interval when both sides were timed."""
    for side, ms in millis.items():
        fig.latency_queries = len(ms)
        for q in (50, 99):
            setattr(fig, f"p{q}_ms_{side}", round(float(np.percentile(ms, q)), 3))
            bounds = quantile_interval(ms, q / 100)
            setattr(fig, f"p{q}_ms_{side}_ci", rounded(bounds, 3))
    if "new" in millis and "old" in millis:
        ratio = ratio_interval(millis["new"], millis["old"], 0.99, LATENCY_FLOOR_MS, seed=seed)
        if ratio is not None:
            fig.p99_ratio, fig.p99_ratio_ci = round(ratio[0], 4), rounded(ratio[1])


def distribution_figures(
    spec: MigrationSpec,
    source: VectorStore,
    target: VectorStore,
    fig: RetrievalFigures,
    unsettled: Ids | None = None,
) -> None:
    """Set the distribution figures of ``fig`` (norms' KS, mean shift, spectrum shift) from
    both sides' samples (see :func:`distribution_samples`)."""
    for name, value in distribution_values(spec, source, target, unsettled).items():
        setattr(fig, name, value)


def distribution_values(
    spec: MigrationSpec,
    source: VectorStore,
    target: VectorStore,
    unsettled: Ids | None = None,
    same: bool = False,
) -> dict[str, float | int]:
    """The distribution figures by name, from both sides' samples (none when one is empty).

    With ``same`` (the shard checks proved the target holds the source's records byte for
    byte: :func:`same_data`) the source's draw would read those very bytes again: the
    target's sample stands for both sides."""
    if same:
        src = dst = _target_sample(spec, target, unsettled)
    else:
        src, dst = distribution_samples(spec, source, target, unsettled)
    if not (len(src) and len(dst)):
        return {}
    ks, p = ks_two_sample(np.linalg.norm(src, axis=1), np.linalg.norm(dst, axis=1))
    components = spec.gates.distribution.spectrum_components
    return {
        "distribution_sample": int(min(len(src), len(dst))),
        "norm_ks": round(ks, 4),
        "norm_ks_pvalue": round(p, 4),
        "mean_shift": round(mean_shift(src, dst), 4),
        "spectrum_shift": round(spectrum_shift(src, dst, components), 4),
    }


def _target_sample(spec: MigrationSpec, target: VectorStore, unsettled: Ids | None) -> Vectors:
    """The target's side of the distribution figures' samples, less the ``unsettled``
    records and any row that is not finite (the integrity gate's business; it would poison
    the statistics)."""
    g = spec.gates
    labels, vectors = target.sample(g.distribution.sample, seed=g.seed + 1)
    if unsettled is not None and unsettled.size:
        vectors = vectors[~np.isin(labels, unsettled)]
    out: Vectors = vectors[np.isfinite(vectors).all(axis=1)]
    return out


def distribution_samples(
    spec: MigrationSpec,
    source: VectorStore,
    target: VectorStore,
    unsettled: Ids | None = None,
) -> tuple[Vectors, Vectors]:
    """The distribution figures' samples: the source's (in the target's space) and the
    target's.

    Both sides draw the same records, chosen by id alike by every adapter (see
    :meth:`~vecmigrate.stores.base.ScanningStore.sample_records`); on the source side only those
    the target can hold (the quarantine's are not in it), so byte-identical data measures zero.
    """
    g = spec.gates
    src_records, _ = screen(
        source.sample_records(g.distribution.sample, seed=g.seed + 1), target_limits(spec, target)
    )
    if unsettled is not None and unsettled.size:
        # The same records on both sides, but for those a replay has yet to bring across.
        src_records = src_records.filter(~np.isin(src_records.labels, unsettled))
    src = src_records.vectors()
    if len(src):
        _, transform = make_transform(spec.source.embedding, spec.target.embedding)
        src = transform(src)
    return src, _target_sample(spec, target, unsettled)


def _index_sizes(
    catalog: Catalog, fig: RetrievalFigures, source_index: str | None, target_index: str
) -> None:
    """Bytes on disk and vectors of both indexes (artifacts only: a database's own index has
    no files of its own)."""
    for side, index_id in (("source", source_index), ("target", target_index)):
        if index_id is None:
            continue
        record = catalog.get_index(index_id)
        setattr(fig, f"{side}_index_bytes", artifact_bytes(record.artifacts))
        setattr(fig, f"{side}_vectors", sum(int(a.get("count", 0)) for a in record.artifacts))


def report(spec: MigrationSpec, checks: list[ShardCheck], figures: RetrievalFigures) -> GateReport:
    """The gate report of a migration from its shard checks and retrieval figures."""
    transform_name, _ = make_transform(spec.source.embedding, spec.target.embedding)
    return judge(
        spec.gates,
        quarantine=spec.quarantine,
        same_bytes=transform_name == "identity" and not spec.model_change,
        same_model=not spec.model_change,
        normalized_target=spec.target.embedding.normalized,
        checks=sorted(checks, key=lambda c: c.shard),
        figures=figures,
    )


def validate_migration(
    catalog: Catalog,
    spec: MigrationSpec,
    source: VectorStore,
    target: VectorStore,
    shards: list[ShardRef],
    source_index: str | None,
    target_index: str,
) -> GateReport:
    """Every check in one call (the workflow runs the same steps as separate activities)."""
    queries = gate_queries(spec, source, target)
    knn = queries.exact_search(spec) if queries.source.shape[0] else None
    checks = [check_shard(spec, source, target, s, truth=knn) for s in shards]
    truth = None if knn is None else knn.result()
    return measured_report(
        spec, checks, catalog, source, target, source_index, target_index, queries, truth
    )


def measured_report(
    spec: MigrationSpec,
    checks: list[ShardCheck],
    catalog: Catalog,
    source: VectorStore,
    target: VectorStore,
    source_index: str | None,
    target_index: str,
    queries: GateQueries,
    truth: tuple[Distances, Ids] | None,
) -> GateReport:
    """The gate report of the shard checks ``checks`` and the figures :func:`measure` takes of
    ``queries`` (``truth``: the target's exact search of them, when the checks ran it)."""
    figures = measure(
        catalog,
        spec,
        source,
        target,
        source_index,
        target_index,
        queries=queries,
        truth=truth,
        source_is_target=same_data(spec, checks),
    )
    return report(spec, checks, figures)
