"""``vecmigrate inspect``: the inventory of an existing table or collection, and the spec
fragment that migrates it.

It reads, never writes: row count, id kind, vector fields with dimension and metric, the index
on each vector and its parameters, payload fields and kinds (sampled where the engine keeps no
schema), payload indexes, size on disk, a few records, and the ``source:`` a spec needs to adopt
it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from rich.console import Group
from rich.table import Table

from vecmigrate.errors import PreconditionError
from vecmigrate.indexes.sizes import tree_bytes
from vecmigrate.model.records import FieldKind
from vecmigrate.model.spec import (
    AnyStoreRef,
    BuiltinStoreRef,
    MilvusStoreRef,
    PgvectorStoreRef,
    QdrantStoreRef,
)
from vecmigrate.stores import Inventory, Scope, open_store
from vecmigrate.stores.base import INSPECTING
from vecmigrate.stores.builtin import BuiltinStore

ENGINES = ("pgvector", "qdrant", "milvus", "builtin")


def engine_of(url: str) -> str:
    """The engine a URL or path most likely names (``--engine`` settles the rest).

    Raises:
        PreconditionError: nothing in it says which engine.
    """
    if re.match(r"^postgres(ql)?(\+\w+)?://", url):
        return "pgvector"
    if url.startswith("sqlite:"):
        return "builtin"
    found = re.match(r"^https?://[^/:]+:(\d+)", url)
    if found and found.group(1) in ("6333", "6334"):
        return "qdrant"
    if found and found.group(1) == "19530":
        return "milvus"
    if url.endswith(".db") and not url.startswith("http"):
        return "milvus"
    if Path(url).is_dir():
        return "qdrant"
    raise PreconditionError(
        f"cannot tell which engine {url} is; name it with --engine ({', '.join(ENGINES)})"
    )


def store_reference(engine: str, url: str, name: str, *, secret: str | None = None) -> AnyStoreRef:
    """The store reference that reads ``name`` at ``url`` as a migration's source."""
    if engine == "pgvector":
        return PgvectorStoreRef(url=url, table=name)
    if engine == "qdrant":
        if url.startswith(("http://", "https://")):
            return QdrantStoreRef(url=url, collection=name, api_key=secret)
        return QdrantStoreRef(path=url, collection=name)
    if engine == "milvus":
        return MilvusStoreRef(uri=url, collection=name, token=secret)
    return BuiltinStoreRef(url=url)


def inspect(
    engine: str, url: str, name: str, *, secret: str | None = None, samples: int = 3
) -> tuple[Inventory, AnyStoreRef]:
    """The inventory of table or collection ``name`` (for the built-in store,
    ``TENANT/COLLECTION@VERSION``) and the store reference that adopts it.

    Raises:
        NotFoundError: it does not exist.
        PreconditionError: it cannot be read as records (no vector, an id of no usable type).
    """
    ref = store_reference(engine, url, name, secret=secret)
    if isinstance(ref, BuiltinStoreRef):
        found = re.match(r"^([^/@]+)/([^/@]+)@([^/@]+)$", name)
        if not found:
            raise PreconditionError(
                "name a version of the built-in store as TENANT/COLLECTION@VERSION"
            )
        assert ref.url is not None
        builtin = BuiltinStore.open(ref.url, Scope(*found.groups()))
        return builtin.inventory(samples), ref
    inventory = open_store(ref, INSPECTING).inventory(samples)
    if isinstance(ref, QdrantStoreRef) and inventory.sampled:
        # Pin what the sample found, so every reader of the source types its payload alike.
        kinds = {f.name: f.kind for f in inventory.schema.payload}
        ref = ref.model_copy(update={"payload_kinds": kinds})
    if isinstance(ref, QdrantStoreRef) and ref.path is not None:
        size = tree_bytes(Path(ref.path))
        inventory = Inventory(**{**inventory.__dict__, "size_bytes": size})
    return inventory, ref


