"""Temporal activities of a migration: thin adapters over ``vecmigrate``.

They add what only Temporal knows about: heartbeats carrying a resume cursor, the attempt number,
and which errors are worth retrying. Heavy ones are plain functions run on the worker's thread
pool. Domain errors that a retry cannot fix are raised as non-retryable application errors
whose type names the domain error, so the workflow can report them.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from vecmigrate import backfill, build, validation
from vecmigrate.catalog import Catalog
from vecmigrate.errors import NON_RETRYABLE, ArtifactError
from vecmigrate.lifecycle import RoutingView, ShardCheck
from vecmigrate.stores.base import RecordChecksum
from vecmigrate.tasks import (
    ArtifactRef,
    BuildIndexInput,
    BuildNativeIndexInput,
    CopyShardInput,
    CopyShardResult,
    Cursor,
    IndexRegistered,
    LedgerAck,
    LedgerInput,
    PrepareInput,
    PrepareResult,
    RegisterIndexInput,
    RoutingChangeInput,
    ValidateInput,
    ValidateResult,
    ValidateShardInput,
    VersionStateInput,
)

P = ParamSpec("P")
R = TypeVar("R")


def _domain_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn domain errors a retry cannot fix into non-retryable application errors."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except NON_RETRYABLE as exc:
            raise ApplicationError(str(exc), type=type(exc).__name__, non_retryable=True) from exc
        except ArtifactError as exc:  # a rebuild on retry can fix a bad artifact
            raise ApplicationError(str(exc), type=type(exc).__name__) from exc

    return wrapper


class MigrationActivities:
    """Activities bound to one catalog (the worker's ``--catalog``)."""

    def __init__(self, catalog_url: str, build_threads: int = 0) -> None:
        self.catalog_url = catalog_url
        self.build_threads = build_threads
        self._catalog: Catalog | None = None

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = Catalog(self.catalog_url)
        return self._catalog

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
            self.change_routing,
            self.set_version_state,
            self.record,
        ]

    @activity.defn(name="prepare")
    @_domain_errors
    def prepare(self, inp: PrepareInput) -> PrepareResult:
        return backfill.prepare(self.catalog, inp.spec, inp.operator)

    @activity.defn(name="copy_shard")
    @_domain_errors
    def copy_shard(self, inp: CopyShardInput) -> CopyShardResult:
        info = activity.info()
        start: Cursor | None = None
        copied = 0
        written: RecordChecksum | None = None
        if info.heartbeat_details:
            last = info.heartbeat_details[0]
            start = Cursor.model_validate(last["cursor"])
            copied = int(last["copied"])
            if "sum" in last:
                written = RecordChecksum(count=int(last["count"]), total=int(last["sum"]))
            activity.logger.info(
                "shard %s resumes after id %s (%s copied)", inp.shard.index, start.id, copied
            )

        def beat(cursor: Cursor, done: int, acc: RecordChecksum) -> None:
            activity.heartbeat(
                {
                    "shard": inp.shard.index,
                    "cursor": cursor.model_dump(),
                    "copied": done,
                    "count": acc.count,
                    "sum": acc.total,
                }
            )

        return backfill.copy_shard(inp.spec, inp.shard, start, copied, beat, written)

    @activity.defn(name="build_shard_index")
    @_domain_errors
    def build_shard_index(self, inp: BuildIndexInput) -> ArtifactRef:
        spec = inp.spec
        store = backfill.open_target(spec)
        directory = build.artifact_dir(
            spec.target.store, spec.tenant, spec.collection, spec.target.name
        )
        return build.build_shard(
            store,
            spec.target,
            inp.shard,
            directory,
            threads=self.build_threads,
            on_progress=lambda done, total: activity.heartbeat(
                {"shard": inp.shard.index, "added": done, "of": total}
            ),
        )

    @activity.defn(name="build_native_index")
    @_domain_errors
    def build_native_index(self, inp: BuildNativeIndexInput) -> ArtifactRef:
        # One statement, no cursor to heartbeat: a retry finds the index by its stable name.
        return build.build_native(backfill.open_target(inp.spec), inp.spec.target)

    @activity.defn(name="register_index")
    @_domain_errors
    def register_index(self, inp: RegisterIndexInput) -> IndexRegistered:
        spec = inp.spec
        record = build.register_index(
            self.catalog, spec.tenant, spec.collection, spec.target, inp.artifacts, inp.migration_id
        )
        return IndexRegistered(
            index_id=record.id, checksum=record.checksum, artifacts=len(record.artifacts)
        )

    @activity.defn(name="validate_shard")
    @_domain_errors
    def validate_shard(self, inp: ValidateShardInput) -> ShardCheck:
        spec = inp.spec
        return validation.check_shard(
            spec, backfill.open_source(spec), backfill.open_target(spec), inp.shard
        )

    @activity.defn(name="validate")
    @_domain_errors
    def validate(self, inp: ValidateInput) -> ValidateResult:
        began = time.monotonic()
        spec = inp.spec
        source, target = backfill.open_source(spec), backfill.open_target(spec)
        checks = inp.checks or [validation.check_shard(spec, source, target, s) for s in inp.shards]
        figures = validation.measure(
            self.catalog, spec, source, target, inp.source_index, inp.target_index
        )
        report = validation.report(spec, checks, figures)
        return ValidateResult(report=report, seconds=time.monotonic() - began)

    @activity.defn(name="change_routing")
    @_domain_errors
    def change_routing(self, inp: RoutingChangeInput) -> RoutingView:
        return self.catalog.compare_and_set_routing(
            inp.tenant,
            inp.collection,
            inp.expected_generation,
            inp.read_version,
            inp.read_index,
            inp.write_versions,
            inp.operator,
            inp.reason,
            inp.change_key,
        )

    @activity.defn(name="set_version_state")
    @_domain_errors
    def set_version_state(self, inp: VersionStateInput) -> None:
        self.catalog.set_version_state(inp.tenant, inp.collection, inp.version, inp.state)

    @activity.defn(name="record")
    @_domain_errors
    def record(self, inp: LedgerInput) -> LedgerAck:
        entry = self.catalog.append(
            tenant=inp.tenant,
            collection=inp.collection,
            migration_id=inp.migration_id,
            kind=inp.kind,
            actor=inp.actor,
            data=inp.data,
            event_key=inp.event_key,
        )
        if inp.kind == "phase":
            self.catalog.set_migration_phase(inp.migration_id, str(inp.data.get("to", "")))
        return LedgerAck(seq=entry.seq, hash=entry.hash)
