"""Compaction: the change log folded into new artifacts of an index version.

Routers apply the log to their in-memory copies (``vecmigrate.indexes.live``), but each one that
starts applies everything after its artifact's position, and what an index cannot take in place
(writes to FAISS HNSW, records of another model's space) stays laid over it. A compaction bounds
both: it loads the index's newest artifacts, applies the log up to a position, folds in what
the overlay kept (reading those records from the version's store, and rebuilding a FAISS HNSW
shard without the records it replaced), and records the new artifacts with that position.
Routers then load them (a new process) or swap to them (one with a kept overlay).

It is resumable: every ``checkpoint_every`` entries it writes the shards as they are (content-
addressed, to a temporary name and renamed) and reports the checkpoint, from which a retry
starts instead of the beginning. The artifacts an index version was registered with are never
changed or removed.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vecmigrate.catalog.catalog import Catalog
from vecmigrate.catalog.changelog import ChangeLog
from vecmigrate.errors import ArtifactError
from vecmigrate.indexes.artifacts import LoadedIndex, build_index, write_artifact
from vecmigrate.indexes.live import LOG_PAGE, Fetch, LiveIndex, NetChanges, served_artifacts
from vecmigrate.model.compaction import CompactionResult
from vecmigrate.model.spec import Metric
from vecmigrate.records.vectors import Ids, Vectors, grown_rows, normalize_rows


@dataclass(frozen=True)
class Checkpoint:
    """Shards written with the log applied up to ``position``: where a retry resumes."""

    position: int
    artifacts: list[dict[str, Any]]


Progress = Callable[[Checkpoint | None, int], None]


def compact(
    catalog: Catalog,
    index_id: str,
    upto: int,
    *,
    space: str,
    normalized: bool,
    fetch: Fetch | None,
    resume: Checkpoint | None = None,
    checkpoint_every: int = 50_000,
    max_entries_per_second: float | None = None,
    on_progress: Progress | None = None,
) -> CompactionResult:
    """Fold the log up to ``upto`` into new artifacts of index ``index_id`` (idempotent: a
    compaction to a position already recorded records nothing new).

    ``on_progress`` is called with the latest checkpoint (None before the first) and the
    position applied so far, after every page of the log.

    Raises:
        NotFoundError: no such index version.
        ArtifactError: an artifact to start from is missing or corrupt.
    """
    began = time.monotonic()
    log = ChangeLog(catalog)
    record = catalog.get_index(index_id)
    served = served_artifacts(log, record)
    outcome = CompactionResult(
        index_id=index_id, started_at=served.position, position=served.position
    )
    if upto <= served.position:
        outcome.artifacts = list(served.artifacts)
        return outcome
    start = served
    if resume is not None and served.position < resume.position <= upto:
        try:
            live = _open(resume.artifacts, resume.position, space, normalized, fetch)
            outcome.resumed_from = resume.position
        except ArtifactError:
            live = None  # the checkpoint is gone: start again from the served artifacts
    else:
        live = None
    if live is None:
        live = _open(start.artifacts, start.position, space, normalized, fetch)
    directory = Path(str(start.artifacts[0]["uri"])).parent
    numbers = [int(a["shard"]) for a in start.artifacts]
    last: Checkpoint | None = None
    since = 0
    paced = time.monotonic()
    while live.applied < upto:
        page = min(LOG_PAGE, checkpoint_every)
        entries = log.read(record.tenant, record.collection, live.applied, page)
        if not len(entries):
            break
        # Entries come oldest first: those up to the compaction's position are a prefix.
        head = entries.first(int((entries.seqs <= upto).sum()))
        net = NetChanges.of_log(head, live.applied, space, live.dimension, normalized)
        if net.last <= live.applied:
            break
        live.apply_now(net)
        applied = len(head)
        outcome.applied += applied
        since += applied
        if since >= checkpoint_every and live.updatable and live.applied < upto:
            outcome.kept_folded += _fold_kept(live, fetch, normalized)
            last = Checkpoint(live.applied, _save(live, directory, numbers, index_id))
            outcome.checkpoints += 1
            since = 0
        if on_progress is not None:
            on_progress(last, live.applied)
        if max_entries_per_second:
            paced += applied / max_entries_per_second
            time.sleep(max(0.0, paced - time.monotonic()))
    # Every entry of the collection up to ``upto`` is in (the log numbers all collections'
    # entries together: this one's may stop short of it).
    position = upto
    if live.updatable:
        outcome.kept_folded += _fold_kept(live, fetch, normalized)
        artifacts = _save(live, directory, numbers, index_id)
    else:
        artifacts, folded = _rebuild(live, fetch, normalized, directory, numbers, index_id)
        outcome.kept_folded += folded
    log.record_compaction(index_id, position, artifacts)
    outcome.position = position
    outcome.artifacts = artifacts
    outcome.seconds = time.monotonic() - began
    return outcome


def _open(
    artifacts: list[dict[str, Any]],
    position: int,
    space: str,
    normalized: bool,
    fetch: Fetch | None,
) -> LiveIndex:
    shards = [LoadedIndex(Path(str(a["uri"])), expected_sha256=str(a["sha256"])) for a in artifacts]
    first = shards[0]
    return LiveIndex(
        "compaction",
        shards,
        position,
        space=space,
        normalized=normalized,
        metric=first.metric,
        dimension=first.dimension,
        fetch=fetch,
    )


def _key(index_id: str, shard: int, position: int, sha: str) -> str:
    return hashlib.sha256(f"compaction|{index_id}|{shard}|{position}|{sha}".encode()).hexdigest()


def _save(
    live: LiveIndex, directory: Path, numbers: list[int], index_id: str
) -> list[dict[str, Any]]:
    out = []
    for number, shard in zip(numbers, live.shards, strict=True):
        stem = f"shard-{number:04d}"
        art = shard.save(directory, stem, _key(index_id, number, live.applied, shard.kind))
        out.append(_ref(number, art.manifest, art.sha256, art.count, art.kind))
    return out


def _ref(number: int, manifest: Path, sha: str, count: int, kind: str) -> dict[str, Any]:
    return {"shard": number, "uri": str(manifest), "sha256": sha, "count": count, "kind": kind}


def _vectors_of(
    ids: Ids, fetch: Fetch | None, normalized: bool, dimension: int
) -> tuple[Ids, Vectors]:
    """The version's own vectors of records the overlay keeps for the store."""
    if not len(ids):
        return ids, np.empty((0, dimension), np.float32)
    if fetch is None:
        raise ArtifactError("records to fold in need the version's store, and none was given")
    found_ids, found = fetch(ids)
    if normalized and len(found):
        found = normalize_rows(found)
    return found_ids, found


