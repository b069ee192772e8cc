"""Serving an ASGI app with uvicorn the way a public endpoint needs: TLS, bounded bodies, and no
client allowed to hold a connection by sending slowly.

* :class:`BodyGuard` (ASGI middleware) refuses a body over the limit with 413 before reading
  it when ``Content-Length`` says so, stops reading one that grows past it, and answers 408 when
  the body does not arrive within ``read_timeout`` seconds (an overstated ``Content-Length``
  otherwise waits forever).
* :class:`_HeaderDeadline` closes a connection whose request headers have not all arrived
  within ``header_timeout`` seconds of it opening (or of its previous response): uvicorn's own
  keep-alive timer is reset by every byte, so a client dripping one byte at a time would hold
  the connection indefinitely.
* Malformed requests (a non-numeric or negative ``Content-Length``, a broken request line) are
  answered 400 by uvicorn's HTTP parser before the app sees them.

:class:`AsgiServer` runs an app on a background thread (or in the foreground) on a socket
bound before it starts, so the port is known at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

try:  # uvicorn's C parser and event loop, when installed (uvicorn[standard])
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as FastProtocol

    LOOP = "uvloop"
except ImportError:  # pragma: no cover - the pure-Python parser
    FastProtocol = H11Protocol  # type: ignore[assignment,misc]
    LOOP = "asyncio"

Scope = dict[str, Any]
Message = dict[str, Any]


def _json_response(status: int, error: str) -> tuple[Message, Message]:
    body = json.dumps({"error": error}).encode()
    return (
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        },
        {"type": "http.response.body", "body": body},
    )


class BodyGuard:
    """ASGI middleware: a size limit and a read deadline on request bodies (see module doc)."""

    def __init__(self, app: Any, max_body: int, read_timeout: float) -> None:
        self.app = app
        self.max_body = max_body
        self.read_timeout = read_timeout

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            # A non-numeric length is refused by the HTTP parser first; belt and braces.
            refusal = (
                (413, f"body over {self.max_body} bytes")
                if declared.isdigit()
                else (400, "Content-Length is not a number")
            )
            for reply in _json_response(*refusal):
                await send(reply)
            return
        # The body is read here, whole, before the app runs: the app sees a complete body or
        # none, and a client that stops sending gets 408, not an app's parse error.
        chunks: list[bytes] = []
        seen = 0
        more = True
        while more:
            try:
                message: Message = await asyncio.wait_for(receive(), self.read_timeout)
            except TimeoutError:
                status, error = (
                    408,
                    f"the request body did not arrive within {self.read_timeout:g} s",
                )
                break
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_body:
                status, error = 413, f"body over {self.max_body} bytes"
                break
            chunks.append(chunk)
            more = message.get("more_body", False)
        if more:
            for reply in _json_response(status, error):
                await send(reply)
            return
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return dict(await receive())

        await self.app(scope, replay, send)


class _HeaderDeadline(FastProtocol):
    """uvicorn's HTTP/1.1 protocol with a deadline on receiving each request's headers."""

    header_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(self.header_timeout, self._expire)

    def _expire(self) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            return  # headers arrived: the body's own deadline (BodyGuard) applies now
        if not self.transport.is_closing():
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._deadline.cancel()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline.cancel()
        super().connection_lost(exc)


@dataclass(frozen=True)
class TlsFiles:
    """A server certificate and key; with ``client_ca``, clients must present a certificate
    that CA signed."""

    cert: Path
    key: Path
    client_ca: Path | None = None


class AsgiServer:
    """An ASGI app served by uvicorn on ``host``:``port`` (0: any free port)."""

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        tls: TlsFiles | None = None,
        header_timeout: float = 10.0,
        keep_alive: int = 15,
        max_connections: int | None = 1000,
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # The protocol named, not 0: asyncio turns Nagle's algorithm off only on sockets that
        # say they are TCP, and with it on, a response written in two parts (headers, body)
        # waits for the client's delayed ACK: 40 ms a request.
        self.sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(1024)
        protocol = type("Protocol", (_HeaderDeadline,), {"header_timeout": header_timeout})
        options: dict[str, Any] = {}
        if tls is not None:
            options.update(ssl_certfile=str(tls.cert), ssl_keyfile=str(tls.key))
            if tls.client_ca is not None:
                options.update(ssl_ca_certs=str(tls.client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
        self.config = uvicorn.Config(
            app,
            http=protocol,
            loop=LOOP,
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_keep_alive=keep_alive,
            limit_concurrency=max_connections,
            server_header=False,
            **options,
        )
        self.server = uvicorn.Server(self.config)
        self.scheme = "https" if tls is not None else "http"
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"{self.scheme}://{host}:{port}"

    @property
    def serving(self) -> bool:
        """Whether it answers connections now: started, and not told to stop."""
        return bool(self.server.started and not self.server.should_exit)

    def serve(self) -> None:
        """Serve in the foreground until :meth:`stop` (or a signal uvicorn handles)."""
        self.server.run(sockets=[self.sock])

    async def serve_async(self) -> None:
        """Serve on the running event loop until :meth:`stop`, SIGINT or SIGTERM."""
        await self.server.serve(sockets=[self.sock])

    def start(self) -> AsgiServer:
        """Serve on a background thread; returns once it accepts connections."""
        self._thread = threading.Thread(target=self.serve, name="asgi-server", daemon=True)
        self._thread.start()
        for _ in range(500):
            if self.server.started:
                break
            if not self._thread.is_alive():
                raise RuntimeError("the server stopped while starting")
            threading.Event().wait(0.01)
        return self

    def stop(self) -> None:
        """Stop accepting, finish requests in flight, close."""
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
        with contextlib.suppress(OSError):
            self.sock.close()
