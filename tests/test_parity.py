"""The same records are the same on every engine.

Byte-identical data in the built-in store, pgvector, Milvus (milvus-lite) and Qdrant
(qdrant-client's local mode): every adapter draws the same sample, and every ordered pair of
them, judged by the gates' own code, passes every distribution gate with figures of exactly
zero. (Before samples selected records by id alike, the built-in store against Qdrant or Milvus
measured a mean shift of 0.1112 on such data and the gate paused the migration.)
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from tests.conftest import postgres_database
from vecmigrate.catalog.engines import dispose_engines
from vecmigrate.config import sqlite_url
from vecmigrate.data.datasets import clustered
from vecmigrate.model.gates import RetrievalFigures
from vecmigrate.model.records import FieldKind, IdKind, PayloadField, RecordSchema, VectorField
from vecmigrate.model.spec import MigrationSpec, parse_spec
from vecmigrate.records.batch import Records, assemble
from vecmigrate.stores import Scope, VectorStore, open_store
from vecmigrate.stores.milvus import close_clients as close_milvus
from vecmigrate.stores.qdrant import close_clients as close_qdrant
from vecmigrate.validation.gates import judge
from vecmigrate.validation.run import distribution_figures

pytestmark = pytest.mark.integration

ENGINES = ("builtin", "pgvector", "milvus", "qdrant")
DIM = 24
N = 3000
DISTRIBUTION_GATES = ("norm_ks", "mean_shift", "spectrum_shift")


def refs(tmp_path: Path, pg_url: str) -> dict[str, dict[str, Any]]:
    """A store reference per engine, each in a place of its own."""
    tag = uuid.uuid4().hex[:6]
    return {
        "builtin": {"kind": "builtin", "url": sqlite_url(tmp_path / f"b-{tag}.db")},
        "pgvector": {"kind": "pgvector", "url": pg_url},
        "milvus": {"kind": "milvus", "uri": str(tmp_path / f"m-{tag}.db")},
        "qdrant": {"kind": "qdrant", "path": str(tmp_path / f"q-{tag}")},
    }


def spec_between(source: dict[str, Any], target: dict[str, Any]) -> MigrationSpec:
    embedding = {"model_id": "m", "dimension": DIM, "metric": "l2"}
    flat = {"kind": "faiss_flat"}
    return parse_spec(
        {
            "collection": "c",
            "source": {"name": "v1", "store": source, "embedding": embedding, "index": flat},
            "target": {"name": "v2", "store": target, "embedding": embedding, "index": flat},
            "gates": {"distribution": {"sample": 1000}},
        }
    )


def uuid_records() -> Records:
    """UUID ids, a text and an integer payload field (with nulls), one vector."""
    schema = RecordSchema(
        id_kind=IdKind.UUID,
        vectors=(VectorField(name="embedding", dimension=DIM),),
        payload=(
            PayloadField(name="lang", kind=FieldKind.TEXT),
            PayloadField(name="year", kind=FieldKind.INT),
        ),
    )
    rng = np.random.default_rng(11)
    ids = pa.array([str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(N)])
    vectors = clustered(N, DIM, clusters=12, seed=11)
    payload = {
        "lang": pa.array([None if i % 7 == 0 else ("en", "de", "fr")[i % 3] for i in range(N)]),
        "year": pa.array([1990 + i % 35 for i in range(N)], pa.int64()),
    }
    records, faults = assemble(schema, ids, {"embedding": vectors}, payload)
    assert not len(faults)
    return records


@pytest.fixture
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    yield refs(tmp_path, postgres_database(request.getfixturevalue("postgres")))
    dispose_engines()
    close_milvus()
    close_qdrant()


@pytest.mark.parametrize("data", ["int64", "uuid+payload"])
def test_identical_data_passes_every_distribution_gate_at_exactly_zero(
    stores: dict[str, dict[str, Any]], data: str
) -> None:
    records = uuid_records() if data == "uuid+payload" else None
    rng = np.random.default_rng(5)
    ids = rng.choice(10**12, N, replace=False).astype(np.int64)
    vectors = clustered(N, DIM, clusters=12, seed=5)
    opened: dict[str, VectorStore] = {}
    for engine in ENGINES:
        ref = spec_between(stores[engine], stores[engine]).source.store
        scope = Scope("default", "c", "v1")
        if records is None:
            store = open_store(ref, scope, DIM)
            store.upsert(ids, vectors)
        else:
            store = open_store(ref, scope, schema=records.schema)
            store.write(records)
        opened[engine] = store
    # The contract: every adapter returns the same sample of the same data, records and bytes.
    first = opened["builtin"].sample_records(1000, seed=1)
    assert len(first) == 1000
    for engine in ENGINES[1:]:
        got = opened[engine].sample_records(1000, seed=1)
        assert got.labels.tolist() == first.labels.tolist(), engine
        assert got.vectors().tobytes() == first.vectors().tobytes(), engine
        assert got.hashes().tolist() == first.hashes().tolist(), engine
    # Every ordered pair, judged by the gates' own code: figures of exactly zero, all passed.
    for a, b in itertools.permutations(ENGINES, 2):
        spec = spec_between(stores[a], stores[b])
        fig = RetrievalFigures()
        distribution_figures(spec, opened[a], opened[b], fig)
        assert fig.distribution_sample == 1000, (a, b)
        assert (fig.norm_ks, fig.mean_shift, fig.spectrum_shift) == (0.0, 0.0, 0.0), (a, b)
        report = judge(spec.gates, same_bytes=True, normalized_target=False, checks=[], figures=fig)
        verdicts = {v.name: v for v in report.verdicts}
        for name in DISTRIBUTION_GATES:
            assert verdicts[name].passed, (a, b, name)
            assert verdicts[name].value == 0.0, (a, b, name)
