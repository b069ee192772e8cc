"""What applying writes to a served hnswlib index costs the rest of the process.

    python bench/applier_stalls.py --vectors 160000 --dim 64 --shards 4 --writes 20000

A router applies the change log to the indexes it serves in turns (``LiveIndex.drain``, as
many records as take about 4 ms at the pace of the last turn), and keeps searches out of an
index while a turn changes it. Whatever a turn does with the GIL held
also stops every other thread of the process: the gateway's request handlers among them. This
script applies the same writes (new records, half of them with negative ids as string and UUID
ids have; overwrites; deletes) to a served index of several hnswlib shards through the applier,
and straight to a copy of the same shards with hnswlib's own calls (each record's shard known:
the floor), while a watchdog thread asks to wake every 0.5 ms. How late it wakes is how long
another thread of the process would have waited. Printed: seconds and CPU seconds, the
applier's turns (searches wait for one), and the watchdog's lateness, median of ``--repeat``
rounds, each side on fresh copies.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Self

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.common import bar_chart, report, scratch, sized_parser
from vecmigrate.catalog.changelog import DELETE, UPSERT
from vecmigrate.data.datasets import clustered
from vecmigrate.indexes.artifacts import Artifact, LoadedIndex, build_index, write_artifact
from vecmigrate.indexes.live import LiveIndex, NetChanges
from vecmigrate.model.spec import HnswlibHnsw, Metric
from vecmigrate.serving.upkeep import MOST_PER_TURN, TURN_SECONDS

BATCH = 500  # records a write round stages: new ones, overwrites and deletes


class Background:
    """A thread running ``_run`` for the length of a ``with`` block (``_stop`` says when to
    end)."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Watchdog(Background):
    """A thread that sleeps 0.5 ms at a time and notes how late it wakes (ms)."""

    def __init__(self) -> None:
        self.late: list[float] = []
        super().__init__()

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.perf_counter()
            time.sleep(0.0005)
            self.late.append((time.perf_counter() - began - 0.0005) * 1000)


def hnswlib_shards(n: int, dim: int, count: int, home: Path) -> tuple[list[Artifact], np.ndarray]:
    """Artifacts of ``count`` hnswlib shards (M 16) of ``n`` clustered records of ``dim``
    (ids split by remainder), in ``home``; and the records' vectors."""
    spec = HnswlibHnsw(m=16, ef_construction=100, ef_search=64)
    ids = np.arange(n, dtype=np.int64)
    x = clustered(n, dim, seed=1)
    arts = []
    for s in range(count):
        mine = ids % count == s
        index = build_index(spec, Metric.L2, ids[mine], x[mine], threads=-1)
        arts.append(
            write_artifact(index, spec, Metric.L2, dim, home, f"s{s}", f"{s}" * 64, int(mine.sum()))
        )
    return arts, x


