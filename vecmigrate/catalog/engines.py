"""SQLAlchemy engines shared by the catalog and the stores.

One engine per URL (and connection options) per process. SQLite files get WAL (readers never
block the writer), a busy timeout (activities write from several threads) and full fsync (a
heartbeat must never run ahead of data that a power cut could lose).

A URL never holds a password: :class:`Connection` names it by reference, and it is resolved each
time the pool opens a connection (so a rotated database password is picked up without a
restart, and the engine's URL, which drivers and logs quote, has nothing to leak). TLS options
(``sslmode``, CA and client certificate) go to libpq the same way.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

from vecmigrate.errors import SecretError
from vecmigrate.model.credentials import HOW_TO_REFERENCE, secret_in_url
from vecmigrate.security.secrets import resolve

# The catalog's password, as a secret reference (``env:NAME``, ``file:/path``).
CATALOG_PASSWORD_ENV = "VECMIGRATE_CATALOG_PASSWORD"


@dataclass(frozen=True)
class DatabaseAccess:
    """How to reach a PostgreSQL database beyond its URL: the password by reference, and TLS.

    Field names are libpq's (``sslmode``, ``sslrootcert``, ``sslcert``, ``sslkey``,
    ``sslnegotiation``).
    """

    password: str | None = None
    sslmode: str | None = None
    sslrootcert: str | None = None
    sslcert: str | None = None
    sslkey: str | None = None
    sslnegotiation: str | None = None

    def tls_args(self) -> dict[str, str]:
        """The libpq TLS parameters that are set."""
        names = ("sslmode", "sslrootcert", "sslcert", "sslkey", "sslnegotiation")
        return {k: v for k in names if (v := getattr(self, k)) is not None}


def catalog_access() -> DatabaseAccess | None:
    """The catalog's password reference from ``$VECMIGRATE_CATALOG_PASSWORD``, if set (TLS for
    the catalog: libpq's own ``PGSSLMODE``/``PGSSLROOTCERT`` or the URL's ``sslmode=``)."""
    ref = os.environ.get(CATALOG_PASSWORD_ENV)
    return DatabaseAccess(password=ref) if ref else None


_engines: dict[tuple[str, DatabaseAccess | None], Engine] = {}
_lock = threading.Lock()
# One write lock per SQLite engine (see ``begin``).
_write_locks: dict[int, threading.RLock] = {}
# The writes waiting to share a transaction, per SQLite engine (see ``grouped``).
_groups: dict[int, _Group] = {}
# How long a SQLite writer waits for another process's write to end before it fails, and the
# steps it waits in while it does (see ``_take_write_lock``).
BUSY_TIMEOUT_SECONDS = 60.0
WRITE_POLL_SECONDS = (0.0005, 0.002)


def _busy_timeout() -> str:
    return f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_SECONDS * 1000)}"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute(_busy_timeout())
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def engine_for(url: str, access: DatabaseAccess | None = None) -> Engine:
    """The process-wide engine for ``url`` (reached with ``access``), created on first use.

    For a SQLite file the parent directory is created, so a fresh home directory just works.

    Raises:
        SecretError: the URL holds a password (give it by reference instead).
    """
    with _lock:
        engine = _engines.get((url, access))
        if engine is not None:
            return engine
        found = secret_in_url(url)
        if found is not None:
            raise SecretError(
                f"a database URL holds {found}; drop it from the URL and give the password by "
                f"reference ({CATALOG_PASSWORD_ENV} for the catalog, the store's 'password' "
                f"field in a spec): {HOW_TO_REFERENCE}"
            )
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            db = parsed.database
            if db and db != ":memory:":
                Path(db).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, pool_size=8, max_overflow=8)
            event.listen(engine, "connect", _sqlite_pragmas)
            _write_locks[id(engine)] = threading.RLock()
            _groups[id(engine)] = _Group()
        else:
            tls = access.tls_args() if access is not None else {}
            engine = create_engine(url, pool_pre_ping=True, connect_args=tls)
            if access is not None and access.password is not None:
                reference = access.password

                def provide_password(_d: Any, _r: Any, _cargs: Any, params: dict[str, Any]) -> None:
                    params["password"] = resolve(reference)

                event.listen(engine, "do_connect", provide_password)
        _engines[(url, access)] = engine
        return engine


@contextmanager
def begin(engine: Engine) -> Iterator[Connection]:
    """A write transaction, committed on success.

    SQLite allows one writer per database, and a writer that finds it busy sleeps in steps of
    up to 100 ms before trying again: a worker's activity threads writing at once would spend
    most of their time asleep. Writers of one process take turns on a lock instead; a writer
    of another process is waited for in steps of a millisecond or two (``_take_write_lock``).
    """
    lock = _write_locks.get(id(engine))
    if lock is None:
        with engine.begin() as conn:
            yield conn
        return
    with lock:
        held = _held_by_this_thread()
        held[id(engine)] += 1
        try:
            with engine.connect() as conn:
                _take_write_lock(conn)
                with conn.begin():
                    yield conn
        finally:
            held[id(engine)] -= 1


_thread_state = threading.local()


def _held_by_this_thread() -> Counter[int]:
    """How many of ``begin``'s transactions this thread has open, by engine."""
    held: Counter[int] | None = getattr(_thread_state, "held", None)
    if held is None:
        held = _thread_state.held = Counter()
    return held


