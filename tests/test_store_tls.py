"""Store connections over TLS: a Milvus server (milvus-lite's engine, on TCP) behind a
TLS-terminating proxy that requires a client certificate, reached through the store reference's
``tls`` options and an ``https://`` URI. (PostgreSQL over TLS with client certificates and
passwords by reference runs in tests/test_no_secret_leaks.py.)"""

from __future__ import annotations

import socket
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import version_data
from vecmigrate.model.spec import MilvusTls, parse_spec
from vecmigrate.stores import open_store
from vecmigrate.stores.base import Scope
from vecmigrate.stores.milvus import close_clients
from vecmigrate.testing.tls import CertificateAuthority, Issued, TlsProxy

# A server of its own (uvicorn, milvus-lite) and seeded collections: seconds, not milliseconds.
pytestmark = pytest.mark.integration


class MilvusBehindTls:
    def __init__(self, root: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # milvus-lite imports pkg_resources
            from milvus_lite.server import Server
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.server = Server(str(root / "milvus.db"), address=f"127.0.0.1:{port}")
        assert self.server.start()
        self.ca = CertificateAuthority(root / "ca", "milvus-ca")
        self.client_ca = CertificateAuthority(root / "client-ca", "client-ca")
        self.app: Issued = self.client_ca.issue("migrator", server=False)
        self.proxy = TlsProxy(
            ("127.0.0.1", port),
            self.ca.issue("localhost", server=True),
            client_ca=self.client_ca.issued.cert,
        ).start()
        self.uri = f"https://127.0.0.1:{self.proxy.port}"

    def stop(self) -> None:
        close_clients()
        self.proxy.stop()
        self.server.stop()


@pytest.fixture
def milvus(tmp_path: Path) -> Iterator[MilvusBehindTls]:
    server = MilvusBehindTls(tmp_path)
    yield server
    server.stop()


def test_a_milvus_store_over_mutual_tls(
    milvus: MilvusBehindTls, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VM_TEST_MILVUS_TOKEN", "root:Milvus")
    spec = parse_spec(
        {
            "collection": "docs",
            "source": version_data(
                "v1",
                "milvus_flat",
                store={
                    "kind": "milvus",
                    "uri": milvus.uri,
                    "token": "env:VM_TEST_MILVUS_TOKEN",
                    "tls": {
                        "ca_cert": str(milvus.ca.issued.cert),
                        "server_name": "localhost",
                        "client_cert": str(milvus.app.cert),
                        "client_key": str(milvus.app.key),
                    },
                },
            ),
            "target": version_data("v2", "faiss_flat"),
        }
    )
    store = open_store(spec.source.store, Scope("default", "docs", "v1"), 8)
    vectors = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)
    store.upsert(np.arange(40, dtype=np.int64), vectors)
    assert store.count() == 40
    ids, found = store.fetch(np.array([3, 7], dtype=np.int64))
    assert ids.tolist() == [3, 7]
    assert found is not None
    assert found.tobytes() == vectors[[3, 7]].tobytes()
    assert milvus.proxy.peers.count("migrator") >= 1  # a real handshake, with the client's cert


def test_without_a_client_certificate_the_server_is_out_of_reach(milvus: MilvusBehindTls) -> None:
    tls = MilvusTls(ca_cert=str(milvus.ca.issued.cert), server_name="localhost")
    from vecmigrate.stores.milvus import MilvusStore

    with pytest.raises(Exception):  # noqa: B017, PT011 - pymilvus's own connection error
        MilvusStore.open(milvus.uri, Scope("default", "docs", "v1"), 8, tls=tls)
    assert milvus.proxy.refused >= 1
    assert "migrator" not in milvus.proxy.peers
