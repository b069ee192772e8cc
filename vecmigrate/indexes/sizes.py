"""What a version costs in storage: its records and its index, estimated before it exists and
measured once it does.

One table of how every index kind holds a vector (bytes per vector, fixed bytes per index), so
``plan``'s estimate, the report's figures and the storage benchmark agree on what they count.
Estimates count what the engines store for each vector (codes, ids, graph links) and the trained
parts (centroids, codebooks); page slack and engine metadata are left out, so measured files run
a little larger (``bench/storage_formats.py`` prints both).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from vecmigrate.model.spec import (
    FaissFlat,
    FaissHnsw,
    FaissIvfFlat,
    FaissIvfPq,
    HnswlibHnsw,
    IndexSpec,
    MilvusFlat,
    MilvusIvfFlat,
    MilvusIvfPq,
    MilvusIvfSq8,
    PgvectorHnsw,
    PgvectorIvfflat,
    QdrantHnsw,
    is_native,
)

# Bytes of one component of a vector as an index encodes it.
COMPONENT_BYTES = {"float32": 4.0, "float16": 2.0, "int8": 1.0, "vector": 4.0, "halfvec": 2.0}
# Every stored record besides its vector (keys, hash key, row header, page slack), roughly, in
# the stores vecmigrate writes to; measured on the built-in store's SQLite table.
ROW_OVERHEAD = 40
# Label kept beside each vector by FAISS's id map and by hnswlib.
ID_BYTES = 8
# pgvector's heap tuple pointer, the unit of its graph links and index entries.
TID_BYTES = 6


@dataclass(frozen=True)
class IndexCost:
    """An index's size: ``per_vector`` bytes for each vector and ``fixed`` bytes besides."""

    per_vector: float
    fixed: float = 0.0

    def bytes(self, count: int, parts: int = 1) -> int:
        """The index's bytes over ``count`` vectors in ``parts`` separate indexes (one per
        shard for the artifacts vecmigrate builds: each trains its own centroids)."""
        return math.ceil(self.per_vector * count + (self.fixed * max(1, parts) if count else 0))


def index_cost(spec: IndexSpec, dim: int) -> IndexCost:
    """How ``spec`` holds vectors of ``dim`` components (see the module's docstring)."""
    if isinstance(spec, FaissFlat):
        trained = 2 * dim * 4 if spec.encoding == "int8" else 0
        return IndexCost(dim * COMPONENT_BYTES[spec.encoding] + ID_BYTES, trained)
    if isinstance(spec, FaissIvfFlat):
        trained = 2 * dim * 4 if spec.encoding == "int8" else 0
        # Each list entry holds its code and its id; the centroids are float32.
        return IndexCost(
            dim * COMPONENT_BYTES[spec.encoding] + 2 * ID_BYTES, spec.nlist * dim * 4 + trained
        )
    if isinstance(spec, FaissIvfPq):
        codebooks = (1 << spec.nbits) * dim * 4
        return IndexCost(spec.m * spec.nbits / 8 + 2 * ID_BYTES, spec.nlist * dim * 4 + codebooks)
    if isinstance(spec, FaissHnsw):
        # Level 0 keeps 2m links of 4 bytes; the upper levels add about 1/m of that again.
        links = 2 * spec.m * 4 * (1 + 1 / spec.m) + 4
        trained = 2 * dim * 4 if spec.encoding == "int8" else 0
        return IndexCost(dim * COMPONENT_BYTES[spec.encoding] + links + ID_BYTES, trained)
    if isinstance(spec, HnswlibHnsw):
        links = 2 * spec.m * 4 + 4
        return IndexCost(dim * 4 + links + ID_BYTES + spec.m * 4 / 2)
    if isinstance(spec, PgvectorHnsw):
        # An element tuple and a neighbour tuple of 2m heap pointers, with their headers and
        # page slack: measured 835 bytes a vector at 128 dimensions and m 16 (576 as halfvec).
        element = dim * COMPONENT_BYTES[spec.precision] + 2 * spec.m * TID_BYTES + 131
        return IndexCost(element)
    if isinstance(spec, PgvectorIvfflat):
        width = dim * COMPONENT_BYTES[spec.precision]
        return IndexCost(width + TID_BYTES + 10, spec.lists * width)
    if isinstance(spec, MilvusFlat):
        return IndexCost(dim * 4 + ID_BYTES)
    if isinstance(spec, MilvusIvfFlat):
        return IndexCost(dim * 4 + ID_BYTES, spec.nlist * dim * 4)
    if isinstance(spec, MilvusIvfSq8):
        return IndexCost(dim + ID_BYTES, spec.nlist * dim * 4 + 2 * dim * 4)
    if isinstance(spec, MilvusIvfPq):
        return IndexCost(
            spec.m * spec.nbits / 8 + ID_BYTES, spec.nlist * dim * 4 + (1 << spec.nbits) * dim * 4
        )
    if isinstance(spec, QdrantHnsw):
        codes = {
            "none": 0.0,
            "scalar": float(dim),
            "product": dim * 4 / spec.product_compression,
        }[spec.quantization]
        return IndexCost(2 * spec.m * 4 + 4 + codes)
    raise TypeError(f"no size model for {spec!r}")  # pragma: no cover - the union is closed


