"""The migration spec: what a user writes to describe one migration.

Every model here is pure data (pydantic, no I/O at validation time) so that the workflow can carry
the spec in its input and the planner, the activities and the CLI can all validate it the same
way. Load a spec with :func:`load_spec` (YAML or JSON) or :func:`parse_spec` (a mapping).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from enum import StrEnum
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from vecmigrate.errors import SpecError
from vecmigrate.model.base import FrozenModel
from vecmigrate.model.credentials import SecretRef, UrlWithoutSecret
from vecmigrate.model.lifecycle import LIFECYCLE, STRATEGIES, Phase
from vecmigrate.model.records import FieldKind
from vecmigrate.model.schedule import SchedulePolicy
from vecmigrate.model.windows import MaintenanceWindows

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class _Model(FrozenModel):
    # A string under a field is its description in the JSON schema, which the spec reference
    # (docs/spec-reference.md) is generated from.
    model_config = ConfigDict(use_attribute_docstrings=True)


class Metric(StrEnum):
    """Distance used by an index: smaller is closer for l2, larger is closer for ip/cosine."""

    L2 = "l2"
    IP = "ip"
    COSINE = "cosine"


class EmbeddingSchema(_Model):
    """Which model made the vectors and how they are compared."""

    model_id: str = Field(min_length=1)
    """The embedding model's id, as registered (``vecmigrate model list``)."""
    model_version: str = "1"
    dimension: int = Field(ge=1, le=65536)
    """Length of every vector."""
    metric: Metric = Metric.L2
    normalized: bool = False
    """Whether the vectors have unit length (a target may normalise what the source did not)."""


# How an index holds each vector: as float32, as float16 (half the bytes, the same ranking to
# about three decimal digits) or as 8-bit scalar codes (a quarter, trained per dimension on the
# shard's range): FAISS's SQfp16 and SQ8. The gates measure what the smaller codes cost in recall.
Encoding = Literal["float32", "float16", "int8"]
ENCODINGS: tuple[Encoding, ...] = ("float32", "float16", "int8")


class FaissFlat(_Model):
    """Exact search (brute force) with FAISS; ``encoding`` float16 or int8 compares against
    compressed codes (FAISS's scalar quantizer)."""

    kind: Literal["faiss_flat"] = "faiss_flat"
    encoding: Encoding = "float32"
    """How each vector is held: float32, float16 (half the bytes) or int8 codes (a quarter)."""


class _Ivf(_Model):
    """Parameters every FAISS inverted-file index shares."""

    nlist: int = Field(default=256, ge=1, le=1 << 20)
    """Centroids (inverted lists); each shard needs at least 39 vectors per centroid to train."""
    nprobe: int = Field(default=16, ge=1)
    """Lists searched per query, at most ``nlist``."""
    train_size: int = Field(default=100_000, ge=1)
    """Vectors sampled from each shard to train the centroids."""

    @model_validator(mode="after")
    def _nprobe_within_nlist(self) -> Self:
        if self.nprobe > self.nlist:
            raise ValueError(f"nprobe ({self.nprobe}) cannot exceed nlist ({self.nlist})")
        return self


class FaissIvfFlat(_Ivf):
    """FAISS inverted file: ``nlist`` centroids, ``nprobe`` probed per query; the lists hold
    full vectors, or float16 / int8 codes with ``encoding`` (IVF-SQfp16, IVF-SQ8)."""

    kind: Literal["faiss_ivf_flat"] = "faiss_ivf_flat"
    encoding: Encoding = "float32"
    """How each vector is held: float32, float16 (half the bytes) or int8 codes (a quarter)."""


class FaissIvfPq(_Ivf):
    """FAISS inverted file with product-quantised codes (``m`` sub-vectors of ``nbits`` bits)."""

    kind: Literal["faiss_ivf_pq"] = "faiss_ivf_pq"
    m: int = Field(default=8, ge=1)
    """Sub-vectors per code; must divide the dimension."""
    nbits: int = Field(default=8, ge=1, le=16)
    """Bits per sub-vector code."""


class FaissHnsw(_Model):
    """FAISS HNSW graph over full vectors (IndexHNSWFlat), or over float16 / int8 codes with
    ``encoding`` (IndexHNSWSQ)."""

    kind: Literal["faiss_hnsw"] = "faiss_hnsw"
    m: int = Field(default=32, ge=2, le=512)
    """Links per node of the graph: more is better recall and more memory."""
    ef_construction: int = Field(default=200, ge=1)
    """Candidates kept while inserting: more is a better graph and a slower build."""
    ef_search: int = Field(default=64, ge=1)
    encoding: Encoding = "float32"
    """How each vector is held: float32, float16 (half the bytes) or int8 codes (a quarter)."""


class HnswlibHnsw(_Model):
    """hnswlib HNSW graph."""

    kind: Literal["hnswlib_hnsw"] = "hnswlib_hnsw"
    m: int = Field(default=16, ge=2, le=512)
    """Links per node of the graph: more is better recall and more memory."""
    ef_construction: int = Field(default=200, ge=1)
    """Candidates kept while inserting: more is a better graph and a slower build."""
    ef_search: int = Field(default=64, ge=1)


# pgvector's index over the vectors as stored (``vector``, 4 bytes a dimension) or cast to
# ``halfvec`` (2 bytes a dimension: half the index, and indexes up to 4,000 dimensions).
Precision = Literal["vector", "halfvec"]

_MEMORY = re.compile(r"([0-9]+) ?(kB|MB|GB|TB)")
_MEMORY_KB = {"kB": 1, "MB": 1024, "GB": 1024**2, "TB": 1024**3}
# PostgreSQL's bounds for maintenance_work_mem, in kB: 1MB, and the largest int.
_MEMORY_RANGE_KB = (1024, 2_147_483_647)


def memory_kb(value: str) -> int:
    """Kilobytes of a PostgreSQL memory size such as ``512MB``.

    Raises:
        ValueError: not a size PostgreSQL accepts for ``maintenance_work_mem``.
    """
    found = _MEMORY.fullmatch(value)
    if found is None:
        raise ValueError(
            f"{value!r} is not a PostgreSQL memory size: write a whole number and a unit, "
            "kB, MB, GB or TB as PostgreSQL spells them (512MB, 2GB)"
        )
    kb = int(found[1]) * _MEMORY_KB[found[2]]
    low, high = _MEMORY_RANGE_KB
    if not low <= kb <= high:
        raise ValueError(f"{value!r} is outside PostgreSQL's range for it, 1MB to 2047GB")
    return kb


def _memory_size(value: str) -> str:
    memory_kb(value)
    return value


MemorySize = Annotated[str, AfterValidator(_memory_size)]


class PgvectorHnsw(_Model):
    """pgvector's own HNSW index, built by Postgres on the target table (over ``halfvec``
    casts of the vectors with ``precision: halfvec``)."""

    kind: Literal["pgvector_hnsw"] = "pgvector_hnsw"
    m: int = Field(default=16, ge=2, le=100)
    """Links per node of the graph: more is better recall and more memory."""
    ef_construction: int = Field(default=64, ge=4, le=1000)
    """Candidates kept while inserting: more is a better graph and a slower build."""
    ef_search: int = Field(default=40, ge=1, le=1000)
    """Candidates kept per query: more is better recall and slower searches."""
    precision: Precision = "vector"
    """``halfvec`` indexes half-precision casts of the vectors (half the index's vector bytes)."""
    maintenance_work_mem: MemorySize | None = None
    """Memory the build may use, as PostgreSQL writes it (``512MB``, ``2GB``; units kB, MB,
    GB, TB): set on the build's own connection (none: the server's setting). An HNSW graph
    that fits in it is built several times faster."""
    parallel_workers: int | None = Field(default=None, ge=0, le=64)
    """Parallel maintenance workers for the build (``max_parallel_maintenance_workers`` on
    the build's connection; none: the server's setting, 0: the build's backend alone)."""
    lock_timeout_seconds: int = Field(default=600, ge=1, le=86_400)
    """How long the build waits for a lock or for older transactions on the table to end
    before it gives up (the activity is retried); it never queues forever."""

    @model_validator(mode="after")
    def _ef_construction_covers_m(self) -> Self:
        if self.ef_construction < 2 * self.m:
            raise ValueError(
                f"ef_construction ({self.ef_construction}) must be at least 2 * m ({2 * self.m})"
            )
        return self


