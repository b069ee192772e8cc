"""Resolving secret references inside the process that connects.

``env:NAME`` reads an environment variable, ``file:/path`` a file (trailing newline dropped, as
mounted Kubernetes and Docker secrets end with one). ``SCHEME://...`` goes to a resolver plugged
in for a secret manager: :func:`register_resolver` in code, or an entry point in the
``vecmigrate.secret_resolvers`` group (``vault = mypkg.vault:resolve``) that any installed
package can declare; the resolver is given what follows ``SCHEME:``. Every resolved value is
handed to the scrubber, so that it is redacted from logs and error messages should it ever reach
one.

Errors name the reference, never the value.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

from vecmigrate.errors import SecretError
from vecmigrate.model.credentials import HOW_TO_REFERENCE, is_reference
from vecmigrate.security.scrub import remember_secret

Resolver = Callable[[str], str]

ENTRY_POINT_GROUP = "vecmigrate.secret_resolvers"

_resolvers: dict[str, Resolver] = {}
_lock = threading.Lock()
_plugins_loaded = False


def _from_env(name: str) -> str:
    value = os.environ.get(name)
    if value is None:
        raise SecretError(f"secret env:{name} is not set in this process's environment")
    return value


def _from_file(path: str) -> str:
    try:
        return Path(path).read_text().removesuffix("\n").removesuffix("\r")
    except OSError as exc:
        raise SecretError(f"secret file:{path} cannot be read ({exc.strerror})") from None


def register_resolver(scheme: str, resolver: Resolver) -> None:
    """Resolve references ``scheme://...`` with ``resolver`` (given what follows the colon)."""
    with _lock:
        _resolvers[scheme] = resolver


def _load_plugins() -> None:
    global _plugins_loaded
    with _lock:
        if _plugins_loaded:
            return
        _plugins_loaded = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            _resolvers.setdefault(ep.name, ep.load())


register_resolver("env", _from_env)
register_resolver("file", _from_file)


def resolve(reference: str) -> str:
    """The secret a reference names.

    Raises:
        SecretError: not a reference, no resolver for its scheme, or the secret is missing.
    """
    if not is_reference(reference):
        raise SecretError(f"expected a secret reference; {HOW_TO_REFERENCE}")
    scheme, _, rest = reference.partition(":")
    resolver = _resolvers.get(scheme)
    if resolver is None:
        _load_plugins()
        resolver = _resolvers.get(scheme)
    if resolver is None:
        known = ", ".join(sorted(_resolvers))
        raise SecretError(
            f"no resolver for secret references of scheme {scheme!r} (known: {known}); install "
            f"the package that provides it (entry point group {ENTRY_POINT_GROUP})"
        )
    value = resolver(rest)
    if not value:
        raise SecretError(f"secret {scheme}:{rest} is empty")
    remember_secret(value)
    return value


def resolve_optional(reference: str | None) -> str | None:
    """:func:`resolve`, passing None through."""
    return None if reference is None else resolve(reference)
