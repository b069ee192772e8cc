"""Application writes while PostgreSQL builds an index on their table: for the test and the
benchmark that show a concurrent build lets them through and a plain one stops them.

:class:`Writer` upserts (``INSERT ... ON CONFLICT``) and deletes rows of a table of
vecmigrate's first layout (``id``, ``h``, ``embedding``) with plain SQL on its own connection,
one autocommitted statement at a time, and times each. :class:`BuildWatch` polls
``pg_stat_progress_create_index`` for the table from a third connection and records when a build
was seen running. :func:`during` keeps the writes that began after the build was first seen and
committed before it was last seen: writes that went through while it ran.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg


@dataclass
class Write:
    """One statement: what, when it began and ended (monotonic seconds), and its outcome."""

    kind: str
    began: float
    ended: float
    error: str = ""

    @property
    def ms(self) -> float:
        return (self.ended - self.began) * 1000


class Writer:
    """A thread writing to ``table`` through its own connection until stopped.

    Upserts pick ids in ``[first, first + span)``; every ``delete_every``-th statement deletes
    one of them instead. ``pause`` seconds pass between statements.
    """

    def __init__(
        self,
        conninfo: str,
        table: str,
        dim: int,
        first: int = 10_000_000,
        span: int = 1000,
        delete_every: int = 4,
        pause: float = 0.002,
        seed: int = 0,
    ) -> None:
        self.conninfo, self.table, self.dim = conninfo, table, dim
        self.first, self.span, self.delete_every, self.pause = first, span, delete_every, pause
        self.rng = np.random.default_rng(seed)
        self.writes: list[Write] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)

    def start(self) -> Writer:
        self._thread.start()
        return self

    def stop(self) -> list[Write]:
        self._stop.set()
        self._thread.join()
        return self.writes

    def _run(self) -> None:
        upsert = (
            f"INSERT INTO {self.table} (id, h, embedding) VALUES (%s, %s, %s::vector) "
            "ON CONFLICT (id) DO UPDATE SET embedding = EXCLUDED.embedding"
        )
        delete = f"DELETE FROM {self.table} WHERE id = %s"
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            n = 0
            while not self._stop.is_set():
                n += 1
                key = self.first + int(self.rng.integers(self.span))
                kind = "delete" if n % self.delete_every == 0 else "upsert"
                began = time.monotonic()
                error = ""
                try:
                    if kind == "delete":
                        conn.execute(delete, (key,))
                    else:
                        vector = self.rng.standard_normal(self.dim).astype(np.float32)
                        literal = "[" + ",".join(f"{x:.5f}" for x in vector) + "]"
                        conn.execute(upsert, (key, key, literal))
                except psycopg.Error as exc:
                    error = f"{type(exc).__name__}: {exc}"
                self.writes.append(Write(kind, began, time.monotonic(), error))
                if self.pause:
                    self._stop.wait(self.pause)


@dataclass
class BuildWatch:
    """A thread noting when a build on ``table`` shows in ``pg_stat_progress_create_index``."""

    conninfo: str
    table: str
    every: float = 0.05
    seen: list[tuple[float, str, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> BuildWatch:
        self._thread = threading.Thread(target=self._run, name="build-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[tuple[float, str, str]]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.seen

    def _run(self) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            while not self._stop.is_set():
                # Autocommit: each reading is a transaction of its own, so it sees the build
                # move (a transaction keeps the statistics it read first).
                row = conn.execute(
                    "SELECT command, phase FROM pg_stat_progress_create_index "
                    "WHERE relid = to_regclass(%s)",
                    (self.table,),
                ).fetchone()
                if row is not None:
                    self.seen.append((time.monotonic(), str(row[0]), str(row[1])))
                self._stop.wait(self.every)

    def window(self) -> tuple[float, float] | None:
        """When the build was first and last seen (None: never)."""
        if not self.seen:
            return None
        return self.seen[0][0], self.seen[-1][0]


def while_building(
    conninfo: str, table: str, dim: int, build: Callable[[], object], pause: float = 0.002
) -> tuple[list[Write], BuildWatch, float]:
    """Run ``build()`` while a :class:`Writer` writes to ``table`` (from a little before to a
    little after) and a :class:`BuildWatch` follows the build: the writes, the watch and the
    build's seconds."""
    writer = Writer(conninfo, table, dim, pause=pause).start()
    watch = BuildWatch(conninfo, table).start()
    time.sleep(0.3)  # the writes are flowing before the build starts
    began = time.monotonic()
    build()
    seconds = time.monotonic() - began
    time.sleep(0.3)
    writes = writer.stop()
    watch.stop()
    return writes, watch, seconds


def during(writes: list[Write], window: tuple[float, float] | None) -> list[Write]:
    """The writes that began after the build was first seen and ended before it was last seen:
    they went through while it ran, whatever locks it held."""
    if window is None:
        return []
    lo, hi = window
    return [w for w in writes if w.began > lo and w.ended < hi]


def latency(writes: list[Write]) -> dict[str, Any]:
    """Count, failures, and p50/p99/max milliseconds of ``writes``."""
    ok = [w.ms for w in writes if not w.error]
    out: dict[str, Any] = {"writes": len(writes), "failed": sum(1 for w in writes if w.error)}
    if ok:
        out["p50 ms"] = round(float(np.percentile(ok, 50)), 2)
        out["p99 ms"] = round(float(np.percentile(ok, 99)), 2)
        out["max ms"] = round(max(ok), 2)
    return out
