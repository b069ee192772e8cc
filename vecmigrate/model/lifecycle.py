"""The lifecycle as one table: every strategy's phases in order, what each phase does (with the
spec's figures), the moves allowed out of it and the operator messages it accepts.

The workflows drive it; plan, status, report and the CLI read it; nothing else restates it.
Pure and deterministic (no I/O, no clock), so the rules are tested without Temporal.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from vecmigrate.model.spec import MigrationSpec


class Phase(StrEnum):
    """Where a migration is. ``paused`` is a flag beside the phase, not a phase."""

    PLANNED = "PLANNED"
    PREPARING = "PREPARING"
    BACKFILLING = "BACKFILLING"
    CATCHING_UP = "CATCHING_UP"
    BUILDING_INDEX = "BUILDING_INDEX"
    VALIDATING = "VALIDATING"
    SHADOWING = "SHADOWING"
    RAMPING = "RAMPING"
    AWAITING_CUTOVER = "AWAITING_CUTOVER"
    CUT_OVER = "CUT_OVER"
    BAKING = "BAKING"
    FINALIZING = "FINALIZING"
    COMPLETED = "COMPLETED"
    ROLLING_BACK = "ROLLING_BACK"
    ROLLED_BACK = "ROLLED_BACK"
    ABORTED = "ABORTED"


class Message(StrEnum):
    """Operator messages by their public names: signals, then updates (which have validators)."""

    PAUSE = "pause"
    RESUME = "resume"
    APPROVE_CUTOVER = "approve_cutover"
    ROLLBACK = "rollback"
    ABORT = "abort"
    SET_THROTTLE = "set_throttle"
    SET_RAMP = "set_ramp"
    SET_GATE = "set_gate"


SIGNALS = (Message.PAUSE, Message.RESUME, Message.APPROVE_CUTOVER, Message.ROLLBACK, Message.ABORT)
UPDATES = (Message.SET_THROTTLE, Message.SET_RAMP, Message.SET_GATE)


@dataclass(frozen=True)
class Outcome:
    """How a terminal phase closes the Temporal execution.

    A migration that did not complete fails its execution with a typed, non-retryable error
    (``error``) whose details are its final status, so ``temporal workflow list`` and the UI
    tell it apart from a completed one without opening it.
    """

    phase: Phase
    error: str | None
    sentence: str


OUTCOMES: dict[Phase, Outcome] = {
    Phase.COMPLETED: Outcome(Phase.COMPLETED, None, "completed: reads are served by {target}"),
    Phase.ROLLED_BACK: Outcome(
        Phase.ROLLED_BACK, "MigrationRolledBack", "rolled back{by}: reads are served by {source}"
    ),
    Phase.ABORTED: Outcome(Phase.ABORTED, "MigrationAborted", "aborted{by} where it stood"),
}
TERMINAL = frozenset(OUTCOMES)
# The error types of the executions that did not complete (the client reads the status there).
OUTCOME_ERRORS = frozenset(o.error for o in OUTCOMES.values() if o.error)


@dataclass(frozen=True)
class Step:
    """One phase of a strategy.

    ``does`` is a sentence with the spec's figures in braces (see :func:`figures`); ``accepts``
    the messages that mean something here; ``rollback`` where a rollback goes from here (None:
    a rollback is refused); ``since`` the patch that added the step, for runs started before it.
    """

    phase: Phase
    does: str
    accepts: frozenset[Message]
    rollback: Phase | None = Phase.ROLLING_BACK
    since: str | None = None


def _step(
    phase: Phase,
    does: str,
    *messages: Message,
    rollback: Phase | None = Phase.ROLLING_BACK,
    since: str | None = None,
) -> Step:
    accepts = set(messages)
    if rollback is not None:
        accepts.add(Message.ROLLBACK)
    return Step(phase, does, frozenset(accepts), rollback, since)


_HOLD = (Message.PAUSE, Message.RESUME, Message.ABORT)
_EARLY = (*_HOLD, Message.APPROVE_CUTOVER)  # an approval here needs preapprove
_COPY = (*_EARLY, Message.SET_THROTTLE)
_GATE = (*_EARLY, Message.SET_GATE)

# The patch that gave the offline strategy a cut-over decision, a bake and a finalize (runs
# started before it keep their shorter path).
OFFLINE_CUTOVER = "offline-cutover-policy"

_PLANNED = _step(Phase.PLANNED, "spec validated; migration id {mid}, spec {spec_hash}", *_COPY)
_PREPARING = _step(
    Phase.PREPARING,
    "check the catalog, register {target} ({model}, {dim}d, {metric}), plan {shards} shards",
    *_COPY,
)
_BACKFILL = (
    "{copy} {total} vectors {source} -> {target} in batches of {batch}, {parallel} shards at a "
    "time, resumable per batch{throttle}{builds}"
)
_BUILD = "build {index}{build_how}; register it with the change-log position it covers"
_VALIDATE = (
    "profile every shard (counts, checksums, NaN, norms), then recall@{k} (floor {min_recall}) "
    "on {queries} {query_source} queries, old-vs-new agreement, latency and distribution; "
    "{on_failure} on a failed gate"
)
_AWAIT = _step(Phase.AWAITING_CUTOVER, "{cutover}", *_EARLY, Message.SET_RAMP)
_CUT = "compare-and-set routing: reads -> {target}; writes -> {target} + {source}{cut_extra}"
_BAKE = "keep {source} current for an instant rollback for {bake}s"
_FINAL = "stop writing {source}; it is retained, no longer written"
_DONE = _step(Phase.COMPLETED, "done", rollback=None)

_BLUE_GREEN = (
    _PLANNED,
    _PREPARING,
    _step(Phase.BACKFILLING, _BACKFILL, *_COPY),
    _step(Phase.BUILDING_INDEX, _BUILD, *_EARLY),
    _step(Phase.VALIDATING, _VALIDATE, *_GATE),
    _step(Phase.AWAITING_CUTOVER, "{cutover}", *_EARLY),
    _step(Phase.CUT_OVER, _CUT, *_HOLD),
    _step(Phase.BAKING, _BAKE, *_HOLD),
    _step(Phase.FINALIZING, _FINAL, Message.ABORT, rollback=None),
    _DONE,
)

_DUAL_WRITE = (
    "dual-write on (writes -> {source} + {target}, watermark taken first), then {copy} {total} "
    "vectors up to the watermark in batches of {batch}, {parallel} shards at a time{throttle}"
)
_SHADOW = (
    "mirror {shadow_percent}% of live reads to {target} for {shadow_seconds}s; needs "
    "{shadow_samples} pairs, overlap >= {shadow_overlap}, p99 <= {shadow_p99}x; {on_breach} on "
    "a breach"
)
_REVERSE = Phase.AWAITING_CUTOVER  # online: reads move back, dual-write kept the source current

_ONLINE = (
    _PLANNED,
    _PREPARING,
    _step(Phase.BACKFILLING, _DUAL_WRITE, *_COPY),
    _step(
        Phase.CATCHING_UP,
        "replay the change log from the watermark (deletes included) until at most {max_lag} "
        "entries behind",
        *_EARLY,
    ),
    _step(Phase.BUILDING_INDEX, _BUILD, *_EARLY),
    _step(Phase.VALIDATING, _VALIDATE, *_GATE),
    _step(Phase.SHADOWING, _SHADOW, *_GATE, Message.SET_RAMP),
    _step(
        Phase.RAMPING,
        "canary: {ramp_steps} of reads on {target}, {step_seconds}s each, each step shadow-gated",
        *_GATE,
        Message.SET_RAMP,
    ),
    _AWAIT,
    _step(Phase.CUT_OVER, _CUT, *_HOLD, rollback=_REVERSE),
    _step(Phase.BAKING, _BAKE + "; a rollback moves reads back", *_HOLD, rollback=_REVERSE),
    _step(Phase.FINALIZING, _FINAL, Message.ABORT, rollback=None),
    _DONE,
)

_OFFLINE = (
    _PLANNED,
    _step(
        Phase.PREPARING,
        "pause writes (the gateway answers 503 with Retry-After), " + _PREPARING.does,
        *_COPY,
    ),
    _step(Phase.BACKFILLING, _BACKFILL, *_COPY),
    _step(Phase.BUILDING_INDEX, _BUILD, *_EARLY),
    _step(Phase.VALIDATING, _VALIDATE, *_GATE),
    _step(Phase.AWAITING_CUTOVER, "{cutover}; writes stay paused", *_EARLY, since=OFFLINE_CUTOVER),
    _step(Phase.CUT_OVER, _CUT + "; writes resume", *_HOLD),
    _step(Phase.BAKING, _BAKE, *_HOLD, since=OFFLINE_CUTOVER),
    _step(Phase.FINALIZING, _FINAL, Message.ABORT, rollback=None, since=OFFLINE_CUTOVER),
    _DONE,
)

_SHADOW_ONLY = (
    _step(Phase.PLANNED, _PLANNED.does, *_HOLD, Message.SET_THROTTLE),
    _step(Phase.PREPARING, _PREPARING.does, *_HOLD, Message.SET_THROTTLE),
    _step(Phase.BACKFILLING, _DUAL_WRITE, *_HOLD, Message.SET_THROTTLE),
    _step(
        Phase.CATCHING_UP,
        "replay the change log from the watermark until at most {max_lag} entries behind",
        *_HOLD,
    ),
    _step(Phase.BUILDING_INDEX, _BUILD, *_HOLD),
    _step(Phase.VALIDATING, _VALIDATE, *_HOLD, Message.SET_GATE),
    _step(Phase.SHADOWING, _SHADOW, *_HOLD, Message.SET_GATE),
    _step(
        Phase.FINALIZING,
        "dual-write and shadow reads off; {target} is retained, reads never moved",
        Message.ABORT,
        rollback=None,
    ),
    _DONE,
)


@dataclass(frozen=True)
class Strategy:
    """One strategy's lifecycle: its steps in order and the rules read from them.

    ``writes`` is where writes go while the target is built: to the ``source`` alone, to
    ``both`` versions (dual-write from before the snapshot, replayed by the catch-up), or
    ``paused`` (refused until the switch).
    """

    name: str
    summary: str
    steps: tuple[Step, ...]
    writes: Literal["source", "both", "paused"] = "source"

    @property
    def phases(self) -> tuple[Phase, ...]:
        """The phases in order, up to COMPLETED."""
        return tuple(s.phase for s in self.steps)

    @property
    def switches(self) -> bool:
        """Whether reads ever move to the target (every strategy but shadow_only)."""
        return Phase.CUT_OVER in self.phases

    def variant(self, patched: Callable[[str], bool]) -> Strategy:
        """The strategy as a run sees it: steps added by a patch it does not have left out."""
        kept = tuple(s for s in self.steps if s.since is None or patched(s.since))
        return replace(self, steps=kept)

    def step(self, phase: Phase) -> Step:
        """The step of ``phase``.

        Raises:
            KeyError: the strategy has no such phase.
        """
        for s in self.steps:
            if s.phase == phase:
                return s
        raise KeyError(f"{self.name} has no phase {phase}")

    def has(self, phase: Phase) -> bool:
        return phase in self.phases

    def after(self, phase: Phase) -> Phase:
        """The phase that follows ``phase`` when its work is done."""
        order = self.phases
        return order[order.index(phase) + 1]

    def before(self, phase: Phase, other: Phase) -> bool:
        """Whether ``phase`` comes before ``other`` (a phase outside the order never does)."""
        order = self.phases
        return phase in order and other in order and order.index(phase) < order.index(other)

    def moves(self, phase: Phase) -> frozenset[Phase]:
        """The phases a migration may move to from ``phase``."""
        if phase in TERMINAL:
            return frozenset()
        if phase == Phase.ROLLING_BACK:
            return frozenset({Phase.ROLLED_BACK})
        step = self.step(phase)
        moves = {self.after(phase)} if phase != Phase.COMPLETED else set()
        if step.rollback is not None:
            moves.add(step.rollback)
        if Message.ABORT in step.accepts:
            moves.add(Phase.ABORTED)
        return frozenset(moves)

    def accepts(self, phase: Phase, message: Message) -> bool:
        """Whether ``message`` can mean something in ``phase`` (see :func:`rule` for the rest)."""
        if phase in TERMINAL or phase == Phase.ROLLING_BACK:
            return False
        return message in self.step(phase).accepts


LIFECYCLE: dict[str, Strategy] = {
    "blue_green": Strategy(
        "blue_green",
        "build beside the source, one atomic switch, the source kept current for a rollback",
        _BLUE_GREEN,
    ),
    "online": Strategy(
        "online",
        "dual-write, backfill and catch-up, shadow reads and a canary ramp, then the switch: "
        "the collection serves reads and writes throughout",
        _ONLINE,
        writes="both",
    ),
    "offline": Strategy(
        "offline",
        "writes paused from PREPARING to the switch, then the same switch as blue_green",
        _OFFLINE,
        writes="paused",
    ),
    "shadow_only": Strategy(
        "shadow_only",
        "validate the target under live shadow reads and keep it; reads never switch",
        _SHADOW_ONLY,
        writes="both",
    ),
}
STRATEGIES = tuple(LIFECYCLE)

# The regional parent's own lifecycle: its children each run a strategy above.
REGIONAL = Strategy(
    "regional",
    "one child migration per region and tenant, canary region first, a barrier before the cut-over",
    (
        _step(Phase.PLANNED, "spec validated; children planned", *_EARLY),
        _step(
            Phase.BACKFILLING,
            "children run towards the barrier: {rollout}; at most {max_parallel} regions at once",
            *_EARLY,
        ),
        _step(Phase.AWAITING_CUTOVER, "barrier: {barrier}", *_EARLY),
        _step(Phase.CUT_OVER, "region by region: {cutover_order}", *_HOLD),
        _step(Phase.BAKING, "children bake and finalize", *_HOLD),
        _DONE,
    ),
)


class IllegalTransitionError(Exception):
    """A phase change the lifecycle does not allow (a bug in the caller, never user input)."""


def check_transition(strategy: Strategy, current: Phase, new: Phase) -> None:
    """Raise :class:`IllegalTransitionError` unless ``strategy`` allows ``current -> new``."""
    if new not in strategy.moves(current):
        allowed = ", ".join(sorted(strategy.moves(current))) or "nothing (terminal)"
        raise IllegalTransitionError(
            f"{strategy.name}: {current} -> {new} is not allowed (from {current}: {allowed})"
        )


@dataclass(frozen=True)
class Situation:
    """What besides the phase decides whether a message means something now."""

    phase: Phase
    paused: bool = False
    # A rollback or abort was asked for and is being carried out.
    stopping: bool = False
    # The gate of the current phase failed and holds the migration.
    gate_failed: bool = False
    # ... and nothing changed since its verdict (thresholds, overrides, data): judged again,
    # it would fail again.
    gate_unchanged: bool = False
    cutover_approved: bool = False
    # The cut-over waits for an approval: manual mode, or an online cut-over reversed.
    approval_needed: bool = True


@dataclass(frozen=True)
class Ruling:
    """Whether a message is applied, and the reason shown to whoever sent it."""

    accepted: bool
    reason: str = ""


def rule(
    strategy: Strategy, message: Message, now: Situation, *, preapprove: bool = False
) -> Ruling:
    """Whether ``message`` means something in ``now``; when not, why (for status and ledger).

    An approval before the gates passed is held only when it says ``preapprove``: an early or
    mistaken approval must never turn a manual cut-over into an automatic one.
    """
    phase = now.phase
    if phase in TERMINAL:
        return Ruling(False, f"the migration has ended ({phase}): {message} changes nothing")
    if phase == Phase.ROLLING_BACK or now.stopping:
        return Ruling(False, f"a rollback or abort is under way: {message} changes nothing")
    if not strategy.accepts(phase, message):
        return Ruling(False, _why_not(strategy, message, phase))
    if message == Message.PAUSE and now.paused:
        return Ruling(False, "already paused")
    if message == Message.RESUME and not now.paused:
        return Ruling(False, "not paused: nothing to resume")
    if message == Message.RESUME and now.gate_unchanged:
        return Ruling(
            False,
            "nothing changed since the gate failed (same data, thresholds and overrides): its "
            "verdict would be the same; change a threshold or override the gate (set_gate), "
            "repair the data and resume with revalidate=true, or roll back",
        )
    if message == Message.SET_GATE and not now.gate_failed:
        return Ruling(False, f"no gate has failed in {phase}: nothing to override or adjust")
    if message == Message.APPROVE_CUTOVER:
        return _approval(strategy, now, preapprove)
    return Ruling(True)


def _approval(strategy: Strategy, now: Situation, preapprove: bool) -> Ruling:
    if now.cutover_approved:
        return Ruling(False, "the cut-over is already approved")
    if not now.approval_needed:
        return Ruling(False, "the cut-over is automatic once the gates pass: nothing to approve")
    early = strategy.before(now.phase, Phase.AWAITING_CUTOVER)
    if not early and not now.gate_failed:
        return Ruling(True)
    if preapprove:
        return Ruling(True, "pre-approved: the cut-over goes ahead once the gates pass")
    why = "a gate failed" if now.gate_failed else f"the gates have not passed yet ({now.phase})"
    return Ruling(
        False,
        f"{why}: an approval now would cut over before anyone saw them; approve at "
        "AWAITING_CUTOVER, or send preapprove=true to approve in advance",
    )


def _why_not(strategy: Strategy, message: Message, phase: Phase) -> str:
    if message == Message.ROLLBACK and phase == Phase.FINALIZING:
        return (
            "FINALIZING: the old version no longer receives writes, so a rollback would lose "
            "them; migrate back with a new migration"
        )
    if message == Message.APPROVE_CUTOVER and not strategy.switches:
        return f"a {strategy.name} migration never switches reads: there is no cut-over"
    if message == Message.APPROVE_CUTOVER:
        return f"already past the cut-over ({phase})"
    if message == Message.SET_RAMP:
        where = [p for p in strategy.phases if Message.SET_RAMP in strategy.step(p).accepts]
        if not where:
            return f"a {strategy.name} migration has no canary ramp"
        return f"the ramp can be set in {', '.join(where)}, not in {phase}"
    if message == Message.SET_THROTTLE:
        return f"nothing is being copied in {phase}: the throttle holds the copy only"
    if message == Message.SET_GATE:
        return f"no gate is judged in {phase}"
    return f"{message} means nothing in {phase} of a {strategy.name} migration"


def builds_while_copying(spec: MigrationSpec) -> bool:
    """Whether each shard's index is built as soon as its copy is done, beside the copies of
    the shards after it: where the build comes right after the backfill (no catch-up between
    them to change the target) and builds per shard (a database's own index is built once,
    over everything)."""
    from vecmigrate.model.spec import is_native

    strategy = LIFECYCLE[spec.strategy]
    return (
        not is_native(spec.target.index)
        and strategy.has(Phase.BACKFILLING)
        and strategy.after(Phase.BACKFILLING) == Phase.BUILDING_INDEX
    )


def figures(spec: MigrationSpec, total: int | None = None) -> dict[str, Any]:
    """The spec's figures the steps' sentences name; ``total`` vectors when known."""
    from vecmigrate.model.spec import is_native

    gates, online, cut = spec.gates, spec.online, spec.cutover
    native = is_native(spec.target.index)
    during_copy = builds_while_copying(spec)
    if cut.mode == "manual":
        cutover = "wait for approve_cutover (manual)"
    else:
        cutover = "go on once the gates pass (automatic)"
    return {
        "mid": spec.migration_id,
        "spec_hash": spec.spec_hash()[:12],
        "source": spec.source.name,
        "target": spec.target.name,
        "model": f"{spec.target.embedding.model_id}@{spec.target.embedding.model_version}",
        "dim": spec.target.embedding.dimension,
        "metric": spec.target.embedding.metric,
        "shards": len(spec.shards.selected()),
        "total": "the" if total is None else f"{total:,}",
        # With shared records the pass reads and checks every record and writes none.
        "copy": "copy"
        if spec.records == "copy"
        else "read and check (records shared, none written)",
        "batch": f"{spec.batch_size:,}",
        "parallel": spec.max_parallel_shards,
        "throttle": (
            f", at most {spec.max_vectors_per_second:,.0f} vectors/s"
            if spec.max_vectors_per_second
            else ""
        ),
        "builds": "; each shard's index is built as its copy completes" if during_copy else "",
        "index": spec.target.index.kind,
        "build_how": (
            " inside the target database, over the whole version"
            if native
            else " per shard (artifacts content-addressed)"
        ),
        "k": gates.k,
        "min_recall": gates.min_recall,
        "queries": gates.queries,
        "query_source": "recorded" if gates.query_log else "sampled",
        "on_failure": "pause" if gates.on_failure == "pause" else "roll back",
        "shadow_percent": online.shadow.percent,
        "shadow_seconds": online.shadow.seconds,
        "shadow_samples": online.shadow.min_samples,
        "shadow_overlap": online.shadow.min_overlap,
        "shadow_p99": online.shadow.max_p99_ratio,
        "on_breach": "pause" if online.on_breach == "pause" else "roll back",
        "ramp_steps": ", ".join(f"{s:g}%" for s in online.ramp.steps),
        "step_seconds": online.ramp.step_seconds,
        "max_lag": online.max_catchup_lag,
        "cutover": cutover,
        "cut_extra": "; the source stays current for a rollback",
        "bake": cut.bake_seconds,
    }


# What the phase off every strategy's path does.
ROLLING_BACK = "reads and writes back to {source} alone, by compare-and-set; {target} abandoned"


def describe(strategy: Strategy, phase: Phase, values: Mapping[str, Any]) -> str:
    """What ``phase`` does in ``strategy``, with ``values`` (see :func:`figures`) filled in."""
    if phase == Phase.ROLLING_BACK:
        return ROLLING_BACK.format_map(values)
    return strategy.step(phase).does.format_map(values)