class PgvectorIvfflat(_Model):
    """pgvector's own IVFFlat index: ``lists`` clusters, ``probes`` searched per query (over
    ``halfvec`` casts of the vectors with ``precision: halfvec``)."""

    kind: Literal["pgvector_ivfflat"] = "pgvector_ivfflat"
    lists: int = Field(default=100, ge=1, le=32768)
    probes: int = Field(default=10, ge=1)
    precision: Precision = "vector"
    """``halfvec`` indexes half-precision casts of the vectors (half the index's vector bytes)."""
    maintenance_work_mem: MemorySize | None = None
    """Memory the build may use, as PostgreSQL writes it (``512MB``, ``2GB``; units kB, MB,
    GB, TB): set on the build's own connection (none: the server's setting)."""
    parallel_workers: int | None = Field(default=None, ge=0, le=64)
    """Parallel maintenance workers for the build (``max_parallel_maintenance_workers`` on
    the build's connection; none: the server's setting, 0: the build's backend alone)."""
    lock_timeout_seconds: int = Field(default=600, ge=1, le=86_400)
    """How long the build waits for a lock or for older transactions on the table to end
    before it gives up (the activity is retried); it never queues forever."""


class QdrantHnsw(_Model):
    """Qdrant's own HNSW graph (its optimizers build it with these parameters).

    ``quantization``: ``scalar`` keeps int8 codes of every vector beside it (a quarter of the
    bytes), ``product`` product-quantised codes ``product_compression`` times smaller; Qdrant
    searches the codes, then rescores the best candidates with the full vectors (``rescore``),
    ``oversampling`` times as many as asked.
    """

    kind: Literal["qdrant_hnsw"] = "qdrant_hnsw"
    m: int = Field(default=16, ge=2, le=512)
    """Links per node of the graph: more is better recall and more memory."""
    ef_construct: int = Field(default=100, ge=4)
    """Candidates kept while inserting: more is a better graph and a slower build."""
    ef: int = Field(default=64, ge=1)
    quantization: Literal["none", "scalar", "product"] = "none"
    """Compressed codes searched first: ``scalar`` (int8) or ``product``; ``none``: full
    vectors only."""
    product_compression: Literal[4, 8, 16, 32, 64] = 16
    """How many times smaller than the vectors product codes are."""
    rescore: bool = True
    """Rescore the candidates found on codes with the full vectors."""
    oversampling: float = Field(default=2.0, ge=1.0, le=100.0)
    """Candidates taken from the codes, as a multiple of those asked for, before rescoring."""


class MilvusFlat(_Model):
    """Milvus's exact (FLAT) index."""

    kind: Literal["milvus_flat"] = "milvus_flat"


class MilvusIvfFlat(_Model):
    """Milvus's IVF_FLAT index: ``nlist`` clusters, ``nprobe`` searched per query."""

    kind: Literal["milvus_ivf_flat"] = "milvus_ivf_flat"
    nlist: int = Field(default=128, ge=1, le=65536)
    nprobe: int = Field(default=16, ge=1, le=65536)


class MilvusIvfSq8(_Model):
    """Milvus's IVF_SQ8 index: IVF lists of 8-bit scalar codes (a quarter of IVF_FLAT)."""

    kind: Literal["milvus_ivf_sq8"] = "milvus_ivf_sq8"
    nlist: int = Field(default=128, ge=1, le=65536)
    nprobe: int = Field(default=16, ge=1, le=65536)


class MilvusIvfPq(_Model):
    """Milvus's IVF_PQ index: IVF lists of product-quantised codes (``m`` sub-vectors of
    ``nbits`` bits)."""

    kind: Literal["milvus_ivf_pq"] = "milvus_ivf_pq"
    nlist: int = Field(default=128, ge=1, le=65536)
    nprobe: int = Field(default=16, ge=1, le=65536)
    m: int = Field(default=8, ge=1)
    nbits: int = Field(default=8, ge=1, le=16)


IndexSpec = Annotated[
    FaissFlat
    | FaissIvfFlat
    | FaissIvfPq
    | FaissHnsw
    | HnswlibHnsw
    | PgvectorHnsw
    | PgvectorIvfflat
    | MilvusFlat
    | MilvusIvfFlat
    | MilvusIvfSq8
    | MilvusIvfPq
    | QdrantHnsw,
    Field(discriminator="kind"),
]
# Built by vecmigrate from scanned data into artifact files: usable with any store.
ARTIFACT_INDEX_KINDS = (
    "faiss_flat",
    "faiss_ivf_flat",
    "faiss_ivf_pq",
    "faiss_hnsw",
    "hnswlib_hnsw",
)
# Built by the database itself, inside the target store.
NATIVE_INDEX_KINDS = (
    "pgvector_hnsw",
    "pgvector_ivfflat",
    "milvus_flat",
    "milvus_ivf_flat",
    "milvus_ivf_sq8",
    "milvus_ivf_pq",
    "qdrant_hnsw",
)
INDEX_KINDS = ARTIFACT_INDEX_KINDS + NATIVE_INDEX_KINDS


def is_native(index: IndexSpec) -> bool:
    """Whether the store builds and searches this index itself."""
    return index.kind in NATIVE_INDEX_KINDS


class _StoreRef(_Model):
    """What every store reference says about where its data lives and whose it is.

    ``location`` is where the store keeps its data (a region or data-centre label, for
    residency checks); ``tenants``, when set, are the only tenants the store may hold.
    ``writable`` lets vecmigrate write to an adopted source (an existing table or collection
    named as a migration's source): without it, nothing is ever written to one, and writes sent
    through the router to that version are refused.
    """

    location: str | None = Field(default=None, min_length=1, max_length=64)
    """Where the store keeps its data (a region or data-centre label), for residency checks."""
    tenants: tuple[Name, ...] | None = None
    """The only tenants this store may hold; a migration of any other tenant is refused."""
    writable: bool = False
    """Let vecmigrate write to this store when it is an adopted source (an existing table or
    collection); without it nothing is written there and router writes to it are refused."""


# A table name, schema-qualified or not (``documents``, ``search.documents``).
TABLE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_$]{0,62}(\.[A-Za-z_][A-Za-z0-9_$]{0,62})?$"


class _ClientCertificate(_Model):
    """TLS options with a client certificate: ``client_cert`` and its ``client_key`` are given
    together or not at all (the subclasses declare both fields, each in its place)."""

    if TYPE_CHECKING:
        client_cert: str | None
        client_key: str | None

    @model_validator(mode="after")
    def _pair(self) -> Self:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key go together: give both or neither")
        return self


class PostgresTls(_ClientCertificate):
    """TLS to PostgreSQL, as libpq names it: ``sslmode`` (``verify-full`` checks the server's
    certificate and host name against ``root_cert``), and a client certificate for servers that
    ask for one. Paths are read by the process that connects."""

    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = (
        "verify-full"
    )
    """libpq's ``sslmode``: ``verify-full`` checks the server's certificate and name."""
    root_cert: str | None = Field(default=None, min_length=1)
    """Path of the CA certificate that signed the server's (libpq's ``sslrootcert``)."""
    client_cert: str | None = Field(default=None, min_length=1)
    """Path of a client certificate, for servers that ask for one (``sslcert``)."""
    client_key: str | None = Field(default=None, min_length=1)
    """Path of the client certificate's private key (``sslkey``)."""
    negotiation: Literal["postgres", "direct"] = "postgres"
    """``direct``: TLS from the first byte (PostgreSQL 17 and later, and TLS-terminating
    proxies) instead of asking the server to switch to it (libpq's ``sslnegotiation``)."""


class _PostgresConnection(_Model):
    """A database reached by URL: its password and TLS options beside the URL, never in it."""

    password: SecretRef | None = None
    """The database password by reference: ``env:NAME``, ``file:/path`` or ``SCHEME://...``
    (never the password itself; resolved by the worker that connects)."""
    tls: PostgresTls | None = None
    """TLS to the database (``sslmode``, CA and client certificate)."""

    def _check_postgres_only(self, url: str | None) -> None:
        if (self.password or self.tls) and not (url or "").startswith(("postgres", "psql")):
            raise ValueError("password and tls apply to PostgreSQL URLs only")


class BuiltinStoreRef(_StoreRef, _PostgresConnection):
    """The built-in store: records in a SQL database, index artifacts in a directory.

    Both default to the vecmigrate home directory (``VECMIGRATE_HOME``, else the user's data
    directory) when left empty; the CLI resolves them to absolute paths before a migration starts.
    A PostgreSQL ``url`` takes its ``password`` (a secret reference) and ``tls`` beside it.
    """

    kind: Literal["builtin"] = "builtin"
    url: UrlWithoutSecret | None = None
    """SQLAlchemy URL of the database that holds the records (no password: see ``password``)."""
    artifacts: str | None = None
    """Directory of the index artifacts."""

    @model_validator(mode="after")
    def _connection(self) -> Self:
        self._check_postgres_only(self.url)
        return self


