"""Migrations as code: a directory of ordered specs applied in order on a real dev server,
idempotent on a second run, refusing a spec edited after it was applied (with the diff); plan of
a directory as the CI step."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.client import Client

from tests.conftest import Sandbox, running_worker, vecmigrate
from vecmigrate.catalog.applied import AppliedSpecs
from vecmigrate.control.apply import apply_directory, plan_directory, read_directory
from vecmigrate.control.client import MigrationClient
from vecmigrate.errors import PreconditionError, SpecError


def write_steps(sandbox: Sandbox, root: Path) -> Path:
    directory = root / "migrations"
    directory.mkdir()
    ivf = {"kind": "faiss_ivf_flat", "nlist": 16, "nprobe": 4}  # what the seed serves with
    hnsw = {"kind": "hnswlib_hnsw", "m": 16}
    sq8 = {"kind": "faiss_ivf_flat", "nlist": 16, "nprobe": 8, "encoding": "int8"}
    # Each step's source as the step before it (or the seed) left it serving.
    steps = [
        ("0001_ivf_to_hnsw.yaml", ("v1", ivf), ("v2", hnsw)),
        ("0002_hnsw_to_sq8.yaml", ("v2", hnsw), ("v3", sq8)),
    ]
    for name, (source, source_index), (target, index) in steps:
        data = sandbox.spec(
            source=sandbox.version(source, source_index).model_dump(mode="json"),
            target=sandbox.version(target, index).model_dump(mode="json"),
        ).model_dump(mode="json", exclude={"id"})
        (directory / name).write_text(yaml.safe_dump(data))
    (directory / "README.md").write_text("ignored: not a spec")
    return directory


def test_a_directory_is_read_in_order_and_refuses_unnumbered_specs(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    directory = write_steps(sandbox, tmp_path)
    assert [s.name for s in read_directory(directory)] == ["0001_ivf_to_hnsw", "0002_hnsw_to_sq8"]
    (directory / "hnsw.yaml").write_text("collection: docs")
    (directory / "1_again.yaml").write_text((directory / "0001_ivf_to_hnsw.yaml").read_text())
    with pytest.raises(SpecError) as exc:
        read_directory(directory)
    assert "hnsw.yaml: name each spec <number>_<name>.yaml" in str(exc.value)
    assert "share number 1" in str(exc.value)


@pytest.mark.integration  # runs the command in a process
def test_plan_of_a_directory_checks_the_first_step_against_the_catalog(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    directory = write_steps(sandbox, tmp_path)
    # Nothing seeded: the first step's source is missing, the CI step fails.
    result = vecmigrate("plan", str(directory), "--catalog", sandbox.catalog.url, "--json")
    assert result.returncode == 1, result.stderr
    assert "source version 'v1' of default/docs is not in the catalog" in result.stdout
    sandbox.seed(1500)
    plan = plan_directory(sandbox.catalog, directory)
    assert plan.ok, plan.problems
    assert [s.state for s in plan.steps] == ["pending", "pending"]
    assert plan.steps[1].note == "checked against the catalog once 0001_ivf_to_hnsw has run"
    # A later step must start where the one before it leaves the collection.
    second = directory / "0002_hnsw_to_sq8.yaml"
    data = yaml.safe_load(second.read_text())
    data["source"]["name"] = "v9"
    second.write_text(yaml.safe_dump(data))
    broken = plan_directory(sandbox.catalog, directory)
    assert broken.problems == [
        "0002_hnsw_to_sq8: migrates from v9, but 0001_ivf_to_hnsw leaves v2 serving default/docs"
    ]


async def test_apply_runs_in_order_is_idempotent_and_refuses_an_edited_spec(
    client: Client, sandbox: Sandbox, tmp_path: Path
) -> None:
    sandbox.seed(1500)
    directory = write_steps(sandbox, tmp_path)
    said: list[str] = []
    async with running_worker(client, sandbox) as queue:
        mc = MigrationClient(client, queue)
        await apply_directory(
            mc,
            sandbox.catalog,
            directory,
            "ci-bot",
            lambda s, text: said.append(f"{s.name} {text}"),
        )
        applied = AppliedSpecs(sandbox.catalog).all()
        assert [(a.name, a.outcome) for a in applied] == [
            ("0001_ivf_to_hnsw", "COMPLETED"),
            ("0002_hnsw_to_sq8", "COMPLETED"),
        ]
        routing = sandbox.catalog.get_routing("default", "docs")
        assert routing is not None
        assert routing.read_version == "v3"
        migrations = sandbox.catalog.migrations_of("default", "docs")
        assert [m["target_version"] for m in migrations] == ["v2", "v3"]

        # A second run, through the command: nothing starts.
        env = {**os.environ, "TEMPORAL_ADDRESS": client.service_client.config.target_host}
        again = await asyncio.to_thread(
            vecmigrate,
            "apply",
            str(directory),
            "--catalog",
            sandbox.catalog.url,
            "--task-queue",
            queue,
            env=env,
        )
        assert again.returncode == 0, again.stderr
        assert again.stderr.count("skipped") == 2, again.stderr
        assert len(sandbox.catalog.migrations_of("default", "docs")) == 2

        # An applied spec edited afterwards is refused with the diff, before anything starts.
        first = directory / "0001_ivf_to_hnsw.yaml"
        data: dict[str, Any] = yaml.safe_load(first.read_text())
        data["gates"]["min_recall"] = 0.5
        first.write_text(yaml.safe_dump(data))
        with pytest.raises(PreconditionError) as exc:
            await apply_directory(mc, sandbox.catalog, directory, "ci-bot")
        text = str(exc.value)
        assert "nothing was applied" in text
        assert "0001_ivf_to_hnsw: changed since it was applied" in text
        assert "-  min_recall: 0.8" in text
        assert "+  min_recall: 0.5" in text
        planned = await asyncio.to_thread(
            vecmigrate, "plan", str(directory), "--catalog", sandbox.catalog.url
        )
        assert planned.returncode == 1
        assert "+  min_recall: 0.5" in planned.stderr
    assert any("0001_ivf_to_hnsw started default.docs.v1-to-v2" in s for s in said)
    assert said[-1].startswith("0002_hnsw_to_sq8 COMPLETED")
