"""Re-embedding: target vectors made from the records' texts by the new model, and transitional
adapters (linear maps from the new model's space to the old one's).

A migration to a new model copies ids, not vectors: each batch of the source's ids is looked up
in the collection's documents and embedded by the target's model. Catch-up does the same from the
texts in the change log.

The adapter serves reads while the old model can no longer run: a query embedded by the new model
is mapped into the old space and searched in the old index. Two fits on paired samples (the same
records embedded by both models):

* ``procrustes``: centre and scale both sides, then the orthogonal (semi-orthogonal when the
  dimensions differ) map that best rotates one onto the other (SVD of the cross-covariance),
  with the least-squares scale after it;
* ``ridge``: regularised least squares from the centred new vectors to the centred old ones.

Neither recovers what the new model sees and the old one does not; the gate report measures how
much each retains against serving with the old model.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vecmigrate.catalog.catalog import Catalog
from vecmigrate.catalog.changelog import ChangeLog
from vecmigrate.catalog.documents import Documents
from vecmigrate.config import resolve_store
from vecmigrate.embedding.embedders import Embedder, save_npz
from vecmigrate.embedding.registry import AdapterRecord, Registry, model_key
from vecmigrate.errors import DataError, NotFoundError, PreconditionError
from vecmigrate.indexes.build import artifact_dir
from vecmigrate.model.spec import EmbeddingSchema, MigrationSpec, store_ref
from vecmigrate.records.checksums import file_sha256
from vecmigrate.records.vectors import Ids, Vectors, normalize_rows
from vecmigrate.stores import Scope, VectorStore, open_store


def embed_in_batches(embedder: Embedder, texts: list[str], batch: int) -> Vectors:
    """Embed ``texts`` ``batch`` at a time (bounded memory in the model), in their order.

    Texts go to the model sorted by length: a transformer pads each batch to its longest text,
    and records arrive in the source's hash order, which mixes short and long ones.
    """
    if not texts:
        return np.empty((0, embedder.schema.dimension), np.float32)
    order = np.argsort(np.fromiter((len(t) for t in texts), np.int64, len(texts)), kind="stable")
    ranked = [texts[i] for i in order.tolist()]
    parts = [embedder.embed(ranked[i : i + batch]) for i in range(0, len(ranked), batch)]
    out = np.empty((len(texts), embedder.schema.dimension), np.float32)
    out[order] = np.concatenate(parts)
    return out


def untexted(
    log: ChangeLog, tenant: str, collection: str, ids: Ids, texts: list[str | None]
) -> tuple[Ids, Ids]:
    """Of records read from a store, those without text: ``(alive, gone)``.

    ``texts`` are the documents' texts of ``ids``, read after the ids. The router's delete
    removes a record's text in the change log's transaction and the stored vector just after,
    so a record read from the store in between has no text though nothing is missing: its latest
    change is a delete (read after the texts, it is already there). Those are ``gone``; the rest
    of the records without text are ``alive`` and truly lack it.
    """
    missing = np.asarray(
        [i for i, t in zip(np.asarray(ids).tolist(), texts, strict=True) if t is None], np.int64
    )
    if not missing.size:
        return missing, missing
    gone = log.deleted(tenant, collection, missing)
    return np.setdiff1d(missing, gone), gone


@dataclass
class Reembedder:
    """Makes a migration's target vectors from its records' texts."""

    spec: MigrationSpec
    embedder: Embedder
    documents: Documents
    log: ChangeLog
    texts: int = 0
    seconds: float = 0.0
    skipped: list[int] = field(default_factory=list)

    @classmethod
    def for_spec(cls, catalog: Catalog, spec: MigrationSpec) -> Reembedder:
        """Raises: NotFoundError/PreconditionError when the target model cannot run."""
        return cls(
            spec,
            Registry(catalog).embedder(spec.target.embedding),
            Documents(catalog),
            ChangeLog(catalog),
        )

    def records(self, ids: Ids) -> tuple[Ids, Vectors]:
        """The target vectors of these records, embedded from their texts.

        A record without text whose latest change is a delete is left out (the delete reached
        the documents before the source; the catch-up applies it to the target).

        Raises:
            DataError: a record still alive has no text.
        """
        ids = np.asarray(ids, np.int64)
        tenant, collection = self.spec.tenant, self.spec.collection
        texts = self.documents.get(tenant, collection, ids)
        alive, gone = untexted(self.log, tenant, collection, ids, texts)
        if alive.size:
            self.documents.require(tenant, collection, alive)
        if gone.size:
            keep = ~np.isin(ids, gone)
            self.skipped.extend(gone.tolist())
            ids = ids[keep]
            texts = [t for t, k in zip(texts, keep.tolist(), strict=True) if k]
        return ids, self.embed([t for t in texts if t is not None])

    def embed(self, texts: list[str]) -> Vectors:
        """Embed record texts with the target model, counting texts and time."""
        began = time.perf_counter()
        vectors = embed_in_batches(self.embedder, texts, self.spec.reembed.batch_size)
        self.seconds += time.perf_counter() - began
        self.texts += len(texts)
        return vectors


# -- transitional adapters ------------------------------------------------------------------------


@dataclass(frozen=True)
class LinearMap:
    """``y = ((x - x_mean) / x_scale) @ w * y_scale + y_mean``, unit length if ``normalize``."""

    method: str
    w: np.ndarray
    x_mean: np.ndarray
    y_mean: np.ndarray
    x_scale: float
    y_scale: float
    normalize: bool

    def __call__(self, x: Vectors) -> Vectors:
        y = ((np.asarray(x, np.float32) - self.x_mean) / self.x_scale) @ self.w
        y = (y * self.y_scale + self.y_mean).astype(np.float32)
        return normalize_rows(y) if self.normalize else y

    def save(self, path: Path) -> str:
        """Write the map to ``path`` (npz) and return its SHA-256."""
        meta = {
            "method": self.method,
            "x_scale": self.x_scale,
            "y_scale": self.y_scale,
            "normalize": self.normalize,
        }
        return save_npz(path, meta, w=self.w, x_mean=self.x_mean, y_mean=self.y_mean)

    @classmethod
    def load(cls, path: Path) -> LinearMap:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            return cls(
                method=meta["method"],
                w=data["w"],
                x_mean=data["x_mean"],
                y_mean=data["y_mean"],
                x_scale=float(meta["x_scale"]),
                y_scale=float(meta["y_scale"]),
                normalize=bool(meta["normalize"]),
            )


def fit_map(
    x: Vectors, y: Vectors, method: str, *, alpha: float = 1.0, normalize: bool = False
) -> LinearMap:
    """Fit a map from rows of ``x`` (new model) to the paired rows of ``y`` (old model).

    Raises:
        DataError: unpaired or too few samples, or an unknown method.
    """
    if x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise DataError(f"an adapter needs paired samples; got {x.shape[0]} and {y.shape[0]}")
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    mx, my = x64.mean(axis=0), y64.mean(axis=0)
    xc, yc = x64 - mx, y64 - my
    sx = float(np.sqrt(np.mean(np.sum(xc**2, axis=1)))) or 1.0
    sy = float(np.sqrt(np.mean(np.sum(yc**2, axis=1)))) or 1.0
    xs, ys = xc / sx, yc / sy
    if method == "procrustes":
        u, sv, vt = np.linalg.svd(xs.T @ ys, full_matrices=False)
        # The rotation, times the scale that fits best after it (when the dimensions differ,
        # the rotation drops part of each vector, so unit scale would shrink the output).
        rotation = u @ vt
        w = rotation * (sv.sum() / ((xs @ rotation) ** 2).sum())
    elif method == "ridge":
        w = np.linalg.solve(xs.T @ xs + alpha * np.eye(xs.shape[1]), xs.T @ ys)
    else:
        raise DataError(f"unknown adapter method {method!r}; use procrustes or ridge")
    return LinearMap(
        method,
        w.astype(np.float32),
        mx.astype(np.float32),
        my.astype(np.float32),
        sx,
        sy,
        normalize,
    )


# Added to the gate seed for the adapter's sample, so it differs from the gates' query sample.
_ADAPTER_SEED_OFFSET = 7


@dataclass(frozen=True)
class AdapterFit:
    """What an adapter is fitted from: the collection, the old version's records and model, the
    new model, and how (a spec's ``reembed`` policy, or the same fields from the command line)."""

    tenant: str
    collection: str
    source: VectorStore
    old: EmbeddingSchema
    new: EmbeddingSchema
    method: str
    samples: int = 2_000
    ridge_alpha: float = 1.0
    batch_size: int = 256
    seed: int = 0
    migration_id: str | None = None


def paired_sample(
    catalog: Catalog, fit: AdapterFit, embedder: Embedder
) -> tuple[Ids, Vectors, Vectors]:
    """``fit.samples`` records with their old vectors (from the source) and new ones (embedded
    now)."""
    ids, old = fit.source.sample(fit.samples, seed=fit.seed + _ADAPTER_SEED_OFFSET)
    texts = Documents(catalog).get(fit.tenant, fit.collection, ids)
    keep = np.asarray([t is not None for t in texts], bool)
    new = embed_in_batches(embedder, [t for t in texts if t is not None], fit.batch_size)
    return ids[keep], new, old[keep]


def fit_adapter(catalog: Catalog, fit: AdapterFit, directory: Path) -> AdapterRecord:
    """Fit a map from the new model's space to the old one's on the collection's records and
    register it for that collection. Idempotent: the same sample and method give the same file,
    hence the same adapter.

    Raises:
        PreconditionError: the new model cannot run, or too few records have text.
    """
    registry = Registry(catalog)
    embedder = registry.embedder(fit.new)
    began = time.perf_counter()
    ids, new, old = paired_sample(catalog, fit, embedder)
    if len(ids) < 10:
        raise PreconditionError(f"an adapter needs at least 10 records with text; found {len(ids)}")
    # Hold a fifth out to report the fit honestly.
    cut = max(1, len(ids) // 5)
    held_new, held_old = new[:cut], old[:cut]
    normalize = fit.old.normalized
    fitted = fit_map(new[cut:], old[cut:], fit.method, alpha=fit.ridge_alpha, normalize=normalize)
    mapped = fitted(held_new)
    figures: dict[str, Any] = {
        "samples": int(len(ids) - cut),
        "held_out": int(cut),
        "held_out_cosine": round(float(_row_cosine(mapped, held_old).mean()), 4),
        "held_out_rel_error": round(
            float(np.linalg.norm(mapped - held_old)) / max(float(np.linalg.norm(held_old)), 1e-12),
            4,
        ),
        "seconds": round(time.perf_counter() - began, 3),
    }
    final = fit_map(new, old, fit.method, alpha=fit.ridge_alpha, normalize=normalize)
    tmp = directory / f"adapter-{uuid.uuid4().hex}-{fit.method}.new.npz"
    digest = final.save(tmp)
    path = directory / f"adapter-{fit.method}-{digest[:16]}.npz"
    tmp.replace(path)
    return registry.register_adapter(
        fit.tenant,
        fit.collection,
        fit.new,
        fit.old,
        fit.method,
        str(path),
        digest,
        figures,
        migration_id=fit.migration_id,
    )


def fit_transition(
    catalog: Catalog, spec: MigrationSpec, source: VectorStore, directory: Path
) -> AdapterRecord:
    """The spec's adapter (new model -> old model) for the migrated collection: the one already
    fitted on it for these two models by the same method (an operator fitted it before retiring
    the old model, or an earlier attempt did), else a new fit."""
    policy = spec.reembed
    registry = Registry(catalog)
    for record in registry.adapters_into(spec.source.embedding, spec.tenant, spec.collection):
        if record.method == policy.adapter and record.from_model == model_key(
            spec.target.embedding
        ):
            return record
    fit = AdapterFit(
        tenant=spec.tenant,
        collection=spec.collection,
        source=source,
        old=spec.source.embedding,
        new=spec.target.embedding,
        method=policy.adapter,
        samples=policy.adapter_samples,
        ridge_alpha=policy.ridge_alpha,
        batch_size=policy.batch_size,
        seed=spec.gates.seed,
        migration_id=spec.migration_id,
    )
    return fit_adapter(catalog, fit, directory)


def fit_collection_adapter(
    catalog: Catalog,
    tenant: str,
    collection: str,
    new_model: str,
    method: str,
    *,
    samples: int = 2_000,
    ridge_alpha: float = 1.0,
) -> AdapterRecord:
    """Fit an adapter from ``new_model`` (``MODEL_ID@VERSION``) into the space of the version
    that serves ``tenant/collection``'s reads, on its records: what a collection needs before its
    model may be marked unavailable. A migration of the collection to ``new_model`` that asks
    for the same method uses this adapter instead of fitting another.

    Raises:
        NotFoundError: no such collection or model.
        PreconditionError: the new model cannot run, or too few records have text.
    """
    registry = Registry(catalog)
    view = catalog.get_routing(tenant, collection)
    if view is None or view.read_version is None:
        raise NotFoundError(f"{tenant}/{collection} has no version serving reads")
    record = catalog.find_version(tenant, collection, view.read_version)
    if record is None:
        raise NotFoundError(f"{tenant}/{collection}@{view.read_version} is not registered")
    model_id, _, version = new_model.rpartition("@")
    found = registry.find_model(model_id or new_model, version if model_id else "1")
    if found is None:
        raise NotFoundError(
            f"model {new_model} is not registered; register it with `vecmigrate model add` or "
            "`vecmigrate model fit-lsa`"
        )
    ref = resolve_store(store_ref(record.store))
    source = open_store(ref, Scope(tenant, collection, view.read_version))
    fit = AdapterFit(
        tenant=tenant,
        collection=collection,
        source=source,
        old=record.embedding,
        new=found.schema,
        method=method,
        samples=samples,
        ridge_alpha=ridge_alpha,
    )
    return fit_adapter(catalog, fit, artifact_dir(ref, tenant, collection, "adapters"))


def load_adapter(record: AdapterRecord) -> LinearMap:
    """An adapter's map, checked against its registered checksum.

    Raises:
        PreconditionError: the file is missing or changed.
    """
    path = Path(record.uri)
    if not path.exists() or file_sha256(path) != record.checksum:
        raise PreconditionError(f"adapter {record.id}: {path} is missing or changed")
    return LinearMap.load(path)


@dataclass(frozen=True)
class QueryPath:
    """How a query text reaches a version: which model embeds it, and the map after it."""

    embedder: Embedder
    adapter: LinearMap | None
    via: str

    def __call__(self, texts: list[str]) -> Vectors:
        """Search queries, in the version's space."""
        q = self.embedder.embed_queries(texts)
        return q if self.adapter is None else self.adapter(q)

    def records(self, texts: list[str]) -> Vectors:
        """Record texts (a write), in the version's space."""
        v = self.embedder.embed(texts)
        return v if self.adapter is None else self.adapter(v)


def query_path(
    registry: Registry, schema: EmbeddingSchema, tenant: str, collection: str
) -> QueryPath:
    """How to embed queries for ``tenant/collection``'s vectors of ``schema``: its own model if
    it can run, else an available model through an adapter fitted on that collection.

    Raises:
        PreconditionError: neither.
    """
    key = f"{schema.model_id}@{schema.model_version}"
    if registry.runnable(schema):
        return QueryPath(registry.embedder(schema), None, f"model {key}")
    record = registry.adapter_for(schema, tenant, collection)
    if record is not None:
        model_id, _, version = record.from_model.rpartition("@")
        found = registry.find_model(model_id, version)
        assert found is not None  # adapter_for checked it runs
        return QueryPath(
            registry.embedder(found.schema),
            load_adapter(record),
            f"adapter {record.method} {record.from_model}->{key}",
        )
    raise PreconditionError(
        f"model {key} cannot run and no adapter fitted on {tenant}/{collection} maps an "
        "available model into its space; re-enable the model or fit one (`vecmigrate model "
        "fit-adapter`)"
    )


def _row_cosine(a: Vectors, b: Vectors) -> np.ndarray:
    na = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    out: np.ndarray = (a * b).sum(axis=1) / np.maximum(na, 1e-12)
    return out
