"""Transforms applied to vectors on their way from the source to the target version."""

from __future__ import annotations

from collections.abc import Callable

from vecmigrate.indexes import Vectors, normalize_rows
from vecmigrate.spec import EmbeddingSchema

Transform = Callable[[Vectors], Vectors]


def _identity(x: Vectors) -> Vectors:
    return x


def make_transform(source: EmbeddingSchema, target: EmbeddingSchema) -> tuple[str, Transform]:
    """The transform from source to target vectors and its name (for the ledger).

    The spec already refuses model or dimension changes this release cannot make, so the only
    transform left is normalisation.
    """
    if target.normalized and not source.normalized:
        return "normalize", normalize_rows
    return "identity", _identity
