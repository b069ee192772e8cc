"""What every benchmark script shares: the machine, the BLAS kernel, a table, JSON and a plot."""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import shutil
import ssl
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from rich.console import Console
from rich.table import Table

from vecmigrate.catalog.catalog import Catalog
from vecmigrate.config import sqlite_url
from vecmigrate.control.devserver import free_port
from vecmigrate.data.seed import seed_collection, sequential_ids
from vecmigrate.model.spec import BuiltinStoreRef, MigrationSpec, VersionSpec, parse_spec
from vecmigrate.security.credentials import Credentials, new_api_key
from vecmigrate.testing.chaos import builtin_version
from vecmigrate.testing.tls import CertificateAuthority

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
A = TypeVar("A")
B = TypeVar("B")


def script_parser(doc: str | None) -> argparse.ArgumentParser:
    """The argument parser of a benchmark script, its docstring as the description with its line
    breaks kept (the docstrings lay out what the script measures)."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)


def add_out_option(parser: argparse.ArgumentParser) -> None:
    """The ``--out`` option every script takes: the folder its JSON and plot go to."""
    parser.add_argument("--out", type=Path, default=RESULTS, help="where JSON and PNG go")


def sized_parser(
    doc: str | None,
    *,
    vectors: int | None = None,
    dim: int | None = None,
    shards: int | None = None,
    batch_size: int | None = None,
    out: bool = True,
) -> argparse.ArgumentParser:
    """A script's parser (``script_parser``) with the options that size its run, each one the
    script gives a default for: ``--vectors``, ``--dim``, ``--shards`` (of the migration) and
    ``--batch-size`` (the spec's ``batch_size``); and ``--out`` unless ``out`` is false. The
    script adds its own options after these."""
    parser = script_parser(doc)
    for option, default in (
        ("--vectors", vectors),
        ("--dim", dim),
        ("--shards", shards),
        ("--batch-size", batch_size),
    ):
        if default is not None:
            parser.add_argument(option, type=int, default=default)
    if out:
        add_out_option(parser)
    return parser


def alternating(pair: int, ours: Callable[[], A], raw: Callable[[], B]) -> tuple[A, B]:
    """Run one pair of a paired benchmark: ``ours`` first in even pairs, ``raw`` first in odd
    ones. Whatever runs second finds caches and files warm, and a shared machine drifts; a
    single pair was a coin toss here (a one-second copy, a 1M build), so benchmarks run several
    pairs and compare medians."""
    if pair % 2:
        theirs = raw()
        return ours(), theirs
    mine = ours()
    return mine, raw()


def wide_console() -> Console:
    """A console at least 120 columns wide: piped to a file, rich assumes 80 and cuts the
    headers of wide tables."""
    return Console(width=max(Console().width, 120))


def scratch(name: str) -> Path:
    """A fresh working directory for one benchmark's databases and index files, removed when
    the script ends well (a 1M-vector run leaves gigabytes). It is kept, and its place
    printed, when the script fails (its logs are there) or ``VECMIGRATE_BENCH_KEEP=1``."""
    home = Path(tempfile.mkdtemp(prefix=f"vecmigrate-{name}-"))
    failed: list[bool] = []
    previous = sys.excepthook

    def note_failure(*exc: Any) -> None:
        failed.append(True)
        previous(*exc)

    def remove() -> None:
        if failed or os.environ.get("VECMIGRATE_BENCH_KEEP"):
            print(f"working directory kept: {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)

    sys.excepthook = note_failure
    atexit.register(remove)
    return home


def old_checkout(ref: str, into: Path) -> Path:
    """The tree of ``ref`` (a commit of this repository) unpacked into ``into``: the code of
    before, for a benchmark that runs it beside today's."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", ref],
        check=True,
        capture_output=True,
    ).stdout
    into.mkdir(parents=True)
    with tempfile.TemporaryFile() as f:
        f.write(archive)
        f.seek(0)
        with tarfile.open(fileobj=f) as tar:
            tar.extractall(into, filter="fully_trusted")
    return into


@dataclass
class GatewayProcess:
    """A ``vecmigrate serve`` process: where it listens, what a request sends, what to trust."""

    url: str
    pid: int
    headers: dict[str, str] = field(default_factory=dict)
    cafile: str | None = None
    """The CA certificate the server's is issued by (with TLS)."""


