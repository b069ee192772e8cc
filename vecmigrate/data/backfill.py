"""Preparing a migration and copying shards from the source version to the target.

Everything here is idempotent: preparing twice registers nothing twice, and copying a shard
again (whole or from a cursor) upserts the same records by id.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

import numpy as np

from vecmigrate.catalog.catalog import Catalog
from vecmigrate.catalog.changelog import ChangeLog, Changes
from vecmigrate.catalog.documents import Documents
from vecmigrate.catalog.journal import Control, Journal, StreamRow
from vecmigrate.catalog.retention import RetentionLog
from vecmigrate.data.adopt import adopt, adoption_checks, target_schema
from vecmigrate.data.budget import BudgetPacer, idle_baseline
from vecmigrate.data.checks import Check
from vecmigrate.data.quarantine import Quarantine
from vecmigrate.data.quarantine import estimate as estimate_quarantine
from vecmigrate.data.transforms import Transform, make_transform
from vecmigrate.embedding.reembed import Reembedder, fit_transition, untexted
from vecmigrate.embedding.registry import Registry, model_key
from vecmigrate.errors import DataError, NotFoundError, PreconditionError, VecmigrateError
from vecmigrate.indexes.artifacts import cpu_share
from vecmigrate.indexes.build import artifact_dir, register_version
from vecmigrate.indexes.sizes import index_spec
from vecmigrate.model.lifecycle import builds_while_copying
from vecmigrate.model.spec import FaissIvfFlat, FaissIvfPq, MigrationSpec, canonical, named
from vecmigrate.model.tasks import (
    CatchUpResult,
    CopyShardResult,
    Cursor,
    PrepareResult,
    Promotion,
    ShardRef,
)
from vecmigrate.records.batch import Faults, Records
from vecmigrate.records.checksums import RecordChecksum
from vecmigrate.records.screening import Limits, screen
from vecmigrate.records.sharding import plan_shards
from vecmigrate.records.vectors import Ids
from vecmigrate.stores import (
    CAPABILITIES,
    WHOLE,
    Scope,
    VectorStore,
    limits_for,
    open_store,
    records_at,
    share_store,
)
from vecmigrate.stores.base import Batch

# Called after every committed batch with the cursor to resume from, the running count and the
# running checksum of what was written (so a resumed copy need not re-read to checksum).
ProgressCallback = Callable[[Cursor, int, RecordChecksum], None]


class CopyWatcher(Protocol):
    """Figures a copy keeps as it goes (the streamed shard check, see
    ``vecmigrate.validation.stream``), persisted with every cursor it records."""

    complete: bool

    def before_write(self, seen: Records, faults: Faults, written: Records) -> None: ...

    def add(self, seen: Records, faults: Faults, written: Records) -> None: ...

    def row(self) -> StreamRow: ...


# Opens the watcher of a copy: told whether the copy starts from the shard's beginning, and given
# the open source and target stores. None: the copy keeps no figures.
WatcherOpener = Callable[[bool, VectorStore, VectorStore], CopyWatcher | None]


def source_scope(spec: MigrationSpec) -> Scope:
    """The scope the migration reads."""
    return Scope(spec.tenant, spec.collection, spec.source.name)


def target_scope(spec: MigrationSpec) -> Scope:
    """The scope the migration writes."""
    return Scope(spec.tenant, spec.collection, spec.target.name)


def open_source(spec: MigrationSpec) -> VectorStore:
    """The source version's store (must exist): a store of vecmigrate's, or the existing table
    or collection the source's store reference names."""
    return open_store(spec.source.store, source_scope(spec))


def open_target(spec: MigrationSpec, source: VectorStore | None = None) -> VectorStore:
    """The target version's store, created on first use with the source's record schema (see
    :func:`~vecmigrate.data.adopt.target_schema`), or, with ``records: shared``, reading the
    source's records."""
    emb = spec.target.embedding
    try:
        return open_store(spec.target.store, target_scope(spec), metric=str(emb.metric))
    except NotFoundError:
        pass
    if spec.records == "shared":
        return share_store(spec.target.store, target_scope(spec), source_scope(spec))
    schema = target_schema((source or open_source(spec)).schema, spec)
    return open_store(spec.target.store, target_scope(spec), metric=str(emb.metric), schema=schema)


