"""What each store can hold and do, declared in one place so `plan` can refuse early."""

from __future__ import annotations

from dataclasses import dataclass, field

from vecmigrate.model.records import RecordSchema
from vecmigrate.model.spec import ARTIFACT_INDEX_KINDS, IndexSpec, Metric, VersionSpec


@dataclass(frozen=True)
class Capabilities:
    """The limits and features of one kind of store."""

    kind: str
    native_indexes: frozenset[str]
    max_dimension: int
    scan_order: str
    transactions: bool
    # Native index kinds with a lower dimension cap than the store's vectors.
    max_index_dimension: dict[str, int] = field(default_factory=dict)
    # The metrics its searches and indexes take (all of them unless it lacks one).
    metrics: frozenset[str] = frozenset(m.value for m in Metric)
    # Most dimensions of a float16 vector (pgvector's halfvec), where lower than float32's.
    max_half_dimension: int | None = None
    # What each store keeps of a record beside its vectors (for ``plan`` and the docs).
    records: str = ""
    # Native kinds the store's embedded engine builds (None: the same as a server's).
    local_native_indexes: frozenset[str] | None = None
    # What a stable name applications query by is in this engine ("alias", "view"; "": none),
    # pointed at a version by the cut-over in one atomic step.
    stable_names: str = ""

    def problems(self, version: VersionSpec, side: str) -> list[str]:
        """Why this store cannot hold ``version`` (empty when it can)."""
        out = []
        dim = version.embedding.dimension
        if dim > self.max_dimension:
            out.append(
                f"{side}.store ({self.kind}) holds vectors of at most {self.max_dimension} "
                f"dimensions, not {dim}"
            )
        index: IndexSpec = version.index
        if index.kind not in ARTIFACT_INDEX_KINDS and index.kind not in self.native_indexes:
            out.append(f"{side}.store ({self.kind}) cannot build {index.kind} natively")
        local = self.local_native_indexes
        if local is not None and index.kind in self.native_indexes - local:
            uri = str(getattr(version.store, "uri", ""))
            if not uri.startswith(("http://", "https://", "tcp://", "grpc://")):
                out.append(
                    f"{side}.index {index.kind} needs a {self.kind} server: the embedded engine "
                    f"a local path ({uri}) runs builds only {', '.join(sorted(local))}"
                )
        precision = getattr(index, "precision", "vector")
        cap = self.max_index_dimension.get(
            f"{index.kind}:{precision}", self.max_index_dimension.get(index.kind)
        )
        if cap is not None and dim > cap:
            out.append(
                f"{side}.index {index.kind} supports at most {cap} dimensions, not {dim}: "
                "use a FAISS/hnswlib index kind (built from the data by vecmigrate) instead"
            )
        if str(version.embedding.metric) not in self.metrics:
            out.append(f"{side}.store ({self.kind}) has no {version.embedding.metric} metric")
        return out

    def schema_problems(self, schema: RecordSchema, side: str) -> list[str]:
        """Why this store cannot hold records of ``schema`` (empty when it can)."""
        out = []
        for v in schema.vectors[1:]:
            if v.metric is not None and v.metric not in self.metrics:
                out.append(
                    f"{side}.store ({self.kind}) has no {v.metric} metric for vector {v.name!r}"
                )
        for v in schema.vectors:
            cap = self.max_half_dimension if v.dtype == "float16" else self.max_dimension
            if cap is not None and v.dimension > cap:
                out.append(
                    f"{side}.store ({self.kind}) holds {v.dtype} vectors of at most {cap} "
                    f"dimensions; {v.name!r} has {v.dimension}"
                )
        return out


CAPABILITIES: dict[str, Capabilities] = {
    "builtin": Capabilities(
        kind="builtin",
        native_indexes=frozenset(),
        max_dimension=65536,
        scan_order="(hash of id, id) or id, keyset",
        transactions=True,
        records="any id, float32/float16 vectors, any payload (kept as canonical JSON)",
    ),
    "pgvector": Capabilities(
        kind="pgvector",
        native_indexes=frozenset({"pgvector_hnsw", "pgvector_ivfflat"}),
        max_dimension=16000,
        # halfvec indexes take up to 4,000 dimensions.
        max_index_dimension={
            "pgvector_hnsw": 2000,
            "pgvector_ivfflat": 2000,
            "pgvector_hnsw:halfvec": 4000,
            "pgvector_ivfflat:halfvec": 4000,
        },
        scan_order="(hash of id, id) or id, keyset; an adopted table by id",
        transactions=True,
        max_half_dimension=16000,
        stable_names="view",
        records="bigint/text/uuid ids, vector/halfvec columns, one typed column per payload "
        "field; text cannot hold NUL",
    ),
    "milvus": Capabilities(
        kind="milvus",
        native_indexes=frozenset(
            {"milvus_flat", "milvus_ivf_flat", "milvus_ivf_sq8", "milvus_ivf_pq"}
        ),
        max_dimension=32768,
        scan_order="id within a shard's key range, keyset",
        transactions=False,
        stable_names="alias",
        records="INT64 or VARCHAR ids, FLOAT/FLOAT16 vectors, typed scalar and JSON fields (a "
        "VARCHAR value up to 65,535 bytes, a JSON one up to 65,536), the dynamic field",
        # milvus-lite (a local file uri) builds FLAT and IVF_FLAT only.
        local_native_indexes=frozenset({"milvus_flat", "milvus_ivf_flat"}),
    ),
    "qdrant": Capabilities(
        kind="qdrant",
        native_indexes=frozenset({"qdrant_hnsw"}),
        max_dimension=65536,
        # Cosine collections normalise what they store; use ip on normalised vectors.
        metrics=frozenset({"l2", "ip"}),
        scan_order="point id within a shard's key range, keyset",
        transactions=False,
        stable_names="alias",
        records="unsigned integer or UUID point ids, named float32/float16 vectors, JSON payload",
    ),
}


# Native index kinds only a store's server builds (its embedded engine refuses them).
SERVER_ONLY_KINDS = frozenset(
    kind
    for c in CAPABILITIES.values()
    if c.local_native_indexes is not None
    for kind in c.native_indexes - c.local_native_indexes
)