def split_cores(serving: int) -> tuple[set[int], set[int]] | None:
    """This process's cores split in two: the last ``serving`` for the application's side (its
    gateway and its clients), the others for the migration's (the worker, the Temporal server,
    the benchmark's own process); None with ``serving`` 0.

    Raises:
        SystemExit: the split leaves either side no core, or the platform cannot pin.
    """
    if serving <= 0:
        return None
    if not hasattr(os, "sched_setaffinity"):
        raise SystemExit("pinning processes to cores needs Linux (os.sched_setaffinity)")
    cores = sorted(os.sched_getaffinity(0))
    if serving >= len(cores):
        raise SystemExit(
            f"--serving-cores {serving} leaves no core of this process's {len(cores)} to the "
            "migration's side"
        )
    return set(cores[-serving:]), set(cores[:-serving])


@contextmanager
def pinned(cores: set[int] | None) -> Iterator[None]:
    """Processes started inside run on ``cores`` (None: wherever the system puts them).

    The calling thread is pinned while inside, and a child process takes its mask from the
    thread that starts it.
    """
    if cores is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@contextmanager
def gateway_process(
    catalog_url: str,
    home: Path,
    *,
    secure: bool = False,
    refresh: float = 1.0,
    tree: Path = ROOT,
    launcher: Sequence[str] = ("-m", "vecmigrate"),
) -> Iterator[GatewayProcess]:
    """``vecmigrate serve`` on ``catalog_url`` in a process of its own, as production runs it,
    from the code in ``tree``, started by Python with ``launcher`` before ``serve`` and its
    flags; ``secure``: with TLS and an API key for requests (its credentials and certificates
    under ``home``), else without authentication on 127.0.0.1. Yields once ``/health``
    answers; stopped on leaving; its output is in ``home``."""
    port = free_port()
    command = [sys.executable, *launcher, "serve", "--catalog", catalog_url]
    command += ["--port", str(port), "--refresh", str(refresh)]
    headers: dict[str, str] = {}
    cafile = None
    if secure:
        ca = CertificateAuthority(home / "pki", "bench-ca")
        cert = ca.issue("localhost", server=True)
        credentials = Credentials()
        key, stored = new_api_key("bench", ["default"], ["bench"], ["search", "write"])
        credentials.api_keys[stored.id] = stored
        credentials.save(home / "credentials.yaml")
        command += ["--credentials", str(home / "credentials.yaml")]
        command += ["--tls-cert", str(cert.cert), "--tls-key", str(cert.key)]
        headers["Authorization"] = f"Bearer {key}"
        cafile = str(ca.issued.cert)
        url = f"https://127.0.0.1:{port}"
    else:
        command.append("--no-auth")
        url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tree)}
    # Run from ``tree``: Python imports a -m or -c program's modules from the current directory
    # first, before PYTHONPATH. Its log in a file under ``home`` (kept when the script fails):
    # a pipe nobody reads would stop the server once full.
    log = (home / f"gateway-{port}.log").open("wb")
    proc = subprocess.Popen(command, env=env, cwd=tree, stdout=log, stderr=subprocess.STDOUT)
    try:
        context = ssl.create_default_context(cafile=cafile) if cafile else None
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2, context=context) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway at {url} did not come up")
            time.sleep(0.02)
        yield GatewayProcess(url, proc.pid, headers, cafile)
    finally:
        stop_process(proc)
        log.close()


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """Ask a server process to stop, and kill it if it has not within 20 s."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def machine() -> dict[str, Any]:
    """CPU, cores, Python, and which BLAS kernels numpy and FAISS loaded (threadpoolctl)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    blas: list[dict[str, Any]] = []
    try:
        import faiss  # noqa: F401 - loads FAISS's own OpenMP/BLAS so threadpoolctl sees them
        import numpy  # noqa: F401
        from threadpoolctl import threadpool_info  # type: ignore[import-untyped]

        blas = [
            {k: lib.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
            for lib in threadpool_info()
        ]
    except ImportError:
        blas = [{"note": "install threadpoolctl (pip install '.[bench]') to see BLAS kernels"}]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "blas": blas,
    }


