"""FAISS and hnswlib index builders, content-addressed artifacts, and exact search.

An artifact is two files in the version's directory:

* ``shard-0003-<sha256[:16]>.<ext>``: the index bytes, named by their content;
* ``shard-0003-<buildkey[:16]>.json``: the manifest, named by what went into the build (index
  parameters, metric, dimension, data checksum), holding the data file's name and SHA-256.

Both are written to a temporary name, flushed and renamed, so a reader never sees a half-written
file. A build whose manifest exists and whose data file matches the recorded SHA-256 is reused,
which makes the build step idempotent; anything else is rebuilt.

With a key ring configured (``$VECMIGRATE_KEYRING``) the data file is encrypted (envelope
encryption, ``vecmigrate.security.envelope``): its data key, wrapped by the ring, sits in the
manifest, so a key rotation re-wraps manifests and leaves the data files as they are. The SHA-256
is then the ciphertext's, and reading checks it and the encryption's own authentication.

Distances are "smaller is closer" whatever the metric: squared L2 for ``l2``, ``1 - similarity``
for ``ip`` and ``cosine``, the convention hnswlib uses.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import faiss
import hnswlib
import numpy as np
import numpy.typing as npt
from pydantic import TypeAdapter

from vecmigrate.errors import ArtifactError, KeyRingError, PreconditionError, TamperError
from vecmigrate.indexes.hnswfile import read_index, slot_labels
from vecmigrate.model.spec import (
    FaissFlat,
    FaissHnsw,
    FaissIvfFlat,
    FaissIvfPq,
    HnswlibHnsw,
    IndexSpec,
    Metric,
    canonical,
)
from vecmigrate.records.checksums import file_sha256
from vecmigrate.records.vectors import (
    Distances,
    Ids,
    Vectors,
    empty_results,
    faiss_metric,
    merge_topk,
    prepare_for_metric,
    to_distance,
)
from vecmigrate.security.envelope import (
    WrappedKey,
    decrypt_stream,
    encrypt_stream,
    plaintext_scratch,
    rewrap,
)
from vecmigrate.security.keyring import KeyRing, environment_keyring

T = TypeVar("T")

# Index kinds whose artifacts take writes in place (``LoadedIndex.remove``/``add``).
UPDATABLE_KINDS = frozenset({"faiss_flat", "faiss_ivf_flat", "faiss_ivf_pq", "hnswlib_hnsw"})

_EXT = {
    "faiss_flat": "faiss",
    "faiss_ivf_flat": "faiss",
    "faiss_ivf_pq": "faiss",
    "faiss_hnsw": "faiss",
    "hnswlib_hnsw": "hnsw",
}

# dtype objects for the search path. Given a numpy type (``np.int64``) instead, numpy looks the
# dtype up on every call: after a search, ``labels.view`` took ~1.4 us with the type against
# ~0.4 us with the object, and ``np.ascontiguousarray(q, dtype=...)`` ~1.0 against ~0.7 (a
# search of 200,000 x 64 is ~36 us). hnswlib's uint64 labels are read as int64 through ``I64``.
F32 = np.dtype(np.float32)
I64 = np.dtype(np.int64)


def cpu_share(parallel: int) -> int:
    """Threads for one of ``parallel`` CPU-heavy tasks running at once in this process: the
    cores it may use, split evenly, at least one.

    Why split rather than give each task every core: measured with ``bench/tuning.py`` (2-core
    VM, two shards of 100,000 x 128 built at once in one process), FAISS IVF-Flat took 3.6 s
    with one thread per build, 7.8 s with two each (OpenMP threads spinning against each
    other) and 4.5 s one build after the other; hnswlib took 16.7-17.6 s whichever way.
    """
    return max(1, usable_cores() // max(1, parallel))


def usable_cores() -> int:
    """The cores this process may run on: its affinity mask where the system has one (a
    container's cpuset, ``taskset``), else every core."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def set_openmp_threads(threads: int) -> None:
    """FAISS's OpenMP thread count for the calling thread's parallel regions (libgomp keeps
    it per thread: an activity slot's setting does not reach the others), so every activity
    that runs FAISS sets its share (:func:`cpu_share`) before it starts."""
    faiss.omp_set_num_threads(max(1, threads))


def carried(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn``, to be run on another thread as it would run on this one: in this thread's
    context (the trace its spans belong to) and with this thread's FAISS thread count (libgomp
    keeps the count per thread, and a new thread starts from the process's default, every
    core). Taken when called, here."""
    threads = faiss.omp_get_max_threads()
    context = contextvars.copy_context()

    def run(*args: Any) -> T:
        faiss.omp_set_num_threads(threads)
        return context.run(fn, *args)

    return run


def build_key(spec: IndexSpec, metric: Metric, dimension: int, data_checksum: str) -> str:
    """SHA-256 of everything that determines an index build."""
    payload = json.dumps(
        {
            # Canonical: a parameter added later, at its default, keeps the key of a build
            # made before it (its artifact is reused).
            "index": json.loads(canonical(spec)),
            "metric": str(metric),
            "dimension": dimension,
            "data": data_checksum,
            "format": 1,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def build_index(
    spec: IndexSpec,
    metric: Metric,
    ids: Ids,
    vectors: Vectors,
    *,
    threads: int = 0,
    seed: int = 1234,
    on_progress: Callable[[int, int], None] | None = None,
    chunk: int = 20_000,
    prepared: bool = False,
) -> Any:
    """Build an in-memory FAISS or hnswlib index over ``vectors`` labelled by ``ids``.

    ``prepared``: the vectors are already contiguous float32 rows, unit-normed for cosine
    (no prepared copy is made).

    Raises:
        PreconditionError: too few vectors to train the requested IVF.
    """
    x = vectors if prepared else prepare_for_metric(vectors, metric)
    n, dim = x.shape
    if threads > 0:
        set_openmp_threads(threads)
    if isinstance(spec, HnswlibHnsw):
        space = {"l2": "l2", "ip": "ip", "cosine": "cosine"}[str(metric)]
        index = hnswlib.Index(space=space, dim=dim)
        index.init_index(
            max_elements=max(n, 1), ef_construction=spec.ef_construction, M=spec.m, random_seed=seed
        )
        labels = ids.astype(np.uint64)
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            index.add_items(x[start:stop], labels[start:stop], num_threads=threads or -1)
            if on_progress is not None:
                on_progress(stop, n)
        index.set_ef(spec.ef_search)
        return index
    fm = faiss_metric(metric)
    base: Any
    rng = np.random.default_rng(seed)
    if isinstance(spec, FaissFlat):
        if spec.encoding == "float32":
            base = faiss.IndexFlat(dim, fm)
        else:
            base = faiss.IndexScalarQuantizer(dim, _SQ[spec.encoding], fm)
            if n:
                base.train(_training_sample(x, TRAIN_SIZE, rng))
    elif isinstance(spec, FaissHnsw):
        if spec.encoding == "float32":
            base = faiss.IndexHNSWFlat(dim, spec.m, fm)
        else:
            base = faiss.IndexHNSWSQ(dim, _SQ[spec.encoding], spec.m, fm)
            if n:
                base.train(_training_sample(x, TRAIN_SIZE, rng))
        base.hnsw.efConstruction = spec.ef_construction
        base.hnsw.efSearch = spec.ef_search
    elif isinstance(spec, FaissIvfFlat | FaissIvfPq):
        if n < spec.nlist:
            raise PreconditionError(
                f"an IVF index with nlist={spec.nlist} needs at least {spec.nlist} vectors to "
                f"train, but this shard holds {n}: lower index.nlist or use fewer shards"
            )
        quantizer = faiss.IndexFlat(dim, fm)
        if isinstance(spec, FaissIvfFlat) and spec.encoding != "float32":
            base = faiss.IndexIVFScalarQuantizer(quantizer, dim, spec.nlist, _SQ[spec.encoding], fm)
        elif isinstance(spec, FaissIvfFlat):
            base = faiss.IndexIVFFlat(quantizer, dim, spec.nlist, fm)
        else:
            if n < (1 << spec.nbits):
                raise PreconditionError(
                    f"IVF-PQ with nbits={spec.nbits} needs at least {1 << spec.nbits} vectors "
                    f"to train, but this shard holds {n}: lower index.nbits or use fewer shards"
                )
            base = faiss.IndexIVFPQ(quantizer, dim, spec.nlist, spec.m, spec.nbits, fm)
        base.train(_training_sample(x, spec.train_size, rng))
        base.nprobe = spec.nprobe
    else:  # pragma: no cover - the spec union is closed
        raise TypeError(f"unknown index spec {spec!r}")
    # The Python wrapper keeps ``base`` (and the quantizer) alive as long as ``index``.
    index = faiss.IndexIDMap2(base)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        index.add_with_ids(x[start:stop], ids[start:stop])
        if on_progress is not None:
            on_progress(stop, n)
    return index


# FAISS's scalar quantizers by encoding: float16 components, or 8 bits per component over the
# range each dimension spans in the training sample.
_SQ: dict[str, Any] = {
    "float16": faiss.ScalarQuantizer.QT_fp16,
    "int8": faiss.ScalarQuantizer.QT_8bit,
}
# Vectors a scalar quantizer learns its per-dimension ranges from.
TRAIN_SIZE = 100_000


def _training_sample(x: Vectors, size: int, rng: np.random.Generator) -> Vectors:
    n = x.shape[0]
    return x if n <= size else x[rng.choice(n, size, replace=False)]


def _write_atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        write(tmp)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class Artifact:
    """A written (or reused) artifact: its manifest path, data file, checksum and size, and the
    key ring key wrapping its data key (None: plaintext)."""

    manifest: Path
    data_file: Path
    sha256: str
    count: int
    kind: str
    reused: bool
    protected_by: str | None = None


def find_artifact(directory: Path, stem: str, key: str, encrypted: bool = False) -> Artifact | None:
    """The artifact built from ``key`` if its manifest exists and its data file checks out
    (and, when ``encrypted``, if it is encrypted: a plaintext one is then rebuilt)."""
    manifest = directory / f"{stem}-{key[:16]}.json"
    if not manifest.exists():
        return None
    meta = json.loads(manifest.read_text())
    data_file = directory / meta["file"]
    if meta.get("build_key") != key or not data_file.exists():
        return None
    if encrypted and "encryption" not in meta:
        return None
    if file_sha256(data_file) != meta["sha256"]:
        return None
    kek = meta["encryption"]["kek"] if "encryption" in meta else None
    return Artifact(
        manifest, data_file, meta["sha256"], int(meta["count"]), meta["kind"], True, kek
    )


def _save_index(index: Any, spec: IndexSpec, path: Path) -> None:
    if isinstance(spec, HnswlibHnsw):
        index.save_index(str(path))
    else:
        faiss.write_index(index, str(path))


def write_artifact(
    index: Any,
    spec: IndexSpec,
    metric: Metric,
    dimension: int,
    directory: Path,
    stem: str,
    key: str,
    count: int,
    ring: KeyRing | None = None,
) -> Artifact:
    """Write ``index`` under a content-derived name, then its manifest; both atomically.

    With a key ring (``ring``, else the one ``$VECMIGRATE_KEYRING`` names) the data file is
    encrypted under a fresh data key, wrapped by the ring's active key in the manifest.
    """
    ring = ring or environment_keyring()
    directory.mkdir(parents=True, exist_ok=True)
    ext = _EXT[spec.kind]
    staging = directory / f".{stem}-{uuid.uuid4().hex}.{ext}.building"
    wrapped: WrappedKey | None = None
    try:
        if ring is None:
            _save_index(index, spec, staging)
        else:
            with plaintext_scratch(f"{stem}.{ext}") as plain:
                _save_index(index, spec, plain)
                with plain.open("rb") as src, staging.open("wb") as dst:
                    wrapped = encrypt_stream(src, dst, ring)
        with staging.open("rb") as f:
            os.fsync(f.fileno())
        sha = file_sha256(staging)
        data_file = directory / f"{stem}-{sha[:16]}.{ext}"
        os.replace(staging, data_file)
    finally:
        staging.unlink(missing_ok=True)
    meta = {
        "file": data_file.name,
        "sha256": sha,
        "count": count,
        "kind": spec.kind,
        "index": spec.model_dump(mode="json"),
        "metric": str(metric),
        "dimension": dimension,
        "build_key": key,
        "written_at": time.time(),
    }
    if wrapped is not None:
        meta["encryption"] = wrapped.to_json()
    manifest = directory / f"{stem}-{key[:16]}.json"
    _write_atomic(manifest, lambda p: p.write_text(json.dumps(meta, indent=2)))
    kek = wrapped.kek if wrapped is not None else None
    return Artifact(manifest, data_file, sha, count, spec.kind, False, kek)


def manifest_protection(manifest: Path) -> str | None:
    """The key ring key that wraps an artifact's data key, or None when it is plaintext."""
    meta = json.loads(manifest.read_text())
    encryption = meta.get("encryption")
    return None if encryption is None else str(encryption["kek"])


def rewrap_manifest(manifest: Path, ring: KeyRing) -> tuple[str, str] | None:
    """Re-wrap an encrypted artifact's data key under the ring's active key, rewriting only the
    manifest (atomically); the data file is not touched. Returns (old key, new key), or None
    when there was nothing to do (plaintext, or already under the active key)."""
    meta = json.loads(manifest.read_text())
    encryption = meta.get("encryption")
    if encryption is None or encryption["kek"] == ring.active:
        return None
    old = WrappedKey.from_json(encryption)
    meta["encryption"] = rewrap(ring, old).to_json()
    _write_atomic(manifest, lambda p: p.write_text(json.dumps(meta, indent=2)))
    return old.kek, ring.active


class _HnswLabels:
    """Which labels an hnswlib graph holds and which of them are deleted, kept beside it so a
    write asks hnswlib only what it will answer without raising.

    hnswlib says "not held" and "not deleted" by raising, about 4 us an id with the GIL held
    (pybind11's exception translation; 37,500 x 64, one core). A write tried every id on every
    shard that way, and every other thread of the process waited: applying 20,000 writes to 4
    shards, a thread waking every 0.5 ms woke 1.6 ms later at p99 than beside hnswlib's own
    calls, 0.06 ms with this note (``bench/applier_stalls.py``).

    ``held`` is every label the graph was given (a sorted array and a short sorted tail, merged
    when the tail grows): a label not in it is certainly not held. ``deleted`` holds the
    labels this process deleted. A deleted slot reused by a new record (``replace_deleted``)
    leaves its old label in both: such a label is asked of hnswlib, which says it is gone.
    ``unsure``: the graph had deleted slots when it was loaded, which hnswlib does not list,
    so every held label's state is asked of hnswlib (as before). A note made from the file's
    slots (``of_slots``) knows them.
    """

    def __init__(self, held: Ids, deleted: set[int], unsure: bool) -> None:
        self._main = held
        self._tail = np.empty(0, np.int64)
        self.deleted = deleted
        self.unsure = unsure

    @classmethod
    def of_index(cls, index: Any, live: int) -> _HnswLabels:
        """The note of a graph, from hnswlib's list of its labels (``live``: the records it
        should hold; more slots than that means some are deleted, which the list does not
        say)."""
        # Labels are int64 ids stored as uint64 (negative ones above 2**63): read them back.
        held = np.sort(np.asarray(index.get_ids_list(), dtype=np.uint64).view(np.int64))
        return cls(held, set(), int(index.get_current_count()) != live)

    @classmethod
    def of_slots(cls, labels: Ids, deleted: npt.NDArray[np.bool_]) -> _HnswLabels:
        """The note of a graph loaded from a file, from each slot's label and deleted mark
        (``hnswfile.slot_labels``): it knows which labels are deleted. A label in two slots
        is the later slot's, as hnswlib's load makes it."""
        last = len(labels) - 1 - np.unique(labels[::-1], return_index=True)[1]
        held = labels[last]  # sorted, as np.unique sorts
        return cls(held, set(held[deleted[last]].tolist()), unsure=False)

    def held(self, ids: Ids) -> npt.NDArray[np.bool_]:
        """Which of ``ids`` the graph may hold (False: certainly not)."""
        return _sorted_member(self._main, ids) | _sorted_member(self._tail, ids)

    def added(self, ids: Ids) -> None:
        """Labels given new slots (one that was deleted and lost its slot is live again)."""
        ids = np.sort(np.asarray(ids, np.int64))
        if self.deleted:
            self.deleted.difference_update(ids.tolist())
        # Two sorted runs each time: the stable sort (timsort) merges them in linear time.
        tail = np.sort(np.concatenate([self._tail, ids]), kind="stable")
        if len(tail) > 4096 + len(self._main) // 16:
            self._main, tail = np.sort(np.concatenate([self._main, tail]), kind="stable"), tail[:0]
        self._tail = tail


def _mapped(path: Path) -> memoryview:
    """A file's bytes, mapped into memory (read as they are used; no copy)."""
    return np.memmap(path, dtype=np.uint8, mode="r").data


def _grown(slots: int) -> int:
    """The room an hnswlib graph of ``slots`` grows to when it needs more: a quarter more."""
    return slots * 5 // 4 + 1024


def _sorted_member(sorted_ids: Ids, ids: Ids) -> npt.NDArray[np.bool_]:
    """Which of ``ids`` are in ``sorted_ids`` (sorted ascending)."""
    if not len(sorted_ids):
        return np.zeros(len(ids), np.bool_)
    at = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return np.asarray(sorted_ids[at] == ids)


class LoadedIndex:
    """One shard's index loaded from its manifest, checksum verified (and, when encrypted,
    decrypted with the key ring, which authenticates every byte)."""

    def __init__(
        self,
        manifest: Path,
        expected_sha256: str | None = None,
        ring: KeyRing | None = None,
        *,
        low_stall: bool = False,
        for_writes: bool = False,
    ) -> None:
        """``low_stall``: load an hnswlib index holding the GIL only in short slices
        (``vecmigrate.indexes.hnswfile``), at the cost of a second copy of its bytes while
        it loads; for a process whose other threads serve requests meanwhile.
        ``for_writes``: an hnswlib index gets room for a quarter more records at once (the
        room ``add`` grows it by), so its first new records do not copy the whole graph."""
        self._for_writes = for_writes
        try:
            meta = json.loads(manifest.read_text())
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"cannot read index manifest {manifest}: {exc}") from None
        data_file = manifest.parent / meta["file"]
        if not data_file.exists():
            raise ArtifactError(f"index file {data_file} named by {manifest} is missing")
        low_stall = low_stall and meta["kind"] == "hnswlib_hnsw"  # FAISS reads without the GIL
        if "encryption" in meta:
            self._load_encrypted(
                meta, data_file, expected_sha256, ring or environment_keyring(), low_stall
            )
            return
        if low_stall:
            data = data_file.read_bytes()  # read, and hashed below, with the GIL released
            self._verify(hashlib.sha256(data).hexdigest(), meta, data_file, expected_sha256)
            self._load(meta, data_file, data)
            return
        # The checksum is computed while the index loads and checked before it is used: FAISS
        # reads its file without holding the GIL, so the two overlap (loading a 1M-vector
        # suite's two IVF indexes took 2.95 s one after the other, 1.47 s of it the checksum).
        with ThreadPoolExecutor(1, thread_name_prefix="verify") as pool:
            digest = pool.submit(file_sha256, data_file)
            try:
                self._load(meta, data_file)
            except Exception:
                self._verify(digest.result(), meta, data_file, expected_sha256)
                raise
            self._verify(digest.result(), meta, data_file, expected_sha256)

    def _load_encrypted(
        self,
        meta: dict[str, Any],
        data_file: Path,
        expected_sha256: str | None,
        ring: KeyRing | None,
        low_stall: bool,
    ) -> None:
        if ring is None:
            raise KeyRingError(
                f"index file {data_file} is encrypted, and no key ring is configured: set "
                "VECMIGRATE_KEYRING to the ring that wrote it"
            )
        self._verify(file_sha256(data_file), meta, data_file, expected_sha256)
        wrapped = WrappedKey.from_json(meta["encryption"])
        with plaintext_scratch(data_file.name) as plain:
            try:
                with data_file.open("rb") as src, plain.open("wb") as dst:
                    decrypt_stream(src, dst, ring, wrapped)
            except TamperError as exc:
                raise TamperError(f"index file {data_file}: {exc}") from None
            self._load(meta, plain, plain.read_bytes() if low_stall else None)

    @staticmethod
    def _verify(sha: str, meta: dict[str, Any], data_file: Path, expected: str | None) -> None:
        if sha != meta["sha256"] or (expected and sha != expected):
            raise ArtifactError(
                f"index file {data_file} does not match its checksum; rebuild the index"
            )

    def _load(self, meta: dict[str, Any], data_file: Path, data: bytes | None = None) -> None:
        """Load the index from ``data_file`` (an hnswlib one from ``data``, its bytes, when
        they were read already: ``low_stall``)."""
        self.kind: str = meta["kind"]
        self.metric = Metric(meta["metric"])
        self.dimension = int(meta["dimension"])
        self.count = int(meta["count"])
        params = meta["index"]
        self.params: dict[str, Any] = dict(params)
        if self.kind == "hnswlib_hnsw":
            # A slot a delete frees is reused by the next new record (``add``), so an index that
            # takes writes for a long time does not grow with its deletes.
            # Room beyond the records is allocated but not touched until used.
            slots = _grown(self.count) if self._for_writes else max(self.count, 1)
            if data is not None:
                idx = read_index(
                    data,
                    space=str(self.metric),
                    dim=self.dimension,
                    max_elements=slots,
                    where=data_file,
                )
            else:
                idx = hnswlib.Index(space=str(self.metric), dim=self.dimension)
                idx.load_index(str(data_file), max_elements=slots, allow_replace_deleted=True)
            idx.set_ef(int(params["ef_search"]))
            self._hnsw: Any = idx
            # The note of the graph's labels: made now, from the file's slots, for an index
            # that takes writes (it then knows the deleted ones); else by a first write.
            self._noted: _HnswLabels | None = None
            if self._for_writes:
                view = memoryview(data) if data is not None else _mapped(data_file)
                self._noted = _HnswLabels.of_slots(
                    *slot_labels(view, dim=self.dimension, where=data_file)
                )
            self._ef = int(params["ef_search"])
            # Up to this k a search needs no change of ef and no padding: knn_query answers
            # as it is (the common case, kept to the fewest steps). Called with k by position:
            # pybind11 matching a keyword took ~0.9 us of a ~31 us search (200,000 x 64, paired
            # timings), as much as everything else on the router's hot path.
            self._plain_k = min(self._ef, self.count)
            self._knn = idx.knn_query
            self._faiss: Any = None
            self.negative_ids = False
        else:
            self._hnsw = None
            self._faiss = faiss.read_index(str(data_file))
            # FAISS takes a negative label for the end of an answer where it merges answers
            # (``ShardedIndex``); ids hashed from strings are negative half the time.
            self.negative_ids = not isinstance(self._faiss, faiss.IndexIDMap2) or bool(
                self.count and faiss.vector_to_array(self._faiss.id_map).min() < 0
            )
            inner = _unmapped(self._faiss)
            if "nprobe" in params:
                inner.nprobe = int(params["nprobe"])
            if "ef_search" in params:
                inner.hnsw.efSearch = int(params["ef_search"])

    def set_search_params(self, params: dict[str, int]) -> None:
        """Search with other values of the index's search parameters (``ef_search``,
        ``nprobe``) from now on; not while a search runs in the index (the caller holds
        :attr:`LiveIndex.params_lock <vecmigrate.indexes.live.LiveIndex.params_lock>`)."""
        if self._hnsw is not None:
            if "ef_search" in params:
                self._ef = int(params["ef_search"])
                self._hnsw.set_ef(self._ef)
                self._plain_k = min(self._ef, self.count)
        else:
            inner = _unmapped(self._faiss)
            if "nprobe" in params:
                inner.nprobe = int(params["nprobe"])
            if "ef_search" in params:
                inner.hnsw.efSearch = int(params["ef_search"])
        self.params.update({k: int(v) for k, v in params.items() if k in self.params})

    @property
    def native(self) -> Any:
        """The library's own index object (an ``hnswlib.Index`` or a FAISS index)."""
        return self._hnsw if self._hnsw is not None else self._faiss

    @property
    def spec(self) -> IndexSpec:
        """The index parameters the artifact was built with."""
        spec: IndexSpec = TypeAdapter(IndexSpec).validate_python(self.params)
        return spec

    # -- writes ---------------------------------------------------------------------------------
    #
    # Not safe while a search runs in the same index (hnswlib and FAISS both say so): the caller
    # keeps searches out (``vecmigrate.indexes.live``).

    @property
    def _labels(self) -> _HnswLabels:
        """The note of the graph's labels, made when it first takes a write (a read-only
        user, a gate, never pays for it)."""
        if self._noted is None:
            self._noted = _HnswLabels.of_index(self._hnsw, self.count)
        return self._noted

    @property
    def updatable(self) -> bool:
        """Whether records can be removed and replaced in place (everything but FAISS HNSW,
        whose graph cannot drop a vector)."""
        return self.kind in UPDATABLE_KINDS

    def remove(self, ids: Ids) -> int:
        """Take records out of the index; ids it does not hold are skipped. Returns how many
        it held."""
        if not len(ids):
            return 0
        if self._hnsw is not None:
            labels = self._labels
            ids = np.asarray(ids, np.int64)
            removed = 0
            mine = ids[labels.held(ids)]
            # hnswlib takes a label as an unsigned 64-bit integer: a negative id (string and
            # UUID ids hash to any 64-bit value) is passed as the same bits.
            for record_id, label in zip(mine.tolist(), mine.view(np.uint64).tolist(), strict=True):
                if record_id in labels.deleted and not labels.unsure:
                    continue  # deleted already (or its slot reused: gone)
                try:
                    self._hnsw.mark_deleted(label)
                except RuntimeError:  # deleted already, or its slot reused
                    continue
                labels.deleted.add(record_id)
                removed += 1
            self._counted(-removed)
            return removed
        if not self.updatable:
            raise PreconditionError(f"a {self.kind} index cannot remove records; rebuild it")
        # Before its first write an IVF is made to hold its ids itself (a read-only user of
        # the artifact, a gate, never pays for it).
        self._faiss = _own_ids(self._faiss)
        removed = int(self._faiss.remove_ids(np.ascontiguousarray(ids, dtype=I64)))
        self.count = int(self._faiss.ntotal)
        return removed

    def holds(self, ids: Ids) -> npt.NDArray[np.bool_]:
        """Which of ``ids`` an hnswlib graph may hold, deleted or not (False: certainly not;
        a FAISS index: none, it removes and adds instead of updating)."""
        if self._hnsw is None:
            return np.zeros(len(ids), np.bool_)
        return self._labels.held(np.asarray(ids, np.int64))

    def replace(self, ids: Ids, vectors: Vectors, threads: int = 1) -> npt.NDArray[np.bool_]:
        """Write new vectors for the records the index holds (deleted ones come back); returns
        which of ``ids`` it held. The others are left for ``add`` (in whichever shard is theirs).

        hnswlib only: a FAISS index removes and adds instead.
        """
        held = np.zeros(len(ids), np.bool_)
        if self._hnsw is None or not len(ids):
            return held
        labels = self._labels
        ids = np.asarray(ids, np.int64)
        maybe = np.flatnonzero(labels.held(ids))
        revived = 0
        mine = ids[maybe]
        for n, record_id, label in zip(
            maybe.tolist(), mine.tolist(), mine.view(np.uint64).tolist(), strict=True
        ):
            # With slots reused, a label must keep its one slot: a record the index holds,
            # deleted or not, is updated where it is, never added again (hnswlib would give it
            # a second slot, and reusing the first one later would lose the label's mapping).
            if record_id not in labels.deleted and not labels.unsure:
                held[n] = True  # held and not deleted: updated in place
                continue
            try:
                self._hnsw.unmark_deleted(label)
            except RuntimeError as exc:
                if "not deleted" not in str(exc):
                    continue  # not held (its slot was reused)
            else:
                revived += 1
            labels.deleted.discard(record_id)
            held[n] = True
        if held.any():
            self._hnsw.add_items(
                np.ascontiguousarray(vectors[held], dtype=F32),
                np.asarray(ids, np.int64)[held].astype(np.uint64),
                num_threads=threads,
            )
        self._counted(revived)
        return held

    def add(self, ids: Ids, vectors: Vectors, threads: int = 1) -> None:
        """Add records the index does not hold (hnswlib with ``threads`` threads, -1: all
        cores)."""
        if not len(ids):
            return
        if self._hnsw is not None:
            index = self._hnsw
            labels = self._labels  # noted before the graph changes
            # New records take the slots of deleted ones first.
            vacant = index.get_current_count() - self.count
            need = index.get_current_count() + max(0, len(ids) - vacant)
            if need > index.get_max_elements():
                # Grown by a quarter at a time: a resize copies the whole graph.
                index.resize_index(max(need, _grown(index.get_max_elements())))
            index.add_items(
                np.ascontiguousarray(vectors, dtype=F32),
                np.asarray(ids, np.int64).astype(np.uint64),
                num_threads=threads,
                replace_deleted=True,
            )
            labels.added(ids)
            self._counted(len(ids))
            return
        x = prepare_for_metric(vectors, self.metric)
        self._faiss = _own_ids(self._faiss)
        self._faiss.add_with_ids(x, np.ascontiguousarray(ids, dtype=I64))
        self.count = int(self._faiss.ntotal)
        self.negative_ids = self.negative_ids or int(np.min(ids)) < 0

    def _counted(self, change: int) -> None:
        self.count += change
        if self._hnsw is not None:
            self._plain_k = min(self._ef, self.count)

    def records(self, room: int = 0) -> tuple[Ids, Vectors]:
        """Every record the index holds, as stored (unit rows for cosine): what a rebuild of an
        index that cannot remove starts from. FAISS only.

        The arrays have ``room`` more rows, unset, after the records: a rebuild appends the
        records written since into them instead of into a concatenated copy.
        """
        inner: Any = faiss.downcast_index(self._faiss.index)
        n = int(inner.ntotal)
        ids = np.empty(n + room, np.int64)
        ids[:n] = faiss.vector_to_array(self._faiss.id_map)
        vectors = np.empty((n + room, self.dimension), np.float32)
        inner.reconstruct_n(0, n, vectors[:n])
        return ids, vectors

    def save(self, directory: Path, stem: str, key: str) -> Artifact:
        """Write the index as it is now under a content-derived name, atomically."""
        return write_artifact(
            self.native, self.spec, self.metric, self.dimension, directory, stem, key, self.count
        )

    def search(self, queries: Vectors, k: int, allowed: Ids | None = None) -> tuple[Distances, Ids]:
        """k nearest neighbours: distances (smaller is closer) and ids, -1 padded; with
        ``allowed`` (sorted ids), among those ids only (the index skips every other one while
        it searches, so a filter does not cost recall the way dropping results afterwards
        would)."""
        if allowed is not None:
            return self._search_among(queries, k, allowed)
        if self._hnsw is not None:
            # The serving hot path: every step here is paid by every query (the router's
            # overhead figure counts it against hnswlib's own knn_query), so no copies of
            # arrays already of the right type and no calls into the index that change nothing.
            q = np.ascontiguousarray(queries, dtype=F32)
            if 0 < k <= self._plain_k:
                try:
                    labels, dist = self._knn(q, k)
                except RuntimeError:  # fewer than k found for some query
                    return _hnsw_row_by_row(self._hnsw, q, k)
                # uint64 labels are ids below 2**63: the same bytes read as int64.
                return dist, labels.view(I64)
            if self.count == 0:
                return empty_results(q.shape[0], k)
            # hnswlib searches with max(ef, k): a larger k needs no change of ef (a raised ef
            # stayed, and slowed every later search of the index).
            kk = min(k, self.count)
            d, i = _hnsw_rows(self._hnsw, q, kk)
            if kk < k:
                pad_d, pad_i = empty_results(q.shape[0], k - kk)
                d, i = np.concatenate([d, pad_d], 1), np.concatenate([i, pad_i], 1)
            return d, i
        q = prepare_for_metric(queries, self.metric)
        n = q.shape[0]
        if self.count == 0:
            return empty_results(n, k)
        d, i = self._faiss.search(q, k)
        return self._faiss_results(d, i)

    def _faiss_results(self, d: Distances, i: Ids) -> tuple[Distances, Ids]:
        """FAISS's answer as distances (smaller is closer) with an infinite one for each -1
        FAISS pads a short answer with (it gives the largest float there). An answer is in
        order, its padding last: a row padded anywhere is padded in the last column, which is
        all that is read of an answer without any (on the search path, where each numpy call
        costs about a microsecond; ids hashed from strings are negative, so -1 itself is
        looked for). FAISS's arrays are float32 and int64 already."""
        d = to_distance(d, self.metric)
        if i.size and -1 in i[:, -1]:
            d = np.where(i == -1, np.float32(np.inf), d)
        return d, i

    def _search_among(self, queries: Vectors, k: int, allowed: Ids) -> tuple[Distances, Ids]:
        if self._hnsw is not None:
            q = np.ascontiguousarray(queries, dtype=F32)
            if self.count == 0 or not len(allowed):
                return empty_results(q.shape[0], k)
            # hnswlib labels are uint64 (ids below 0 read as 2**64 + id): the same bytes.
            member = set(np.ascontiguousarray(allowed, I64).view(np.uint64).tolist()).__contains__
            try:
                # One thread: hnswlib calls the filter back with the GIL for every node.
                labels, dist = self._hnsw.knn_query(q, k, num_threads=1, filter=member)
                return np.asarray(dist, dtype=F32), labels.view(I64)
            except RuntimeError:  # fewer than k for some query: row by row, padded
                return _hnsw_row_by_row(self._hnsw, q, k, member)
        q = prepare_for_metric(queries, self.metric)
        if self.count == 0 or not len(allowed):
            return empty_results(q.shape[0], k)
        # The selector is asked about ids as the index labels them (an id map translates).
        selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=I64))
        inner = _unmapped(self._faiss)
        # Parameters given with a search replace the index's own: carry nprobe and efSearch.
        library: Any = faiss  # its type stubs lack the search parameters' keywords
        params: Any
        if isinstance(inner, faiss.IndexIVF):
            params = library.SearchParametersIVF(sel=selector, nprobe=inner.nprobe)
        elif isinstance(inner, faiss.IndexHNSW):
            params = library.SearchParametersHNSW(sel=selector, efSearch=inner.hnsw.efSearch)
        else:
            params = library.SearchParameters(sel=selector)
        d, i = self._faiss.search(q, k, params=params)
        return self._faiss_results(d, i)


