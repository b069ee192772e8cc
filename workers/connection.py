"""How every process reaches Temporal: address, namespace, data converter and interceptors.

Workers, the CLI, the Python client and the harnesses all connect through :func:`connect`.
"""

from __future__ import annotations

import asyncio
import os
import time

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from vecmigrate.workers.telemetry import temporal_runtime, tracing_interceptor

ADDRESS_ENV = "TEMPORAL_ADDRESS"
NAMESPACE_ENV = "TEMPORAL_NAMESPACE"
TASK_QUEUE_ENV = "VECMIGRATE_TASK_QUEUE"
DEFAULT_ADDRESS = "127.0.0.1:7233"
DEFAULT_TASK_QUEUE = "vecmigrate"


def default_address() -> str:
    """``$TEMPORAL_ADDRESS`` (Temporal's own convention) or the local dev server."""
    return os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS


def default_task_queue() -> str:
    """``$VECMIGRATE_TASK_QUEUE`` or ``vecmigrate``."""
    return os.environ.get(TASK_QUEUE_ENV) or DEFAULT_TASK_QUEUE


# What a server that is still starting says: nothing listens yet, or the frontend listens but
# reports itself not healthy (the dev server does for a while on a fresh database).
_STARTING = ("Connection refused", "ConnectionRefused", "not healthy", "Unavailable")


async def connect(
    address: str | None = None, namespace: str | None = None, wait_seconds: float = 0.0
) -> Client:
    """A Temporal client with the pydantic data converter and OpenTelemetry tracing (and the
    SDK's metrics, when the current telemetry records metrics).

    With ``wait_seconds``, a server that is still starting is retried that long: a worker
    started alongside its server (a compose file) waits for it instead of dying before it
    polls. Commands fail at once (the default), and any other failure is raised at once.
    """
    deadline = time.monotonic() + wait_seconds
    delay = 0.2
    while True:
        try:
            return await Client.connect(
                address or default_address(),
                namespace=namespace or os.environ.get(NAMESPACE_ENV) or "default",
                data_converter=pydantic_data_converter,
                interceptors=[tracing_interceptor()],
                runtime=temporal_runtime(),
            )
        except RuntimeError as exc:
            starting = any(mark in str(exc) for mark in _STARTING)
            if not starting or time.monotonic() + delay > deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(2.0, delay * 2)
