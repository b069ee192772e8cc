"""The test tiers: every test lands in one, and a fast test cannot start a server."""

from __future__ import annotations

import subprocess
import sys

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from tests.conftest import TIERS, TierError, refused_program, tier_of
from vecmigrate.control.devserver import temporal_binary


def test_a_test_is_integration_when_it_uses_a_server_and_fast_otherwise() -> None:
    assert tier_of(["sandbox", "tmp_path"], []) == "fast"
    assert tier_of(["client", "env", "sandbox"], []) == "integration"
    assert tier_of(["postgres"], ["parametrize"]) == "integration"
    assert tier_of(["words"], [], heavy={"words"}) == "integration"
    assert tier_of(["tmp_path"], ["integration"]) == "integration"
    assert tier_of(["env"], ["slow", "timeout"]) == "slow"


def test_marks_that_contradict_each_other_or_the_fixtures_are_refused() -> None:
    with pytest.raises(TierError, match=r"marked integration and slow; .* keep one"):
        tier_of([], ["integration", "slow"])
    with pytest.raises(TierError, match="marked fast but uses env"):
        tier_of(["env"], ["fast"])


def test_every_collected_test_has_exactly_one_tier(request: pytest.FixtureRequest) -> None:
    for item in request.session.items:
        tiers = [t for t in TIERS if item.get_closest_marker(t) is not None]
        assert len(tiers) == 1, (item.nodeid, tiers)


def test_servers_and_python_processes_are_what_a_fast_test_may_not_start() -> None:
    assert refused_program([temporal_binary(), "server", "start-dev"]) == "temporal"
    assert refused_program(["/opt/pg/bin/pg_ctl", "-D", "x", "start"]) == "pg_ctl"
    assert refused_program([sys.executable, "-m", "vecmigrate", "plan"]) == "a Python process"
    assert refused_program("/usr/lib/milvus_lite/lib/milvus --port 1") == "milvus"
    assert refused_program(["git", "status"]) is None
    assert refused_program([]) is None


def test_a_fast_test_starting_a_server_fails_and_names_itself(
    request: pytest.FixtureRequest,
) -> None:
    assert request.node.get_closest_marker("fast") is not None
    for argv in ([temporal_binary(), "--version"], [sys.executable, "-c", "pass"]):
        with pytest.raises(TierError, match=f"{request.node.name} starts .* mark it integration"):
            subprocess.Popen(argv)
    assert subprocess.run(["true"], check=False).returncode == 0  # other programs still run


async def test_a_fast_test_reaching_temporal_fails_before_any_connection(
    request: pytest.FixtureRequest,
) -> None:
    assert request.node.get_closest_marker("fast") is not None
    with pytest.raises(TierError, match="starts or reaches a Temporal server"):
        await WorkflowEnvironment.start_local()
    with pytest.raises(TierError, match="starts or reaches a Temporal server"):
        await WorkflowEnvironment.start_time_skipping()
    with pytest.raises(TierError, match="starts or reaches a Temporal server"):
        await Client.connect("127.0.0.1:1")
