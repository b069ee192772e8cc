"""The compaction activity: a thin adapter over ``vecmigrate.indexes.compaction``.

It adds what only Temporal knows about: the position it heartbeats (the log position it
compacts to and its latest checkpoint), the resume from them after a retry, and which errors
are worth retrying.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from functools import cached_property
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from vecmigrate.activities.heartbeat import keepalive
from vecmigrate.catalog.catalog import Catalog, now
from vecmigrate.catalog.changelog import ChangeLog
from vecmigrate.embedding.registry import model_key
from vecmigrate.errors import NON_RETRYABLE, NotFoundError
from vecmigrate.indexes.compaction import Checkpoint, compact
from vecmigrate.indexes.live import served_artifacts
from vecmigrate.model.compaction import CompactionProgress, CompactionRequest, CompactionResult
from vecmigrate.model.spec import store_ref
from vecmigrate.stores import Scope, open_store


class CompactionActivities:
    """The compaction activity bound to one catalog (the worker's ``--catalog``)."""

    def __init__(self, catalog_url: str) -> None:
        self.catalog_url = catalog_url

    @cached_property
    def catalog(self) -> Catalog:
        """The catalog, opened at its first use (not when the worker is built)."""
        return Catalog(self.catalog_url)

    def all(self) -> list[Callable[..., Any]]:
        """Every activity, for ``Worker(activities=...)``."""
        return [self.compact_index]

    @activity.defn(name="compact_index")
    def compact_index(self, request: CompactionRequest) -> CompactionResult:
        """Compact the index version the request names (or the one serving reads)."""
        try:
            # Cancellation waits for the end (as for a migration's activities): never thrown
            # into a client library mid-call.
            with activity.shield_thread_cancel_exception():
                return self._compact(request)
        except NON_RETRYABLE as exc:
            raise ApplicationError(str(exc), type=type(exc).__name__, non_retryable=True) from exc

    def _compact(self, request: CompactionRequest) -> CompactionResult:
        catalog = self.catalog
        log = ChangeLog(catalog)
        tenant, collection = request.tenant, request.collection
        index_id = request.index_id
        if index_id is None:
            routing = catalog.get_routing(tenant, collection)
            if routing is None or routing.read_index is None:
                raise NotFoundError(
                    f"{tenant}/{collection} reads from no index version; name one (index_id)"
                )
            index_id = routing.read_index
        record = catalog.get_index(index_id)
        if (record.tenant, record.collection) != (tenant, collection):
            raise NotFoundError(f"index {index_id} is not an index of {tenant}/{collection}")
        version = catalog.find_version(tenant, collection, record.version)
        if version is None:
            raise NotFoundError(f"version {record.version} of index {index_id} is not registered")
        info = activity.info()
        resumed = None
        if info.heartbeat_details:
            resumed = CompactionProgress.model_validate(info.heartbeat_details[0])
        if resumed is not None:
            upto = resumed.upto  # a retry compacts to the position the first attempt chose
        else:
            upto = log.head(tenant, collection, before=now() - _seconds(request.settle_seconds))
        start = served_artifacts(log, record).position
        pending = log.count_after(tenant, collection, start) if upto > start else 0
        if upto <= start or pending < max(request.min_entries, 1):
            return CompactionResult(
                index_id=index_id,
                started_at=start,
                position=start,
                skipped=f"{pending} log entries after position {start} (fewer than "
                f"{max(request.min_entries, 1)}, or none settled for "
                f"{request.settle_seconds:g} s)",
                attempt=info.attempt,
            )
        checkpoint = None
        if resumed is not None and resumed.checkpoint_position is not None:
            checkpoint = Checkpoint(resumed.checkpoint_position, resumed.checkpoint)
        store = open_store(store_ref(version.store), Scope(tenant, collection, version.version))
        with keepalive(request.heartbeat_seconds / 4) as report:
            report(resumed or CompactionProgress(upto=upto, applied=start))

            kept = [checkpoint]  # the latest checkpoint: a retry resumes from it

            def progress(last: Checkpoint | None, applied: int) -> None:
                if last is not None:
                    kept[0] = last
                latest = kept[0]
                report(
                    CompactionProgress(
                        upto=upto,
                        applied=applied,
                        checkpoint_position=None if latest is None else latest.position,
                        checkpoint=[] if latest is None else latest.artifacts,
                    )
                )

            outcome = compact(
                catalog,
                index_id,
                upto,
                space=model_key(version.embedding),
                normalized=version.embedding.normalized,
                fetch=store.fetch,
                resume=checkpoint,
                checkpoint_every=request.checkpoint_every,
                max_entries_per_second=request.max_entries_per_second,
                on_progress=progress,
            )
        catalog.append(
            tenant=tenant,
            collection=collection,
            kind="index.compacted",
            actor=request.requested_by,
            data={
                "index": index_id,
                "from_position": outcome.started_at,
                "position": outcome.position,
                "artifacts": [
                    {"shard": a["shard"], "sha256": a["sha256"], "count": a["count"]}
                    for a in outcome.artifacts
                ],
            },
            event_key=f"compaction/{index_id}/{outcome.position}",
        )
        outcome.attempt = info.attempt
        return outcome


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)