def same_records(source: VectorStore, target: VectorStore) -> bool:
    """Whether the two versions read the same records (``records: shared``): what is written
    to one is in the other, and nothing is copied, replayed or repaired between them."""
    held = records_at(source)
    return held is not None and held == records_at(target)


def target_limits(spec: MigrationSpec, target: VectorStore) -> Limits:
    """What the target cannot hold, with the spec's cap on a record's payload."""
    return target.limits().with_payload_cap(spec.quarantine.max_payload_bytes)


def run_checks(catalog: Catalog, spec: MigrationSpec) -> list[Check]:
    """Every precondition of the migration, checked without writing anything."""
    where = f"{spec.tenant}/{spec.collection}"
    checks: list[Check] = []

    def add(name: str, ok: bool, good: str, bad: str) -> bool:
        checks.append(Check(name, ok, good if ok else bad))
        return ok

    src = catalog.find_version(spec.tenant, spec.collection, spec.source.name)
    adopting = src is None and named(spec.source.store) is not None
    if not add(
        "source registered",
        src is not None or adopting,
        f"{where}@{spec.source.name} is in the catalog"
        if src is not None
        else f"{named(spec.source.store)} will be registered as {where}@{spec.source.name} "
        "when the migration prepares",
        f"source version {spec.source.name!r} of {where} is not in the catalog; seed it, or "
        "name an existing table or collection in source.store to adopt",
    ):
        return checks
    if src is not None:
        e = src.embedding
        add(
            "source schema",
            e == spec.source.embedding,
            f"{e.model_id}@{e.model_version}, {e.dimension}d, {e.metric}",
            f"source.embedding does not match the catalog: {where}@{spec.source.name} holds "
            f"{e.model_id}@{e.model_version}, {e.dimension}d, {e.metric}; fix the spec",
        )
    routing = catalog.get_routing(spec.tenant, spec.collection)
    serving = routing.read_version if routing else None
    add(
        "source serves reads",
        serving == spec.source.name or (routing is None and adopting),
        f"routing reads {serving} (generation {routing.generation if routing else 0})"
        if routing is not None
        else f"reads will be routed to {spec.source.name} when it is registered",
        f"{where} serves reads from {serving!r}, not the source {spec.source.name!r}; "
        "migrate from the version that serves",
    )
    dst = catalog.find_version(spec.tenant, spec.collection, spec.target.name)
    if dst is None or (dst.migration_id == spec.migration_id and dst.state != "abandoned"):
        add("target version free", True, f"{spec.target.name} is new or this migration's", "")
    elif dst.state == "retained":
        promotion, problem = promotion_of(catalog, spec)
        add(
            "promotion of a retained version",
            promotion is not None,
            f"{spec.target.name} is retained: it goes back into service without a copy (the "
            f"writes logged after position {promotion.written_until} are replayed onto it, "
            f"its index {promotion.index_id} reused), once it passes the gates again"
            if promotion is not None
            else "",
            problem,
        )
    elif dst.migration_id != spec.migration_id:
        add(
            "target version free",
            False,
            "",
            f"target version {spec.target.name!r} of {where} already exists "
            f"(state {dst.state}, made by {dst.migration_id or 'seeding'}); "
            "choose a new target version name",
        )
    else:
        add(
            "target version free",
            False,
            "",
            f"target version {spec.target.name!r} was abandoned by a rollback; "
            "choose a new target version name",
        )
    try:
        store = open_source(spec)
    except VecmigrateError as exc:
        add("source store reachable", False, "", f"cannot open the source store: {exc}")
        return checks
    add("source store reachable", True, f"{store.count():,} records in {store.scope}", "")
    if store.adopted:
        checks.extend(adoption_checks(spec, store))
    add(
        "dimension consistent",
        store.dimension == spec.source.embedding.dimension,
        f"{store.dimension}d in the store, the spec and the target",
        f"the source store holds {store.dimension}-dimensional vectors but "
        f"source.embedding.dimension is {spec.source.embedding.dimension}",
    )
    s_emb, t_emb = spec.source.embedding, spec.target.embedding
    add(
        "metric and normalisation",
        True,
        f"{s_emb.metric} -> {t_emb.metric}"
        + (", target normalised on copy" if t_emb.normalized and not s_emb.normalized else ""),
        "",
    )
    if spec.records == "shared":
        add(
            "records",
            True,
            f"{spec.target.name} reads the records of {spec.source.name} where they are: "
            "nothing is copied, the index alone is built",
            "",
        )
    if spec.model_change:
        checks.extend(model_checks(catalog, spec, store))
    idx = spec.target.index
    try:
        sizes = list(store.shard_counts(shard_plan(spec, store)).values())
    except PreconditionError as exc:
        add("shard layout", False, "", str(exc))
        return checks
    smallest = min(sizes, default=0)
    need = 0
    if isinstance(idx, FaissIvfFlat):
        need = idx.nlist
    elif isinstance(idx, FaissIvfPq):
        need = max(idx.nlist, 1 << idx.nbits)
    add(
        "index fits the data",
        smallest >= need,
        f"{idx.kind}: smallest shard {smallest:,} vectors",
        f"target.index needs at least {need} vectors per shard to train, but the smallest "
        f"shard holds {smallest}: lower nlist (or nbits) or use fewer shards",
    )
    caps = CAPABILITIES[spec.target.store.kind].problems(spec.target, "target")
    if not store.adopted:
        caps = CAPABILITIES[spec.source.store.kind].problems(spec.source, "source") + caps
    caps += CAPABILITIES[spec.target.store.kind].schema_problems(
        target_schema(store.schema, spec), "target"
    )
    add(
        "stores can hold it",
        not caps,
        f"{spec.source.store.kind} -> {spec.target.store.kind}: dimension, metric and index "
        "within their declared limits",
        "; ".join(caps),
    )
    limits = limits_for(spec.target.store.kind, target_schema(store.schema, spec))
    guess = estimate_quarantine(store, limits.with_payload_cap(spec.quarantine.max_payload_bytes))
    cap = spec.quarantine.max_records
    reasons = ", ".join(f"{r} {c:,}" for r, c in sorted(guess.found.items()))
    if cap is None:
        verdict = "the gate passes with the report"
    elif guess.seen > cap:
        verdict = (
            f"the gate allows {cap:,}, fewer than the sample holds: it will hold the migration"
        )
    else:
        verdict = f"the gate allows {cap:,}"
    add(
        "quarantine estimate",
        True,
        f"about {guess.estimated:,} records left out ({guess.seen:,} of a sample of "
        f"{guess.sampled:,}{': ' + reasons if reasons else ''}); {verdict}",
        "",
    )
    add(
        "tenant scope",
        True,
        f"tenant {spec.tenant!r}, collection {spec.collection!r}: every read and write of this "
        "migration is scoped to them by the store",
        "",
    )
    return checks


