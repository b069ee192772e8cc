"""HTTP gateway over the router: what applications call while collections migrate.

An ASGI app (FastAPI) served by uvicorn, with an OpenAPI document at ``/openapi.json``.
Responses are built directly (their models document them in OpenAPI, and are not validated a
second time on the way out):

    GET  /health
    POST /v1/{tenant}/{collection}/search   {"vector": [...]} or {"vectors": [[...]]}
                                            or {"text": "..."} or {"texts": [...]},
                                            "k", "key", "model" (the query vectors' model),
                                            "filter" (on payload fields)
    POST /v1/{tenant}/{collection}/upsert   {"ids": [...], "vectors": [[...]], "texts": [...]}
    POST /v1/{tenant}/{collection}/delete   {"ids": [...]}
    GET  /v1/{tenant}/{collection}          the collection's routing (admin)
    POST /v1/_name/{name}/search|upsert|delete, GET /v1/_name/{name}
                                            the same, for the collection whose stable name
                                            (cutover.stable_name) is {name}
    GET  /metrics                           Prometheus exposition (see below)

Every request under ``/v1`` carries a credential (``Authorization: Bearer``: an API key or a
JWT; ``X-API-Key`` too), scoped to tenants, collections and actions (``search``: search;
``write``: upsert and delete; ``admin``: all of them and the routing view). No credential is 401;
a credential that does not reach the tenant, the collection or the action is 403 with the same
body whether the collection exists or not, so a caller learns nothing of other tenants. The
router checks the scope again at its entry (tenant isolation does not rest on the HTTP layer).

Bad input is a 400 naming the problem (wrong dimension, NaN, wrong model, malformed or too deeply
nested JSON, ``k`` not an integer, an id outside 64 bits), an unknown collection 404, a model that
cannot run 409, a body over the limit 413, a body that does not arrive in time 408, writes during
an offline migration 503 with ``Retry-After``. Nothing is written for a request that fails.

Each request is traced, measured and logged (``vecmigrate.telemetry.http``): one span per
request (a child of the caller's when it sends ``traceparent``) with the router's decisions as
attributes, the store calls beneath it. ``/metrics`` carries the tenants' and collections' names,
so by default it asks for a credential with ``admin`` over every tenant (Prometheus sends it as
a bearer token); ``metrics`` (or ``$VECMIGRATE_GATEWAY_METRICS``) says otherwise: ``open`` (no
credential, for a port only the monitoring network reaches), ``HOST:PORT`` (``/metrics``,
``/healthz`` and ``/readyz`` on an address of their own, as a worker serves them; not on the
gateway's port) or ``off``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import copy_context
from typing import Annotated, Any, ParamSpec, TypeVar

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, Strict, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from vecmigrate.catalog.catalog import Catalog
from vecmigrate.errors import (
    AccessDeniedError,
    ConfigurationError,
    DataError,
    NotFoundError,
    PreconditionError,
)
from vecmigrate.model.records import parse_filter
from vecmigrate.model.routing import RoutingView
from vecmigrate.security.credentials import (
    ANY,
    AuthenticationError,
    Credentials,
    Principal,
    bearer,
)
from vecmigrate.security.scrub import scrub
from vecmigrate.serving import heap
from vecmigrate.serving.asgi import AsgiServer, BodyGuard, TlsFiles
from vecmigrate.serving.names import PREFIX as NAME_PREFIX
from vecmigrate.serving.names import AmbiguousNameError, StableNames
from vecmigrate.serving.router import Router, WritesPausedError
from vecmigrate.telemetry import names
from vecmigrate.telemetry.exposition import ProbeServer, metrics_payload, parse_address
from vecmigrate.telemetry.http import ACCESS_LOGS, RequestNotes, RequestTelemetry, request_notes
from vecmigrate.telemetry.setup import Telemetry, current

log = logging.getLogger("vecmigrate.gateway")

MAX_BODY = 64 * 1024 * 1024
MAX_ITEMS = 100_000
# Which action each route needs.
ROUTE_ACTIONS = {"search": "search", "upsert": "write", "delete": "write", "": "admin"}
METRICS_PATH = "/metrics"
METRICS_ENV = "VECMIGRATE_GATEWAY_METRICS"
# Which requests get an access log line (errors or all), and from how many ms one is slow.
ACCESS_LOG_ENV = "VECMIGRATE_GATEWAY_ACCESS_LOG"
SLOW_MS_ENV = "VECMIGRATE_GATEWAY_SLOW_MS"
# Where /metrics is served: on the gateway's port behind a credential, or without one, or not.
METRICS_MODES = ("auth", "open", "off")

P = ParamSpec("P")
T = TypeVar("T")

Int64 = Annotated[int, Strict(), Field(ge=-(2**63), le=2**63 - 1)]
StringId = Annotated[str, Strict(), Field(min_length=1, max_length=512)]
RecordId = Int64 | StringId
Number = Annotated[float, Strict()]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchRequest(_Request):
    """A search: one query vector, several, one text or several (exactly one of them)."""

    vector: list[Number] | None = Field(default=None, max_length=65536)
    vectors: list[list[Number]] | None = Field(default=None, max_length=MAX_ITEMS)
    text: str | None = None
    texts: list[str] | None = Field(default=None, max_length=MAX_ITEMS)
    k: Annotated[int, Strict(), Field(ge=1, le=1000)] = 10
    key: str | int | None = Field(default=None, description="user or session: the canary side")
    model: str | None = Field(default=None, description="the model that made the query vectors")
    filter: dict[str, Any] | None = Field(
        default=None,
        description="a payload filter: {'field': F, 'eq' | 'in' | 'gt' | 'gte' | 'lt' | 'lte' | "
        "'is_null': ...}, or {'and' | 'or': [...]}, {'not': {...}} around them",
    )

    @model_validator(mode="after")
    def _one_query_kind(self) -> SearchRequest:
        given = [n for n in ("vector", "vectors", "text", "texts") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("search needs exactly one of 'vector', 'vectors', 'text' or 'texts'")
        return self


class UpsertRequest(_Request):
    """Records to write: ids with vectors, texts (embedded by each version's model) or both."""

    ids: list[RecordId] = Field(min_length=1, max_length=MAX_ITEMS)
    vectors: list[list[Number]] | None = Field(default=None, max_length=MAX_ITEMS)
    texts: list[str] | None = Field(default=None, max_length=MAX_ITEMS)

    @model_validator(mode="after")
    def _aligned(self) -> UpsertRequest:
        if self.vectors is None and self.texts is None:
            raise ValueError("upsert needs 'vectors', 'texts' or both")
        for name in ("vectors", "texts"):
            given = getattr(self, name)
            if given is not None and len(given) != len(self.ids):
                raise ValueError(f"{len(self.ids)} ids but {len(given)} {name}")
        return self


class DeleteRequest(_Request):
    """Records to delete, by id."""

    ids: list[RecordId] = Field(min_length=1, max_length=MAX_ITEMS)


class SearchResponse(BaseModel):
    version: str
    via: str | None = None
    ids: list[list[int | str]]
    distances: list[list[float]]


class UpsertResponse(BaseModel):
    upserted: int
    seq: int


class DeleteResponse(BaseModel):
    deleted: int
    seq: int


class RoutingResponse(BaseModel):
    read_version: str | None
    write_versions: list[str]
    candidate_version: str | None
    ramp_percent: float
    shadow_percent: float
    writes_paused: bool
    generation: int


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status, headers=headers)


