"""Load generator: concurrent clients searching, upserting and deleting through the gateway.

Each client owns its own id range, so the last write it got acknowledged for an id is what
that id must hold at the end (or be absent, after an acknowledged delete). Every request is
timed and tagged with the migration phase it ran in.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import random
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np

from vecmigrate.control.traffic import start_clients, stop_clients
from vecmigrate.stores import VectorStore

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.sharedctypes import SynchronizedString


@dataclass
class Request:
    """One request: what, when (phase), how long, and whether it succeeded."""

    kind: str
    phase: str
    ms: float
    status: int
    at: float = 0.0  # when it was sent, seconds since the epoch


@dataclass
class ClientState:
    """What one client was told: the last acknowledged state of each of its ids."""

    acked: dict[int, bytes | None] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)


class LoadGenerator:
    """``clients`` threads, each a keep-alive connection to the gateway."""

    def __init__(
        self,
        url: str,
        tenant: str,
        collection: str,
        queries: np.ndarray,
        *,
        clients: int = 4,
        mix: tuple[float, float, float] = (0.6, 0.3, 0.1),
        batch: int = 4,
        rate: float | None = None,
        phase: Callable[[], str] = lambda: "",
        id_base: int = 1 << 40,
        seed: int = 0,
        headers: dict[str, str] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        parsed = urlparse(url)
        if parsed.hostname is None or parsed.port is None:
            raise ValueError(f"the gateway URL needs a host and a port: {url}")
        self.host, self.port = parsed.hostname, parsed.port
        # An https URL needs ``tls`` (trusting the gateway's CA); ``headers`` carry the
        # credential (``Authorization: Bearer ...``).
        self.tls = tls if parsed.scheme == "https" else None
        if parsed.scheme == "https" and tls is None:
            self.tls = ssl.create_default_context()
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.path = f"/v1/{tenant}/{collection}"
        self.queries = np.asarray(queries, np.float32)
        self.dim = self.queries.shape[1]
        self.mix = mix
        self.batch = batch
        self.rate = rate
        self.phase = phase
        self.states = [ClientState() for _ in range(clients)]
        self.id_base = id_base
        self.seed = seed
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> LoadGenerator:
        self._threads.extend(start_clients(self._client, len(self.states), "load"))
        return self

    def stop(self) -> None:
        stop_clients(self._stop, self._threads, timeout=60)

    def requests(self) -> list[Request]:
        return [r for s in self.states for r in s.requests]

    def _client(self, n: int) -> None:
        rng = random.Random(self.seed * 1000 + n)
        state = self.states[n]
        conn = self._connect()
        next_id = self.id_base + n * (1 << 32)
        live: list[int] = []
        while not self._stop.is_set():
            began, sent_at = time.perf_counter(), time.time()
            roll = rng.random()
            phase = self.phase()
            if roll < self.mix[0] or (not live and roll >= self.mix[0] + self.mix[1]):
                q = self.queries[rng.randrange(len(self.queries))]
                body: dict[str, Any] = {
                    "vector": q.tolist(),
                    "k": 10,
                    "key": f"c{n}-{rng.random()}",
                }
                kind = "search"
            elif roll < self.mix[0] + self.mix[1] or not live:
                ids = []
                for _ in range(self.batch):
                    if live and rng.random() < 0.3:
                        ids.append(live[rng.randrange(len(live))])  # an update
                    else:
                        ids.append(next_id)
                        next_id += 1
                ids = list(dict.fromkeys(ids))
                base = self.queries[rng.randrange(len(self.queries))]
                noise = np.asarray(
                    [[rng.gauss(0, 0.05) for _ in range(self.dim)] for _ in ids], np.float32
                )
                vectors = (base[None, :] + noise).astype(np.float32)
                body = {"ids": ids, "vectors": vectors.tolist()}
                kind = "upsert"
            else:
                victim = live.pop(rng.randrange(len(live)))
                body = {"ids": [victim]}
                kind = "delete"
            status = self._post(conn, f"{self.path}/{kind}", body)
            if status is None:
                conn.close()
                conn = self._connect()
                status = 599
            ms = (time.perf_counter() - began) * 1000
            state.requests.append(Request(kind, phase, ms, status, sent_at))
            if status == 200 and kind == "upsert":
                sent = np.asarray(body["vectors"], np.float32)
                for record_id, vec in zip(body["ids"], sent, strict=True):
                    state.acked[record_id] = vec.astype("<f4").tobytes()
                    if record_id not in live:
                        live.append(record_id)
            elif status == 200 and kind == "delete":
                state.acked[body["ids"][0]] = None
            elif kind == "delete":
                live.append(body["ids"][0])  # not deleted: still ours to delete later
            if self.rate:
                time.sleep(max(0.0, 1.0 / self.rate - (time.perf_counter() - began)))
        conn.close()

    def _connect(self) -> http.client.HTTPConnection:
        if self.tls is not None:
            return http.client.HTTPSConnection(self.host, self.port, timeout=30, context=self.tls)
        return http.client.HTTPConnection(self.host, self.port, timeout=30)

    def _post(
        self, conn: http.client.HTTPConnection, path: str, body: dict[str, Any]
    ) -> int | None:
        data = json.dumps(body).encode()
        try:
            conn.request("POST", path, data, self.headers)
            resp = conn.getresponse()
            resp.read()
            return resp.status
        except (OSError, http.client.HTTPException):
            return None


class LoadProcess:
    """A :class:`LoadGenerator` run in a process of its own, as clients run on other machines:
    its threads do not share a GIL with the gateway they measure (in one process, the clients'
    JSON and the gateway's handlers took turns at it, and each client's times counted the
    other's work). The same arguments, but the gateway's CA as a file (``cafile``) rather than
    an SSL context; ``phase`` is read here and handed to the clients' process every few
    milliseconds. ``states`` and :meth:`requests` hold what the clients did once stopped."""

    # How often the phase is handed over: a request is tagged with the phase at its start.
    PHASE_EVERY = 0.005

    def __init__(
        self,
        *args: Any,
        phase: Callable[[], str] = lambda: "",
        cafile: str | None = None,
        **options: Any,
    ) -> None:
        """``args`` and ``options`` are :class:`LoadGenerator`'s (its process makes one of
        them), but ``tls`` (``cafile`` instead)."""
        self._ctx = multiprocessing.get_context("spawn")
        self.phase = phase
        self.states: list[ClientState] = []
        self._now: SynchronizedString = self._ctx.Array("c", 64)  # type: ignore[assignment]
        self._pipe, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(
            target=_run_load,
            args=(child, self._now, args, options, cafile),
            name="load",
            daemon=True,
        )
        self._done = threading.Event()
        self._relay = threading.Thread(target=self._hand_over, name="load-phase", daemon=True)

    @property
    def pid(self) -> int | None:
        """The clients' process id (None before :meth:`start`)."""
        return self._proc.pid

    def start(self) -> LoadProcess:
        self._set(self.phase())
        self._proc.start()
        self._relay.start()
        if not self._pipe.poll(60) or self._pipe.recv() != "started":
            raise RuntimeError("the load's process did not start its clients")
        return self

    def stop(self) -> None:
        self._done.set()
        self._relay.join()
        self._pipe.send("stop")
        if not self._pipe.poll(120):
            self._proc.kill()
            raise RuntimeError("the load's process did not stop within 120 s")
        self.states = self._pipe.recv()
        self._proc.join(timeout=30)

    def requests(self) -> list[Request]:
        return [r for s in self.states for r in s.requests]

    def _set(self, phase: str) -> None:
        self._now.value = phase.encode()[:63]

    def _hand_over(self) -> None:
        while not self._done.wait(self.PHASE_EVERY):
            self._set(self.phase())


