"""The key ring: versioned master keys, one active, from which every purpose derives its own key.

A ring is a small JSON document (``vecmigrate keys init`` writes one)::

    {"format": "vecmigrate-keyring/1", "active": "k2",
     "keys": {"k1": {"material": "<base64 of 32 bytes>", "created": "..."},
              "k2": {"material": "...", "created": "..."}}}

It is named by a secret reference in ``$VECMIGRATE_KEYRING`` (``file:/run/secrets/keyring.json``
or ``env:NAME`` holding the JSON itself), so the keys are read only by the processes that use
them. The active key protects everything new; the others stay to read and verify what they
protected until it is re-wrapped (artifacts) or expires (Temporal histories). Rotation adds a key
and makes it active; a ring in a file is re-read when the file changes, so running workers pick
up a rotation without a restart.

Each purpose (payload encryption, data-key wrapping, ledger MACs, anchor signatures) uses its
own key, derived from the master key with HKDF-SHA256, so no two purposes ever share a key.
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import secrets
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vecmigrate.errors import KeyRingError, SecretError, TamperError
from vecmigrate.security.secrets import resolve

KEYRING_ENV = "VECMIGRATE_KEYRING"
FORMAT = "vecmigrate-keyring/1"
KEY_BYTES = 32
NONCE_BYTES = 12

# Purposes: each derives its own key from the master key.
PAYLOAD = "payload-encryption"
DATA_KEY_WRAP = "data-key-wrap"
LEDGER_MAC = "ledger-mac"
ANCHOR_SIGNATURE = "anchor-signature"
PURPOSES = (PAYLOAD, DATA_KEY_WRAP, LEDGER_MAC, ANCHOR_SIGNATURE)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def new_key_id() -> str:
    """A key id that sorts by creation date and never repeats."""
    return f"k{datetime.now(UTC):%Y%m%d}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class KeyRing:
    """Master keys by id, and the id of the active one."""

    active: str
    keys: dict[str, bytes]
    created: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.active not in self.keys:
            raise KeyRingError(f"the key ring's active key {self.active!r} is not in its keys")
        for key_id, material in self.keys.items():
            if len(material) != KEY_BYTES:
                raise KeyRingError(
                    f"key {key_id!r} has {len(material)} bytes, not {KEY_BYTES}: "
                    "generate keys with `vecmigrate keys init` or `keys rotate`"
                )

    def __repr__(self) -> str:
        return f"KeyRing(active={self.active!r}, keys={sorted(self.keys)})"

    @classmethod
    def generate(cls, key_id: str | None = None) -> KeyRing:
        """A ring with one fresh random key."""
        key_id = key_id or new_key_id()
        return cls(key_id, {key_id: secrets.token_bytes(KEY_BYTES)}, {key_id: _now()})

    def rotated(self, key_id: str | None = None) -> KeyRing:
        """This ring plus a fresh key, which becomes the active one."""
        key_id = key_id or new_key_id()
        if key_id in self.keys:
            raise KeyRingError(f"key {key_id!r} is already in the ring")
        return KeyRing(
            key_id,
            {**self.keys, key_id: secrets.token_bytes(KEY_BYTES)},
            {**self.created, key_id: _now()},
        )

    def without(self, key_id: str) -> KeyRing:
        """This ring without ``key_id`` (never the active key)."""
        if key_id == self.active:
            raise KeyRingError(f"{key_id!r} is the active key; rotate before retiring it")
        if key_id not in self.keys:
            raise KeyRingError(f"no key {key_id!r} in the ring")
        keys = {k: v for k, v in self.keys.items() if k != key_id}
        created = {k: v for k, v in self.created.items() if k != key_id}
        return KeyRing(self.active, keys, created)

    # -- serialisation --------------------------------------------------------------------------

    def to_json(self) -> str:
        """The ring as its JSON document (holds the keys: write it only where secrets go)."""
        return json.dumps(
            {
                "format": FORMAT,
                "active": self.active,
                "keys": {
                    k: {"material": _b64(v), "created": self.created.get(k, "")}
                    for k, v in sorted(self.keys.items())
                },
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> KeyRing:
        """Parse a ring's JSON document.

        Raises:
            KeyRingError: not a key ring, or a key of the wrong size.
        """
        try:
            doc = json.loads(text)
            if doc.get("format") != FORMAT:
                raise KeyRingError(f"not a vecmigrate key ring (format must be {FORMAT!r})")
            keys = {k: base64.b64decode(v["material"]) for k, v in doc["keys"].items()}
            created = {k: str(v.get("created", "")) for k, v in doc["keys"].items()}
            return cls(str(doc["active"]), keys, created)
        except KeyRingError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError):
            raise KeyRingError(
                "the key ring is not valid JSON of the form {format, active, keys}; "
                "create one with `vecmigrate keys init`"
            ) from None

    # -- keys per purpose -----------------------------------------------------------------------

    def derived(self, purpose: str, key_id: str | None = None) -> tuple[str, bytes]:
        """The key of ``purpose`` derived from master key ``key_id`` (the active one if None).

        Raises:
            KeyRingError: the ring has no such key.
        """
        key_id = key_id or self.active
        material = self.keys.get(key_id)
        if material is None:
            raise KeyRingError(
                f"key {key_id!r} is not in the key ring (keys: {', '.join(sorted(self.keys))}); "
                "it protected this data: restore it from your key backup"
            )
        kdf = HKDF(
            algorithm=hashes.SHA256(),
            length=KEY_BYTES,
            salt=None,
            info=f"vecmigrate/{purpose}/v1".encode(),
        )
        return key_id, kdf.derive(material)

    def seal(self, purpose: str, plaintext: bytes, aad: bytes = b"") -> tuple[str, bytes]:
        """AES-256-GCM under the active key: (key id, nonce + ciphertext + tag)."""
        key_id, key = self.derived(purpose)
        nonce = os.urandom(NONCE_BYTES)
        return key_id, nonce + AESGCM(key).encrypt(nonce, plaintext, aad)

    def open(self, purpose: str, key_id: str, sealed: bytes, aad: bytes = b"") -> bytes:
        """Decrypt what :meth:`seal` made under ``key_id``.

        Raises:
            TamperError: the data or its associated data was altered.
            KeyRingError: ``key_id`` is not in the ring.
        """
        _, key = self.derived(purpose, key_id)
        try:
            return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
        except InvalidTag:
            raise TamperError(
                f"data sealed under key {key_id!r} ({purpose}) fails authentication: it was "
                "altered, truncated or moved"
            ) from None

    def mac(self, purpose: str, data: bytes, key_id: str | None = None) -> tuple[str, str]:
        """HMAC-SHA256 of ``data`` under ``key_id`` (the active key if None): (key id, hex)."""
        key_id, key = self.derived(purpose, key_id)
        return key_id, hmac.new(key, data, sha256).hexdigest()

    def verify_mac(self, purpose: str, key_id: str, data: bytes, mac: str) -> bool:
        """Whether ``mac`` is the HMAC of ``data`` under ``key_id`` (constant-time compare)."""
        _, expected = self.mac(purpose, data, key_id)
        return hmac.compare_digest(expected, mac)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class KeyRingSource:
    """Where a ring is read from (a secret reference), re-read when its file changes.

    Workers hold one for their lifetime and ask it for the current ring at each use, so a
    rotation written by ``vecmigrate keys rotate`` reaches them within one use.
    """

    def __init__(self, reference: str) -> None:
        self.reference = reference
        self._lock = threading.Lock()
        self._ring: KeyRing | None = None
        self._stamp: tuple[int, int] | None = None

    @property
    def path(self) -> Path | None:
        """The file the ring lives in, when it is referenced as ``file:``."""
        if self.reference.startswith("file:"):
            return Path(self.reference.removeprefix("file:"))
        return None

    def _file_stamp(self) -> tuple[int, int] | None:
        path = self.path
        if path is None:
            return None
        try:
            st = path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def current(self) -> KeyRing:
        """The ring as it is now.

        Raises:
            KeyRingError: it cannot be read or parsed.
        """
        with self._lock:
            stamp = self._file_stamp()
            if self._ring is None or (stamp is not None and stamp != self._stamp):
                try:
                    text = resolve(self.reference)
                except SecretError as exc:
                    raise KeyRingError(f"cannot read the key ring: {exc}") from None
                self._ring = KeyRing.from_json(text)
                self._stamp = stamp
            return self._ring

    def save(self, ring: KeyRing) -> None:
        """Replace the ring file atomically (owner-only permissions).

        Raises:
            KeyRingError: the ring is not in a file (an ``env:`` ring is changed where it is
                set, by whoever sets it).
        """
        path = self.path
        if path is None:
            raise KeyRingError(
                f"the key ring comes from {self.reference.split(':', 1)[0]}:, not a file; "
                "rotate it where it is defined, or point VECMIGRATE_KEYRING at a file"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(ring.to_json())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        with self._lock:
            self._ring, self._stamp = ring, self._file_stamp()


def keyring_from_environment(environ: Any = None) -> KeyRingSource | None:
    """The ring ``$VECMIGRATE_KEYRING`` names, or None when it is unset (nothing is then
    encrypted or MACed: see docs/security.md for what that leaves unprotected)."""
    reference = (environ if environ is not None else os.environ).get(KEYRING_ENV)
    return KeyRingSource(reference) if reference else None


_sources: dict[str, KeyRingSource] = {}
_sources_lock = threading.Lock()


def environment_keyring() -> KeyRing | None:
    """The current ring ``$VECMIGRATE_KEYRING`` names (one source per reference per process,
    so a rotated ring file is picked up), or None when it is unset."""
    reference = os.environ.get(KEYRING_ENV)
    if not reference:
        return None
    with _sources_lock:
        source = _sources.get(reference)
        if source is None:
            source = _sources[reference] = KeyRingSource(reference)
    return source.current()
