"""The online benchmark's verdict on the latency budget: each phase's p99 over the idle p99
is judged on a distribution-free interval, so that a phase of a few hundred searches does not
pass or fail on its slowest one or two."""

from __future__ import annotations

import numpy as np

from bench.online_load import against_idle
from vecmigrate.testing.loadgen import SEARCHES, Request, answered_millis, latency_table


def test_each_phase_is_judged_on_the_interval_of_its_p99_over_idle() -> None:
    rng = np.random.default_rng(3)

    def searches(phase: str, n: int, scale: float) -> list[Request]:
        return [Request("search", phase, float(ms), 200) for ms in scale * rng.lognormal(1, 0.3, n)]

    requests = [
        *searches("IDLE", 800, 1.0),
        *searches("BACKFILLING", 800, 3.0),  # three times slower: beyond any noise
        *searches("CUT_OVER", 40, 1.6),  # over the budget at the point, on 40 searches
        Request("search", "CUT_OVER", 900.0, 500),  # failed: not a latency
        Request("upsert", "CUT_OVER", 800.0, 200),  # a write: not a search
    ]
    rows = latency_table(requests, ["IDLE", "BACKFILLING", "CUT_OVER"])
    against_idle(rows, rows[0], 1.5, {"BACKFILLING": 0.5}, answered_millis(requests, SEARCHES))
    by = {r["phase"]: r for r in rows}

    assert by["IDLE"]["search_p99_over_idle"] == 1.0
    assert by["IDLE"]["verdict"] == "met"
    backfill = by["BACKFILLING"]
    assert backfill["met_budget"] is False
    assert backfill["verdict"] == "missed"
    assert backfill["lowest_pace"] == 0.5
    lo, hi = (float(x) for x in str(backfill["p99_over_idle_95ci"]).split("-"))
    ratio = backfill["search_p99_over_idle"]
    assert isinstance(ratio, float)
    assert 1.5 < lo <= ratio <= hi
    cut = by["CUT_OVER"]
    assert cut["met_budget"] is False
    assert cut["verdict"] == "within noise"
    assert answered_millis(requests, SEARCHES)["CUT_OVER"].size == 40

    against_idle(rows, rows[0], None, {}, answered_millis(requests, SEARCHES))
    assert all(r["verdict"] is None and r["met_budget"] is None for r in rows)
