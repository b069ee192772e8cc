"""Secret references in store references, resolved only in the process that connects.

A spec names a secret as ``env:NAME`` (an environment variable of the worker) or ``file:PATH``
(a file the worker can read, such as a mounted Kubernetes secret), so the secret itself never
enters the spec, the catalog, the workflow history or a log line.
"""

from __future__ import annotations

import os
from pathlib import Path

from vecmigrate.errors import PreconditionError


def resolve_secret(ref: str | None) -> str | None:
    """The secret a reference names (a value without a known prefix is taken as it is).

    Raises:
        PreconditionError: the variable is unset or the file unreadable.
    """
    if ref is None:
        return None
    if ref.startswith("env:"):
        name = ref[4:]
        value = os.environ.get(name)
        if value is None:
            raise PreconditionError(f"secret {ref}: the environment variable {name} is not set")
        return value
    if ref.startswith("file:"):
        path = Path(ref[5:])
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise PreconditionError(f"secret {ref}: cannot read {path}: {exc.strerror}") from None
    return ref
