"""Connecting to a Temporal server that is still starting: wait for it; fail fast otherwise."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest

from vecmigrate.control.devserver import DevServer, free_port
from vecmigrate.workers.connection import connect

pytestmark = pytest.mark.integration


async def test_a_client_waits_for_a_server_still_starting(tmp_path: Path) -> None:
    port = free_port()
    # The worker of a demo or a compose file may start before its server listens.
    pending = asyncio.create_task(connect(f"127.0.0.1:{port}", wait_seconds=120))
    await asyncio.sleep(1.0)
    assert not pending.done()  # nothing listens yet: still waiting, not failed
    server = await asyncio.to_thread(DevServer(tmp_path / "temporal.db", port=port, ui=False).start)
    try:
        client = await asyncio.wait_for(pending, timeout=120)
        info = await client.workflow_service.get_system_info(GetSystemInfoRequest())
        assert info.server_version
    finally:
        server.stop()


async def test_nothing_listening_fails_once_the_wait_is_over() -> None:
    began = time.monotonic()
    with pytest.raises(RuntimeError, match=r"Connection refused|ConnectionRefused"):
        await connect(f"127.0.0.1:{free_port()}", wait_seconds=1.0)
    assert time.monotonic() - began < 10
