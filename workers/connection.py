"""How every process reaches Temporal: address, namespace, TLS, API key, identity, converter.

Workers, the CLI, the Python client, the gateway and the harnesses all connect through
:func:`connect`. Settings come, lowest first, from the Temporal CLI's own configuration
(``temporalio.envconfig``: the TOML profiles in ``$TEMPORAL_CONFIG_FILE`` or
``~/.config/temporalio/temporal.toml``, then the ``TEMPORAL_*`` variables: ``TEMPORAL_ADDRESS``,
``TEMPORAL_NAMESPACE``, ``TEMPORAL_API_KEY``, ``TEMPORAL_TLS_*``), then from
:class:`TemporalSettings` (the CLI's flags). An API key given to vecmigrate directly is a secret
reference (``--api-key env:NAME``), resolved here.

Payloads are encrypted by the key ring's codec when ``$VECMIGRATE_KEYRING`` names one; failures
are always scrubbed of credentials. Every start, signal and update carries the connection's
identity in the ``vecmigrate-caller`` header, next to whatever operator name its input declares.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID
from temporalio import client as temporal_client
from temporalio.api.common.v1 import Payload
from temporalio.client import Client, OutboundInterceptor
from temporalio.converter import default as default_converter
from temporalio.envconfig import ClientConfigProfile
from temporalio.service import TLSConfig

from vecmigrate.errors import VecmigrateError
from vecmigrate.model.access import CALLER_HEADER
from vecmigrate.security.keyring import KeyRingSource, keyring_from_environment
from vecmigrate.security.secrets import resolve
from vecmigrate.workers.codec import data_converter
from vecmigrate.workers.telemetry import temporal_runtime, tracing_interceptor

ADDRESS_ENV = "TEMPORAL_ADDRESS"
NAMESPACE_ENV = "TEMPORAL_NAMESPACE"
TASK_QUEUE_ENV = "VECMIGRATE_TASK_QUEUE"
IDENTITY_ENV = "VECMIGRATE_IDENTITY"
API_KEY_ENV = "VECMIGRATE_TEMPORAL_API_KEY"
DEFAULT_ADDRESS = "127.0.0.1:7233"
DEFAULT_TASK_QUEUE = "vecmigrate"


def default_address() -> str:
    """``$TEMPORAL_ADDRESS`` (Temporal's own convention) or the local dev server."""
    return os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS


def default_task_queue() -> str:
    """``$VECMIGRATE_TASK_QUEUE`` or ``vecmigrate``."""
    return os.environ.get(TASK_QUEUE_ENV) or DEFAULT_TASK_QUEUE


@dataclass(frozen=True)
class TemporalSettings:
    """What overrides the Temporal CLI's profile (flags of the ``vecmigrate`` command).

    ``api_key`` is a secret reference; the TLS fields are paths. ``identity`` is who this
    process says it is (default: ``$VECMIGRATE_IDENTITY``, else the client certificate's common
    name, else user@host). ``keyring`` is the key ring's reference (default
    ``$VECMIGRATE_KEYRING``); ``encrypt=False`` connects without the codec whatever is set.
    """

    profile: str | None = None
    config_file: str | None = None
    address: str | None = None
    namespace: str | None = None
    api_key: str | None = None
    tls: bool | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_server_name: str | None = None
    identity: str | None = None
    keyring: str | None = None
    encrypt: bool = True


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise VecmigrateError(f"cannot read the {what} {path} ({exc.strerror})") from None


def certificate_name(pem: bytes) -> str | None:
    """The common name of a PEM certificate's subject."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def _default_identity() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no user name in this environment (a bare container)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def connect_options(settings: TemporalSettings | None = None) -> dict[str, Any]:
    """The keyword arguments of ``Client.connect`` for ``settings`` over the envconfig profile
    (without the converter and interceptors).

    Raises:
        VecmigrateError: a profile, certificate or key cannot be read.
    """
    s = settings or TemporalSettings()
    try:
        profile = ClientConfigProfile.load(
            profile=s.profile,
            config_source=Path(s.config_file) if s.config_file else None,
        )
    except Exception as exc:  # the bridge reports a bad TOML file or missing profile
        raise VecmigrateError(f"cannot load the Temporal client profile: {exc}") from None
    options: dict[str, Any] = dict(profile.to_client_connect_config())
    options.setdefault("target_host", DEFAULT_ADDRESS)
    options.setdefault("namespace", "default")
    if s.address:
        options["target_host"] = s.address
    if s.namespace:
        options["namespace"] = s.namespace
    api_key_ref = s.api_key or os.environ.get(API_KEY_ENV)
    if api_key_ref:
        options["api_key"] = resolve(api_key_ref)
        options.setdefault("tls", True)
    client_cert: bytes | None = None
    if s.tls_ca or s.tls_cert or s.tls_key or s.tls_server_name:
        if bool(s.tls_cert) != bool(s.tls_key):
            raise VecmigrateError("a client certificate needs its key: give both or neither")
        base = options.get("tls")
        base = base if isinstance(base, TLSConfig) else TLSConfig()
        client_cert = _read(s.tls_cert, "client certificate") if s.tls_cert else None
        options["tls"] = TLSConfig(
            server_root_ca_cert=_read(s.tls_ca, "server CA certificate")
            if s.tls_ca
            else base.server_root_ca_cert,
            domain=s.tls_server_name or base.domain,
            client_cert=client_cert or base.client_cert,
            client_private_key=_read(s.tls_key, "client key")
            if s.tls_key
            else base.client_private_key,
        )
    elif s.tls is False:
        options["tls"] = False
    elif s.tls and not options.get("tls"):
        options["tls"] = True
    tls = options.get("tls")
    if client_cert is None and isinstance(tls, TLSConfig):
        client_cert = tls.client_cert
    options["identity"] = (
        s.identity
        or os.environ.get(IDENTITY_ENV)
        or (certificate_name(client_cert) if client_cert else None)
        or _default_identity()
    )
    return options


class _CallerOutbound(OutboundInterceptor):
    def __init__(self, nxt: OutboundInterceptor, header: Payload) -> None:
        super().__init__(nxt)
        self._header = header

    def _stamp(self, headers: Any) -> dict[str, Payload]:
        return {**(headers or {}), CALLER_HEADER: self._header}

    async def start_workflow(self, input: temporal_client.StartWorkflowInput) -> Any:
        input.headers = self._stamp(input.headers)
        return await super().start_workflow(input)

    async def signal_workflow(self, input: temporal_client.SignalWorkflowInput) -> None:
        input.headers = self._stamp(input.headers)
        await super().signal_workflow(input)

    async def start_workflow_update(self, input: temporal_client.StartWorkflowUpdateInput) -> Any:
        input.headers = self._stamp(input.headers)
        return await super().start_workflow_update(input)


class CallerInterceptor(temporal_client.Interceptor):
    """Stamps starts, signals and updates with the caller's identity (``vecmigrate-caller``)."""

    def __init__(self, identity: str) -> None:
        (self._header,) = default_converter().payload_converter.to_payloads([identity])

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        return _CallerOutbound(next, self._header)


# What a server that is still starting says: nothing listens yet, or the frontend listens but
# reports itself not healthy (the dev server does for a while on a fresh database).
_STARTING = ("Connection refused", "ConnectionRefused", "not healthy", "Unavailable")


async def connect(
    address: str | None = None,
    namespace: str | None = None,
    wait_seconds: float = 0.0,
    settings: TemporalSettings | None = None,
) -> Client:
    """A Temporal client from the envconfig profile and ``settings``, with the pydantic data
    converter (payloads encrypted when a key ring is configured), OpenTelemetry tracing (and the
    SDK's metrics, when the current telemetry records metrics) and the caller's identity on every
    message. ``address`` and ``namespace`` override both.

    With ``wait_seconds``, a server that is still starting is retried that long: a worker
    started alongside its server (a compose file) waits for it instead of dying before it
    polls. Commands fail at once (the default), and any other failure is raised at once.
    """
    s = settings or TemporalSettings()
    options = connect_options(s)
    if address:
        options["target_host"] = address
    if namespace:
        options["namespace"] = namespace
    keys: KeyRingSource | None = None
    if s.encrypt:
        keys = KeyRingSource(s.keyring) if s.keyring else keyring_from_environment()
    deadline = time.monotonic() + wait_seconds
    delay = 0.2
    while True:
        try:
            return await Client.connect(
                **options,
                data_converter=data_converter(keys),
                interceptors=[tracing_interceptor(), CallerInterceptor(options["identity"])],
                runtime=temporal_runtime(),
            )
        except RuntimeError as exc:
            starting = any(mark in str(exc) for mark in _STARTING)
            if not starting or time.monotonic() + delay > deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(2.0, delay * 2)