class PgvectorStoreRef(_StoreRef, _PostgresConnection):
    """A PostgreSQL database with the pgvector extension.

    ``url`` is a libpq or SQLAlchemy URL without a password (``postgresql://app@host:5432/db``;
    a Unix socket with ``?host=/path``); ``password`` names it by reference (``env:PGPASSWORD``,
    ``file:/run/secrets/pg``) and ``tls`` sets ``sslmode`` and certificates. Without ``table``
    each version gets a table of vecmigrate's own, so native indexes never span versions. With
    ``table``, a source reads that existing table as it is (``id_column``: its primary key by
    default; ``vector_columns``: every ``vector`` and ``halfvec`` column by default, the first
    one primary; ``payload_columns``: every other column, or a list), and a target is created
    under that name with the source's columns. ``artifacts`` holds FAISS/hnswlib index files
    when the index is not native.
    """

    kind: Literal["pgvector"] = "pgvector"
    url: UrlWithoutSecret = Field(min_length=1)
    """libpq or SQLAlchemy URL of the database (no password: see ``password``)."""
    artifacts: str | None = None
    """Directory of the FAISS/hnswlib index files, when the index is not native."""
    table: str | None = Field(default=None, pattern=TABLE_PATTERN)
    """An existing table to adopt (a source) or the name of the table to create (a target)."""
    id_column: str | None = Field(default=None, min_length=1, max_length=63)
    """The adopted table's id column (its primary key by default)."""
    vector_columns: tuple[str, ...] | None = Field(default=None, min_length=1)
    """The adopted table's vector columns (every vector and halfvec column by default; the
    first is primary)."""
    payload_columns: tuple[str, ...] | Literal["all"] = "all"
    """The adopted table's columns carried as payload: every other column, or these."""


class MilvusTls(_ClientCertificate):
    """TLS to a Milvus server: the CA that signed its certificate, the name it presents, and a
    client certificate for servers that require one (mutual TLS)."""

    ca_cert: str | None = Field(default=None, min_length=1)
    """Path of the CA certificate that signed the server's."""
    server_name: str | None = Field(default=None, min_length=1)
    """The name in the server's certificate, when it differs from the URI's host."""
    client_cert: str | None = Field(default=None, min_length=1)
    """Path of a client certificate, for servers that require one."""
    client_key: str | None = Field(default=None, min_length=1)
    """Path of the client certificate's private key."""


class MilvusStoreRef(_StoreRef):
    """A Milvus deployment: ``uri`` is ``https://host:19530`` (``http://`` without TLS), or a
    local file path for the embedded milvus-lite engine. ``token`` (``user:password`` or an API
    key) is a secret reference; ``tls`` adds a CA or a client certificate. Without
    ``collection`` each version is a collection of vecmigrate's own; with it, a source reads that
    existing collection (``vector_fields``: every dense vector field by default, the first one
    primary) and a target is created under that name."""

    kind: Literal["milvus"] = "milvus"
    uri: UrlWithoutSecret = Field(min_length=1)
    """``https://host:19530`` (``http://`` without TLS), or a milvus-lite file path."""
    token: SecretRef | None = None
    """``user:password`` or an API key, by reference: ``env:NAME``, ``file:/path``..."""
    tls: MilvusTls | None = None
    """TLS to the server: its CA, its name, a client certificate."""
    artifacts: str | None = None
    """Directory of the FAISS/hnswlib index files, when the index is not native."""
    collection: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
    """An existing collection to adopt (a source) or the one to create (a target)."""
    vector_fields: tuple[str, ...] | None = Field(default=None, min_length=1)
    """The adopted collection's vector fields (every dense one by default; the first is
    primary)."""

    @model_validator(mode="after")
    def _remote_only(self) -> Self:
        if self.tls is not None and not self.uri.startswith(("http://", "https://", "tcp://")):
            raise ValueError("tls applies to a Milvus server URI (https://host:port)")
        return self


class QdrantStoreRef(_StoreRef):
    """Qdrant through qdrant-client: a server at ``url`` (``http(s)://host:6333``, with
    ``api_key`` as a reference: ``env:NAME`` or ``file:PATH``), or the client's local mode in
    the directory ``path``. Without ``collection`` each version is a collection of vecmigrate's
    own; with it, a source reads that existing collection (``vectors``: every named dense
    vector by default, the first one primary; ``payload_kinds`` fixes the kind of payload fields
    a sample would guess) and a target is created under that name."""

    kind: Literal["qdrant"] = "qdrant"
    url: UrlWithoutSecret | None = Field(default=None, pattern=r"^https?://")
    """A Qdrant server, ``https://host:6333`` (``http://`` without TLS)."""
    path: str | None = Field(default=None, min_length=1)
    """A directory for qdrant-client's local mode (one process at a time), instead of ``url``."""
    api_key: SecretRef | None = None
    """The server's API key, by reference: ``env:NAME``, ``file:/path``..."""
    collection: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,255}$")
    """An existing collection to adopt (a source) or the one to create (a target)."""
    vectors: tuple[str, ...] | None = Field(default=None, min_length=1)
    """The adopted collection's named vectors (every dense one by default; the first is
    primary)."""
    payload_kinds: dict[str, FieldKind] = Field(default_factory=dict)
    """Kinds of payload fields, fixed (Qdrant keeps no payload schema: otherwise a sample of
    points decides; ``vecmigrate inspect`` writes what it found here)."""
    artifacts: str | None = None
    """Directory of the FAISS/hnswlib index files, when the index is not native."""

    @model_validator(mode="after")
    def _one_place(self) -> Self:
        if (self.url is None) == (self.path is None):
            raise ValueError(
                "a Qdrant store is a server url (http(s)://host:6333) or a local-mode path; "
                "give exactly one"
            )
        return self


AnyStoreRef = BuiltinStoreRef | PgvectorStoreRef | MilvusStoreRef | QdrantStoreRef
StoreRef = Annotated[AnyStoreRef, Field(discriminator="kind")]
STORE_KINDS = ("builtin", "pgvector", "milvus", "qdrant")


def named(ref: AnyStoreRef) -> str | None:
    """The table or collection a store reference names (an existing one for a source, the one
    to create for a target), or ``None`` for vecmigrate's own naming."""
    if isinstance(ref, PgvectorStoreRef):
        return ref.table
    if isinstance(ref, MilvusStoreRef | QdrantStoreRef):
        return ref.collection
    return None


def _deployment(ref: AnyStoreRef) -> str | None:
    """Where a store reference's engine is: its URL, URI or local-mode path."""
    if isinstance(ref, MilvusStoreRef):
        return ref.uri
    if isinstance(ref, QdrantStoreRef):
        return ref.url or ref.path
    return ref.url


def store_ref(data: dict[str, Any]) -> AnyStoreRef:
    """A store reference from its stored JSON (as the catalog keeps it)."""
    adapter: TypeAdapter[AnyStoreRef] = TypeAdapter(StoreRef)
    return adapter.validate_python(data)


class VersionSpec(_Model):
    """One representation of a collection: where its vectors live, what made them, its index."""

    name: Name
    """The version's name within its collection (``v1``, ``v2``...)."""
    store: StoreRef = Field(default_factory=BuiltinStoreRef)
    """Where the version's records live; the built-in store by default."""
    embedding: EmbeddingSchema
    index: IndexSpec
    """The index that serves the version's reads; its ``kind`` selects the parameters."""


class ShardLayout(_Model):
    """How the collection is split for backfill and index build.

    ``hash`` spreads ids evenly whatever their distribution; ``range`` keeps id ranges together.
    ``only`` selects a subset of shards (by index) for this migration. The workflow continues
    as new before its history reaches about 2,000 events, so the shard count is bounded by the
    size of the per-shard state it carries (about 100 bytes a shard), not by the history.
    """

    by: Literal["hash", "range"] = "hash"
    count: int = Field(default=4, ge=1, le=5_000)
    """Shards the collection is split into."""
    only: tuple[int, ...] | None = None

    @model_validator(mode="after")
    def _only_in_range(self) -> ShardLayout:
        if self.only is not None:
            bad = [s for s in self.only if not 0 <= s < self.count]
            if bad:
                raise ValueError(
                    f"shard indexes {bad} are outside 0..{self.count - 1}; "
                    f"list shards between 0 and count-1"
                )
            if len(set(self.only)) != len(self.only):
                raise ValueError("shard indexes in 'only' must be distinct")
        return self

    def selected(self) -> tuple[int, ...]:
        """The shard indexes this migration copies."""
        return self.only if self.only is not None else tuple(range(self.count))


