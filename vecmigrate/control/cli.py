"""The ``vecmigrate`` command: what each subcommand does (their flags: ``arguments``)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from rich.console import Console
from sqlalchemy.exc import SQLAlchemyError
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
from temporalio.service import RPCError, RPCStatusCode

from vecmigrate.catalog.catalog import Catalog
from vecmigrate.config import (
    CATALOG_ENV,
    HOME_ENV,
    build_threads_default,
    catalog_url,
    home_dir,
    resolve_spec,
    sqlite_path,
)
from vecmigrate.control import admin
from vecmigrate.control.apply import DirectoryPlan, Step, plan_directory
from vecmigrate.control.arguments import CONNECTION_FLAGS, SIGNAL_COMMANDS, parser
from vecmigrate.control.client import MigrationClient, ended_status
from vecmigrate.control.devserver import DevServer, DevServerError, cancel_on_sigterm
from vecmigrate.control.ledgeraudit import history_anchors
from vecmigrate.control.plan import Plan, plan_migration
from vecmigrate.control.report import (
    SHARD_ROWS,
    cost_tables,
    gate_tables,
    ledger_table,
    migration_costs,
    plan_table,
    reconcile_table,
    regional_table,
    status_tables,
    tuning_table,
)
from vecmigrate.errors import PreconditionError, VecmigrateError
from vecmigrate.model.gates import GateReport, ReconcileReport
from vecmigrate.model.lifecycle import Phase
from vecmigrate.model.regions import RegionalStatus
from vecmigrate.model.spec import MigrationSpec, load_spec, parse_spec
from vecmigrate.model.status import BudgetState, MigrationStatus
from vecmigrate.model.tuning import TuningResult
from vecmigrate.security.scrub import scrub
from vecmigrate.serving import command as serve_command
from vecmigrate.stores.probes import describe_store, redacted
from vecmigrate.telemetry.logs import run_program
from vecmigrate.telemetry.setup import Telemetry, current
from vecmigrate.workers.connection import (
    TemporalSettings,
    connect,
    connect_options,
    default_address,
    default_task_queue,
)

err = Console(stderr=True)
out = Console()


def _operator() -> str:
    try:
        return os.environ.get("VECMIGRATE_OPERATOR") or getpass.getuser()
    except Exception:
        return "unknown"


def _settings(args: argparse.Namespace) -> TemporalSettings:
    fields = (flag[2:].replace("-", "_") for flag in CONNECTION_FLAGS)
    return TemporalSettings(**{name: getattr(args, name) for name in fields})


async def _client(args: argparse.Namespace) -> MigrationClient:
    settings = _settings(args)
    address = connect_options(settings)["target_host"]
    try:
        client = await connect(settings=settings)
    except VecmigrateError:
        raise
    except Exception as exc:
        raise VecmigrateError(
            f"cannot reach Temporal at {address} ({scrub(str(exc))}); start one with "
            "`vecmigrate dev`, or set TEMPORAL_ADDRESS or a profile"
        ) from None
    return MigrationClient(client, args.task_queue or default_task_queue())


def _catalog_url(args: argparse.Namespace) -> str:
    """The catalog this command uses; a note when an earlier release's catalog sits here."""
    return catalog_url(args.catalog, lambda hint: err.print(f"[yellow]note:[/yellow] {hint}"))


def _open_catalog(url: str) -> Catalog:
    try:
        return Catalog(url)
    except SQLAlchemyError as exc:
        cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise VecmigrateError(
            f"cannot open the catalog at {redacted(url)}: {cause}; check --catalog or "
            f"${CATALOG_ENV}"
        ) from None


def _no_catalog(url: str) -> str:
    return (
        f"no catalog at {redacted(url)}: nothing has been seeded or migrated with it. The "
        f"vecmigrate home is {home_dir()} (set ${HOME_ENV} to move it), or name the catalog "
        f"with --catalog or ${CATALOG_ENV}"
    )


def _catalog(args: argparse.Namespace) -> Catalog:
    """The catalog, created if it does not exist (commands that write to it)."""
    return _open_catalog(_catalog_url(args))


def _existing_catalog(url: str) -> Catalog | None:
    """The catalog if it exists (None for a SQLite file that does not): commands that only
    read must not create one, least of all in a place the user did not mean."""
    path = sqlite_path(url)
    if path is not None and not path.exists():
        return None
    return _open_catalog(url)


