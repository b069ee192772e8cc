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
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vecmigrate.catalog.catalog import Catalog
from vecmigrate.catalog.changelog import ChangeLog
from vecmigrate.catalog.documents import Documents
from vecmigrate.embedding.embedders import Embedder, file_sha256
from vecmigrate.embedding.registry import AdapterRecord, Registry
from vecmigrate.errors import DataError, PreconditionError
from vecmigrate.model.spec import EmbeddingSchema, MigrationSpec
from vecmigrate.records.vectors import Ids, Vectors, normalize_rows
from vecmigrate.stores import VectorStore


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
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            w=self.w,
            x_mean=self.x_mean,
            y_mean=self.y_mean,
            meta=np.asarray(
                json.dumps(
                    {
                        "method": self.method,
                        "x_scale": self.x_scale,
                        "y_scale": self.y_scale,
                        "normalize": self.normalize,
                    }
                )
            ),
        )
        os.replace(tmp, path)
        return file_sha256(path)

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


def paired_sample(
    catalog: Catalog, spec: MigrationSpec, source: VectorStore, embedder: Embedder, n: int
) -> tuple[Ids, Vectors, Vectors]:
    """``n`` records with their old vectors (from the source) and new ones (embedded now)."""
    ids, old = source.sample(n, seed=spec.gates.seed + 7)
    texts = Documents(catalog).get(spec.tenant, spec.collection, ids)
    keep = np.asarray([t is not None for t in texts], bool)
    new = embed_in_batches(embedder, [t for t in texts if t is not None], spec.reembed.batch_size)
    return ids[keep], new, old[keep]


def fit_transition(
    catalog: Catalog, spec: MigrationSpec, source: VectorStore, directory: Path
) -> AdapterRecord:
    """Fit the spec's adapter (new model -> old model) and register it. Idempotent: the same
    sample and method give the same file, hence the same adapter.

    Raises:
        PreconditionError: the new model cannot run, or too few records have text.
    """
    policy = spec.reembed
    registry = Registry(catalog)
    embedder = registry.embedder(spec.target.embedding)
    began = time.perf_counter()
    ids, new, old = paired_sample(catalog, spec, source, embedder, policy.adapter_samples)
    if len(ids) < 10:
        raise PreconditionError(f"an adapter needs at least 10 records with text; found {len(ids)}")
    # Hold a fifth out to report the fit honestly.
    cut = max(1, len(ids) // 5)
    held_new, held_old = new[:cut], old[:cut]
    source_schema = spec.source.embedding
    fitted = fit_map(
        new[cut:],
        old[cut:],
        policy.adapter,
        alpha=policy.ridge_alpha,
        normalize=source_schema.normalized,
    )
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
    final = fit_map(
        new, old, policy.adapter, alpha=policy.ridge_alpha, normalize=source_schema.normalized
    )
    tmp = directory / f"adapter-{spec.migration_id}-{policy.adapter}.new.npz"
    digest = final.save(tmp)
    path = directory / f"adapter-{policy.adapter}-{digest[:16]}.npz"
    tmp.replace(path)
    return registry.register_adapter(
        spec.target.embedding,
        source_schema,
        policy.adapter,
        str(path),
        digest,
        figures,
        migration_id=spec.migration_id,
    )


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


def query_path(registry: Registry, schema: EmbeddingSchema) -> QueryPath:
    """How to embed queries for vectors of ``schema``: its own model if it can run, else an
    available model through a registered adapter.

    Raises:
        PreconditionError: neither.
    """
    key = f"{schema.model_id}@{schema.model_version}"
    if registry.runnable(schema):
        return QueryPath(registry.embedder(schema), None, f"model {key}")
    for record in registry.adapters_into(schema):
        model_id, _, version = record.from_model.rpartition("@")
        found = registry.find_model(model_id, version)
        if found is None or not found.available:
            continue
        return QueryPath(
            registry.embedder(found.schema),
            load_adapter(record),
            f"adapter {record.method} {record.from_model}->{key}",
        )
    raise PreconditionError(
        f"model {key} cannot run and no adapter maps an available model into its space; "
        "re-enable the model or migrate with reembed.adapter set"
    )


def _row_cosine(a: Vectors, b: Vectors) -> np.ndarray:
    na = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    out: np.ndarray = (a * b).sum(axis=1) / np.maximum(na, 1e-12)
    return out
