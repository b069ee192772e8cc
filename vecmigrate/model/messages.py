"""Payloads of the operator messages (signals and updates), one model each.

Every field has a default, so a bare message (``temporal workflow signal --name pause``) works
and running workflows keep decoding messages sent by newer clients.
"""

from __future__ import annotations

import math
from typing import Literal

from vecmigrate.model.base import Model as _Model


class OperatorMessage(_Model):
    """Payload of every signal: who sent it and why, and the options some signals take.

    ``preapprove`` lets ``approve_cutover`` be held before the gates have passed; without it
    such an approval is recorded and ignored. ``revalidate`` makes a ``resume`` after a failed
    gate measure again although nothing the workflow can see changed (data repaired out of
    band). ``region`` names the one region a regional migration's ``rollback`` is for.
    """

    operator: str = "unknown"
    reason: str = ""
    preapprove: bool = False
    revalidate: bool = False
    region: str | None = None


class ThrottleRequest(_Model):
    """Argument of the ``set_throttle`` update: vectors/s over all shards, ``None`` for none.

    The update also takes a bare number (or null), as ``temporal workflow update`` sends it.
    """

    max_vectors_per_second: float | None = None
    operator: str = "unknown"
    reason: str = ""

    @classmethod
    def of(cls, arg: ThrottleRequest | float | None) -> ThrottleRequest:
        """The request an update argument stands for (a bare number is the rate)."""
        if isinstance(arg, ThrottleRequest):
            return arg
        return cls(max_vectors_per_second=arg)

    def problem(self) -> str | None:
        """Why this request cannot be applied, or ``None``."""
        rate = self.max_vectors_per_second
        if rate is not None and not (rate > 0 and math.isfinite(rate)):
            return (
                f"max_vectors_per_second must be a positive, finite number of vectors per "
                f"second (or null to lift the throttle), got {rate}"
            )
        return None


class RampRequest(_Model):
    """Argument of the ``set_ramp`` update: the share of reads the new version serves."""

    percent: float
    operator: str = "unknown"
    reason: str = ""

    def problem(self) -> str | None:
        """Why this request cannot be applied, or ``None``."""
        if not 0.0 <= self.percent < 100.0:  # NaN fails too
            return (
                f"percent must be at least 0 and below 100 (100 is the cut-over: approve it "
                f"instead), got {self.percent}"
            )
        return None


class GateRequest(_Model):
    """Argument of the ``set_gate`` update: a new threshold for a failed gate, or an override.

    ``gate`` is a verdict's name as ``status`` shows it (``recall@10``, ``shadow.overlap``). An
    override needs a reason: it is written to the ledger and shown in the report.
    """

    gate: str
    threshold: float | None = None
    override: bool = False
    operator: str = "unknown"
    reason: str = ""

    def problem(self) -> str | None:
        """Why this request cannot be applied, or ``None``."""
        if self.override == (self.threshold is not None):
            return "give either a threshold or override=true, not both or neither"
        if self.threshold is not None and not math.isfinite(self.threshold):
            return f"threshold must be a finite number, got {self.threshold}"
        if self.override and not self.reason.strip():
            return "an override needs a reason: it is recorded in the ledger and the report"
        return None


class Interrupt(_Model):
    """A rollback or abort an operator (or a gate policy) asked for."""

    action: Literal["rollback", "abort"]
    message: OperatorMessage
    # Asked for by a gate's policy (``on_failure``/``on_breach: rollback``), not an operator.
    by_gate: bool = False
