"""A process that dies of a fatal signal leaves every thread's Python stack on stderr: the
``vecmigrate`` command and the worker turn it on at their start."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration  # starts Python processes

CRASH = "faulthandler._sigsegv()"
PROGRAMS = {
    "crash_traces": f"from vecmigrate.telemetry.logs import crash_traces; crash_traces(); {CRASH}",
    # Each entry point crashes where its work would begin: after its set-up.
    "worker": "from vecmigrate.workers import main as w; "
    f"w.worker_telemetry = lambda *a: {CRASH}; w.main([])",
    "vecmigrate command": "from vecmigrate.control import cli; "
    f"cli.main = lambda: {CRASH}; cli.run()",
    "vecmigrate serve": "from vecmigrate.serving import command as c; "
    f"c.main = lambda argv: {CRASH}; c.run([])",
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
