"""How a spec names a credential: by reference, never by value.

A secret reference is ``env:NAME`` (an environment variable of the process that connects),
``file:/absolute/path`` (a file it can read, such as a mounted Kubernetes secret), or
``SCHEME://...`` for a resolver plugged in for a secret manager (``vault://secret/pg#password``).
The forms are strict so that a secret written out by mistake (``root:Milvus``) is refused rather
than taken for a reference. Only the reference travels
in workflow inputs, the catalog and the ledger; it is resolved by ``vecmigrate.security.secrets``
inside the process that opens the connection.

Pure checks only (no I/O): they run wherever a spec is validated, the workflow sandbox included.
"""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import parse_qsl, urlsplit

from pydantic import AfterValidator

REFERENCE = re.compile(r"^(?:env:[A-Za-z_][A-Za-z0-9_]*|file:/\S+|[a-z][a-z0-9+.-]{1,31}://\S+)$")

# Query parameters that carry a credential in libpq, SQLAlchemy, Milvus and Qdrant URLs.
SECRET_PARAMETERS = frozenset(
    {"password", "passwd", "pass", "sslpassword", "token", "api_key", "apikey", "secret"}
)

HOW_TO_REFERENCE = (
    "name it by reference instead: env:NAME (an environment variable of the worker), "
    "file:/absolute/path (a mounted secret) or SCHEME://... for a secret manager's resolver"
)


def _check_reference(value: str) -> str:
    if not REFERENCE.match(value):
        # Never echo the value: it is likely the secret itself.
        raise ValueError(
            f"a credential here must be a secret reference, not the secret itself; "
            f"{HOW_TO_REFERENCE}"
        )
    return value


SecretRef = Annotated[str, AfterValidator(_check_reference)]


def is_reference(value: str) -> bool:
    """Whether ``value`` has the shape of a secret reference."""
    return bool(REFERENCE.match(value))


def secret_in_url(url: str) -> str | None:
    """What in ``url`` is a credential written out (a password in its user part, or a
    ``password=``/``token=`` parameter), or None when it carries none.

    An empty password (``user:@host``, as local socket URLs have) is no secret.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.password:
        return "a password in the URL's user part"
    for name, value in parse_qsl(parts.query, keep_blank_values=False):
        if name.lower() in SECRET_PARAMETERS and value:
            return f"a {name!r} parameter in the URL"
    return None


def _check_url(value: str) -> str:
    found = secret_in_url(value)
    if found is not None:
        raise ValueError(
            f"the URL holds {found}; remove it from the URL and put it in the 'password' "
            f"(or 'token') field beside it as a secret reference: {HOW_TO_REFERENCE}"
        )
    return value


UrlWithoutSecret = Annotated[str, AfterValidator(_check_url)]
