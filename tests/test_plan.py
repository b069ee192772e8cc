"""The dry run: it describes, checks and refuses, and writes nothing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from pydantic import TypeAdapter
from sqlalchemy import create_engine, func, select, text

from tests.conftest import Sandbox, postgres_database, vecmigrate
from tests.helpers import version_data
from tests.test_cli_matrix import run_cli, said
from vecmigrate.catalog.catalog import Catalog, ledger, migrations, vector_versions
from vecmigrate.config import resolve_spec, sqlite_url
from vecmigrate.control.plan import (
    EMBED_RATES,
    INDEX_ESTIMATES,
    STORE_RATES,
    plan_migration,
)
from vecmigrate.data.datasets import clustered
from vecmigrate.data.seed import seed_collection, sequential_ids
from vecmigrate.embedding.embedders import EMBEDDER_KINDS
from vecmigrate.indexes.sizes import index_bytes, uncompressed
from vecmigrate.model.lifecycle import LIFECYCLE
from vecmigrate.model.spec import INDEX_KINDS, STORE_KINDS, IndexSpec, VersionSpec, parse_spec
from vecmigrate.stores import Scope, open_store
from vecmigrate.stores.milvus import client_for
from vecmigrate.stores.probes import PROBES


def rows(sandbox: Sandbox) -> tuple[int, int, int]:
    with sandbox.catalog.engine.connect() as conn:
        return tuple(  # type: ignore[return-value]
            conn.execute(select(func.count()).select_from(t)).scalar_one()
            for t in (ledger, migrations, vector_versions)
        )


def plan_cli(
    sandbox: Sandbox, spec: dict[str, Any], tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return vecmigrate("plan", str(path), "--json", "--catalog", sandbox.catalog.url)


@pytest.mark.integration  # runs the vecmigrate command in a process
def test_plan_describes_every_step_and_check(sandbox: Sandbox, tmp_path: Path) -> None:
    sandbox.seed(3000)
    before = rows(sandbox)
    spec = sandbox.spec()
    plan = plan_migration(sandbox.catalog, spec)
    assert plan.ok
    assert [p for p, _ in plan.steps] == list(LIFECYCLE["blue_green"].phases)
    assert sum(plan.shard_sizes.values()) == 3000
    assert plan.extra_bytes > 3000 * 16 * 4
    assert {c.name for c in plan.checks} >= {
        "source registered",
        "source serves reads",
        "target version free",
        "source store reachable",
        "dimension consistent",
        "index fits the data",
        "tenant scope",
    }
    done = plan_cli(sandbox, spec.model_dump(mode="json"), tmp_path)
    assert done.returncode == 0
    out = json.loads(done.stdout)
    assert out["ok"] is True
    assert out["extra_bytes"] == plan.extra_bytes
    assert rows(sandbox) == before


@pytest.mark.integration  # runs the vecmigrate command in a process
def test_plan_refuses_with_a_clear_message_and_writes_nothing(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    sandbox.seed(600)
    before = rows(sandbox)
    spec = sandbox.spec(
        target=sandbox.version(
            "v2", {"kind": "faiss_ivf_flat", "nlist": 4096, "nprobe": 8}
        ).model_dump(mode="json"),
    ).model_dump(mode="json")
    spec["source"]["embedding"]["metric"] = "ip"
    spec["target"]["embedding"]["metric"] = "ip"
    done = plan_cli(sandbox, spec, tmp_path)
    assert done.returncode == 1
    problems = json.loads(done.stdout)["problems"]
    assert any("source.embedding does not match the catalog" in p for p in problems)
    assert any("needs at least 4096 vectors per shard" in p for p in problems)
    assert rows(sandbox) == before


@pytest.mark.integration  # runs the vecmigrate command in a process
def test_plan_names_a_bad_spec_field(sandbox: Sandbox, tmp_path: Path) -> None:
    spec = sandbox.spec().model_dump(mode="json")
    spec["target"]["index"] = {"kind": "annoy"}
    done = plan_cli(sandbox, spec, tmp_path)
    assert done.returncode == 2
    assert "target.index: unknown kind 'annoy'" in done.stderr
    assert "Traceback" not in done.stderr


def test_plan_refuses_what_the_target_store_cannot_hold(
    sandbox: Sandbox, tmp_path: Path, postgres: Any
) -> None:
    rng = np.random.default_rng(0)
    sandbox.seed(vectors=rng.standard_normal((300, 2048)).astype(np.float32))
    target = sandbox.version(
        "v2",
        {"kind": "pgvector_hnsw"},
        store={"kind": "pgvector", "url": postgres_database(postgres)},
    )
    spec = sandbox.spec(target=target.model_dump(mode="json"), shards={"count": 1})
    plan = plan_migration(sandbox.catalog, spec)
    assert not plan.ok
    assert plan.problems == [
        "target.index pgvector_hnsw supports at most 2000 dimensions, not 2048: use a "
        "FAISS/hnswlib index kind (built from the data by vecmigrate) instead"
    ]


@pytest.mark.integration  # runs the vecmigrate command in a process
@pytest.mark.parametrize("strategy", sorted(LIFECYCLE))
def test_plan_describes_every_strategys_phases_from_the_table(
    sandbox: Sandbox, tmp_path: Path, strategy: str
) -> None:
    """`plan` (and `start`, which plans first) of an online spec ended in a KeyError: its
    phases were restated in plan.py and CATCHING_UP was missing. They come from the table."""
    sandbox.seed(1000)
    spec = sandbox.spec(strategy=strategy)
    plan = plan_migration(sandbox.catalog, spec)
    assert [p for p, _ in plan.steps] == list(LIFECYCLE[strategy].phases)
    assert "1,000 vectors" in dict(plan.steps)["BACKFILLING"]
    done = plan_cli(sandbox, spec.model_dump(mode="json"), tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr


# -- estimates and probes cover every kind -----------------------------------------------------


def test_every_index_store_and_model_kind_has_its_estimate_and_every_store_a_probe() -> None:
    assert set(INDEX_ESTIMATES) == set(INDEX_KINDS)
    assert set(STORE_RATES) == set(STORE_KINDS)
    assert set(EMBED_RATES) == set(EMBEDDER_KINDS)
    assert set(PROBES) == set(STORE_KINDS)
    for kind in INDEX_KINDS:
        index: IndexSpec = TypeAdapter(IndexSpec).validate_python({"kind": kind})
        size = index_bytes(index, 10_000, 128)
        # Every index holds at least the vectors but a compressed one and Qdrant's graph (its
        # links beside the vectors the collection keeps as its records).
        beside = uncompressed(index) != index or kind == "qdrant_hnsw"
        assert size >= (10_000 * 8 if beside else 10_000 * 128 * 4), kind


# -- writes nothing ------------------------------------------------------------------------------


def test_plan_writes_nothing_not_even_the_catalog_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("VECMIGRATE_HOME", str(home))
    monkeypatch.delenv("VECMIGRATE_CATALOG_URL", raising=False)
    monkeypatch.chdir(work)
    example = Path(__file__).parent.parent / "examples" / "blue_green_ivf_to_hnsw.yaml"
    code, out, err = run_cli("plan", str(example), "--json")
    assert code == 1, err
    problems = json.loads(out)["problems"]
    assert problems == [
        f"no catalog at sqlite:///{home / 'catalog.db'}: nothing has been seeded or migrated "
        f"with it. The vecmigrate home is {home} (set $VECMIGRATE_HOME to move it), or name "
        "the catalog with --catalog or $VECMIGRATE_CATALOG_URL"
    ]
    assert not home.exists()
    assert list(work.iterdir()) == []
    code, _, err = run_cli("log", "some-migration", "--verify")
    assert code == 2
    assert "no catalog at" in err
    assert not home.exists()


# -- the source as registered --------------------------------------------------------------------


def test_plan_compares_the_source_with_what_the_catalog_registered(sandbox: Sandbox) -> None:
    sandbox.seed(1200)
    spec = sandbox.spec().model_dump(mode="json")
    spec["source"]["index"]["nprobe"] = 8
    plan = plan_migration(sandbox.catalog, parse_spec(spec))
    assert plan.problems == [
        "source.index does not match the catalog: default/docs@v1 is served by an index with "
        "nprobe 4 (the spec says 8); fix the spec (it serves faiss_ivf_flat(nlist=16, nprobe=4, "
        "train_size=100000))"
    ]
    spec = sandbox.spec().model_dump(mode="json")
    spec["source"]["index"] = {"kind": "hnswlib_hnsw"}
    plan = plan_migration(sandbox.catalog, parse_spec(spec))
    assert any("served by faiss_ivf_flat, not hnswlib_hnsw" in p for p in plan.problems)
    elsewhere = sqlite_url(sandbox.root / "elsewhere.db")
    spec = sandbox.spec().model_dump(mode="json")
    spec["source"]["store"]["url"] = elsewhere
    plan = plan_migration(sandbox.catalog, parse_spec(spec))
    assert plan.problems == [
        f"the source built-in store at {elsewhere} does not hold default/docs@v1; fix source.store",
        f"source.store does not match the catalog: default/docs@v1 is registered in the "
        f"built-in store at {sandbox.store.url}, the spec names the built-in store at "
        f"{elsewhere}; fix the spec",
    ]
    assert not (sandbox.root / "elsewhere.db").exists()  # asking created nothing


# -- the target, tried for real ------------------------------------------------------------------


def test_plan_writes_to_every_kind_of_target_store_and_leaves_nothing_behind(
    sandbox: Sandbox, postgres: Any
) -> None:
    sandbox.seed(1200)
    database, builtin_database = postgres_database(postgres), postgres_database(postgres)
    milvus_file = sandbox.root / "milvus.db"
    milvus = client_for(str(milvus_file))
    milvus.create_collection("someone_elses", dimension=4)
    qdrant_root = sandbox.root / "qdrant"
    qdrant_root.mkdir()
    fresh = sandbox.root / "not-yet" / "store.db"
    targets = {
        "pgvector_hnsw": {"kind": "pgvector", "url": database},
        "faiss_hnsw": {"kind": "pgvector", "url": database},
        "milvus_ivf_flat": {"kind": "milvus", "uri": str(milvus_file)},
        "qdrant_hnsw": {"kind": "qdrant", "path": str(qdrant_root)},
        "hnswlib_hnsw": {"kind": "builtin", "url": sqlite_url(fresh)},
        "faiss_flat": {"kind": "builtin", "url": builtin_database},
    }
    for kind, store in targets.items():
        target = sandbox.version("v2", {"kind": kind}, store=store)
        spec = resolve_spec(sandbox.spec(target=target.model_dump(mode="json")))
        plan = plan_migration(sandbox.catalog, spec)
        assert plan.ok, (kind, plan.problems)
        checks = {c.name: c for c in plan.checks}
        assert checks["target store writable"].passed
        assert "(tried, then undone)" in checks["target store writable"].detail
        assert checks["target store free"].detail == "no default/docs@v2 in the store yet"
    for url in (database, builtin_database):
        engine = create_engine(url)
        with engine.connect() as conn:
            tables = "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            assert conn.execute(text(tables)).all() == []
            vector = "SELECT extname FROM pg_extension WHERE extname = 'vector'"
            assert conn.execute(text(vector)).all() == []
        engine.dispose()
    assert milvus.list_collections() == ["someone_elses"]
    assert list(qdrant_root.iterdir()) == []
    assert not fresh.parent.exists()


def test_plan_names_a_target_it_cannot_reach_or_write_without_its_password(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox.seed(1200)
    monkeypatch.setenv("VECMIGRATE_TEST_PG_PASSWORD", "s3cret")
    unreachable = "postgresql://app@/vectors?host=/nonexistent-socket-dir"
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    cases = {
        "cannot reach postgresql+psycopg://app@/vectors": {
            "kind": "pgvector",
            "url": unreachable,
            "password": "env:VECMIGRATE_TEST_PG_PASSWORD",
        },
        f"{blocked / 'store.db'} cannot be created: {blocked} is a file": {
            "kind": "builtin",
            "url": sqlite_url(blocked / "store.db"),
        },
    }
    for expected, store in cases.items():
        target = sandbox.version("v2", {"kind": "hnswlib_hnsw"}, store=store)
        plan = plan_migration(sandbox.catalog, sandbox.spec(target=target.model_dump(mode="json")))
        assert len(plan.problems) == 1, plan.problems
        assert plan.problems[0].startswith("the target store is not usable: ")
        assert expected in plan.problems[0]
        assert "s3cret" not in plan.problems[0]


def test_plan_refuses_a_target_the_store_already_holds(sandbox: Sandbox) -> None:
    sandbox.seed(1200)
    # Left in the store by an earlier catalog: the copy would write over it.
    open_store(sandbox.store, Scope("default", "docs", "v2"), sandbox.dim).upsert(
        np.array([1], np.int64), np.ones((1, sandbox.dim), np.float32)
    )
    plan = plan_migration(sandbox.catalog, sandbox.spec())
    assert plan.problems == [
        f"the built-in store at {sandbox.store.url} already holds default/docs@v2, which the "
        "catalog does not know as this migration's target (left by another catalog or removed "
        "from this one); choose a new target version name, or remove it from the store"
    ]


# -- regional and multi-tenant specs, child by child -------------------------------------------


def test_plan_checks_every_tenant_of_a_multi_tenant_spec(sandbox: Sandbox, tmp_path: Path) -> None:
    sandbox.seed(1200)
    spec = sandbox.spec(tenants=["default", "ghost"]).model_dump(mode="json")
    path = tmp_path / "tenants.yaml"
    path.write_text(yaml.safe_dump(spec))
    code, out, err = run_cli("plan", str(path), "--json", "--catalog", sandbox.catalog.url)
    assert code == 1, err
    problems = json.loads(out)["problems"]
    assert problems == [
        "ghost: source version 'v1' of ghost/docs is not in the catalog; seed it, or name an "
        "existing table or collection in source.store to adopt",
        f"ghost: the source built-in store at {sandbox.store.url} does not hold "
        "ghost/docs@v1; fix source.store",
    ]
    code, _, err = run_cli("start", str(path), "--catalog", sandbox.catalog.url)
    assert code == 2
    assert "the migration cannot start" in err
    assert said("ghost/docs is not in the catalog", err), err


def _region_store(root: Path, region: str) -> dict[str, Any]:
    return {"kind": "builtin", "url": sqlite_url(root / region / "store.db"), "location": region}


def test_plan_checks_each_region_against_its_own_catalog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VECMIGRATE_HOME", str(tmp_path / "home"))
    catalogs = {}
    for region, tenants in (("eu", ("acme", "globex")), ("us", ("acme",))):
        catalogs[region] = Catalog(sqlite_url(tmp_path / region / "catalog.db"))
        v1 = VersionSpec.model_validate(
            version_data("v1", "faiss_flat", store=_region_store(tmp_path, region))
        )
        for tenant in tenants:
            seed_collection(
                catalogs[region], tenant, "docs", v1, sequential_ids(300), clustered(300, 8)
            )

    def spec(tenants: Any) -> Path:
        data = {
            "collection": "docs",
            "source": version_data("v1", "faiss_flat"),
            "target": version_data("v2", "hnswlib_hnsw"),
            "shards": {"count": 1},
            "tenants": tenants,
            "regions": [
                {
                    "name": r,
                    "location": r,
                    "source_store": _region_store(tmp_path, r),
                    "target_store": _region_store(tmp_path, r),
                }
                for r in ("eu", "us")
            ],
        }
        path = tmp_path / "regional.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    regional = [f"--region-catalog={r}={c.url}" for r, c in catalogs.items()]
    code, out, err = run_cli("plan", str(spec(["acme"])), "--json", *regional)
    assert code == 0, err + out
    plan = json.loads(out)
    names = {c["name"] for c in plan["checks"]}
    assert {"eu/acme: source registered", "us/acme: target store writable"} <= names
    assert plan["estimated_seconds"] > 0
    code, out, _ = run_cli("plan", str(spec(["acme", "globex"])), "--json", *regional)
    assert code == 1
    problems = json.loads(out)["problems"]
    assert problems
    assert all(p.startswith("region us, tenant globex: ") for p in problems), problems
    assert "source version 'v1' of globex/docs is not in the catalog" in problems[0]
    code, out, _ = run_cli("plan", str(spec("all")), "--json", *regional)
    assert code == 0, out
    children = {c["name"].split(":")[0] for c in json.loads(out)["checks"]}
    assert {"eu/acme", "eu/globex", "us/acme"} <= children
    assert "us/globex" not in children
    # A region without its catalog is checked against --catalog, which must exist.
    code, out, _ = run_cli("plan", str(spec(["acme"])), "--json", regional[0])
    assert code == 1
    assert json.loads(out)["problems"][0].startswith("region us: no catalog at")