def index_bytes(spec: IndexSpec, count: int, dim: int, parts: int = 1) -> int:
    """Estimated bytes of an index of ``spec`` over ``count`` vectors of ``dim`` components,
    built as ``parts`` indexes (a database's own index is one, whatever the shards)."""
    return index_cost(spec, dim).bytes(count, 1 if is_native(spec) else parts)


def record_bytes(count: int, dim: int) -> int:
    """Estimated bytes of ``count`` float32 records of ``dim`` components in a store."""
    return count * (dim * 4 + ROW_OVERHEAD)


def uncompressed(spec: IndexSpec) -> IndexSpec:
    """The same index over float32 vectors: what a compressed kind or encoding saves against."""
    if isinstance(spec, FaissFlat | FaissIvfFlat | FaissHnsw):
        return spec.model_copy(update={"encoding": "float32"})
    if isinstance(spec, FaissIvfPq):
        return FaissIvfFlat(nlist=spec.nlist, nprobe=spec.nprobe, train_size=spec.train_size)
    if isinstance(spec, PgvectorHnsw | PgvectorIvfflat):
        return spec.model_copy(update={"precision": "vector"})
    if isinstance(spec, MilvusIvfSq8 | MilvusIvfPq):
        return MilvusIvfFlat(nlist=spec.nlist, nprobe=spec.nprobe)
    if isinstance(spec, QdrantHnsw):
        return spec.model_copy(update={"quantization": "none"})
    return spec


def index_spec(data: dict[str, Any]) -> IndexSpec:
    """An index spec from its stored JSON (as the catalog keeps it)."""
    adapter: TypeAdapter[IndexSpec] = TypeAdapter(IndexSpec)
    return adapter.validate_python(data)


def artifact_bytes(artifacts: list[dict[str, Any]]) -> int | None:
    """Bytes on disk of an index version's artifact files (None: none can be found, or the
    index is the database's own)."""
    total, found = 0, False
    for artifact in artifacts:
        manifest = Path(str(artifact.get("uri", "")))
        if artifact.get("shard", 0) < 0 or not manifest.is_file():
            continue
        try:
            meta = json.loads(manifest.read_text())
            data_file = manifest.parent / meta["file"]
            total += data_file.stat().st_size + manifest.stat().st_size
            found = True
        except (OSError, ValueError, KeyError):
            continue
    return total if found else None


def tree_bytes(directory: Path) -> int:
    """Bytes of every file under ``directory`` (0 when it is not a directory): what a version's
    artifacts, or a local-mode Qdrant's files, take on disk."""
    if not directory.is_dir():
        return 0
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