def model_checks(catalog: Catalog, spec: MigrationSpec, store: VectorStore) -> list[Check]:
    """What a migration to a new embedding model needs: a runnable target model of the right
    shape, the text of every record, and a way to serve reads until the cut-over."""
    registry = Registry(catalog)
    s_emb, t_emb = spec.source.embedding, spec.target.embedding
    new, old = model_key(t_emb), model_key(s_emb)
    checks = []
    try:
        registry.embedder(t_emb)
        found = registry.model_for(t_emb)
        ok = (found.schema.metric, found.schema.normalized) == (t_emb.metric, t_emb.normalized)
        checks.append(
            Check(
                "target model",
                ok,
                f"{new} ({found.kind}, {t_emb.dimension}d, {t_emb.metric}) re-embeds every "
                f"record from its text (was {old}, {s_emb.dimension}d, {s_emb.metric})"
                if ok
                else f"model {new} is registered as {found.schema.metric}"
                f"{', normalised' if found.schema.normalized else ''}; target.embedding says "
                f"{t_emb.metric}{', normalised' if t_emb.normalized else ''}: fix the spec",
            )
        )
    except VecmigrateError as exc:
        checks.append(Check("target model", False, f"the new model cannot run: {exc}"))
    checks.append(text_check(catalog, spec, store))
    old_runs = registry.runnable(s_emb)
    fitted = None if old_runs else registry.adapter_for(s_emb, spec.tenant, spec.collection)
    asked = spec.reembed.adapter != "none"
    checks.append(
        Check(
            "reads during the re-embed",
            old_runs or fitted is not None or asked,
            f"queries embedded by {old} until the cut-over"
            if old_runs
            else f"{old} cannot run: queries embedded by {fitted.from_model} through the "
            f"{fitted.method} adapter fitted on this collection"
            if fitted is not None
            else f"{old} cannot run: queries embedded by {new} through a {spec.reembed.adapter} "
            "adapter fit before the backfill"
            if asked
            else f"model {old} cannot run (unavailable or not registered), so text queries to the "
            "old version could not be embedded until the cut-over: set reembed.adapter "
            "(procrustes or ridge) or make the model available",
        )
    )
    return checks