def _read_catalog(args: argparse.Namespace) -> Catalog:
    url = _catalog_url(args)
    catalog = _existing_catalog(url)
    if catalog is None:
        raise VecmigrateError(_no_catalog(url))
    return catalog


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
        "catalog_url": _catalog_url(args),
        "task_queue": args.task_queue or default_task_queue(),
        "operator": args.operator or _operator(),
        "console": out,
    }


async def _demo_text(args: argparse.Namespace) -> int:
    from vecmigrate.control.textdemo import run_text_demo

    if args.old_model_unavailable and args.adapter == "none":
        raise VecmigrateError("--old-model-unavailable needs --adapter procrustes or ridge")
    final, failed = await run_text_demo(
        size=args.size,
        adapter=args.adapter,
        old_model_unavailable=args.old_model_unavailable,
        **_runtime(args),
    )
    return 0 if final.phase == "COMPLETED" and not failed else 1


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

    command = args.model_command
    registry = Registry(_read_catalog(args) if command == "list" else _catalog(args))
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
                        "adapters": [a.__dict__ for a in registry.all_adapters()],
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
    if command == "fit-adapter":
        from vecmigrate.embedding.reembed import fit_collection_adapter

        tenant, _, collection = args.collection.rpartition("/")
        if not tenant:
            raise VecmigrateError(
                f"name the collection as TENANT/COLLECTION, not {args.collection!r}"
            )
        fitted = await asyncio.to_thread(
            fit_collection_adapter,
            registry.catalog,
            tenant,
            collection,
            args.from_model,
            args.method,
            samples=args.samples,
        )
        out.print(
            f"fitted {fitted.id}: {fitted.figures.get('samples')} pairs, held-out cosine "
            f"{fitted.figures.get('held_out_cosine')}; it serves {tenant}/{collection} only"
        )
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
    catalog = _catalog_url(args)
    out.print(f"Temporal dev server on {server.address}; UI at {server.ui_url}")
    out.print(
        f"worker on task queue {args.task_queue or default_task_queue()}, catalog "
        f"{redacted(catalog)}"
    )
    out.print(f"export TEMPORAL_ADDRESS={server.address}   # for other shells; Ctrl-C stops")
    try:
        await run_worker(
            server.address, args.task_queue or default_task_queue(), catalog, http=args.http
        )
    finally:
        server.stop()
    return 0


async def _worker(args: argparse.Namespace) -> int:
    from vecmigrate.workers.main import run_worker

    queue = args.task_queue or (
        f"vecmigrate-{args.region}" if args.region else default_task_queue()
    )
    await run_worker(
        args.address,
        queue,
        _catalog_url(args),
        concurrency=args.concurrency,
        region=args.region,
        settings=_settings(args),
        http=args.http,
        build_threads=build_threads_default() if args.build_threads is None else args.build_threads,
    )
    return 0


async def _seed(args: argparse.Namespace) -> int:
    from vecmigrate.control.demo import demo_data, demo_versions, seed_with_progress

    if args.for_spec is not None:
        return await _seed_for(args)
    if args.collection is None:
        raise VecmigrateError("name the collection to create with --collection (or use --for SPEC)")
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


async def _inspect(args: argparse.Namespace) -> int:
    from vecmigrate.control.inspect import as_json, engine_of, inspect, inventory_tables

    engine = args.engine or engine_of(args.url)
    inventory, ref = await asyncio.to_thread(
        inspect, engine, args.url, args.name, secret=args.api_key, samples=args.samples
    )
    if args.json:
        print(json.dumps(as_json(inventory, ref), indent=2, default=str))
    else:
        out.print(inventory_tables(inventory, ref))
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


async def _seed_for(args: argparse.Namespace) -> int:
    from vecmigrate.control.seeding import seed_spec_source

    spec = resolve_spec(load_spec(args.for_spec))
    catalog = _catalog(args)
    err.print(f"seeding {spec.collection}@{spec.source.name} for {args.for_spec} ...")
    seeded = await asyncio.to_thread(
        lambda: seed_spec_source(
            catalog, spec, args.size, shards=args.shards, actor=args.operator or _operator()
        )
    )
    for s in seeded:
        err.print(
            f"seeded {s.tenant}/{s.collection}@{s.version.name}: {s.count:,} records ({s.data}) "
            f"in the {describe_store(s.version.store)}, indexed with {s.version.index.kind}"
        )
    return 0


