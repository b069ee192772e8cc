"""A move to a new embedding model on real text, with text traffic served throughout.

Used by ``vecmigrate demo-text``, its test and the README's worked example:

1. the docstrings of the Python standard library (real English text, offline everywhere) are
   the records; two LSA models are fit on them: v1 (words, 64 dimensions, L2) and v2 (words and
   word pairs, 96 dimensions, cosine on unit vectors): a change of model, dimension and metric;
2. the collection is seeded as v1 (vectors by model v1, texts kept with the records);
3. an online migration re-embeds every record with model v2 while :class:`TextTraffic` searches
   with text and writes texts through the router, noting for each request which version
   answered and which model (or adapter) embedded the query.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from vecmigrate.catalog.catalog import Catalog
from vecmigrate.config import home_dir, resolve_store
from vecmigrate.control.client import MigrationClient
from vecmigrate.control.demo import demo_runtime, show_links
from vecmigrate.control.progress import watch
from vecmigrate.control.report import status_tables
from vecmigrate.control.traffic import start_clients, stop_clients
from vecmigrate.data.datasets import stdlib_docstrings
from vecmigrate.data.seed import SeedResult, seed_collection, sequential_ids
from vecmigrate.embedding.embedders import fit_lsa
from vecmigrate.embedding.reembed import fit_collection_adapter
from vecmigrate.embedding.registry import ModelRecord, Registry, register_lsa
from vecmigrate.errors import VecmigrateError
from vecmigrate.model.gates import RetrievalFigures
from vecmigrate.model.spec import (
    AnyStoreRef,
    BuiltinStoreRef,
    Metric,
    MigrationSpec,
    VersionSpec,
    parse_spec,
)
from vecmigrate.model.status import MigrationStatus
from vecmigrate.serving.router import Router
from vecmigrate.validation.options import first_words

OLD_MODEL = "stdlib-lsa-words"
NEW_MODEL = "stdlib-lsa-pairs"


@dataclass(frozen=True)
class Corpus:
    """Record texts, their ids and their module (a label for reading results)."""

    ids: np.ndarray
    texts: list[str]
    modules: list[str]


def load_corpus(n: int | None = None) -> Corpus:
    """Up to ``n`` standard-library docstrings as records with ids 1..n."""
    pairs = stdlib_docstrings(limit=n)
    return Corpus(
        ids=sequential_ids(len(pairs)),
        texts=[t for _, t in pairs],
        modules=[m for m, _ in pairs],
    )


def fit_models(
    catalog: Catalog, corpus: Corpus, directory: Path, old_dim: int = 64, new_dim: int = 96
) -> tuple[ModelRecord, ModelRecord]:
    """Fit and register the old and the new model (idempotent for the same corpus)."""
    registry = Registry(catalog)
    old = fit_lsa(corpus.texts, model_id=OLD_MODEL, dimension=old_dim)
    new = fit_lsa(
        corpus.texts,
        model_id=NEW_MODEL,
        dimension=new_dim,
        ngrams=2,
        metric=Metric.COSINE,
        normalized=True,
    )
    return register_lsa(registry, old, directory), register_lsa(registry, new, directory)


def text_versions(
    store: AnyStoreRef, old: ModelRecord, new: ModelRecord
) -> tuple[VersionSpec, VersionSpec]:
    """v1: the old model under FAISS IVF-Flat; v2: the new model under hnswlib HNSW."""
    v1 = VersionSpec.model_validate(
        {
            "name": "v1",
            "store": store.model_dump(mode="json"),
            "embedding": old.schema.model_dump(mode="json"),
            "index": {"kind": "faiss_ivf_flat", "nlist": 32, "nprobe": 8},
        }
    )
    v2 = VersionSpec.model_validate(
        {
            "name": "v2",
            "store": store.model_dump(mode="json"),
            "embedding": new.schema.model_dump(mode="json"),
            "index": {"kind": "hnswlib_hnsw", "m": 16, "ef_construction": 100, "ef_search": 64},
        }
    )
    return v1, v2


def seed_texts(
    catalog: Catalog,
    tenant: str,
    collection: str,
    version: VersionSpec,
    corpus: Corpus,
    shards: int = 2,
) -> SeedResult:
    """Seed ``version`` from the corpus: vectors by the version's model, texts kept."""
    embedder = Registry(catalog).embedder(version.embedding)
    vectors = embedder.embed(corpus.texts)
    return seed_collection(
        catalog, tenant, collection, version, corpus.ids, vectors, texts=corpus.texts, shards=shards
    )


@dataclass
class TextRequest:
    """One request of the traffic: what it did, in which phase, and what answered."""

    phase: str
    op: str
    ok: bool
    version: str = ""
    via: str = ""
    found: int = 0
    hit: bool = False
    error: str = ""
    ms: float = 0.0