def _matrix(rows: list[list[float]], what: str) -> np.ndarray:
    widths = {len(r) for r in rows}
    if len(widths) > 1 or not rows:
        raise DataError(f"{what} must be a non-empty list of equally long lists of numbers")
    return np.asarray(rows, dtype=np.float32)


def _int_ids(ids: list[int | str], where: str) -> np.ndarray:
    if not all(isinstance(i, int) for i in ids):
        raise DataError(f"ids must be a list of integers: {where} stores 64-bit integer ids")
    return np.asarray(ids, dtype=np.int64)


def _noted(kind: type[BaseException]) -> None:
    """The request's telemetry names the error it was answered with (its type, no message)."""
    note = request_notes()
    if note is not None:
        note.error_type = kind.__name__


def _answering(
    status: int, message: str | None = None
) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    """An exception handler that answers ``status`` with ``message``, or with the exception's
    own message (one written for the caller: a bad request, a missing or refused thing)."""

    async def answer(_: Request, exc: Exception) -> JSONResponse:
        _noted(type(exc))
        return _error(status, str(exc) if message is None else message)

    return answer


class Authenticate:
    """ASGI middleware: every request under ``/v1/{tenant}/{collection}`` is authenticated and
    authorised before its body is read; the principal rides on the request's state. With
    ``guard_metrics``, ``/metrics`` needs ``admin`` over every tenant (its labels name them
    all)."""

    def __init__(
        self,
        app: ASGIApp,
        credentials: Credentials | None,
        guard_metrics: bool = True,
        names: StableNames | None = None,
    ) -> None:
        self.app = app
        self.credentials = credentials
        self.guard_metrics = guard_metrics
        self.names = names

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        tenant: str | None
        collection: str | None
        by_name = path.startswith(NAME_PREFIX) and self.names is not None
        if path == METRICS_PATH and self.guard_metrics:
            tenant, collection, action = ANY, None, "admin"
        elif path.startswith("/v1/"):
            parts = path.strip("/").split("/")
            tenant = parts[1] if len(parts) > 1 else None
            collection = parts[2] if len(parts) > 2 else None
            action = ROUTE_ACTIONS.get(parts[3] if len(parts) > 3 else "", "admin")
        else:
            await self.app(scope, receive, send)
            return
        if self.credentials is None:
            principal = Principal.everything()
        else:
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            token = bearer(headers.get("authorization"), headers.get("x-api-key"))
            try:
                principal = self.credentials.authenticate(token)
            except AuthenticationError as exc:
                _noted(type(exc))
                response = _error(401, str(exc), {"WWW-Authenticate": 'Bearer realm="vecmigrate"'})
                await response(scope, receive, send)
                return
        if by_name:
            assert self.names is not None
            # /v1/_name/NAME[/ACTION]: served as /v1/TENANT/COLLECTION[/ACTION] once the name
            # resolves; checked against the credential like that path.
            name = collection or ""
            wanted = ROUTE_ACTIONS.get(parts[3] if len(parts) > 3 else "")
            refused = self._refused(name, wanted, principal)
            if refused is not None:
                await refused(scope, receive, send)
                return
            tenant, collection = self.names.resolve(name)
            rest = path[len(NAME_PREFIX) + len(name) :]
            scope["path"] = f"/v1/{tenant}/{collection}{rest}"
            scope["raw_path"] = scope["path"].encode()
        if not principal.allows(action, tenant, collection):
            _noted(AccessDeniedError)
            await _error(403, "forbidden")(scope, receive, send)
            return
        note = request_notes()
        if note is not None and tenant != ANY:
            # Labels only once the credential reaches them: a caller who may not cannot grow
            # the label sets with made-up names.
            note.tenant, note.collection = tenant, collection
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    def _refused(self, name: str, action: str | None, principal: Principal) -> Response | None:
        """Why a request by stable name cannot be served (None: it can). A name the credential
        does not reach (or not every collection of, when it fronts several) is 403, as any
        collection it does not reach is: the answer says nothing about other tenants."""
        assert self.names is not None
        if action is None:
            return _error(404, "no such endpoint: /v1/_name/NAME/search|upsert|delete")
        found = self.names.candidates(name)
        if not all(principal.allows(action, t, c) for t, c in found):
            _noted(AccessDeniedError)
            return _error(403, "forbidden")
        if not found:
            if not principal.allows(action, ANY, ANY):
                _noted(AccessDeniedError)
                return _error(403, "forbidden")
            try:
                self.names.resolve(name)
            except NotFoundError as exc:
                _noted(type(exc))
                return _error(404, str(exc))
        if len(found) > 1:
            _noted(AmbiguousNameError)
            return _error(409, str(AmbiguousNameError(name, found)))
        return None


