"""The catalog on real SQLite: registrations, routing compare-and-set, the ledger chain."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DatabaseError

from vecmigrate.catalog.catalog import Catalog
from vecmigrate.errors import NotFoundError, PreconditionError, RoutingConflictError
from vecmigrate.model.spec import EmbeddingSchema


@pytest.fixture
def catalog(sql_url: str) -> Catalog:
    return Catalog(sql_url)


EMB = EmbeddingSchema(model_id="m", dimension=8)


def test_versions_register_once_and_refuse_a_different_schema(catalog: Catalog) -> None:
    a = catalog.register_version("t", "c", "v1", EMB, {"kind": "builtin"}, "serving")
    b = catalog.register_version("t", "c", "v1", EMB, {"kind": "builtin"}, "serving")
    assert a == b
    with pytest.raises(PreconditionError, match="registered with m@1 \\(8d"):
        catalog.register_version(
            "t", "c", "v1", EmbeddingSchema(model_id="m", dimension=9), {}, "serving"
        )
    catalog.set_version_state("t", "c", "v1", "retained")
    found = catalog.find_version("t", "c", "v1")
    assert found is not None
    assert found.state == "retained"
    with pytest.raises(NotFoundError):
        catalog.set_version_state("t", "c", "nope", "retained")


def test_routing_compare_and_set(catalog: Catalog) -> None:
    r = catalog.init_routing("t", "c", "v1", "idx1", "alice")
    assert (r.read_version, r.write_versions, r.generation) == ("v1", ["v1"], 1)
    r2 = catalog.compare_and_set_routing(
        "t", "c", 1, "v2", "idx2", ["v2", "v1"], "bob", "cut", "k1"
    )
    assert (r2.read_version, r2.generation) == ("v2", 2)
    # A retry of the same change is recognised, not applied twice.
    again = catalog.compare_and_set_routing(
        "t", "c", 1, "v2", "idx2", ["v2", "v1"], "bob", "cut", "k1"
    )
    assert again == r2
    # A change from a stale generation is refused.
    with pytest.raises(RoutingConflictError, match="generation 2, not 1"):
        catalog.compare_and_set_routing("t", "c", 1, "v3", None, ["v3"], "eve", "x", "k2")
    with pytest.raises(NotFoundError):
        catalog.compare_and_set_routing("t", "zz", 1, "v3", None, ["v3"], "eve", "x", "k3")


def test_concurrent_cas_lets_exactly_one_win(catalog: Catalog) -> None:
    catalog.init_routing("t", "c", "v1", None, "a")
    wins, conflicts = [], []

    def attempt(i: int) -> None:
        try:
            catalog.compare_and_set_routing(
                "t", "c", 1, f"v{i}", None, [f"v{i}"], "x", "r", f"k{i}"
            )
            wins.append(i)
        except RoutingConflictError:
            conflicts.append(i)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert len(conflicts) == 7


def test_ledger_is_chained_idempotent_and_append_only(catalog: Catalog) -> None:
    e1 = catalog.append(tenant="t", collection="c", kind="a", actor="x", event_key="k1")
    e1b = catalog.append(tenant="t", collection="c", kind="a", actor="x", event_key="k1")
    assert e1 == e1b
    e2 = catalog.append(tenant="t", collection="c", kind="b", actor="y", data={"n": 1})
    assert e2.prev_hash == e1.hash
    assert catalog.verify_ledger() == []
    with catalog.engine.begin() as conn, pytest.raises(DatabaseError, match="append-only"):
        conn.execute(text("UPDATE ledger SET actor = 'mallory' WHERE seq = 1"))
    with catalog.engine.begin() as conn, pytest.raises(DatabaseError, match="append-only"):
        conn.execute(text("DELETE FROM ledger WHERE seq = 1"))


def test_verify_detects_an_edited_entry(catalog: Catalog) -> None:
    for i in range(3):
        catalog.append(tenant="t", collection="c", kind="k", actor="a", data={"i": i})
    drop = {
        "sqlite": "DROP TRIGGER ledger_no_update",
        "postgresql": "DROP TRIGGER ledger_append_only ON ledger",
    }[catalog.engine.dialect.name]
    with catalog.engine.begin() as conn:
        conn.execute(text(drop))
        conn.execute(text("""UPDATE ledger SET data = '{"i": 9}' WHERE seq = 2"""))
    assert catalog.verify_ledger() == ["entry 2: content does not match its hash (edited)"]


def test_concurrent_appends_stay_one_chain(catalog: Catalog) -> None:
    def writer(w: int) -> None:
        for i in range(10):
            catalog.append(tenant="t", collection="c", kind="k", actor=f"w{w}", data={"i": i})

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(catalog.entries()) == 40
    assert catalog.verify_ledger() == []