class IntegrityPolicy(_Model):
    """Per-shard checks of the target's vectors. ``None`` switches a check off."""

    max_nonfinite: int = Field(default=0, ge=0)
    """Target vectors with a NaN or an infinity allowed."""
    max_zero_vectors: int | None = Field(default=0, ge=0)
    """All-zero target vectors allowed beyond those the source already had."""
    max_duplicate_ids: int = Field(default=0, ge=0)
    """Ids stored more than once allowed."""
    norm_min: float | None = Field(default=None, ge=0.0)
    """Smallest vector norm allowed in the target."""
    norm_max: float | None = Field(default=None, ge=0.0)
    """Largest vector norm allowed in the target."""
    norm_range_tolerance: float | None = Field(default=0.01, ge=0.0)
    """Relative slack allowed around the source's norm range (after the transform)."""
    unit_norm_tolerance: float = Field(default=1e-3, gt=0.0)
    """For normalised targets: allowed ``|norm - 1|``."""


class DistributionPolicy(_Model):
    """Same-model checks that the target's vectors follow the source's distribution."""

    sample: int = Field(default=5000, ge=10, le=1_000_000)
    """Vectors drawn from each side for the distribution checks."""
    max_norm_ks: float | None = Field(default=0.05, ge=0.0, le=1.0)
    """Two-sample Kolmogorov-Smirnov statistic of the norms, at most."""
    max_mean_shift: float | None = Field(default=0.05, ge=0.0)
    """Distance between the two means over the mean norm, at most."""
    max_spectrum_shift: float | None = Field(default=0.05, ge=0.0, le=1.0)
    """Total variation between the covariance spectra, at most."""
    spectrum_components: int = Field(default=32, ge=1, le=4096)
    """Leading eigenvalues of the covariance compared."""


class GatePolicy(_Model):
    """Thresholds the new version must meet before it may serve reads.

    Retrieval figures come from ``sample_queries`` queries sampled from the source data (each
    query's own record excluded from every result) or from ``query_log``, a ``.npy`` file of
    recorded queries in the source's embedding space. ``None`` switches a check off.
    """

    k: int = Field(default=10, ge=1, le=1000)
    """Neighbours per query for recall and agreement (recall@k, overlap@k)."""
    sample_queries: int = Field(default=200, ge=1, le=100_000)
    """Queries sampled from the source's records when there is no ``query_log``."""
    half_width: float | None = Field(default=None, gt=0.0, le=0.5)
    """The precision the gate needs: the half-width its 95% interval of a recall or overlap
    may have at most, whatever the figure. The sample grows to the queries that guarantee it
    (``queries``: 2,401 for 0.02, 9,604 for 0.01), ``sample_queries`` staying the least; a
    recorded query log gives what it holds. ``None``: ``sample_queries`` alone (each verdict
    still reports its interval, and how many queries would tell when it straddles)."""
    latency_queries: int = Field(default=200, ge=1, le=100_000)
    """Of those, how many are also searched one at a time for the p50/p99 figures (recall and
    agreement use all of them, searched as one batch)."""
    query_log: str | None = None
    """A ``.npy`` file of recorded queries in the source's embedding space."""
    min_recall: float | None = Field(default=0.90, ge=0.0, le=1.0)
    """Recall@k of the new index against exact search, at least."""
    max_recall_drop: float | None = Field(default=0.02, ge=0.0, le=1.0)
    """How far the new index's recall may fall below the old index's, judged on the paired
    difference over the same queries (the default was ``None``, no such gate, before the gate's
    confidence intervals)."""
    min_overlap: float | None = Field(default=None, ge=0.0, le=1.0)
    """Overlap of the old and new top-k on the same queries, at least."""
    min_rank_correlation: float | None = Field(default=None, ge=-1.0, le=1.0)
    """Rank correlation of the old and new top-k, at least."""
    max_p99_ratio: float | None = Field(default=2.0, gt=0.0)
    """p99 latency of the new index over the old one's, at most, the two timed in turns on
    the same queries and each p99 read as at least 1 ms (below it a ratio measures the
    scheduler). It fails only when its whole interval lies above (one stalled query cannot be
    told from a slow index). The default was ``None``, no such gate, before the gate's
    confidence intervals."""
    require_count_parity: bool = True
    """Each shard holds as many records in the target as in the source."""
    require_checksum_parity: bool = True
    """Each shard's checksum of ids and vector bytes matches (ids alone when vectors are
    transformed)."""
    integrity: IntegrityPolicy = Field(default_factory=IntegrityPolicy)
    distribution: DistributionPolicy = Field(default_factory=DistributionPolicy)
    time_budget_seconds: float = Field(default=1800.0, gt=0.0)
    """The retrieval and distribution checks stop here; a check not measured fails."""
    on_failure: Literal["pause", "rollback"] = "pause"
    """A failed gate pauses for an operator, or rolls the migration back."""
    seed: int = 0
    """Seed of the query and distribution samples."""
    deep: bool = False
    """Read both versions in full for the reconcile gate and the shard checks (an audit). By
    default the copy computes each shard's profiles and the recall gate's exact search as it
    writes, and the checks and the reconcile gate verify the target by its count and a
    read-back sample of each shard (the records written during the migration read from both
    versions)."""

    @property
    def queries(self) -> int:
        """Queries the retrieval checks draw: ``sample_queries``, or more when ``half_width``
        needs them (the worst case: a proportion of one half, one trial a query)."""
        if self.half_width is None:
            return self.sample_queries
        z = NormalDist().inv_cdf(0.975)
        needed = math.ceil(z * z * 0.25 / (self.half_width * self.half_width))
        return min(100_000, max(self.sample_queries, needed))


class QuarantinePolicy(_Model):
    """Source records no target can hold (a null vector, the wrong dimension, NaN, an id twice,
    an id or value the target cannot store, a payload over ``max_payload_bytes``) are left out of
    the copy and listed in the quarantine. The gate fails when more than ``max_records`` are
    (``None``: the migration passes with the report)."""

    max_records: int | None = Field(default=0, ge=0)
    max_payload_bytes: int | None = Field(default=None, ge=1)


class CutoverPolicy(_Model):
    """Who switches reads, and how long the old version stays ready for an instant rollback."""

    mode: Literal["manual", "automatic"] = "manual"
    """``manual`` waits for the ``approve_cutover`` signal once the gates pass."""
    bake_seconds: float = Field(default=300.0, ge=0.0)
    """After the cut-over, how long the old version stays current for an instant rollback."""
    stable_name: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
    """A name applications query the database by directly (a Qdrant or Milvus alias, a
    PostgreSQL view), pointed at the target by the cut-over in one atomic step and back at the
    source by a rollback. Source and target must be on the same engine deployment."""


class ShadowPolicy(_Model):
    """Shadow reads: a share of live searches also runs on the new version, off the response
    path, and the pairs are compared. The gate needs ``min_samples`` pairs (none is a failure,
    not a pass)."""

    percent: float = Field(default=20.0, gt=0.0, le=100.0)
    """Share of live reads also run on the new version."""
    seconds: float = Field(default=60.0, ge=0.0)
    """How long shadow reads are collected before the gate."""
    min_samples: int = Field(default=50, ge=1)
    """Shadow pairs the gate needs. When a step's hold (``seconds`` here, a ramp step's
    ``step_seconds``) ends short of them, it goes on collecting for up to the hold again (at
    least 10 seconds) before it is judged; still short then, it goes on while the pairs' rate
    since the hold began says the rest come within four times that wait in all (a latency
    budget that mirrors fewer reads slows the pairs down; it does not fail the gate)."""
    min_overlap: float | None = Field(default=0.8, ge=0.0, le=1.0)
    """Overlap@k of each pair's results, on average, at least."""
    max_p99_ratio: float | None = Field(default=2.0, gt=0.0)
    """p99 latency of the new version over the old one, on the same queries (an old p99 under
    1 ms counts as 1 ms: below that a ratio measures scheduler noise)."""


