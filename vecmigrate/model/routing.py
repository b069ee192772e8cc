"""The routing row of a collection: which version serves reads, which receive writes."""

from __future__ import annotations

from pydantic import Field

from vecmigrate.model.base import Model


class RoutingView(Model):
    """The routing row of a collection as last seen by the workflow.

    Reads go to ``read_version`` (through ``read_index``), except ``ramp_percent`` of them (by
    a stable hash of the request key) to ``candidate_version``; ``shadow_percent`` of the reads
    are also run on the candidate and compared. Writes go to every one of ``write_versions``,
    or are refused while ``writes_paused``.
    """

    read_version: str | None
    read_index: str | None = None
    write_versions: list[str] = Field(default_factory=list)
    generation: int = 0
    candidate_version: str | None = None
    candidate_index: str | None = None
    ramp_percent: float = 0.0
    shadow_percent: float = 0.0
    writes_paused: bool = False
