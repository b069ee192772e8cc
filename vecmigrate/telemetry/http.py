"""Telemetry of an HTTP server's requests: one span, the request metrics and one log line each.

:class:`RequestTelemetry` is ASGI middleware, outermost, so that what it measures includes
everything the server does for a request (a body refused for its size, a credential refused).
Per request:

* a SERVER span named ``METHOD ROUTE`` (the route's template, never the raw path), a child of
  the caller's span when the request carries a W3C ``traceparent`` (the global propagator
  reads it). A 5xx sets status ERROR; any error sets ``error.type`` to the exception's type or
  the status code. Never a message: messages can carry connection details or query text.
* ``http.server.request.duration`` by method, route, status, tenant and version, and
  ``vecmigrate.gateway.errors`` by route, tenant, version and error type.
* one INFO line on ``vecmigrate.gateway.requests`` (method, route, status, seconds, tenant,
  collection, version, error type, and the span's trace id): never headers, query string or
  body, where credentials and data travel.

The app says what the request was about (tenant, collection, version served, routing
decisions) on the request's :class:`RequestNotes` (:func:`request_notes`, a context variable:
it follows the request into the thread a sync endpoint runs on). Labels
come only from those notes and from the route table: a path nobody routes is labelled by its
status alone, so an unauthenticated caller cannot grow the label sets.

Why not ``opentelemetry-instrumentation-asgi``: its duration histogram has a fixed label set
(tenant and version cannot be added, so it would be switched off and redone here), and its span
records an exception that escapes the app with the exception's message, which the rule above
forbids; what remains of it (reading ``traceparent``, naming the span) is two API calls.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import propagate
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, Status, StatusCode

from vecmigrate.telemetry import names
from vecmigrate.telemetry.setup import Telemetry, current

log = logging.getLogger("vecmigrate.gateway.requests")

Scope = dict[str, Any]
Message = dict[str, Any]
# The route template that matches a scope, for requests answered before the app routed them.
RouteOf = Callable[[Scope], str | None]


@dataclass
class RequestNotes:
    """What a request was about, as the app learnt it."""

    tenant: str | None = None
    collection: str | None = None
    # The version that answered a read (writes reach every write version: none).
    version: str | None = None
    # Set when the app answered with an error it caught: the exception's type.
    error_type: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)


_notes: ContextVar[RequestNotes | None] = ContextVar("vecmigrate_request_notes", default=None)


def request_notes() -> RequestNotes | None:
    """The notes of the request being served (in its task and the threads it hands work to);
    None outside a request, or when no :class:`RequestTelemetry` serves it."""
    return _notes.get()


class _Getter(Getter[Scope]):
    """Reads W3C trace context headers out of an ASGI scope."""

    def get(self, carrier: Scope, key: str) -> list[str] | None:
        wanted = key.lower().encode("latin-1")
        found = [v.decode("latin-1") for k, v in carrier["headers"] if k.lower() == wanted]
        return found or None

    def keys(self, carrier: Scope) -> list[str]:
        return [k.decode("latin-1") for k, _ in carrier["headers"]]


_getter = _Getter()


class RequestTelemetry:
    """ASGI middleware: a span, the request metrics and a log line per HTTP request (see the
    module's doc). With telemetry off it only logs."""

    def __init__(
        self,
        app: Any,
        telemetry: Telemetry | None = None,
        *,
        route_of: RouteOf | None = None,
        quiet: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.telemetry = telemetry or current()
        self.route_of = route_of
        # Paths polled every few seconds (probes, scrapes): no span, no line, no metric.
        self.quiet = frozenset(quiet)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in self.quiet:
            await self.app(scope, receive, send)
            return
        t = self.telemetry
        began = time.perf_counter()
        note = RequestNotes()
        token = _notes.set(note)
        status: int | None = None

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        method = scope["method"]
        with t.tracer.start_as_current_span(
            method,
            context=propagate.extract(scope, getter=_getter) if t.tracing else None,
            kind=SpanKind.SERVER,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            failure: str | None = None
            try:
                await self.app(scope, receive, watched)
            except Exception as exc:
                failure = type(exc).__name__
                raise
            finally:
                seconds = time.perf_counter() - began
                if status is None:
                    # No answer was sent: the app failed, or the client left first (nginx's
                    # 499, so that a disconnect does not count as the server's error).
                    status = 500 if failure is not None else 499
                route = self._route(scope)
                error = None
                if status >= 400 or failure is not None:
                    error = failure or note.error_type or str(status)
                if span.is_recording():
                    self._annotate(span, scope, method, route, status, error, note)
                self._measure(method, route, status, error, note, seconds)
                self._log(method, route, status, error, note, seconds)
                _notes.reset(token)

    def _route(self, scope: Scope) -> str | None:
        routed = scope.get("route")
        template = getattr(routed, "path", None)
        if isinstance(template, str):
            return template
        return self.route_of(scope) if self.route_of is not None else None

    def _annotate(
        self,
        span: Any,
        scope: Scope,
        method: str,
        route: str | None,
        status: int,
        error: str | None,
        note: RequestNotes,
    ) -> None:
        if route is not None:
            span.update_name(f"{method} {route}")
            span.set_attribute(names.HTTP_ROUTE, route)
        span.set_attribute(names.HTTP_METHOD, method)
        span.set_attribute(names.HTTP_STATUS, status)
        span.set_attribute("url.scheme", scope.get("scheme", "http"))
        for key, value in (
            (names.ATTR_TENANT, note.tenant),
            (names.ATTR_COLLECTION, note.collection),
            (names.ATTR_VERSION, note.version),
        ):
            if value is not None:
                span.set_attribute(key, value)
        if note.attributes:
            span.set_attributes(note.attributes)
        if error is not None:
            span.set_attribute(names.ERROR_TYPE, error)
        if status >= 500:
            # A server span's 4xx is the caller's error, not the server's (HTTP conventions).
            span.set_status(Status(StatusCode.ERROR))

    def _measure(
        self,
        method: str,
        route: str | None,
        status: int,
        error: str | None,
        note: RequestNotes,
        seconds: float,
    ) -> None:
        if not self.telemetry.metering:
            return
        where: dict[str, str | int] = {}
        if route is not None:
            where[names.HTTP_ROUTE] = route
        if note.tenant is not None:
            where[names.TENANT] = note.tenant
        if note.version is not None:
            where[names.VERSION] = note.version
        m = self.telemetry.metrics
        m.record(
            names.GATEWAY_DURATION,
            seconds,
            {**where, names.HTTP_METHOD: method, names.HTTP_STATUS: status},
        )
        if error is not None:
            m.add(names.GATEWAY_ERRORS, 1, {**where, names.ERROR_TYPE: error})

    def _log(
        self,
        method: str,
        route: str | None,
        status: int,
        error: str | None,
        note: RequestNotes,
        seconds: float,
    ) -> None:
        level = logging.ERROR if status >= 500 else logging.INFO
        if not log.isEnabledFor(level):
            return
        fields = {
            "method": method,
            "route": route,
            "status": status,
            "seconds": round(seconds, 6),
            "tenant": note.tenant,
            "collection": note.collection,
            "version": note.version,
            "error_type": error,
        }
        log.log(
            level,
            "%s %s %d",
            method,
            route or "(no route)",
            status,
            extra={k: v for k, v in fields.items() if v is not None},
        )