class _RequestShadowPool(ThreadPoolExecutor):
    """The router's pool of shadow reads, each run in the context of the request that asked
    for it: the request's span says it was shadowed, and the candidate's store calls are its
    children (the same trace) rather than traces of their own."""

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        note = request_notes()
        if note is not None:
            note.attributes[names.ATTR_SHADOWED] = True
        context = copy_context()
        return super().submit(lambda: context.run(fn, *args, **kwargs))


def _trace_shadow_reads(router: Router) -> None:
    # The router takes no executor of ours: its pool is replaced (before any request) rather
    # than the router taught about requests' telemetry.
    pool = router._shadow_pool
    if isinstance(pool, _RequestShadowPool):
        return
    router._shadow_pool = _RequestShadowPool(pool._max_workers, thread_name_prefix="shadow")
    pool.shutdown(wait=False)


class _RoutingNotes:
    """Puts the router's decisions on a request's telemetry, and the routing row a collection
    is served by on the routing gauges (once per routing generation). The row's span
    attributes are built once per generation too, and shared by the requests it serves."""

    def __init__(self, router: Router, telemetry: Telemetry) -> None:
        self.router = router
        self.telemetry = telemetry
        self._rows: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}

    def __call__(self, tenant: str, collection: str, version: str | None = None) -> None:
        note = request_notes()
        if note is None:
            return
        try:
            view = self.router.routing(tenant, collection)
        except NotFoundError:
            return  # the collection went away since the router answered
        key = (tenant, collection)
        known = self._rows.get(key)
        if known is None or known[0] != view.generation:
            known = (view.generation, _routing_attributes(view))
            self._rows[key] = known
            if self.telemetry.metering:
                self.telemetry.metrics.routing(tenant, collection, view)
        note.routing = known[1]
        if version is not None:
            note.version = version
            if note.recording:  # span attributes: built only for a sampled request
                note.attributes[names.ATTR_CANARY] = version == view.candidate_version
                note.attributes.setdefault(names.ATTR_SHADOWED, False)


