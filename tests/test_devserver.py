"""The dev server's start: a port taken for a moment is tried again; one kept taken is named."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from vecmigrate.control.devserver import DevServer, DevServerError, free_port


def _hold(port: int) -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", port))
    listener.listen()
    return listener


@pytest.mark.integration
def test_a_port_taken_for_a_moment_is_tried_again(tmp_path: Path) -> None:
    server = DevServer(tmp_path / "temporal.db", port=free_port(), ui_port=free_port())
    taken = _hold(server.ui_port)

    def release_once_refused() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
            server.log_file.exists() and "can't set UI port" in server.log_file.read_text()
        ):
            time.sleep(0.05)
        taken.close()

    threading.Thread(target=release_once_refused, daemon=True).start()
    try:
        server.start()
        log = server.log_file.read_text()
        # the first start met the taken port and exited; a later one came up on the same ports
        assert f"can't set UI port {server.ui_port}" in log
        assert server.address.endswith(f":{server.port}")
    finally:
        server.stop()
        taken.close()


@pytest.mark.integration
def test_a_port_kept_taken_fails_with_what_the_server_said(tmp_path: Path) -> None:
    server = DevServer(tmp_path / "temporal.db", port=free_port(), ui=False)
    taken = _hold(server.port)
    try:
        with pytest.raises(DevServerError) as failure:
            server.start(attempts=2)
    finally:
        taken.close()
    message = str(failure.value)
    assert "(start 2 of 2)" in message
    assert f"can't set frontend port {server.port}" in message
    assert "address already in use" in message
    assert server.process is None
