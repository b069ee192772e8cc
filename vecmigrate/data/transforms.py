"""Transforms applied to vectors on their way from the source to the target version."""

from __future__ import annotations

from collections.abc import Callable

from vecmigrate.model.spec import EmbeddingSchema
from vecmigrate.records.vectors import Vectors, normalize_rows

Transform = Callable[[Vectors], Vectors]


def identity(x: Vectors) -> Vectors:
    """Vectors unchanged."""
    return x


def make_transform(source: EmbeddingSchema, target: EmbeddingSchema) -> tuple[str, Transform]:
    """The transform from source to target vectors and its name (for the ledger).

    Within one model the only transform is normalisation; a change of model is not a transform
    of vectors but a re-embedding of texts (``vecmigrate.embedding.reembed``).
    """
    if target.normalized and not source.normalized:
        return "normalize", normalize_rows
    return "identity", identity