def rounds(n: int, writes: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Each round's new ids (half negative), overwritten and deleted ids (held ones)."""
    rng = np.random.default_rng(seed)
    held = rng.permutation(n)
    out, at, fresh = [], 0, 10**9
    for _ in range(writes // BATCH):
        new = np.arange(fresh, fresh + BATCH // 2, dtype=np.int64)
        new[::2] *= -1
        fresh += BATCH // 2
        over, gone = held[at : at + BATCH // 4], held[at + BATCH // 4 : at + BATCH // 2]
        at += BATCH // 2
        out.append({"new": new, "over": over.astype(np.int64), "gone": gone.astype(np.int64)})
    return out


def applier(
    shards: list[LoadedIndex], work: list[dict[str, np.ndarray]], dim: int
) -> dict[str, Any]:
    live = LiveIndex(
        "bench", shards, 0, space="m@1", normalized=False, metric=Metric.L2, dimension=dim
    )
    rng = np.random.default_rng(3)
    turns: list[float] = []
    seq = 0
    with Watchdog() as dog:
        cpu, began = time.process_time(), time.perf_counter()
        for w in work:
            ids = np.concatenate([w["new"], w["over"]])
            vectors = rng.normal(size=(len(ids), dim)).astype(np.float32)
            live.stage(NetChanges.of_write(seq, seq + len(ids), dim, ids, vectors, UPSERT))
            seq += len(ids)
            live.stage(NetChanges.of_write(seq, seq + len(w["gone"]), dim, w["gone"], None, DELETE))
            seq += len(w["gone"])
            more = True
            while more:  # in turns sized as a router's upkeep sizes them
                t = time.perf_counter()
                more = live.drain(MOST_PER_TURN, seconds=TURN_SECONDS)
                turns.append((time.perf_counter() - t) * 1000)
        wall, used = time.perf_counter() - began, time.process_time() - cpu
    return {"seconds": wall, "cpu": used, "turns": turns, "late": dog.late}


def raw(shards: list[LoadedIndex], work: list[dict[str, np.ndarray]], dim: int) -> dict[str, Any]:
    """The same writes with hnswlib's own calls, each record's shard known."""
    graphs: list[Any] = [s.native for s in shards]
    count = len(graphs)
    rng = np.random.default_rng(3)

    # Where the applier puts a new record (its hash shard), so both sides hold the same.
    home = LiveIndex(
        "raw", shards, 0, space="m@1", normalized=False, metric=Metric.L2, dimension=dim
    ).home
    added = sum(len(w["new"]) for w in work)
    for graph in graphs:  # room made once, before the clock starts: the floor
        graph.resize_index(graph.get_max_elements() + added)
    with Watchdog() as dog:
        cpu, began = time.process_time(), time.perf_counter()
        for w in work:
            vectors = rng.normal(size=(len(w["new"]) + len(w["over"]), dim)).astype(np.float32)
            new_v, over_v = vectors[: len(w["new"])], vectors[len(w["new"]) :]
            for s in range(count):
                mine = w["over"] % count == s  # the artifacts split ids by remainder
                if mine.any():
                    graphs[s].add_items(over_v[mine], w["over"][mine].astype(np.uint64), 1)
                for label in w["gone"][w["gone"] % count == s].astype(np.uint64).tolist():
                    graphs[s].mark_deleted(label)
            where = home(w["new"])
            for s in range(count):
                mine = where == s
                if mine.any():
                    graphs[s].add_items(
                        new_v[mine], w["new"][mine].astype(np.uint64), 1, replace_deleted=True
                    )
        wall, used = time.perf_counter() - began, time.process_time() - cpu
    return {"seconds": wall, "cpu": used, "turns": [], "late": dog.late}


def main() -> None:
    p = sized_parser(__doc__, vectors=160_000, dim=64, shards=4)
    p.add_argument("--writes", type=int, default=20_000)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    n, dim, count = args.vectors, args.dim, args.shards
    arts, _ = hnswlib_shards(n, dim, count, scratch("applier"))
    manifests = [art.manifest for art in arts]
    work = rounds(n, args.writes, seed=7)
    results: dict[str, list[dict[str, Any]]] = {"vecmigrate applier": [], "raw hnswlib": []}
    for _ in range(args.repeat):
        for name, run in (("vecmigrate applier", applier), ("raw hnswlib", raw)):
            # Loaded as a router loads the indexes it serves (with room for new records).
            shards = [LoadedIndex(m, for_writes=True) for m in manifests]
            results[name].append(run(shards, work, dim))
    rows = []
    for name, runs in results.items():
        late = [np.asarray(r["late"]) for r in runs]
        turns = [np.asarray(r["turns"]) for r in runs if r["turns"]]
        med = statistics.median
        rows.append(
            {
                "side": name,
                "writes": len(work) * BATCH,
                "seconds": round(med(r["seconds"] for r in runs), 2),
                "cpu_seconds": round(med(r["cpu"] for r in runs), 2),
                "turn_p50_ms": round(med(float(np.median(t)) for t in turns), 2) if turns else None,
                "turn_p99_ms": (
                    round(med(float(np.percentile(t, 99)) for t in turns), 2) if turns else None
                ),
                "turn_max_ms": round(med(float(t.max()) for t in turns), 2) if turns else None,
                "watchdog_late_p99_ms": round(med(float(np.percentile(v, 99)) for v in late), 2),
                "watchdog_late_max_ms": round(med(float(v.max()) for v in late), 2),
            }
        )
    ours, floor = rows
    report(
        "applier_stalls",
        f"{args.writes:,} writes to {n:,} x {dim} in {count} hnswlib shards",
        rows,
        {
            "seconds, applier / raw": round(ours["seconds"] / floor["seconds"], 2),
            "watchdog p99 late, applier - raw (ms)": round(
                ours["watchdog_late_p99_ms"] - floor["watchdog_late_p99_ms"], 2
            ),
        },
        plot=bar_chart(
            [f"{r['side']}\n{k}" for r in rows for k in ("p99", "max")],
            [v for r in rows for v in (r["watchdog_late_p99_ms"], r["watchdog_late_max_ms"])],
            value_label="ms another thread waited",
            title="How late a 0.5 ms sleeper woke while the writes were applied",
            figsize=(8, 4),
        ),
        out=args.out,
    )


if __name__ == "__main__":
    main()
