"""SQLAlchemy engines shared by the catalog and the built-in store.

One engine per URL per process. SQLite files get WAL (readers never block the writer), a busy
timeout (activities write from several threads) and full fsync (a heartbeat must never run ahead
of data that a power cut could lose).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

_engines: dict[str, Engine] = {}
_lock = threading.Lock()
# One write lock per SQLite engine (see ``begin``).
_write_locks: dict[int, threading.RLock] = {}


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def engine_for(url: str) -> Engine:
    """The process-wide engine for ``url``, created on first use.

    For a SQLite file the parent directory is created, so a fresh home directory just works.
    """
    with _lock:
        engine = _engines.get(url)
        if engine is not None:
            return engine
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            db = parsed.database
            if db and db != ":memory:":
                Path(db).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, pool_size=8, max_overflow=8)
            event.listen(engine, "connect", _sqlite_pragmas)
            _write_locks[id(engine)] = threading.RLock()
        else:
            engine = create_engine(url, pool_pre_ping=True)
        _engines[url] = engine
        return engine


@contextmanager
def begin(engine: Engine) -> Iterator[Connection]:
    """A write transaction, committed on success.

    SQLite allows one writer per database, and a writer that finds it busy sleeps in steps of
    up to 100 ms before trying again: a worker's activity threads writing at once would spend
    most of their time asleep. Writers of one process take turns on a lock instead; other
    processes still meet the busy timeout.
    """
    lock = _write_locks.get(id(engine))
    if lock is None:
        with engine.begin() as conn:
            yield conn
        return
    with lock, engine.begin() as conn:
        yield conn


_prepared: dict[str, set[int]] = {}


def once_per_engine(engine: Engine, what: str, prepare: Callable[[], None]) -> None:
    """Run ``prepare`` (idempotent DDL) the first time ``what`` is asked for on ``engine``.

    Stores are opened by every activity; their schema needs creating once per process, not once
    per call.
    """
    done = _prepared.setdefault(what, set())
    if id(engine) in done:
        return
    prepare()
    with _lock:
        done.add(id(engine))


def dispose_engines() -> None:
    """Close every pooled connection (tests and clean worker shutdown)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _write_locks.clear()
        _prepared.clear()
