"""Divergence between regions' copies: the pure comparison, `vecmigrate diff --regions` on
real stores (a faithful replica, then one with a missing id, an extra id, a changed vector and a
changed payload), and the regional workflow's gate before the global cut-over (two regions,
each with its own worker, catalog and stores, on the real dev server)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from temporalio.client import Client

from tests.conftest import postgres_database, vecmigrate
from tests.test_reconcile import DIM, N, corrupt
from tests.test_reconcile import records as reconciled_records
from tests.test_regions import ControlPlane, eu_spec_data, region_catalog, regional_until, store
from vecmigrate.config import sqlite_url
from vecmigrate.control.client import MigrationClient
from vecmigrate.control.diff import run_region_diff
from vecmigrate.data.datasets import clustered
from vecmigrate.data.seed import seed_collection
from vecmigrate.errors import PreconditionError, SpecError
from vecmigrate.model.divergence import (
    BUCKETS,
    Cell,
    CopyAnswers,
    CopyDigest,
    CopyEntries,
    Entry,
    ShardDigest,
    buckets_for,
    compare_copies,
    differing_cells,
    overlap_at_k,
    verdict,
)
from vecmigrate.model.lifecycle import Phase
from vecmigrate.model.records import RecordSchema
from vecmigrate.model.spec import (
    BuiltinStoreRef,
    DivergenceBound,
    MigrationSpec,
    VersionSpec,
    canonical,
    parse_spec,
)
from vecmigrate.model.tasks import hash_shards
from vecmigrate.records.batch import Records
from vecmigrate.records.checksums import RecordChecksum
from vecmigrate.stores import Scope, VectorStore, open_store
from vecmigrate.validation.divergence import SAMPLE_SEED, Reader, buckets_of
from vecmigrate.workers.main import build_worker

TWO = ("eu", "us")

# -- the pure comparison -----------------------------------------------------------------------


def entry(shard: int, label: int, vector: str = "a", payload: str = "p") -> Entry:
    return Entry(shard=shard, label=label, id=label, vector=vector, payload=payload)


def test_differing_cells_name_only_the_buckets_whose_digests_differ() -> None:
    a = CopyDigest(
        shards=[
            ShardDigest(shard=0, checksum="3:aa", buckets={1: "2:a1", 7: "1:a7"}),
            ShardDigest(shard=1, checksum="2:bb", buckets={4: "2:b4"}),
        ]
    )
    b = CopyDigest(
        shards=[
            ShardDigest(shard=0, checksum="3:ab", buckets={1: "2:a1", 7: "1:xx"}),
            ShardDigest(shard=1, checksum="2:bb", buckets={4: "2:b4"}),
            ShardDigest(shard=2, checksum="1:cc", buckets={9: "1:c9"}),
        ]
    )
    assert differing_cells(a, b) == [Cell(shard=0, bucket=7), Cell(shard=2, bucket=9)]
    assert differing_cells(a, a) == []
    with pytest.raises(ValueError, match="64 buckets cannot be compared"):
        differing_cells(a, b.model_copy(update={"buckets": 64}))


def test_compare_copies_counts_each_kind_lists_ids_and_judges_the_bound() -> None:
    ref = CopyEntries(
        entries=[entry(0, 1), entry(0, 2), entry(0, 3), entry(1, 4), entry(1, 5, payload="q")]
    )
    reg = CopyEntries(
        entries=[entry(0, 1), entry(0, 3, vector="b"), entry(1, 4), entry(1, 5), entry(1, 6)]
    )
    digests = (
        CopyDigest(shards=[ShardDigest(shard=0, checksum="100:1")]),
        CopyDigest(shards=[ShardDigest(shard=0, checksum="100:2")]),
    )
    answers = (
        CopyAnswers(answers=[[1, 2, 3, 4], [5, 6, 7, 8], None]),
        CopyAnswers(answers=[[1, 2, 3, 9], None, None]),
    )
    bound = DivergenceBound(max_differing_share=0.05, min_overlap=0.5, k=4, max_listed=1)
    us_against_eu = partial(compare_copies, reference="eu", region="us", tenant="acme")
    out = us_against_eu(
        bound,
        digests=digests,
        entries=(ref, reg),
        answers=answers,
        cells=[Cell(shard=0, bucket=0)],
    )
    assert (out.missing, out.extra, out.vector, out.payload) == (1, 1, 1, 1)
    assert out.listed == {"missing": [2], "extra": [6], "vector": [3], "payload": [5]}
    assert [(s.shard, s.missing, s.extra, s.vector, s.payload) for s in out.shards] == [
        (0, 1, 0, 1, 0),
        (1, 0, 1, 0, 1),
    ]
    assert out.differing_share == 0.04
    # Query 1: 3 of 4 shared; query 2: us lacks the record, no overlap; query 3: not counted.
    assert out.overlap == 0.375
    assert not out.passed
    assert out.why == "overlap@4 0.375 (bound 0.500)"
    reason = verdict([out])
    assert "us/acme against eu: 4.0000% of records differ" in reason
    assert "1 missing, 1 extra, 1 vector, 1 payload" in reason
    assert reason.endswith("approve_cutover cuts over anyway, rollback ends all")
    strict = bound.model_copy(update={"max_differing_share": 0.01, "min_overlap": 0.0})
    again = us_against_eu(strict, digests=digests, entries=(ref, reg), answers=answers, cells=[])
    assert again.why == "4.0000% of records differ (bound 1.0000%)"
    # A truncated listing: the share is the differing buckets' records, an upper bound.
    big = (
        CopyDigest(shards=[ShardDigest(shard=0, checksum="100:1", buckets={0: "30:1"})]),
        CopyDigest(shards=[ShardDigest(shard=0, checksum="100:2", buckets={0: "31:2"})]),
    )
    cut = us_against_eu(
        strict,
        digests=big,
        entries=(ref, reg.model_copy(update={"truncated": True})),
        answers=(CopyAnswers(), CopyAnswers()),
        cells=[Cell(shard=0, bucket=0)],
    )
    assert not cut.complete
    assert cut.differing_share == 0.31
    assert cut.overlap is None
    assert verdict([again.model_copy(update={"passed": True})]) == ""


def test_bucket_counts_keep_a_digest_small_with_many_shards() -> None:
    assert [buckets_for(n) for n in (1, 64, 128, 1024, 100_000)] == [256, 256, 128, 16, 4]


def test_overlap_at_k_is_the_mean_shared_share_of_the_references_top_k() -> None:
    ref = CopyAnswers(answers=[[1, 2], [3, 4]])
    assert overlap_at_k(ref, CopyAnswers(answers=[[2, 1], [4, 5]]), 2) == 0.75
    assert overlap_at_k(CopyAnswers(), CopyAnswers(), 2) is None


def test_the_bound_is_an_added_field_and_needs_two_regions(tmp_path: Path) -> None:
    data = two_region_data(tmp_path)
    plain = parse_spec(data)
    assert "divergence" not in canonical(plain.region_policy)
    bounded = parse_spec({**data, "region_policy": {"divergence": {"min_overlap": 0.9}}})
    assert bounded.region_policy.divergence == DivergenceBound(min_overlap=0.9)
    assert bounded.spec_hash() != plain.spec_hash()
    one = {**data, "regions": data["regions"][:1], "region_policy": bounded.region_policy}
    with pytest.raises(SpecError, match=r"divergence compares regions' copies.*names 1"):
        parse_spec(json.loads(json.dumps(one, default=lambda m: m.model_dump(mode="json"))))


# -- two regions' copies on real stores --------------------------------------------------------


def two_region_data(root: Path, us_target: dict[str, Any] | None = None, **fields: Any) -> Any:
    regions = []
    for r in TWO:
        target = store(root, r, "store") if r == "eu" or us_target is None else us_target
        regions.append(
            {
                "name": r,
                "location": f"{r}-1",
                "task_queue": f"{root.name}-{r}",
                "source_store": store(root, r, "store"),
                "target_store": target,
            }
        )
    return eu_spec_data(root, "dv", batch_size=250, heartbeat_seconds=3, regions=regions, **fields)


def records() -> Records:
    """The reconcile tests' records (ids 1..N, a title and a year, one vector), every one
    within the payload cap."""
    return reconciled_records(over_cap=False)


def target_of(spec: MigrationSpec, region: str, schema: RecordSchema | None = None) -> VectorStore:
    ref = next(r for r in spec.regions if r.name == region).target_store
    assert ref is not None
    return open_store(ref, Scope(spec.tenant, spec.collection, spec.target.name), schema=schema)


def test_a_copys_digest_is_the_store_checksum_per_shard_and_per_bucket(tmp_path: Path) -> None:
    data = records()
    copy = open_store(
        BuiltinStoreRef(url=sqlite_url(tmp_path / "c.db"), artifacts=str(tmp_path)),
        Scope("default", "docs", "v2"),
        schema=data.schema,
    )
    copy.write(data)
    digest = Reader(copy, batch_size=97).digest(3, sample=5)
    assert [s.shard for s in digest.shards] == [0, 1, 2]
    assert digest.buckets == BUCKETS
    assert digest.records == N
    for shard, got in zip(hash_shards(3), digest.shards, strict=True):
        assert got.checksum == copy.checksum(shard)
        assert sum(int(c.split(":")[0]) for c in got.buckets.values()) == got.records
        # One bucket's checksum is the RecordChecksum of its records alone.
        bucket, figure = next(iter(got.buckets.items()))
        whole = Records.concat([b.records for b in copy.iter_shard(shard, 1000)], data.schema)
        mine = whole.filter(buckets_of(whole.labels, shard, digest.buckets) == bucket)
        acc = RecordChecksum()
        acc.add_hashes(mine.hashes())
        assert figure == acc.hexdigest()
    assert digest.sample == [int(x) for x in copy.sample_records(5, SAMPLE_SEED).labels]
    # A resumed digest takes the shards already done as they are.
    seen: list[int] = []
    again = Reader(copy).digest(
        3, done={0: digest.shards[0]}, on_shard=lambda d: seen.append(d.shard)
    )
    assert again == digest.model_copy(update={"sample": []})
    assert seen == [1, 2]


@pytest.mark.parametrize(
    "engine", ["builtin", pytest.param("pgvector", marks=pytest.mark.integration)]
)
def test_region_diff_finds_exactly_what_one_regions_copy_lost_gained_and_changed(
    tmp_path: Path, request: pytest.FixtureRequest, engine: str
) -> None:
    us = None
    if engine == "pgvector":
        url = postgres_database(request.getfixturevalue("postgres"))
        us = {"kind": "pgvector", "url": url, "location": "us-1"}
    for r in TWO:
        (tmp_path / r).mkdir()
    data = two_region_data(
        tmp_path, us, region_policy={"divergence": {"max_differing_share": 0.001, "queries": 50}}
    )
    spec = parse_spec(data)
    with pytest.raises(Exception, match="region eu holds no copy of default/docs@v2 yet"):
        run_region_diff(spec, ["eu", "us"])
    data_ = records()
    for r in TWO:
        target_of(spec, r, data_.schema).write(data_)
    same, bound, given = run_region_diff(spec, ["eu", "us"])
    assert given
    assert bound.max_differing_share == 0.001
    assert same.passed, same
    assert (same.reference_records, same.region_records, same.differing) == (N, N, 0)
    assert (same.overlap, same.queries) == (1.0, 50)

    us = target_of(spec, "us")
    corrupt(us, us)
    diff, _, _ = run_region_diff(spec, ["eu", "us"])
    assert (diff.missing, diff.extra, diff.vector, diff.payload) == (1, 1, 1, 1)
    assert diff.listed == {"missing": [13], "extra": [10_000], "vector": [11], "payload": [12]}
    assert diff.complete
    assert sum(s.missing + s.extra + s.vector + s.payload for s in diff.shards) == 4
    assert diff.region_records == N
    assert diff.differing_share == round(4 / N, 6)
    assert not diff.passed
    assert "of records differ (bound 0.1000%)" in diff.why
    # Seen from us, the extra record is missing from eu and the missing one extra.
    back, _, _ = run_region_diff(spec, ["us", "eu"])
    assert back.listed["missing"] == [10_000]
    assert back.listed["extra"] == [13]

    with pytest.raises(PreconditionError, match="has no region ap"):
        run_region_diff(spec, ["eu", "ap"])
    with pytest.raises(PreconditionError, match="two distinct regions"):
        run_region_diff(spec, ["eu", "eu"])


@pytest.mark.integration  # runs the vecmigrate program
def test_vecmigrate_diff_regions_prints_the_figures_and_fails_over_the_bound(
    tmp_path: Path,
) -> None:
    for r in TWO:
        (tmp_path / r).mkdir()
    data = two_region_data(tmp_path, region_policy={"divergence": {"queries": 20}})
    spec = parse_spec(data)
    data_ = records()
    for r in TWO:
        target_of(spec, r, data_.schema).write(data_)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(data))
    ok = vecmigrate("diff", str(path), "--regions", "eu,us")
    assert ok.returncode == 0, ok.stderr
    assert "us/default against eu: within the bound" in ok.stdout
    assert "overlap@10 1.000 on 20 queries (at least 0.990)" in ok.stdout
    us = target_of(spec, "us")
    corrupt(us, us)
    found = vecmigrate("diff", str(path), "--regions", "eu,us", "--json")
    assert found.returncode == 1, found.stderr
    report = json.loads(found.stdout)
    assert report["listed"] == {"missing": [13], "extra": [10000], "vector": [11], "payload": [12]}
    shown = vecmigrate("diff", str(path), "--regions", "eu,us")
    assert shown.returncode == 1
    assert "OVER THE BOUND" in shown.stdout
    assert "missing: 13" in shown.stdout
    mixed = vecmigrate("diff", str(path), "--regions", "eu,us", "--repair")
    assert mixed.returncode == 2
    assert "leave out --repair" in mixed.stderr


# -- the regional workflow's gate --------------------------------------------------------------

M = 1500


def seed_two(root: Path, diverged: bool) -> None:
    """The same records in both regions' sources; with ``diverged``, us lacks id 13, has an
    extra id and a changed vector for id 11 (its copy carries them to its target)."""
    vectors = clustered(M, DIM, clusters=24, seed=11)
    for r in TWO:
        (root / r).mkdir()
        ids = np.arange(M, dtype=np.int64)
        vecs = vectors.copy()
        if diverged and r == "us":
            vecs[11] += 0.5
            keep = ids != 13
            ids = np.append(ids[keep], 50_000)
            vecs = np.vstack([vecs[keep], vectors[:1]])
        seed_collection(
            region_catalog(root, r),
            "default",
            "docs",
            VersionSpec.model_validate(
                {
                    "name": "v1",
                    "store": store(root, r, "store"),
                    "embedding": {"model_id": "m", "dimension": DIM},
                    "index": {"kind": "faiss_flat"},
                }
            ),
            ids,
            vecs,
            shards=1,
        )


@contextlib.asynccontextmanager
async def region_workers(client: Client, root: Path) -> AsyncIterator[None]:
    """One in-process worker per region, on its queue, with its own catalog."""
    with ThreadPoolExecutor(max_workers=12) as executor:
        async with contextlib.AsyncExitStack() as stack:
            for r in TWO:
                await stack.enter_async_context(
                    build_worker(
                        client,
                        f"{root.name}-{r}",
                        sqlite_url(root / r / "catalog.db"),
                        executor,
                        region=r,
                        build_threads=1,
                    )
                )
            yield


def gated_spec(root: Path) -> MigrationSpec:
    return parse_spec(
        two_region_data(
            root,
            shards={"count": 2},
            region_policy={"divergence": {"max_differing_share": 0.0, "min_overlap": 0.95}},
        )
    )


@contextlib.asynccontextmanager
async def gated_migration(
    client: Client, root: Path, diverged: bool
) -> AsyncIterator[tuple[MigrationClient, str]]:
    """Seed both regions (``diverged``: as for :func:`seed_two`) and start the divergence-gated
    migration, with each region's workers and the control plane running until the block ends;
    the client and the migration's id."""
    seed_two(root, diverged=diverged)
    spec = gated_spec(root)
    async with region_workers(client, root), ControlPlane(client, root) as mc:
        yield mc, await mc.start(spec, operator="alice")