# Records per read when the texts are checked record by record (ids and vectors of 128-d float32:
# ~26 MB a batch).
_TEXT_CHECK_BATCH = 50_000


def text_check(catalog: Catalog, spec: MigrationSpec, store: VectorStore) -> Check:
    """Whether every record of the source has a text to re-embed, checked by id.

    Counts would not do: a text without a record (written ahead of its vector, or loaded for an
    id the store lacks) hides a record without one, and live deletes make the two counts
    disagree though nothing is missing (a delete in flight is told apart by :func:`untexted`).
    One read of the source's ids (the built-in store leaves the vectors unread), small beside
    embedding every text.
    """
    documents, log = Documents(catalog), ChangeLog(catalog)
    records, lacking = 0, 0
    named: list[int] = []
    for ids in store.iter_ids(WHOLE, _TEXT_CHECK_BATCH):
        got = documents.get(spec.tenant, spec.collection, ids)
        alive, _ = untexted(log, spec.tenant, spec.collection, ids, got)
        records += len(ids)
        lacking += int(alive.size)
        named.extend(alive[: 5 - len(named)].tolist())
    if not lacking:
        return Check("source text", True, f"every one of {records:,} records has its text")
    return Check(
        "source text",
        False,
        f"{spec.tenant}/{spec.collection}: {lacking:,} of its {records:,} records have no text "
        f"(ids {named}{' ...' if lacking > len(named) else ''}); re-embedding needs every "
        "record's text (load it into the documents)",
    )


def promotion_of(catalog: Catalog, spec: MigrationSpec) -> tuple[Promotion | None, str]:
    """Whether ``spec``'s target, a retained version, can go back into service without a copy:
    the same embedding and index it was retired with, and the change log intact from where it
    stopped being written. The promotion, or why not."""
    where = f"{spec.tenant}/{spec.collection}@{spec.target.name}"
    dst = catalog.find_version(spec.tenant, spec.collection, spec.target.name)
    if dst is None or dst.state != "retained":
        return None, f"{where} is not a retained version"
    if dst.store != spec.target.store.model_dump(mode="json"):
        return None, (
            f"{where} is stored in another store than target.store names; a promotion writes "
            "the missed writes into the version's own store: set target.store to it, or name a "
            "new version"
        )
    if dst.embedding != spec.target.embedding:
        return None, (
            f"{where} holds {dst.embedding.model_id}@{dst.embedding.model_version} "
            f"({dst.embedding.dimension}d, {dst.embedding.metric}); target.embedding must say "
            "the same to promote it, or name a new version"
        )
    indexes = catalog.indexes_of(spec.tenant, spec.collection, spec.target.name)
    if not indexes:
        return None, f"{where} has no registered index to serve with: name a new version"
    index = indexes[-1]
    if canonical(index_spec(index.spec)) != canonical(spec.target.index):
        return None, (
            f"{where} is indexed with {index.spec}; a promotion reuses that index: set "
            "target.index to it, or name a new version for another index"
        )
    stopped = RetentionLog(catalog).get(spec.tenant, spec.collection, spec.target.name)
    if stopped.written_until is None:
        return None, (
            f"{where} was retired before vecmigrate recorded where it stopped being written: "
            "migrate to a new version name instead (a full copy)"
        )
    return (
        Promotion(version=spec.target.name, index_id=index.id, written_until=stopped.written_until),
        "",
    )