def _planned(args: argparse.Namespace, spec: MigrationSpec) -> Plan:
    """The plan of ``spec``, against the catalogs named on the command line (none created)."""
    url = _catalog_url(args)
    catalog = _existing_catalog(url)
    given: dict[str, str] = {}
    for item in args.region_catalog:
        name, sep, region_url = item.partition("=")
        if not sep or not name or not region_url:
            raise VecmigrateError(f"--region-catalog takes REGION=URL, not {item!r}")
        given[name] = region_url
    unknown = sorted(set(given) - {r.name for r in spec.regions})
    if unknown:
        raise VecmigrateError(
            f"--region-catalog names {unknown}, which the spec's regions do not "
            f"({[r.name for r in spec.regions]})"
        )

    def catalog_for(region: str | None) -> Catalog:
        region_url = given.get(region or "", url)
        found = _existing_catalog(region_url) if region_url != url else catalog
        if found is None:
            raise VecmigrateError(_no_catalog(region_url))
        return found

    return plan_migration(catalog, spec, catalog_for)


async def _plan(args: argparse.Namespace) -> int:
    if Path(args.spec).is_dir():
        directory = plan_directory(_read_catalog(args), Path(args.spec))
        _print_directory(directory, args.json)
        return 0 if directory.ok else 1
    spec = resolve_spec(load_spec(args.spec))
    if spec.schedule is not None:
        # A schedule's template: what a firing now would migrate, and that migration's plan.
        from datetime import UTC, datetime

        from vecmigrate.control.report import firing_line
        from vecmigrate.data.scheduling import plan_firing

        firing = plan_firing(_read_catalog(args), spec, datetime.now(UTC))
        err.print(f"a firing now would: {firing_line(firing)}", soft_wrap=True, markup=False)
        if firing.spec is None:
            return 1 if firing.outcome == "refused" else 0
        spec = MigrationSpec.model_validate(firing.spec)
    plan = _planned(args, spec)
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
    if args.deep:
        spec = spec.model_copy(update={"gates": spec.gates.model_copy(update={"deep": True})})
    plan = _planned(args, spec)
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
    if st.phase in (Phase.BACKFILLING, Phase.BUILDING_INDEX):  # the phases a budget paces
        st.budget = _budget_state(args, st.migration_id)
    if args.json:
        print(st.model_dump_json(indent=2))
    else:
        out.print(status_tables(st))
    return 0


def _budget_state(args: argparse.Namespace, migration_id: str) -> BudgetState | None:
    """Where the migration's latency budget stands, from the catalog (None: no budget, or no
    catalog here to read it from)."""
    from vecmigrate.catalog.latency import Latencies

    catalog = _existing_catalog(_catalog_url(args))
    return None if catalog is None else Latencies(catalog).budget(migration_id)


async def _watch(args: argparse.Namespace) -> int:
    from vecmigrate.control.progress import watch

    mc = await _client(args)
    args.id = await mc.migration_of(args.id)
    final = await watch(mc, args.id, out)
    out.print(status_tables(final))
    return 0


# What can still be done once a migration has ended, by the phase it ended in.
_AFTER = {
    Phase.COMPLETED: "{source} is retained. `vecmigrate report {mid}` and `vecmigrate log {mid} "
    "--verify` show what it did; to go back, migrate again from {target} to a new version",
    Phase.ROLLED_BACK: "{target} was abandoned. `vecmigrate report {mid}` shows the gates and "
    "`vecmigrate log {mid}` who did what; once the cause is fixed, start a migration to a new "
    "target version name",
    Phase.ABORTED: "The routing is as the abort found it (`vecmigrate log {mid}` shows the last "
    "change); `vecmigrate start SPEC` runs the same migration again",
}