@dataclass
class TextTraffic:
    """Clients searching with text (known-item queries) and writing texts through a router.

    Every search is a record's first sentence; ``hit`` says whether that record came back in
    the top ``k``. Writes upsert new records (texts of other records, so they are real text)
    and delete some of them again; :meth:`verify` checks the live version holds exactly the
    acknowledged writes.
    """

    router: Router
    tenant: str
    collection: str
    corpus: Corpus
    phase: Callable[[], str]
    clients: int = 3
    k: int = 10
    write_every: int = 4
    requests: list[TextRequest] = field(default_factory=list)
    written: dict[int, str] = field(default_factory=dict)
    deleted: set[int] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> TextTraffic:
        self._threads.extend(start_clients(self._run, self.clients, "text-client"))
        return self

    def stop(self) -> None:
        stop_clients(self._stop, self._threads, timeout=30)

    def _run(self, client: int) -> None:
        rng = random.Random(client)
        next_id = 10_000_000 * (client + 1)
        mine: list[int] = []
        step = 0
        while not self._stop.is_set():
            step += 1
            phase = self.phase()
            began = time.perf_counter()
            if step % self.write_every:
                row = rng.randrange(len(self.corpus.texts))
                answer = int(self.corpus.ids[row])
                query = first_words(self.corpus.texts[row], 12)
                try:
                    res = self.router.search_text(
                        self.tenant, self.collection, [query], self.k, key=f"user-{rng.random()}"
                    )
                    found = [int(x) for x in res.ids[0] if x >= 0]
                    req = TextRequest(
                        phase, "search", True, res.version, res.via, len(found), answer in found
                    )
                except VecmigrateError as exc:
                    req = TextRequest(phase, "search", False, error=str(exc))
            elif mine and rng.random() < 0.25:
                victim = mine.pop(rng.randrange(len(mine)))
                try:
                    self.router.delete(self.tenant, self.collection, np.array([victim]))
                    with self._lock:
                        self.deleted.add(victim)
                        self.written.pop(victim, None)
                    req = TextRequest(phase, "delete", True)
                except VecmigrateError as exc:
                    req = TextRequest(phase, "delete", False, error=str(exc))
            else:
                next_id += 1
                text = self.corpus.texts[rng.randrange(len(self.corpus.texts))]
                try:
                    self.router.upsert(
                        self.tenant, self.collection, np.array([next_id]), texts=[text]
                    )
                    with self._lock:
                        self.written[next_id] = text
                    mine.append(next_id)
                    req = TextRequest(phase, "upsert", True)
                except VecmigrateError as exc:
                    req = TextRequest(phase, "upsert", False, error=str(exc))
            req.ms = (time.perf_counter() - began) * 1000
            with self._lock:
                self.requests.append(req)
            time.sleep(0.01)

    def by_phase(self) -> list[PhaseRow]:
        """Per phase, in the order phases were first seen: what was served and how well."""
        rows: dict[str, PhaseRow] = {}
        for r in list(self.requests):
            row = rows.setdefault(r.phase, PhaseRow(r.phase))
            if not r.ok:
                row.failed += 1
            elif r.op != "search":
                row.writes += 1
            else:
                row.searches += 1
                row.hits += int(r.hit)
                row.served[f"{r.version} via {r.via}"] += 1
        return list(rows.values())


@dataclass
class PhaseRow:
    """The traffic of one phase."""

    phase: str
    searches: int = 0
    writes: int = 0
    failed: int = 0
    hits: int = 0
    served: Counter[str] = field(default_factory=Counter)

    @property
    def hit_rate(self) -> float | None:
        return round(self.hits / self.searches, 3) if self.searches else None


def text_demo_spec(
    collection: str, v1: VersionSpec, v2: VersionSpec, adapter: str = "none"
) -> MigrationSpec:
    """The demo's online migration: short shadow and ramp steps, an automatic cut-over."""
    return parse_spec(
        {
            "collection": collection,
            "strategy": "online",
            "source": v1.model_dump(mode="json"),
            "target": v2.model_dump(mode="json"),
            "shards": {"count": 4},
            "batch_size": 1000,
            "gates": {"min_recall": 0.9, "sample_queries": 300},
            "reembed": {"adapter": adapter, "task_queries": 500},
            "online": {
                "settle_seconds": 1.0,
                "shadow": {
                    "percent": 50,
                    "seconds": 3,
                    "min_samples": 20,
                    "min_overlap": 0.2,
                    "max_p99_ratio": 20.0,
                },
                "ramp": {"steps": [10, 50], "step_seconds": 3},
            },
            "cutover": {"mode": "automatic", "bake_seconds": 3},
        }
    )


