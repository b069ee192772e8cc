"""What Temporal stores of ours, encrypted: a payload codec over the key ring, and failures
scrubbed of credentials (and, with the codec, encrypted too).

Each payload is sealed with AES-256-GCM under the ring's active key (the payload-encryption key
derived from it); its metadata names the key (``encryption-key-id``), so after a rotation new
payloads use the new key and old ones, written under the previous key, stay readable for as long
as that key stays in the ring. Payloads that are not encrypted (written before a ring was
configured) are passed through as they are, so those histories still replay.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverter,
    PayloadCodec,
    PayloadConverter,
)

from vecmigrate.security.keyring import PAYLOAD, KeyRing, KeyRingSource
from vecmigrate.security.scrub import scrub, scrub_value

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
_AAD = b"vecmigrate temporal payload/v1"


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM payload encryption with the key id in each payload's metadata."""

    def __init__(self, keys: KeyRingSource | KeyRing) -> None:
        self._keys = keys

    def _ring(self) -> KeyRing:
        return self._keys if isinstance(self._keys, KeyRing) else self._keys.current()

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Seal each payload under the active key."""
        ring = self._ring()
        out = []
        for p in payloads:
            key_id, sealed = ring.seal(PAYLOAD, p.SerializeToString(), _AAD)
            out.append(
                Payload(metadata={"encoding": ENCODING, KEY_ID: key_id.encode()}, data=sealed)
            )
        return out

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Open sealed payloads with the key each names; pass others through.

        Raises:
            TamperError: a sealed payload was altered.
            KeyRingError: the ring lacks the key a payload was sealed under.
        """
        ring = self._ring()
        out = []
        for p in payloads:
            if p.metadata.get("encoding") != ENCODING:
                out.append(p)
                continue
            key_id = p.metadata[KEY_ID].decode()
            out.append(Payload.FromString(ring.open(PAYLOAD, key_id, p.data, _AAD)))
        return out


def _scrub_failure(failure: Failure, converter: PayloadConverter) -> None:
    if failure.HasField("encoded_attributes"):
        (attributes,) = converter.from_payloads([failure.encoded_attributes])
        failure.encoded_attributes.CopyFrom(converter.to_payloads([scrub_value(attributes)])[0])
    failure.message = scrub(failure.message)
    failure.stack_trace = scrub(failure.stack_trace)


class ScrubbingFailureConverter(DefaultFailureConverter):
    """Failures with credentials scrubbed from their messages and stack traces."""

    def to_failure(
        self, exception: BaseException, payload_converter: PayloadConverter, failure: Failure
    ) -> None:
        super().to_failure(exception, payload_converter, failure)  # causes come back here
        _scrub_failure(failure, payload_converter)


class EncryptedFailureConverter(ScrubbingFailureConverter):
    """Scrubbed failures whose message and stack trace go to the codec too."""

    def __init__(self) -> None:
        super().__init__()
        self._encode_common_attributes = True


def data_converter(keys: KeyRingSource | KeyRing | None) -> DataConverter:
    """The pydantic data converter, with failures scrubbed, and with ``keys`` every payload and
    failure message encrypted."""
    if keys is None:
        return dataclasses.replace(
            pydantic_data_converter, failure_converter_class=ScrubbingFailureConverter
        )
    failure_class: Any = EncryptedFailureConverter
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=EncryptionCodec(keys),
        failure_converter_class=failure_class,
    )
