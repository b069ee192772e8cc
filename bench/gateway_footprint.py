"""What a gateway process holds: its start-up, its memory and a full garbage collection's pause.

    python bench/gateway_footprint.py --rounds 5

Seeds one collection (HNSW on the built-in store), then starts ``vecmigrate serve`` on it in a
process of its own, three ways in turn for ``--rounds`` rounds: as the command starts it now
(from ``vecmigrate.serving.command``, importing what serving needs); through the whole
``vecmigrate`` command's module (every command's libraries, Temporal's client among them), as
it started before; and the code of ``--old-ref`` (a checkout in a temporary directory: before
the gateway stopped importing scipy and before it started on its own). For each process: the
seconds from its start until ``/health`` answers, the median of ``--searches`` searches over
HTTP (the first loads the index), then, the process idle, its resident memory, the modules it
imported, the objects the garbage collector tracks, those frozen out of its passes (a gateway
started by ``vecmigrate serve`` freezes what lives as long as it does, see
``vecmigrate.serving.heap``), and the median of five full collections' pauses: each full
collection walks every tracked object not frozen while requests wait. Medians over the rounds.
Linux (``/proc``, ``SIGUSR1``).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.common import (
    ROOT,
    gateway_process,
    old_checkout,
    report,
    scratch,
    seeded_collection,
    sized_parser,
    wide_console,
)
from vecmigrate.data.datasets import clustered

WAYS = {"now": "now", "through the whole command": "whole", "before": "whole"}
FIGURES = (
    "start_s",
    "search_p50_ms",
    "rss_mb",
    "modules",
    "tracked_objects",
    "frozen_objects",
    "full_gc_ms",
)
# The server's program: ``vecmigrate serve`` started one of the two ways, which on SIGUSR1
# writes what its process holds to a file (the handler runs on the thread that serves).
SERVER = """
import gc, json, os, signal, statistics, sys, time
way, stats, argv = sys.argv[1], sys.argv[2], sys.argv[3:]  # argv: serve and its flags

def held(*_):
    gc.collect()
    pauses = []
    for _ in range(5):
        began = time.perf_counter()
        gc.collect()
        pauses.append(time.perf_counter() - began)
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    figures = {
        "rss_mb": int(status["VmRSS"].split()[0]) / 1024,
        "modules": len(sys.modules),
        "tracked_objects": len(gc.get_objects()),
        "frozen_objects": gc.get_freeze_count(),
        "full_gc_ms": 1000 * statistics.median(pauses),
        "temporalio": "temporalio" in sys.modules,
        "package": sys.modules["vecmigrate"].__path__[0],
    }
    with open(stats + ".part", "w") as f:
        json.dump(figures, f)
    os.replace(stats + ".part", stats)

signal.signal(signal.SIGUSR1, held)
sys.argv = ["vecmigrate", *argv]
if way == "now":
    from vecmigrate.__main__ import run
else:
    from vecmigrate.control.cli import run
