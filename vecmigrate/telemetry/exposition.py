"""The HTTP endpoint of a worker: ``/metrics`` for Prometheus, ``/healthz`` and ``/readyz`` for
the orchestrator's probes.

The gateway serves the same ``/metrics`` on its own port (:func:`metrics_payload`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

# A probe answers (healthy, why not).
Probe = Callable[[], tuple[bool, str]]


def metrics_payload(registry: CollectorRegistry | None) -> tuple[int, str, bytes]:
    """(status, content type, body) of a ``/metrics`` answer."""
    if registry is None:
        return (
            HTTPStatus.NOT_FOUND,
            "text/plain; charset=utf-8",
            b"metrics are off: set OTEL_METRICS_EXPORTER=prometheus\n",
        )
    return HTTPStatus.OK, CONTENT_TYPE_LATEST, generate_latest(registry)


def _always() -> tuple[bool, str]:
    return True, "ok"


class ProbeServer:
    """``/metrics``, ``/healthz`` (alive) and ``/readyz`` (ready for work) on a thread."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry | None,
        *,
        live: Probe = _always,
        ready: Probe = _always,
    ) -> None:
        routes: dict[str, Callable[[], tuple[int, str, bytes]]] = {
            "/metrics": lambda: metrics_payload(registry),
            "/healthz": lambda: _probe(live),
            "/readyz": lambda: _probe(ready),
        }

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass  # scrapes and probes every few seconds: not worth a line each

            def do_GET(self) -> None:
                route = routes.get(self.path.split("?", 1)[0].rstrip("/") or "/")
                status: int
                if route is None:
                    status, kind, body = (
                        HTTPStatus.NOT_FOUND,
                        "text/plain; charset=utf-8",
                        b"use /metrics, /healthz or /readyz\n",
                    )
                else:
                    status, kind, body = route()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> ProbeServer:
        """Serve on a background thread."""
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="probe-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _probe(check: Probe) -> tuple[int, str, bytes]:
    ok, why = check()
    status = HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE
    return status, "text/plain; charset=utf-8", (why + "\n").encode()


def parse_address(value: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``host:port`` or ``:port`` or ``port`` as (host, port).

    Raises:
        ValueError: not an address.
    """
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "", value
    if not port.isdigit():
        raise ValueError(f"{value!r} is not host:port")
    return host or default_host, int(port)
