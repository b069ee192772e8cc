"""Who is calling, and what they may do: API keys (hashed at rest) and JWTs, scoped to tenants,
collections and actions.

A :class:`Principal` is an authenticated caller: a subject and the tenants, collections and
actions its credential grants. Actions are ``search``, ``write`` and ``admin`` (the gateway) and
``codec`` (the codec server); ``admin`` includes ``search`` and ``write``. Collections are named
``tenant/collection``, or ``collection`` in every tenant the credential grants, or ``*``.

Credentials live in one file (``vecmigrate keys api-key`` adds keys to it)::

    api_keys:
      - {id: 3f9a1c2b7d4e, name: app-acme, sha256: <hex>, tenants: [acme],
         collections: ["*"], actions: [search, write]}
    jwt:
      issuer: https://idp.example.com/
      audience: vecmigrate
      algorithms: [RS256]
      key: file:/etc/vecmigrate/idp-public.pem     # or a shared secret, by reference

An API key is ``vmk_<id>_<secret>`` with 256 random bits of secret; the file keeps only the
SHA-256 of the secret (a key that long cannot be guessed from its hash, so a slow password hash
would add latency to every request and nothing else). A JWT carries ``sub`` and the claims
``tenants``, ``collections`` and ``actions`` (lists, or space-separated strings); its signature,
``exp`` (required), ``nbf``, ``iss`` and ``aud`` are checked.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import yaml

from vecmigrate.errors import AccessDeniedError, VecmigrateError
from vecmigrate.security.secrets import resolve

ACTIONS = ("search", "write", "admin", "codec")
ANY = "*"
KEY_PREFIX = "vmk_"


class AuthenticationError(VecmigrateError):
    """No credential, or one that is not valid (unknown key, bad signature, expired token)."""


def _as_set(value: Any, what: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return frozenset(value)
    raise AuthenticationError(f"the credential's {what} must be a list of names")


@dataclass(frozen=True)
class Principal:
    """An authenticated caller and what its credential grants."""

    subject: str
    tenants: frozenset[str]
    collections: frozenset[str]
    actions: frozenset[str]
    via: str = ""

    @classmethod
    def everything(cls, subject: str = "anonymous") -> Principal:
        """A principal allowed everything (a gateway run without authentication)."""
        return cls(subject, frozenset({ANY}), frozenset({ANY}), frozenset(ACTIONS), "none")

    def allows(self, action: str, tenant: str | None = None, collection: str | None = None) -> bool:
        """Whether this principal may do ``action`` on ``tenant``/``collection``."""
        granted = action in self.actions or (
            action in ("search", "write") and "admin" in self.actions
        )
        if not granted:
            return False
        if tenant is not None and ANY not in self.tenants and tenant not in self.tenants:
            return False
        if collection is not None:
            names = {ANY, collection, f"{tenant}/{collection}", f"{tenant}/{ANY}"}
            if not names & self.collections:
                return False
        return True

    def check(self, action: str, tenant: str | None = None, collection: str | None = None) -> None:
        """Raise unless :meth:`allows`.

        Raises:
            AccessDeniedError: says nothing about whether the tenant or collection exists.
        """
        if not self.allows(action, tenant, collection):
            raise AccessDeniedError("forbidden")


def hash_secret(secret: str) -> str:
    """The at-rest form of an API key's secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """An API key as stored: its id, the hash of its secret, and its grants."""

    id: str
    name: str
    sha256: str
    tenants: frozenset[str]
    collections: frozenset[str]
    actions: frozenset[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "sha256": self.sha256,
            "tenants": sorted(self.tenants),
            "collections": sorted(self.collections),
            "actions": sorted(self.actions),
        }


def new_api_key(
    name: str, tenants: Iterable[str], collections: Iterable[str], actions: Iterable[str]
) -> tuple[str, ApiKey]:
    """A fresh key: (the key to hand out once, what to store).

    Raises:
        VecmigrateError: an unknown action, or no tenant.
    """
    acts = frozenset(actions)
    unknown = sorted(acts - set(ACTIONS))
    if unknown:
        raise VecmigrateError(f"unknown actions {unknown}; use {', '.join(ACTIONS)}")
    tenant_set = frozenset(tenants)
    if not tenant_set:
        raise VecmigrateError("name at least one tenant (or * for all)")
    key_id = uuid.uuid4().hex[:12]
    secret = secrets.token_urlsafe(32)
    stored = ApiKey(
        key_id,
        name,
        hash_secret(secret),
        tenant_set,
        frozenset(collections) or frozenset({ANY}),
        acts,
    )
    return f"{KEY_PREFIX}{key_id}_{secret}", stored


@dataclass(frozen=True)
class JwtSettings:
    """How JWTs are checked: the verification key (a secret reference for shared secrets, a
    ``file:`` reference or PEM for public keys), algorithms allowed, issuer and audience."""

    key: str
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    issuer: str | None = None
    audience: str | None = None
    leeway_seconds: float = 30.0