def _run_load(
    conn: Connection,
    now: SynchronizedString,
    args: tuple[Any, ...],
    options: dict[str, Any],
    cafile: str | None,
) -> None:
    """The body of a :class:`LoadProcess`: the clients until told to stop, then their states."""
    tls = ssl.create_default_context(cafile=cafile) if cafile else None

    def phase() -> str:
        return bytes(now.value).decode()

    load = LoadGenerator(*args, phase=phase, tls=tls, **options).start()
    conn.send("started")
    conn.recv()
    load.stop()
    conn.send(load.states)


@dataclass
class Verdict:
    """What the live version holds of everything the clients were told succeeded."""

    writes_checked: int
    deletes_checked: int
    lost_writes: int
    wrong_vectors: int
    resurrected: int

    @property
    def ok(self) -> bool:
        return not (self.lost_writes or self.wrong_vectors or self.resurrected)


def verify(states: list[ClientState], store: VectorStore) -> Verdict:
    """Check every acknowledged write and delete against ``store`` (the live version)."""
    want = {i: v for s in states for i, v in s.acked.items()}
    ids = np.fromiter(want, np.int64, len(want))
    found_ids, found = store.fetch(ids) if len(ids) else (np.empty(0, np.int64), None)
    have = (
        {int(i): found[n].astype("<f4").tobytes() for n, i in enumerate(found_ids.tolist())}
        if found is not None
        else {}
    )
    lost = wrong = back = writes = deletes = 0
    for record_id, vec in want.items():
        if vec is None:
            deletes += 1
            back += record_id in have
        else:
            writes += 1
            if record_id not in have:
                lost += 1
            elif have[record_id] != vec:
                wrong += 1
    return Verdict(writes, deletes, lost, wrong, back)


# The kinds of request whose latencies the tables keep apart.
SEARCHES = frozenset({"search"})
WRITES = frozenset({"upsert", "delete"})


def answered_millis(requests: list[Request], kinds: frozenset[str]) -> dict[str, np.ndarray]:
    """The milliseconds of the answered requests of ``kinds``, by phase."""
    by_phase: dict[str, list[float]] = {}
    for r in requests:
        if r.kind in kinds and r.status == 200:
            by_phase.setdefault(r.phase, []).append(r.ms)
    return {phase: np.asarray(ms, dtype=np.float64) for phase, ms in by_phase.items()}


def latency_table(requests: list[Request], phases: list[str]) -> list[dict[str, Any]]:
    """Per phase: requests, failures, and p50/p99 of searches and of writes (ms)."""
    millis = {
        name: answered_millis(requests, kinds)
        for name, kinds in (("search", SEARCHES), ("write", WRITES))
    }
    rows = []
    for phase in phases:
        mine = [r for r in requests if r.phase == phase]
        if not mine:
            continue
        row: dict[str, Any] = {
            "phase": phase,
            "requests": len(mine),
            "failed": sum(r.status != 200 for r in mine),
        }
        for name, by_phase in millis.items():
            ms = by_phase.get(phase, np.empty(0))
            row[f"{name}_p50_ms"] = round(float(np.percentile(ms, 50)), 2) if ms.size else None
            row[f"{name}_p99_ms"] = round(float(np.percentile(ms, 99)), 2) if ms.size else None
        rows.append(row)
    return rows