def _unmapped(index: Any) -> Any:
    """The FAISS index under an id map (the index itself when it has none)."""
    return faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index


def _own_ids(index: Any) -> Any:
    """A FAISS index that can take writes in place: an IVF under an id map (as builds write
    them) becomes the IVF holding the ids itself; any other index is returned as it is.

    The id map numbers the IVF's entries 0..n-1 and, on a removal, renumbers its own list
    assuming the entries below keep their order, which holds for a flat index but not for an
    IVF (it moves each list's last entry into the hole): after one removal through the map the
    two disagree and the next one aborts the process. An IVF stores an id per entry anyway.
    """
    if not isinstance(index, faiss.IndexIDMap2):  # read_index gives the concrete class
        return index
    found = faiss.downcast_index(index.index)
    if not isinstance(found, faiss.IndexIVF):
        return index
    inner: Any = found
    id_map = faiss.vector_to_array(index.id_map)
    lists: Any = inner.invlists
    code_size = lists.code_size
    for list_no in range(inner.nlist):
        n = lists.list_size(list_no)
        if not n:
            continue
        labels = faiss.rev_swig_ptr(lists.get_ids(list_no), n).copy()
        codes = faiss.rev_swig_ptr(lists.get_codes(list_no), n * code_size).copy()
        real = np.ascontiguousarray(id_map[labels], dtype=I64)
        lists.update_entries(list_no, 0, n, faiss.swig_ptr(real), faiss.swig_ptr(codes))
    # The map still owns the IVF (and frees it with itself): the IVF keeps it alive, emptied.
    index.id_map.clear()
    index.construct_rev_map()
    inner.referenced_objects = [index]
    return inner