def check_preconditions(catalog: Catalog, spec: MigrationSpec) -> list[str]:
    """What would stop this migration, checked without writing anything. Empty means go."""
    return [c.detail for c in run_checks(catalog, spec) if not c.passed]


def shard_plan(spec: MigrationSpec, source: VectorStore) -> list[ShardRef]:
    """The shards of this migration over the source data."""
    quantiles = source.id_quantiles(spec.shards.count) if spec.shards.by == "range" else None
    return plan_shards(spec.shards, quantiles)


def prepare(catalog: Catalog, spec: MigrationSpec, operator: str) -> PrepareResult:
    """Check preconditions, then register the migration and the target version.

    Raises:
        PreconditionError: listing every problem; nothing was written.
    """
    problems = check_preconditions(catalog, spec)
    if problems:
        raise PreconditionError("; ".join(problems))
    idle_baseline(catalog, spec)  # before the counts below load the machine
    source = open_source(spec)
    shards = shard_plan(spec, source)
    counts = source.shard_counts(shards)
    if source.adopted:
        adopt(catalog, spec, source, operator)
    catalog.record_migration(spec, "PREPARING", operator)
    register_version(
        catalog, spec.tenant, spec.collection, spec.target, "building", spec.migration_id
    )
    open_target(spec, source)
    adapter = None
    if spec.model_change and spec.reembed.adapter != "none":
        directory = artifact_dir(spec.target.store, spec.tenant, spec.collection, "adapters")
        record = fit_transition(catalog, spec, source, directory)
        adapter = record.id
        catalog.append(
            tenant=spec.tenant,
            collection=spec.collection,
            kind="adapter.fitted",
            actor=operator,
            migration_id=spec.migration_id,
            data={
                "adapter": record.id,
                "method": record.method,
                "from_model": record.from_model,
                "to_model": record.to_model,
                "checksum": record.checksum,
                **record.figures,
            },
            event_key=f"adapter:{spec.migration_id}:{record.id}",
        )
    routing = catalog.get_routing(spec.tenant, spec.collection)
    assert routing is not None
    promotion = None
    dst = catalog.find_version(spec.tenant, spec.collection, spec.target.name)
    if dst is not None and dst.state == "retained":
        promotion, _ = promotion_of(catalog, spec)
    return PrepareResult(
        shards=shards,
        source_counts=counts,
        routing=routing,
        source_index=routing.read_index,
        adapter=adapter,
        promotion=promotion,
    )


class TargetView:
    """Source records as the copy writes them into the target: those the target cannot hold left
    out (the quarantine's), the rest re-embedded by the new model or passed through the
    migration's transform, in the target's layout. The copy, the catch-up's repairs and the
    reconcile's write through this one path."""

    def __init__(
        self,
        target: VectorStore,
        limits: Limits,
        transform: tuple[str, Transform],
        reembed: Reembedder | None = None,
    ) -> None:
        self.limits = limits
        self.transform_name, self.transform = transform
        self.reembed = reembed
        self.schema = target.schema

    @property
    def keeps_vectors(self) -> bool:
        """Whether the records it passes on keep the vectors read (no new model, no transform):
        then the checksum hashes of a batch as read are those of what the copy counts."""
        return self.reembed is None and self.transform_name == "identity"

    @classmethod
    def of(cls, catalog: Catalog, spec: MigrationSpec, target: VectorStore) -> TargetView:
        """The view of ``spec``'s migration into ``target``."""
        return cls(
            target,
            target_limits(spec, target),
            make_transform(spec.source.embedding, spec.target.embedding),
            Reembedder.for_spec(catalog, spec) if spec.model_change else None,
        )

    def records(self, records: Records, faults: Faults | None = None) -> tuple[Records, Faults]:
        """``records`` as the target holds them, and the records it cannot (with ``faults``,
        those the read already left out)."""
        _, written, bad = self.split(records, faults)
        return written, bad

    def split(
        self, records: Records, faults: Faults | None = None
    ) -> tuple[Records, Records, Faults]:
        """As :meth:`records`, with first the records the target can hold as the migration
        makes them, before they take the target's layout (the source side of a shard check)."""
        good, bad = screen(records, self.limits)
        if faults is not None:
            bad.extend(faults)
        if self.reembed is not None:
            found, vectors = self.reembed.records(good.labels)
            good = good.filter(np.isin(good.labels, found)).with_vectors(vectors)
        elif self.transform_name != "identity":
            good = good.with_vectors(self.transform(good.vectors()))
        return good, good.conform(self.schema), bad


