"""The payload codec and the codec server: encrypted with the key id in the metadata, readable
across a rotation, and decoded only for callers whose credential allows it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.converter import default as default_converter

from vecmigrate.errors import KeyRingError, TamperError
from vecmigrate.security.credentials import Credentials, new_api_key
from vecmigrate.security.keyring import KeyRing
from vecmigrate.serving.asgi import AsgiServer
from vecmigrate.workers.codec import ENCODING, KEY_ID, EncryptionCodec
from vecmigrate.workers.codec_server import codec_app

UI = "http://localhost:8233"


def payload(value: object) -> Payload:
    (p,) = default_converter().payload_converter.to_payloads([value])
    return p


async def test_payloads_are_sealed_under_the_active_key_and_readable_after_rotation() -> None:
    ring = KeyRing.generate("k1")
    codec = EncryptionCodec(ring)
    plain = payload({"password": "env:PG", "note": "hello"})
    (sealed,) = await codec.encode([plain])
    assert sealed.metadata["encoding"] == ENCODING
    assert sealed.metadata[KEY_ID] == b"k1"
    assert b"hello" not in sealed.data
    rotated = EncryptionCodec(ring.rotated("k2"))
    (newer,) = await rotated.encode([plain])
    assert newer.metadata[KEY_ID] == b"k2"
    assert await rotated.decode([sealed, newer]) == [plain, plain]  # old payloads still read
    # Payloads written before any ring was configured pass through unchanged.
    assert await rotated.decode([plain]) == [plain]
    with pytest.raises(KeyRingError):
        await EncryptionCodec(ring.rotated("k2").without("k1")).decode([sealed])
    tampered = Payload()
    tampered.CopyFrom(sealed)
    tampered.data = sealed.data[:-1] + bytes([sealed.data[-1] ^ 1])
    with pytest.raises(TamperError):
        await codec.decode([tampered])


class CodecServer:
    def __init__(self, root: Path) -> None:
        self.ring = KeyRing.generate("k1")
        credentials = Credentials()
        self.key, stored = new_api_key("ui-users", ["*"], ["*"], ["codec"])
        self.search_key, search_only = new_api_key("app", ["acme"], ["*"], ["search"])
        credentials.api_keys = {stored.id: stored, search_only.id: search_only}
        self.server = AsgiServer(
            codec_app(self.ring, credentials, origins=[UI], namespaces=["default"]), port=0
        ).start()
        self.url = self.server.url


@pytest.fixture
def codec_server(tmp_path: Path) -> Iterator[CodecServer]:
    server = CodecServer(tmp_path)
    yield server
    server.server.stop()


def body(payloads: list[Payload]) -> str:
    return json_format.MessageToJson(Payloads(payloads=payloads))


async def test_the_codec_endpoint_decodes_only_for_authorised_callers(
    codec_server: CodecServer,
) -> None:
    (sealed,) = await EncryptionCodec(codec_server.ring).encode([payload({"spec": "secret-ish"})])
    request = body([sealed])
    headers = {"X-Namespace": "default", "Content-Type": "application/json"}
    with httpx.Client(base_url=codec_server.url) as http:
        anonymous = http.post("/decode", content=request, headers=headers)
        assert anonymous.status_code == 401
        assert b"secret-ish" not in anonymous.content
        bad = http.post(
            "/decode", content=request, headers={**headers, "Authorization": "Bearer vmk_x_y"}
        )
        assert bad.status_code == 401
        wrong_action = http.post(
            "/decode",
            content=request,
            headers={**headers, "Authorization": f"Bearer {codec_server.search_key}"},
        )
        assert wrong_action.status_code == 403
        auth = {**headers, "Authorization": f"Bearer {codec_server.key}"}
        other_namespace = http.post(
            "/decode", content=request, headers={**auth, "X-Namespace": "prod"}
        )
        assert other_namespace.status_code == 403
        ok = http.post("/decode", content=request, headers=auth)
        assert ok.status_code == 200
        decoded = json_format.Parse(ok.content, Payloads())
        assert default_converter().payload_converter.from_payloads(list(decoded.payloads)) == [
            {"spec": "secret-ish"}
        ]
        encoded = http.post("/encode", content=body([payload(1)]), headers=auth)
        assert json_format.Parse(encoded.content, Payloads()).payloads[0].metadata[KEY_ID] == b"k1"
        assert http.post("/decode", content=b"[[[", headers=auth).status_code == 400


def test_cors_admits_the_ui_origin_only(codec_server: CodecServer) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-namespace",
    }
    with httpx.Client(base_url=codec_server.url) as http:
        ok = http.options("/decode", headers={**preflight, "Origin": UI})
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == UI
        assert "authorization" in ok.headers["access-control-allow-headers"].lower()
        other = http.options("/decode", headers={**preflight, "Origin": "https://evil.example"})
        assert other.status_code == 400
        assert "access-control-allow-origin" not in other.headers
