"""Temporal activities of a migration: thin adapters over ``vecmigrate``.

Every activity goes through one boundary (:func:`_boundary`): it is admitted only on a worker of
the region its data lives in, it loads its migration's spec from the catalog by the hash the
task names (refusing one whose hash differs), and whatever it raises leaves as a typed
``ApplicationError`` whose message is cut to fit Temporal's failure record: non-retryable for
the domain errors a retry cannot fix, retryable otherwise. Long ones heartbeat, with their
resume cursor where they have one. Heavy ones are plain functions run on the worker's thread
pool.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from typing import Any, TypeVar

import numpy as np
from temporalio import activity
from temporalio.exceptions import ApplicationError, TemporalError

from vecmigrate import validation
from vecmigrate.activities import tuning
from vecmigrate.activities.heartbeat import Beat, keepalive
from vecmigrate.catalog.catalog import Catalog
from vecmigrate.catalog.changelog import ChangeLog
from vecmigrate.catalog.journal import Journal, Truth
from vecmigrate.catalog.residency import Residency
from vecmigrate.catalog.retention import RetentionLog
from vecmigrate.catalog.schedules import ScheduleStore
from vecmigrate.catalog.specs import SpecStore
from vecmigrate.data import backfill, budget, capture, footprint, retention, scheduling, stablename
from vecmigrate.errors import (
    NON_RETRYABLE,
    PreconditionError,
    SpecMismatchError,
    VecmigrateError,
    summary,
)
from vecmigrate.indexes import build
from vecmigrate.indexes.artifacts import cpu_share, set_openmp_threads
from vecmigrate.model.access import AccessPolicy
from vecmigrate.model.costs import StorageSnapshot
from vecmigrate.model.divergence import (
    AnswersInput,
    CopyAnswers,
    CopyDigest,
    CopyEntries,
    DigestInput,
    EntriesInput,
    ShardDigest,
)
from vecmigrate.model.gates import ShardCheck, ShardReconcile
from vecmigrate.model.lifecycle import TERMINAL
from vecmigrate.model.routing import RoutingView
from vecmigrate.model.schedule import Firing, ResolveFiringInput
from vecmigrate.model.spec import MigrationSpec
from vecmigrate.model.tasks import (
    AccessPolicyInput,
    ArtifactRef,
    BuildIndexInput,
    BuildNativeIndexInput,
    CaptureInput,
    CaptureResult,
    CatchUpInput,
    CatchUpResult,
    ControlInput,
    CopyShardInput,
    CopyShardResult,
    Cursor,
    DataStateInput,
    IndexRegistered,
    LedgerAck,
    LedgerInput,
    LogHeadInput,
    PrepareInput,
    PrepareResult,
    PruneInput,
    PruneResult,
    ReconcileShardInput,
    RegisterIndexInput,
    RoutingChangeInput,
    RoutingStepInput,
    RoutingStepResult,
    ShadowInput,
    ShadowResult,
    SpecTask,
    StableNameInput,
    StableNameSwitch,
    StorageInput,
    TenantsInput,
    ValidateInput,
    ValidateResult,
    ValidateShardInput,
    VersionStateInput,
)
from vecmigrate.model.tuning import TuningInput, TuningResult
from vecmigrate.records.checksums import RecordChecksum
from vecmigrate.records.vectors import Ids, merge_topk
from vecmigrate.stores import WHOLE, VectorStore
from vecmigrate.validation import divergence, reconcile, stream
from vecmigrate.validation.shadow import ShadowLog

I = TypeVar("I")  # noqa: E741
R = TypeVar("R")


def _boundary(fn: Callable[[MigrationActivities, I], R]) -> Callable[[MigrationActivities, I], R]:
    """Admit the call on the region's workers only, and turn what it raises into typed errors.

    Errors a retry cannot fix are non-retryable; anything else is retried by the workflow's
    policy. Only a summary of the message travels (Temporal keeps a retried activity's last
    failure only while it is small); the worker's log keeps the whole error.
    """

    @functools.wraps(fn)
    def wrapper(self: MigrationActivities, inp: I) -> R:
        try:
            # Cancellation is taken at a heartbeat (see ``Beat``), never thrown into the thread
            # wherever it stands: an exception raised inside a client library (between a gRPC
            # channel taking its lock and the block that releases it, in a connection pool's
            # bookkeeping) leaves that client unusable for every later call in the process.
            with _shielded():
                self.admit(fn.__name__, inp)
                return fn(self, inp)
        except TemporalError:
            raise  # raised on purpose (a cancelled heartbeat, an error already typed)
        except NON_RETRYABLE as exc:
            activity.logger.warning("%s refused: %s", fn.__name__, exc)
            raise ApplicationError(
                summary(exc), type=type(exc).__name__, non_retryable=True
            ) from None
        except Exception as exc:
            activity.logger.exception("%s failed", fn.__name__)
            raise ApplicationError(summary(exc), type=type(exc).__name__) from None

    return wrapper


def _shielded() -> AbstractContextManager[None]:
    """Cancellation held until the block ends (outside an activity, as called in-process: none)."""
    return activity.shield_thread_cancel_exception() if activity.in_activity() else nullcontext()


def _keepalive(spec: MigrationSpec) -> AbstractContextManager[Beat]:
    return keepalive(spec.heartbeat_seconds / 4)


class MigrationActivities:
    """Activities bound to one catalog (the worker's ``--catalog``)."""

    def __init__(
        self,
        catalog_url: str,
        build_threads: int = 0,
        region: str | None = None,
        slots: int = 4,
    ) -> None:
        self.catalog_url = catalog_url
        self.build_threads = build_threads
        # Activities this worker runs at once: with the spec's shard window, how many builds or
        # shard checks can share the cores (see ``cpu_share``).
        self.slots = slots
        self.region = region
        # The gate's query sample of each validation round, drawn once per worker: every shard
        # check of the round folds the same queries' exact search, and a stratified draw reads
        # a window of every shard holding a query (thousands of shards: once, not per shard).
        self._gate_queries: dict[tuple[str, str, int], validation.GateQueries] = {}
        self._gate_queries_lock = threading.Lock()

    # Made on first use, then kept: the catalog and what reads through it.
    @functools.cached_property
    def catalog(self) -> Catalog:
        return Catalog(self.catalog_url)

    @functools.cached_property
    def residency(self) -> Residency:
        return Residency(self.catalog, self.region)

    @functools.cached_property
    def journal(self) -> Journal:
        return Journal(self.catalog)

    @functools.cached_property
    def specs(self) -> SpecStore:
        return SpecStore(self.catalog)

    def admit(self, name: str, inp: Any) -> None:
        """Record this run, or refuse it before it touches anything when it belongs to another
        region (see :class:`Residency`)."""
        self.residency.admit(
            name,
            getattr(inp, "region", None),
            getattr(inp, "migration_id", None),
            getattr(inp, "tenant", None),
        )

    def spec(self, task: SpecTask) -> MigrationSpec:
        """The spec ``task`` names, from the catalog (verified against its hash once per worker).

        Raises:
            SpecMismatchError: not in this catalog, altered, or not the task's tenant or region.
        """
        spec = self.specs.load(task.migration_id, task.spec_hash)
        if (spec.tenant, spec.region) != (task.tenant, task.region):
            raise SpecMismatchError(
                f"spec {task.spec_hash[:12]} is for tenant {spec.tenant}, region "
                f"{spec.region or 'none'}; the task names tenant {task.tenant}, region "
                f"{task.region or 'none'}: refused"
            )
        return spec

    def _ledger(self, spec: MigrationSpec, key: str, kind: str, data: dict[str, Any]) -> LedgerAck:
        """Append an entry keyed by ``key`` (a retry finds it instead of writing it again)."""
        entry = self.catalog.append(
            tenant=spec.tenant,
            collection=spec.collection,
            migration_id=spec.migration_id,
            kind=kind,
            actor="vecmigrate",
            data=data,
            event_key=f"{spec.migration_id}/{key}",
            region=self.region,
        )
        return LedgerAck(seq=entry.seq, hash=entry.hash)

    def all(self) -> list[Callable[..., Any]]:
        """Every activity, for ``Worker(activities=...)``."""
        return [
            self.prepare,
            self.copy_shard,
            self.build_shard_index,
            self.build_native_index,
            self.register_index,
            self.validate_shard,
            self.validate,
            self.reconcile_shard,
            self.data_state,
            self.change_routing,
            self.routing_step,
            self.set_version_state,
            self.set_control,
            self.record,
            self.catch_up,
            self.capture_install,
            self.capture_replay,
            self.log_head,
            self.shadow_figures,
            self.list_tenants,
            self.resolve_firing,
            self.record_storage,
            self.prune_version,
            self.access_policy,
            self.point_stable_name,
            self.region_digest,
            self.region_entries,
            self.region_answers,
            self.tuning_start,
            self.tuning_choose,
        ]

    @activity.defn(name="prepare")
    @_boundary
    def prepare(self, inp: PrepareInput) -> PrepareResult:
        spec = self.spec(inp)
        with _keepalive(spec):  # counting thousands of shards takes a while
            result = backfill.prepare(self.catalog, spec, inp.operator)
            # What plan estimated, kept beside what the migration will measure.
            estimate = footprint.storage_estimate(
                self.catalog, spec, sum(result.source_counts.values())
            )
            self._ledger(
                spec, "storage/estimate", footprint.ESTIMATE_KIND, estimate.model_dump(mode="json")
            )
        return result

    @activity.defn(name="copy_shard")
    @_boundary
    def copy_shard(self, inp: CopyShardInput) -> CopyShardResult:
        spec, index = self.spec(inp), inp.shard.index
        with _keepalive(spec) as beat:

            def progress(cursor: Cursor, done: int, _acc: RecordChecksum) -> None:
                beat({"shard": index, "cursor": cursor.model_dump(), "copied": done})

            def copy() -> CopyShardResult:
                # The copy streams the shard's check (profiles, the gate's exact search): the
                # search runs in FAISS (its threads set on the thread that runs it: libgomp
                # keeps the count per thread).
                set_openmp_threads(backfill.copy_search_threads(spec, self.slots))
                return backfill.copy_shard(
                    spec,
                    inp.shard,
                    self.journal,
                    progress,
                    watch=functools.partial(stream.open_stream, self.journal, spec, inp.shard),
                )

            result = budget.niced(spec, copy)
        if result.resumed_from is not None and result.complete:
            activity.logger.info(
                "shard %s resumed after id %s (attempt %s, %s vectors re-copied)",
                index,
                result.resumed_from.id,
                result.attempts,
                result.recopied,
            )
        if result.complete:
            result.ledger = self._ledger(
                spec, f"shard/{index}/copied", "shard.copied", result.model_dump(mode="json")
            )
        return result

    @activity.defn(name="build_shard_index")
    @_boundary
    def build_shard_index(self, inp: BuildIndexInput) -> ArtifactRef:
        spec, index = self.spec(inp), inp.shard.index
        store = backfill.open_target(spec)
        directory = build.artifact_dir(
            spec.target.store, spec.tenant, spec.collection, spec.target.name
        )
        with _keepalive(spec) as beat:
            ref = budget.niced(
                spec,
                lambda: build.build_shard(
                    store,
                    spec.target,
                    inp.shard,
                    directory,
                    threads=budget.build_threads(
                        self.catalog, spec, self.build_threads or self._share(spec)
                    ),
                    on_progress=budget.paced(
                        self.catalog,
                        spec,
                        lambda done, total: beat({"shard": index, "added": done, "of": total}),
                    ),
                    chunk=budget.build_chunk(spec),
                ),
            )
        self.journal.set_artifact(spec.migration_id, index, ref.model_dump(mode="json"))
        self._ledger(spec, f"shard/{index}/indexed", "shard.indexed", ref.model_dump(mode="json"))
        return ref

    @activity.defn(name="build_native_index")
    @_boundary
    def build_native_index(self, inp: BuildNativeIndexInput) -> ArtifactRef:
        spec = self.spec(inp)
        # One statement, no cursor: a retry finds the index by its stable name. The heartbeats
        # carry the database's progress of the build, which the status shows.
        with _keepalive(spec) as beat:
            return build.build_native(
                backfill.open_target(spec),
                spec.target,
                on_progress=lambda p: beat({"index_build": p.model_dump(mode="json")}),
            )

    @activity.defn(name="register_index")
    @_boundary
    def register_index(self, inp: RegisterIndexInput) -> IndexRegistered:
        spec = self.spec(inp)
        artifacts = inp.artifacts
        if not artifacts:
            stored = self.journal.outcomes(spec.migration_id, "artifact")
            missing = [s for s in spec.shards.selected() if s not in stored]
            if missing:
                raise PreconditionError(
                    f"no index artifact recorded for shards {missing[:10]}"
                    f"{' ...' if len(missing) > 10 else ''}; build them first"
                )
            artifacts = [ArtifactRef.model_validate(stored[s]) for s in spec.shards.selected()]
        # Registration records the artifacts' checksums; every load (the gates', each
        # router's) verifies the bytes against them, so a file changed since is refused there.
        with _keepalive(spec):
            record = build.register_index(
                self.catalog, spec.tenant, spec.collection, spec.target, artifacts, inp.migration_id
            )
        if inp.log_position is not None:
            ChangeLog(self.catalog).set_index_position(record.id, inp.log_position)
        return IndexRegistered(
            index_id=record.id, checksum=record.checksum, artifacts=len(record.artifacts)
        )

    def _round_queries(
        self, spec: MigrationSpec, round_: int, source: VectorStore, target: VectorStore
    ) -> validation.GateQueries:
        """The gate's queries of validation round ``round_``, drawn once by this worker (the
        draw is deterministic from the seed; the stored ground truths name their queries'
        digest, so a worker that drew others never mixes them)."""
        key = (spec.migration_id, spec.spec_hash(), round_)
        with self._gate_queries_lock:
            if key in self._gate_queries:
                return self._gate_queries[key]
            # The sample the copy searched, if it streamed (fixed before it began); else drawn.
            fixed = None if stream.streamable(spec) else stream.stored_queries(self.journal, spec)
            queries = fixed or validation.gate_queries(spec, source, target)
            while len(self._gate_queries) >= 8:
                self._gate_queries.pop(next(iter(self._gate_queries)))
            self._gate_queries[key] = queries
            return queries

    @activity.defn(name="validate_shard")
    @_boundary
    def validate_shard(self, inp: ValidateShardInput) -> ShardCheck:
        spec = self.spec(inp)
        volatile = None
        if inp.volatile_after is not None:
            volatile = reconcile.changed_since(ChangeLog(self.catalog), spec, inp.volatile_after)
        # A full read of both versions (when the copy's streamed figures cannot stand) pauses
        # between its batches under the spec's latency budget.
        source, target = budget.paced_reads(
            self.catalog,
            spec,
            (backfill.open_source(spec), backfill.open_target(spec)),
            "shard checks",
        )
        set_openmp_threads(self._share(spec))  # the exact search runs in FAISS
        fold = validation.fold_truth(spec)
        with _keepalive(spec):
            queries = self._round_queries(spec, inp.round, source, target) if fold else None
            # The figures the copy streamed, once the target store is checked against them
            # (its count and a read-back sample); else both versions read in full, as before.
            # At the budget's lower CPU priority, as the copy and the build run.
            check, truth = budget.niced(
                spec,
                lambda: stream.shard_check(
                    self.journal, spec, source, target, inp.shard, queries, volatile, inp.round
                ),
            )
        self.journal.set_check(
            spec.migration_id,
            inp.shard.index,
            inp.round,
            check.model_dump(mode="json"),
            None if queries is None or truth is None else Truth(queries.digest(), *truth),
        )
        return check

    @activity.defn(name="reconcile_shard")
    @_boundary
    def reconcile_shard(self, inp: ReconcileShardInput) -> ShardReconcile:
        """Compare one shard of the source and the target record by record, repair what
        differs and compare it again. Records written while it runs are left out: those the
        change log names from a minute before it began (dual-write and catch-up account for
        them; see ``reconcile.volatile_mark``) and those written to the
        source with plain SQL whose capture is not replayed yet (the next replay brings them).
        It heartbeats where it stands; a retry compares the shard again from its start (a
        repair written twice is the same)."""
        spec = self.spec(inp)
        with _keepalive(spec) as beat:
            source, target = backfill.open_source(spec), reconcile.open_existing_target(spec)
            options = reconcile.during_writes(self.catalog, spec)
            if inp.from_stream:
                # The copy's streamed figures, when they vouch for the shard, stand for the
                # full read (written during the migration, from the watermark on, or
                # captured and not replayed yet: read from both versions).
                changed = reconcile.changed_since(ChangeLog(self.catalog), spec, inp.volatile_after)
                compare = reconcile.vectors_comparable(spec.model_change)
                options["streamed"] = stream.vouch(
                    self.journal, spec, source, target, changed, compare
                )
            rec = reconcile.for_migration(
                self.catalog,
                spec,
                source,
                target,
                max_records_per_second=inp.max_records_per_second,
                on_progress=beat,
                **options,
            )
            result = budget.niced(spec, lambda: rec.shard(inp.shard, inp.repair))
            if result.repaired.total():
                # Written behind the figures: the shard's checks read it in full from now on.
                why = f"the reconcile gate repaired {result.repaired.total()} records of the shard"
                stream.spoil(self.journal, spec, inp.shard.index, why)
            return result

    @activity.defn(name="validate")
    @_boundary
    def validate(self, inp: ValidateInput) -> ValidateResult:
        began = time.monotonic()
        spec = self.spec(inp)
        source, target = backfill.open_source(spec), backfill.open_target(spec)
        before = self._data_state(spec, source, target)
        checks = inp.checks or self._checks(spec, inp.round)
        set_openmp_threads(cpu_share(1))  # the figures run alone, after every shard check
        with _keepalive(spec):
            unsettled = capture.captured_ids(spec)
            queries = self._round_queries(spec, inp.round, source, target)
            parts = None
            if validation.fold_truth(spec):  # else the shard checks stored none
                parts = self.journal.truths(
                    spec.migration_id, inp.round, queries.digest(), list(spec.shards.selected())
                )
            # At the budget's lower CPU priority, as the copy and the build run.
            figures = budget.niced(
                spec,
                lambda: validation.measure(
                    self.catalog,
                    spec,
                    source,
                    target,
                    inp.source_index,
                    inp.target_index,
                    queries=queries,
                    truth=merge_topk(parts, queries.ask) if parts else None,
                    source_is_target=validation.same_data(spec, checks),
                    unsettled=unsettled,
                    unindexed=(
                        self._unindexed(spec, inp.source_index, unsettled),
                        self._unindexed(spec, inp.target_index),
                    ),
                    pause=budget.between(self.catalog, spec, "validation gates"),
                ),
            )
        report = validation.report(spec, checks, figures)
        report.data_state = before
        return ValidateResult(report=report, seconds=time.monotonic() - began)

    def _unindexed(
        self, spec: MigrationSpec, index_id: str | None, also: Ids | None = None
    ) -> Ids | None:
        """Records written or deleted since index ``index_id`` was built (the change log after
        the position the index is current to, and ``also``): its recall is measured without
        them."""
        if index_id is None:
            return None
        log = ChangeLog(self.catalog)
        written = log.changed_ids(spec.tenant, spec.collection, log.index_position(index_id))
        return written if also is None else np.union1d(written, also)

    @activity.defn(name="data_state")
    @_boundary
    def data_state(self, inp: DataStateInput) -> str:
        spec = self.spec(inp)
        return self._data_state(spec, backfill.open_source(spec), backfill.open_target(spec))

    def _data_state(self, spec: MigrationSpec, source: VectorStore, target: VectorStore) -> str:
        """Counts of both versions and the change-log head: what a gate measured, cheaply.
        Versions that read the same records (``records: shared``) are counted once."""
        held = source.count(WHOLE)
        shared = backfill.same_records(source, target)
        head = ChangeLog(self.catalog).head(spec.tenant, spec.collection)
        return (
            f"source {held}, target {held if shared else target.count(WHOLE)}, change log at {head}"
        )

    def _share(self, spec: MigrationSpec) -> int:
        """Threads for one shard's build or check: the cores split among the shards the
        migration works on at once."""
        return cpu_share(min(spec.max_parallel_shards, self.slots))

    def _checks(self, spec: MigrationSpec, round_: int) -> list[ShardCheck]:
        """The shard profiles of validation round ``round_`` from the shard journal."""
        stored = self.journal.outcomes(spec.migration_id, "check_result")
        rounds = self.journal.check_rounds(spec.migration_id)
        missing = [s for s in spec.shards.selected() if rounds.get(s) != round_]
        if missing:
            raise PreconditionError(
                f"shards {missing[:10]}{' ...' if len(missing) > 10 else ''} have no profile "
                f"from validation round {round_}; validate them first"
            )
        return [ShardCheck.model_validate(stored[s]) for s in spec.shards.selected()]

    @activity.defn(name="catch_up")
    @_boundary
    def catch_up(self, inp: CatchUpInput) -> CatchUpResult:
        spec = self.spec(inp)
        log = ChangeLog(self.catalog)
        with _keepalive(spec) as beat:
            result = backfill.catch_up(
                spec,
                log,
                self.journal,
                inp.after,
                seconds=inp.seconds,
                on_progress=lambda pos, n: beat({"position": pos, "applied": n}),
            )
            if result.drained:
                # What the target now holds, the log need keep only once per id.
                result.compacted = log.compact(spec.tenant, spec.collection, result.position)
        return result

    @activity.defn(name="capture_install")
    @_boundary
    def capture_install(self, inp: CaptureInput) -> CaptureResult:
        return capture.install(self.spec(inp))

    @activity.defn(name="capture_replay")
    @_boundary
    def capture_replay(self, inp: CaptureInput) -> CaptureResult:
        """Replay captured writes onto the target for at most ``inp.seconds``; with ``remove``,
        stop capturing, replay what is left when ``replay``, and drop the capture."""
        spec = self.spec(inp)
        with _keepalive(spec) as beat:

            def progress(applied: int) -> None:
                beat({"applied": applied})

            if inp.remove:
                return capture.remove(spec, replay_first=inp.replay, on_progress=progress)
            return capture.replay(
                spec,
                seconds=inp.seconds,
                on_progress=progress,
                catalog=self.catalog,
                # The shard checks the copy streamed follow what the replay writes.
                follow=functools.partial(stream.StreamedReplay, self.journal, spec),
            )

    @activity.defn(name="log_head")
    @_boundary
    def log_head(self, inp: LogHeadInput) -> int:
        return ChangeLog(self.catalog).head(inp.tenant, inp.collection)

    @activity.defn(name="shadow_figures")
    @_boundary
    def shadow_figures(self, inp: ShadowInput) -> ShadowResult:
        shadows = ShadowLog(self.catalog)
        last = shadows.last_id()
        figures = shadows.figures(inp.tenant, inp.collection, inp.candidate, inp.after)
        return ShadowResult(figures=figures, last_id=last)

    @activity.defn(name="set_control")
    @_boundary
    def set_control(self, inp: ControlInput) -> None:
        self.journal.set_control(
            inp.migration_id,
            paused=inp.paused,
            max_vectors_per_second=inp.max_vectors_per_second,
        )

    @activity.defn(name="change_routing")
    @_boundary
    def change_routing(self, inp: RoutingChangeInput) -> RoutingView:
        return self._change_routing(inp)

    @activity.defn(name="routing_step")
    @_boundary
    def routing_step(self, inp: RoutingStepInput) -> RoutingStepResult:
        """``change_routing``, its ledger entry, then each version state and its entry: what
        the workflow did in one task per write before this release."""
        view = self._change_routing(inp)
        scope = inp.model_dump(include={"migration_id", "tenant", "collection"})

        def entry(key: str, kind: str, data: dict[str, Any]) -> LedgerAck:
            return self._append(
                LedgerInput(**scope, event_key=key, kind=kind, actor=inp.operator, data=data)
            )

        data = {"reason": inp.reason, **view.model_dump(mode="json")}
        acks = [entry(inp.event_key, "routing.changed", data)]
        for step in inp.states:
            self._set_version_state(
                VersionStateInput(
                    **scope,
                    version=step.version,
                    state=step.state,
                    operator=inp.operator,
                    region=inp.region,
                )
            )
            data = {"version": step.version, "state": step.state}
            acks.append(entry(step.event_key, "version.state", data))
        return RoutingStepResult(routing=view, acks=acks)

    def _change_routing(self, inp: RoutingChangeInput) -> RoutingView:
        before = self.catalog.get_routing(inp.tenant, inp.collection)
        retained = RetentionLog(self.catalog)
        if before is not None:
            # Read before the switch: a version taken out of the writes may miss every write
            # logged after this position (a promotion back replays them from here).
            head = ChangeLog(self.catalog).head(inp.tenant, inp.collection)
            for version in set(before.write_versions) - set(inp.write_versions):
                retained.stopped_writing(inp.tenant, inp.collection, version, head)
        view = self.catalog.compare_and_set_routing(
            inp.tenant,
            inp.collection,
            inp.expected_generation,
            inp.read_version,
            inp.read_index,
            inp.write_versions,
            inp.operator,
            inp.reason,
            inp.change_key,
            candidate_version=inp.candidate_version,
            candidate_index=inp.candidate_index,
            ramp_percent=inp.ramp_percent,
            shadow_percent=inp.shadow_percent,
            writes_paused=inp.writes_paused,
        )
        for version in set(view.write_versions) - set(before.write_versions if before else []):
            retained.resumed_writing(inp.tenant, inp.collection, version)
        return view

    @activity.defn(name="point_stable_name")
    @_boundary
    def point_stable_name(self, inp: StableNameInput) -> StableNameSwitch:
        """Point the spec's stable name (an alias, a view) at one of its versions. Idempotent:
        a retry finds it where the first attempt left it. A name that is a table or collection
        of its own is refused for good (PreconditionError)."""
        return stablename.switch(self.spec(inp), inp.side, create=inp.create)

    @activity.defn(name="set_version_state")
    @_boundary
    def set_version_state(self, inp: VersionStateInput) -> None:
        self._set_version_state(inp)

    def _set_version_state(self, inp: VersionStateInput) -> None:
        self.catalog.set_version_state(inp.tenant, inp.collection, inp.version, inp.state)
        retained = RetentionLog(self.catalog)
        if inp.state in ("retained", "abandoned"):
            keep = None
            try:
                spec = MigrationSpec.model_validate(
                    self.catalog.get_migration(inp.migration_id)["spec"]
                )
            except (VecmigrateError, ValueError):
                spec = None
            if spec is not None and spec.retention is not None:
                policy = spec.retention
                keep = (
                    policy.retired_seconds
                    if inp.state == "retained"
                    else (policy.abandoned_seconds)
                )
            how = "retired" if inp.state == "retained" else "abandoned"
            retained.left(inp.tenant, inp.collection, inp.version, how, inp.migration_id, keep)
        else:
            retained.back_in_use(inp.tenant, inp.collection, inp.version)

    @activity.defn(name="record_storage")
    @_boundary
    def record_storage(self, inp: StorageInput) -> StorageSnapshot:
        spec = self.spec(inp)
        if inp.stage == "finalized":
            # The source no longer written: what the log and the artifacts still hold that
            # nothing needs goes before the figures are taken.
            retention.settle_log(self.catalog, spec.tenant, spec.collection)
            retention.collect_artifacts(self.catalog, spec.tenant, spec.collection)
            # Validation is over: what the copy counted for the streamed checks is not read again.
            retention.drop_streamed(spec)
        return footprint.record_storage(self.catalog, spec, inp.stage)

    @activity.defn(name="prune_version")
    @_boundary
    def prune_version(self, inp: PruneInput) -> PruneResult:
        verdict = retention.prune_version(
            self.catalog, inp.tenant, inp.collection, inp.version, inp.actor, reason=inp.reason
        )
        if verdict.action == "kept":
            self.catalog.append(
                tenant=inp.tenant,
                collection=inp.collection,
                kind="version.kept",
                actor=inp.actor,
                migration_id=inp.migration_id,
                data={"version": inp.version, "reason": verdict.reason},
                event_key=f"kept/{activity.info().workflow_id}/{inp.version}",
                region=self.region,
            )
        return PruneResult(
            action=verdict.action,
            reason=verdict.reason,
            freed_bytes=verdict.freed_bytes,
            keep_until=verdict.keep_until,
        )

    @activity.defn(name="record")
    @_boundary
    def record(self, inp: LedgerInput) -> LedgerAck:
        if inp.kind == "migration.started" and "spec" in inp.data:
            # The one payload that carries the spec: stored by its hash before any task names it.
            self.specs.store(inp.migration_id, MigrationSpec.model_validate(inp.data["spec"]))
        ack = self._append(inp)
        if inp.kind == "phase":
            phase = str(inp.data.get("to", ""))
            self.catalog.set_migration_phase(inp.migration_id, phase)
            if phase in TERMINAL:
                # Completed, rolled back or aborted: nothing reads what the copy counted for
                # the streamed shard checks again (a retry finds it gone; gc removes it when
                # this step did not run).
                retention.drop_streamed_of(self.catalog, inp.migration_id)
        return ack

    def _append(self, inp: LedgerInput) -> LedgerAck:
        """Append the workflow's entry (idempotent by its event key) from this worker's region."""
        entry = self.catalog.append(
            tenant=inp.tenant,
            collection=inp.collection,
            migration_id=inp.migration_id,
            kind=inp.kind,
            actor=inp.actor,
            data=inp.data,
            event_key=inp.event_key,
            region=self.region,
            caller=inp.caller,
        )
        return LedgerAck(seq=entry.seq, hash=entry.hash)

    @activity.defn(name="resolve_firing")
    @_boundary
    def resolve_firing(self, inp: ResolveFiringInput) -> Firing:
        try:
            template = ScheduleStore(self.catalog).template(inp.schedule_id, inp.spec_hash)
        except SpecMismatchError as exc:
            return Firing(outcome="refused", reason=str(exc))
        return scheduling.resolve_firing(
            self.catalog,
            inp.schedule_id,
            template.spec,
            inp.spec_hash,
            datetime.fromisoformat(inp.fired_at),
            inp.firing_id,
            inp.requested_by,
        )

    @activity.defn(name="access_policy")
    @_boundary
    def access_policy(self, inp: AccessPolicyInput) -> AccessPolicy:
        return self.catalog.access_policy(inp.tenant, inp.collection)

    def _copy(self, spec: MigrationSpec) -> divergence.Reader:
        """A reader of this region's copy of the migration's target."""
        return divergence.Reader(
            reconcile.open_existing_target(spec),
            batch_size=spec.batch_size,
            max_records_per_second=spec.max_vectors_per_second,
        )

    @activity.defn(name="region_digest")
    @_boundary
    def region_digest(self, inp: DigestInput) -> CopyDigest:
        """This region's copy digested per shard and bucket (resumed from the shards a previous
        attempt heartbeated)."""
        spec = self.spec(inp)
        info = activity.info()
        done: dict[int, ShardDigest] = {}
        if info.heartbeat_details:
            for d in info.heartbeat_details[0].get("shards", []):
                shard = ShardDigest.model_validate(d)
                done[shard.shard] = shard
        with _keepalive(spec) as beat:

            def on_shard(shard: ShardDigest) -> None:
                done[shard.shard] = shard
                beat({"shards": [d.model_dump(mode="json") for d in done.values()]})

            return self._copy(spec).digest(
                spec.shards.count, sample=inp.sample, done=done, on_shard=on_shard
            )

    @activity.defn(name="region_entries")
    @_boundary
    def region_entries(self, inp: EntriesInput) -> CopyEntries:
        """This region's records in the buckets that differ: labels, ids and hashes only."""
        spec = self.spec(inp)
        with _keepalive(spec):
            return self._copy(spec).entries(spec.shards.count, inp.cells)

    @activity.defn(name="region_answers")
    @_boundary
    def region_answers(self, inp: AnswersInput) -> CopyAnswers:
        """This region's top k labels for the query records, searched with its own vectors."""
        spec = self.spec(inp)
        with _keepalive(spec):
            return self._copy(spec).answers(inp.labels, inp.k, str(spec.target.embedding.metric))

    @activity.defn(name="list_tenants")
    @_boundary
    def list_tenants(self, inp: TenantsInput) -> list[str]:
        return self.catalog.tenants_with(inp.collection, inp.version)

    # -- search-parameter tuning (``activities.tuning``) ----------------------------------------

    @activity.defn(name="tuning_start")
    @_boundary
    def tuning_start(self, inp: TuningInput) -> None:
        tuning.start(self.catalog, self.spec(inp), inp)

    @activity.defn(name="tuning_choose")
    @_boundary
    def tuning_choose(self, inp: TuningInput) -> TuningResult:
        spec = self.spec(inp)
        with _keepalive(spec):  # the exact search over the target's store takes a while
            return tuning.choose(self.catalog, spec, inp)
