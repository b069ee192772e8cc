"""Which keys protect the index artifacts, and re-wrapping them after a key rotation.

A rotation makes a new key active; artifacts written before it keep their data keys wrapped by
the old one until they are re-wrapped here (only their manifests are rewritten: the data files,
which may be gigabytes, are not read). Builds running meanwhile may still wrap with the old key;
a later re-wrap catches them, and a key is retired only when no manifest uses it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from vecmigrate.catalog.catalog import Catalog, vector_versions
from vecmigrate.catalog.sql import all_rows, record
from vecmigrate.indexes.artifacts import manifest_protection, rewrap_manifest
from vecmigrate.indexes.build import artifact_dir
from vecmigrate.model.spec import store_ref
from vecmigrate.security.keyring import KeyRing


@dataclass
class VersionArtifacts:
    """The artifact manifests of one version, and where they are."""

    tenant: str
    collection: str
    version: str
    directory: Path
    manifests: list[Path] = field(default_factory=list)


def artifact_manifests(catalog: Catalog, extra: list[Path] | None = None) -> list[VersionArtifacts]:
    """Every artifact manifest under the artifact directories of the catalog's versions (and of
    ``extra`` directories), by version."""
    rows = all_rows(
        catalog.engine,
        select(
            vector_versions.c.tenant,
            vector_versions.c.collection,
            vector_versions.c.version,
            vector_versions.c.store,
        ),
    )
    found: list[VersionArtifacts] = []
    seen: set[Path] = set()
    for row in rows:
        store = store_ref(dict(row["store"]))
        directory = artifact_dir(store, row["tenant"], row["collection"], row["version"])
        if directory.is_dir() and directory not in seen:
            seen.add(directory)
            manifests = _manifests(directory)
            found.append(record(VersionArtifacts, row, directory=directory, manifests=manifests))
    for directory in extra or []:
        if directory.resolve() not in seen and directory.is_dir():
            seen.add(directory.resolve())
            found.append(VersionArtifacts("*", "*", "*", directory, _manifests(directory)))
    return found


def _manifests(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*.json") if not p.name.startswith("."))


def protection(versions: list[VersionArtifacts]) -> Counter[str]:
    """How many artifacts each key protects (``plaintext``: none)."""
    counts: Counter[str] = Counter()
    for v in versions:
        for manifest in v.manifests:
            counts[manifest_protection(manifest) or "plaintext"] += 1
    return counts


def rewrap_artifacts(
    catalog: Catalog, ring: KeyRing, actor: str, extra: list[Path] | None = None
) -> int:
    """Re-wrap every encrypted artifact's data key under the ring's active key; one ledger entry
    per version says which keys protected how many of its artifacts before, and which now.
    Returns how many manifests changed."""
    changed = 0
    for v in artifact_manifests(catalog, extra):
        before: Counter[str] = Counter()
        for manifest in v.manifests:
            moved = rewrap_manifest(manifest, ring)
            if moved is not None:
                before[moved[0]] += 1
        if not before:
            continue
        changed += sum(before.values())
        catalog.append(
            tenant=v.tenant,
            collection=v.collection,
            kind="artifacts.rewrapped",
            actor=actor,
            data={
                "version": v.version,
                "directory": str(v.directory),
                "from": dict(before),
                "to": ring.active,
            },
        )
    return changed
