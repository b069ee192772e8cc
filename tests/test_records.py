"""The record model on its own: ids of every kind and their labels, payload values in canonical
form, checksums over ids, vectors and payload, screening, filters."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from vecmigrate.catalog.engines import dispose_engines
from vecmigrate.config import sqlite_url
from vecmigrate.data.quarantine import estimate
from vecmigrate.errors import DataError
from vecmigrate.model.records import (
    FieldKind,
    IdKind,
    PayloadField,
    RecordSchema,
    VectorField,
    parse_filter,
)
from vecmigrate.records.batch import Records, assemble, assemble_rows
from vecmigrate.records.checksums import hash_bytes, record_hashes
from vecmigrate.records.filters import evaluate
from vecmigrate.records.ids import id_array, labels, uuid_bytes, uuid_texts
from vecmigrate.records.payload import canonical_json, column, infer_kind, rfc3339
from vecmigrate.records.screening import Limits, screen
from vecmigrate.records.sharding import hash_key
from vecmigrate.records.vectors import merge_topk
from vecmigrate.stores import BuiltinStore, Scope, limits_for

SCHEMA = RecordSchema(
    id_kind=IdKind.UUID,
    vectors=(
        VectorField(name="text", dimension=3),
        VectorField(name="image", dimension=2, dtype="float16"),
    ),
    payload=(
        PayloadField(name="title", kind=FieldKind.TEXT),
        PayloadField(name="year", kind=FieldKind.INT),
        PayloadField(name="score", kind=FieldKind.FLOAT),
        PayloadField(name="live", kind=FieldKind.BOOL),
        PayloadField(name="at", kind=FieldKind.TIMESTAMP),
        PayloadField(name="meta", kind=FieldKind.JSON),
    ),
    extra="_extra",
)


MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def reference_mix(x: int) -> int:
    """The 64-bit finaliser the checksums' docstrings define, with Python integers."""
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & MASK
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def reference_fold(seed: int, padded: bytes) -> int:
    """Mix the little-endian 64-bit words of ``padded`` into ``seed``, the k-th word with k+1
    times the golden ratio, as the checksums' docstrings define it."""
    h = reference_mix(seed & MASK)
    for k in range(len(padded) // 8):
        word = int.from_bytes(padded[8 * k : 8 * k + 8], "little")
        h = reference_mix(h ^ word ^ (((k + 1) * GOLDEN) & MASK))
    return h


def _reference_bytes_hash(data: bytes) -> int:
    """:func:`hash_bytes` of one value as its docstring defines it, with Python integers."""
    return reference_fold(len(data) + 0x243F6A8885A308D3, data + b"\0" * (-len(data) % 8))


def test_hash_bytes_follows_its_definition_whatever_the_lengths_around_a_value() -> None:
    values = [b"", b"a", b"abcdefgh", b"abcdefghi", "üñí€".encode(), b"x" * 1000, b"\0", b"\0\0"]
    data = np.frombuffer(b"".join(values), np.uint8)
    offsets = np.cumsum([0] + [len(v) for v in values])
    got = hash_bytes(offsets, data)
    assert [int(h) for h in got] == [_reference_bytes_hash(v) for v in values]
    assert len(set(got.tolist())) == len(values)  # a trailing NUL is not padding
    # Alone or among others, long or short neighbours: the same hash.
    for i, v in enumerate(values):
        one = hash_bytes(np.array([0, len(v)]), np.frombuffer(v, np.uint8))
        assert int(one[0]) == int(got[i])


def test_labels_are_the_integer_ids_and_a_hash_of_canonical_bytes_otherwise() -> None:
    ints = np.array([-5, 0, 7, 2**62], np.int64)
    assert labels(pa.array(ints), IdKind.INT).tolist() == ints.tolist()
    u = [str(uuid.uuid4()) for _ in range(50)]
    raw = uuid_bytes(pa.array(u))
    assert raw[3].tobytes() == uuid.UUID(u[3]).bytes
    assert uuid_texts(raw).to_pylist() == u
    got = labels(pa.array(u), IdKind.UUID)
    assert int(got[0]) == np.int64(np.uint64(_reference_bytes_hash(uuid.UUID(u[0]).bytes))).item()
    # Upper-case and brace-less forms are the same id once canonical.
    assert id_array([u[0].upper()], IdKind.UUID).to_pylist() == [u[0]]
    with pytest.raises(DataError, match="not a UUID"):
        id_array(["not-a-uuid"], IdKind.UUID)
    strings = pa.array(["doc-1", "doc-2", "ü"])
    assert labels(strings, IdKind.STRING)[1] != labels(strings, IdKind.STRING)[0]
    assert (
        labels(strings.slice(1, 2), IdKind.STRING).tolist()
        == labels(strings, IdKind.STRING)[1:].tolist()
    )
    # Shards follow labels: an integer id keeps the shard key it always had.
    assert hash_key(labels(pa.array(ints), IdKind.INT)).tolist() == hash_key(ints).tolist()


def test_a_record_of_an_integer_id_and_one_vector_keeps_its_checksum() -> None:
    ids = np.array([42, -3, 9], np.int64)
    v = np.arange(9, dtype=np.float32).reshape(3, 3)
    records = Records.from_numpy(ids, v)
    assert np.array_equal(records.hashes(), record_hashes(ids, v))
    pinned = record_hashes(np.array([42], np.int64), np.arange(3, dtype=np.float32)[None, :])
    assert int(pinned[0]) == 0x1B0308E389CE9214


def _records(n: int = 4) -> Records:
    ids = pa.array([str(uuid.UUID(int=i + 1)) for i in range(n)])
    rows = {
        "text": np.arange(3 * n, dtype=np.float32).reshape(n, 3),
        "image": np.ones((n, 2), np.float16),
    }
    payload = {
        "title": column(["a", None, "c", "dé"][:n], SCHEMA.field("title")),
        "year": column([2020, 2021, None, 1999][:n], SCHEMA.field("year")),
        "score": column([0.5, 1, None, -0.0][:n], SCHEMA.field("score")),
        "live": column([True, False, None, True][:n], SCHEMA.field("live")),
        "at": column(
            ["2024-01-02T03:04:05.000006Z", None, 0, "2024-01-02T05:04:05.000006+02:00"][:n],
            SCHEMA.field("at"),
        ),
        "meta": column([{"b": 1, "a": [1, 2.5]}, None, [], "s"][:n], SCHEMA.field("meta")),
    }
    extra = pa.array([None, canonical_json({"z": None}), None, None][:n], pa.string())
    return Records.build(SCHEMA, ids, rows, payload, extra)


def test_payload_values_take_one_canonical_form() -> None:
    records = _records()
    assert records.payload("meta").to_pylist()[0] == '{"a":[1,2.5],"b":1}'
    at = records.payload("at").cast(pa.int64()).to_pylist()
    assert at[0] == at[3] == 1704164645000006  # the same instant in two offsets
    assert rfc3339(at[0]) == "2024-01-02T03:04:05.000006Z"
    assert records.payload("score").to_pylist()[1] == 1.0
    with pytest.raises(DataError, match="field 'year' holds str"):
        column(["2020"], SCHEMA.field("year"))
    assert infer_kind([1, 2.5, None]) == FieldKind.FLOAT
    assert infer_kind(["2024-01-01T00:00:00Z", "2025-01-01T00:00:00+02:00"]) == FieldKind.TIMESTAMP
    assert infer_kind(["a", 1]) == FieldKind.JSON
    assert canonical_json({"big": 2**70}) == '{"big":1180591620717411303424}'


def test_checksums_cover_every_vector_and_every_payload_value() -> None:
    base = _records()
    hashes = base.hashes()
    assert len(set(hashes.tolist())) == 4
    # The same records with any one thing changed hash differently, that record only.
    changes = {
        "title": column(["a", "b", "c", "dé"], SCHEMA.field("title")),  # a null became "b"
        "year": column([2020, 2021, None, 1998], SCHEMA.field("year")),
        "live": column([True, False, False, True], SCHEMA.field("live")),  # null became false
        "meta": column([{"b": 1, "a": [1, 2.5]}, None, {}, "s"], SCHEMA.field("meta")),
    }
    for name, changed in changes.items():
        cols = base.payload_columns()
        cols[name] = changed
        other = Records.build(
            SCHEMA,
            base.ids,
            {"text": base.vectors("text"), "image": base.raw_vectors("image")},
            cols,
            base.extra,
        )
        diff = other.hashes() != hashes
        assert diff.sum() == 1, name
    image = base.raw_vectors("image").copy()
    image[0, 1] = np.float16(2.0)
    other = Records.build(
        SCHEMA,
        base.ids,
        {"text": base.vectors("text"), "image": image},
        base.payload_columns(),
        base.extra,
    )
    assert (other.hashes() != hashes).tolist() == [True, False, False, False]
    # float16 held as float32 is the same record: the checksum hashes values, not storage.
    widened = base.conform(
        SCHEMA.model_copy(
            update={
                "vectors": (
                    SCHEMA.vectors[0],
                    SCHEMA.vectors[1].model_copy(update={"dtype": "float32"}),
                )
            }
        )
    )
    assert np.array_equal(widened.hashes(), hashes)
    # Payload order does not matter (fields fold in by name).
    reordered = SCHEMA.model_copy(update={"payload": tuple(reversed(SCHEMA.payload))})
    assert np.array_equal(Records(reordered, base.batch).hashes(), hashes)


def test_assemble_leaves_out_records_no_store_can_hold_and_names_them() -> None:
    schema = RecordSchema(id_kind=IdKind.STRING, vectors=(VectorField(name="v", dimension=3),))
    ids = pa.array(["a", "b", "c", "d", "e", "e", "f"])
    rows = [[1, 2, 3], None, [1, 2], [np.nan, 1, 1], [1, 1, 1], [2, 2, 2], [np.inf, 0, 0]]
    records, faults = assemble(schema, ids, {"v": rows})
    assert records.id_values() == ["a"]
    assert dict(zip(faults.ids, faults.reasons, strict=True)) == {
        "b": "null_vector",
        "c": "wrong_dimension",
        "d": "nonfinite",
        "e": "duplicate_id",
        "f": "nonfinite",
    }
    assert faults.counts() == {
        "null_vector": 1,
        "wrong_dimension": 1,
        "nonfinite": 2,
        "duplicate_id": 1,  # one id, listed once however often it occurs
    }


def test_assemble_rows_keeps_unknown_keys_in_the_extra_object() -> None:
    schema = SCHEMA
    ids = [str(uuid.UUID(int=1)), str(uuid.UUID(int=2))]
    vectors = {"text": np.ones((2, 3), np.float32), "image": np.ones((2, 2), np.float16)}
    payloads = [{"title": "x", "new": {"k": 1}, "h": 5}, {"year": "not a number"}]
    records, faults = assemble_rows(schema, ids, vectors, payloads, hidden=frozenset({"h"}))
    assert records.extra is not None
    assert records.extra.to_pylist() == ['{"new":{"k":1}}']
    assert faults.reasons == ["value_unstorable"]
    closed = schema.model_copy(update={"extra": None})
    records, faults = assemble_rows(
        closed, ids[:1], {k: v[:1] for k, v in vectors.items()}, payloads[:1]
    )
    assert len(records) == 0
    assert "not fields of the schema" in faults.details[0]


def test_screening_applies_each_targets_limits() -> None:
    schema = RecordSchema(
        id_kind=IdKind.STRING,
        vectors=(VectorField(name="v", dimension=2),),
        payload=(
            PayloadField(name="t", kind=FieldKind.TEXT),
            PayloadField(name="j", kind=FieldKind.JSON),
        ),
    )
    ids = pa.array(["12", str(uuid.UUID(int=5)), "doc-3", "4", "5"])
    records = Records.build(
        schema,
        ids,
        {"v": np.ones((5, 2), np.float32)},
        {
            "t": column(["ok", "ok", "ok", "nul\x00", "x" * 50], schema.field("t")),
            "j": column([None, {"a": "b\x00"}, None, None, None], schema.field("j")),
        },
    )
    kept, faults = screen(records, Limits(ids="point"))
    assert kept.id_values() == ["12", str(uuid.UUID(int=5)), "4", "5"]
    assert faults.reasons == ["id_unstorable"]
    kept, faults = screen(records, Limits(nul=False))
    assert sorted(faults.ids) == sorted([str(uuid.UUID(int=5)), "4"])
    assert set(faults.reasons) == {"value_unstorable"}
    kept, faults = screen(records, Limits().with_payload_cap(40))
    assert (faults.ids, faults.reasons) == (["5"], ["payload_too_large"])
    kept, faults = screen(records, Limits(max_value_bytes={"t": 10}))
    assert faults.ids == ["5"]


def test_filters_mean_the_same_thing_everywhere() -> None:
    records = _records()

    def ids(spec: dict) -> list[int]:
        mask = evaluate(parse_filter(spec), records)
        return [i for i, m in enumerate(mask.tolist()) if m]

    assert ids({"field": "title", "eq": "a"}) == [0]
    assert ids({"not": {"field": "title", "eq": "a"}}) == [1, 2, 3]  # the null one included
    assert ids({"field": "year", "in": [2020, 1999]}) == [0, 3]
    assert ids({"field": "year", "gte": 2000, "lt": 2021}) == [0]
    assert ids({"field": "score", "eq": 1}) == [1]
    assert ids({"field": "live", "eq": True}) == [0, 3]
    assert ids({"field": "at", "gte": "2024-01-01T00:00:00Z"}) == [0, 3]
    assert ids({"field": "title", "is_null": True}) == [1]
    assert ids({"or": [{"field": "title", "eq": "c"}, {"field": "year", "eq": 2021}]}) == [1, 2]
    assert ids({"and": [{"field": "live", "eq": True}, {"field": "year", "lt": 2000}]}) == [3]
    for bad, message in (
        ({"field": "nope", "eq": 1}, "no payload field 'nope'"),
        ({"field": "meta", "eq": "x"}, "JSON documents"),
        ({"field": "title", "gte": "a"}, "ranges apply to numbers"),
        ({"field": "year", "eq": "x"}, "compares a int field"),
        ({"field": "year"}, "exactly one test"),
        ({"and": []}, "non-empty list"),
        ({"xor": []}, "exactly one of"),
    ):
        with pytest.raises(DataError, match=message):
            evaluate(parse_filter(bad), records)


def test_a_schema_names_each_field_once() -> None:
    with pytest.raises(ValueError, match="used twice"):
        RecordSchema(vectors=(VectorField(name="id", dimension=2),))
    digest = hashlib.sha256(SCHEMA.model_dump_json().encode()).hexdigest()
    assert RecordSchema.model_validate_json(SCHEMA.model_dump_json()) == SCHEMA
    assert digest


def test_the_quarantine_estimate_scales_a_sample_of_the_source(tmp_path: Path) -> None:
    """About 10 % of 20,000 records hold a NUL PostgreSQL text cannot store: a sample of about
    2,000 of them, read and screened as the copy would, finds about a tenth."""
    schema = RecordSchema(
        id_kind=IdKind.STRING,
        vectors=(VectorField(name="v", dimension=4),),
        payload=(PayloadField(name="title", kind=FieldKind.TEXT),),
    )
    n = 20_000
    rng = np.random.default_rng(2)
    nul = rng.random(n) < 0.1
    ids = pa.array([f"doc-{i}" for i in range(n)])
    titles = pa.array([f"t{i}\x00" if bad else f"t{i}" for i, bad in enumerate(nul)])
    vectors = rng.standard_normal((n, 4)).astype(np.float32)
    records, faults = assemble(schema, ids, {"v": vectors}, {"title": titles})
    assert not len(faults)
    store = BuiltinStore.open(sqlite_url(tmp_path / "s.db"), Scope("t", "c", "v"), schema=schema)
    store.write(records)
    guess = estimate(store, limits_for("pgvector", schema), n=2_000)
    assert 1_000 <= guess.sampled <= 4_000
    assert set(guess.found) == {"value_unstorable"}
    assert abs(guess.estimated - int(nul.sum())) <= 0.25 * nul.sum()
    # The built-in store holds them all; a small source is read whole, so the count is exact.
    assert estimate(store, limits_for("builtin", schema)).estimated == 0
    whole = estimate(store, limits_for("pgvector", schema), n=n)
    assert (whole.sampled, whole.estimated) == (n, int(nul.sum()))
    dispose_engines()


def _merged_by_definition(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple:
    """Every row's k smallest of the parts in one stable sort: a -1 id counts as infinitely
    far, and an infinite distance's id is -1."""
    d = np.concatenate([p[0] for p in parts], axis=1)
    i = np.concatenate([p[1] for p in parts], axis=1)
    d = np.where(i == -1, np.inf, d)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    dd = np.take_along_axis(d, order, axis=1).astype(np.float32)
    ii = np.where(np.isinf(dd), -1, np.take_along_axis(i, order, axis=1))
    return dd, ii.astype(np.int64)


def test_merging_one_querys_answers_is_the_merge_by_definition() -> None:
    """A single query's answers from several shards (the served case) are merged in fewer
    steps; the result is the general merge's, ties, -1 ids, negative ids, infinite and NaN
    distances included."""
    rng = np.random.default_rng(5)
    for trial in range(3000):
        rows = 1 if trial % 4 else 2
        parts = []
        for _ in range(rng.integers(1, 5)):
            d = np.sort(rng.integers(0, 15, (rows, 6)).astype(np.float32), axis=1)
            if trial % 7 == 0:
                d[0, -1] = [np.inf, np.nan][trial % 2]
            parts.append((d, rng.integers(-4, 50, (rows, 6)).astype(np.int64)))
        got, want = merge_topk(parts, 5), _merged_by_definition(parts, 5)
        for a, b in zip(got, want, strict=True):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)
    # Answers of no neighbours (k = 0) merge to none.
    nothing = (np.empty((1, 0), np.float32), np.empty((1, 0), np.int64))
    merged = merge_topk([nothing, nothing], 0)
    assert merged[0].shape == (1, 0)
    assert merged[1].shape == (1, 0)