def source_fragment(inventory: Inventory, ref: AnyStoreRef) -> dict[str, Any]:
    """The ``source:`` of a spec that migrates this table or collection (the embedding's model
    is the one thing to fill in)."""
    primary = inventory.schema.primary
    index = inventory.indexes.get(primary.name, {}).get("index")
    metric = inventory.indexes.get(primary.name, {}).get("metric") or primary.metric or "l2"
    if index is None or not str(index.get("kind", "")).startswith(ref.kind + "_"):
        index = {"kind": "faiss_flat"}
    store = ref.model_dump(mode="json", exclude_defaults=True)
    store["kind"] = ref.kind
    return {
        "name": "v1",
        "store": store,
        "embedding": {
            "model_id": os.environ.get("VECMIGRATE_MODEL_ID", "MODEL-THAT-MADE-THE-VECTORS"),
            "dimension": primary.dimension,
            "metric": metric,
        },
        "index": index,
    }


def as_json(inventory: Inventory, ref: AnyStoreRef) -> dict[str, Any]:
    """The inventory as JSON for tooling, with the spec fragment."""
    schema = inventory.schema
    return {
        "engine": inventory.engine,
        "name": inventory.name,
        "count": inventory.count,
        "id": {"name": schema.id_name, "kind": str(schema.id_kind)},
        "vectors": [
            {
                "name": v.name,
                "dimension": v.dimension,
                "dtype": v.dtype,
                "metric": inventory.indexes.get(v.name, {}).get("metric") or v.metric,
                "index": inventory.indexes.get(v.name, {}).get("index"),
            }
            for v in schema.vectors
        ],
        "payload": [
            {
                "name": f.name,
                "kind": str(f.kind),
                "native": f.native,
                "nullable": f.nullable,
                "index": inventory.payload_indexes.get(f.name),
            }
            for f in schema.payload
        ],
        "extra": schema.extra,
        "payload_sampled": inventory.sampled,
        "size_bytes": inventory.size_bytes,
        "samples": inventory.samples,
        "notes": inventory.notes,
        "source": source_fragment(inventory, ref),
    }


def inventory_tables(inventory: Inventory, ref: AnyStoreRef) -> Group:
    """The inventory for a terminal."""
    schema = inventory.schema
    size = (
        f"{inventory.size_bytes / 2**20:,.1f} MiB"
        if inventory.size_bytes is not None
        else "not reported by the engine"
    )
    head = Table(title=f"{inventory.engine} {inventory.name}", show_header=False)
    head.add_row("records", f"{inventory.count:,}")
    head.add_row("id", f"{schema.id_name} ({schema.id_kind})")
    head.add_row("size on disk", size)
    vectors = Table(title="vectors")
    for column in ("name", "dimension", "dtype", "metric", "index"):
        vectors.add_column(column)
    for v in schema.vectors:
        found = inventory.indexes.get(v.name, {})
        vectors.add_row(
            v.name,
            str(v.dimension),
            v.dtype,
            str(found.get("metric") or v.metric or "-"),
            str(found.get("index") or "none"),
        )
    payload = Table(
        title="payload" + (" (kinds from a sample of records)" if inventory.sampled else "")
    )
    for column in ("field", "kind", "type", "index"):
        payload.add_column(column)
    for f in schema.payload:
        payload.add_row(
            f.name, str(f.kind), f.native or "-", inventory.payload_indexes.get(f.name, "-")
        )
    if schema.extra is not None:
        payload.add_row(schema.extra, str(FieldKind.JSON), "other keys, as one object", "-")
    samples = Table(title="sample records")
    for key in inventory.samples[0] if inventory.samples else []:
        samples.add_column(key, overflow="fold", max_width=40)
    for row in inventory.samples:
        samples.add_row(*(str(v) for v in row.values()))
    fragment = yaml.safe_dump(
        {"source": source_fragment(inventory, ref)}, sort_keys=False, default_flow_style=None
    )
    notes = "\n".join(f"note: {n}" for n in inventory.notes)
    return Group(
        head,
        vectors,
        payload,
        samples,
        notes,
        "spec fragment (fill in the model that made the vectors):",
        fragment,
    )
