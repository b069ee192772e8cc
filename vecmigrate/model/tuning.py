"""Search-parameter tuning in the canary window: what each candidate measured, the verdicts, and
which candidate serves.

Pure models and functions (the workflow carries :class:`TuningResult` in its status); the
measuring is in ``vecmigrate.validation.tuning``.
"""

from __future__ import annotations

from pydantic import Field

from vecmigrate.model.base import Model as _Model
from vecmigrate.model.gates import decide, interval
from vecmigrate.model.spec import TuningPolicy
from vecmigrate.model.tasks import SpecTask


class CandidateFigures(_Model):
    """One candidate value measured on the mirrored queries: recall@k against the exact answer
    over the target's store (with its 95% interval), and the latency of its searches."""

    value: int
    queries: int = 0
    recall: float | None = None
    recall_interval: tuple[float, float] | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    p99_interval: tuple[float, float] | None = None
    passed: bool = False
    failures: list[str] = Field(default_factory=list)

    def judge(self, policy: TuningPolicy) -> None:
        """Set ``passed`` and ``failures`` against the policy's gates."""
        failures: list[str] = []
        if self.queries < policy.min_samples:
            failures.append(
                f"{self.queries} mirrored queries, needs {policy.min_samples} (no traffic is "
                "not a pass)"
            )
        if self.recall is None:
            failures.append("recall not measured")
        else:
            ok, _ = decide(self.recall, self.recall_interval, policy.min_recall, ">=")
            if not ok:
                shown = "" if self.recall_interval is None else " " + interval(self.recall_interval)
                failures.append(
                    f"recall@{policy.k} = {self.recall}{shown} (needs >= {policy.min_recall})"
                )
        if policy.max_p99_ms is not None:
            if self.p99_ms is None:
                failures.append("p99 not measured")
            else:
                ok, _ = decide(
                    self.p99_ms, self.p99_interval, policy.max_p99_ms, "<=", doubt_passes=True
                )
                if not ok:
                    failures.append(f"p99 = {self.p99_ms} ms (needs <= {policy.max_p99_ms} ms)")
        self.failures = failures
        self.passed = not failures


class TuningResult(_Model):
    """The frontier every candidate measured, and the value chosen (None: the index's own
    value, ``default``, keeps serving)."""

    parameter: str
    default: int
    k: int
    min_recall: float
    max_p99_ms: float | None = None
    index_id: str | None = None
    queries: int = 0
    candidates: list[CandidateFigures] = Field(default_factory=list)
    chosen: int | None = None
    reason: str = ""

    @property
    def serving(self) -> int:
        """The value the target serves with after tuning."""
        return self.default if self.chosen is None else self.chosen


def choose(
    figures: list[CandidateFigures], policy: TuningPolicy, parameter: str, default: int
) -> tuple[int | None, str]:
    """The cheapest candidate that meets the gates (the smallest value: a larger ef or nprobe
    searches more), and why; None when none does, with what each lacked."""
    for fig in figures:
        fig.judge(policy)
    passing = sorted(f.value for f in figures if f.passed)
    if passing:
        value = passing[0]
        below = [f.value for f in figures if f.value < value]
        why = f"{parameter}={value} is the smallest candidate meeting the gates"
        if below:
            why += f" ({', '.join(f'{parameter}={v}' for v in sorted(below))} did not)"
        return value, why
    lacks = "; ".join(f"{parameter}={f.value}: {f.failures[0]}" for f in figures if f.failures)
    return None, (
        f"no candidate met the gates, so the index's own {parameter}={default} keeps serving "
        f"(its shadow gate decides as without tuning): {lacks}"
    )


class TuningInput(SpecTask):
    """A tuning task: the candidate index the mirrored reads are tried on."""

    index_id: str | None = None