def _hnsw_rows(index: Any, q: Vectors, k: int) -> tuple[Distances, Ids]:
    """hnswlib query that tolerates a sparse graph.

    hnswlib raises when it finds fewer than k neighbours for a query (a poorly connected graph,
    small M or ef). Such rows are retried one by one with a smaller k and padded, so a poor
    index shows up as poor recall in the gates instead of an error.
    """
    try:
        labels, dist = index.knn_query(q, k)
        return np.asarray(dist, dtype=np.float32), labels.view(I64)
    except RuntimeError:
        return _hnsw_row_by_row(index, q, k)


def _hnsw_row_by_row(
    index: Any, q: Vectors, k: int, member: Callable[[int], bool] | None = None
) -> tuple[Distances, Ids]:
    """Each query on its own with the largest k hnswlib can answer for it, padded to k (among
    the labels ``member`` accepts, if given)."""
    d, i = empty_results(q.shape[0], k)
    for row in range(q.shape[0]):
        for kk in range(k, 0, -1):
            try:
                labels, dist = index.knn_query(q[row : row + 1], k=kk, filter=member)
            except RuntimeError:
                continue
            d[row, :kk] = dist[0]
            i[row, :kk] = labels[0]
            break
    return d, i


class ShardedIndex:
    """The index of a whole version: one loaded artifact per shard, results merged.

    Shards that are all FAISS indexes of one metric, with no negative id, are searched by one
    ``faiss.IndexShards`` over them, which searches each and merges the answers in C++: one
    call from Python a search instead of one a shard plus the merge in numpy (a single query
    over 4 IVF shards of 25,000 x 128 vectors: 145 us against 180; the latency gate and the
    router search one query at a time). The shards' own index objects are checked on every
    search, so a shard whose FAISS object a write replaced (``LoadedIndex.add``) is joined
    again.
    """

    def __init__(self, shards: list[LoadedIndex]) -> None:
        self.shards = shards
        # The shards' indexes as they were joined, and the join: one attribute, read and
        # replaced whole, so a search never takes a join made of other indexes than it checked.
        self._join: tuple[tuple[Any, ...], Any] = ((), None)

    def search(self, queries: Vectors, k: int, allowed: Ids | None = None) -> tuple[Distances, Ids]:
        """k nearest neighbours over every shard (each pads its own answer to k columns),
        among the ``allowed`` ids if given."""
        shards = self.shards
        if len(shards) == 1:
            return shards[0].search(queries, k, allowed)
        if not shards:
            return empty_results(np.shape(queries)[0], k)
        if allowed is None and k > 0:
            joined = self._faiss_shards()
            if joined is not None:
                first = shards[0]
                d, i = joined.search(prepare_for_metric(queries, first.metric), k)
                return first._faiss_results(d, i)
        return merge_topk([s.search(queries, k, allowed) for s in shards], k)

    def _faiss_shards(self) -> Any:
        """One ``faiss.IndexShards`` over the shards' FAISS indexes as they are now, or None
        when some shard is not a FAISS index, holds a negative id (FAISS's merge takes one for
        the end of a shard's answer) or the metrics or dimensions differ. Empty shards are left
        out, as a shard searched on its own answers an empty index without asking FAISS."""
        shards = self.shards
        parts = tuple([(s._faiss if s.count else None, s.negative_ids) for s in shards])
        joined_parts, joined = self._join
        if parts == joined_parts:
            return joined
        first = shards[0]
        joined = None
        if any(p is not None for p, _ in parts) and all(
            s._faiss is not None
            and not negative
            and s.metric == first.metric
            and s.dimension == first.dimension
            for s, (_, negative) in zip(shards, parts, strict=True)
        ):
            library: Any = faiss  # its type stubs lack IndexShards' threaded and ids flags
            joined = library.IndexShards(first.dimension, False, False)  # in turn, ids kept
            for p, _ in parts:
                if p is not None:
                    joined.add_shard(p)
        self._join = (parts, joined)
        return joined