class Throttle:
    """Holds a copy to a rate (vectors/s), measured from the last change of the rate."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.rate: float | None = None
        self.since = clock()
        self.done = 0

    def delay(self, rate: float | None, added: int) -> float:
        """Count ``added`` vectors and return how long to wait to stay at ``rate``."""
        if rate != self.rate:
            self.rate, self.since, self.done = rate, self.clock(), 0
        self.done += added
        if rate is None:
            return 0.0
        return max(0.0, self.done / rate - (self.clock() - self.since))


def _read_ahead(
    source: VectorStore, shard: ShardRef, cursor: Cursor, size: int, hashed: bool, normed: bool
) -> Batch:
    """The batch after ``cursor``; ``hashed``, its records' checksum hashes computed too, and
    ``normed`` their norms (the streamed shard checks' profiles take them): on the read-ahead
    thread they cost the copy nothing (numpy lets go of the interpreter), where the copy would
    compute them after the write (a tenth of a copy of 128-dimension vectors). Neither when
    the copy writes other vectors than it reads (it computes those)."""
    batch = source.scan(shard, cursor, size)
    if hashed and not batch.exhausted:
        batch.records.hashes()
        if normed:
            batch.records.norms()
    return batch


def copy_search_threads(spec: MigrationSpec, slots: int) -> int:
    """FAISS threads for the exact search a shard's copy streams, on a worker that runs
    ``slots`` activities at once: one where the shards' index builds run beside the copies
    (they take the cores), else the shard's share of the cores less the one the copy's own
    reads and writes take, at least one.

    FAISS's OpenMP threads wait for each other by spinning: two of them beside a build's two
    threads on two cores took 4.7 times as long as one and slowed the build by 9.5 % where one
    slowed it by 1.4 % (``bench/build_beside_copy.py``).
    """
    if builds_while_copying(spec):
        return 1
    return max(1, cpu_share(min(spec.max_parallel_shards, slots)) - 1)


def copy_shard(
    spec: MigrationSpec,
    shard: ShardRef,
    journal: Journal,
    on_batch: ProgressCallback | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    watch: WatcherOpener | None = None,
) -> CopyShardResult:
    """Copy one shard from where its journal says to its end, batch by batch, each batch in one
    transaction; under a latency budget, on a database of one writer at a time (SQLite), in
    turns of a few milliseconds instead, the budget's pauses between them, so that an
    application's writes never wait for a whole batch (see
    :meth:`~vecmigrate.stores.base.VectorStore.write`).

    With ``watch``, the copy also keeps the figures of the watcher it opens (the shard check
    streamed from the batches it holds), persisted with the cursor in the journal's transaction:
    a resumed copy goes on with figures that count every batch before its cursor once.

    Before each batch the journal records the batch's start as the resume point, so a crash at
    any instant re-copies at most that one batch, and upserts by id make the re-copy harmless.
    Before each batch the migration's control row is read too: a pause ends the call with
    ``complete=False`` (the next call resumes), and the throttle (split evenly over the shards
    running in parallel) holds the rate.

    Raises:
        DataError: a batch the target cannot take (wrong dimension, NaN); nothing of it was
            written, and the journal still points at its start.
    """
    began = time.monotonic()
    mid = spec.migration_id
    state = journal.begin_copy(mid, shard.index)
    if state.result is not None:
        return CopyShardResult.model_validate(state.result).model_copy(
            update={"attempts": state.attempts}
        )
    source = open_source(spec)
    target = open_target(spec, source)
    view = TargetView.of(journal.catalog, spec, target)
    shared = same_records(source, target)  # a pass that reads and checks, writing nothing
    watcher = None if watch is None else watch(state.cursor is None, source, target)
    reembed = view.reembed
    quarantine = Quarantine(journal.catalog)
    cursor, copied, acc = state.cursor, state.copied, state.written
    handed, batches, left_out = state.handed, 0, 0
    moved = {"read": 0, "written": 0}
    throttle = Throttle(clock)
    pacer = BudgetPacer(journal.catalog, spec, clock)  # the latency budget's pauses
    parallel = min(spec.max_parallel_shards, len(spec.shards.selected()))

    def between_turns(rows: int) -> None:
        sleep(pacer.between_turns(rows))  # the budget's pause, spread over the batch's turns

    def share(control: Control) -> float | None:
        rate = control.max_vectors_per_second
        return None if rate is None else rate / parallel

    def kept() -> StreamRow | None:
        return None if watcher is None else watcher.row()

    def result(total: int, complete: bool) -> CopyShardResult:
        embedded = (
            {}
            if reembed is None
            else {"embedded": reembed.texts, "embed_seconds": round(reembed.seconds, 3)}
        )
        return CopyShardResult(
            shard=shard.index,
            copied=copied,
            total=total,
            checksum=acc.hexdigest(),
            batches=batches,
            resumed_from=state.cursor,
            seconds=time.monotonic() - began,
            complete=complete,
            attempts=state.attempts,
            recopied=max(0, handed - copied),
            quarantined=left_out,
            bytes_read=moved["read"],
            bytes_written=moved["written"],
            **embedded,
        )

    def incomplete() -> CopyShardResult:
        # Everything up to the cursor has committed: the next call starts right after it.
        journal.before_batch(mid, shard.index, cursor, copied, acc, 0, kept())
        return result(copied, complete=False)

    # The next batch is read while this one is written (the source and the target are other
    # databases, so the read and the write overlap): reading costs a third of a copy.
    reader = ThreadPoolExecutor(1, thread_name_prefix="prefetch")
    ahead: Future[Batch] | None = None
    try:
        while True:
            control = journal.control(mid)
            if control.paused:
                return incomplete()
            batch = (
                ahead.result() if ahead is not None else source.scan(shard, cursor, spec.batch_size)
            )
            ahead = None
            if batch.exhausted:
                break
            moved["read"] += batch.nbytes
            if batch.next_cursor is not None:
                # In the caller's context: the read joins the copy's trace and its byte count.
                ahead = reader.submit(
                    contextvars.copy_context().run,
                    _read_ahead,
                    source,
                    shard,
                    batch.next_cursor,
                    spec.batch_size,
                    view.keeps_vectors,
                    watcher is not None,
                )
            try:
                seen, records, faults = view.split(batch.records, batch.faults)
            except DataError as exc:
                # Everything before this batch has committed: a resume after the fix starts here.
                journal.before_batch(mid, shard.index, cursor, copied, acc, 0, kept())
                raise DataError(
                    f"shard {shard.index}, batch after id {cursor.id if cursor else 'start'}: {exc}"
                ) from None
            journal.before_batch(mid, shard.index, cursor, copied, acc, len(records), kept())
            handed += len(records)
            quarantine.add(mid, shard.index, faults)
            left_out += len(faults)
            if watcher is not None:
                watcher.before_write(seen, faults, records)  # folded in while it writes
            if not shared:
                if pacer.active:
                    # On a database of one writer at a time, in turns (see VectorStore.write):
                    # an application's write waits for a turn, not for the batch.
                    target.write(records, between_turns=between_turns)
                else:
                    target.write(records)
                moved["written"] += records.nbytes
            acc.add_hashes(records.hashes())
            if watcher is not None:
                watcher.add(seen, faults, records)
            assert batch.next_cursor is not None
            cursor = batch.next_cursor
            copied += len(records)
            batches += 1
            if on_batch is not None:
                on_batch(cursor, copied, acc)
            wait = max(throttle.delay(share(control), len(records)), pacer.pause(len(records)))
            while wait > 0:
                step = min(wait, 1.0)
                sleep(step)
                wait -= step
                control = journal.control(mid)
                if control.paused:
                    return incomplete()
                if share(control) != throttle.rate:
                    break  # the throttle changed: measure again from the next batch
    finally:
        reader.shutdown(wait=True, cancel_futures=True)
    done = result(target.count(shard), complete=True)
    if watcher is not None:
        watcher.complete = True
    journal.finish_copy(mid, shard.index, cursor, copied, acc, done.model_dump(mode="json"), kept())
    return done


def _log_applier(catalog: Catalog, spec: MigrationSpec) -> Callable[[Changes], None]:
    """What replaying change-log entries onto ``spec``'s target does: their net effect (the
    last write of each id wins, deletes are tombstones), each upsert's vector seen through the
    migration's transform, or its text embedded again by the new model."""
    target = open_target(spec)
    _, transform = make_transform(spec.source.embedding, spec.target.embedding)
    reembed = Reembedder.for_spec(catalog, spec) if spec.model_change else None
    # Only a target that can share records makes the source worth opening to tell.
    shared = records_at(target) is not None and same_records(open_source(spec), target)

    def apply(changes: Changes) -> None:
        if shared:  # every logged write is already in the records both versions read
            return
        if reembed is not None:
            ids, texts, gone = changes.net_texts()
            vectors = reembed.embed(texts)
        else:
            ids, vectors, gone = changes.net(spec.source.embedding.dimension)
            vectors = transform(vectors)
        if len(ids):
            target.upsert(ids, vectors)
        if len(gone):
            target.delete(gone)

    return apply


