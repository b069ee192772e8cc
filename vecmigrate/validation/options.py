"""The read-options report of a re-embedding migration.

While a collection moves to a new embedding model, a text query can be served three ways: the
old model into the old index (the default until the ramp), the new model into the new index
(where the ramp goes), and, when the old model can no longer run, the new model through an
adapter into the old index. Each is measured on the same known-item queries (the first words of
a record's text; the record is the expected answer):

* ``overlap``: share of the new model's exact top-k the option returns (1.0 is the new model
  searched exactly, the destination of the migration);
* ``hit_rate`` and ``mrr``: how often and how high the record the query came from is found.
"""

from __future__ import annotations

import numpy as np

from vecmigrate.catalog.catalog import Catalog
from vecmigrate.catalog.documents import Documents
from vecmigrate.embedding.reembed import load_adapter
from vecmigrate.embedding.registry import Registry, model_key
from vecmigrate.indexes.build import load_index_version
from vecmigrate.model.gates import ReadOption
from vecmigrate.model.spec import MigrationSpec
from vecmigrate.records.vectors import Ids, Vectors
from vecmigrate.stores import VectorStore
from vecmigrate.validation.retrieval import recall_at_k


def first_words(text: str, n: int) -> str:
    """The first sentence of ``text``, at most ``n`` words."""
    sentence = text.split(". ")[0]
    return " ".join(sentence.split()[:n])


def known_item_queries(
    catalog: Catalog, spec: MigrationSpec, target: VectorStore
) -> tuple[Ids, list[str]]:
    """Records sampled from the target and a query made from each one's text."""
    policy = spec.reembed
    ids, _ = target.sample(policy.task_queries, seed=spec.gates.seed + 3)
    texts = Documents(catalog).get(spec.tenant, spec.collection, ids)
    pairs = [
        (i, first_words(t, policy.query_words))
        for i, t in zip(ids.tolist(), texts, strict=True)
        if t
    ]
    return np.asarray([i for i, _ in pairs], np.int64), [q for _, q in pairs]


def score(found: Ids, truth: Ids, answers: Ids) -> tuple[float, float, float]:
    """(overlap with ``truth``, hit rate of ``answers``, mean reciprocal rank of ``answers``)."""
    hits, rr = [], []
    for row, answer in zip(found.tolist(), answers.tolist(), strict=True):
        rank = row.index(answer) + 1 if answer in row else None
        hits.append(rank is not None)
        rr.append(0.0 if rank is None else 1.0 / rank)
    return recall_at_k(found, truth), float(np.mean(hits)), float(np.mean(rr))


def read_options(
    catalog: Catalog,
    spec: MigrationSpec,
    source: VectorStore,
    target: VectorStore,
    source_index: str | None,
    target_index: str,
) -> tuple[int, list[ReadOption]]:
    """How many known-item queries were run, and each read option's figures on them."""
    k = spec.gates.k
    registry = Registry(catalog)
    s_emb, t_emb = spec.source.embedding, spec.target.embedding
    answers, queries = known_item_queries(catalog, spec, target)
    if not queries:
        return 0, []
    new = registry.embedder(t_emb).embed_queries(queries)
    _, truth = target.search(new, k, metric=str(t_emb.metric))

    def old_side(q: Vectors) -> Ids:
        if source_index is None:
            return source.search(q, k, metric=str(s_emb.metric))[1]
        return load_index_version(catalog, catalog.get_index(source_index)).search(q, k)[1]

    options: list[ReadOption] = []

    def add(name: str, via: str, found: Ids, detail: str = "") -> None:
        overlap, hit, mrr = score(found, truth, answers)
        options.append(
            ReadOption(
                name=name,
                via=via,
                overlap=round(overlap, 4),
                hit_rate=round(hit, 4),
                mrr=round(mrr, 4),
                detail=detail,
            )
        )

    new_index = load_index_version(catalog, catalog.get_index(target_index))
    add("new", f"{model_key(t_emb)} -> new index", new_index.search(new, k)[1])
    if registry.runnable(s_emb):
        old = registry.embedder(s_emb).embed_queries(queries)
        add("old", f"{model_key(s_emb)} -> old index", old_side(old))
    else:
        options.append(
            ReadOption(
                name="old",
                via=f"{model_key(s_emb)} -> old index",
                detail=f"model {model_key(s_emb)} is unavailable",
            )
        )
    for record in registry.adapters_into(s_emb, spec.tenant, spec.collection):
        if record.from_model != model_key(t_emb):
            continue
        mapped = load_adapter(record)(new)
        add(
            f"adapter-{record.method}",
            f"{model_key(t_emb)} -> {record.method} map -> old index",
            old_side(mapped),
            detail=f"fit on {record.figures.get('samples')} pairs, held-out cosine "
            f"{record.figures.get('held_out_cosine')}",
        )
    return len(queries), options