def timed_qdrant_migrate(source: Any, dest: Any, collection: str, n: int) -> float:
    """Seconds qdrant-client's own ``migrate`` takes from ``source`` to ``dest`` (both clients
    are closed after), checking that all ``n`` points of ``collection`` arrived."""
    began = time.perf_counter()
    source.migrate(dest)
    seconds = time.perf_counter() - began
    assert dest.count(collection).count == n
    source.close()
    dest.close()
    return seconds


def seeded_collection(
    home: Path,
    collection: str,
    vectors: np.ndarray,
    index: dict[str, Any],
    location: str | None = None,
) -> tuple[str, VersionSpec]:
    """Seed ``vectors`` (ids 1 to n, four shards) as version v1 of ``collection`` with ``index``
    in a catalog and built-in store (at ``location``) under ``home``, routed to; return the
    catalog's URL and v1."""
    n, dim = vectors.shape
    catalog_url = sqlite_url(home / "catalog.db")
    store = BuiltinStoreRef(
        url=sqlite_url(home / "store.db"), artifacts=str(home / "artifacts"), location=location
    )
    v1 = builtin_version("v1", store, dim, index)
    seed_collection(
        Catalog(catalog_url), "default", collection, v1, sequential_ids(n), vectors, shards=4
    )
    return catalog_url, v1


def _seeded_versions(
    home: Path,
    collection: str,
    vectors: np.ndarray,
    source_index: dict[str, Any],
    target_index: dict[str, Any],
    location: str | None = None,
) -> tuple[str, VersionSpec, VersionSpec]:
    """``seeded_collection`` with ``source_index``; also v2, in the same store, with
    ``target_index``."""
    catalog_url, v1 = seeded_collection(home, collection, vectors, source_index, location)
    assert isinstance(v1.store, BuiltinStoreRef)
    return catalog_url, v1, builtin_version("v2", v1.store, vectors.shape[1], target_index)


@dataclass(frozen=True)
class Sizing:
    """A measured migration's spec id and size: ``shards`` shards, ``parallel`` of them at once,
    batches of ``batch_size`` records."""

    spec_id: str
    shards: int
    parallel: int
    batch_size: int


def _measured_spec(
    collection: str, v1: VersionSpec, v2: VersionSpec, sizing: Sizing, **more: Any
) -> MigrationSpec:
    """A blue-green migration from v1 to v2 of ``sizing``'s id and size, with a loose recall
    gate and an automatic cutover with no bake, so that the migration's own work is what a run
    measures; with the fields ``more``."""
    return parse_spec(
        {
            "id": sizing.spec_id,
            "collection": collection,
            "source": v1.model_dump(mode="json"),
            "target": v2.model_dump(mode="json"),
            "shards": {"count": sizing.shards},
            "max_parallel_shards": sizing.parallel,
            "batch_size": sizing.batch_size,
            "gates": {"min_recall": 0.8, "sample_queries": 200},
            "cutover": {"mode": "automatic", "bake_seconds": 0},
            **more,
        }
    )


def builtin_migration(
    home: Path,
    collection: str,
    vectors: np.ndarray,
    source_index: dict[str, Any],
    target_index: dict[str, Any],
    *,
    sizing: Sizing,
) -> tuple[str, MigrationSpec]:
    """Seed ``vectors`` (ids 1 to n, four shards) as version v1 of ``collection`` with
    ``source_index``, in a catalog and built-in store under ``home``, and return the catalog's
    URL and the spec of a blue-green migration to v2 with ``target_index``, of ``sizing``'s id
    and size, with a loose recall gate and an automatic cutover with no bake, so that the
    migration's own work is what the run measures."""
    catalog_url, v1, v2 = _seeded_versions(home, collection, vectors, source_index, target_index)
    return catalog_url, _measured_spec(collection, v1, v2, sizing)