async def test_replicated_copies_that_agree_pass_the_gate_and_cut_over(
    client: Client, tmp_path: Path
) -> None:
    async with gated_migration(client, tmp_path, diverged=False) as (mc, mid):
        final = await regional_until(
            mc, mid, lambda s: s.phase in (Phase.COMPLETED, Phase.ROLLED_BACK)
        )
    assert final.phase == Phase.COMPLETED, final
    [report] = final.divergence
    assert (report.reference, report.region, report.tenant) == ("eu", "us", "default")
    assert report.passed
    assert (report.reference_records, report.region_records, report.differing) == (M, M, 0)
    assert report.overlap == 1.0
    assert report.queries == 100
    control = region_control(tmp_path).entries(mid)
    [entry] = [e for e in control if e.kind == "region.divergence"]
    assert entry.data["passed"] is True
    for r in TWO:
        routing = region_catalog(tmp_path, r).get_routing("default", "docs")
        assert routing is not None
        assert routing.read_version == "v2"
    # Each region's part ran on its own workers.
    for r in TWO:
        from vecmigrate.catalog.residency import Residency

        runs = Residency(region_catalog(tmp_path, r), r).recorded()
        mine = {x.activity for x in runs if x.activity.startswith("region_")}
        assert mine == {"region_digest", "region_answers"}, (r, mine)
        assert {x.worker_region for x in runs} == {r}


