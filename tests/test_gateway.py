"""The gateway as a production service: authenticated (API keys, JWT), scoped to tenants,
collections and actions, tenant isolation in the router too, TLS, and a clear 4xx for every
malformed request, slow clients timed out."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import numpy as np
import pytest
from temporalio.client import Client

from tests.conftest import Sandbox, running_worker, shadow_all
from vecmigrate.config import sqlite_url
from vecmigrate.control.client import MigrationClient
from vecmigrate.data import stablename
from vecmigrate.data.backfill import open_source, open_target
from vecmigrate.errors import AccessDeniedError, ConfigurationError
from vecmigrate.model.lifecycle import Phase
from vecmigrate.model.spec import QdrantStoreRef
from vecmigrate.security.credentials import Credentials, JwtSettings, Principal, new_api_key
from vecmigrate.serving.asgi import TlsFiles
from vecmigrate.serving.gateway import Gateway
from vecmigrate.serving.names import parse_names
from vecmigrate.serving.router import Router
from vecmigrate.stores.qdrant import client_for as qdrant_client
from vecmigrate.stores.qdrant import close_clients as close_qdrant
from vecmigrate.testing.tls import CertificateAuthority

DIM = 16
JWT_SECRET = "a-shared-secret-of-at-least-32-bytes!"

# A server of its own (uvicorn, milvus-lite) and seeded collections: seconds, not milliseconds.
pytestmark = pytest.mark.integration


@dataclass
class Served:
    gateway: Gateway
    keys: dict[str, str]
    ca: Path | None
    vectors: np.ndarray

    def client(self, key: str | None = None, **headers: str) -> httpx.Client:
        if key is not None:
            headers["Authorization"] = f"Bearer {self.keys.get(key, key)}"
        verify = ssl.create_default_context(cafile=str(self.ca)) if self.ca else False
        return httpx.Client(base_url=self.gateway.url, headers=headers, verify=verify)


def credentials(keys: dict[str, str]) -> Credentials:
    creds = Credentials(jwt=JwtSettings(key="env:VM_TEST_JWT_SECRET", algorithms=("HS256",)))
    grants = {
        "acme-search": (["acme"], ["docs"], ["search"]),
        "acme-write": (["acme"], ["docs"], ["write"]),
        "acme-admin": (["acme"], ["*"], ["admin"]),
        "globex": (["globex"], ["*"], ["search", "write", "admin"]),
    }
    for name, (tenants, collections, actions) in grants.items():
        key, stored = new_api_key(name, tenants, collections, actions)
        keys[name] = key
        creds.api_keys[stored.id] = stored
    return creds


def seeded(sandbox: Sandbox) -> np.ndarray:
    vectors = sandbox.seed(600, tenant="acme", collection="docs")
    sandbox.seed(300, tenant="acme", collection="other")
    sandbox.seed(300, tenant="globex", collection="docs")
    return vectors


@pytest.fixture
def served(sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    monkeypatch.setenv("VM_TEST_JWT_SECRET", JWT_SECRET)
    vectors = seeded(sandbox)
    ca = CertificateAuthority(tmp_path / "pki", "gateway-ca")
    cert = ca.issue("localhost", server=True)
    keys: dict[str, str] = {}
    gateway = Gateway(
        sandbox.catalog.url,
        port=0,
        refresh=0.2,
        credentials=credentials(keys),
        tls=TlsFiles(cert.cert, cert.key),
    ).start()
    yield Served(gateway, keys, ca.issued.cert, vectors)
    gateway.stop()


@pytest.fixture
def plain(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """Plaintext, authenticated, short timeouts: for requests written byte by byte."""
    monkeypatch.setenv("VM_TEST_JWT_SECRET", JWT_SECRET)
    vectors = seeded(sandbox)
    keys: dict[str, str] = {}
    gateway = Gateway(
        sandbox.catalog.url,
        port=0,
        credentials=credentials(keys),
        max_body=1 << 20,
        read_timeout=1.0,
        header_timeout=1.0,
    ).start()
    yield Served(gateway, keys, None, vectors)
    gateway.stop()


def requests_for(vector: list[float]) -> dict[str, tuple[str, str, dict[str, Any] | None]]:
    return {
        "search": ("POST", "search", {"vector": vector, "k": 3}),
        "upsert": ("POST", "upsert", {"ids": [900_001], "vectors": [vector]}),
        "delete": ("POST", "delete", {"ids": [900_001]}),
        "routing": ("GET", "", None),
    }


ROUTES = ("search", "upsert", "delete", "routing")


def every(status: int) -> dict[str, int]:
    return dict.fromkeys(ROUTES, status)


def only(status: int, allowed: tuple[str, ...]) -> dict[str, int]:
    return {r: status if r in allowed else 403 for r in ROUTES}


# (case, credential, tenant, collection, the status each route must answer)
MATRIX: list[tuple[str, str | None, str, str, dict[str, int]]] = [
    ("no credential", None, "acme", "docs", every(401)),
    ("forged key", "vmk_0123456789ab_forged", "acme", "docs", every(401)),
    ("wrong tenant", "globex", "acme", "docs", every(403)),
    ("wrong action: search only", "acme-search", "acme", "docs", only(200, ("search",))),
    ("wrong action: write only", "acme-write", "acme", "docs", only(200, ("upsert", "delete"))),
    ("wrong collection", "acme-search", "acme", "other", every(403)),
    ("right: admin", "acme-admin", "acme", "docs", every(200)),
    ("right: another tenant's own", "globex", "globex", "docs", every(200)),
]


@pytest.mark.parametrize("case", MATRIX, ids=[c[0] for c in MATRIX])
def test_every_route_by_credential(served: Served, case: tuple[Any, ...]) -> None:
    _, key, tenant, collection, expected = case
    vector = served.vectors[0].tolist()
    with served.client(key) as http:
        for route, (method, action, body) in requests_for(vector).items():
            path = f"/v1/{tenant}/{collection}" + (f"/{action}" if action else "")
            got = http.request(method, path, json=body)
            assert got.status_code == expected[route], (route, got.text)
            if got.status_code == 401:
                assert got.headers["www-authenticate"].startswith("Bearer")
            if got.status_code == 403:
                assert got.json() == {"error": "forbidden"}  # no detail about the target


def test_unknown_and_forbidden_collections_look_the_same(served: Served) -> None:
    vector = served.vectors[0].tolist()
    with served.client("acme-search") as http:
        answers = [
            http.post(path, json={"vector": vector})
            for path in (
                "/v1/globex/docs/search",  # exists, another tenant
                "/v1/globex/ghost/search",  # does not exist, another tenant
                "/v1/initech/docs/search",  # a tenant that does not exist
                "/v1/acme/other/search",  # exists, not granted
                "/v1/acme/ghost/search",  # does not exist, not granted
            )
        ]
    assert {(a.status_code, a.text) for a in answers} == {(403, '{"error":"forbidden"}')}


def test_jwts_are_checked_and_scoped(served: Served) -> None:
    now = int(time.time())

    def token(**claims: Any) -> str:
        base = {"sub": "svc-search", "exp": now + 60, "tenants": ["acme"], "actions": "search"}
        return jwt.encode({**base, **claims}, JWT_SECRET, algorithm="HS256")

    vector = served.vectors[0].tolist()
    cases = {
        token(): 200,
        token(tenants=["globex"]): 403,
        token(actions="write"): 403,
        token(exp=now - 3600): 401,
        jwt.encode({"sub": "x", "exp": now + 60, "tenants": ["acme"], "actions": "search"},
                   "another-secret-of-at-least-32-bytes!!", algorithm="HS256"): 401,
        jwt.encode({"sub": "x", "tenants": ["acme"], "actions": "search"}, JWT_SECRET,
                   algorithm="HS256"): 401,  # no exp
    }  # fmt: skip
    for credential, status in cases.items():
        with served.client(credential) as http:
            got = http.post("/v1/acme/docs/search", json={"vector": vector})
            assert got.status_code == status, got.text


def test_tls_and_the_openapi_document(served: Served) -> None:
    assert served.gateway.url.startswith("https://")
    with served.client() as http:
        assert http.get("/health").json() == {"ok": True}
        spec = http.get("/openapi.json").json()
    assert "/v1/{tenant}/{collection}/search" in spec["paths"]
    assert "SearchRequest" in spec["components"]["schemas"]
    with pytest.raises(httpx.ConnectError):  # a client that does not trust the server's CA
        httpx.get(f"{served.gateway.url}/health", verify=True)


def test_the_router_enforces_the_tenant_too(sandbox: Sandbox) -> None:
    vectors = seeded(sandbox)
    router = Router(sandbox.catalog, refresh_seconds=0.2)
    acme = Principal("app", frozenset({"acme"}), frozenset({"*"}), frozenset({"search", "write"}))
    try:
        assert router.search("acme", "docs", vectors[:1], 3, access=acme).ids.shape == (1, 3)
        for call in (
            lambda: router.search("globex", "docs", vectors[:1], 3, access=acme),
            lambda: router.search_text("globex", "docs", ["x"], 3, access=acme),
            lambda: router.upsert("globex", "docs", np.array([1]), vectors[:1], access=acme),
            lambda: router.delete("globex", "docs", np.array([1]), access=acme),
            lambda: router.search("globex", "ghost", vectors[:1], 3, access=acme),
        ):
            with pytest.raises(AccessDeniedError, match=r"^forbidden$"):
                call()
    finally:
        router.close()


# -- malformed requests: every one a 4xx, none a 500; slow clients timed out ----------------


def raw(served: Served, request: bytes, wait: float = 5.0) -> bytes:
    host, port = served.gateway.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        sock.sendall(request)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
    return b"".join(chunks)


def http_request(served: Served, path: str, body: bytes, length: str | None = None) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {served.keys['acme-admin']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length or len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response else 0


def test_bad_input_is_a_clear_400_never_a_500(plain: Served) -> None:
    vector = plain.vectors[0].tolist()
    cases = {
        "id above int64": ("upsert", {"ids": [2**63], "vectors": [vector]}, "less than or equal"),
        "id below int64": ("delete", {"ids": [-(2**63) - 1]}, "greater than or equal"),
        "k: true": ("search", {"vector": vector, "k": True}, "valid integer"),
        "k: 0": ("search", {"vector": vector, "k": 0}, "greater than or equal to 1"),
        "k: '10'": ("search", {"vector": vector, "k": "10"}, "valid integer"),
        "bool in a vector": ("search", {"vector": [True] * DIM}, "valid number"),
        "two query kinds": ("search", {"vector": vector, "text": "x"}, "exactly one"),
        "unknown field": ("search", {"vector": vector, "kk": 3}, "Extra inputs"),
        "ragged vectors": ("search", {"vectors": [vector, vector[:3]]}, "equally long"),
        "wrong dimension": ("search", {"vector": [1.0, 2.0]}, "dimension 2"),
        "ids and vectors differ": ("upsert", {"ids": [1, 2], "vectors": [vector]}, "2 ids but 1"),
        "string id on an int64 collection": ("delete", {"ids": ["x"]}, "integers"),
        "no ids": ("delete", {"ids": []}, "at least 1"),
    }
    with plain.client("acme-admin") as http:
        for name, (action, body, says) in cases.items():
            got = http.post(f"/v1/acme/docs/{action}", json=body)
            assert got.status_code == 400, (name, got.text)
            assert says in got.json()["error"], (name, got.json())
        not_json = http.post(
            "/v1/acme/docs/search", content=b"{nope", headers={"Content-Type": "application/json"}
        )
        assert not_json.status_code == 400
        deep = b"[" * 100_000 + b"]" * 100_000
        nested = http.post(
            "/v1/acme/docs/search", content=deep, headers={"Content-Type": "application/json"}
        )
        assert nested.status_code == 400, nested.text
        assert http.post("/v1/acme/docs/nope", json={}).status_code in (403, 404, 405)
        assert http.get("/v1/acme/docs/search").status_code == 405
        assert http.post("/v1/acme/ghost/search", json={"vector": vector}).status_code == 404


def test_malformed_lengths_and_oversized_bodies(plain: Served) -> None:
    body = json.dumps({"vector": plain.vectors[0].tolist()}).encode()
    path = "/v1/acme/docs/search"
    assert status_of(raw(plain, http_request(plain, path, body, length="abc"))) == 400
    assert status_of(raw(plain, http_request(plain, path, body, length="-5"))) == 400
    # Refused on its declared length, before a byte of the body is read.
    assert status_of(raw(plain, http_request(plain, path, b"", length=str(2 << 20)))) == 413
    began = time.monotonic()
    overstated = raw(plain, http_request(plain, path, body, length=str(len(body) + 100)))
    assert status_of(overstated) == 408  # the rest of the body never comes: timed out
    assert time.monotonic() - began < 4


def test_slow_and_stalled_clients_are_timed_out_and_service_goes_on(plain: Served) -> None:
    host, port = plain.gateway.url.removeprefix("http://").rsplit(":", 1)
    stalled = []
    for n in range(300):
        sock = socket.create_connection((host, int(port)), timeout=5)
        if n % 2:
            sock.sendall(b"POST /v1/acme/docs/search HTTP/1.1\r\nHost: x\r\n")  # headers stall
        stalled.append(sock)
    try:
        began = time.monotonic()
        with plain.client("acme-search") as http:  # served meanwhile
            got = http.post("/v1/acme/docs/search", json={"vector": plain.vectors[0].tolist()})
        assert got.status_code == 200
        assert time.monotonic() - began < 2
        # A client dripping its headers a byte at a time is cut off at the header deadline.
        drip = socket.create_connection((host, int(port)), timeout=5)
        drip_began = time.monotonic()
        closed = False
        for byte in b"POST /v1/acme/docs/search HTTP/1.1\r\nHost: x\r\n" * 10:
            try:
                drip.sendall(bytes([byte]))
                time.sleep(0.05)
            except OSError:
                closed = True
                break
            if time.monotonic() - drip_began > 4:
                break
        if not closed:
            drip.settimeout(2)
            try:
                closed = drip.recv(1) == b""
            except (TimeoutError, OSError):
                closed = False
        assert closed
        drip.close()
        # Every stalled connection is closed by the server within the deadline too.
        time.sleep(1.5)
        ended = 0
        for sock in stalled:
            sock.settimeout(0.5)
            try:
                ended += sock.recv(1) == b""
            except TimeoutError:
                pass
            except OSError:
                ended += 1
        assert ended == len(stalled)
    finally:
        for sock in stalled:
            sock.close()


def test_a_tls_gateway_refuses_plaintext(served: Served) -> None:
    host, port = served.gateway.url.removeprefix("https://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(3)
        try:
            answer = sock.recv(100)
        except (TimeoutError, ConnectionResetError):
            answer = b""
    assert not answer.startswith(b"HTTP/1.1 200")
    ctx = ssl.create_default_context(cafile=str(served.ca))
    with (
        socket.create_connection((host, int(port))) as sock,
        ctx.wrap_socket(sock, server_hostname="localhost") as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


# -- serving a collection under its stable name ----------------------------------------------


def test_name_options_are_parsed_and_bad_ones_refused() -> None:
    assert parse_names(["docs=acme/docs", "docs=acme/docs", "b=globex/x-1"]) == {
        "docs": ("acme", "docs"),
        "b": ("globex", "x-1"),
    }
    for bad, says in [
        (["docs"], "NAME=TENANT/COLLECTION"),
        (["docs=acme"], "NAME=TENANT/COLLECTION"),
        (["1docs=acme/docs"], "NAME=TENANT/COLLECTION"),
        (["docs=acme/docs", "docs=globex/docs"], "a stable name fronts one collection"),
    ]:
        with pytest.raises(ConfigurationError, match=says):
            parse_names(bad)


def test_the_gateway_loads_every_routed_collection_before_it_serves(
    sandbox: Sandbox, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No client waits for a plan or an index to load: a started gateway holds the plan of
    every collection the catalog routes, and loads one routed later in the background. A
    collection whose store cannot be opened is logged (once) and tried again a minute later or
    on its first request; it keeps nothing else from being served. --no-preload loads each
    collection on its first request instead."""
    seeded(sandbox)
    gone = tmp_path / "gone"
    elsewhere = {"kind": "builtin", "url": sqlite_url(gone / "s.db"), "artifacts": str(gone)}
    gone.mkdir()
    sandbox.seed(
        200,
        tenant="acme",
        collection="broken",
        version=sandbox.version("v1", {"kind": "faiss_flat"}, store=elsewhere),
    )
    shutil.rmtree(gone)
    routed = {("acme", "docs"), ("acme", "other"), ("globex", "docs")}
    query = np.full(sandbox.dim, 0.1).tolist()

    caplog.set_level(logging.INFO, logger="vecmigrate.router")
    gateway = Gateway(sandbox.catalog.url, port=0, refresh=0.2).start()
    try:
        plans = gateway.router.planner.plans
        assert set(plans) == routed
        assert "loaded acme/docs (reads: v1, index " in caplog.text
        with httpx.Client(base_url=gateway.url) as http:
            found = http.post("/v1/acme/docs/search", json={"vector": query, "k": 3})
        assert found.status_code == 200, found.text
        assert len(found.json()["ids"][0]) == 3
        # A collection routed while the gateway serves is loaded in the background, before
        # any request to it; the broken one is not tried again every refresh.
        sandbox.seed(300, tenant="globex", collection="later")
        deadline = time.monotonic() + 30
        while ("globex", "later") not in plans and time.monotonic() < deadline:
            time.sleep(0.05)
        assert set(plans) == routed | {("globex", "later")}
    finally:
        gateway.stop()
    assert caplog.text.count("loading acme/broken failed") == 1

    lazy = Gateway(sandbox.catalog.url, port=0, refresh=60, preload=False).start()
    try:
        assert lazy.router.planner.plans == {}
        with httpx.Client(base_url=lazy.url) as http:
            found = http.post("/v1/globex/docs/search", json={"vector": query, "k": 3})
        assert found.status_code == 200, found.text
        assert set(lazy.router.planner.plans) == {("globex", "docs")}
    finally:
        lazy.stop()