@dataclass
class _Write:
    write: Callable[[Connection], None]
    done: bool = False
    error: BaseException | None = None


@dataclass
class _Group:
    """The writes of one engine waiting to share a transaction, and whether one is open."""

    ready: threading.Condition = field(default_factory=threading.Condition)
    queued: list[_Write] = field(default_factory=list)
    open: bool = False


def grouped(engine: Engine, write: Callable[[Connection], None]) -> None:
    """Run ``write`` in a write transaction it may share with writes of other threads, and
    return once that transaction is committed (raising what ``write`` raised, or what the
    commit did).

    On SQLite, where a process's writers take turns (see :func:`begin`), each turn costs a
    commit and its fsync, and with a worker's activities each writing a row or two at their
    start and end, the turns are mostly waiting for one another. Here, while one transaction
    is open, the writes that arrive wait and then go into the next one together, the first
    of them running it (group commit). With others, each runs in a savepoint of its own, so
    one that fails is undone alone and its caller gets the error. A ``write`` must only use
    the connection it is given and may run on another thread. Elsewhere (PostgreSQL)
    ``write`` runs in a transaction of its own.
    """
    if id(engine) not in _write_locks or _held_by_this_thread()[id(engine)]:
        # Not SQLite; or called inside this thread's own transaction on the engine, a misuse:
        # it then fails after the busy timeout, where waiting for a group whose leader waits
        # for this thread's turn would hang.
        with begin(engine) as conn:
            write(conn)
        return
    group = _groups[id(engine)]
    mine = _Write(write)
    with group.ready:
        group.queued.append(mine)
        while group.open and not mine.done:
            group.ready.wait()
        if not mine.done:
            group.open = True
            batch, group.queued = group.queued, []
    if not mine.done:
        try:
            with begin(engine) as conn:
                if len(batch) == 1:  # alone: no savepoint (SQLite journals a savepoint's pages)
                    batch[0].write(conn)
                else:
                    for item in batch:
                        try:
                            with conn.begin_nested():
                                item.write(conn)
                        except Exception as exc:
                            item.error = exc
        except BaseException as exc:  # the commit failed: none of them is written
            for item in batch:
                item.error = item.error or exc
            raise
        finally:
            with group.ready:
                for item in batch:
                    item.done = True
                group.open = False
                group.ready.notify_all()
    if mine.error is not None:
        raise mine.error


def _take_write_lock(conn: Connection) -> None:
    """Open ``conn``'s transaction with SQLite's write lock taken (``BEGIN IMMEDIATE``),
    trying again every half to two milliseconds while another process holds it.

    SQLite's own busy handler sleeps in steps that grow to 100 ms: a writer of another process
    that finds the database busy (an application's write beside a copy that writes its batches
    in turns of about 10 ms) would miss the gaps between the turns and wait 100 to 250 ms
    where it needs to wait for one turn. The driver's transaction is begun here; SQLAlchemy's
    ``begin`` then commits or rolls back that one.

    Raises:
        sqlite3.OperationalError: the database stayed locked for ``BUSY_TIMEOUT_SECONDS``.
    """
    raw = conn.connection.driver_connection
    assert isinstance(raw, sqlite3.Connection)
    deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
    step, longest = WRITE_POLL_SECONDS
    raw.execute("PRAGMA busy_timeout=0")
    try:
        while True:
            try:
                raw.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
                if not busy or time.monotonic() > deadline:
                    raise
            time.sleep(step)
            step = min(2 * step, longest)
    finally:
        raw.execute(_busy_timeout())


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
        _groups.clear()
        _prepared.clear()