class RampPolicy(_Model):
    """Canary: the share of reads (split by a stable hash of the request key) the new version
    serves, step by step, each held ``step_seconds`` and gated on the shadow figures."""

    steps: tuple[float, ...] = (1.0, 10.0, 50.0)
    """Percentages of reads, increasing, each strictly between 0 and 100."""
    step_seconds: float = Field(default=60.0, ge=0.0)
    """How long each step is held before its gate."""

    @model_validator(mode="after")
    def _increasing(self) -> RampPolicy:
        if any(not 0.0 < s < 100.0 for s in self.steps):
            raise ValueError(
                "ramp steps are percentages strictly between 0 and 100 (the cut-over is 100)"
            )
        if list(self.steps) != sorted(set(self.steps)):
            raise ValueError(f"ramp steps must increase, got {list(self.steps)}")
        return self


# The search parameter of each index kind that a search can change without a rebuild, as the
# adapter that searches the index honours it (``online.tuning`` tries values of it).
SEARCH_PARAMETERS: dict[str, str] = {
    "hnswlib_hnsw": "ef_search",
    "faiss_hnsw": "ef_search",
    "faiss_ivf_flat": "nprobe",
    "faiss_ivf_pq": "nprobe",
    "pgvector_hnsw": "ef_search",
    "pgvector_ivfflat": "probes",
    "qdrant_hnsw": "ef",
    "milvus_ivf_flat": "nprobe",
    "milvus_ivf_sq8": "nprobe",
    "milvus_ivf_pq": "nprobe",
}


class TuningPolicy(_Model):
    """Search-parameter tuning in the canary window: during SHADOWING every mirrored live read
    (up to ``sample`` of them) is also searched on the target with each candidate value, and
    the exact answer over the target's store is computed for the same queries. The smallest
    candidate whose recall@k and p99 meet the gates then serves the target's reads (the ramp's
    and, after the cut-over, all of them). When none does, the index's own value stays."""

    parameter: str
    """The index's search parameter: ``ef_search`` (hnswlib, FAISS HNSW, pgvector HNSW),
    ``nprobe`` (FAISS IVF, Milvus IVF), ``probes`` (pgvector IVFFlat) or ``ef`` (Qdrant)."""
    candidates: tuple[int, ...] = Field(min_length=1, max_length=32)
    """Values tried, each at least 1; the smallest that meets the gates is chosen."""
    k: int = Field(default=10, ge=1, le=1000)
    """Neighbours per query for recall@k (each mirrored read is searched with this k)."""
    min_recall: float = Field(default=0.95, ge=0.0, le=1.0)
    """Recall@k against the exact answer over the target's store, at least (judged on its 95%
    interval: one across the threshold leaves it to the point estimate)."""
    max_p99_ms: float | None = Field(default=None, gt=0.0)
    """p99 latency of the candidate's searches, at most (none: no latency gate); it fails only
    when its whole interval lies above, as the other latency gates."""
    sample: int = Field(default=200, ge=10, le=10_000)
    """Mirrored query vectors kept in the catalog for the ground truth, at most."""
    min_samples: int = Field(default=50, ge=1)
    """Mirrored queries needed to judge a candidate (fewer: none is chosen)."""

    @model_validator(mode="after")
    def _distinct(self) -> Self:
        if any(v < 1 for v in self.candidates):
            raise ValueError(f"tuning candidates must be at least 1, got {list(self.candidates)}")
        if len(set(self.candidates)) != len(self.candidates):
            raise ValueError(f"tuning candidates must be distinct, got {list(self.candidates)}")
        if self.min_samples > self.sample:
            raise ValueError(
                f"tuning.min_samples ({self.min_samples}) exceeds tuning.sample ({self.sample})"
            )
        return self


class OnlinePolicy(_Model):
    """How an online migration keeps the collection serving while it moves."""

    settle_seconds: float = Field(default=2.0, ge=0.0)
    """Routers re-read the routing row at least this often; the workflow waits this long after
    a routing change before relying on every router having seen it."""
    max_catchup_lag: int = Field(default=1_000, ge=0)
    """CATCHING_UP ends when the target is at most this many log entries behind (and a last
    pass has applied everything up to the head it saw)."""
    shadow: ShadowPolicy = Field(default_factory=ShadowPolicy)
    ramp: RampPolicy = Field(default_factory=RampPolicy)
    on_breach: Literal["pause", "rollback"] = "pause"
    """A shadow or ramp gate that fails: pause for an operator, or roll back by itself."""
    capture: Literal["auto", "on", "off"] = "auto"
    """Writes the application makes to an adopted PostgreSQL table with plain SQL, bypassing
    the router: captured by a trigger into a change table from before the snapshot, replayed
    onto the target by the catch-up, before the cut-over and at the finalize, and removed at
    the end (finalize, rollback, abort). ``auto`` captures when the source is a pgvector
    ``table`` and the embedding model stays; ``on`` requires it; ``off`` leaves the table
    alone (then only writes through the router reach the target)."""
    tuning: TuningPolicy | None = None
    """Candidate values of the target index's search parameter, tried on mirrored live reads
    during SHADOWING; the cheapest that meets the gates serves the target (none: the index's
    own value)."""


class ReembedPolicy(_Model):
    """A migration to a new embedding model: how the target's vectors are made from the records'
    texts, and how reads are served meanwhile.

    By default the old version keeps serving, its queries embedded by the old model, until the
    new version passes its gates. When the old model can no longer run (marked unavailable in
    the registry), ``adapter`` fits a map from the new model's space to the old one on
    ``adapter_samples`` records before the backfill starts, so queries embedded by the new model
    can be served from the old index until the cut-over.
    """

    batch_size: int = Field(default=256, ge=1, le=100_000)
    """Texts per model call."""
    adapter: Literal["none", "procrustes", "ridge"] = "none"
    """The map fitted from the new model's space to the old one's, when the old model is
    retired."""
    adapter_samples: int = Field(default=2_000, ge=10, le=1_000_000)
    """Records embedded by both models to fit the adapter."""
    ridge_alpha: float = Field(default=1.0, ge=0.0)
    """Regularisation of the ``ridge`` adapter."""
    task_queries: int = Field(default=200, ge=0, le=100_000)
    """Known-item queries (the first ``query_words`` words of a record's text, the record the
    expected answer) for the read-options report; 0 switches the report off."""
    query_words: int = Field(default=12, ge=1, le=1_000)
    """Words of a record's text that make its known-item query."""


class RegionSpec(_Model):
    """One region of a regional migration: where its data lives and who may touch it.

    Its children run on ``task_queue`` (default ``vecmigrate-<name>``), polled only by that
    region's workers (``vecmigrate worker --region NAME``) with the region's own catalog.
    ``source_store``/``target_store``/``target_index`` default to the spec's; every store a
    region reads or writes must sit in one of ``allowed_locations`` (default: ``location``).
    """

    name: Name
    location: str = Field(min_length=1, max_length=64)
    """Where the region's data lives; stores without a ``location`` of their own are here."""
    allowed_locations: tuple[str, ...] = ()
    """Where the region's stores may be (default: ``location`` alone)."""
    task_queue: str | None = Field(default=None, min_length=1, max_length=200)
    source_store: StoreRef | None = None
    target_store: StoreRef | None = None
    target_index: IndexSpec | None = None
    """This region's target index, when its parameters differ (another memory budget, say)."""

    def allowed(self) -> tuple[str, ...]:
        return self.allowed_locations or (self.location,)


class DivergenceBound(_Model):
    """How far two regions' copies of the target may differ before the global cut-over.

    Each region's copy is compared with the reference region's (the first region, the canary)
    record by record (ids missing on either side, records whose vector or payload differs) and
    by the overlap of their answers: the top ``k`` of each region's own copy for the vectors of
    ``queries`` records drawn from the reference region. Over either bound the cut-over is held
    for an operator (``approve_cutover`` goes on anyway, ``rollback`` ends all).
    """

    max_differing_share: float = Field(default=0.0, ge=0.0, le=1.0)
    """Largest share of records (of the larger copy) allowed to be missing, extra or different;
    0 allows none."""
    min_overlap: float = Field(default=0.99, ge=0.0, le=1.0)
    """Smallest mean overlap@k of the two copies' answers on the query sample."""
    queries: int = Field(default=100, ge=0, le=10_000)
    """Records of the reference region whose vectors make the query sample (0: no overlap)."""
    k: int = Field(default=10, ge=1, le=1_000)
    """Neighbours compared per query."""
    max_listed: int = Field(default=20, ge=0, le=1_000)
    """Differing ids listed per kind (missing, extra, vector, payload) in the ledger."""


