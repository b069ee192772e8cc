"""Chaos: worker processes killed with SIGKILL and the Temporal server restarted mid-migration."""

from __future__ import annotations

from pathlib import Path

import pytest

from vecmigrate.testing.chaos import run_chaos


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_migration_survives_killed_workers_and_a_server_restart(tmp_path: Path) -> None:
    report = run_chaos(tmp_path, n=40_000, shards=8, batch_size=1_000, kills=5, seed=3)
    print(report.as_dict())
    assert report.problems == []
    assert report.kills >= 5
    assert report.server_restarts == 1
    assert report.phase == "COMPLETED"
    assert report.checksum_target == report.checksum_source
    assert report.target_rows == report.distinct_ids == 40_000
    assert report.ids_match
    # Every retried copy re-copied at most one batch (counted by the shard journal).
    assert report.max_recopied_per_retry <= 1_000
    assert report.recopied <= 1_000 * report.retried_copies
    # The gate took every shard's check from what its copy streamed through the kills (and
    # those figures equal a full read of both versions: a problem otherwise).
    assert report.streamed_checks == 8
