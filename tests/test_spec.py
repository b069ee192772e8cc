"""Spec validation: bad input fails with an error naming the field and the fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vecmigrate.errors import SpecError
from vecmigrate.model.spec import (
    FaissIvfFlat,
    HnswlibHnsw,
    PgvectorHnsw,
    PgvectorIvfflat,
    load_spec,
    memory_kb,
    parse_spec,
)


def base() -> dict[str, Any]:
    emb = {"model_id": "m", "model_version": "1", "dimension": 64, "metric": "l2"}
    return {
        "collection": "docs",
        "source": {"name": "v1", "embedding": emb, "index": {"kind": "faiss_ivf_flat"}},
        "target": {"name": "v2", "embedding": dict(emb), "index": {"kind": "hnswlib_hnsw"}},
    }


def problems(data: Any) -> str:
    with pytest.raises(SpecError) as exc:
        parse_spec(data)
    return str(exc.value)


def test_valid_spec_has_defaults_and_deterministic_id() -> None:
    spec = parse_spec(base())
    assert isinstance(spec.source.index, FaissIvfFlat)
    assert isinstance(spec.target.index, HnswlibHnsw)
    assert spec.migration_id == "default.docs.v1-to-v2"
    assert spec.strategy == "blue_green"
    assert spec.cutover.mode == "manual"
    assert spec.shards.selected() == (0, 1, 2, 3)
    assert spec.spec_hash() == parse_spec(base()).spec_hash()


@pytest.mark.parametrize(
    ("field", "kind", "choices"),
    [("index", "annoy", ["hnswlib_hnsw", "faiss_ivf_pq"]), ("store", "elasticsearch", ["builtin"])],
)
def test_unknown_kind_names_field_and_choices(field: str, kind: str, choices: list[str]) -> None:
    data = base()
    data["target"][field] = {"kind": kind}
    msg = problems(data)
    assert f"target.{field}: unknown kind '{kind}'" in msg
    for choice in choices:
        assert choice in msg


def test_missing_fields_are_each_named() -> None:
    data = base()
    del data["collection"]
    del data["target"]["embedding"]["dimension"]
    msg = problems(data)
    assert "collection: Field required (add this field)" in msg
    assert "target.embedding.dimension: Field required (add this field)" in msg


def test_bad_dimension_values() -> None:
    data = base()
    data["target"]["embedding"]["dimension"] = 0
    assert "target.embedding.dimension: Input should be greater than or equal to 1" in problems(
        data
    )
    data = base()
    data["target"]["embedding"]["dimension"] = 128
    msg = problems(data)
    assert "target.embedding.dimension is 128" in msg
    assert "64-dimensional" in msg


def test_model_change_is_a_reembedding() -> None:
    data = base()
    data["target"]["embedding"]["model_id"] = "other"
    assert parse_spec(data).model_change
    data["gates"] = {"query_log": "queries.npy"}
    assert "gates.query_log holds vectors of the source model" in problems(data)


def test_misspelled_field_and_unknown_strategy() -> None:
    data = base()
    data["shard"] = {"count": 2}
    assert "shard: Extra inputs are not permitted (remove it or check its spelling)" in problems(
        data
    )
    data = base()
    data["strategy"] = "canary"
    assert "strategy 'canary' is not available" in problems(data)
    data = base()
    data["strategy"] = "online"
    data["online"] = {"ramp": {"steps": [10, 5]}}
    assert "ramp steps must increase, got [10.0, 5.0]" in problems(data)
    data["online"] = {"ramp": {"steps": [10, 100]}}
    assert "strictly between 0 and 100" in problems(data)


def test_index_parameter_rules() -> None:
    data = base()
    data["target"]["index"] = {"kind": "faiss_ivf_flat", "nlist": 8, "nprobe": 16}
    assert "nprobe (16) cannot exceed nlist (8)" in problems(data)
    data = base()
    data["target"]["index"] = {"kind": "faiss_ivf_pq", "m": 7}
    assert "target.index.m (7) must divide the dimension (64)" in problems(data)


def test_same_version_names_and_bad_shards() -> None:
    data = base()
    data["target"]["name"] = "v1"
    assert "give the target a new version name" in problems(data)
    data = base()
    data["shards"] = {"count": 4, "only": [1, 9]}
    assert "shard indexes [9] are outside 0..3" in problems(data)


def test_shard_count_and_window_are_bounded() -> None:
    data = base()
    data["shards"] = {"count": 5001}
    assert "shards.count: Input should be less than or equal to 5000" in problems(data)
    data = base()
    data["max_parallel_shards"] = 65
    assert "max_parallel_shards: Input should be less than or equal to 64" in problems(data)
    data = base()
    data["max_vectors_per_second"] = 0
    assert "max_vectors_per_second: Input should be greater than 0" in problems(data)


def test_native_index_needs_its_own_store() -> None:
    data = base()
    data["target"]["index"] = {"kind": "pgvector_hnsw"}
    assert "target.index.kind pgvector_hnsw is built by pgvector, but target.store is builtin" in (
        problems(data)
    )


def test_load_yaml_and_json(tmp_path: Path) -> None:
    import yaml

    (tmp_path / "s.yaml").write_text(yaml.safe_dump(base()))
    (tmp_path / "s.json").write_text(json.dumps(base()))
    assert load_spec(tmp_path / "s.yaml") == load_spec(tmp_path / "s.json")
    (tmp_path / "bad.yaml").write_text("collection: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML or JSON"):
        load_spec(tmp_path / "bad.yaml")
    with pytest.raises(SpecError, match="cannot read spec file"):
        load_spec(tmp_path / "missing.yaml")
    with pytest.raises(SpecError, match="expected a mapping"):
        parse_spec([1, 2])


def test_example_specs_are_valid() -> None:
    for path in sorted(Path(__file__).parent.parent.joinpath("examples").glob("*.yaml")):
        load_spec(path)


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parent / "histories").glob("*_v2.json")), ids=lambda p: p.stem
)
def test_recorded_specs_keep_their_hash(path: Path) -> None:
    """Fields added since a migration started leave its spec's hash unchanged: running
    migrations load their spec by it, and a spec that uses none of them hashes as before.
    (The histories of the release before the lifecycle table hashed a spec of fewer fields.)"""
    from tests.histories.payloads import activity_inputs, load

    for name, _, decoded in activity_inputs(load(path)):
        if name == "record" and decoded["kind"] == "migration.started":
            data = decoded["data"]
            assert parse_spec(data["spec"]).spec_hash() == data["spec_hash"]
            return
    pytest.skip("a continued run: its first ledger entry is in the run before")


def test_spec_hash_changes_when_an_added_field_is_used() -> None:
    data = base()
    data["target"]["index"] = {"kind": "faiss_ivf_flat"}
    plain = parse_spec(data)
    data["target"]["index"] = {"kind": "faiss_ivf_flat", "encoding": "float32"}
    assert parse_spec(data).spec_hash() == plain.spec_hash()
    data["target"]["index"]["encoding"] = "int8"
    assert parse_spec(data).spec_hash() != plain.spec_hash()
    data = base()
    data["retention"] = {"retired_seconds": 60}
    assert parse_spec(data).spec_hash() != plain.spec_hash()


def on_pgvector() -> dict[str, Any]:
    data = base()
    data["target"]["store"] = {"kind": "pgvector", "url": "postgresql://db.internal/search"}
    return data


@pytest.mark.parametrize("kind", ["pgvector_hnsw", "pgvector_ivfflat"])
def test_pgvector_build_settings_are_checked_before_anything_runs(kind: str) -> None:
    data = on_pgvector()
    data["target"]["index"] = {"kind": kind, "maintenance_work_mem": "512mb"}
    msg = problems(data)
    assert "target.index.maintenance_work_mem: '512mb' is not a PostgreSQL memory size" in msg
    assert "kB, MB, GB or TB" in msg
    for bad in ("lots", "512", "1.5GB", "-1MB", "64MB; DROP TABLE x"):
        data["target"]["index"]["maintenance_work_mem"] = bad
        assert "is not a PostgreSQL memory size" in problems(data), bad
    for outside in ("512kB", "3000GB", "2TB"):
        data["target"]["index"]["maintenance_work_mem"] = outside
        assert "outside PostgreSQL's range" in problems(data), outside
    data["target"]["index"] = {"kind": kind, "parallel_workers": -1}
    assert "target.index.parallel_workers" in problems(data)
    data["target"]["index"] = {"kind": kind, "lock_timeout_seconds": 0}
    assert "target.index.lock_timeout_seconds" in problems(data)
    data["target"]["index"] = {
        "kind": kind,
        "maintenance_work_mem": "2GB",
        "parallel_workers": 4,
        "lock_timeout_seconds": 30,
    }
    index = parse_spec(data).target.index
    assert isinstance(index, PgvectorHnsw | PgvectorIvfflat)
    assert (index.maintenance_work_mem, index.parallel_workers) == ("2GB", 4)
    assert memory_kb("1 GB") == memory_kb("1024MB") == 1024 * 1024


def test_pgvector_build_settings_leave_older_hashes_alone() -> None:
    data = on_pgvector()
    data["target"]["index"] = {"kind": "pgvector_hnsw", "m": 16}
    plain = parse_spec(data)
    data["target"]["index"].update(lock_timeout_seconds=600, parallel_workers=None)
    assert parse_spec(data).spec_hash() == plain.spec_hash()
    data["target"]["index"]["maintenance_work_mem"] = "1GB"
    assert parse_spec(data).spec_hash() != plain.spec_hash()
