"""What loading an hnswlib index costs the other threads of a process that serves.

    python bench/load_stalls.py --vectors 150000 --dim 64 --shards 4

A gateway loads a candidate's index while it serves the old one (SHADOWING), and loads a
compaction's artifacts beside the copy that serves. hnswlib's ``load_index`` holds the GIL for
the whole load of a shard, so each request in flight waits for it. This script loads the same
shards (``--shards`` of ``--vectors`` x ``--dim``) one after the other, three ways: hnswlib's
``load_index`` (the floor: nothing checked), ``LoadedIndex`` as the workers load (checksum
verified beside the load), and ``LoadedIndex(low_stall=True)`` as a router loads beside
indexes that serve (``vecmigrate.indexes.hnswfile``). Meanwhile a thread sends a search to an
index already loaded every 2 ms, on a fixed schedule as requests arrive, its latency counted
from the arrival; and a watchdog asks to wake every 0.5 ms. Printed: the seconds the loads took,
how late the watchdog woke, and the latency of the searches that arrived from the first load's
start to 50 ms after the last one's end, median of ``--repeat`` rounds; the first row is the
same with nothing loading. Also: how much loading one shard grows a fresh process's peak
resident memory, each way (``low_stall`` holds the file's bytes while it builds the index).
"""

from __future__ import annotations

import pickle
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hnswlib
import numpy as np

from bench.applier_stalls import Background, Watchdog, hnswlib_shards
from bench.common import bar_chart, report, scratch, sized_parser
from vecmigrate.indexes.artifacts import Artifact, LoadedIndex


class Searcher(Background):
    """A thread that sends a search to ``index`` every ``EVERY`` seconds on a fixed schedule
    (as requests arrive, whether or not the process is ready) and notes each one's latency
    from its arrival (ms): the time it waited for the GIL counts, as it does for a request."""

    EVERY = 0.002

    def __init__(self, index: Any, queries: np.ndarray) -> None:
        self.millis: list[float] = []
        self._index, self._queries = index, queries
        super().__init__()

    def _run(self) -> None:
        at, start = 0, time.perf_counter()
        while not self._stop.is_set():
            arrival = start + at * self.EVERY
            wait = arrival - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            q = self._queries[at % len(self._queries)][None, :]
            self._index.knn_query(q, 10, 1)
            self.millis.append((time.perf_counter() - arrival) * 1000)
            at += 1


def raw_load(art: Artifact, dim: int) -> Any:
    index = hnswlib.Index(space="l2", dim=dim)
    index.load_index(str(art.data_file), max_elements=art.count, allow_replace_deleted=True)
    return index


LOADERS: dict[str, Callable[[Artifact, int], Any]] = {
    "hnswlib load_index": raw_load,
    "LoadedIndex": lambda art, dim: LoadedIndex(art.manifest, art.sha256),
    "LoadedIndex low_stall": lambda art, dim: LoadedIndex(art.manifest, art.sha256, low_stall=True),
}


RSS_OF = "--peak-growth-of"  # run by the script itself: one load in a fresh process


def peak_kb() -> int:
    """This process's peak resident memory (kB): Linux's high-water mark of its own memory
    (``ru_maxrss`` would start at the parent's peak in a process started from a big one)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_growth(side: str, saved: Path, dim: int) -> float:
    """How much one load grows this process's peak resident memory (MB)."""
    art = pickle.loads(saved.read_bytes())
    before = peak_kb()
    LOADERS[side](art, dim)
    return (peak_kb() - before) / 1024


def one_round(
    name: str, arts: list[Artifact], served: Any, queries: np.ndarray, dim: int
) -> dict[str, Any]:
    with Watchdog() as dog, Searcher(served, queries) as searches:
        time.sleep(0.2)  # both threads running before the clock starts
        skip = len(searches.millis)
        began = time.perf_counter()
        for art in arts:
            if name:
                LOADERS[name](art, dim)
            else:
                time.sleep(0.05)  # nothing loading: the searches' own latency
        seconds = time.perf_counter() - began
        time.sleep(0.05)  # the searches held up by the last load finish; a few more arrive
        during = searches.millis[skip:]
    return {"seconds": seconds, "late": dog.late, "search": during}


def main() -> None:
    p = sized_parser(__doc__, vectors=150_000, dim=64, shards=4)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    home = scratch("load-stalls")
    n, dim, count = args.vectors, args.dim, args.shards
    arts, x = hnswlib_shards(n, dim, count, home)
    served = raw_load(arts[0], dim)
    served.set_ef(64)
    queries = x[:: max(1, n // 2000)][:2000]
    index_mb = arts[0].data_file.stat().st_size / 2**20
    for art in arts:  # every file in the page cache, as a file just written is
        art.data_file.read_bytes()
    sides = ["", *LOADERS]
    results: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for _ in range(args.repeat):
        for side in sides:
            results[side].append(one_round(side, arts, served, queries, dim))
    growth: dict[str, float] = {"": 0.0}
    saved = home / "artifact.pickle"
    saved.write_bytes(pickle.dumps(arts[0]))
    for side in LOADERS:  # one shard, each in a process of its own
        done = subprocess.run(
            [sys.executable, __file__, RSS_OF, side, str(saved), str(dim)],
            capture_output=True,
            text=True,
            check=True,
        )
        growth[side] = float(done.stdout.split()[-1])
    med = statistics.median
    rows = []
    for side in sides:
        runs = results[side]
        late = [np.asarray(r["late"]) for r in runs]
        search = [np.asarray(r["search"]) for r in runs]
        rows.append(
            {
                "loading": side or "nothing (searches alone)",
                "shards": count,
                "vectors_per_shard": n // count,
                "seconds": round(med(r["seconds"] for r in runs), 3) if side else None,
                "watchdog_late_p99_ms": round(med(float(np.percentile(v, 99)) for v in late), 2),
                "watchdog_late_max_ms": round(med(float(v.max()) for v in late), 2),
                "search_p50_ms": round(med(float(np.median(v)) for v in search), 3),
                "search_p99_ms": round(med(float(np.percentile(v, 99)) for v in search), 2),
                "search_max_ms": round(med(float(v.max()) for v in search), 2),
                "peak_rss_growth_mb_one_shard": round(growth[side], 1) if side else None,
            }
        )
    quiet, raw, ours, low = rows
    report(
        "load_stalls",
        f"loading {count} hnswlib shards of {n // count:,} x {dim} beside searches",
        rows,
        {
            "seconds, low_stall / hnswlib load_index": round(low["seconds"] / raw["seconds"], 2),
            "seconds, LoadedIndex / hnswlib load_index": round(ours["seconds"] / raw["seconds"], 2),
            "search max while loading (ms): load_index, LoadedIndex, low_stall, nothing": [
                raw["search_max_ms"],
                ours["search_max_ms"],
                low["search_max_ms"],
                quiet["search_max_ms"],
            ],
            "one shard's index file (MB)": round(index_mb, 1),
            "watchdog max late, low_stall / load_index": round(
                low["watchdog_late_max_ms"] / raw["watchdog_late_max_ms"], 2
            ),
        },
        plot=bar_chart(
            [f"{r['loading']}\n{k}" for r in rows[1:] for k in ("p99", "max")],
            [v for r in rows[1:] for v in (r["search_p99_ms"], r["search_max_ms"])],
            value_label="search latency (ms)",
            title="Searches of a served index while another index loads",
            figsize=(9, 4),
        ),
        out=args.out,
    )


if __name__ == "__main__":
    if sys.argv[1:2] == [RSS_OF]:
        print(peak_growth(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])))
    else:
        main()
