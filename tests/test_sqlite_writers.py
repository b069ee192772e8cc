"""SQLite writers of several processes: ``begin`` takes the database's write lock as it opens its
transaction, waits for another process's writer in short steps, and gives up after the busy
timeout with SQLite's own error."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from vecmigrate.catalog import engines
from vecmigrate.catalog.engines import begin, engine_for
from vecmigrate.config import sqlite_url


def _database(tmp_path: Path) -> tuple[str, Path]:
    path = tmp_path / "writers.db"
    url = sqlite_url(path)
    with begin(engine_for(url)) as conn:
        conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, who TEXT)"))
    return url, path


def _other_process_writer(path: Path) -> sqlite3.Connection:
    """A connection of its own, as another process's writer is: no busy handler, WAL as ours."""
    return sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)


def test_a_write_transaction_holds_the_write_lock_from_its_start(tmp_path: Path) -> None:
    url, path = _database(tmp_path)
    other = _other_process_writer(path)
    # Nothing written yet, and another writer is already refused: the lock was taken as the
    # transaction began, not at its first write.
    with begin(engine_for(url)), pytest.raises(sqlite3.OperationalError, match="locked"):
        other.execute("BEGIN IMMEDIATE")
    other.execute("BEGIN IMMEDIATE")  # and given back at its end
    other.execute("ROLLBACK")
    other.close()


def test_a_writer_waits_for_another_process_and_then_writes(tmp_path: Path) -> None:
    url, path = _database(tmp_path)
    other = _other_process_writer(path)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO t VALUES (1, 'other')")
    released = threading.Event()

    def release_later() -> None:
        time.sleep(0.3)
        other.execute("COMMIT")
        released.set()

    holder = threading.Thread(target=release_later)
    holder.start()
    with begin(engine_for(url)) as conn:
        assert released.is_set()  # it waited for the other writer rather than failing
        conn.execute(text("INSERT INTO t VALUES (2, 'ours')"))
    holder.join()
    other.close()
    with engine_for(url).connect() as conn:
        rows = conn.execute(text("SELECT id, who FROM t ORDER BY id")).all()
    assert [tuple(r) for r in rows] == [(1, "other"), (2, "ours")]


def test_a_writer_gives_up_after_the_busy_timeout_with_sqlites_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, path = _database(tmp_path)
    monkeypatch.setattr(engines, "BUSY_TIMEOUT_SECONDS", 0.2)
    other = _other_process_writer(path)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"), begin(engine_for(url)):
            pytest.fail("the transaction began while another writer held the lock")
    finally:
        other.execute("ROLLBACK")
        other.close()
    # The connection went back to the pool usable, its busy timeout restored.
    with begin(engine_for(url)) as conn:
        conn.execute(text("INSERT INTO t VALUES (3, 'after')"))
        timeout = conn.execute(text("PRAGMA busy_timeout")).scalar()
    assert timeout == int(0.2 * 1000)