class RegionPolicy(_Model):
    """How a regional migration moves: the canary region alone first (until its gates pass),
    then the others, at most ``max_parallel`` regions at a time; a cut-over only after every
    region passed its gates, region by region in ``cutover_order`` (default: the spec's order)
    with ``pause_between_seconds`` between them. A region whose gates fail rolls back; the
    others then ``wait`` for an operator (``approve_cutover`` goes on without it) or roll back
    too (``rollback_all``)."""

    canary: bool = True
    """The first region moves alone until its gates pass."""
    max_parallel: int = Field(default=8, ge=1, le=64)
    """Regions moving at once after the canary."""
    cutover_order: tuple[Name, ...] | None = None
    pause_between_seconds: float = Field(default=0.0, ge=0.0)
    """Between two regions' cut-overs."""
    on_region_failure: Literal["wait", "rollback_all"] = "wait"
    divergence: DivergenceBound | None = None
    """Compare every region's copy with the first region's before the global cut-over and hold
    it when they differ beyond this bound (absent: no comparison)."""


class TenantLimits(_Model):
    """What one tenant's migration may take of shared workers and stores."""

    max_parallel_shards: int | None = Field(default=None, ge=1, le=64)
    """Shards of this tenant copied at once (instead of the spec's)."""
    max_vectors_per_second: float | None = Field(default=None, gt=0)
    """This tenant's copy throttle (instead of the spec's)."""


class RetentionPolicy(_Model):
    """How long the versions a migration leaves behind are kept before they are pruned.

    ``retired_seconds``: the source a completed migration retired (no longer written, kept for
    a migration back); ``abandoned_seconds``: the target a rollback or a failed gate abandoned.
    Each is a durable timer started when the version is left; at its end the version's records,
    native index and index artifacts are removed and a ledger entry says so, unless routing, a
    rollback window, a running migration or a schedule still needs it (then it is kept and the
    entry says why). ``None`` keeps the version until ``vecmigrate gc`` names it.
    """

    retired_seconds: float | None = Field(default=None, ge=0.0)
    """Seconds a retired source is kept (none: until ``vecmigrate gc`` names it)."""
    abandoned_seconds: float | None = Field(default=None, ge=0.0)
    """Seconds an abandoned target is kept (none: until ``vecmigrate gc`` names it)."""


class LatencyBudget(_Model):
    """A latency budget for live traffic: the migration keeps the search p99 the routers
    measure (a gateway: its whole search requests) within the budget by slowing itself
    (pausing between copy, catch-up and check batches and between the gates' stages, fewer
    index build threads, fewer shadow reads mirrored), down to ``min_rate_share`` of its full
    pace, and speeds up again when the latency allows; the copy, the build, the shard checks
    and the gates also run at a lower CPU priority (``nice``). Set ``max_p99_ratio``
    (against the idle p99 the routers published before the migration's work began),
    ``max_search_p99_ms``, or both (the lower wins)."""

    max_p99_ratio: float | None = Field(default=None, ge=1.0)
    """The search p99 may be at most this times the idle p99 (for example 1.5)."""
    max_search_p99_ms: float | None = Field(default=None, gt=0.0)
    """The search p99 may be at most this many milliseconds."""
    min_rate_share: float = Field(default=0.05, gt=0.0, le=1.0)
    """The slowest the migration goes: this share of its full pace (it never stops)."""
    nice: int = Field(default=10, ge=0, le=19)
    """How much lower the CPU priority of the copy, the index build, the shard checks and
    the gates is while a budget is set (added to the worker's nice value, as ``nice`` does; 0
    leaves it): with the cores contended, the scheduler gives the serving processes their time
    first. Linux only (the priority of one thread, which the threads it starts inherit)."""

    @model_validator(mode="after")
    def _some_limit(self) -> LatencyBudget:
        if self.max_p99_ratio is None and self.max_search_p99_ms is None:
            raise ValueError(
                "budget needs max_p99_ratio (against the idle p99) or max_search_p99_ms; "
                "leave budget out for no budget"
            )
        return self


