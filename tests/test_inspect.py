"""``vecmigrate inspect``: an inventory read without writing, and a source fragment a spec takes
as it is. (The pgvector table and the Qdrant collection are inspected through the CLI in
tests/test_adopt.py, then migrated from the fragment.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vecmigrate.catalog.engines import dispose_engines
from vecmigrate.config import sqlite_url
from vecmigrate.control.inspect import as_json, engine_of, inspect, inventory_tables
from vecmigrate.errors import PreconditionError
from vecmigrate.model.spec import VersionSpec
from vecmigrate.stores import BuiltinStore, Scope
from vecmigrate.stores.milvus import close_clients


def test_the_engine_is_told_from_the_url() -> None:
    assert engine_of("postgresql://app@db:5432/search") == "pgvector"
    assert engine_of("postgresql+psycopg://app@db/search") == "pgvector"
    assert engine_of("sqlite:////tmp/x.db") == "builtin"
    assert engine_of("https://qdrant.internal:6333") == "qdrant"
    assert engine_of("http://milvus.internal:19530") == "milvus"
    assert engine_of("/srv/milvus.db") == "milvus"
    with pytest.raises(PreconditionError, match="--engine"):
        engine_of("https://example.com/vectors")


def test_a_builtin_version_is_inspected_and_its_fragment_is_a_valid_source(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "store.db")
    store = BuiltinStore.open(url, Scope("acme", "docs", "v1"), 8)
    rng = np.random.default_rng(1)
    store.upsert(np.arange(1, 301, dtype=np.int64), rng.standard_normal((300, 8)).astype("f4"))
    dispose_engines()  # the writes checkpointed into the file
    before = (tmp_path / "store.db").read_bytes()
    inventory, ref = inspect("builtin", url, "acme/docs@v1", samples=2)
    shown = as_json(inventory, ref)
    assert shown["count"] == 300
    assert shown["id"] == {"name": "id", "kind": "int"}
    assert [(v["name"], v["dimension"], v["dtype"]) for v in shown["vectors"]] == [
        ("embedding", 8, "float32")
    ]
    assert shown["payload"] == []
    assert len(shown["samples"]) == 2
    json.dumps(shown)  # JSON as it is, for tooling
    source = shown["source"]
    source["embedding"]["model_id"] = "m"
    version = VersionSpec.model_validate(source)
    assert version.store.kind == "builtin"
    assert version.embedding.dimension == 8
    assert inventory_tables(inventory, ref) is not None
    dispose_engines()
    assert (tmp_path / "store.db").read_bytes() == before  # read, never written
    with pytest.raises(PreconditionError, match="TENANT/COLLECTION@VERSION"):
        inspect("builtin", url, "docs")


@pytest.mark.integration
def test_a_milvus_collection_with_a_varchar_key_and_scalar_fields_is_inspected(
    tmp_path: Path,
) -> None:
    from pymilvus import DataType, MilvusClient

    uri = str(tmp_path / "m.db")
    client = MilvusClient(uri)
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=True)
    schema.add_field("doc_id", DataType.VARCHAR, is_primary=True, max_length=64)
    schema.add_field("title", DataType.VARCHAR, max_length=256)
    schema.add_field("year", DataType.INT64)
    schema.add_field("score", DataType.DOUBLE)
    schema.add_field("dense", DataType.FLOAT_VECTOR, dim=16)
    index = client.prepare_index_params()
    index.add_index("dense", index_type="FLAT", metric_type="IP")
    client.create_collection("articles", schema=schema, index_params=index)
    rng = np.random.default_rng(3)
    rows = [
        {
            "doc_id": f"a-{i}",
            "title": f"article {i}",
            "year": 2000 + i % 20,
            "score": 0.5 * i,
            "dense": rng.standard_normal(16).astype("f4").tolist(),
        }
        for i in range(120)
    ]
    client.insert("articles", rows)
    client.close()
    try:
        inventory, ref = inspect("milvus", uri, "articles", samples=3)
        shown = as_json(inventory, ref)
        assert shown["count"] == 120
        assert shown["id"] == {"name": "doc_id", "kind": "string"}
        (vector,) = shown["vectors"]
        assert (vector["name"], vector["dimension"], vector["metric"]) == ("dense", 16, "ip")
        kinds = {f["name"]: f["kind"] for f in shown["payload"]}
        assert kinds == {"title": "text", "year": "int", "score": "float"}
        assert len(shown["samples"]) == 3
        store = shown["source"]["store"]
        assert (store["kind"], store["collection"]) == ("milvus", "articles")
    finally:
        close_clients()
