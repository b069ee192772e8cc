"""Where things live by default: the vecmigrate home directory and the URLs derived from it.

The home directory is the same whichever directory a command runs in: ``$VECMIGRATE_HOME`` when
set, else the user's data directory (``~/.local/share/vecmigrate`` on Linux,
``~/Library/Application Support/vecmigrate`` on macOS, ``%LOCALAPPDATA%\\vecmigrate`` on
Windows). A command run from another directory therefore sees the same catalog, stores and
dev-server state, and nothing appears in the directory a command happens to run in.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar, cast

import platformdirs
from sqlalchemy.engine import make_url

from vecmigrate.errors import ConfigurationError
from vecmigrate.model.spec import (
    AnyStoreRef,
    BuiltinStoreRef,
    MigrationSpec,
    MilvusStoreRef,
    QdrantStoreRef,
    VersionSpec,
)

R = TypeVar("R", bound=AnyStoreRef)

HOME_ENV = "VECMIGRATE_HOME"
CATALOG_ENV = "VECMIGRATE_CATALOG_URL"
# Earlier releases kept the home in ``./.vecmigrate``, in whatever directory a command ran in.
LEGACY_HOME = ".vecmigrate"


def home_dir() -> Path:
    """``$VECMIGRATE_HOME``, else the user's data directory for vecmigrate, as an absolute path."""
    configured = os.environ.get(HOME_ENV)
    if configured:
        return Path(configured).expanduser().resolve()
    return Path(platformdirs.user_data_dir("vecmigrate", appauthor=False)).resolve()


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


def catalog_url(given: str | None, note: Callable[[str], None]) -> str:
    """The catalog a command uses: ``given`` (its ``--catalog``), else the default; ``note`` gets
    a hint when an earlier release's catalog sits in the current directory unused."""
    if given is None and not os.environ.get(CATALOG_ENV):
        hint = legacy_home_hint()
        if hint:
            note(hint)
    return given or default_catalog_url()


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (None for other databases and in-memory SQLite)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(str(parsed.database))


def legacy_home_hint() -> str | None:
    """A hint when the current directory holds an earlier release's ``.vecmigrate`` home that is
    not the one in use (its catalog would otherwise seem to have vanished)."""
    legacy = Path(LEGACY_HOME).resolve()
    if os.environ.get(HOME_ENV) or legacy == home_dir() or not (legacy / "catalog.db").exists():
        return None
    return (
        f"{legacy} holds a catalog from an earlier release, which kept its home in the current "
        f"directory; the home is now {home_dir()}. To keep using the old one, set "
        f"{HOME_ENV}={legacy}"
    )


def resolve_store(ref: R) -> R:
    """Fill a store reference's empty locations with absolute defaults, and make its relative
    file locations (a milvus-lite file, a Qdrant directory) absolute from the current directory.

    Workers may run in another directory than the CLI that started a migration, so the spec
    carried by the workflow must not depend on anyone's working directory.
    """
    artifacts = Path(ref.artifacts).resolve() if ref.artifacts else home_dir() / "artifacts"
    update: dict[str, str] = {"artifacts": str(artifacts)}
    if isinstance(ref, BuiltinStoreRef):
        update["url"] = ref.url or sqlite_url(home_dir() / "store.db")
    elif isinstance(ref, MilvusStoreRef) and "://" not in ref.uri:
        update["uri"] = str(Path(ref.uri).expanduser().resolve())  # a milvus-lite file
    elif isinstance(ref, QdrantStoreRef) and ref.path is not None:
        update["path"] = str(Path(ref.path).expanduser().resolve())  # a local-mode directory
    return cast(R, ref.model_copy(update=update))


def resolve_spec(spec: MigrationSpec) -> MigrationSpec:
    """The spec with every store reference made absolute."""

    def side(v: VersionSpec) -> VersionSpec:
        return v.model_copy(update={"store": resolve_store(v.store)})

    return spec.model_copy(update={"source": side(spec.source), "target": side(spec.target)})


def build_threads_default() -> int:
    """Threads of each index build a worker runs: ``$VECMIGRATE_BUILD_THREADS``, or 0 (the
    cores shared among the builds running at once)."""
    return int(os.environ.get("VECMIGRATE_BUILD_THREADS", "0"))