class MigrationSpec(_Model):
    """One migration of one collection in one tenant, from a source version to a target."""

    api_version: Literal["vecmigrate/v1"] = "vecmigrate/v1"
    id: Name | None = None
    """The migration's id (and workflow id); by default derived from tenant, collection and
    versions, so starting the same spec twice finds the running migration."""
    tenant: Name = "default"
    collection: Name
    strategy: str = Field(default="blue_green", json_schema_extra={"enum": list(STRATEGIES)})
    """Which phases run, from the lifecycle table: each strategy and its phases are in the
    README's concepts and docs/concepts.md."""
    source: VersionSpec
    """The version serving today, as registered in the catalog."""
    target: VersionSpec
    """The version to build; its name must be new in the collection."""
    records: Literal["copy", "shared"] = "copy"
    """``copy``: the target version gets its own copy of the records. ``shared``: the target
    reads the source's records where they are and only its index is built, for a change of the
    index alone (IVF to HNSW, new parameters) in the built-in store: the same store and
    embedding. The copy's pass still reads every shard (the streamed checks, the gate's ground
    truth) and writes nothing, the record-by-record comparison has nothing to compare, a write
    to either version is made once, and dropping a version never drops records another one
    reads."""
    shards: ShardLayout = Field(default_factory=ShardLayout)
    batch_size: int = Field(default=10_000, ge=1, le=1_000_000)
    """Records per copy batch: one transaction (under a ``budget``, on SQLite, turns of about
    10 ms each, so that an application's writes wait for a turn rather than a batch), one
    journal write, one heartbeat. A crash re-copies at most one batch. Why 10,000
    (``bench/tuning.py``, 200,000 x 128 on the built-in store): 1,000 copied 46,000
    vectors/s, 5,000 and 10,000 65-80,000/s (within the noise of each other), 50,000
    88,000/s, while a kill, a pause and a throttle change each wait for or redo up to a whole
    batch: past 10,000 the gain is small next to that."""
    max_parallel_shards: int = Field(default=2, ge=1, le=64)
    """Shards copied at once (and built at once, where builds overlap the copy). Bounded so
    that draining the window before a continue-as-new stays well under Temporal's history
    limits."""
    max_vectors_per_second: float | None = Field(default=None, gt=0)
    """Copy throttle over all shards together; change it while running with ``set_throttle``."""
    heartbeat_seconds: float = Field(default=30.0, ge=1.0, le=600.0)
    """A worker that stops heartbeating for this long is presumed dead and its shard moves to
    another worker (from its last committed batch)."""
    gates: GatePolicy = Field(default_factory=GatePolicy)
    quarantine: QuarantinePolicy = Field(default_factory=QuarantinePolicy)
    cutover: CutoverPolicy = Field(default_factory=CutoverPolicy)
    online: OnlinePolicy = Field(default_factory=OnlinePolicy)
    """Used by ``strategy: online``."""
    reembed: ReembedPolicy = Field(default_factory=ReembedPolicy)
    """Used when the target's embedding model differs from the source's."""
    regions: tuple[RegionSpec, ...] = ()
    """Regional migrations: one child per region (and tenant), a barrier before the cut-over."""
    region_policy: RegionPolicy = Field(default_factory=RegionPolicy)
    tenants: tuple[Name, ...] | Literal["all"] | None = None
    """Tenants migrated: none is ``tenant`` alone; a list, or ``all`` tenants that hold the
    collection (found in each region's catalog). Each gets its own child migration."""
    tenant_limits: dict[Name, TenantLimits] = Field(default_factory=dict)
    """Per-tenant limits, by tenant name."""
    region: Name | None = None
    """Set by a regional parent on its children: the region this migration's data lives in."""
    schedule: SchedulePolicy | None = None
    """A template for a Temporal Schedule: what each firing migrates, and when it fires."""
    windows: MaintenanceWindows | None = None
    """When the heavy phases (copy, build) may run; outside, the migration waits on a timer."""
    retention: RetentionPolicy | None = None
    """When the versions this migration leaves behind are pruned."""
    budget: LatencyBudget | None = None
    """A latency budget for live searches the migration adapts its pace to: the copy, the
    catch-up, the index build, the shard checks, the gates and the shadow reads (none: they
    run at full pace, as throttled by ``max_vectors_per_second``)."""

    @property
    def regional(self) -> bool:
        """Whether this spec fans out into child migrations (regions or several tenants)."""
        return bool(self.regions) or self.tenants is not None

    @property
    def model_change(self) -> bool:
        """Whether the target is made by another embedding model (a re-embedding migration)."""
        src, dst = self.source.embedding, self.target.embedding
        return (src.model_id, src.model_version) != (dst.model_id, dst.model_version)

    @model_validator(mode="after")
    def _coherent(self) -> MigrationSpec:
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"strategy {self.strategy!r} is not available in this release; "
                f"use one of {', '.join(STRATEGIES)}"
            )
        if self.strategy == "shadow_only" and (self.regions or self.tenants is not None):
            raise ValueError(
                "strategy shadow_only never switches reads, so it has no barrier for regions "
                "or tenants to meet at: start one shadow_only migration per region and tenant"
            )
        if self.source.name == self.target.name:
            raise ValueError(
                f"source and target are both version {self.source.name!r}; "
                "give the target a new version name"
            )
        src, dst = self.source.embedding, self.target.embedding
        if self.model_change:
            if self.gates.query_log:
                raise ValueError(
                    "gates.query_log holds vectors of the source model, which the new model's "
                    "index cannot be searched with; leave it out (queries are sampled from "
                    "the records and embedded by each model)"
                )
        elif src.dimension != dst.dimension:
            raise ValueError(
                f"target.embedding.dimension is {dst.dimension} but the source model "
                f"{src.model_id} makes {src.dimension}-dimensional vectors; "
                "a new dimension needs a new embedding model"
            )
        elif self.reembed.adapter != "none":
            raise ValueError(
                "reembed.adapter maps between two embedding models, but source and target use "
                f"the same model ({src.model_id}@{src.model_version}); leave it out"
            )
        if not self.model_change and src.normalized and not dst.normalized:
            raise ValueError(
                "target.embedding.normalized is false but the source vectors are normalised; "
                "norms cannot be recovered: set target.embedding.normalized to true"
            )
        idx = self.target.index
        for side, version in (("source", self.source), ("target", self.target)):
            if is_native(version.index) and not version.index.kind.startswith(
                version.store.kind + "_"
            ):
                raise ValueError(
                    f"{side}.index.kind {version.index.kind} is built by "
                    f"{version.index.kind.split('_')[0]}, but {side}.store is "
                    f"{version.store.kind}: use a FAISS/hnswlib index kind or that store"
                )
        self._check_regions()
        if self.online.capture == "on":
            problem = self._capture_problem()
            if problem is not None:
                raise ValueError(
                    f"online.capture is on, but {problem}: set online.capture to auto or off"
                )
        self._check_stable_name()
        self._check_tuning()
        self._check_shared_records()
        if isinstance(idx, FaissIvfPq | MilvusIvfPq) and dst.dimension % idx.m != 0:
            raise ValueError(
                f"target.index.m ({idx.m}) must divide the dimension ({dst.dimension}); "
                "pick m among its divisors"
            )
        if self.schedule is not None:
            if self.regional or self.region is not None:
                raise ValueError(
                    "schedule: a scheduled spec migrates one tenant's collection in one place; "
                    "schedule one spec per region and tenant"
                )
            if self.id is not None:
                raise ValueError(
                    "schedule: every firing gets its own migration id (from its fresh target "
                    "version); leave id out"
                )
        return self

    def _check_shared_records(self) -> None:
        """A target that reads the source's records changes the index alone, beside them."""
        if self.records != "shared":
            return
        problem = None
        if self.target.store.kind != "builtin":
            problem = (
                f"target.store is {self.target.store.kind}, which keeps each version's records "
                "apart (the built-in store alone lets versions share them)"
            )
        elif self.target.store != self.source.store:
            problem = "target.store differs from source.store (the target reads the source's)"
        elif self.target.embedding != self.source.embedding:
            problem = (
                "target.embedding differs from source.embedding (shared records keep their "
                "vectors: the same model, dimension, metric and normalisation)"
            )
        elif self.regional or self.region is not None:
            problem = "a regional migration copies each region's records"
        elif self.quarantine.max_payload_bytes is not None:
            problem = "quarantine.max_payload_bytes leaves records out, which the target reads"
        if problem is not None:
            raise ValueError(f"records: shared, but {problem}; or use records: copy")

    def _check_tuning(self) -> None:
        """Tuning candidates are values of the target index's own search parameter, each one
        the index kind accepts, tried during a SHADOWING phase the strategy has."""
        tuning = self.online.tuning
        if tuning is None:
            return
        idx = self.target.index
        param = SEARCH_PARAMETERS.get(idx.kind)
        if param is None:
            raise ValueError(
                f"online.tuning: target.index.kind {idx.kind} has no search parameter to tune "
                "(an exact index searches everything); leave online.tuning out"
            )
        if tuning.parameter != param:
            raise ValueError(
                f"online.tuning.parameter {tuning.parameter} is not a search parameter of "
                f"target.index.kind {idx.kind}; its search parameter is {param}"
            )
        if Phase.SHADOWING not in LIFECYCLE[self.strategy].phases:
            raise ValueError(
                f"online.tuning tries candidates on mirrored reads during SHADOWING, which "
                f"strategy {self.strategy} does not have: use strategy online or shadow_only"
            )
        for value in tuning.candidates:
            try:
                type(idx).model_validate({**idx.model_dump(), param: value})
            except ValidationError as exc:
                problem = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
                raise ValueError(
                    f"online.tuning candidate {param}={value} is not valid for "
                    f"{idx.kind}: {problem}"
                ) from None

    def _check_stable_name(self) -> None:
        """A stable name is switched inside one engine: source and target on the same
        deployment, one that has aliases or views, and the name none of their own tables or
        collections."""
        name = self.cutover.stable_name
        if name is None:
            return
        src, dst = self.source.store, self.target.store
        if src.kind != dst.kind or src.kind == "builtin":
            raise ValueError(
                f"cutover.stable_name needs source and target on one Qdrant, Milvus or "
                f"PostgreSQL deployment; the source is {src.kind} and the target {dst.kind}: "
                "switch applications through the router or gateway instead, or leave it out"
            )
        at = {side: _deployment(ref) for side, ref in (("source", src), ("target", dst))}
        if at["source"] != at["target"]:
            raise ValueError(
                f"cutover.stable_name: the source is at {at['source']} and the target at "
                f"{at['target']}; an alias or a view points within one deployment, so both "
                "must be on the same one"
            )
        if isinstance(src, MilvusStoreRef) and not src.uri.startswith(
            ("http://", "https://", "tcp://", "grpc://")
        ):
            raise ValueError(
                f"cutover.stable_name: the Milvus store is the embedded milvus-lite engine "
                f"({src.uri}), which has no aliases; a Milvus server (https://host:19530) has"
            )
        if self.regional or self.region is not None:
            raise ValueError(
                "cutover.stable_name is one name in one deployment: it cannot be switched by "
                "every region or tenant of a regional migration; set it on a single migration"
            )
        if self.strategy == "shadow_only":
            raise ValueError("cutover.stable_name: strategy shadow_only never switches reads")
        if named(dst) == name:
            raise ValueError(
                f"cutover.stable_name {name} is the target's own table or collection; name "
                "the target's something else (the stable name points at it)"
            )
        if named(src) == name:
            raise ValueError(
                f"cutover.stable_name {name} is the source's own table or collection; "
                + (
                    f"name the table it is renamed to in source.store.table (`vecmigrate "
                    f"stable-name prepare` renames {name} and creates the view {name} over it)"
                    if src.kind == "pgvector"
                    else "collections cannot be renamed: give applications a new name, an "
                    "alias `vecmigrate stable-name prepare` creates over the source"
                )
            )
        if self.captures_writes:
            # After the cut-over applications write by the name into the target; those writes
            # are captured and replayed onto the source, so a rollback after the cut-over keeps
            # them. That needs rows that map back unchanged, and a source vecmigrate may write.
            if self.target.embedding.normalized and not self.source.embedding.normalized:
                raise ValueError(
                    f"cutover.stable_name {name} with online.capture: the target normalises "
                    "the source's vectors, so the writes applications make by the name into the "
                    "target after the cut-over cannot be replayed back onto the source, and a "
                    "rollback after the cut-over would lose them; set online.capture to off "
                    "(and send writes through the router) or leave the vectors as they are"
                )
            if not src.writable:
                raise ValueError(
                    f"cutover.stable_name {name} with online.capture: the writes applications "
                    "make by the name into the target after the cut-over are replayed onto the "
                    "source (so a rollback after the cut-over keeps them), which needs "
                    "source.store.writable: true"
                )

    def _check_regions(self) -> None:
        """Residency and tenant scope, before anything runs."""
        names = [r.name for r in self.regions]
        if len(set(names)) != len(names):
            raise ValueError(f"region names must be distinct, got {names}")
        order = self.region_policy.cutover_order
        if order is not None and sorted(order) != sorted(names):
            raise ValueError(
                f"region_policy.cutover_order {list(order)} must name each region once: {names}"
            )
        if self.region is not None and self.regional:
            raise ValueError("region is set on a region's own migration, not with regions")
        if self.region_policy.divergence is not None and len(names) < 2:
            raise ValueError(
                "region_policy.divergence compares regions' copies with each other: name at "
                f"least two regions (the spec names {len(names)})"
            )
        scope = set(self.tenants) if isinstance(self.tenants, tuple) else None
        if self.tenants is None:
            scope = {self.tenant}
        if isinstance(self.tenants, tuple) and not self.tenants:
            raise ValueError("tenants is empty; name at least one tenant, or 'all'")
        unknown = sorted(set(self.tenant_limits) - scope) if scope is not None else []
        if unknown:
            raise ValueError(
                f"tenant_limits names {unknown}, outside the migration's tenants "
                f"{sorted(scope or [])}; a migration may not touch tenants it does not name"
            )
        for region in self.regions:
            stores = (
                ("source", region.source_store or self.source.store),
                ("target", region.target_store or self.target.store),
            )
            for side, store in stores:
                where = store.location or region.location
                if where not in region.allowed():
                    raise ValueError(
                        f"region {region.name}: the {side} store is in {where}, but the region "
                        f"allows data only in {list(region.allowed())}; residency forbids it"
                    )
                if store.tenants is not None and scope is not None:
                    outside = sorted(scope - set(store.tenants))
                    if outside:
                        raise ValueError(
                            f"region {region.name}: the {side} store holds only tenants "
                            f"{list(store.tenants)}, but the migration covers {outside}; "
                            "it would cross tenants"
                        )
        if not self.regions:
            for side, store in (("source", self.source.store), ("target", self.target.store)):
                if store.tenants is not None and scope is not None and scope - set(store.tenants):
                    raise ValueError(
                        f"{side}.store holds only tenants {list(store.tenants)}, but the "
                        f"migration covers {sorted(scope)}; it would cross tenants"
                    )

    @property
    def captures_writes(self) -> bool:
        """Whether this migration captures the writes made to its adopted PostgreSQL source
        with plain SQL (see ``online.capture``)."""
        return self.online.capture != "off" and self._capture_problem() is None

    def _capture_problem(self) -> str | None:
        """Why writes to the source cannot be captured, or None when they can."""
        if self.strategy != "online":
            return f"strategy {self.strategy} does not catch up (only online does)"
        store = self.source.store
        if not isinstance(store, PgvectorStoreRef) or store.table is None:
            return "the source is not a PostgreSQL table adopted with source.store.table"
        if self.model_change:
            return (
                "the target is re-embedded from texts kept in the catalog, which a write to "
                "the table does not change"
            )
        return None

    @property
    def migration_id(self) -> str:
        """Deterministic id: starting the same migration twice finds the running one."""
        if self.id:
            return self.id
        return f"{self.tenant}.{self.collection}.{self.source.name}-to-{self.target.name}"

    def spec_hash(self) -> str:
        """SHA-256 of the canonical JSON of the spec (see :func:`canonical`)."""
        return hashlib.sha256(canonical(self).encode()).hexdigest()