def region_control(root: Path) -> Any:
    from vecmigrate.catalog.catalog import Catalog

    return Catalog(sqlite_url(root / "control.db"))


async def test_a_diverged_regions_copy_holds_the_cut_over_with_the_figures(
    client: Client, tmp_path: Path
) -> None:
    async with gated_migration(client, tmp_path, diverged=True) as (mc, mid):
        held = await regional_until(mc, mid, lambda s: "diverge" in s.blocked_reason)
        assert all(s.ready for s in held.regions)
        assert held.cut_over == []
        why = held.blocked_reason
        assert "regions' copies diverge beyond region_policy.divergence" in why
        assert "us/default against eu" in why
        assert "1 missing, 1 extra, 1 vector, 0 payload" in why
        assert "approve_cutover cuts over anyway, rollback ends all" in why
        [report] = held.divergence
        assert report.listed == {"missing": [13], "extra": [50_000], "vector": [11]}
        assert (report.reference_records, report.region_records) == (M, M)
        assert not report.passed
        await mc.signal(mid, "approve_cutover", operator="bob", reason="us drift accepted")
        final = await regional_until(
            mc, mid, lambda s: s.phase in (Phase.COMPLETED, Phase.ROLLED_BACK)
        )
    assert final.phase == Phase.COMPLETED, final
    control = region_control(tmp_path).entries(mid)
    assert [e.data["passed"] for e in control if e.kind == "region.divergence"] == [False]
    barrier = [e.data["why"] for e in control if e.kind == "barrier"]
    assert barrier == [why]
    for r in TWO:
        routing = region_catalog(tmp_path, r).get_routing("default", "docs")
        assert routing is not None
        assert routing.read_version == "v2"


def test_the_recorded_regional_history_compares_the_copies_without_vectors() -> None:
    """The replay tests replay it (tests/test_replay.py); here: it holds the comparison, and
    what crossed Temporal for it is ids, counts and checksums."""
    from tests.histories.payloads import activity_inputs, input_bytes, load

    path = Path(__file__).parent / "histories" / "regional_divergence.json"
    history = load(path)
    names = [name for name, _, _ in activity_inputs(history)]
    assert names.count("region_digest") == 2
    assert names.count("region_answers") == 2
    assert "region_entries" not in names  # the copies agreed: no bucket to list
    answers = [d for name, _, d in activity_inputs(history) if name == "region_answers"]
    assert all(len(d["labels"]) == 100 and set(d) >= {"labels", "k"} for d in answers)
    calls, total = input_bytes(history)["region_answers"]
    assert total / calls < 3000
