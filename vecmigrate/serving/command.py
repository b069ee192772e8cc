"""``vecmigrate serve``: the gateway's flags, what the command does, and its own start.

``vecmigrate serve`` starts here rather than in the ``vecmigrate`` command's module, which imports
every command's libraries (Temporal's client among them). A gateway process keeps what it imports
for its whole life, and each full garbage collection walks all of it while requests wait: started
from here it imports only what serving needs (``bench/gateway_footprint.py`` measures both). The
``vecmigrate`` command keeps ``serve`` among its commands with the same flags, from this module;
reading them imports nothing of serving's (the catalog's configuration and telemetry load when
the gateway starts).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from vecmigrate.errors import VecmigrateError
from vecmigrate.security.scrub import scrub
from vecmigrate.telemetry.logs import configure_logging, log_format_flag, run_program

if TYPE_CHECKING:
    from vecmigrate.telemetry.setup import Telemetry

HELP = "the HTTP gateway applications search and write through"

err = Console(stderr=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``vecmigrate serve``."""
    p.add_argument(
        "--catalog",
        default=None,
        help="the catalog's SQLAlchemy URL (default: as for every command; `vecmigrate where`)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default: 8080)")
    p.add_argument(
        "--refresh", type=float, default=1.0, help="seconds between reads of the routing row"
    )
    p.add_argument(
        "--credentials",
        default=None,
        help="API keys and JWT settings callers authenticate with (`vecmigrate keys api-key`)",
    )
    p.add_argument(
        "--no-auth",
        action="store_true",
        help="serve without authentication (loopback addresses only)",
    )
    p.add_argument("--tls-cert", default=None, help="serve HTTPS with this certificate")
    p.add_argument("--tls-key", default=None, help="... and this key")
    p.add_argument("--tls-client-ca", default=None, help="require client certificates it signed")
    p.add_argument("--max-body", type=int, default=64 * 1024 * 1024, help="bytes per request")
    p.add_argument(
        "--read-timeout", type=float, default=10.0, help="seconds a request body may take"
    )
    p.add_argument(
        "--name",
        action="append",
        default=[],
        metavar="NAME=TENANT/COLLECTION",
        help="serve a collection under its stable name as well, at /v1/_name/NAME (the names "
        "of the catalog's migrations and of `vecmigrate stable-name prepare` are served without "
        "it); repeatable",
    )
    p.add_argument(
        "--no-preload",
        action="store_true",
        help="load a collection's indexes on its first request rather than before serving "
        "(a catalog of many collections this gateway never serves)",
    )
    log_format_flag(p)


async def serve(args: argparse.Namespace) -> int:
    """Check the flags, then serve until stopped.

    Raises:
        VecmigrateError: flags that do not go together, or a gateway that cannot start.
    """
    from vecmigrate.config import catalog_url
    from vecmigrate.security.credentials import Credentials
    from vecmigrate.serving.asgi import TlsFiles
    from vecmigrate.serving.gateway import Gateway
    from vecmigrate.serving.names import parse_names

    names = parse_names(args.name)
    if (args.credentials is None) == (not args.no_auth):
        raise VecmigrateError(
            "give --credentials (API keys or JWT settings: `vecmigrate keys api-key`), or "
            "--no-auth to serve without authentication on a loopback address"
        )
    if args.no_auth:
        try:
            loopback = ipaddress.ip_address(args.host).is_loopback
        except ValueError:
            loopback = args.host == "localhost"
        if not loopback:
            raise VecmigrateError(
                f"--no-auth on {args.host} would let anyone who reaches it read and write every "
                "tenant's collections; serve on 127.0.0.1, or give --credentials"
            )
    if bool(args.tls_cert) != bool(args.tls_key):
        raise VecmigrateError("--tls-cert and --tls-key go together")
    tls = None
    if args.tls_cert:
        client_ca = Path(args.tls_client_ca) if args.tls_client_ca else None
        tls = TlsFiles(Path(args.tls_cert), Path(args.tls_key), client_ca)
    gateway = Gateway(
        catalog_url(args.catalog, note),
        host=args.host,
        port=args.port,
        refresh=args.refresh,
        credentials=Credentials.load(args.credentials) if args.credentials else None,
        tls=tls,
        max_body=args.max_body,
        read_timeout=args.read_timeout,
        names=names,
        preload=not args.no_preload,
    )
    auth = "no authentication" if args.no_auth else f"credentials from {args.credentials}"
    if not args.no_preload:
        err.print(
            "loading every routed collection's indexes before serving "
            "(--no-preload loads each on its first request)"
        )
    err.print(
        f"vecmigrate gateway on {gateway.url} ({auth}; GET /health, /openapi.json, "
        "POST /v1/TENANT/COLLECTION/search|upsert|delete, or /v1/_name/NAME/... by stable name)"
    )
    await gateway.serve()
    return 0


def note(message: str) -> None:
    """A note to whoever started the command (not an error)."""
    err.print(f"[yellow]note:[/yellow] {message}")


def set_up(args: argparse.Namespace) -> Telemetry:
    """The gateway process's logging (``--log-format``) and telemetry: metrics served for
    Prometheus by default, traces when ``OTEL_*`` says so.

    Raises:
        ConfigurationError: an unknown log format or level.
    """
    from vecmigrate.telemetry.setup import configure, install

    configure_logging(args.log_format)
    return install(configure("vecmigrate-gateway", metrics_default="prometheus"), set_global=True)


def main(argv: list[str] | None = None) -> None:
    """``vecmigrate serve`` with ``argv`` its flags: set up logging and telemetry, then serve."""
    p = argparse.ArgumentParser(prog="vecmigrate serve", description=HELP)
    add_arguments(p)
    args = p.parse_args(argv)
    from vecmigrate.telemetry.setup import current

    try:
        set_up(args)
        code = asyncio.run(serve(args))
    except VecmigrateError as exc:
        err.print(f"[red]error:[/red] {scrub(str(exc))}")
        code = 2
    except KeyboardInterrupt:
        code = 130
    current().shutdown()  # export the spans still batched
    sys.exit(code)


def run(argv: list[str]) -> None:
    """The ``vecmigrate serve`` program (see :func:`~vecmigrate.telemetry.logs.run_program`)."""
    run_program(lambda: main(argv))
