"""Temporal's typed keys for the search attributes of :mod:`vecmigrate.model.search`.

Deterministic: used by the workflows to keep their attributes current and by the client to set
them at start.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    SearchAttributeUpdate,
    TypedSearchAttributes,
)

with workflow.unsafe.imports_passed_through():
    from vecmigrate.model.search import ALL

# The patch that makes a workflow keep its search attributes current (a run from before it
# replays without the attribute changes).
SEARCH_ATTRIBUTES = "search-attributes"

KEYS: dict[str, SearchAttributeKey[str]] = {
    a.name: SearchAttributeKey.for_keyword(a.name) for a in ALL
}


def typed(values: dict[str, str]) -> TypedSearchAttributes:
    """``values`` (name to value) as the typed attributes a workflow starts with."""
    return TypedSearchAttributes([SearchAttributePair(KEYS[k], v) for k, v in values.items()])


def updates(values: dict[str, str]) -> list[SearchAttributeUpdate[str]]:
    """``values`` as the updates ``workflow.upsert_search_attributes`` takes."""
    return [KEYS[k].value_set(v) for k, v in values.items()]