run()
"""


def measure(
    way: str, tree: Path, catalog: str, queries: np.ndarray, home: Path, searches: int
) -> dict[str, Any]:
    stats = home / f"held-{way}.json"
    stats.unlink(missing_ok=True)
    began = time.perf_counter()
    launcher = ("-c", SERVER, way, str(stats))
    with gateway_process(catalog, home, tree=tree, launcher=launcher) as gateway:
        started = time.perf_counter() - began
        conn = http.client.HTTPConnection(urlsplit(gateway.url).netloc, timeout=10)
        latencies = []
        for n in range(searches):
            body = json.dumps({"vector": queries[n % len(queries)].tolist(), "k": 10})
            at = time.perf_counter()
            conn.request(
                "POST", "/v1/default/bench/search", body, {"Content-Type": "application/json"}
            )
            answer = conn.getresponse()
            text = answer.read()
            if answer.status != 200:
                raise RuntimeError(f"search answered {answer.status}: {text[:200]!r}")
            latencies.append(time.perf_counter() - at)
        conn.close()
        os.kill(gateway.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 60
        while not stats.exists():
            if time.monotonic() > deadline:
                raise RuntimeError("the gateway did not report what it holds")
            time.sleep(0.05)
        held = json.loads(stats.read_text())
    if Path(held["package"]).resolve() != (tree / "vecmigrate").resolve():
        raise RuntimeError(f"the gateway ran {held['package']}, not the code of {tree}")
    return {
        "start_s": round(started, 3),
        # The first search loads the index; the median is of the searches after it.
        "search_p50_ms": round(1000 * statistics.median(latencies[1:] or latencies), 3),
        "rss_mb": round(held["rss_mb"], 1),
        "modules": held["modules"],
        "tracked_objects": held["tracked_objects"],
        "frozen_objects": held["frozen_objects"],
        "full_gc_ms": round(held["full_gc_ms"], 2),
        "temporalio": held["temporalio"],
    }


def plot(summary: dict[str, dict[str, float]]) -> Any:
    def draw(path: Path) -> None:
        import matplotlib.pyplot as plt

        shown = [
            ("start_s", "seconds to /health"),
            ("rss_mb", "resident MB"),
            ("full_gc_ms", "full collection, ms"),
        ]
        fig, axes = plt.subplots(1, len(shown), figsize=(11, 3.2))
        names = list(summary)
        for ax, (key, label) in zip(axes, shown, strict=True):
            ax.bar(range(len(names)), [summary[n][key] for n in names], color=["C0", "C1", "C2"])
            ax.set_xticks(range(len(names)), ["now", "whole command", "before"])
            ax.set_title(label)
        fig.suptitle("a gateway process: vecmigrate serve started three ways (medians)")
        fig.tight_layout()
        fig.savefig(path, dpi=110)

    return draw


def main() -> None:
    p = sized_parser(__doc__, vectors=20_000, dim=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--searches", type=int, default=500)
    p.add_argument(
        "--old-ref",
        default="41883ac",
        help="the commit whose gateway is the baseline (before it stopped importing scipy)",
    )
    args = p.parse_args()
    console = wide_console()
    home = scratch("gateway-footprint")
    trees = {
        "now": ROOT,
        "through the whole command": ROOT,
        "before": old_checkout(args.old_ref, home / "old"),
    }
    vectors = clustered(args.vectors, args.dim, seed=1)
    console.log(f"seeding {args.vectors:,} x {args.dim}")
    catalog, _ = seeded_collection(home, "bench", vectors, {"kind": "hnswlib_hnsw", "m": 16})
    queries = vectors[np.random.default_rng(3).choice(args.vectors, 200, replace=False)]
    rows: list[dict[str, Any]] = []
    for n in range(args.rounds):
        names = list(WAYS)
        names = names[n % len(names) :] + names[: n % len(names)]
        for name in names:
            console.log(f"round {n + 1}: {name}")
            figures = measure(WAYS[name], trees[name], catalog, queries, home, args.searches)
            rows.append({"way": name, "round": n + 1, **figures})
    ways = {
        name: {
            key: round(statistics.median(r[key] for r in rows if r["way"] == name), 3)
            for key in FIGURES
        }
        for name in WAYS
    }
    now, before = ways["now"], ways["before"]
    summary: dict[str, Any] = {
        **ways,
        # Four places: a frozen heap's full collection is thousands of times shorter.
        "full collection, now / before": round(now["full_gc_ms"] / before["full_gc_ms"], 4),
        "start-up, now / before": round(now["start_s"] / before["start_s"], 2),
        "resident memory saved (MB)": round(before["rss_mb"] - now["rss_mb"], 1),
    }
    report(
        "gateway_footprint",
        f"a gateway process, {args.vectors:,} x {args.dim}, {args.rounds} rounds (before: "
        f"{args.old_ref})",
        rows,
        summary,
        plot(ways),
        args.out,
        console,
    )


if __name__ == "__main__":
    main()
