"""Ledger anchors kept outside the catalog, signed with the key ring.

Someone who can write to the catalog database can rewrite the ledger's tail and recompute its
hashes; what they cannot do is change what was recorded elsewhere. Two places hold anchors, the
(seq, hash) of ledger entries:

* an anchor directory (``$VECMIGRATE_ANCHORS``, by default beside a SQLite catalog, else in
  ``$VECMIGRATE_HOME/anchors``): ``catalog.jsonl`` gets an anchor after every append, so every
  entry is anchored, those of no migration (seeds, model registrations, key rotations)
  included; ``migrations/<id>.jsonl`` gets one on each phase change of that migration. Each line
  is signed (HMAC with the key ring's anchor key, key id recorded). Point it at storage the
  catalog's writers share and its attackers cannot rewrite (another volume, an object store
  with object lock);
* Temporal's history of each migration, which holds the (seq, hash) the workflow got back for
  every entry it appended (see :mod:`vecmigrate.control.ledgeraudit`).

Lines are appended with ``O_APPEND`` (one ``write`` each, shorter than the atomic-write limit),
so concurrent writers never interleave within a line.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from vecmigrate.config import home_dir
from vecmigrate.security.keyring import ANCHOR_SIGNATURE, KeyRing

ANCHORS_ENV = "VECMIGRATE_ANCHORS"


def anchor_root(catalog_url: str, catalog_id: str) -> Path:
    """Where a catalog's anchors live: ``$VECMIGRATE_ANCHORS/<catalog id>``, else beside a
    SQLite catalog file (``catalog.db.anchors``), else ``$VECMIGRATE_HOME/anchors/<id>``."""
    configured = os.environ.get(ANCHORS_ENV)
    if configured:
        return Path(configured) / catalog_id
    url = make_url(catalog_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        db = Path(url.database).resolve()
        return db.with_name(db.name + ".anchors")
    return home_dir() / "anchors" / catalog_id


def _safe(name: str) -> str:
    readable = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:80]
    return f"{readable}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"


@dataclass(frozen=True)
class Anchor:
    """One signed record that ledger entry ``seq`` had ``hash``."""

    scope: str
    seq: int
    hash: str
    at: str
    key_id: str | None = None
    sig: str | None = None

    def signed_part(self, catalog_id: str) -> bytes:
        body = {"catalog": catalog_id, "scope": self.scope, "seq": self.seq, "hash": self.hash}
        return json.dumps({**body, "at": self.at}, sort_keys=True).encode()


class AnchorFiles:
    """The anchor files of one catalog."""

    def __init__(self, root: Path, catalog_id: str) -> None:
        self.root = root
        self.catalog_id = catalog_id

    def _path(self, scope: str) -> Path:
        if scope == "catalog":
            return self.root / "catalog.jsonl"
        return self.root / "migrations" / f"{_safe(scope)}.jsonl"

    def write(self, scope: str, seq: int, hash_: str, at: str, ring: KeyRing | None) -> None:
        """Append a signed anchor (unsigned without a ring) and flush it to disk."""
        anchor = Anchor(scope, seq, hash_, at)
        key_id = sig = None
        if ring is not None:
            key_id, sig = ring.mac(ANCHOR_SIGNATURE, anchor.signed_part(self.catalog_id))
        line = json.dumps(
            {"scope": scope, "seq": seq, "hash": hash_, "at": at, "key_id": key_id, "sig": sig},
            sort_keys=True,
        )
        path = self._path(scope)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def exists(self, scope: str) -> bool:
        return self._path(scope).exists()

    def read(self, scope: str) -> Iterator[Anchor | str]:
        """The anchors of ``scope`` in the order written; a line that does not parse is given
        as a problem string."""
        path = self._path(scope)
        if not path.exists():
            return
        for n, line in enumerate(path.read_text().splitlines(), 1):
            try:
                d: dict[str, Any] = json.loads(line)
                yield Anchor(
                    str(d["scope"]),
                    int(d["seq"]),
                    str(d["hash"]),
                    str(d["at"]),
                    d.get("key_id"),
                    d.get("sig"),
                )
            except (ValueError, KeyError, TypeError):
                yield f"{path.name} line {n} is not an anchor (the file was edited)"

    def signature_problem(self, anchor: Anchor, ring: KeyRing | None) -> str | None:
        """Why an anchor's signature cannot be trusted, or None when it checks out."""
        where = f"anchor of entry {anchor.seq} ({anchor.scope})"
        if anchor.sig is None or anchor.key_id is None:
            return None if ring is None else f"{where} is not signed"
        if ring is None:
            return f"{where} is signed, and no key ring is configured to check it"
        if anchor.key_id not in ring.keys:
            return f"{where} is signed with key {anchor.key_id}, which the key ring lacks"
        if not ring.verify_mac(
            ANCHOR_SIGNATURE, anchor.key_id, anchor.signed_part(self.catalog_id), anchor.sig
        ):
            return f"{where} has a bad signature (the anchor file was edited)"
        return None
