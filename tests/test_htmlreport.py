"""`vecmigrate report ID --html`: the page of a real migration, every plot drawn."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest
from temporalio.client import Client

from tests.conftest import Sandbox, running_worker, vecmigrate
from vecmigrate.control.client import MigrationClient
from vecmigrate.control.htmlreport import PLOTS, ReportData, render
from vecmigrate.errors import VecmigrateError
from vecmigrate.model.lifecycle import Phase


async def test_the_html_report_of_a_migration_draws_every_plot(
    client: Client, sandbox: Sandbox, tmp_path: Path
) -> None:
    sandbox.seed(3000)
    spec = sandbox.spec(gates={"min_recall": 0.8, "min_overlap": 0.5, "sample_queries": 50})
    async with running_worker(client, sandbox) as queue:
        mc = MigrationClient(client, queue)
        mid = await mc.start(spec, operator="alice")
        assert (await mc.result(mid)).phase == Phase.COMPLETED
    out = tmp_path / "report.html"
    env = {**os.environ, "TEMPORAL_ADDRESS": client.service_client.config.target_host}
    done = await asyncio.to_thread(
        vecmigrate, "report", mid, "--html", str(out), "--catalog", sandbox.catalog.url, env=env
    )
    assert done.returncode == 0, done.stderr
    page = out.read_text()
    figures = re.findall(r"<figure data-plot='(\w+)'>(.*?)</figure>", page, re.S)
    assert [key for key, _ in figures] == ["throughput", "shards", "gates", "latency", "storage"]
    assert len(figures) == len(PLOTS)
    for key, body in figures:
        assert "<svg" in body, f"{key} has no plot: {body[:200]}"
        assert "<figcaption>" in body
    # Self-contained: nothing fetched from anywhere, no script.
    assert "<script" not in page
    assert not re.search(r"(src|href)=['\"]https?:", page)
    # What the captions say comes from the ledger: 3,000 vectors in 3 shards, gates met.
    assert "3,000 vectors copied in 3 shard copies" in page
    assert "every figure met its threshold" in page
    assert "COMPLETED" in page
    # No store location reaches the page.
    assert sandbox.store.url is not None
    assert sandbox.store.url not in page
    assert str(sandbox.root) not in page


def test_a_migration_without_entries_has_no_report() -> None:
    with pytest.raises(VecmigrateError, match="no ledger entries yet"):
        render(ReportData("nothing-yet", []))
