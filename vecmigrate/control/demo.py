"""``vecmigrate demo``: a real blue-green migration, IVF -> HNSW, on the embedded default.

It starts the Temporal dev server (unless ``TEMPORAL_ADDRESS`` is set) and a worker, seeds a
collection with real GloVe vectors (or a synthetic clustered set), runs the migration through
Temporal, and prints the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from vecmigrate.catalog.catalog import Catalog
from vecmigrate.config import home_dir, resolve_spec
from vecmigrate.control.client import MigrationClient
from vecmigrate.control.devserver import DevServer, cancel_on_sigterm
from vecmigrate.control.progress import watch
from vecmigrate.control.report import status_tables
from vecmigrate.data.datasets import clustered, glove, glove_available
from vecmigrate.data.seed import seed_collection, sequential_ids
from vecmigrate.model.lifecycle import Phase
from vecmigrate.model.spec import MigrationSpec, VersionSpec, parse_spec
from vecmigrate.model.status import MigrationStatus
from vecmigrate.records.vectors import Vectors
from vecmigrate.serving.router import Router
from vecmigrate.workers.connection import connect
from vecmigrate.workers.main import run_worker


@dataclass
class DemoData:
    """Vectors and the model that "made" them."""

    name: str
    model_id: str
    vectors: Vectors


def demo_data(size: int, kind: str) -> DemoData:
    """GloVe 6B 50-d when installed and large enough, else a 128-d Gaussian mixture."""
    if kind == "auto":
        kind = "glove" if glove_available() and size <= 400_000 else "synthetic"
    if kind == "glove":
        return DemoData("GloVe 6B 50d (real word vectors)", "glove-6b-50d", glove(size))
    return DemoData(
        "synthetic Gaussian mixture, 128d", "synthetic-mixture-128", clustered(size, 128)
    )


def demo_versions(model_id: str, dim: int, per_shard: int) -> tuple[VersionSpec, VersionSpec]:
    """v1: FAISS IVF-Flat (what many teams start with); v2: hnswlib HNSW."""
    # FAISS wants 39 training points per centroid; 4 * sqrt(n) is the usual nlist rule.
    nlist = int(max(8, min(1024, 4 * np.sqrt(per_shard), per_shard // 39)))
    embedding = {"model_id": model_id, "model_version": "1", "dimension": dim, "metric": "l2"}
    # ef 64 finds 95 % of GloVe's true neighbours up to ~50,000 vectors a shard, not at 100,000
    # (recall@10 0.945 at --size 400000): the demo's gate floor holds at every size it offers.
    ef_search = 64 if per_shard <= 50_000 else 128
    v1 = VersionSpec.model_validate(
        {
            "name": "v1",
            "embedding": embedding,
            "index": {"kind": "faiss_ivf_flat", "nlist": nlist, "nprobe": 4},
        }
    )
    v2 = VersionSpec.model_validate(
        {
            "name": "v2",
            "embedding": embedding,
            "index": {
                "kind": "hnswlib_hnsw",
                "m": 16,
                "ef_construction": 200,
                "ef_search": ef_search,
            },
        }
    )
    return v1, v2


def demo_spec(collection: str, v1: VersionSpec, v2: VersionSpec, manual: bool) -> MigrationSpec:
    """The migration the demo runs."""
    return resolve_spec(
        parse_spec(
            {
                "collection": collection,
                "strategy": "blue_green",
                "source": v1.model_dump(mode="json"),
                "target": v2.model_dump(mode="json"),
                "shards": {"by": "hash", "count": 4},
                "max_parallel_shards": 2,
                "batch_size": 10_000,
                "gates": {
                    "k": 10,
                    "sample_queries": 500,
                    "min_recall": 0.95,
                    "max_recall_drop": 0.0,
                },
                "cutover": {"mode": "manual" if manual else "automatic", "bake_seconds": 5},
            }
        )
    )


async def run_demo(
    *,
    size: int,
    data: str,
    manual: bool,
    keep: bool,
    address: str | None,
    catalog_url: str,
    task_queue: str,
    operator: str,
    console: Console,
) -> MigrationStatus:
    """Run the whole demo; returns the migration's final status."""
    async with demo_runtime(address, catalog_url, task_queue, console) as (mc, server, address):
        catalog = Catalog(catalog_url)

        dd = demo_data(size, data)
        collection = f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
        v1, v2 = demo_versions(dd.model_id, dd.vectors.shape[1], size // 4)
        console.print(
            f"[bold]1. seeding[/bold] {collection}: {size:,} vectors ({dd.name}) as v1 "
            f"with FAISS IVF-Flat ({v1.index.model_dump(exclude={'kind'})})"
        )
        await asyncio.to_thread(seed_with_progress, catalog, collection, v1, dd.vectors, console)

        spec = demo_spec(collection, v1, v2, manual)
        mid = await mc.start(spec, operator=operator)
        console.print(
            f"[bold]2. migrating[/bold] v1 -> v2 (hnswlib HNSW) as workflow [cyan]{mid}[/cyan]"
        )
        await show_links(mc, server, mid, address, console)
        if manual:
            console.print(
                f"   approve:   temporal workflow signal --address {address} --workflow-id {mid} "
                f'--name approve_cutover --input \'{{"operator": "{operator}"}}\''
                f"\n              (or: vecmigrate cutover {mid})"
            )
        final = await watch(mc, mid, console, until_gate_fails=not manual)

        console.print("[bold]3. report[/bold]")
        console.print(status_tables(final))
        _check_reads(catalog, collection, dd.vectors, final, console)
        if keep and server is not None:
            console.print(
                f"\nThe dev server and worker keep running: UI {server.ui_url}. Ctrl-C to stop."
            )
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                console.print("stopping ...")
        return final


@contextlib.asynccontextmanager
async def demo_runtime(
    address: str | None, catalog_url: str, task_queue: str, console: Console
) -> AsyncIterator[tuple[MigrationClient, DevServer | None, str]]:
    """A worker, and the Temporal dev server when no ``address`` is given, for a demo."""
    cancel_on_sigterm()
    home = home_dir()
    server: DevServer | None = None
    if address is None:
        server = DevServer(db_file=home / "temporal.db", log_file=home / "temporal.log")
        console.print(f"starting the Temporal dev server (state in {server.db_file}) ...")
        server.start()
        address = server.address
    stop = asyncio.Event()
    worker = asyncio.create_task(
        run_worker(address, task_queue, catalog_url, stop=stop, handle_signals=False)
    )

    def worker_ended(task: asyncio.Task[None]) -> None:
        # A worker that dies leaves the migration waiting with nobody to run it: say why now,
        # rather than after the watch gives up on an unanswered query.
        if not task.cancelled() and task.exception() is not None and not stop.is_set():
            console.print(f"[red]the worker stopped: {task.exception()!r}[/red]")

    worker.add_done_callback(worker_ended)
    try:
        client = await connect(address)
        yield MigrationClient(client, task_queue), server, address
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(worker, timeout=30)
        if server is not None:
            server.stop()
            console.print(
                f"the dev server stopped; its history persists in {server.db_file} "
                "(`vecmigrate dev` serves it again with the UI)"
            )


async def show_links(
    mc: MigrationClient, server: DevServer | None, mid: str, address: str, console: Console
) -> None:
    """Where to follow a migration: the Temporal UI page and the query command."""
    if server is not None:
        run_id = (await mc.handle(mid).describe()).run_id
        page = f"{server.ui_url}/namespaces/default/workflows/{mid}/{run_id}/history"
        console.print(f"   Temporal UI: {page}")
    console.print(
        f"   query it:  temporal workflow query --address {address} "
        f"--workflow-id {mid} --name status"
    )


def seed_with_progress(
    catalog: Catalog,
    collection: str,
    v1: VersionSpec,
    vectors: Vectors,
    console: Console,
    *,
    tenant: str = "default",
    shards: int = 4,
    actor: str = "demo",
) -> None:
    """Seed ``v1`` of a collection, showing a bar for loading and one for indexing."""
    progress = Progress(
        TextColumn("   {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
    )
    with progress:
        tasks = {
            "load": progress.add_task("load  ", total=len(vectors)),
            "index": progress.add_task("index ", total=len(vectors)),
        }
        seed_collection(
            catalog,
            tenant,
            collection,
            v1,
            sequential_ids(len(vectors)),
            vectors,
            shards=shards,
            actor=actor,
            on_progress=lambda stage, done, total: progress.update(tasks[stage], completed=done),
        )


def _check_reads(
    catalog: Catalog, collection: str, vectors: Vectors, final: MigrationStatus, console: Console
) -> None:
    routing = catalog.get_routing("default", collection)
    assert routing is not None
    result = Router(catalog).search("default", collection, vectors[:100], 10)
    self_hits = float(np.mean(result.ids[:, 0] == np.arange(1, 101)))
    where = "the new HNSW index" if result.version == final.target_version else "the old index"
    console.print(
        f"reads are served by {result.version} ({where}); generation {routing.generation}; "
        f"a record finds itself first for {self_hits:.0%} of 100 probes"
    )
    if final.phase not in (Phase.COMPLETED, Phase.ROLLED_BACK, Phase.ABORTED):
        # A gate failed (recall@10 of HNSW M 16, ef 64 on GloVe falls under the demo's 0.95
        # floor from about 400,000 vectors): the migration waits, in the dev server's database.
        console.print(
            f"[yellow]the migration waits at a failed gate ({final.phase}); its status above "
            f"says what would change the verdict. It is kept in the dev server's database: "
            f"`vecmigrate dev`, then `vecmigrate gate {final.migration_id} NAME --threshold X` "
            f"(or --override --reason R) and `vecmigrate resume {final.migration_id}`, or "
            f"`vecmigrate rollback {final.migration_id}`[/yellow]"
        )
    elif final.phase != Phase.COMPLETED:
        console.print(f"[yellow]the migration ended in {final.phase}[/yellow]")
