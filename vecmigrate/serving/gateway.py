"""HTTP gateway over the router: what applications call while collections migrate.

JSON over HTTP/1.1 (keep-alive), one thread per connection:

    GET  /health
    POST /v1/{tenant}/{collection}/search   {"vector": [...]} or {"vectors": [[...]]}
                                            or {"text": "..."} or {"texts": [...]},
                                            "k", "key", "model" (the query vectors' model)
    POST /v1/{tenant}/{collection}/upsert   {"ids": [...], "vectors": [[...]], "texts": [...]}
                                            (vectors, texts or both)
    POST /v1/{tenant}/{collection}/delete   {"ids": [...]}

Texts are embedded by the model of the version that reads or writes them (see
``vecmigrate.serving.router``); a search answer says which model (or adapter) embedded the query.

Bad input is a 400 naming the problem (wrong dimension, NaN, wrong model, malformed JSON), an
unknown collection a 404, a model that cannot run (and no adapter) a 409, and writes during an
offline migration a 503 with ``Retry-After``. Nothing is written for a request that fails.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from vecmigrate.catalog.catalog import Catalog
from vecmigrate.errors import DataError, NotFoundError, PreconditionError
from vecmigrate.serving.router import Router, WritesPausedError

log = logging.getLogger("vecmigrate.gateway")

MAX_BODY = 64 * 1024 * 1024


class BadRequestError(Exception):
    """A request the gateway cannot read."""


def _floats(value: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise BadRequestError(f"{what} must be numbers") from None
    return arr


def _ids(value: Any) -> np.ndarray:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise BadRequestError("ids must be a list of integers")
    return np.asarray(value, dtype=np.int64)


def _texts(body: dict[str, Any]) -> list[str] | None:
    if "texts" in body:
        value = body["texts"]
    elif "text" in body:
        value = [body["text"]]
    else:
        return None
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise BadRequestError("texts must be a list of strings")
    return value


class Gateway:
    """The router behind an HTTP server; ``start`` serves on a thread, ``serve`` blocks."""

    def __init__(
        self, catalog_url: str, host: str = "127.0.0.1", port: int = 8080, refresh: float = 1.0
    ) -> None:
        self.router = Router(Catalog(catalog_url), refresh_seconds=refresh)
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # One write per response (flushed after each request), and no Nagle delay: with
            # headers and body in separate segments, delayed ACKs cost 40 ms a request.
            wbufsize = -1

            def setup(self) -> None:
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug(format, *args)

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/health":
                    self._send(HTTPStatus.OK, {"ok": True})
                else:
                    self._send(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint {self.path}"})

            def do_POST(self) -> None:
                try:
                    parts = self.path.strip("/").split("/")
                    if len(parts) != 4 or parts[0] != "v1":
                        raise NotFoundError(
                            f"no such endpoint {self.path}; use /v1/TENANT/COLLECTION/"
                            "search|upsert|delete"
                        )
                    _, tenant, collection, action = parts
                    body = self._body()
                    result = gateway.handle(tenant, collection, action, body)
                    self._send(HTTPStatus.OK, result)
                except BadRequestError as exc:
                    self._send(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
                except DataError as exc:
                    self._send(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
                except NotFoundError as exc:
                    self._send(HTTPStatus.NOT_FOUND, {"error": str(exc)})
                except PreconditionError as exc:
                    self._send(HTTPStatus.CONFLICT, {"error": str(exc)})
                except WritesPausedError as exc:
                    self._send(
                        HTTPStatus.SERVICE_UNAVAILABLE,
                        {"error": str(exc), "retry_after": exc.retry_after},
                        {"Retry-After": str(exc.retry_after)},
                    )
                except Exception as exc:
                    log.exception("request failed")
                    self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": str(exc)})

            def _body(self) -> dict[str, Any]:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    raise BadRequestError(f"body of {length} bytes is over {MAX_BODY}")
                raw = self.rfile.read(length)
                try:
                    data = json.loads(raw or b"{}")
                except json.JSONDecodeError as exc:
                    raise BadRequestError(f"body is not JSON: {exc}") from None
                if not isinstance(data, dict):
                    raise BadRequestError("body must be a JSON object")
                return data

            def _send(
                self,
                status: HTTPStatus,
                payload: dict[str, Any],
                headers: dict[str, str] | None = None,
            ) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def handle(
        self, tenant: str, collection: str, action: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        """Run one request through the router; the JSON answer."""
        if action == "search":
            k = body.get("k", 10)
            if not isinstance(k, int) or not 1 <= k <= 1000:
                raise BadRequestError("k must be an integer between 1 and 1000")
            key = body.get("key")
            key = None if key is None else str(key)
            texts = _texts(body)
            if texts is not None:
                found = self.router.search_text(tenant, collection, texts, k, key=key)
            else:
                if "vectors" in body:
                    queries = _floats(body["vectors"], "vectors")
                elif "vector" in body:
                    queries = _floats([body["vector"]], "vector")
                else:
                    raise BadRequestError("search needs 'vector', 'vectors', 'text' or 'texts'")
                if queries.ndim != 2:
                    raise BadRequestError("vectors must be a list of equally long lists of numbers")
                model = body.get("model")
                found = self.router.search(
                    tenant,
                    collection,
                    queries,
                    k,
                    key=key,
                    model=None if model is None else str(model),
                )
            return {
                "version": found.version,
                "via": found.via,
                "ids": found.ids.tolist(),
                "distances": np.where(np.isfinite(found.distances), found.distances, -1)
                .round(6)
                .tolist(),
            }
        if action == "upsert":
            ids = _ids(body.get("ids"))
            texts = _texts(body)
            vectors = None
            if "vectors" in body:
                vectors = _floats(body.get("vectors"), "vectors")
                if vectors.ndim != 2:
                    raise BadRequestError("vectors must be a list of equally long lists of numbers")
            elif texts is None:
                raise BadRequestError("upsert needs 'vectors', 'texts' or both")
            seq = self.router.upsert(tenant, collection, ids, vectors, texts)
            return {"upserted": len(ids), "seq": seq}
        if action == "delete":
            ids = _ids(body.get("ids"))
            seq = self.router.delete(tenant, collection, ids)
            return {"deleted": len(ids), "seq": seq}
        raise NotFoundError(f"no action {action!r}; use search, upsert or delete")

    def start(self) -> Gateway:
        """Serve on a background thread."""
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and flush shadow samples."""
        self.server.shutdown()
        self.server.server_close()
        self.router.close()
        if self._thread is not None:
            self._thread.join(timeout=10)
