"""Committed histories replay against today's workflow code: running migrations stay safe.

The histories of the release before the lifecycle table replay too: its running migrations
finish on this code (behind the ``lifecycle-table`` patch) with the behaviour they started with.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

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
# The lifecycle table's release (v2) and the routing step's (v3): the same cases each.
CURRENT = [p for p in HISTORIES if p.stem.endswith(("_v2", "_v3"))]


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
    for release in ("v2", "v3"):
        assert {
            f"blue_green_rolled_back_{release}",
            f"blue_green_paused_resumed_{release}",
        } <= names
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


def _bookkeeping(path: Path) -> tuple[Counter[str], list[Any]]:
    """The routing and version-state tasks of a history, with the ledger entries that record
    them (by activity and entry kind), and the routing steps' inputs."""
    tasks: Counter[str] = Counter()
    steps = []
    for name, _, decoded in activity_inputs(load(path)):
        if name == "record" and decoded["kind"] in ("routing.changed", "version.state"):
            tasks[f"record {decoded['kind']}"] += 1
        elif name in ("change_routing", "set_version_state", "routing_step"):
            tasks[name] += 1
        if name == "routing_step":
            steps.append(decoded)
    return tasks, steps


def test_a_routing_change_its_entry_and_its_states_are_one_task() -> None:
    """The online drill (two cut-overs, a rollback after the first, finalize): with the
    ``routing-step`` patch every routing change, its ledger entry and the version states that
    go with it are one task each, where the release before ran one task per write."""
    before, _ = _bookkeeping(HERE / "online_drill_v2.json")
    after, steps = _bookkeeping(HERE / "online_drill_v3.json")
    assert before == {
        "change_routing": 7,
        "record routing.changed": 7,
        "set_version_state": 7,
        "record version.state": 7,
    }
    assert after == {"routing_step": 7}
    states = [[(s["version"], s["state"]) for s in step["states"]] for step in steps]
    cutover = [("v2", "serving"), ("v1", "standby")]
    assert states.count(cutover) == 2  # both cut-overs
    assert [("v1", "serving"), ("v2", "building")] in states  # the rollback after the first
    assert [("v1", "retained")] in states  # finalize
    # Each entry keeps the event key its own task would have had: distinct, in order.
    keys = []
    for step in steps:
        keys += [step["event_key"], *(s["event_key"] for s in step["states"])]
    numbers = [int(k.rsplit("/", 1)[1]) for k in keys]
    assert numbers == sorted(set(numbers))
    assert len(numbers) == 14
