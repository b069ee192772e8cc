"""Every spec in examples/ is seeded (`vecmigrate seed --for`) and planned (`vecmigrate plan`)
through the CLI on real engines, with only its store locations pointed at this test's own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import postgres_database
from tests.test_cli_matrix import run_cli, said
from vecmigrate.catalog.catalog import Catalog
from vecmigrate.config import sqlite_url
from vecmigrate.control.seeding import seed_spec_source
from vecmigrate.data.datasets import stdlib_docstrings
from vecmigrate.model.lifecycle import STRATEGIES
from vecmigrate.model.spec import (
    ARTIFACT_INDEX_KINDS,
    INDEX_KINDS,
    STORE_KINDS,
    load_spec,
    parse_spec,
)
from vecmigrate.stores.capabilities import SERVER_ONLY_KINDS

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))
RECORDS = 4000


def test_the_examples_cover_every_strategy_backend_and_a_model_change() -> None:
    specs = [load_spec(p) for p in EXAMPLES]
    assert {s.strategy for s in specs} == set(STRATEGIES)
    stores = {v.store.kind for s in specs for v in (s.source, s.target)}
    assert stores == set(STORE_KINDS)
    sources = {s.source.store.kind for s in specs}
    targets = {s.target.store.kind for s in specs}
    assert sources == targets == set(STORE_KINDS)
    kinds = {v.index.kind for s in specs for v in (s.source, s.target)}
    # Less the kinds only a server builds (the examples run on embedded engines here).
    assert kinds == set(INDEX_KINDS) - SERVER_ONLY_KINDS
    assert any(s.model_change for s in specs)
    assert any(s.regions for s in specs)
    # An index vecmigrate builds over a store with indexes of its own.
    assert any(
        s.target.store.kind != "builtin" and s.target.index.kind in ARTIFACT_INDEX_KINDS
        for s in specs
    )


def localize(data: Any, root: Path, database: str) -> Any:
    """The spec with each store's location moved under ``root`` (pgvector: ``database``)."""
    if isinstance(data, list):
        return [localize(v, root, database) for v in data]
    if not isinstance(data, dict):
        return data
    out = {k: localize(v, root, database) for k, v in data.items()}
    kind = out.get("kind")
    if kind == "pgvector" and "url" in out:
        out["url"] = database
    elif kind == "milvus":
        out["uri"] = str(root / "milvus.db")
    elif kind == "qdrant":
        out["path"] = str(root / "qdrant")
    elif kind == "builtin" and "url" in out:
        # sqlite:////var/lib/vecmigrate/eu/store.db -> ROOT/eu/store.db
        where = Path(out["url"].removeprefix("sqlite:///"))
        out["url"] = sqlite_url(root / where.parent.name / where.name)
    if "artifacts" in out:
        out["artifacts"] = str(root / "artifacts")
    return out


def seed_regions(spec_data: dict[str, Any], root: Path) -> list[str]:
    """Each region's catalog, with the spec's tenants seeded in that region's store; returns
    the ``--region-catalog`` arguments."""
    args = []
    for region in spec_data["regions"]:
        name = region["name"]
        catalog = Catalog(sqlite_url(root / name / "catalog.db"))
        local = {
            k: v for k, v in spec_data.items() if k not in ("regions", "region_policy", "tenants")
        }
        local["source"] = {**local["source"], "store": region["source_store"]}
        local["tenants"] = spec_data["tenants"]
        local["tenant_limits"] = {}
        seed_spec_source(catalog, parse_spec(local), RECORDS // 4, shards=2)
        args.append(f"--region-catalog={name}={catalog.url}")
    return args


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_is_seeded_and_planned_through_the_cli(
    example: Path, tmp_path: Path, postgres: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VECMIGRATE_HOME", str(tmp_path / "home"))
    data = localize(yaml.safe_load(example.read_text()), tmp_path, postgres_database(postgres))
    spec_file = tmp_path / example.name
    spec_file.write_text(yaml.safe_dump(data))
    spec = load_spec(spec_file)
    extra: list[str] = []
    if spec.regions:
        extra = seed_regions(data, tmp_path)
    else:
        if spec.model_change:
            corpus = tmp_path / "corpus.txt"
            corpus.write_text("\n".join(t.replace("\n", " ") for _, t in stdlib_docstrings(1500)))
            for emb, ngrams in ((spec.source.embedding, 1), (spec.target.embedding, 2)):
                flags = ["--normalized"] if emb.normalized else []
                code, out, err = run_cli(
                    "model",
                    "fit-lsa",
                    "--id",
                    emb.model_id,
                    "--dimension",
                    str(emb.dimension),
                    "--metric",
                    str(emb.metric),
                    "--ngrams",
                    str(ngrams),
                    "--corpus",
                    str(corpus),
                    *flags,
                )
                assert code == 0, err + out
        size = RECORDS // 2 if spec.model_change else RECORDS  # texts embedded one by one
        code, out, err = run_cli("seed", "--for", str(spec_file), "--size", str(size))
        assert code == 0, err + out
        assert said(f"seeded default/{spec.collection}@{spec.source.name}", err), err
    code, out, err = run_cli("plan", str(spec_file), "--json", *extra)
    assert code == 0, err + out
    plan = json.loads(out)
    assert plan["ok"], plan["problems"]
    assert plan["estimated_seconds"] > 0
    assert plan["extra_bytes"] > 0
    assert "Traceback" not in err
