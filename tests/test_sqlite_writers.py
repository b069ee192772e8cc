"""SQLite writers of several processes: ``begin`` takes the database's write lock as it opens its
transaction, waits for another process's writer in short steps, and gives up after the busy
timeout with SQLite's own error; ``grouped`` writes of several threads share a commit."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Connection, event, text
from sqlalchemy.exc import IntegrityError

from vecmigrate.catalog import engines
from vecmigrate.catalog.engines import begin, engine_for, grouped
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


def _held_while(path: Path, writes: list[Callable[[], None]]) -> list[BaseException | None]:
    """Run each of ``writes`` on its own thread while another process holds the write lock,
    then let it go: the writes queue up behind it. What each raised, in order."""
    other = _other_process_writer(path)
    other.execute("BEGIN IMMEDIATE")
    errors: list[BaseException | None] = [None] * len(writes)

    def run(i: int) -> None:
        try:
            writes[i]()
        except BaseException as exc:  # handed to the test
            errors[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(writes))]
    for t in threads:
        t.start()
    time.sleep(0.3)
    other.execute("ROLLBACK")
    for t in threads:
        t.join()
    other.close()
    return errors


def _insert(url: str, row_id: int) -> Callable[[], None]:
    def write(conn: Connection) -> None:
        conn.execute(text("INSERT INTO t VALUES (:id, 'grouped')"), {"id": row_id})

    return lambda: grouped(engine_for(url), write)


def test_writes_that_arrive_together_share_a_commit_and_each_lands(tmp_path: Path) -> None:
    url, path = _database(tmp_path)
    engine = engine_for(url)
    commits: list[int] = []
    event.listen(engine, "commit", lambda _conn: commits.append(1))
    errors = _held_while(path, [_insert(url, i) for i in range(8)])
    assert errors == [None] * 8
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id FROM t ORDER BY id")).scalars().all() == list(range(8))
    # The first write's transaction waited for the lock with only itself (or the few that
    # came with it) in it; the rest, queued meanwhile, went into the next one together (a
    # thread started after the lock was let go would make a third).
    assert 2 <= len(commits) <= 3


def test_a_failing_write_is_undone_alone_and_its_caller_gets_the_error(tmp_path: Path) -> None:
    url, path = _database(tmp_path)
    with begin(engine_for(url)) as conn:
        conn.execute(text("INSERT INTO t VALUES (5, 'before')"))

    def half_then_duplicate(conn: Connection) -> None:
        conn.execute(text("INSERT INTO t VALUES (100, 'half')"))
        conn.execute(text("INSERT INTO t VALUES (5, 'again')"))

    failing = lambda: grouped(engine_for(url), half_then_duplicate)  # noqa: E731
    errors = _held_while(path, [_insert(url, 1), _insert(url, 2), failing, _insert(url, 3)])
    assert [e is None for e in errors] == [True, True, False, True]
    assert isinstance(errors[2], IntegrityError)
    with engine_for(url).connect() as conn:
        rows = conn.execute(text("SELECT id, who FROM t ORDER BY id")).all()
    # The failed write's first insert (100) was undone with it; the others' rows landed.
    assert [tuple(r) for r in rows] == [
        (1, "grouped"),
        (2, "grouped"),
        (3, "grouped"),
        (5, "before"),
    ]
