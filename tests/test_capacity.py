"""The capacity model's arithmetic (bench/capacity.py): the regional migration's copy floor and
CPU, the fixed part of a migration, the constants it estimates from measured runs, and its
check against the runs recorded in bench/results."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from bench.capacity import (
    Measured,
    Plan,
    Rates,
    build_factor,
    check_measured,
    estimate,
    load_rates,
    measured_runs,
    model,
    plan_of,
)

RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results"

RATES = Rates(
    cpu_per_vector_128=200e-6,
    copy_per_second=100_000.0,
    migration_cpu=6.0,
    other_seconds=3.0,
    validate_serial=2.0,
    region_seconds=1.5,
    source="test",
)


def plan(**changes: object) -> Plan:
    base = Plan(
        vectors=90_000_000,
        dim=128,
        shard_vectors=2_000_000,
        workers=30,
        cores=8,
        batch=10_000,
        window=64,
        m=16,
        online_writes_per_second=600.0,
        record_bytes=712,
        heartbeat_seconds=10.0,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_each_region_copies_into_its_own_store_so_the_copy_floor_divides_by_the_regions() -> None:
    one = model(plan(), RATES)
    three = model(plan(regions=3, workers=10), RATES)
    assert one["copy floor seconds"] == pytest.approx(900.0)  # 90M at 100,000 vectors/s
    assert three["copy floor seconds"] == pytest.approx(300.0)
    # Each region its own shards, catalog and change log: a third of each.
    assert (one["shards"], three["shards a region"], three["shards"]) == (45, 15, 45)
    assert three["catalog writes/s"] * three["wall seconds"] == pytest.approx(
        one["catalog writes/s"] * one["wall seconds"] / 3
    )
    assert three["change log rows (online)"] == pytest.approx(600 * three["wall seconds"] / 3)
    assert three["status carried"] == one["status carried"] / 3


def test_the_fixed_part_is_added_to_the_larger_of_computing_and_the_copy() -> None:
    one = model(plan(), RATES)
    assert one["fixed seconds"] == pytest.approx(3.0 + 2.0)
    assert one["wall seconds"] == pytest.approx(
        5.0 + max(one["computing seconds"], one["copy floor seconds"])
    )
    # A regional migration adds its coordination, a region (the cut-overs, one at a time).
    two = model(plan(regions=2, workers=15), RATES)
    assert two["fixed seconds"] == pytest.approx(3.0 + 2.0 + 2 * 1.5)
    # Computing-bound (a store that takes everything at once): the cores set the time.
    fast = model(plan(store_ingest=1e12), RATES)
    assert fast["wall seconds"] == pytest.approx(5.0 + fast["computing seconds"])
    assert fast["computing seconds"] == pytest.approx(fast["core-seconds"] / (30 * 8))


def test_regions_pay_the_fixed_cpu_once_each_which_weighs_on_small_migrations_only() -> None:
    small = plan(vectors=200_000, dim=64, shard_vectors=12_500, workers=2, cores=1)
    one = model(small, RATES)
    # Two regions of 16 shards each, as bench/fleet.py runs them: two fixed costs, and shards
    # half the size (a little cheaper a vector).
    two = model(replace(small, regions=2, workers=1, shard_vectors=6_250), RATES)
    assert two["shards a region"] == 16
    per_vector = 200e-6 * 64 / 128
    assert one["core-seconds"] == pytest.approx(
        200_000 * per_vector * math.log(12_500) / math.log(250_000) + 6.0
    )
    assert two["core-seconds"] == pytest.approx(
        200_000 * per_vector * math.log(6_250) / math.log(250_000) + 2 * 6.0
    )
    assert two["CPU s / 1k vectors"] > one["CPU s / 1k vectors"]
    big = model(plan(vectors=1_000_000_000), RATES)
    big3 = model(plan(vectors=1_000_000_000, regions=3, workers=10), RATES)
    assert big3["CPU s / 1k vectors"] / big["CPU s / 1k vectors"] == pytest.approx(1.0, abs=0.01)


def test_build_factor_is_one_at_the_reference_run_and_grows_with_dimension_and_shard() -> None:
    assert build_factor(128, 250_000) == pytest.approx(1.0)
    assert build_factor(64, 250_000) == pytest.approx(0.5)
    assert build_factor(128, 2_000_000) > 1.0 > build_factor(128, 10_000)


def synthetic_runs(rates: Rates) -> list[Measured]:
    """Runs whose CPU and phases follow ``rates`` exactly: the reference run and fleet runs."""

    def run(label: str, n: int, dim: int, shards: int, regions: int, other: float) -> Measured:
        migrations = max(1, regions)
        shard = math.ceil(n / migrations / shards)
        cpu = n * rates.cpu_per_vector_128 * build_factor(dim, shard)
        cpu += rates.migration_cpu * migrations
        return Measured(
            label=label,
            vectors=n,
            dim=dim,
            shards=shards,
            regions=regions,
            processes=2,
            cores_a_worker=1,
            machine_cores=2,
            seconds=30.0,
            backfilling=20.0,
            validating=rates.validate_serial + (1.0 if regions else 0.5),
            other=other,
            cpu_per_1k=1000 * cpu / n,
        )

    return [
        run("reference", 1_000_000, 128, 4, 0, rates.other_seconds),
        run("one queue", 200_000, 64, 16, 0, rates.other_seconds),
        run("two regions", 200_000, 64, 16, 2, rates.other_seconds + 2 * rates.region_seconds),
        run("three regions", 60_000, 32, 16, 3, rates.other_seconds + 3 * rates.region_seconds),
    ]


def test_the_constants_are_recovered_from_runs_that_follow_them() -> None:
    runs = synthetic_runs(RATES)
    got = estimate(runs, RATES.copy_per_second)
    assert got.cpu_per_vector_128 == pytest.approx(RATES.cpu_per_vector_128)
    assert got.migration_cpu == pytest.approx(RATES.migration_cpu)
    assert got.other_seconds == pytest.approx(RATES.other_seconds)
    assert got.validate_serial == pytest.approx(RATES.validate_serial + 0.5)
    assert got.region_seconds == pytest.approx(RATES.region_seconds)
    # Left out, a run's figures do not count: the coordination comes from the other region run.
    skewed = [*runs[:3], replace(runs[3], other=100.0)]
    assert estimate(skewed, 1.0, leave_out="three regions").region_seconds == pytest.approx(1.5)
    assert estimate(skewed, 1.0).region_seconds > 1.5


def test_the_recorded_runs_are_read_with_their_queues_and_processes() -> None:
    runs = {r.label: r for r in measured_runs(RESULTS)}
    ref = runs["1M x 128, 1 in-process worker"]
    assert (ref.vectors, ref.shards, ref.regions) == (1_000_000, 4, 0)
    assert ref.seconds == pytest.approx(ref.backfilling + ref.validating + ref.other)
    regional = [r for r in runs.values() if r.regions]
    one_queue = [r for r in runs.values() if not r.regions and r is not ref]
    assert regional
    assert one_queue
    # N workers a region: N times the regions in processes, one plan worker a region.
    for r in regional:
        assert r.processes % r.regions == 0
        assert plan_of(r).workers * r.regions == r.processes
        assert plan_of(r).shard_vectors == math.ceil(r.vectors / r.regions / r.shards)


def test_a_model_of_the_reference_run_reproduces_its_cpu_and_its_time() -> None:
    rates = load_rates(RESULTS)
    ref = measured_runs(RESULTS)[0]
    m = model(plan_of(ref), rates)
    # The rate a vector comes from this run, less the fixed CPU the model adds back.
    assert m["CPU s / 1k vectors"] == pytest.approx(ref.cpu_per_1k, rel=1e-9)
    assert m["wall seconds"] == pytest.approx(ref.seconds, rel=0.10)


def test_every_recorded_run_is_within_a_factor_of_two_of_the_model() -> None:
    """The check docs/capacity.md reports, each run's constants estimated from the others."""
    runs = measured_runs(RESULTS)
    rates = load_rates(RESULTS)
    checks = check_measured(runs, rates.copy_per_second)
    assert [c.run.label for c in checks] == [r.label for r in runs]
    for c in checks:
        assert 0.5 < c.wall / c.run.seconds < 2.0, (c.run.label, c.wall, c.run.seconds)
        assert 0.5 < c.cpu_per_1k / c.run.cpu_per_1k < 2.0, c.run.label