def _routing_attributes(view: RoutingView) -> dict[str, Any]:
    found: dict[str, Any] = {
        names.ATTR_GENERATION: view.generation,
        names.ATTR_RAMP: view.ramp_percent,
        names.ATTR_SHADOW: view.shadow_percent,
        "vecmigrate.routing.write_versions": list(view.write_versions),
    }
    if view.read_version is not None:
        found[names.ATTR_READ_VERSION] = view.read_version
    if view.candidate_version is not None:
        found[names.ATTR_CANDIDATE] = view.candidate_version
    return found


def create_app(
    router: Router,
    credentials: Credentials | None = None,
    *,
    metrics: str = "auth",
    telemetry: Telemetry | None = None,
    names: StableNames | None = None,
) -> FastAPI:
    """The gateway's ASGI app over ``router`` (no ``credentials``: every caller may do
    everything, for a gateway only its own host can reach).

    ``names`` (default: those the router's catalog knows) are the stable names served under
    ``/v1/_name/NAME`` (``vecmigrate.serving.names``).

    ``metrics``: ``auth`` serves ``/metrics`` to a credential with ``admin`` over every tenant,
    ``open`` to anyone, ``off`` not at all. ``telemetry`` (default: the process's) holds the
    registry ``/metrics`` exposes and the gauges of the routing rows served.
    """
    if metrics not in METRICS_MODES:
        raise ConfigurationError(f"metrics={metrics!r}: use {', '.join(METRICS_MODES)}")
    telemetry = telemetry or current()
    noting = _RoutingNotes(router, telemetry)
    _trace_shadow_reads(router)
    app = FastAPI(
        title="vecmigrate gateway",
        summary="Search and write collections while they migrate.",
        version="1",
        docs_url=None,
        redoc_url=None,
        # FastAPI's own request telemetry, on as soon as OpenTelemetry's global providers are
        # set (the serve command sets them), would trace and measure every request a second
        # time: RequestTelemetry (vecmigrate.telemetry.http) does it, with the labels and the
        # rules on errors the gateway needs.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        _noted(type(exc))
        problems = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
            message = str(e.get("msg", "invalid")).removeprefix("Value error, ")
            problems.append(f"{where}: {message}" if where else message)
        return _error(400, "; ".join(problems) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        _noted(type(exc))
        if exc.status_code == 404:
            return _error(404, f"no such endpoint {request.url.path}")
        return _error(exc.status_code, str(exc.detail))

    for kind, status, message in (
        (RecursionError, 400, "the JSON body is nested too deeply"),
        (DataError, 400, None),
        (NotFoundError, 404, None),
        (PreconditionError, 409, None),
        (AccessDeniedError, 403, "forbidden"),
    ):
        app.add_exception_handler(kind, _answering(status, message))

    @app.exception_handler(WritesPausedError)
    async def paused(_: Request, exc: WritesPausedError) -> JSONResponse:
        _noted(type(exc))
        return JSONResponse(
            {"error": str(exc), "retry_after": exc.retry_after},
            503,
            headers={"Retry-After": str(exc.retry_after)},
        )

    @app.exception_handler(Exception)
    async def failed(_: Request, exc: Exception) -> JSONResponse:
        _noted(type(exc))
        log.error("request failed: %s", scrub(f"{type(exc).__name__}: {exc}"))
        return _error(500, "internal error; the gateway's log has the details")

    def principal(request: Request) -> Principal:
        found: Principal = request.state.principal
        return found

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    if metrics != "off":

        @app.get(METRICS_PATH, include_in_schema=False)
        async def exposition() -> Response:
            status, kind, body = metrics_payload(telemetry.registry)
            return Response(body, status, media_type=kind)

    @app.post("/v1/{tenant}/{collection}/search", responses={200: {"model": SearchResponse}})
    def search(tenant: str, collection: str, body: SearchRequest, request: Request) -> Any:
        """k nearest neighbours from the version the collection's routing gives this request."""
        who = principal(request)
        key = None if body.key is None else str(body.key)
        flt = None if body.filter is None else parse_filter(body.filter)
        # The latency budgets read what clients wait for: the whole request, timed by the
        # telemetry middleware when it reports answered requests (see ``Gateway``); else the
        # router times the search itself.
        note = request_notes()
        timed = note is None or not note.reported
        if note is not None and not timed:
            note.timed_for = (tenant, collection)
        if body.text is not None or body.texts is not None:
            texts = body.texts if body.texts is not None else [body.text or ""]
            found = router.search_text(
                tenant, collection, texts, body.k, key=key, access=who, flt=flt
            )
        else:
            rows = body.vectors if body.vectors is not None else [body.vector or []]
            queries = _matrix(rows, "vectors")
            found = router.search(
                tenant,
                collection,
                queries,
                body.k,
                key=key,
                model=body.model,
                access=who,
                flt=flt,
                timed=timed,
            )
        noting(tenant, collection, found.version)
        distances = np.where(np.isfinite(found.distances), found.distances, -1).round(6)
        return JSONResponse(
            {
                "version": found.version,
                "via": found.via,
                "ids": found.ids.tolist(),
                "distances": distances.tolist(),
            }
        )

    @app.post("/v1/{tenant}/{collection}/upsert", responses={200: {"model": UpsertResponse}})
    def upsert(tenant: str, collection: str, body: UpsertRequest, request: Request) -> Any:
        """Write records to every version the collection writes to now."""
        ids = _int_ids(body.ids, f"{tenant}/{collection}")
        vectors = _matrix(body.vectors, "vectors") if body.vectors is not None else None
        seq = router.upsert(tenant, collection, ids, vectors, body.texts, access=principal(request))
        noting(tenant, collection)
        return JSONResponse({"upserted": len(ids), "seq": seq})

    @app.post("/v1/{tenant}/{collection}/delete", responses={200: {"model": DeleteResponse}})
    def delete(tenant: str, collection: str, body: DeleteRequest, request: Request) -> Any:
        """Delete records, by id, from every version the collection writes to now."""
        ids = _int_ids(body.ids, f"{tenant}/{collection}")
        seq = router.delete(tenant, collection, ids, access=principal(request))
        noting(tenant, collection)
        return JSONResponse({"deleted": len(ids), "seq": seq})

    @app.get("/v1/{tenant}/{collection}", responses={200: {"model": RoutingResponse}})
    def routing(tenant: str, collection: str, request: Request) -> Any:
        """Which versions the collection reads and writes now (admin)."""
        principal(request).check("admin", tenant, collection)
        view = router.routing(tenant, collection)
        noting(tenant, collection)
        return JSONResponse(view.model_dump())

    if names is None:
        names = StableNames(router.catalog, refresh_seconds=router.refresh_seconds)
    app.add_middleware(
        Authenticate, credentials=credentials, guard_metrics=metrics == "auth", names=names
    )
    return app


def route_template(app: FastAPI) -> Callable[[dict[str, Any]], str | None]:
    """The template of ``app``'s route a request's path matches (for requests answered before
    the app routed them: a refused credential, a body too large)."""

    def find(scope: dict[str, Any]) -> str | None:
        for route in app.routes:
            match, _ = route.matches(scope)
            if match is not Match.NONE:
                return str(getattr(route, "path", "")) or None
        return None

    return find


class Gateway:
    """The router behind the ASGI app behind uvicorn; ``start`` serves on a thread, ``serve``
    in the foreground.

    ``credentials`` None serves without authentication (only for a gateway bound to a loopback
    address: the ``serve`` command refuses anything else). ``tls`` serves HTTPS. ``metrics``
    (default ``$VECMIGRATE_GATEWAY_METRICS``, else ``auth``): ``auth``, ``open`` or ``off`` (see
    :func:`create_app`), or ``HOST:PORT`` for ``/metrics``, ``/healthz`` and ``/readyz`` on an
    address of their own (:attr:`metrics_url`). Requests are traced, measured and logged with
    the process's telemetry (``vecmigrate.telemetry.setup.current``, installed before).
    ``names`` maps stable names to (tenant, collection) beside those the catalog knows
    (``vecmigrate serve --name``). ``preload`` (default): load every routed collection's plan
    and indexes before serving, so that no client's request waits for them; False loads each
    on its first request (``vecmigrate serve --no-preload``).

    ``access_log`` (default ``$VECMIGRATE_GATEWAY_ACCESS_LOG``, else ``errors``): ``errors``
    writes a line for a request answered 4xx or 5xx, or slower than ``slow_ms`` (default
    ``$VECMIGRATE_GATEWAY_SLOW_MS``, else 1000); ``all`` one for every request.

    Raises:
        ConfigurationError: a ``metrics`` value that is none of these, an unknown
            ``access_log``, a ``slow_ms`` that is not a number of milliseconds >= 0.
    """

    def __init__(
        self,
        catalog_url: str,
        host: str = "127.0.0.1",
        port: int = 8080,
        refresh: float = 1.0,
        *,
        credentials: Credentials | None = None,
        tls: TlsFiles | None = None,
        max_body: int = MAX_BODY,
        read_timeout: float = 10.0,
        header_timeout: float = 10.0,
        metrics: str | None = None,
        access_log: str | None = None,
        slow_ms: float | None = None,
        names: Mapping[str, tuple[str, str]] | None = None,
        preload: bool = True,
    ) -> None:
        telemetry = current()
        self.preload = preload
        access_log = (access_log or os.environ.get(ACCESS_LOG_ENV) or "errors").strip().lower()
        if access_log not in ACCESS_LOGS:
            raise ConfigurationError(
                f"{ACCESS_LOG_ENV}={access_log!r}: use {' or '.join(ACCESS_LOGS)}"
            )
        if slow_ms is None:
            raw = os.environ.get(SLOW_MS_ENV, "").strip() or "1000"
            try:
                slow_ms = float(raw)
            except ValueError:
                raise ConfigurationError(
                    f"{SLOW_MS_ENV}={raw!r}: a number of milliseconds"
                ) from None
        if not slow_ms >= 0:
            raise ConfigurationError(f"{SLOW_MS_ENV}={slow_ms!r}: milliseconds >= 0")
        mode = (metrics or os.environ.get(METRICS_ENV) or "auth").strip()
        self.metrics_server: ProbeServer | None = None
        if mode not in METRICS_MODES:
            try:
                metrics_host, metrics_port = parse_address(mode)
            except ValueError:
                raise ConfigurationError(
                    f"{METRICS_ENV}={mode!r}: use auth, open, off or HOST:PORT"
                ) from None
            self.metrics_server = ProbeServer(
                metrics_host, metrics_port, telemetry.registry, ready=self._ready
            )
            mode = "off"
        self.router = Router(Catalog(catalog_url), refresh_seconds=refresh)
        self.names = StableNames(self.router.catalog, names, refresh_seconds=refresh)
        self.app = create_app(
            self.router, credentials, metrics=mode, telemetry=telemetry, names=self.names
        )
        self.server = AsgiServer(
            RequestTelemetry(
                BodyGuard(self.app, max_body=max_body, read_timeout=read_timeout),
                telemetry,
                route_of=route_template(self.app),
                quiet=("/health", METRICS_PATH),
                access_log=access_log,
                slow_seconds=slow_ms / 1000,
                on_answered=self._answered,
            ),
            host,
            port,
            tls=tls,
            header_timeout=header_timeout,
        )

    def _answered(self, note: RequestNotes, status: int, seconds: float) -> None:
        """A search's whole time, as its client waited for it, in the latencies the router
        publishes for latency budgets (answered searches: a refused one searched nothing)."""
        if note.timed_for is not None and status == 200:
            self.router.latency.samples[note.timed_for].append(seconds * 1000)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def metrics_url(self) -> str | None:
        """The address of ``/metrics`` when it has one of its own."""
        return self.metrics_server.url if self.metrics_server is not None else None

    def _ready(self) -> tuple[bool, str]:
        """``/readyz``: the API serves once the collections are loaded (see ``start``)."""
        if self.server.serving:
            return True, "serving"
        return False, "loading the collections' indexes"

    def _preload(self) -> None:
        if not self.preload:
            return
        began = time.monotonic()
        loaded = self.router.preload()
        log.info(
            "loaded the plans of %d collections in %.2f s", len(loaded), time.monotonic() - began
        )

    def start(self) -> Gateway:
        """Serve on a background thread, once every routed collection's plan is loaded (unless
        ``preload`` is False): ``/healthz`` answers meanwhile, ``/readyz`` once it serves."""
        if self.metrics_server is not None:
            self.metrics_server.start()
        self._preload()
        self.server.start()
        return self

    async def serve(self) -> None:
        """Serve on the running event loop until SIGINT or SIGTERM, then flush and close.

        The process is the gateway's own: what lives as long as it does (its modules, and
        then each plan's indexes) is frozen out of the garbage collector's full passes, which
        otherwise stopped every request for 100 ms and more (``vecmigrate.serving.heap``)."""
        if self.metrics_server is not None:
            self.metrics_server.start()
        self._preload()
        self.router.planner.settle_heap = True
        heap.settle()
        try:
            await self.server.serve_async()
        finally:
            self.router.close()
            if self.metrics_server is not None:
                self.metrics_server.stop()

    def stop(self) -> None:
        """Stop serving and flush shadow samples."""
        self.server.stop()
        self.router.close()
        if self.metrics_server is not None:
            self.metrics_server.stop()
