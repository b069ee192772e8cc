"""Envelope encryption of files vecmigrate writes: a fresh data key per file, wrapped by the ring.

The file holds only ciphertext; the data key, wrapped (AES-256-GCM) by the key ring's active key,
is kept beside it by the caller (an index artifact's manifest), so rotating the ring re-wraps
data keys in small files and never re-encrypts the data.

The data is encrypted as a stream of 1 MiB chunks with AES-256-GCM (the STREAM construction:
each chunk's nonce is a random per-file prefix, the chunk's number and a last-chunk flag; every
chunk authenticates the file's header). A flipped byte, a chunk moved, dropped or appended, a cut
end, or a header changed fails authentication when the file is read.

Plaintext that a library must read or write by path (FAISS and hnswlib do) goes through
:func:`plaintext_scratch`: an anonymous in-memory file on Linux, never on disk.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vecmigrate.errors import TamperError
from vecmigrate.security.keyring import DATA_KEY_WRAP, KEY_BYTES, KeyRing

MAGIC = b"VMENC1\n"
ALGORITHM = "AES-256-GCM-STREAM"
CHUNK = 1 << 20
TAG = 16
_PREFIX = 7
_WRAP_AAD = b"vecmigrate data key/v1"


@dataclass(frozen=True)
class WrappedKey:
    """A file's data key, sealed under master key ``kek`` of the ring."""

    kek: str
    sealed: bytes

    def to_json(self) -> dict[str, str]:
        return {"alg": ALGORITHM, "kek": self.kek, "wrapped_key": _b64(self.sealed)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WrappedKey:
        return cls(str(data["kek"]), base64.b64decode(data["wrapped_key"]))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def wrap(ring: KeyRing, data_key: bytes) -> WrappedKey:
    """Seal ``data_key`` under the ring's active key."""
    kek, sealed = ring.seal(DATA_KEY_WRAP, data_key, _WRAP_AAD)
    return WrappedKey(kek, sealed)


def unwrap(ring: KeyRing, wrapped: WrappedKey) -> bytes:
    """The data key inside ``wrapped``.

    Raises:
        TamperError: the wrapped key was altered.
        KeyRingError: the ring no longer holds the key that wrapped it.
    """
    return ring.open(DATA_KEY_WRAP, wrapped.kek, wrapped.sealed, _WRAP_AAD)


def rewrap(ring: KeyRing, wrapped: WrappedKey) -> WrappedKey:
    """The same data key, sealed under the ring's active key (the data is not touched)."""
    if wrapped.kek == ring.active:
        return wrapped
    return wrap(ring, unwrap(ring, wrapped))


def _nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    return prefix + struct.pack(">IB", counter, 1 if last else 0)


def encrypt_stream(source: BinaryIO, target: BinaryIO, ring: KeyRing) -> WrappedKey:
    """Encrypt everything ``source`` holds into ``target`` under a new data key; the key,
    wrapped, is returned for the caller to keep beside the file."""
    data_key = os.urandom(KEY_BYTES)
    aead = AESGCM(data_key)
    prefix = os.urandom(_PREFIX)
    header_doc = json.dumps({"alg": ALGORITHM, "chunk": CHUNK, "prefix": _b64(prefix)}).encode()
    header = MAGIC + struct.pack(">I", len(header_doc)) + header_doc
    target.write(header)
    counter = 0
    chunk = source.read(CHUNK)
    while True:
        following = source.read(CHUNK)
        last = not following
        target.write(aead.encrypt(_nonce(prefix, counter, last), chunk, header))
        if last:
            break
        chunk, counter = following, counter + 1
    return wrap(ring, data_key)


def decrypt_stream(source: BinaryIO, target: BinaryIO, ring: KeyRing, wrapped: WrappedKey) -> None:
    """Decrypt a file :func:`encrypt_stream` wrote into ``target``.

    Raises:
        TamperError: any part of the file (header, a chunk, its order or its end) or the
            wrapped key was altered.
    """
    aead = AESGCM(unwrap(ring, wrapped))
    magic = source.read(len(MAGIC))
    if magic != MAGIC:
        raise TamperError("not an encrypted vecmigrate file (bad header)")
    try:
        (length,) = struct.unpack(">I", source.read(4))
        header_doc = source.read(length)
        header = MAGIC + struct.pack(">I", length) + header_doc
        meta = json.loads(header_doc)
        prefix, size = base64.b64decode(meta["prefix"]), int(meta["chunk"]) + TAG
    except (struct.error, ValueError, KeyError, TypeError):
        raise TamperError("the encrypted file's header is damaged") from None
    counter = 0
    chunk = source.read(size)
    while True:
        following = source.read(size)
        last = not following
        try:
            target.write(aead.decrypt(_nonce(prefix, counter, last), chunk, header))
        except InvalidTag:
            raise TamperError(
                f"chunk {counter} of the encrypted file fails authentication: the file was "
                "altered, truncated or extended"
            ) from None
        if last:
            return
        chunk, counter = following, counter + 1


def is_encrypted(path: Path) -> bool:
    """Whether ``path`` starts with the encrypted-file header."""
    with path.open("rb") as f:
        return f.read(len(MAGIC)) == MAGIC


@contextlib.contextmanager
def plaintext_scratch(name: str) -> Iterator[Path]:
    """A path a library can write or read plaintext at without it reaching a disk.

    On Linux an anonymous memory file (``memfd_create``), reached as ``/proc/self/fd/N``;
    elsewhere a file in a fresh owner-only temporary directory, removed on exit.
    """
    if hasattr(os, "memfd_create") and Path("/proc/self/fd").is_dir():
        fd = os.memfd_create(f"vecmigrate-{name}")
        try:
            yield Path(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="vecmigrate-") as tmp:
        yield Path(tmp) / name
