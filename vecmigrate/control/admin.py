"""The security administration commands: ``keys``, ``roles`` and ``codec-server``.

``keys`` manages the key ring (``init``, ``list``, ``rotate``, ``rewrap``, ``retire``) and the
gateway's and codec server's API keys (``api-key``). ``roles`` grants and revokes operator roles
and sets the four-eyes rule. ``codec-server`` serves the payload codec to the Temporal UI and
CLI.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from vecmigrate.catalog.catalog import Catalog
from vecmigrate.config import default_catalog_url, home_dir
from vecmigrate.errors import KeyRingError, VecmigrateError
from vecmigrate.indexes.protection import artifact_manifests, protection, rewrap_artifacts
from vecmigrate.model.access import Role
from vecmigrate.security.credentials import Credentials, new_api_key
from vecmigrate.security.keyring import KEYRING_ENV, KeyRing, KeyRingSource

err = Console(stderr=True)
out = Console()

Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


def _source(args: argparse.Namespace, creating: bool = False) -> KeyRingSource:
    reference = args.keyring or os.environ.get(KEYRING_ENV)
    if not reference:
        if not creating:
            raise KeyRingError(
                f"no key ring: set {KEYRING_ENV} (e.g. file:/etc/vecmigrate/keyring.json) or "
                "pass --keyring; `vecmigrate keys init` creates one"
            )
        reference = f"file:{home_dir() / 'keyring.json'}"
    return KeyRingSource(reference)


def _operator(args: argparse.Namespace) -> str:
    return str(args.operator or os.environ.get("VECMIGRATE_OPERATOR") or "vecmigrate keys")


def _extra(args: argparse.Namespace) -> list[Path]:
    return [Path(d) for d in getattr(args, "artifacts", [])]


async def _keys(args: argparse.Namespace) -> int:
    command = args.keys_command
    if command == "api-key":
        return _issue_api_key(args)
    creating = command == "init"
    source = _source(args, creating)
    if creating:
        if source.path is not None and source.path.exists():
            raise KeyRingError(f"{source.path} exists; rotate it instead of replacing it")
        ring = KeyRing.generate()
        source.save(ring)
        out.print(f"created key ring {source.reference} with key {ring.active}")
        out.print(f"export {KEYRING_ENV}={source.reference}   # for workers, CLI and codec server")
        return 0
    catalog = Catalog(args.catalog or default_catalog_url())
    ring = source.current()
    if command == "list":
        counts = await asyncio.to_thread(lambda: protection(artifact_manifests(catalog, [])))
        table = Table(title=f"key ring {source.reference}")
        for column in ("key", "created", "state", "artifacts"):
            table.add_column(column)
        for key_id in sorted(ring.keys):
            state = "active" if key_id == ring.active else "decrypt and verify only"
            table.add_row(key_id, ring.created.get(key_id, ""), state, str(counts[key_id]))
        out.print(table)
        if counts["plaintext"]:
            out.print(f"{counts['plaintext']} artifacts are not encrypted (written without a ring)")
        return 0
    if command == "rotate":
        old = ring.active
        ring = ring.rotated()
        source.save(ring)
        catalog.append(
            tenant="*",
            collection="*",
            kind="keys.rotated",
            actor=_operator(args),
            data={"from": old, "to": ring.active},
        )
        out.print(f"rotated: {ring.active} is active; {old} stays to read what it protected")
        if args.no_rewrap:
            return 0
    if command in ("rotate", "rewrap"):
        changed = await asyncio.to_thread(
            rewrap_artifacts, catalog, ring, _operator(args), _extra(args)
        )
        out.print(f"re-wrapped the data keys of {changed} artifacts under {ring.active}")
        return 0
    # retire
    counts = await asyncio.to_thread(lambda: protection(artifact_manifests(catalog, _extra(args))))
    if counts[args.key_id]:
        raise KeyRingError(
            f"{counts[args.key_id]} artifacts still have data keys wrapped by {args.key_id}: "
            "run `vecmigrate keys rewrap` first"
        )
    source.save(ring.without(args.key_id))
    catalog.append(
        tenant="*",
        collection="*",
        kind="keys.retired",
        actor=_operator(args),
        data={"key": args.key_id, "active": ring.active},
    )
    out.print(
        f"retired {args.key_id}; Temporal payloads it encrypted can no longer be read "
        "(histories past their retention are gone anyway)"
    )
    return 0


async def _roles(args: argparse.Namespace) -> int:
    catalog = Catalog(args.catalog or default_catalog_url())
    command, actor = args.roles_command, _operator(args)
    if command == "grant":
        catalog.grant_role(args.identity, Role(args.role), args.tenant, args.collection, actor)
        out.print(f"{args.identity} is {args.role} on {args.tenant}/{args.collection}")
    elif command == "revoke":
        if not catalog.revoke_role(args.identity, args.tenant, args.collection, actor):
            raise VecmigrateError(
                f"{args.identity} holds no role on {args.tenant}/{args.collection} "
                "(`vecmigrate roles list` shows who does)"
            )
        out.print(f"{args.identity} holds no role on {args.tenant}/{args.collection} any more")
    elif command == "four-eyes":
        catalog.set_four_eyes(args.tenant, args.collection, args.state == "on", actor)
        out.print(f"four-eyes rule {args.state} on {args.tenant}/{args.collection}")
    else:
        policy = catalog.access_policy(args.tenant, args.collection)
        table = Table(title=f"roles in force on {args.tenant}/{args.collection}")
        for column in ("identity", "role", "tenant", "collection"):
            table.add_column(column)
        for b in policy.bindings:
            table.add_row(b.identity, str(b.role), b.tenant, b.collection)
        out.print(table)
        state = "on" if policy.four_eyes else "off"
        none = " (none: every caller may do everything)" if not policy.enforced else ""
        out.print(f"four-eyes rule: {state}{none}")
    return 0


def _issue_api_key(args: argparse.Namespace) -> int:
    path = Path(args.credentials)
    credentials = Credentials.load(path) if path.exists() else Credentials()
    key, stored = new_api_key(args.name, args.tenant, args.collection, args.action)
    credentials.api_keys[stored.id] = stored
    credentials.save(path)
    err.print(
        f"API key {stored.id} for {args.name}: tenants {sorted(stored.tenants)}, collections "
        f"{sorted(stored.collections)}, actions {sorted(stored.actions)}. Shown once; only its "
        f"hash is kept in {path}:"
    )
    print(key)
    return 0


async def _codec_server(args: argparse.Namespace) -> int:
    from vecmigrate.serving.asgi import AsgiServer, TlsFiles
    from vecmigrate.workers.codec_server import codec_app

    if bool(args.tls_cert) != bool(args.tls_key):
        raise VecmigrateError("--tls-cert and --tls-key go together")
    app = codec_app(
        _source(args),
        Credentials.load(args.credentials),
        origins=args.cors_origin,
        namespaces=args.namespace,
    )
    tls = TlsFiles(Path(args.tls_cert), Path(args.tls_key)) if args.tls_cert else None
    server = AsgiServer(app, args.host, args.port, tls=tls)
    err.print(f"codec server on {server.url} (POST /decode, /encode)")
    await server.serve_async()
    return 0


# The handlers of the commands :func:`vecmigrate.control.arguments.parser` adds for them.
COMMANDS: dict[str, Command] = {"keys": _keys, "roles": _roles, "codec-server": _codec_server}