def _fold_kept(live: LiveIndex, fetch: Fetch | None, normalized: bool) -> int:
    """Records an updatable index's overlay keeps (their vectors are in the store) added to
    the index."""
    kept = live.overlay.fetch
    if not len(kept):
        return 0
    ids, vectors = _vectors_of(kept, fetch, normalized, live.dimension)
    live.apply_kept(ids, vectors)
    return len(kept)


def _rebuild(
    live: LiveIndex,
    fetch: Fetch | None,
    normalized: bool,
    directory: Path,
    numbers: list[int],
    index_id: str,
) -> tuple[list[dict[str, Any]], int]:
    """Each shard of an index that cannot remove, built again from its records with the
    overlay applied (the records it replaced or deleted dropped, the written ones added)."""
    overlay = live.overlay
    fetched_ids, fetched = _vectors_of(overlay.fetch, fetch, normalized, live.dimension)
    new_ids = np.concatenate([overlay.ids, fetched_ids])
    new_vectors = np.concatenate([overlay.vectors, fetched])
    homes = live.home(new_ids)
    out = []
    for n, (number, shard) in enumerate(zip(numbers, live.shards, strict=True)):
        mine = homes == n
        room = int(mine.sum())
        ids, vectors = shard.records(room)
        ids, vectors = with_overlay(
            ids, vectors, len(ids) - room, overlay.hidden, new_ids[mine], new_vectors[mine]
        )
        if shard.metric == Metric.COSINE:
            # The index's rows are unit already; the written ones may not be.
            normalize_rows(vectors, out=vectors)
        index = build_index(shard.spec, shard.metric, ids, vectors, threads=1, prepared=True)
        count = len(ids)
        del ids, vectors
        stem = f"shard-{number:04d}"
        key = _key(index_id, number, live.applied, shard.kind)
        art = write_artifact(
            index, shard.spec, shard.metric, shard.dimension, directory, stem, key, count
        )
        out.append(_ref(number, art.manifest, art.sha256, art.count, art.kind))
    return out, len(overlay)


# Rows moved at a time when a shard's kept records close up: a boolean index copies its rows.
_MOVE_ROWS = 8_192


def with_overlay(
    ids: Ids, vectors: Vectors, count: int, hidden: Ids, add_ids: Ids, add_vectors: Vectors
) -> tuple[Ids, Vectors]:
    """A shard's ``count`` records (the first rows of ``ids`` and ``vectors``: arrays of its
    own, reused, with room after them for the added records) with the overlay applied: the
    records ``hidden`` names dropped and ``add_ids`` appended.

    The kept rows close up in place, a block at a time, and the added ones go into the room
    after them (the arrays grow, in place where numpy can, if it is short): the shard's vectors
    are held once, not again in a filtered copy and a third time in a concatenation.
    """
    keep = ~np.isin(ids[:count], hidden)
    n = 0
    for lo in range(0, count, _MOVE_ROWS):
        sel = keep[lo : lo + _MOVE_ROWS]
        m = int(sel.sum())
        if n != lo or m != len(sel):  # rows before this block were dropped, or some in it
            hi = lo + len(sel)
            ids[n : n + m] = ids[lo:hi][sel]
            vectors[n : n + m] = vectors[lo:hi][sel]
        n += m
    total = n + len(add_ids)
    if total > len(ids):
        ids, vectors = grown_rows(ids, total), grown_rows(vectors, total)
    ids[n:total] = add_ids
    vectors[n:total] = add_vectors
    return ids[:total], vectors[:total]
