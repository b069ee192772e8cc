"""Storage formats and what they cost: bytes a vector, build time, peak memory and recall@10 of
every way a target can hold its vectors, and the size model `plan` estimates from, on the same
vectors in one run.

    python bench/storage_formats.py --data glove --vectors 400000

Formats: FAISS flat over float32, float16 and int8 codes (SQ8), IVF-SQ8, IVF-PQ, and HNSW over
float32, float16 and int8. Each is built twice, each build in a fresh process of its own (so the
peak memory is the build's own): by vecmigrate as a migration builds a shard (``build_index``,
then ``write_artifact``; searched through ``LoadedIndex``, as the gates and the router search
it), and by raw FAISS (``index_factory``, same parameters, same training sample size, same
threads). The last ``--queries`` vectors are held out as queries; recall@10 is against exact
search in float32. ``estimate`` is ``vecmigrate.indexes.sizes.index_bytes``, what `plan`
prints before a migration; ``measured / estimate`` is the file written against it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from bench.common import add_out_option, paired_bars, report, scratch, script_parser, wide_console
from vecmigrate.data.datasets import GLOVE_ROWS, clustered, glove
from vecmigrate.indexes.sizes import index_bytes
from vecmigrate.model.spec import FaissFlat, FaissHnsw, FaissIvfFlat, FaissIvfPq, IndexSpec, Metric
from vecmigrate.records.vectors import ExactKnn

K = 10


@dataclass(frozen=True)
class Data:
    """Where a build process gets its vectors: the same rows in every process."""

    source: str
    vectors: int
    queries: int
    dim: int

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """The base vectors and the held-out queries."""
        if self.source == "glove":
            everything = glove(self.vectors)
        else:
            everything = clustered(self.vectors, self.dim, seed=7)
        cut = self.vectors - self.queries
        return np.ascontiguousarray(everything[:cut]), np.ascontiguousarray(everything[cut:])


def formats(n: int, dim: int, hnsw_m: int) -> list[tuple[str, IndexSpec, str]]:
    """(label, vecmigrate's spec, the same index as a FAISS factory string)."""
    nlist = max(8, min(4096, 1 << round(np.log2(4 * np.sqrt(n)))))
    nprobe = max(1, nlist // 16)
    pq_m = dim // 2 if dim % 2 == 0 else dim  # two components a code byte: 8x smaller
    ivf = {"nlist": nlist, "nprobe": nprobe, "train_size": min(n, 100_000)}
    hnsw = {"m": hnsw_m, "ef_construction": 200, "ef_search": 64}
    return [
        ("flat float32", FaissFlat(), "Flat"),
        ("flat float16", FaissFlat(encoding="float16"), "SQfp16"),
        ("flat SQ8", FaissFlat(encoding="int8"), "SQ8"),
        ("IVF SQ8", FaissIvfFlat(**ivf, encoding="int8"), f"IVF{nlist},SQ8"),
        ("IVF-PQ", FaissIvfPq(**ivf, m=pq_m, nbits=8), f"IVF{nlist},PQ{pq_m}x8np"),
        ("HNSW float32", FaissHnsw(**hnsw), f"HNSW{hnsw_m}"),
        ("HNSW float16", FaissHnsw(**hnsw, encoding="float16"), f"HNSW{hnsw_m}_SQfp16"),
        ("HNSW SQ8", FaissHnsw(**hnsw, encoding="int8"), f"HNSW{hnsw_m}_SQ8"),
    ]


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # pragma: no cover - not Linux


def _reset_peak() -> int:
    """Restart the process's memory high-water mark at what it holds now; returns that (KB)."""
    # Not Linux, or not allowed: the peak then includes the data.
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return _rss_kb("VmRSS:")


def build_one(
    builder: str, spec_json: dict[str, Any], factory: str, data: Data, metric: str, threads: int
) -> dict[str, Any]:
    """One build in this (fresh) process: seconds, peak memory beyond the data, bytes written,
    and the ids it finds for the queries."""
    import faiss

    from vecmigrate.indexes.artifacts import LoadedIndex, build_index, write_artifact
    from vecmigrate.indexes.sizes import index_spec
    from vecmigrate.records.vectors import faiss_metric, prepare_for_metric

    faiss.omp_set_num_threads(threads)
    spec = index_spec(spec_json)
    base, queries = data.load()
    m = Metric(metric)
    before = _reset_peak()
    with tempfile.TemporaryDirectory(prefix="vecmigrate-formats-") as home:
        started = time.perf_counter()
        if builder == "vecmigrate":
            ids = np.arange(len(base), dtype=np.int64)
            index = build_index(spec, m, ids, base, threads=threads)
            built = time.perf_counter()
            artifact = write_artifact(index, spec, m, data.dim, Path(home), "s", "k" * 16, len(ids))
            size = artifact.data_file.stat().st_size
            written = time.perf_counter()
            peak = _rss_kb("VmHWM:")
            del index
            found = LoadedIndex(artifact.manifest).search(queries, K)[1]
        else:
            x = prepare_for_metric(base, m)
            index = faiss.index_factory(data.dim, factory, faiss_metric(m))
            train = getattr(spec, "train_size", 100_000)
            rng = np.random.default_rng(1234)
            if not index.is_trained:
                index.train(x if len(x) <= train else x[rng.choice(len(x), train, replace=False)])
            if hasattr(spec, "nprobe"):
                faiss.extract_index_ivf(index).nprobe = spec.nprobe
            if isinstance(spec, FaissHnsw):
                index = cast(Any, index)
                index.hnsw.efConstruction = spec.ef_construction
                index.hnsw.efSearch = spec.ef_search
            index.add(x)
            built = time.perf_counter()
            path = Path(home) / "raw.faiss"
            faiss.write_index(index, str(path))
            size = path.stat().st_size
            written = time.perf_counter()
            peak = _rss_kb("VmHWM:")
            found = index.search(prepare_for_metric(queries, m), K)[1]
    return {
        "build_s": built - started,
        "write_s": written - built,
        "peak_mb": max(0, peak - before) / 1024,
        "bytes": size,
        "found": found,
    }


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of the true k nearest found, query by query."""
    return float(np.mean([len(set(a) & set(b)) / K for a, b in zip(found, truth, strict=True)]))


def main() -> None:
    p = script_parser(__doc__)
    p.add_argument("--data", choices=["glove", "clustered"], default="glove")
    p.add_argument("--vectors", type=int, default=GLOVE_ROWS, help="base plus held-out queries")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--dim", type=int, default=64, help="clustered data only (GloVe is 50-d)")
    p.add_argument("--metric", choices=["l2", "ip", "cosine"], default="cosine")
    p.add_argument("--hnsw-m", type=int, default=16)
    p.add_argument("--threads", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--only", default="", help="comma-separated labels to run (default: all)")
    add_out_option(p)
    args = p.parse_args()
    dim = 50 if args.data == "glove" else args.dim
    data = Data(args.data, args.vectors, args.queries, dim)
    base, queries = data.load()
    n = len(base)
    console = wide_console()
    console.print(f"{args.data}: {n:,} vectors of {dim} components, {len(queries):,} queries")
    knn = ExactKnn(queries, K, args.metric)
    for start in range(0, n, 100_000):
        knn.add(
            np.arange(start, min(n, start + 100_000), dtype=np.int64), base[start : start + 100_000]
        )
    truth = knn.result()[1]
    del base
    chosen = [
        f for f in formats(n, dim, args.hnsw_m) if not args.only or f[0] in args.only.split(",")
    ]
    scratch("storage-formats")  # nothing is kept: each build writes to its own temporary folder
    rows: list[dict[str, Any]] = []
    spawn = multiprocessing.get_context("spawn")
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("builds", total=2 * len(chosen), rate="")
        for label, spec, factory in chosen:
            result: dict[str, dict[str, Any]] = {}
            for builder in ("vecmigrate", "faiss"):
                progress.update(task, description=f"{label} ({builder})")
                # A process per build, so each peak memory is the build's own.
                with ProcessPoolExecutor(1, mp_context=spawn) as pool:
                    result[builder] = pool.submit(
                        build_one,
                        builder,
                        spec.model_dump(mode="json"),
                        factory,
                        data,
                        args.metric,
                        args.threads,
                    ).result()
                rate = n / result[builder]["build_s"]
                progress.update(task, advance=1, rate=f"{rate:,.0f} vec/s built")
            ours, raw = result["vecmigrate"], result["faiss"]
            estimate = index_bytes(spec, n, dim)
            rows.append(
                {
                    "format": label,
                    "bytes/vector": ours["bytes"] / n,
                    "x smaller": 0.0,
                    "estimate MB": estimate / 1e6,
                    "measured/estimate": ours["bytes"] / estimate,
                    "recall@10": recall(ours["found"], truth),
                    "raw recall@10": recall(raw["found"], truth),
                    "build s": ours["build_s"],
                    "build ratio": ours["build_s"] / raw["build_s"],
                    "peak MB": ours["peak_mb"],
                    "raw peak MB": raw["peak_mb"],
                }
            )
    # How many times smaller than the same vectors in a float32 flat index, on disk.
    plain = next((r["bytes/vector"] for r in rows if r["format"] == "flat float32"), None)
    for r in rows:
        r["x smaller"] = plain / r["bytes/vector"] if plain else float("nan")
    summary = {
        "data": f"{args.data}, {n:,} x {dim}, {len(queries):,} held-out queries, {args.metric}",
        "threads": args.threads,
        "size model (measured/estimate)": (
            f"{min(r['measured/estimate'] for r in rows):.3f} .. "
            f"{max(r['measured/estimate'] for r in rows):.3f}"
        ),
        "build time vs raw FAISS (median ratio)": round(
            float(np.median([r["build ratio"] for r in rows])), 2
        ),
    }

    def plot(path: Path) -> None:
        import matplotlib.pyplot as plt

        fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
        for r in rows:
            left.scatter(r["bytes/vector"], r["recall@10"])
            left.annotate(r["format"], (r["bytes/vector"], r["recall@10"]), fontsize=8)
        left.set_xscale("log")
        left.set_xlabel("bytes a vector on disk (log)")
        left.set_ylabel("recall@10")
        left.set_title("what each format keeps, for its size")
        paired_bars(
            right,
            [r["format"] for r in rows],
            {
                "vecmigrate": [r["build s"] for r in rows],
                "raw FAISS": [r["build s"] / r["build ratio"] for r in rows],
            },
            rotation=30,
            ha="right",
            fontsize=8,
        )
        right.set_ylabel("build seconds")
        right.legend()
        fig.suptitle(summary["data"])
        fig.tight_layout()
        fig.savefig(path, dpi=110)

    name = f"storage_formats_{args.data}_{args.vectors}"
    report(name, "Storage formats", rows, summary, plot, args.out, console)


if __name__ == "__main__":
    main()
