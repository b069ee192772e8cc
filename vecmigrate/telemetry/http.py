"""Telemetry of an HTTP server's requests: one span, the request metrics and an access log line
each (by default only for errors and slow requests).

:class:`RequestTelemetry` is ASGI middleware, outermost, so that what it measures includes
everything the server does for a request (a body refused for its size, a credential refused).
Per request:

* a SERVER span named ``METHOD ROUTE`` (the route's template, never the raw path), a child of
  the caller's span when the request carries a W3C ``traceparent`` (the global propagator
  reads it). A 5xx sets status ERROR; any error sets ``error.type`` to the exception's type or
  the status code. Never a message: messages can carry connection details or query text.
* ``http.server.request.duration`` by method, route, status, tenant and version, and
  ``vecmigrate.gateway.errors`` by route, tenant, version and error type.
* an access log line on ``vecmigrate.gateway.requests`` (method, route, status, seconds,
  tenant, collection, version, error type, and the span's trace id): never headers, query
  string or body, where credentials and data travel. Which requests get one is
  ``access_log``'s choice: ``errors`` (the default, as production gateways log) a request
  answered 4xx or 5xx (ERROR for a 5xx, INFO otherwise) or slower than ``slow_seconds``
  (WARNING); ``all`` every request (INFO, ERROR for a 5xx).

The app says what the request was about (tenant, collection, version served, routing
decisions) on the request's :class:`RequestNotes` (:func:`request_notes`, a context variable:
it follows the request into the thread a sync endpoint runs on). Labels
come only from those notes and from the route table: a path nobody routes is labelled by its
status alone, so an unauthenticated caller cannot grow the label sets.

Why not ``opentelemetry-instrumentation-asgi``: its duration histogram has a fixed label set
(tenant and version cannot be added, so it would be switched off and redone here), and its span
records an exception that escapes the app with the exception's message, which the rule above
forbids; what remains of it (reading ``traceparent``, naming the span) is two API calls.

What a request's telemetry costs is measured by ``bench/telemetry_overhead.py``; the hot path
is kept to the span, one call setting its attributes (only when the span is sampled: the
routing row's attributes are built once per routing generation, by the app), one histogram
record with a label set built once per combination, and a log line only when one is due.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, TextMapPropagator
from opentelemetry.trace import SpanKind, Status, StatusCode

from vecmigrate.errors import ConfigurationError
from vecmigrate.telemetry import names
from vecmigrate.telemetry.metrics import Recorder
from vecmigrate.telemetry.setup import Telemetry, current

log = logging.getLogger("vecmigrate.gateway.requests")

Scope = dict[str, Any]
Message = dict[str, Any]
# The route template that matches a scope, for requests answered before the app routed them.
RouteOf = Callable[[Scope], str | None]
# Told of every request once it is answered: its notes, status and seconds (in the server's
# task, after the response went out).
Answered = Callable[["RequestNotes", int, float], None]
# Which requests the access log writes a line for (see the module's doc).
ACCESS_LOGS = ("errors", "all")
# Label sets kept ready per combination; past this many (the SDK's own cardinality limit),
# each request builds its own.
_LABEL_CACHE = 2000
_NO_ATTRIBUTES: Mapping[str, Any] = MappingProxyType({})
# The parent of a request that carries no trace context: none (a new trace), whatever context
# the server's task happens to run in.
_NO_PARENT = Context()


@dataclass
class RequestNotes:
    """What a request was about, as the app learnt it."""

    tenant: str | None = None
    collection: str | None = None
    # The version that answered a read (writes reach every write version: none).
    version: str | None = None
    # Set when the app answered with an error it caught: the exception's type.
    error_type: str | None = None
    # The routing row's span attributes: one mapping per routing generation, shared by the
    # requests served by it (read only).
    routing: Mapping[str, Any] = field(default_factory=lambda: _NO_ATTRIBUTES)
    # This request's own span attributes (canary, shadowed).
    attributes: dict[str, Any] = field(default_factory=dict)
    # Whether the request's span records (is sampled): the attributes above are built only
    # then (an unsampled request builds none).
    recording: bool = False
    # Whether an ``on_answered`` hook is told of this request once it is answered.
    reported: bool = False
    # The (tenant, collection) whose search latencies this request's whole time counts in
    # (set by the app on a search it left untimed, for that hook to record).
    timed_for: tuple[str, str] | None = None


@dataclass(slots=True)
class _Answered:
    """How a request was answered: what its span, metrics and log line say of it."""

    method: str
    route: str | None
    status: int
    error: str | None
    note: RequestNotes
    seconds: float


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
    """ASGI middleware: a span, the request metrics and an access log line per HTTP request
    (see the module's doc). With telemetry off it only logs.

    Raises:
        ConfigurationError: ``access_log`` is not one of :data:`ACCESS_LOGS`, or
            ``slow_seconds`` is negative.
    """

    def __init__(
        self,
        app: Any,
        telemetry: Telemetry | None = None,
        *,
        route_of: RouteOf | None = None,
        quiet: Iterable[str] = (),
        access_log: str = "errors",
        slow_seconds: float = 1.0,
        on_answered: Answered | None = None,
    ) -> None:
        if access_log not in ACCESS_LOGS:
            raise ConfigurationError(f"access log {access_log!r}: use {' or '.join(ACCESS_LOGS)}")
        if not slow_seconds >= 0:
            raise ConfigurationError(f"slow request threshold {slow_seconds!r}: must be >= 0 s")
        self.app = app
        self.telemetry = telemetry or current()
        self.route_of = route_of
        # Paths polled every few seconds (probes, scrapes): no span, no line, no metric.
        self.quiet = frozenset(quiet)
        self.log_all = access_log == "all"
        self.slow_seconds = slow_seconds
        self.on_answered = on_answered
        # The duration histogram's recorder per (method, status, route, tenant, version).
        self._durations: dict[tuple[Any, ...], Recorder] = {}
        self._errors: dict[tuple[Any, ...], dict[str, str | int]] = {}
        self._textmap: TextMapPropagator | None = None
        self._fields: frozenset[bytes] = frozenset()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in self.quiet:
            await self.app(scope, receive, send)
            return
        t = self.telemetry
        began = time.perf_counter()
        note = RequestNotes(reported=self.on_answered is not None)
        token = _notes.set(note)
        status: int | None = None

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        method = scope["method"]
        span = None
        attached = None
        if t.tracing:
            span = t.tracer.start_span(
                method,
                context=self._parent(scope),
                kind=SpanKind.SERVER,
                record_exception=False,
                set_status_on_exception=False,
            )
            # Attached even when the span is not sampled: the store calls beneath it must see
            # an unsampled parent (else each would start a trace of its own, sampled anew).
            attached = otel_context.attach(trace.set_span_in_context(span))
            note.recording = span.is_recording()
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
            error = None
            if status >= 400 or failure is not None:
                error = failure or note.error_type or str(status)
            answered = _Answered(method, self._route(scope), status, error, note, seconds)
            if note.recording:
                self._annotate(span, scope, answered)
            self._measure(answered)
            self._log(answered)  # in the span's context
            if self.on_answered is not None:
                self.on_answered(note, status, seconds)
            if span is not None and attached is not None:
                otel_context.detach(attached)
                span.end()
            _notes.reset(token)

    def _parent(self, scope: Scope) -> Context:
        """The caller's trace context when the request carries one (``traceparent`` and the
        other headers the global propagator reads), else an empty context: a new trace."""
        textmap = propagate.get_global_textmap()
        if textmap is not self._textmap:
            self._textmap = textmap
            self._fields = frozenset(f.lower().encode("latin-1") for f in textmap.fields)
        fields = self._fields
        for key, _ in scope["headers"]:
            if key.lower() in fields:
                return propagate.extract(scope, getter=_getter)
        return _NO_PARENT

    def _route(self, scope: Scope) -> str | None:
        routed = scope.get("route")
        template = getattr(routed, "path", None)
        if isinstance(template, str):
            return template
        return self.route_of(scope) if self.route_of is not None else None

    def _annotate(self, span: Any, scope: Scope, a: _Answered) -> None:
        note = a.note
        # One call: the SDK takes its lock and checks the values once per call, not per key.
        attributes: dict[str, Any] = {
            names.HTTP_METHOD: a.method,
            names.HTTP_STATUS: a.status,
            "url.scheme": scope.get("scheme", "http"),
            **note.routing,
            **note.attributes,
        }
        if a.route is not None:
            span.update_name(f"{a.method} {a.route}")
            attributes[names.HTTP_ROUTE] = a.route
        if note.tenant is not None:
            attributes[names.ATTR_TENANT] = note.tenant
        if note.collection is not None:
            attributes[names.ATTR_COLLECTION] = note.collection
        if note.version is not None:
            attributes[names.ATTR_VERSION] = note.version
        if a.error is not None:
            attributes[names.ERROR_TYPE] = a.error
        span.set_attributes(attributes)
        if a.status >= 500:
            # A server span's 4xx is the caller's error, not the server's (HTTP conventions).
            span.set_status(Status(StatusCode.ERROR))

    def _measure(self, a: _Answered) -> None:
        if not self.telemetry.metering:
            return
        note = a.note
        m = self.telemetry.metrics
        key = (a.method, a.status, a.route, note.tenant, note.version)
        record = self._durations.get(key)
        if record is None:
            labels = self._labels(key, {names.HTTP_METHOD: a.method, names.HTTP_STATUS: a.status})
            record = m.recorder(names.GATEWAY_DURATION, labels)
            if len(self._durations) < _LABEL_CACHE:
                self._durations[key] = record
        record(a.seconds)
        if a.error is not None:
            by_error = (a.error, a.route, note.tenant, note.version)
            found = self._errors.get(by_error)
            if found is None:
                found = self._labels(by_error, {names.ERROR_TYPE: a.error})
                if len(self._errors) < _LABEL_CACHE:
                    self._errors[by_error] = found
            m.add(names.GATEWAY_ERRORS, 1, found)

    @staticmethod
    def _labels(key: tuple[Any, ...], labels: dict[str, str | int]) -> dict[str, str | int]:
        """``labels`` with the route, tenant and version of ``key`` (its last three); kept per
        key by the caller, so never changed afterwards."""
        route, tenant, version = key[-3:]
        if route is not None:
            labels[names.HTTP_ROUTE] = route
        if tenant is not None:
            labels[names.TENANT] = tenant
        if version is not None:
            labels[names.VERSION] = version
        return labels

    def _log(self, a: _Answered) -> None:
        note = a.note
        if a.status >= 500:
            level = logging.ERROR
        elif a.status >= 400 or self.log_all:
            level = logging.INFO
        elif a.seconds >= self.slow_seconds:
            level = logging.WARNING
        else:
            return  # a request answered well and in time: counted and traced, not logged
        if not log.isEnabledFor(level):
            return
        fields = {
            "method": a.method,
            "route": a.route,
            "status": a.status,
            "seconds": round(a.seconds, 6),
            "tenant": note.tenant,
            "collection": note.collection,
            "version": note.version,
            "error_type": a.error,
        }
        log.log(
            level,
            "%s %s %d",
            a.method,
            a.route or "(no route)",
            a.status,
            extra={k: v for k, v in fields.items() if v is not None},
        )
