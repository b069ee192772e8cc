"""Committed histories replay against today's workflow code: running migrations stay safe.

The histories of the release before the lifecycle table replay too: its running migrations
finish on this code (behind the ``lifecycle-table`` patch) with the behaviour they started with.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from tests.histories.payloads import activity_inputs, input_bytes, load
from vecmigrate.workflows.compaction import CompactionWorkflow
from vecmigrate.workflows.identity import CallerInterceptor
from vecmigrate.workflows.migration import MigrationWorkflow
from vecmigrate.workflows.regional import RegionalMigrationWorkflow

HERE = Path(__file__).parent / "histories"
HISTORIES = sorted(HERE.glob("*.json"))
CURRENT = [p for p in HISTORIES if p.stem.endswith("_v2")]


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.stem)
async def test_history_replays(path: Path) -> None:
    replayer = Replayer(
        workflows=[MigrationWorkflow, RegionalMigrationWorkflow, CompactionWorkflow],
        data_converter=pydantic_data_converter,
        interceptors=[CallerInterceptor()],  # as every worker has: who sent each message
    )
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    await replayer.replay_workflow(history)


def test_histories_of_every_strategy_are_committed() -> None:
    names = {p.stem for p in CURRENT}
    for strategy in ("blue_green", "online", "offline", "shadow_only"):
        assert any(n.startswith(strategy) for n in names), strategy
    assert {"blue_green_rolled_back_v2", "blue_green_paused_resumed_v2"} <= names
    assert len(HISTORIES) - len(CURRENT) >= 5  # the release before still replays


@pytest.mark.parametrize("path", CURRENT, ids=lambda p: p.stem)
def test_activity_inputs_carry_no_spec(path: Path) -> None:
    """Tasks name their spec by hash; the spec travels once, in the migration's first ledger
    entry (which stores it in the catalog)."""
    history = load(path)
    carrying = []
    for name, _, decoded in activity_inputs(history):
        assert not (isinstance(decoded, dict) and "spec" in decoded), name
        if isinstance(decoded, dict) and "spec" in decoded.get("data", {}):
            carrying.append((name, decoded["kind"]))
    assert carrying == [("record", "migration.started")]
    figures = input_bytes(history)
    for data_plane in ("prepare", "copy_shard", "build_shard_index", "validate", "catch_up"):
        if data_plane in figures:  # before: about 1,900 bytes a call, the spec most of it
            calls, total = figures[data_plane]
            assert total / calls < 400, (data_plane, total / calls)