def settle_from_log(
    catalog: Catalog, spec: MigrationSpec, log: ChangeLog, after: int, only: Ids
) -> int:
    """Write onto the target the last state the change log holds after ``after`` for the
    records ``only`` names (their ids); the entries applied.

    A write the router makes during a reconcile's repair goes to both versions, and the repair's
    own write of the same record, read from the source a moment before, can land on the target
    after it, with the older state: a delete undone, an upsert lost. The router logs a write
    before it makes it, so a replay of the log for those records that starts after the repair
    wrote, read to the log's head, leaves each with its last write (as the catch-up does).
    """
    apply = _log_applier(catalog, spec)
    applied, cursor = 0, after
    while True:
        changes = log.read(spec.tenant, spec.collection, cursor, 10_000)
        if len(changes) == 0:
            return applied
        mine = changes.among(only)
        if len(mine):
            apply(mine)
            applied += len(mine)
        cursor = changes.last_seq


def catch_up(
    spec: MigrationSpec,
    log: ChangeLog,
    journal: Journal,
    after: int,
    *,
    seconds: float,
    batch: int = 10_000,
    on_progress: Callable[[int, int], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> CatchUpResult:
    """Replay the change log after ``after`` onto the target, for at most ``seconds``.

    Each pass reads what is in the log, applies its net effect (the last write of each id wins,
    deletes are tombstones) and records how far it got in the journal, so a retry goes on from
    there. ``drained`` means a pass found nothing newer: from then on dual-write alone keeps the
    target current, and no replayed write can land after a newer one (why the phase waits for a
    pass that finds the log's head rather than stopping at a small lag). Under a latency budget
    it pauses between batches as the copy does (:class:`~vecmigrate.data.budget.BudgetPacer`).
    """
    began = time.monotonic()
    mid = spec.migration_id
    apply = _log_applier(journal.catalog, spec)
    pacer = BudgetPacer(journal.catalog, spec)
    cursor = max(after, journal.catchup_position(mid))
    applied = 0
    while True:
        changes = log.read(spec.tenant, spec.collection, cursor, batch)
        if len(changes) == 0:
            drained = True
            break
        apply(changes)
        cursor = changes.last_seq
        applied += len(changes)
        journal.set_catchup_position(mid, cursor)
        if on_progress is not None:
            on_progress(cursor, applied)
        if time.monotonic() - began > seconds:
            drained = False
            break
        wait = pacer.pause(len(changes))
        if wait > 0:
            sleep(min(wait, seconds - (time.monotonic() - began)))
    return CatchUpResult(
        position=cursor,
        applied=applied,
        lag=log.count_after(spec.tenant, spec.collection, cursor),
        drained=drained,
        seconds=time.monotonic() - began,
    )