async def _ended(mc: MigrationClient, mid: str) -> str | None:
    """How a migration that has finished ended and what can still be done (None: it runs).

    Raises:
        RPCError: no such migration (NOT_FOUND), or Temporal unreachable.
    """
    handle = mc.client.get_workflow_handle(mid)
    desc = await handle.describe()
    if desc.status is None or desc.status == WorkflowExecutionStatus.RUNNING:
        return None
    when = f" at {desc.close_time:%Y-%m-%d %H:%M:%S} UTC" if desc.close_time else ""
    regional = desc.workflow_type == "RegionalMigrationWorkflow"
    final: MigrationStatus | RegionalStatus | None = None
    failure = ""
    try:
        result = await handle.result()
        final = (RegionalStatus if regional else MigrationStatus).model_validate(result)
    except WorkflowFailureError as exc:
        final = (
            ended_status(exc, RegionalStatus) if regional else ended_status(exc, MigrationStatus)
        )
        failure = str(getattr(exc.cause, "message", "") or exc.cause or exc)
    if final is not None and final.phase in _AFTER:
        source = getattr(final, "source_version", "") or "the source version"
        target = getattr(final, "target_version", "") or "the target version"
        how = final.outcome or str(final.phase).lower().replace("_", " ")
        after = _AFTER[final.phase].format(mid=mid, source=source, target=target)
        return f"migration {mid} has finished{when}: {how}. {after}"
    status = desc.status.name.lower().replace("_", " ")
    return (
        f"migration {mid} has finished{when}: its workflow {status}"
        + (f" ({failure})" if failure else "")
        + f". `temporal workflow show --workflow-id {mid}` shows where it stopped and "
        f"`vecmigrate log {mid}` the last routing change; `vecmigrate start SPEC` runs it "
        "again once the cause is fixed"
    )


async def _steer(
    mc: MigrationClient, mid: str, what: str, send: Callable[[], Coroutine[Any, Any, Any]]
) -> Any:
    """Send a signal or update to a running migration; a finished one says how it ended."""
    ended = await _ended(mc, mid)
    if ended is None:
        try:
            return await send()
        except RPCError as exc:
            # It may have ended in between.
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            ended = await _ended(mc, mid)
            if ended is None:
                raise
    raise VecmigrateError(f"{ended}. {what} does nothing now")


async def _signal(args: argparse.Namespace) -> int:
    mc = await _client(args)
    name = SIGNAL_COMMANDS[args.command]
    await _steer(
        mc,
        args.id,
        f"`vecmigrate {args.command}`",
        lambda: mc.signal(
            args.id,
            name,
            operator=args.operator or _operator(),
            reason=args.reason,
            region=getattr(args, "region", None),
            preapprove=getattr(args, "preapprove", False),
            revalidate=getattr(args, "revalidate", False),
        ),
    )
    err.print(f"sent {name} to {args.id} (`vecmigrate status {args.id}` shows what it did)")
    return 0