# Fields added after the first release, by model: left out of the canonical form while they hold
# their default, so the hash of every spec written before them stays what it was (running
# migrations load their spec by that hash) and a spec that uses none of them hashes as before.
ADDED_FIELDS: dict[type[BaseModel], frozenset[str]] = {
    FaissFlat: frozenset({"encoding"}),
    FaissIvfFlat: frozenset({"encoding"}),
    FaissHnsw: frozenset({"encoding"}),
    PgvectorHnsw: frozenset(
        {"precision", "maintenance_work_mem", "parallel_workers", "lock_timeout_seconds"}
    ),
    PgvectorIvfflat: frozenset(
        {"precision", "maintenance_work_mem", "parallel_workers", "lock_timeout_seconds"}
    ),
    QdrantHnsw: frozenset({"quantization", "product_compression", "rescore", "oversampling"}),
    MigrationSpec: frozenset(
        {"schedule", "windows", "retention", "quarantine", "budget", "records"}
    ),
    LatencyBudget: frozenset({"nice"}),
    GatePolicy: frozenset({"half_width", "deep"}),
    OnlinePolicy: frozenset({"capture", "tuning"}),
    CutoverPolicy: frozenset({"stable_name"}),
    RegionPolicy: frozenset({"divergence"}),
    BuiltinStoreRef: frozenset({"password", "tls", "writable"}),
    PgvectorStoreRef: frozenset(
        {"password", "tls", "table", "id_column", "vector_columns", "payload_columns", "writable"}
    ),
    MilvusStoreRef: frozenset({"token", "tls", "collection", "vector_fields", "writable"}),
    QdrantStoreRef: frozenset(
        {"url", "api_key", "collection", "vectors", "payload_kinds", "writable"}
    ),
}


# Fields whose default changed, with the default they had before: a spec applied before the
# change was parsed with the old one (and stored with it, so its hash holds), while the same
# file parsed today takes the new one. See :func:`as_applied_before`.
CHANGED_DEFAULTS: dict[str, Any] = {
    "gates.max_recall_drop": None,
    "gates.max_p99_ratio": None,
}


def as_applied_before(spec: MigrationSpec, recorded: MigrationSpec) -> MigrationSpec:
    """``spec`` (a file parsed today) as it would have parsed when ``recorded`` was applied:
    each field of :data:`CHANGED_DEFAULTS` that holds today's default in ``spec`` and the old
    default in ``recorded`` takes the old one (a file that never set it). Then an unchanged
    file hashes as it did when applied."""
    gates = spec.gates
    update: dict[str, Any] = {}
    for path, before in CHANGED_DEFAULTS.items():
        name = path.removeprefix("gates.")
        field = GatePolicy.model_fields[name]
        if getattr(gates, name) == field.get_default() and getattr(recorded.gates, name) == before:
            update[name] = before
    if not update:
        return spec
    return spec.model_copy(update={"gates": gates.model_copy(update=update)})


def _without_added(model: BaseModel, data: Any) -> Any:
    """``data`` (``model`` dumped as JSON) less the added fields that hold their default."""
    if not isinstance(data, dict):
        return data
    added = ADDED_FIELDS.get(type(model), frozenset())
    kept: dict[str, Any] = {}
    for name, value in data.items():
        field = type(model).model_fields.get(name)
        attr = getattr(model, name, None)
        if (
            name in added
            and field is not None
            and attr == field.get_default(call_default_factory=True)
        ):
            continue
        if isinstance(attr, BaseModel):
            value = _without_added(attr, value)
        elif isinstance(attr, tuple | list) and isinstance(value, list):
            value = [
                _without_added(a, v) if isinstance(a, BaseModel) else v
                for a, v in zip(attr, value, strict=True)
            ]
        kept[name] = value
    return kept


def canonical(model: BaseModel) -> str:
    """The canonical JSON of a spec or one of its parts: sorted keys, no spaces, and the fields
    added after the first release left out while they hold their default."""
    data = _without_added(model, model.model_dump(mode="json"))
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


_FIX_HINTS = {
    "missing": "add this field",
    "extra_forbidden": "remove it or check its spelling",
    "union_tag_invalid": "",
    "union_tag_not_found": "add a 'kind' field",
}


def _format_errors(err: ValidationError) -> list[str]:
    problems = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
        # pydantic adds the union member's tag to the location; it only adds noise here.
        loc = ".".join(p for p in loc.split(".") if p not in INDEX_KINDS + STORE_KINDS)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "union_tag_invalid":
            tag = e.get("ctx", {}).get("tag")
            expected = e.get("ctx", {}).get("expected_tags", "")
            msg = f"unknown kind {tag!r}; use one of {expected}"
        hint = _FIX_HINTS.get(e["type"])
        where = loc or "spec"
        problems.append(f"{where}: {msg}" + (f" ({hint})" if hint else ""))
    return problems


def parse_spec(data: Any) -> MigrationSpec:
    """Validate a mapping into a spec.

    Raises:
        SpecError: naming each invalid field and how to fix it.
    """
    if not isinstance(data, dict):
        raise SpecError(["spec: expected a mapping of fields, got " + type(data).__name__])
    try:
        return MigrationSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(_format_errors(err)) from None


def load_spec(path: str | Path) -> MigrationSpec:
    """Load a spec from a YAML or JSON file (JSON is YAML, so one parser reads both)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise SpecError([f"cannot read spec file {p}: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError([f"{p} is not valid YAML or JSON: {exc}"]) from None
    return parse_spec(data)
