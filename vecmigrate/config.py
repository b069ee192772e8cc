"""Where things live by default: the vecmigrate home directory and the URLs derived from it."""

from __future__ import annotations

import os
from pathlib import Path

from vecmigrate.spec import BuiltinStoreRef, MigrationSpec, VersionSpec

HOME_ENV = "VECMIGRATE_HOME"
CATALOG_ENV = "VECMIGRATE_CATALOG_URL"


def home_dir() -> Path:
    """``$VECMIGRATE_HOME`` or ``./.vecmigrate``, as an absolute path."""
    return Path(os.environ.get(HOME_ENV) or ".vecmigrate").resolve()


def sqlite_url(path: Path) -> str:
    """A SQLAlchemy URL for a SQLite file."""
    return f"sqlite:///{path.resolve()}"


def default_catalog_url() -> str:
    """``$VECMIGRATE_CATALOG_URL`` or a SQLite catalog in the home directory."""
    return os.environ.get(CATALOG_ENV) or sqlite_url(home_dir() / "catalog.db")


def resolve_store(ref: BuiltinStoreRef) -> BuiltinStoreRef:
    """Fill an empty built-in store reference with absolute default locations.

    Workers may run in another directory than the CLI that started a migration, so the spec
    carried by the workflow must not depend on anyone's working directory.
    """
    url = ref.url or sqlite_url(home_dir() / "store.db")
    artifacts = Path(ref.artifacts).resolve() if ref.artifacts else home_dir() / "artifacts"
    return ref.model_copy(update={"url": url, "artifacts": str(artifacts)})


def resolve_spec(spec: MigrationSpec) -> MigrationSpec:
    """The spec with every store reference made absolute."""

    def side(v: VersionSpec) -> VersionSpec:
        return v.model_copy(update={"store": resolve_store(v.store)})

    return spec.model_copy(update={"source": side(spec.source), "target": side(spec.target)})