async def run_text_demo(
    *,
    size: int | None,
    adapter: str,
    old_model_unavailable: bool,
    address: str | None,
    catalog_url: str,
    task_queue: str,
    operator: str,
    console: Console,
) -> tuple[MigrationStatus, int]:
    """Seed, migrate to the new model under text traffic, and print what was served; returns
    the final status and how many requests failed."""
    async with demo_runtime(address, catalog_url, task_queue, console) as (mc, server, address):
        catalog = Catalog(catalog_url)
        console.print("[bold]1. text[/bold] docstrings of the Python standard library ...")
        corpus = await asyncio.to_thread(load_corpus, size)
        old, new = await asyncio.to_thread(fit_models, catalog, corpus, home_dir() / "models")
        store = resolve_store(BuiltinStoreRef())
        v1, v2 = text_versions(store, old, new)
        collection = f"docs-{time.strftime('%Y%m%d-%H%M%S')}"
        console.print(
            f"   {len(corpus.texts):,} records; old model {old.key} ({old.schema.dimension}d, "
            f"{old.schema.metric}), new model {new.key} ({new.schema.dimension}d, "
            f"{new.schema.metric}, unit length)"
        )
        await asyncio.to_thread(seed_texts, catalog, "default", collection, v1, corpus, 4)
        spec = text_demo_spec(collection, v1, v2, adapter)
        if old_model_unavailable:
            # The registry refuses to retire a model a collection still needs: the collection's
            # adapter first (the migration's PREPARING then uses it rather than fit another).
            fitted = await asyncio.to_thread(
                fit_collection_adapter,
                catalog,
                "default",
                collection,
                new.key,
                adapter,
                samples=spec.reembed.adapter_samples,
                ridge_alpha=spec.reembed.ridge_alpha,
            )
            console.print(
                f"   {adapter} adapter {new.key} -> {old.key} fitted on {collection} "
                f"(held-out cosine {fitted.figures.get('held_out_cosine')})"
            )
            Registry(catalog).set_available(old.schema.model_id, old.schema.model_version, False)
            console.print(f"   {old.key} marked unavailable: reads of v1 go through the adapter")
        router = Router(catalog, refresh_seconds=0.5)
        phase = {"now": "BEFORE"}
        traffic = TextTraffic(router, "default", collection, corpus, phase=lambda: phase["now"])
        console.print(
            f"[bold]2. migrating[/bold] {collection} v1 -> v2 online, text traffic on "
            f"{traffic.clients} clients"
        )
        try:
            mid = await mc.start(spec, operator=operator)
            await show_links(mc, server, mid, address, console)
            traffic.start()
            follow = asyncio.ensure_future(_follow(mc, mid, phase))
            final = await watch(mc, mid, console)
            follow.cancel()
            phase["now"] = "AFTER"
            await asyncio.sleep(1.0)
        finally:
            traffic.stop()
            router.close()
            if old_model_unavailable:
                Registry(catalog).set_available(old.schema.model_id, old.schema.model_version, True)
        console.print("[bold]3. report[/bold]")
        console.print(status_tables(final))
        console.print(traffic_table(traffic))
        if final.gates is not None and final.gates.figures is not None:
            console.print(read_options_table(final.gates.figures))
        failed = sum(row.failed for row in traffic.by_phase())
        console.print(f"{len(traffic.requests):,} requests through the router, {failed} failed")
        return final, failed


async def _follow(mc: MigrationClient, mid: str, phase: dict[str, str]) -> None:
    while True:
        with contextlib.suppress(Exception):
            phase["now"] = str((await mc.status(mid)).phase)
        await asyncio.sleep(0.2)


def traffic_table(traffic: TextTraffic) -> Table:
    """Per phase: searches, hit rate of the known item, writes, failures, who answered."""
    table = Table(title="text traffic through the router, per phase")
    for col in ("phase", "searches", "hit@10", "writes", "failed", "answered by"):
        table.add_column(col, justify="left" if col in ("phase", "answered by") else "right")
    for row in traffic.by_phase():
        table.add_row(
            row.phase,
            str(row.searches),
            "" if row.hit_rate is None else f"{row.hit_rate:.3f}",
            str(row.writes),
            str(row.failed),
            ", ".join(f"{n} {who}" for who, n in row.served.most_common()),
        )
    return table


def read_options_table(figures: RetrievalFigures) -> Table:
    """Each way of serving text queries during the re-embedding, side by side."""
    table = Table(
        title=f"read options on {figures.task_queries} known-item queries "
        f"(overlap with {figures.target_model} exact top-{figures.k})"
    )
    for col in ("option", "via", f"overlap@{figures.k}", f"hit@{figures.k}", "MRR", "note"):
        table.add_column(col, justify="right" if col[:1] in "ohM" and col != "option" else "left")
    for o in figures.read_options:
        table.add_row(
            o.name,
            o.via,
            "-" if o.overlap is None else f"{o.overlap:.3f}",
            "-" if o.hit_rate is None else f"{o.hit_rate:.3f}",
            "-" if o.mrr is None else f"{o.mrr:.3f}",
            o.detail,
        )
    return table
