"""The dry run: it describes, checks and refuses, and writes nothing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from sqlalchemy import func, select

from tests.conftest import Sandbox, vecmigrate
from vecmigrate.catalog.catalog import ledger, migrations, vector_versions
from vecmigrate.control.plan import plan_migration
from vecmigrate.model.lifecycle import LIFECYCLE


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
    from tests.conftest import postgres_database

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