async def _gate(args: argparse.Namespace) -> int:
    mc = await _client(args)
    failing = await _steer(
        mc,
        args.id,
        "`vecmigrate gate`",
        lambda: mc.set_gate(
            args.id,
            args.gate,
            threshold=args.threshold,
            override=args.override,
            operator=args.operator or _operator(),
            reason=args.reason,
        ),
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
        now = await _steer(
            mc,
            args.id,
            "`vecmigrate throttle`",
            lambda: mc.set_throttle(
                args.id, rate, operator=args.operator or _operator(), reason=args.reason
            ),
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


async def _stable_name(args: argparse.Namespace) -> int:
    from vecmigrate.data import stablename

    spec = resolve_spec(load_spec(args.spec))
    if spec.cutover.stable_name is None:
        raise VecmigrateError(f"{args.spec} sets no cutover.stable_name: nothing to prepare")
    if args.stable_command == "show":
        now = await asyncio.to_thread(stablename.state, spec)
        if args.json:
            print(json.dumps(now.__dict__, indent=2))
        else:
            print(now.detail)
        return 1 if now.needs else 0
    switch = await asyncio.to_thread(stablename.prepare, spec, undo=args.undo)
    catalog = _existing_catalog(_catalog_url(args))
    if catalog is not None and switch.changed:
        # Kept in the collection's ledger: who prepared (or undid) it, from what, to what.
        catalog.append(
            tenant=spec.tenant,
            collection=spec.collection,
            kind=stablename.PREPARED_KIND,
            actor=args.operator or _operator(),
            data={**switch.model_dump(mode="json"), "undo": args.undo},
            migration_id=spec.migration_id,
        )
    if args.json:
        print(json.dumps(switch.model_dump(mode="json"), indent=2))
    elif not switch.changed:
        print(f"{switch.kind} {switch.name}: nothing to do (it points at {switch.after})")
    elif args.undo:
        print(f"{switch.kind} {switch.name} removed (it pointed at {switch.before})")
    else:
        print(
            f"{switch.kind} {switch.name} now points at {switch.after}: move applications "
            "to it before the migration"
        )
    return 0


async def _gc(args: argparse.Namespace) -> int:
    from vecmigrate.control.report import gc_table
    from vecmigrate.data.retention import gc

    if args.version is not None and args.collection is None:
        raise VecmigrateError("--version names a version of one collection: add --collection")
    ended: set[str] = set()
    if args.ended:
        mc = await _client(args)
        for migration_id in args.ended:
            desc = await mc.handle(migration_id).describe()
            if desc.status is None or desc.status == WorkflowExecutionStatus.RUNNING:
                raise VecmigrateError(f"--ended {migration_id}: its execution is still running")
            ended.add(migration_id)
    report = await asyncio.to_thread(
        gc,
        _catalog(args),
        args.operator or _operator(),
        tenant=args.tenant or ("default" if args.version else None),
        collection=args.collection,
        version=args.version,
        dry_run=args.dry_run,
        ignore_retention=args.ignore_retention,
        ended=frozenset(ended),
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
                    "streamed_removed": report.streamed_removed,
                    "streamed_bytes_removed": report.streamed_bytes_removed,
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
    catalog = _read_catalog(args)
    args.id = await _migration_id(args, catalog)
    if not catalog.knows_migration(args.id):
        raise VecmigrateError(
            f"no migration {args.id!r} in the catalog at {catalog.url} (check the id: a "
            "migration id is its workflow id or a schedule firing's, not a schedule's or a run's)"
        )
    entries = catalog.entries(args.id)
    if args.json:
        print(json.dumps([e.__dict__ for e in entries], indent=2, default=str))
    else:
        out.print(ledger_table(entries))
    if not args.verify:
        return 0
    history: list[tuple[int, str]] | None = None
    unreachable = ""
    if not args.without_history:
        try:
            history = await history_anchors((await _client(args)).client, args.id)
        except (VecmigrateError, RPCError) as exc:
            unreachable = (
                f"the anchors in Temporal's history of {args.id} cannot be checked "
                f"({scrub(str(exc))})"
            )
    verdict = catalog.audit_ledger(history=history, migration_id=args.id)
    if unreachable:
        verdict.unverified.append(unreachable)
    for note in verdict.notes:
        err.print(f"note: {note}")
    for problem in verdict.problems:
        err.print(f"[red]{problem}[/red]")
    for reason in verdict.unverified:
        err.print(f"[yellow]unverified[/yellow]: {reason}")
    if verdict.problems:
        err.print(f"[red]ledger tampered with[/red]: {len(verdict.problems)} problems")
        return 1
    if verdict.unverified:
        err.print("[yellow]ledger unverified[/yellow]: nothing found wrong, but see above")
        return 3
    anchored = "" if history is None else f", {len(history)} anchored in Temporal's history"
    skipped = " (Temporal's history not consulted)" if args.without_history else ""
    err.print(
        f"[green]ledger intact[/green]: {verdict.entries} entries chained and MACed, "
        f"signed anchors match{anchored}{skipped}"
    )
    return 0


async def _report(args: argparse.Namespace) -> int:
    catalog = _read_catalog(args)
    args.id = await _migration_id(args, catalog)
    if args.html:
        return await _html_report(args, catalog)
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
        reconciled = catalog.latest(args.id, "reconcile")
        if reconciled is not None:
            out.print(reconcile_table(ReconcileReport.model_validate(reconciled.data)))
        out.print(gate_tables(report, migration["source_version"], migration["target_version"]))
        tuned = catalog.latest(args.id, "tuning.chosen")
        if tuned is not None:
            out.print(tuning_table(TuningResult.model_validate(tuned.data)))
        out.print(cost_tables(costs))
    return 0 if report.passed else 1


async def _diff(args: argparse.Namespace) -> int:
    from vecmigrate.control.diff import run_diff
    from vecmigrate.model.gates import ShardReconcile

    rate = args.max_records_per_second
    if rate is not None and not (rate > 0 and rate != float("inf")):
        raise VecmigrateError(f"--max-records-per-second takes a positive number, not {rate}")
    spec = resolve_spec(load_spec(args.spec))
    if args.regions is not None:
        return _region_diff(args, spec)
    if args.tenant is not None:
        raise VecmigrateError("--tenant goes with --regions")

    def tell(result: ShardReconcile, before: bool) -> None:
        how = (
            "compared before (--restart compares it again)"
            if before
            else (
                f"{result.source_records:,} / {result.target_records:,} records in "
                f"{result.seconds:.2f} s"
            )
        )
        err.print(
            f"shard {result.shard}: found {result.found.line()}; repaired "
            f"{result.repaired.line()}; {how}",
            markup=False,
            soft_wrap=True,
        )

    report, results = run_diff(
        _read_catalog(args),
        spec,
        source=args.source,
        target=args.target,
        repair=args.repair,
        max_records_per_second=rate,
        state_path=Path(args.state) if args.state else None,
        restart=args.restart,
        on_shard=None if args.json else tell,
    )
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        shown = results if len(results) <= SHARD_ROWS else None
        out.print(reconcile_table(report, shown))
        if not report.vectors_compared:
            out.print("vectors were not compared: the versions hold vectors of different models")
    return 0 if report.passed else 1


def _region_diff(args: argparse.Namespace, spec: MigrationSpec) -> int:
    from vecmigrate.control.diff import run_region_diff
    from vecmigrate.control.report import divergence_table

    mixed = [
        flag
        for flag, on in (
            ("--source", args.source),
            ("--target", args.target),
            ("--repair", args.repair),
            ("--state", args.state),
            ("--restart", args.restart),
        )
        if on
    ]
    if mixed:
        raise VecmigrateError(
            f"--regions compares two regions' copies of the target: leave out {', '.join(mixed)}"
        )
    regions = [r.strip() for r in args.regions.split(",") if r.strip()]
    report, bound, given = run_region_diff(
        spec, regions, tenant=args.tenant, max_records_per_second=args.max_records_per_second
    )
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        out.print(divergence_table(report, bound, given))
    return 0 if report.passed else 1


async def _where(args: argparse.Namespace) -> int:
    url = _catalog_url(args)
    path = sqlite_path(url)
    rows = [
        ("home", f"{home_dir()}" + ("" if os.environ.get(HOME_ENV) else " (user data directory)")),
        ("catalog", redacted(url) + (" (not created yet)" if path and not path.exists() else "")),
        ("temporal", args.address or default_address()),
        ("task queue", args.task_queue or default_task_queue()),
    ]
    for name, value in rows:
        print(f"{name:<11} {value}")  # one line each, never wrapped: scripts read it
    return 0


async def _html_report(args: argparse.Namespace, catalog: Catalog) -> int:
    from vecmigrate.control.htmlreport import ReportData, render
    from vecmigrate.model.spec import MigrationSpec

    spec = MigrationSpec.model_validate(catalog.get_migration(args.id)["spec"])
    status = None
    try:
        mc = await asyncio.wait_for(_client(args), 10)
        status = await asyncio.wait_for(mc.status(args.id), 20)
    except (VecmigrateError, RPCError, TimeoutError) as exc:
        err.print(f"[yellow]no live status[/yellow] ({exc}); the report uses the ledger alone")
    page = await asyncio.to_thread(
        render, ReportData(args.id, catalog.entries(args.id), spec=spec, status=status)
    )
    try:
        with open(args.html, "w", encoding="utf-8") as f:
            f.write(page)
    except OSError as exc:
        raise VecmigrateError(f"cannot write {args.html}: {exc.strerror}") from None
    err.print(f"wrote {args.html} ({len(page) // 1024:,} KiB)")
    return 0


async def _list(args: argparse.Namespace) -> int:
    from vecmigrate.control.listing import Filters, list_migrations, list_query, migrations_table

    filters = Filters(
        phase=args.phase,
        collection=args.collection,
        tenant=args.tenant,
        strategy=args.strategy,
        region=args.region,
        running=True if args.running else False if args.finished else None,
    )
    if args.show_query:
        print(list_query(filters))
        return 0
    mc = await _client(args)
    rows = await list_migrations(mc.client, filters, limit=args.limit)
    if args.json:
        print(json.dumps([r.__dict__ for r in rows], indent=2, default=str))
        return 0
    out.print(migrations_table(rows))
    return 0


async def _doctor(args: argparse.Namespace) -> int:
    from vecmigrate.control.doctor import as_json, diagnose
    from vecmigrate.workers.connection import NAMESPACE_ENV

    queues = [args.task_queue or default_task_queue(), *(f"vecmigrate-{r}" for r in args.region)]
    findings = await diagnose(
        args.address or default_address(),
        args.namespace or os.environ.get(NAMESPACE_ENV) or "default",
        _catalog_url(args),
        queues,
    )
    if args.json:
        print(json.dumps(as_json(findings), indent=2))
    else:
        for f in findings:
            mark = (
                "[green]ok[/green]  "
                if f.ok
                else ("[yellow]warn[/yellow]" if f.severity == "warning" else "[red]FAIL[/red]")
            )
            out.print(f"{mark} {f.check}: {f.detail}", highlight=False)
            if not f.ok and f.fix:
                for line in f.fix.splitlines():
                    out.print(f"       fix: {line}", highlight=False, soft_wrap=True)
    failed = [f for f in findings if not f.ok and f.severity == "error"]
    return 1 if failed else 0


COMMANDS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "demo": _demo,
    "demo-text": _demo_text,
    "model": _model,
    "dev": _dev,
    "worker": _worker,
    "seed": _seed,
    "inspect": _inspect,
    "plan": _plan,
    "apply": _apply,
    "start": _start,
    "status": _status,
    "watch": _watch,
    "log": _log,
    "serve": serve_command.serve,
    "report": _report,
    "diff": _diff,
    "throttle": _throttle,
    "gate": _gate,
    "schedule": _schedule,
    "gc": _gc,
    "stable-name": _stable_name,
    "where": _where,
    "list": _list,
    "doctor": _doctor,
    **dict.fromkeys(SIGNAL_COMMANDS, _signal),
    **admin.COMMANDS,
}


def _telemetry(args: argparse.Namespace) -> Telemetry:
    """Set up the process's telemetry and logging for its command: a worker's and the gateway's
    serve metrics; every command traces when OTEL_* says so (a `start` joins its migration's
    trace)."""
    from vecmigrate.telemetry.logs import configure_logging
    from vecmigrate.telemetry.setup import configure, install

    if args.command == "serve":
        return serve_command.set_up(args)
    if args.command in ("worker", "dev"):
        from vecmigrate.workers.main import worker_telemetry

        configure_logging(args.log_format)
        args.http = worker_telemetry(args.http)
        return current()
    return install(configure("vecmigrate-cli"), set_global=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``vecmigrate`` command."""
    execute(parser().parse_args(argv))


def execute(args: argparse.Namespace) -> None:
    """Run the command ``args`` (from :func:`~vecmigrate.control.arguments.parser`) names, then
    exit with its code."""
    try:
        _telemetry(args)
        code: int = asyncio.run(COMMANDS[args.command](args))
    except (VecmigrateError, DevServerError) as exc:
        err.print(f"[red]error:[/red] {scrub(str(exc))}")
        code = 2
    except RPCError as exc:
        hint = {
            RPCStatusCode.NOT_FOUND: "no such migration (the id is the workflow id)",
            RPCStatusCode.UNAVAILABLE: "Temporal is unreachable; check --address",
        }.get(exc.status, "")
        err.print(f"[red]error:[/red] {scrub(exc.message)}" + (f" ({hint})" if hint else ""))
        code = 2
    except KeyboardInterrupt:
        code = 130
    current().shutdown()  # export the spans still batched
    sys.stdout.flush()
    sys.exit(code)


def run() -> None:
    """The ``vecmigrate`` program: :func:`main`, in the way
    :func:`~vecmigrate.telemetry.logs.run_program` runs a program (``python -m vecmigrate`` and
    the installed command start ``serve`` from :mod:`vecmigrate.serving.command` instead)."""
    run_program(main)
