"""Stable names the gateway serves: ``/v1/_name/NAME/...`` is the collection whose stable name
(``cutover.stable_name``: the alias or view applications query the engine by) is ``NAME``.

An application that queries Qdrant's ``docs`` (an alias after ``vecmigrate stable-name
prepare``) moves to the gateway with the same name, once, before the migration; the gateway
then serves it like ``/v1/TENANT/COLLECTION``: reads follow the routing (the source, the ramp,
the target after the cut-over, the source again after a rollback) and writes go to every
version routing writes, through the change log, like any router write.

Where a name comes from: the catalog (every migration's ``cutover.stable_name``, and the names
``vecmigrate stable-name prepare`` set up), and ``vecmigrate serve --name NAME=TENANT/COLLECTION``
for a name the catalog does not know yet. A name that fronts two collections is refused, never
guessed. The map is read from the catalog every ``REREAD_SECONDS``, and at most once per
``refresh_seconds`` for a name it does not hold, never per request: a name's collection does
not change with the routing (which version serves it is the router's plan, once per
generation), and the read scans the catalog's migrations and the ledger's preparations.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable, Mapping

from vecmigrate.catalog.catalog import Catalog
from vecmigrate.errors import ConfigurationError, NotFoundError, PreconditionError

# The path prefix of requests by stable name: a tenant's name starts with a letter or a digit,
# so no tenant's path can be mistaken for it.
PREFIX = "/v1/_name/"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_SCOPE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,63})/([A-Za-z0-9][A-Za-z0-9_.-]{0,63})$")

Target = tuple[str, str]  # (tenant, collection)
# How old the map may get before it is read again, for the names it holds.
REREAD_SECONDS = 60.0


class AmbiguousNameError(PreconditionError):
    """A stable name that fronts more than one collection."""

    def __init__(self, name: str, candidates: Iterable[Target]) -> None:
        self.candidates = sorted(candidates)
        listed = ", ".join(f"{t}/{c}" for t, c in self.candidates)
        super().__init__(
            f"the stable name {name} fronts {len(self.candidates)} collections ({listed}): a "
            "gateway cannot tell which one a request means; call /v1/TENANT/COLLECTION, or serve "
            "each from a gateway of its own"
        )


def parse_names(items: Iterable[str]) -> dict[str, Target]:
    """``NAME=TENANT/COLLECTION`` options, as a map.

    Raises:
        ConfigurationError: a malformed option, or a name given for two collections.
    """
    found: dict[str, Target] = {}
    for item in items:
        name, _, scope = item.partition("=")
        match = _SCOPE.match(scope.strip())
        if not _NAME.match(name.strip()) or match is None:
            raise ConfigurationError(
                f"--name {item!r}: use NAME=TENANT/COLLECTION, NAME as cutover.stable_name "
                "spells it (letters, digits, _), e.g. --name docs=default/docs"
            )
        target = (match.group(1), match.group(2))
        before = found.setdefault(name.strip(), target)
        if before != target:
            raise ConfigurationError(
                f"--name {name.strip()} is given for {before[0]}/{before[1]} and for "
                f"{target[0]}/{target[1]}: a stable name fronts one collection"
            )
    return found


class StableNames:
    """The stable names one gateway serves (see the module's doc)."""

    def __init__(
        self,
        catalog: Catalog,
        explicit: Mapping[str, Target] | None = None,
        refresh_seconds: float = 1.0,
    ) -> None:
        self.catalog = catalog
        self.explicit = dict(explicit or {})
        self.refresh_seconds = refresh_seconds
        self._known: dict[str, set[Target]] = {}
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def _stale(self, name: str) -> bool:
        age = time.monotonic() - self._read_at
        return age >= REREAD_SECONDS or (name not in self._known and age >= self.refresh_seconds)

    def _current(self, name: str) -> dict[str, set[Target]]:
        if not self._stale(name):
            return self._known
        with self._lock:
            if self._stale(name):
                known = self.catalog.stable_names()
                for name, target in self.explicit.items():
                    known.setdefault(name, set()).add(target)
                self._known, self._read_at = known, time.monotonic()
        return self._known

    def candidates(self, name: str) -> set[Target]:
        """Every collection ``name`` fronts (empty: none)."""
        return set(self._current(name).get(name, ()))

    def resolve(self, name: str) -> Target:
        """The collection ``name`` fronts.

        Raises:
            NotFoundError: no collection has that stable name.
            AmbiguousNameError: more than one has.
        """
        found = self.candidates(name)
        if not found:
            raise NotFoundError(
                f"no collection has the stable name {name}: a migration's cutover.stable_name, "
                "`vecmigrate stable-name prepare`, or `vecmigrate serve --name "
                f"{name}=TENANT/COLLECTION` makes it known"
            )
        if len(found) > 1:
            raise AmbiguousNameError(name, found)
        return next(iter(found))
