"""One precondition of a migration, as ``plan`` and ``prepare`` report it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Check:
    """One precondition: its name, whether it holds, and what was found."""

    name: str
    passed: bool
    detail: str