def regional_builtin_migration(
    home: Path,
    collection: str,
    regions: Mapping[str, np.ndarray],
    source_index: dict[str, Any],
    target_index: dict[str, Any],
    *,
    sizing: Sizing,
) -> tuple[dict[str, str], MigrationSpec]:
    """:func:`builtin_migration` in several regions at once: each region (a name and its
    vectors, ids 1 to its count) gets its own catalog and built-in store under ``home/REGION``
    and its own task queue, ``COLLECTION-REGION``, and the spec moves every region's copy in
    one regional migration, all regions at once (no canary, no pause between the cut-overs).
    Returns each region's catalog URL and the spec; its workers run with ``--region REGION``."""
    catalogs: dict[str, str] = {}
    entries = []
    versions: list[tuple[VersionSpec, VersionSpec]] = []
    for region, vectors in regions.items():
        (home / region).mkdir(parents=True, exist_ok=True)
        catalogs[region], v1, v2 = _seeded_versions(
            home / region, collection, vectors, source_index, target_index, f"{region}-1"
        )
        versions.append((v1, v2))
        store = v1.store.model_dump(mode="json")
        entries.append(
            {
                "name": region,
                "location": f"{region}-1",
                "task_queue": f"{collection}-{region}",
                "source_store": store,
                "target_store": store,
            }
        )
    spec = _measured_spec(
        collection,
        *versions[0],
        sizing,
        regions=entries,
        region_policy={"canary": False, "max_parallel": len(entries)},
    )
    return catalogs, spec


def bar_chart(
    labels: Sequence[str],
    values: Sequence[float],
    *,
    value_label: str,
    title: str,
    figsize: tuple[float, float],
    horizontal: bool = False,
) -> Callable[[Path], None]:
    """The ``plot`` for ``report`` of one series of bars, one at each of ``labels`` (rows of
    horizontal bars with ``horizontal``), its value axis named ``value_label``."""

    def plot(path: Path) -> None:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=figsize)
        if horizontal:
            ax.barh(labels, values)
            ax.set_xlabel(value_label)
        else:
            ax.bar(labels, values)
            ax.set_ylabel(value_label)
        ax.set_title(title)
        fig.tight_layout()
        fig.savefig(path, dpi=110)

    return plot


def paired_bars(
    ax: Any,
    labels: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    horizontal: bool = False,
    **ticks: Any,
) -> None:
    """Two series as bars side by side at each of ``labels`` (the first left of the second, or
    below it with ``horizontal``), named for the legend; ``ticks`` go to the label axis."""
    at = np.arange(len(labels))
    draw, set_ticks = (ax.barh, ax.set_yticks) if horizontal else (ax.bar, ax.set_xticks)
    for shift, (name, values) in zip((-0.2, 0.2), series.items(), strict=True):
        draw(at + shift, values, 0.4, label=name)
    set_ticks(at, labels, **ticks)


def paired_bar_chart(
    labels: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    ylabel: str,
    xlabel: str | None = None,
    figsize: tuple[float, float] = (6, 3.5),
    dpi: float = 100,
) -> Callable[[Path], None]:
    """The ``plot`` for ``report`` of a chart that is ``paired_bars`` alone: two series side by
    side at each of ``labels``, with a legend."""

    def plot(path: Path) -> None:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=figsize)
        paired_bars(ax, labels, series)
        ax.set_ylabel(ylabel)
        if xlabel is not None:
            ax.set_xlabel(xlabel)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)

    return plot


def report(
    name: str,
    title: str,
    rows: list[dict[str, Any]],
    summary: dict[str, Any],
    plot: Callable[[Path], None] | None = None,
    out: Path = RESULTS,
    console: Console | None = None,
) -> Path:
    """Print ``rows`` as a table and ``summary`` below it; write JSON (and a PNG if ``plot``)."""
    console = console or wide_console()
    info = machine()
    table = Table(title=title)
    for col in rows[0]:
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(*(f"{v:,.3f}" if isinstance(v, float) else str(v) for v in row.values()))
    console.print(table)
    for key, value in summary.items():
        console.print(f"{key:40} {value}")
    kernels = ", ".join(
        f"{b.get('internal_api')} {b.get('version')} ({b.get('architecture')})"
        for b in info["blas"]
        if b.get("internal_api")
    )
    console.print(f"machine: {info['cpu']}, {info['cores']} cores; BLAS: {kernels or 'unknown'}")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps({"rows": rows, "summary": summary, "machine": info}, indent=2))
    if plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        plot(out / f"{name}.png")
        console.print(f"wrote {path} and {out / f'{name}.png'}")
    else:
        console.print(f"wrote {path}")
    return path