@dataclass
class Credentials:
    """The API keys and JWT settings a service accepts."""

    api_keys: dict[str, ApiKey] = field(default_factory=dict)
    jwt: JwtSettings | None = None
    _jwt_key: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Credentials:
        """Parse the credentials document.

        Raises:
            VecmigrateError: naming what is malformed.
        """
        keys = {}
        for n, entry in enumerate(data.get("api_keys") or []):
            try:
                key = ApiKey(
                    id=str(entry["id"]),
                    name=str(entry.get("name", "")),
                    sha256=str(entry["sha256"]),
                    tenants=_as_set(entry.get("tenants"), "tenants"),
                    collections=_as_set(entry.get("collections", [ANY]), "collections"),
                    actions=_as_set(entry.get("actions"), "actions"),
                )
            except (KeyError, TypeError, AuthenticationError) as exc:
                raise VecmigrateError(f"credentials: api_keys[{n}] is malformed ({exc})") from None
            keys[key.id] = key
        settings = None
        if data.get("jwt"):
            j = data["jwt"]
            algorithms = tuple(j.get("algorithms") or JwtSettings.algorithms)
            if "none" in {a.lower() for a in algorithms}:
                raise VecmigrateError("credentials: jwt.algorithms may not include 'none'")
            if "key" not in j:
                raise VecmigrateError("credentials: jwt needs a 'key' (a reference or PEM)")
            settings = JwtSettings(
                key=str(j["key"]),
                algorithms=algorithms,
                issuer=j.get("issuer"),
                audience=j.get("audience"),
                leeway_seconds=float(j.get("leeway_seconds", 30.0)),
            )
        return cls(keys, settings)

    @classmethod
    def load(cls, path: str | Path) -> Credentials:
        """Read a credentials file (YAML or JSON)."""
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise VecmigrateError(f"cannot read credentials {path} ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            raise VecmigrateError(f"credentials {path} are not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise VecmigrateError(f"credentials {path} must be a mapping")
        return cls.from_mapping(data)

    def save(self, path: str | Path) -> None:
        """Write the file (owner-only: it names who may do what)."""
        doc: dict[str, Any] = {"api_keys": [k.to_json() for k in self.api_keys.values()]}
        if self.jwt is not None:
            doc["jwt"] = {
                "key": self.jwt.key,
                "algorithms": list(self.jwt.algorithms),
                "issuer": self.jwt.issuer,
                "audience": self.jwt.audience,
                "leeway_seconds": self.jwt.leeway_seconds,
            }
        target = Path(path)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(doc, f, sort_keys=False)
        os.replace(tmp, target)

    def _verification_key(self) -> Any:
        assert self.jwt is not None
        with self._lock:
            if self._jwt_key is None:
                key = self.jwt.key
                self._jwt_key = key if key.lstrip().startswith("-----BEGIN") else resolve(key)
            return self._jwt_key

    def authenticate(self, token: str | None) -> Principal:
        """The principal a bearer token (API key or JWT) stands for.

        Raises:
            AuthenticationError: no token, or one that is not valid.
        """
        if not token:
            raise AuthenticationError("a credential is required (Authorization: Bearer ...)")
        if token.startswith(KEY_PREFIX):
            return self._api_key(token)
        if self.jwt is None:
            raise AuthenticationError("invalid credential")
        return self._token(token)

    def _api_key(self, token: str) -> Principal:
        key_id, _, secret = token.removeprefix(KEY_PREFIX).partition("_")
        stored = self.api_keys.get(key_id)
        # Compare anyway when the id is unknown, so timing does not tell ids apart.
        expected = stored.sha256 if stored is not None else "0" * 64
        if not hmac.compare_digest(hash_secret(secret), expected) or stored is None:
            raise AuthenticationError("invalid credential")
        return Principal(
            stored.name or stored.id,
            stored.tenants,
            stored.collections,
            stored.actions,
            f"api-key:{stored.id}",
        )

    def _token(self, token: str) -> Principal:
        assert self.jwt is not None
        try:
            claims = jwt.decode(
                token,
                self._verification_key(),
                algorithms=list(self.jwt.algorithms),
                audience=self.jwt.audience,
                issuer=self.jwt.issuer,
                leeway=self.jwt.leeway_seconds,
                options={"require": ["exp", "sub"]},
            )
        except jwt.PyJWTError:
            raise AuthenticationError("invalid credential") from None
        return Principal(
            str(claims["sub"]),
            _as_set(claims.get("tenants"), "tenants"),
            _as_set(claims.get("collections", [ANY]), "collections"),
            _as_set(claims.get("actions"), "actions"),
            f"jwt:{claims.get('iss', '')}",
        )


def bearer(authorization: str | None, api_key: str | None = None) -> str | None:
    """The token of an ``Authorization: Bearer`` header, or an ``X-API-Key`` header's key."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return api_key or None
