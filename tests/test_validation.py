"""Gates that can fail: parity and recall on real stores and indexes."""

from __future__ import annotations

import numpy as np

from tests.conftest import Sandbox
from vecmigrate.backfill import copy_shard, open_source, open_target, prepare
from vecmigrate.build import artifact_dir, build_shard, register_index
from vecmigrate.lifecycle import GateReport
from vecmigrate.spec import MigrationSpec
from vecmigrate.stores import BuiltinStore
from vecmigrate.tasks import PrepareResult
from vecmigrate.validation import count_parity, exclude_self, recall_at_k, validate_migration


def test_recall_and_self_exclusion() -> None:
    truth = np.array([[1, 2, 3], [4, 5, 6]])
    assert recall_at_k(np.array([[1, 2, 3], [4, 5, 9]]), truth) == (1 + 2 / 3) / 2
    found = np.array([[7, 1, 2, 3], [4, 5, 6, -1]])
    assert exclude_self(found, np.array([7, 9]), 3).tolist() == [[1, 2, 3], [4, 5, 6]]


def test_count_parity_names_the_shards_that_differ() -> None:
    assert count_parity({0: 5, 1: 5}, {0: 5, 1: 5}).passed
    v = count_parity({0: 5, 1: 5}, {0: 5, 1: 4})
    assert not v.passed
    assert "shard 1: 5 vs 4" in v.detail


def validate(
    sandbox: Sandbox,
    spec: MigrationSpec,
    prep: PrepareResult,
    index_id: str,
    target: BuiltinStore | None = None,
) -> GateReport:
    return validate_migration(
        sandbox.catalog,
        spec,
        open_source(spec),
        target or open_target(spec),
        prep.shards,
        prep.source_index,
        index_id,
    )


def migrate_data(sandbox: Sandbox, **overrides: object) -> tuple:
    sandbox.seed(3000)
    spec = sandbox.spec(**overrides)
    prep = prepare(sandbox.catalog, spec, "test")
    for shard in prep.shards:
        copy_shard(spec, shard, None, 0, lambda c, n: None)
    target = open_target(spec)
    directory = artifact_dir(spec.target.store, spec.tenant, spec.collection, spec.target.name)
    arts = [build_shard(target, spec.target, s, directory, threads=1) for s in prep.shards]
    record = register_index(sandbox.catalog, spec.tenant, spec.collection, spec.target, arts, None)
    return spec, prep, record


def test_gates_pass_on_a_faithful_copy(sandbox: Sandbox) -> None:
    spec, prep, record = migrate_data(sandbox)
    report = validate(sandbox, spec, prep, record.id)
    assert report.passed, report.failures()
    assert report.target_recall is not None
    assert report.target_recall >= 0.9
    assert report.source_recall is not None
    assert sum(report.target_counts.values()) == 3000


def test_gates_fail_on_a_lost_record_and_a_changed_vector(sandbox: Sandbox) -> None:
    spec, prep, record = migrate_data(sandbox)
    target = open_target(spec)
    target.delete(np.array([17]))
    ids, vecs = target.fetch(np.array([18]))
    target.upsert(ids, vecs + 0.5)
    report = validate(sandbox, spec, prep, record.id, target)
    assert not report.passed
    failed = {v.name for v in report.verdicts if not v.passed}
    assert failed == {"count_parity", "checksum_parity"}


def test_recall_gate_fails_on_a_poor_index(sandbox: Sandbox) -> None:
    spec, prep, record = migrate_data(
        sandbox, target=sandbox.poor_target(), gates={"min_recall": 0.99}
    )
    report = validate(sandbox, spec, prep, record.id)
    assert not report.passed
    assert [v.name for v in report.verdicts if not v.passed] == ["recall@10"]
    assert "recall@10" in report.failures()[0]
