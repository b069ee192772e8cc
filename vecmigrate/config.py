"""Where things live by default: the vecmigrate home directory and the URLs derived from it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar, cast

from vecmigrate.errors import ConfigurationError
from vecmigrate.model.spec import AnyStoreRef, BuiltinStoreRef, MigrationSpec, VersionSpec

R = TypeVar("R", bound=AnyStoreRef)

HOME_ENV = "VECMIGRATE_HOME"
CATALOG_ENV = "VECMIGRATE_CATALOG_URL"


def home_dir() -> Path:
    """``$VECMIGRATE_HOME`` or ``./.vecmigrate``, as an absolute path."""
    return Path(os.environ.get(HOME_ENV) or ".vecmigrate").resolve()


def sqlite_url(path: Path) -> str:
    """A SQLAlchemy URL for a SQLite file."""
    return f"sqlite:///{path.resolve()}"


def default_catalog_url() -> str:
    """``$VECMIGRATE_CATALOG_URL``, the file ``$VECMIGRATE_CATALOG_URL_FILE`` names (a mounted
    secret: the URL holds a password), or a SQLite catalog in the home directory."""
    from_file = os.environ.get(CATALOG_ENV + "_FILE")
    if not os.environ.get(CATALOG_ENV) and from_file:
        try:
            return Path(from_file).read_text().strip()
        except OSError as exc:
            raise ConfigurationError(
                f"{CATALOG_ENV}_FILE={from_file}: cannot read it ({exc.strerror})"
            ) from None
    return os.environ.get(CATALOG_ENV) or sqlite_url(home_dir() / "catalog.db")


def resolve_store(ref: R) -> R:
    """Fill a store reference's empty locations with absolute defaults.

    Workers may run in another directory than the CLI that started a migration, so the spec
    carried by the workflow must not depend on anyone's working directory.
    """
    artifacts = Path(ref.artifacts).resolve() if ref.artifacts else home_dir() / "artifacts"
    update: dict[str, str] = {"artifacts": str(artifacts)}
    if isinstance(ref, BuiltinStoreRef):
        update["url"] = ref.url or sqlite_url(home_dir() / "store.db")
    return cast(R, ref.model_copy(update=update))


def resolve_spec(spec: MigrationSpec) -> MigrationSpec:
    """The spec with every store reference made absolute."""

    def side(v: VersionSpec) -> VersionSpec:
        return v.model_copy(update={"store": resolve_store(v.store)})

    return spec.model_copy(update={"source": side(spec.source), "target": side(spec.target)})