def test_a_collection_is_served_under_its_stable_name_and_unclear_names_are_refused(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VM_TEST_JWT_SECRET", JWT_SECRET)
    vectors = seeded(sandbox)
    keys: dict[str, str] = {}
    creds = credentials(keys)
    key, stored = new_api_key("root", ["*"], ["*"], ["admin"])
    keys["root"] = key
    creds.api_keys[stored.id] = stored
    # A name two collections were prepared under (in two tenants): the catalog knows both.
    for tenant in ("acme", "globex"):
        sandbox.catalog.append(
            tenant=tenant,
            collection="docs",
            kind="stable_name.prepared",
            actor="dba",
            data={"name": "shared", "undo": False},
        )
    gateway = Gateway(
        sandbox.catalog.url,
        port=0,
        refresh=0.2,
        credentials=creds,
        names={"docs": ("acme", "docs"), "gdocs": ("globex", "docs")},
    ).start()
    served = Served(gateway, keys, None, vectors)
    vector = vectors[3].tolist()
    try:
        with served.client("acme-search") as http:
            by_name = http.post("/v1/_name/docs/search", json={"vector": vector, "k": 3})
            by_path = http.post("/v1/acme/docs/search", json={"vector": vector, "k": 3})
            assert by_name.status_code == 200, by_name.text
            assert by_name.json() == by_path.json()
            assert by_name.json()["ids"][0][0] == 4  # ids 1..n: the fourth vector's own
            # Another tenant's name, an unknown one, one the credential covers only half of.
            for name in ("gdocs", "ghost", "shared"):
                got = http.post(f"/v1/_name/{name}/search", json={"vector": vector})
                assert (got.status_code, got.json()) == (403, {"error": "forbidden"}), name
            assert http.post("/v1/_name/docs/upsert", json={"ids": [1]}).status_code == 403
        with served.client("acme-write") as http:
            got = http.post("/v1/_name/docs/upsert", json={"ids": [900_002], "vectors": [vector]})
            assert got.status_code == 200, got.text
        with served.client("acme-admin") as http:
            assert http.get("/v1/_name/docs").json()["read_version"] == "v1"
            found = http.post("/v1/acme/docs/search", json={"vector": vector, "k": 2}).json()
            assert 900_002 in found["ids"][0]
        with served.client("root") as http:
            shared = http.post("/v1/_name/shared/search", json={"vector": vector})
            assert shared.status_code == 409
            assert "fronts 2 collections (acme/docs, globex/docs)" in shared.json()["error"]
            ghost = http.post("/v1/_name/ghost/search", json={"vector": vector})
            assert ghost.status_code == 404
            assert "no collection has the stable name ghost" in ghost.json()["error"]
            assert http.post("/v1/_name/gdocs/search", json={"vector": vector}).status_code == 200
        with served.client("globex") as http:
            got = http.post("/v1/_name/gdocs/search", json={"vector": vector, "k": 1})
            assert got.status_code == 200, got.text
    finally:
        gateway.stop()


class NamedApplication(threading.Thread):
    """An application that calls the gateway by the stable name only: upserts of new and
    existing ids and deletes, each acknowledged before the next, and a search after each.
    Keeps each id's acknowledged state (its vector, or None once deleted), every failed
    request, and the versions its searches were served from, by phase."""

    def __init__(self, url: str, name: str, phase: dict[str, str], first_id: int) -> None:
        super().__init__(daemon=True)
        self.http = httpx.Client(base_url=url, timeout=30)
        self.name, self.phase = name, phase
        self.next_id = first_id
        self.stopping = threading.Event()
        self.paused = threading.Event()
        self.idle = threading.Event()
        self.state: dict[int, np.ndarray | None] = {}
        self.failures: list[str] = []
        self.served: dict[str, set[str]] = {}
        self.seen: list[tuple[float, str]] = []  # (when, the version a search was served from)
        self.requests = 0

    def call(self, action: str, body: dict[str, Any]) -> dict[str, Any] | None:
        self.requests += 1
        try:
            got = self.http.post(f"/v1/_name/{self.name}/{action}", json=body)
        except httpx.HTTPError as exc:
            self.failures.append(f"{self.phase['now']} {action}: {exc}")
            return None
        if got.status_code != 200:
            self.failures.append(f"{self.phase['now']} {action}: {got.status_code} {got.text}")
            return None
        found: dict[str, Any] = got.json()
        return found

    def run(self) -> None:
        rng = np.random.default_rng(11)
        alive: list[int] = []
        n = 0
        while not self.stopping.is_set():
            if self.paused.is_set():
                self.idle.set()
                time.sleep(0.01)
                continue
            self.idle.clear()
            vector = rng.standard_normal(DIM).astype(np.float32)
            kind = "delete" if alive and rng.random() < 0.2 else "upsert"
            if kind == "upsert" and alive and rng.random() < 0.3:
                victim = alive[int(rng.integers(len(alive)))]
            elif kind == "upsert":
                victim, self.next_id = self.next_id, self.next_id + 1
            else:
                victim = alive.pop(int(rng.integers(len(alive))))
            if kind == "upsert":
                body: dict[str, Any] = {"ids": [victim], "vectors": [vector.tolist()]}
                if self.call("upsert", body) is not None:
                    self.state[victim] = vector
                    if victim not in alive:
                        alive.append(victim)
            elif self.call("delete", {"ids": [victim]}) is not None:
                self.state[victim] = None
            found = self.call("search", {"vector": vector.tolist(), "k": 3, "key": f"u{n % 7}"})
            if found is not None:
                self.served.setdefault(self.phase["now"], set()).add(found["version"])
                self.seen.append((time.monotonic(), found["version"]))
            n += 1
            time.sleep(0.01)
        self.http.close()

    def pause(self) -> None:
        """Hold the next request until ``paused`` clears, once the one in flight is answered."""
        self.idle.clear()
        self.paused.set()
        assert self.idle.wait(30)


def qdrant_mismatches(
    raw: Any, collection: str, state: dict[int, np.ndarray | None]
) -> dict[str, list[int]]:
    """Ids whose acknowledged last write the Qdrant collection does not hold (missing or
    stale), and deleted ids it holds (resurrected), read with qdrant-client itself."""
    points = raw.retrieve(collection, ids=list(state), with_vectors=True, with_payload=False)
    # vecmigrate's collections hold one named vector a point.
    held = {
        int(p.id): np.asarray(
            next(iter(p.vector.values())) if isinstance(p.vector, dict) else p.vector, np.float32
        )
        for p in points
    }
    lost = sorted(
        i
        for i, v in state.items()
        if v is not None and (i not in held or not np.allclose(held[i], v, atol=1e-5))
    )
    back = sorted(i for i, v in state.items() if v is None and i in held)
    return {"lost": lost, "resurrected": back}


async def test_an_application_on_the_stable_name_through_the_gateway_loses_nothing_across_cut_overs(
    client: Client, sandbox: Sandbox
) -> None:
    """Qdrant's local mode, the real workflow: the application moves to the gateway with the
    stable name (the alias it queried) before an online migration, and writes and reads by it
    through the backfill, the ramp, the cut-over, a rollback after it and a second cut-over."""
    store: dict[str, Any] = {"kind": "qdrant", "path": str(sandbox.root / "qdrant")}
    index: dict[str, Any] = {"kind": "qdrant_hnsw", "m": 16, "ef": 64}
    source = sandbox.version("v1", index, store=store)
    seeded = 2000
    sandbox.seed(seeded, version=source)
    spec = sandbox.spec(
        strategy="online",
        source=source.model_dump(mode="json"),
        target=sandbox.version("v2", index, store=store).model_dump(mode="json"),
        batch_size=200,
        max_vectors_per_second=2_000.0,
        cutover={"mode": "manual", "bake_seconds": 5, "stable_name": "docs_live"},
        online={
            "settle_seconds": 0.3,
            "shadow": shadow_all(seconds=1, min_samples=5),
            "ramp": {"steps": [50], "step_seconds": 1},
        },
    )
    stablename.prepare(spec)  # the alias docs_live over the source, before the migration
    src, raw = open_source(spec), qdrant_client(QdrantStoreRef.model_validate(store))._client
    physical = {"v1": src.name, "v2": open_target(spec).name}
    # Before the migration the catalog does not know the name yet: the operator maps it.
    gateway = Gateway(
        sandbox.catalog.url, port=0, refresh=0.1, names={"docs_live": ("default", "docs")}
    ).start()  # loopback, no credentials
    phase = {"now": "PLANNED"}
    app = NamedApplication(gateway.url, "docs_live", phase, first_id=10 * seeded)
    agreed: dict[str, tuple[str, str | None]] = {}
    moments: dict[str, float] = {}
    checks: dict[str, dict[str, dict[str, list[int]]]] = {}

    def agree(when: str, expected: str) -> None:
        """The alias points at ``expected`` and the gateway reads by the name from it. The
        gateway learns of a routing change when its plan refreshes (every 0.1 s here), which
        on a loaded machine can come a little after the workflow reports the phase: both must
        agree within 10 s."""
        deadline = time.monotonic() + 10
        while True:
            with httpx.Client(base_url=gateway.url) as http:
                got = http.get("/v1/_name/docs_live")
                assert got.status_code == 200, got.text
                version = got.json()["read_version"]
            points = src.name_points_at("docs_live")
            if version == expected and points == physical[expected]:
                break
            assert time.monotonic() < deadline, (when, expected, version, points)
            time.sleep(0.05)
        agreed[when] = (version, points)
        # From here (the gateway's plan refreshes every 0.1 s) every search is served there.
        time.sleep(0.3)
        moments[when] = time.monotonic()

    async def until(ok: Any, timeout: float = 300.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = await mc.status_if_started(spec.migration_id)
            if st is not None:
                phase["now"] = str(st.phase) + (f"#{st.cutovers}" if st.cutovers else "")
                assert st.phase not in (Phase.ABORTED, Phase.ROLLED_BACK), st.error
                assert not st.paused, (st.blocked_reason, st.error)
                if ok(st):
                    return st
            await asyncio.sleep(0.05)
        raise AssertionError(f"not reached: {phase}")

    try:
        agree("before", "v1")
        async with running_worker(client, sandbox) as queue:
            mc = MigrationClient(client, queue)
            app.start()
            mid = await mc.start(spec)
            await until(lambda s: s.phase == Phase.AWAITING_CUTOVER)
            agree("awaiting cut-over", "v1")
            await mc.signal(mid, "approve_cutover", operator="dba")
            await until(lambda s: s.phase == Phase.BAKING)
            agree("baking", "v2")
            await asyncio.sleep(1)
            moments["rollback"] = time.monotonic()
            await mc.signal(mid, "rollback", operator="oncall", reason="drill")
            await until(lambda s: s.phase == Phase.AWAITING_CUTOVER and s.cutovers == 1)
            agree("after rollback", "v1")
            await asyncio.sleep(1)
            app.pause()  # nothing in flight while both collections are read
            checks["after rollback"] = {
                v: qdrant_mismatches(raw, physical[v], app.state) for v in ("v1", "v2")
            }
            app.paused.clear()
            moments["second approval"] = time.monotonic()
            await mc.signal(mid, "approve_cutover", operator="dba")
            await until(lambda s: s.phase == Phase.BAKING and s.cutovers == 2)
            agree("second bake", "v2")
            await asyncio.sleep(1)
            app.pause()
            checks["second bake"] = {
                v: qdrant_mismatches(raw, physical[v], app.state) for v in ("v1", "v2")
            }
            app.paused.clear()
            final = await mc.result(mid, timeout=300)
            phase["now"] = str(final.phase)
            await asyncio.sleep(0.5)
            agree("completed", "v2")
            await asyncio.sleep(1)
            app.pause()
            checks["completed"] = {"v2": qdrant_mismatches(raw, physical["v2"], app.state)}
            app.stopping.set()
            app.join(30)
    finally:
        app.stopping.set()
        gateway.stop()
        close_qdrant()
    assert final.phase == Phase.COMPLETED, final.error
    assert final.cutovers == 2
    print(
        f"gateway by name: {app.requests} requests, {len(app.failures)} failed, "
        f"{sum(v is not None for v in app.state.values())} ids alive, "
        f"{sum(v is None for v in app.state.values())} deleted; served {app.served}"
    )
    assert app.failures == [], app.failures[:5]
    assert len(app.state) > 100
    for when, found in checks.items():
        for version, wrong in found.items():
            assert wrong == {"lost": [], "resurrected": []}, (when, version, wrong)
    assert app.served.get("BACKFILLING") == {"v1"}
    assert app.served.get("RAMPING") == {"v1", "v2"}  # the canary share, by key

    def served(since: str, until: str | None = None) -> set[str]:
        end = moments[until] if until is not None else float("inf")
        return {v for t, v in app.seen if moments[since] <= t < end}

    # Where the alias pointed, the gateway served every search by the name.
    assert [agreed[w][0] for w in agreed] == ["v1", "v1", "v2", "v1", "v2", "v2"]
    assert served("before", "awaiting cut-over") >= {"v1"}  # the ramp sent some to v2
    assert served("baking", "rollback") == {"v2"}
    assert served("after rollback", "second approval") == {"v1"}
    assert served("second bake", "completed") == {"v2"}
    assert served("completed") == {"v2"}


def test_serve_refuses_a_malformed_name_option_before_it_listens(sandbox: Sandbox) -> None:
    from tests.conftest import vecmigrate

    for given, says in [
        ("docs", "NAME=TENANT/COLLECTION"),
        ("docs=acme/docs --name docs=globex/docs", "a stable name fronts one collection"),
    ]:
        options = [a for pair in given.split(" --name ") for a in ("--name", pair)]
        done = vecmigrate(
            "serve", "--catalog", sandbox.catalog.url, "--no-auth", "--port", "0", *options
        )
        assert done.returncode != 0
        assert says in " ".join(done.stderr.split()), done.stderr  # the console wraps lines
        assert "gateway on" not in done.stderr


def test_serve_refuses_no_auth_off_loopback_in_one_message(sandbox: Sandbox) -> None:
    from tests.conftest import vecmigrate

    done = vecmigrate("serve", "--no-auth", "--host", "0.0.0.0", "--catalog", sandbox.catalog.url)
    assert done.returncode == 2
    assert "--no-auth on 0.0.0.0" in " ".join(done.stderr.split()), done.stderr
    # FAISS, imported once logging is set up, logs each CPU build it fails to load at INFO.
    assert "faiss" not in done.stderr, done.stderr


def test_clients_in_a_process_of_their_own_are_tagged_and_checked(
    served: Served, sandbox: Sandbox
) -> None:
    """The benchmark's load in a process of its own (``LoadProcess``), over TLS with an API key:
    its requests are tagged with the phase set here while they ran, every one succeeds, and
    what the clients were told they wrote and deleted is what the collection holds."""
    from vecmigrate.testing.loadgen import LoadProcess, verify

    phase = {"now": "FIRST"}
    load = LoadProcess(
        served.gateway.url,
        "acme",
        "docs",
        served.vectors[:50],
        clients=2,
        rate=50,
        phase=lambda: phase["now"],
        headers={"Authorization": f"Bearer {served.keys['acme-admin']}"},
        cafile=str(served.ca),
    ).start()
    try:
        time.sleep(1.0)
        phase["now"] = "SECOND"
        time.sleep(1.0)
    finally:
        load.stop()
    requests = load.requests()
    assert {r.phase for r in requests} == {"FIRST", "SECOND"}
    assert {r.kind for r in requests} == {"search", "upsert", "delete"}
    assert all(r.status == 200 for r in requests), {r.status for r in requests}
    verdict = verify(load.states, open_source(sandbox.spec(tenant="acme")))
    assert verdict.ok, verdict
    assert verdict.writes_checked > 0
