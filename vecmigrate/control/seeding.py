"""A spec's source version made from demo data, so that an example spec can be planned and run.

``vecmigrate seed --for SPEC`` creates the version the spec migrates from, in the store, with the
model, dimension and index the spec names: GloVe vectors when the spec's model is GloVe 6B 50d,
otherwise a clustered Gaussian mixture of the spec's dimension; for a spec whose source model is
registered (a model change), the docstrings of the standard library embedded by that model, kept
as the records' texts.
"""

from __future__ import annotations

from dataclasses import dataclass

from vecmigrate.catalog.catalog import Catalog
from vecmigrate.config import resolve_store
from vecmigrate.data.datasets import clustered, glove, glove_available, stdlib_docstrings
from vecmigrate.data.seed import SeedProgress, seed_collection, sequential_ids
from vecmigrate.embedding.registry import Registry
from vecmigrate.errors import PreconditionError
from vecmigrate.model.spec import MigrationSpec, VersionSpec

GLOVE_MODEL = "glove-6b-50d"


@dataclass(frozen=True)
class Seeded:
    """What was seeded, for the command's message."""

    tenant: str
    collection: str
    version: VersionSpec
    count: int
    data: str


def seed_spec_source(
    catalog: Catalog,
    spec: MigrationSpec,
    size: int,
    *,
    shards: int = 4,
    actor: str = "seed",
    on_progress: SeedProgress | None = None,
) -> list[Seeded]:
    """Seed the source version ``spec`` migrates from (each tenant's, for a multi-tenant spec).

    A regional spec is seeded region by region by each region's own ``seed`` (its stores and
    catalog are the region's): this refuses it.

    Raises:
        PreconditionError: a regional spec, or a model change whose source model is not
            registered (register it first: ``vecmigrate model fit-lsa`` or ``model add``).
    """
    if spec.tenants == "all":
        raise PreconditionError("tenants: all names no tenant to create; list the tenants to seed")
    if spec.regions:
        raise PreconditionError(
            "a regional spec's sources live in each region's own stores and catalog: seed each "
            "region with a spec of its own (its source_store) and that region's --catalog"
        )
    version = spec.source.model_copy(update={"store": resolve_store(spec.source.store)})
    emb = version.embedding
    texts: list[str] | None = None
    if spec.model_change:
        registry = Registry(catalog)
        if not registry.runnable(emb):
            raise PreconditionError(
                f"the source model {emb.model_id}@{emb.model_version} is not registered or not "
                "available; register it first (`vecmigrate model fit-lsa` or `model add`)"
            )
        texts = [t for _, t in stdlib_docstrings(limit=size)]
        vectors = registry.embedder(emb).embed(texts)
        data = f"{len(texts):,} standard-library docstrings embedded by {emb.model_id}"
    elif emb.model_id == GLOVE_MODEL and emb.dimension == 50 and glove_available():
        vectors, data = glove(size), "GloVe 6B 50d (real word vectors)"
    else:
        vectors = clustered(size, emb.dimension)
        data = f"a clustered Gaussian mixture, {emb.dimension}d"
    tenants = spec.tenants if isinstance(spec.tenants, tuple) else (spec.tenant,)
    seeded = []
    for tenant in tenants:
        result = seed_collection(
            catalog,
            tenant,
            spec.collection,
            version,
            sequential_ids(len(vectors)),
            vectors,
            shards=shards,
            actor=actor,
            on_progress=on_progress,
            texts=texts,
        )
        seeded.append(Seeded(tenant, spec.collection, version, result.count, data))
    return seeded
