"""Maintenance windows: when a migration may do its heavy work (copy, build).

A window is either recurring (``days``, ``start`` and ``end`` clock times in a ``timezone``; an
``end`` before its ``start`` runs past midnight) or one-off (``opens`` and ``closes``, two
instants). Outside every window the migration pauses itself on a durable timer until the next
one opens. Pure functions of the windows and an instant (the workflow passes ``workflow.now()``),
so the workflow computes the same answer on every replay.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, Field, model_validator

from vecmigrate.model.base import FrozenModel as _Model

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

# The phases a window may hold back: those that read or write every record.
HEAVY_PHASES = ("BACKFILLING", "CATCHING_UP", "BUILDING_INDEX", "VALIDATING")
HeavyPhase = Literal["BACKFILLING", "CATCHING_UP", "BUILDING_INDEX", "VALIDATING"]

# How far ahead the next opening is looked for (a recurring window opens within a week; one-off
# windows may be further away).
_HORIZON = timedelta(days=366)


def _known_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r}; use an IANA name such as 'UTC' or 'Europe/Paris'"
        ) from None
    return name


TimeZoneName = Annotated[str, AfterValidator(_known_zone)]


class ClockWindow(_Model):
    """Every ``days`` (default: every day) from ``start`` to ``end``, local time in ``timezone``.

    An ``end`` earlier than ``start`` closes the next day (``22:00`` to ``04:00``).
    """

    days: tuple[Weekday, ...] = WEEKDAYS
    start: time
    end: time
    timezone: TimeZoneName = "UTC"

    @model_validator(mode="after")
    def _not_empty(self) -> ClockWindow:
        if self.start == self.end:
            raise ValueError(f"window starts and ends at {self.start}: give it a length")
        if not self.days:
            raise ValueError("days is empty; name at least one day, or leave it out for every day")
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("start and end are clock times; give the zone in timezone")
        return self

    def spans(self, around: datetime) -> list[tuple[datetime, datetime]]:
        """The openings that start from two days before ``around`` to eight days after."""
        zone = ZoneInfo(self.timezone)
        local = around.astimezone(zone).date()
        found = []
        for offset in range(-2, 9):
            day = local + timedelta(days=offset)
            if WEEKDAYS[day.weekday()] not in self.days:
                continue
            opens = _at(day, self.start, zone)
            closes_day = day if self.end > self.start else day + timedelta(days=1)
            found.append((opens, _at(closes_day, self.end, zone)))
        return found


def _at(day: date, clock: time, zone: ZoneInfo) -> datetime:
    """``day`` at ``clock`` in ``zone``, as UTC (a clock time skipped by a DST jump moves on)."""
    return datetime.combine(day, clock, tzinfo=zone).astimezone(UTC)


class FixedWindow(_Model):
    """One opening, from ``opens`` to ``closes`` (instants with a UTC offset)."""

    opens: datetime
    closes: datetime

    @model_validator(mode="after")
    def _ordered(self) -> FixedWindow:
        if self.opens.tzinfo is None or self.closes.tzinfo is None:
            raise ValueError("opens and closes need a UTC offset (2025-06-01T22:00:00Z)")
        if self.closes <= self.opens:
            raise ValueError(f"the window closes ({self.closes}) before it opens ({self.opens})")
        return self

    def spans(self, around: datetime) -> list[tuple[datetime, datetime]]:
        return [(self.opens.astimezone(UTC), self.closes.astimezone(UTC))]


Window = ClockWindow | FixedWindow


class MaintenanceWindows(_Model):
    """When the heavy phases may run: ``allow`` lists the windows, ``phases`` what they hold.

    Outside every window a migration in one of ``phases`` stops starting work, lets the shards
    in flight stop after their batch, and waits on a durable timer for the next opening
    (``status`` says until when). Other phases, and operator messages, are never held.
    """

    allow: tuple[Window, ...] = Field(min_length=1)
    phases: tuple[HeavyPhase, ...] = ("BACKFILLING", "BUILDING_INDEX")

    def _openings(self, now: datetime) -> list[tuple[datetime, datetime]]:
        spans = sorted(s for w in self.allow for s in w.spans(now))
        merged: list[tuple[datetime, datetime]] = []
        for opens, closes in spans:
            if merged and opens <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], closes))
            else:
                merged.append((opens, closes))
        return merged

    def open_until(self, now: datetime) -> datetime | None:
        """When the window ``now`` falls in closes (overlapping windows merged); None when
        ``now`` is outside every window."""
        for opens, closes in self._openings(now):
            if opens <= now < closes:
                # A recurring window may be followed at once by the next day's: look again.
                later = self.open_until(closes) if closes - now < _HORIZON else None
                return later or closes
        return None

    def next_opening(self, now: datetime) -> datetime | None:
        """The first opening after ``now`` (None: no window opens again)."""
        probe = now
        while probe - now < _HORIZON:
            ahead = [opens for opens, _ in self._openings(probe) if opens > now]
            if ahead:
                return min(ahead)
            if not any(isinstance(w, ClockWindow) for w in self.allow):
                return None
            probe += timedelta(days=7)
        return None

    def holds(self, phase: str) -> bool:
        """Whether ``phase`` waits for a window."""
        return phase in self.phases
