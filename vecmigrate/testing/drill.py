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


def _reached(mid: str, st: MigrationStatus, phase: Phase) -> bool:
    """Whether ``st`` is in ``phase``.

    Raises:
        RuntimeError: it ended elsewhere, or paused, on the way.
    """
    if st.phase == phase:
        return True
    if st.phase in TERMINAL or st.paused:
        raise RuntimeError(
            f"{mid} is {st.phase}{' (paused)' if st.paused else ''} waiting for {phase}: "
            f"{st.pause_reason or st.error or st.blocked_reason}"
        )
    return False


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
        if st is not None and _reached(mid, st, phase):
            return st
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
    # One query of the migration's status every 0.1 s, which both tags requests with the phase
    # and tells the drill when to act: each query is work for the worker and the Temporal
    # server, on the cores the gateway under load shares.
    latest: MigrationStatus | None = None

    async def follow() -> None:
        nonlocal latest
        while True:
            with contextlib.suppress(Exception):
                st = await mc.status_if_started(mid)
                if st is not None:
                    latest = st
                    on_phase(str(st.phase))
            await asyncio.sleep(0.1)

    async def reach(phase: Phase) -> None:
        deadline = time.monotonic() + timeout
        while latest is None or not _reached(mid, latest, phase):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{mid} did not reach {phase} within {timeout:.0f}s")
            await asyncio.sleep(0.02)

    follower = asyncio.ensure_future(follow())
    try:
        await reach(Phase.AWAITING_CUTOVER)
        await mc.signal(mid, "approve_cutover", operator=operator, reason="canary clean")
        await reach(Phase.BAKING)
        await mc.signal(mid, "rollback", operator=operator, reason="drill: roll back after")
        await reach(Phase.AWAITING_CUTOVER)
        await asyncio.sleep(spec.online.settle_seconds)  # traffic on the old version again
        await mc.signal(mid, "approve_cutover", operator=operator, reason="second cut-over")
        return await mc.result(mid, timeout=timeout)
    finally:
        follower.cancel()
