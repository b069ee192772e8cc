"""Connecting to Temporal through TLS with a client certificate (mutual TLS), from flags or from
the Temporal CLI's own profile file, end to end through a TLS-terminating proxy in front of the
dev server (which has no TLS of its own)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.client import Client
from temporalio.service import TLSConfig
from temporalio.testing import WorkflowEnvironment

from tests.conftest import vecmigrate
from vecmigrate.testing.tls import CertificateAuthority, Issued, TlsProxy
from vecmigrate.workers.connection import TemporalSettings, connect, connect_options

pytestmark = pytest.mark.integration


class Pki:
    def __init__(self, root: Path) -> None:
        self.server_ca = CertificateAuthority(root / "server-ca", "server-ca")
        self.client_ca = CertificateAuthority(root / "client-ca", "client-ca")
        self.rogue_ca = CertificateAuthority(root / "rogue-ca", "rogue-ca")
        self.server: Issued = self.server_ca.issue("localhost", server=True)
        self.alice: Issued = self.client_ca.issue("alice@ops", server=False)
        self.mallory: Issued = self.rogue_ca.issue("mallory", server=False)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


@pytest.fixture
def proxy(env: WorkflowEnvironment, pki: Pki) -> Iterator[TlsProxy]:
    host, port = env.client.service_client.config.target_host.rsplit(":", 1)
    tls = TlsProxy((host, int(port)), pki.server, client_ca=pki.client_ca.issued.cert).start()
    yield tls
    tls.stop()


async def system_info(client: Client) -> str:
    info = await client.workflow_service.get_system_info(GetSystemInfoRequest())
    return str(info.server_version)


async def test_mutual_tls_with_a_client_certificate(proxy: TlsProxy, pki: Pki) -> None:
    settings = TemporalSettings(
        address=proxy.address,
        tls_ca=str(pki.server_ca.issued.cert),
        tls_cert=str(pki.alice.cert),
        tls_key=str(pki.alice.key),
        tls_server_name="localhost",
    )
    client = await connect(settings=settings)
    assert await system_info(client)
    assert "alice@ops" in proxy.peers  # a real handshake, with alice's certificate
    assert client.identity == "alice@ops"  # the identity is the certificate's name


async def test_no_or_a_foreign_client_certificate_is_refused(proxy: TlsProxy, pki: Pki) -> None:
    base: dict[str, Any] = {
        "address": proxy.address,
        "tls_ca": str(pki.server_ca.issued.cert),
        "tls_server_name": "localhost",
    }
    for extra in ({}, {"tls_cert": str(pki.mallory.cert), "tls_key": str(pki.mallory.key)}):
        with pytest.raises(RuntimeError):
            await connect(settings=TemporalSettings(**base, **extra))
    # The client sees the server's alert before the proxy's thread has counted its refusal.
    deadline = time.monotonic() + 10
    while proxy.refused < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert proxy.refused >= 2
    assert None not in proxy.peers
    assert "mallory" not in proxy.peers


async def test_a_server_the_ca_did_not_sign_is_refused(proxy: TlsProxy, pki: Pki) -> None:
    settings = TemporalSettings(
        address=proxy.address,
        tls_ca=str(pki.rogue_ca.issued.cert),  # not the CA that signed the proxy's certificate
        tls_cert=str(pki.alice.cert),
        tls_key=str(pki.alice.key),
        tls_server_name="localhost",
    )
    with pytest.raises(RuntimeError):
        await connect(settings=settings)


def profile_file(path: Path, proxy: TlsProxy, pki: Pki) -> Path:
    path.write_text(
        f"""
[profile.prod]
address = "{proxy.address}"
namespace = "default"

[profile.prod.tls]
server_ca_cert_path = "{pki.server_ca.issued.cert}"
client_cert_path = "{pki.alice.cert}"
client_key_path = "{pki.alice.key}"
server_name = "localhost"
"""
    )
    return path


async def test_the_temporal_cli_profile_is_used(tmp_path: Path, proxy: TlsProxy, pki: Pki) -> None:
    config = profile_file(tmp_path / "temporal.toml", proxy, pki)
    settings = TemporalSettings(config_file=str(config), profile="prod")
    options = connect_options(settings)
    assert options["target_host"] == proxy.address
    assert isinstance(options["tls"], TLSConfig)
    client = await connect(settings=settings)
    assert await system_info(client)
    assert proxy.peers.count("alice@ops") >= 1


async def test_the_cli_connects_through_the_profile(
    tmp_path: Path, proxy: TlsProxy, pki: Pki
) -> None:
    config = profile_file(tmp_path / "temporal.toml", proxy, pki)
    done = await asyncio.to_thread(
        vecmigrate,
        "status",
        "no-such-migration",
        "--config-file",
        str(config),
        "--profile",
        "prod",
        "--catalog",
        f"sqlite:///{tmp_path / 'c.db'}",
    )
    # The handshake went through (the proxy saw alice) and the server answered: no such id.
    assert "no such migration" in done.stderr
    assert "alice@ops" in proxy.peers


def test_an_api_key_is_a_reference_and_turns_tls_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VM_TEST_TEMPORAL_KEY", "tk-secret-value")
    options = connect_options(
        TemporalSettings(address="h:7233", api_key="env:VM_TEST_TEMPORAL_KEY")
    )
    assert options["api_key"] == "tk-secret-value"
    assert options["tls"] is True
    with pytest.raises(Exception, match="secret reference"):
        connect_options(TemporalSettings(address="h:7233", api_key="tk-secret-value"))
