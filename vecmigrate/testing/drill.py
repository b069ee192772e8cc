"""The online-migration drill the load test and the benchmark both run.

Start an online migration, let it shadow and ramp, approve the cut-over, roll back while the
new version bakes (reads return to the old version, which dual-write kept current), approve
again, and wait for the end. ``on_phase`` hears every phase change, so requests can be tagged.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from vecmigrate.control.client import MigrationClient
from vecmigrate.model.lifecycle import TERMINAL, Phase
from vecmigrate.model.spec import MigrationSpec
from vecmigrate.model.status import MigrationStatus


async def until_phase(
    mc: MigrationClient, mid: str, phase: Phase, timeout: float = 300.0
) -> MigrationStatus:
    """Poll ``status`` until the migration is in ``phase``.

    Raises:
        RuntimeError: it ended elsewhere, or did not get there within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = await mc.status_if_started(mid)
        if st is None:
            await asyncio.sleep(0.1)  # not started yet
            continue
        if st.phase == phase:
            return st
        if st.phase in TERMINAL or st.paused:
            raise RuntimeError(
                f"{mid} is {st.phase}{' (paused)' if st.paused else ''} waiting for {phase}: "
                f"{st.pause_reason or st.error or st.blocked_reason}"
            )
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{mid} did not reach {phase} within {timeout:.0f}s")


async def run_drill(
    mc: MigrationClient,
    spec: MigrationSpec,
    on_phase: Callable[[str], None],
    operator: str = "drill",
    timeout: float = 600.0,
) -> MigrationStatus:
    """Run the drill; returns the final status."""
    mid = await mc.start(spec, operator=operator)

    async def follow() -> None:
        while True:
            with contextlib.suppress(Exception):
                on_phase(str((await mc.status(mid)).phase))
            await asyncio.sleep(0.1)

    follower = asyncio.ensure_future(follow())
    try:
        await until_phase(mc, mid, Phase.AWAITING_CUTOVER, timeout)
        await mc.signal(mid, "approve_cutover", operator=operator, reason="canary clean")
        await until_phase(mc, mid, Phase.BAKING, timeout)
        await mc.signal(mid, "rollback", operator=operator, reason="drill: roll back after")
        await until_phase(mc, mid, Phase.AWAITING_CUTOVER, timeout)
        await asyncio.sleep(spec.online.settle_seconds)  # traffic on the old version again
        await mc.signal(mid, "approve_cutover", operator=operator, reason="second cut-over")
        return await mc.result(mid, timeout=timeout)
    finally:
        follower.cancel()
