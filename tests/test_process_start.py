"""How the long-running processes start: a process that dies of a fatal signal leaves every
thread's Python stack on stderr (the ``vecmigrate`` command and the worker turn it on), and the
gateway takes what it holds at its start out of the garbage collector's full collections."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

import vecmigrate.serving.gateway as gateway_module
from vecmigrate.catalog.catalog import Catalog
from vecmigrate.config import sqlite_url

pytestmark = pytest.mark.integration  # starts Python processes

CRASH = "faulthandler._sigsegv()"
PROGRAMS = {
    "crash_traces": f"from vecmigrate.telemetry.logs import crash_traces; crash_traces(); {CRASH}",
    # Each entry point crashes where its work would begin: after its set-up.
    "worker": "from vecmigrate.workers import main as w; "
    f"w.worker_telemetry = lambda *a: {CRASH}; w.main([])",
    "vecmigrate command": "from vecmigrate.control import cli; "
    f"cli.main = lambda: {CRASH}; cli.run()",
}


def crashed(program: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", f"import faulthandler; {program}"], capture_output=True, text=True
    )
    assert done.returncode != 0, done.stderr
    return done.stderr


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_a_crash_prints_the_python_stacks(name: str) -> None:
    stderr = crashed(PROGRAMS[name])
    assert "Fatal Python error: Segmentation fault" in stderr
    assert "Current thread" in stderr
    assert 'File "<string>"' in stderr


def test_without_it_a_crash_leaves_no_stack() -> None:
    assert "Current thread" not in crashed(CRASH)


def test_serve_takes_its_start_out_of_full_collections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Gateway.serve`` (what ``vecmigrate serve`` runs) freezes the heap it starts with; a
    gateway started inside another program (``start``) does not."""
    froze: list[bool] = []
    monkeypatch.setattr(gateway_module, "frozen_start", lambda: froze.append(True))

    async def served() -> None:
        return None

    gateway = gateway_module.Gateway(Catalog(sqlite_url(tmp_path / "c.db")).url, port=0)
    monkeypatch.setattr(gateway.server, "serve_async", served)
    asyncio.run(gateway.serve())
    assert froze == [True]
    gateway.start()
    gateway.stop()
    assert froze == [True]


def test_a_frozen_start_leaves_the_objects_alive_out_of_collections() -> None:
    program = (
        "import gc; from vecmigrate.serving.gateway import frozen_start; frozen_start(); "
        "print(gc.get_freeze_count())"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 10_000  # the modules, classes and functions of its imports
