"""Tables people read: status, final report, plan, ledger."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.console import Console, Group
from rich.table import Table

from vecmigrate.catalog.catalog import LedgerEntry
from vecmigrate.control.apply import DirectoryPlan
from vecmigrate.control.plan import Plan
from vecmigrate.control.schedules import ScheduleView
from vecmigrate.data.footprint import ESTIMATE_KIND, STORAGE_KIND
from vecmigrate.data.retention import GcReport
from vecmigrate.embedding.registry import Registry
from vecmigrate.model.costs import MigrationCosts, ShardCost, StorageEstimate, StorageSnapshot
from vecmigrate.model.divergence import RegionDivergence
from vecmigrate.model.gates import (
    CONFIDENCE,
    DIFF_KINDS,
    DiffCounts,
    GateReport,
    ReconcileReport,
    ShardReconcile,
    interval,
)
from vecmigrate.model.lifecycle import Phase
from vecmigrate.model.regions import RegionalStatus
from vecmigrate.model.schedule import Firing
from vecmigrate.model.spec import DivergenceBound
from vecmigrate.model.status import MigrationStatus
from vecmigrate.model.tuning import TuningResult

# Shard tables longer than this are left out (the summary line counts shards by state).
SHARD_ROWS = 64


def status_tables(st: MigrationStatus) -> Group:
    """Phase, shards, gates, routing and operator actions of a migration."""
    head = Table.grid(padding=(0, 2))
    head.add_row("migration", st.migration_id)
    head.add_row(
        "collection", f"{st.tenant}/{st.collection}: {st.source_version} -> {st.target_version}"
    )
    head.add_row(
        "phase",
        f"[bold]{st.phase}[/bold]"
        + ("  [yellow](paused)[/yellow]" if st.paused else "")
        + (f" of {st.strategy}" if st.strategy else ""),
    )
    if st.doing:
        head.add_row("doing", st.doing)
    if st.outcome:
        style = "green" if st.phase == Phase.COMPLETED else "yellow"
        head.add_row("outcome", f"[{style}]{st.outcome}[/{style}]")
    if st.pause_reason:
        head.add_row("paused because", st.pause_reason)
    if st.blocked_reason:
        head.add_row("blocked", st.blocked_reason)
    if st.window_note:
        head.add_row("window", f"[yellow]{st.window_note}[/yellow]")
    for remedy in st.remedies:
        head.add_row("to change it", remedy)
    if st.error:
        head.add_row("error", f"[red]{st.error}[/red]")
    for step in st.retrying:
        where = f" (shard {step.shard})" if step.shard is not None else ""
        of = f" of {step.maximum_attempts}" if step.maximum_attempts else ""
        head.add_row(
            "retrying",
            f"[yellow]{step.activity}{where}: attempt {step.attempt}{of}, next at "
            f"{step.next_retry or 'once a worker takes it'}; last error "
            f"{step.error_type or 'error'}: {step.last_error}[/yellow]",
        )
    for action in st.ignored()[-3:]:
        head.add_row(
            "ignored",
            f"{action.action} from {action.operator} at {action.at[11:19]}: {action.note}",
        )
    if st.shards:
        copied, total = st.copied()
        line = f"{copied:,} of {total:,} vectors in {len(st.shards):,} shards"
        states = ", ".join(f"{n:,} {state}" for state, n in sorted(st.shard_states().items()))
        line += f" ({states})"
        if st.rate:
            line += f"; {st.rate:,.0f} vectors/s"
        if st.eta_seconds is not None:
            line += f", about {st.eta_seconds:,.0f} s to go"
        head.add_row("copy", line)
    if st.index_build is not None:
        head.add_row("index build", st.index_build.line())
    if st.budget is not None:
        style = "yellow" if st.budget.throttled else "green"
        head.add_row("latency budget", f"[{style}]{st.budget.line()}[/{style}]")
    if st.max_vectors_per_second:
        head.add_row("throttle", f"{st.max_vectors_per_second:,.0f} vectors/s")
    if st.runs > 1:
        head.add_row("runs", f"{st.runs} (continued as new to keep histories small)")
    if st.capture is not None:
        cap = st.capture
        state = "removed" if cap.removed else ("capturing" if cap.installed else "installing")
        head.add_row(
            "capture",
            f"{state}: {cap.table or 'change table'}, {cap.captured:,} writes captured, "
            f"{cap.lag:,} not replayed yet, {cap.bytes / 1e6:,.1f} MB"
            + (f", since {cap.created_at[:19]}" if cap.created_at else ""),
        )
        alert = cap.alert(st.phase)
        if alert:
            head.add_row("alert", f"[red]{alert}[/red]")
    if st.routing:
        r = st.routing
        head.add_row(
            "routing",
            f"reads {r.read_version} ({r.read_index}); writes {', '.join(r.write_versions)}; "
            f"generation {r.generation}",
        )
    parts: list[Any] = [head]

    if st.phase_seconds:
        timed = ((n, f"{secs:.2f}") for n, secs in st.phase_seconds.items() if n != "PLANNED")
        parts.append(figures_table("time per phase", ("phase", "seconds"), timed))

    if st.shards and len(st.shards) <= SHARD_ROWS:
        shards = Table(title="shards")
        for col in ("shard", "source", "copied", "target", "state", "checksum"):
            shards.add_column(
                col, justify="right" if col in ("source", "copied", "target") else "left"
            )
        src = st.gates.source_counts if st.gates else {}
        dst = st.gates.target_counts if st.gates else {}
        for s in st.shards:
            shards.add_row(
                str(s.shard),
                str(src.get(s.shard, s.total)),
                str(s.copied),
                str(dst.get(s.shard, "")),
                s.state,
                s.checksum or "",
            )
        parts.append(shards)

    if st.reconcile:
        parts.append(reconcile_table(st.reconcile))
    if st.gates:
        parts.extend(gate_tables(st.gates, st.source_version, st.target_version).renderables)

    if st.tuning:
        parts.append(tuning_table(st.tuning))

    if st.operators:
        ops = Table(title="operator actions")
        for col in ("at", "operator", "action", "reason", "outcome"):
            ops.add_column(col)
        for a in st.operators:
            outcome = a.outcome + (f": {a.note}" if a.note else "")
            style = "yellow" if a.outcome == "ignored" else "green"
            ops.add_row(a.at, a.operator, a.action, a.reason, f"[{style}]{outcome}[/{style}]")
        parts.append(ops)
    return Group(*parts)


def tuning_table(t: TuningResult) -> Table:
    """The recall/latency frontier tuning measured: every candidate value, its recall@k with
    its 95% interval, p50/p99, the verdict, and which value serves."""
    chosen = "none: the index's own value" if t.chosen is None else f"{t.parameter}={t.chosen}"
    gates = f"recall@{t.k} >= {t.min_recall}" + (
        "" if t.max_p99_ms is None else f", p99 <= {t.max_p99_ms} ms"
    )
    table = Table(title=f"tuning {t.parameter} ({gates}; chosen: {chosen})", caption=t.reason)
    for col in (t.parameter, "queries", f"recall@{t.k}", "95% interval", "p50 ms", "p99 ms"):
        table.add_column(col, justify="right")
    table.add_column("verdict")

    def shown(v: float | None) -> str:
        return "" if v is None else f"{v:g}"

    for c in t.candidates:
        ci = (
            ""
            if c.recall_interval is None
            else f"[{c.recall_interval[0]:.4g}, {c.recall_interval[1]:.4g}]"
        )
        mark = " (serves)" if c.value == t.serving else ""
        verdict = "[green]pass[/green]" if c.passed else "[red]" + "; ".join(c.failures) + "[/red]"
        table.add_row(
            f"{c.value}{mark}",
            str(c.queries),
            shown(c.recall),
            ci,
            shown(c.p50_ms),
            shown(c.p99_ms),
            verdict,
        )
    return table


def figures_table(title: str, columns: tuple[str, ...], rows: Iterable[tuple[str, ...]]) -> Table:
    """A table of names and their figures (the figures right-aligned)."""
    table = Table(title=title)
    table.add_column(columns[0])
    for column in columns[1:]:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*row)
    return table


def reconcile_table(r: ReconcileReport, shards: list[ShardReconcile] | None = None) -> Table:
    """Records found differing and repaired per kind, per shard (those that differed, or
    ``shards``) and in total, with what the pass after the repair found."""
    what = "ids, vectors and payload" if r.vectors_compared else "ids and payload (new vectors)"
    verdict = "passed" if r.passed else "FAILED"
    if not r.done:
        verdict = f"running, {r.shards} shards so far"
    caption = f"left out: {r.quarantined:,} quarantined, {r.excluded:,} written while compared"
    if r.streamed:
        caption += f"; {r.streamed:,} of {r.shards:,} shards from the copy's streamed figures"
    table = Table(
        title=f"reconcile ({verdict}): {r.shards} shards compared by {what}",
        caption=caption,
    )
    table.add_column("shard")
    for kind in DIFF_KINDS:
        table.add_column(kind, justify="right")
    table.add_column("repaired", justify="right")
    table.add_column("left", justify="right")

    def row(name: str, found: DiffCounts, repaired: DiffCounts, left: DiffCounts) -> None:
        style = "red" if left.total() else "green"
        table.add_row(
            name,
            *(f"{getattr(found, k):,}" for k in DIFF_KINDS),
            f"{repaired.total():,}",
            f"[{style}]{left.line()}[/{style}]",
        )

    for s in r.differing if shards is None else shards:
        row(str(s.shard), s.found, s.repaired, s.left())
    row("total", r.found, r.repaired, r.left)
    return table


def gate_tables(g: GateReport, old: str = "old", new: str = "new") -> Group:
    """Every verdict with its figure and threshold, then recall of both indexes."""
    gates = Table(title=f"gates ({'passed' if g.passed else 'FAILED'})")
    f = g.figures
    level = f"{(f.confidence if f and f.confidence else CONFIDENCE) * 100:g}% interval"
    gates.add_column("check", no_wrap=True)  # a name an approver types (set_gate)
    gates.add_column(f"value\n{level}")
    for col in ("threshold", "verdict", "detail"):
        gates.add_column(col)
    for v in g.verdicts:
        verdict = "info" if v.comparison == "info" else ("pass" if v.passed else "FAIL")
        style = {"pass": "green", "FAIL": "red"}.get(verdict, "dim")
        threshold = "" if v.threshold is None else f"{v.comparison} {v.threshold}"
        if v.undecided:
            verdict += " (the sample cannot tell"
            verdict += f"; ~{v.queries_needed:,} queries would)" if v.queries_needed else ")"
        if v.adjusted:
            verdict += " (adjusted)"
        value = "" if v.value is None else f"{v.value:g}"
        gates.add_row(
            v.name,
            value if v.interval is None else f"{value}\n{interval(v.interval)}",
            threshold,
            f"[{style}]{verdict}[/{style}]",
            "; ".join(x for x in (v.detail, v.adjusted) if x),
        )
    both = (
        (f"old ({old})", g.source_recall, f.source_recall_ci if f else None),
        (f"new ({new})", g.target_recall, f.target_recall_ci if f else None),
    )
    recall = figures_table(
        f"recall@{g.k} against exact search ({g.queries} queries)",
        ("index", "recall", level),
        (
            (label, "n/a" if value is None else f"{value:.3f}", "" if ci is None else interval(ci))
            for label, value, ci in both
        ),
    )
    return Group(gates, recall)


def plan_table(plan: Plan) -> Group:
    """Steps, shard sizes, preconditions and the estimate of a dry run."""
    steps = Table(title=f"plan for {plan.spec.migration_id} ({plan.spec.strategy})")
    steps.add_column("phase")
    steps.add_column("what happens")
    for phase, text in plan.steps:
        steps.add_row(phase, text)
    parts: list[Table] = [steps]
    if plan.shard_sizes:
        sized = ((str(shard), str(n)) for shard, n in plan.shard_sizes.items())
        parts.append(figures_table("shards", ("shard", "vectors"), sized))
    checks = Table(title="preconditions")
    checks.add_column("check")
    checks.add_column("result")
    checks.add_column("found")
    for c in plan.checks:
        checks.add_row(c.name, "[green]ok[/green]" if c.passed else "[red]FAIL[/red]", c.detail)
    parts.append(checks)
    summary = Table.grid(padding=(0, 2))
    summary.add_row("estimated duration (rough)", f"{plan.estimated_seconds:,.0f} s")
    summary.add_row("extra storage while both versions exist", f"{plan.extra_bytes / 1e6:,.1f} MB")
    est = plan.storage
    if est is not None:
        measured = "measured" if est.source.index_measured else "estimated"
        summary.add_row(
            "storage before",
            f"{est.before / 1e6:,.1f} MB ({plan.spec.source.name}: records "
            f"{est.source.records / 1e6:,.1f} MB, index {est.source.index / 1e6:,.1f} MB "
            f"{measured})",
        )
        summary.add_row(
            "storage after",
            f"{est.after_prune / 1e6:,.1f} MB once {plan.spec.source.name} is pruned "
            f"({plan.spec.target.name}: records {est.target.records / 1e6:,.1f} MB, index "
            f"{est.target.index / 1e6:,.1f} MB; as float32 the index would be "
            f"{est.target_index_float32 / 1e6:,.1f} MB); {est.peak / 1e6:,.1f} MB at the peak",
        )
    summary.add_row(
        "verdict",
        "[green]ready to start[/green]"
        if plan.ok
        else "[red]cannot start[/red]: " + "; ".join(plan.problems),
    )
    parts.append(summary)
    return Group(*parts)


def _short(h: object) -> str:
    return str(h)[:12]


def summarize(e: LedgerEntry) -> str:
    """One readable line for a ledger entry."""
    d = e.data
    match e.kind:
        case "migration.started":
            return (
                f"{d.get('source')} -> {d.get('target')} ({d.get('target_model')}), "
                f"spec {_short(d.get('spec_hash'))}"
            )
        case "phase":
            return f"{d.get('from')} -> {d.get('to')}"
        case "shard.copied":
            return (
                f"shard {d.get('shard')}: {d.get('copied'):,} copied, checksum {d.get('checksum')}"
            )
        case "shard.indexed":
            reused = " (reused)" if d.get("reused") else ""
            return (
                f"shard {d.get('shard')}: {d.get('kind')} sha256 {_short(d.get('sha256'))}{reused}"
            )
        case "index.registered":
            return f"{d.get('index_id')} ({d.get('artifacts')} artifacts)"
        case "gate":
            failed = [v["name"] for v in d.get("verdicts", []) if not v.get("passed")]
            return "passed" if d.get("passed") else "FAILED: " + ", ".join(failed)
        case "routing.changed":
            return (
                f"reads {d.get('read_version')}, writes {', '.join(d.get('write_versions', []))}"
                f" (generation {d.get('generation')}): {d.get('reason')}"
            )
        case "version.state":
            return f"{d.get('version')} -> {d.get('state')}"
        case "operator" if d.get("outcome") == "ignored":
            return f"{d.get('action')} in {d.get('phase')} IGNORED: {d.get('note')}"
        case "operator" if d.get("gate"):
            how = "override" if d.get("override") else f"threshold {d.get('threshold')}"
            return f"set_gate {d.get('gate')}: {how}: {d.get('reason')}"
        case "operator":
            return f"{d.get('action')} in {d.get('phase')}" + (
                f": {d.get('reason')}" if d.get("reason") else ""
            )
        case "step.failed":
            return f"{d.get('step')}: {d.get('type')}: {d.get('error')}"
        case _:
            return ", ".join(f"{k}={v}" for k, v in d.items())[:100]


def ledger_table(entries: list[LedgerEntry]) -> Table:
    """Ledger entries, one row each."""
    t = Table(title="ledger")
    for col in ("seq", "at", "region", "tenant", "actor", "kind", "what", "hash"):
        t.add_column(col)
    for e in entries:
        t.add_row(
            str(e.seq),
            e.at[11:23],
            e.region or "-",
            e.tenant,
            e.actor,
            e.kind,
            summarize(e),
            e.hash[:12],
        )
    return t


def print_status(console: Console, st: MigrationStatus) -> None:
    """Print the status tables."""
    console.print(status_tables(st))


def model_tables(registry: Registry) -> list[Table]:
    """The registered models, the compatibility matrix (query model x index model) and the
    adapters with the collection each serves."""
    records = registry.all_models()
    models = Table(title="embedding models")
    for col in ("model", "kind", "dim", "metric", "unit", "available", "weights"):
        models.add_column(col)
    for r in records:
        models.add_row(
            r.key,
            r.kind,
            str(r.schema.dimension),
            str(r.schema.metric),
            "yes" if r.schema.normalized else "no",
            "yes" if r.available else "[red]no[/red]",
            r.uri,
        )
    matrix = Table(title="compatibility: can a query of (row) search vectors of (column)?")
    matrix.add_column("query model")
    for r in records:
        matrix.add_column(r.key)
    for row, cells in registry.compatibility().items():
        matrix.add_row(row, *(cells[c.key] for c in records))
    adapters = Table(title="adapters (each serves the collection it was fitted on)")
    for col in ("collection", "maps", "method", "held-out cosine", "id"):
        adapters.add_column(col)
    for a in registry.all_adapters():
        adapters.add_row(
            f"{a.tenant}/{a.collection}" if a.collection else "(none recorded)",
            f"{a.from_model} -> {a.to_model}",
            a.method,
            str(a.figures.get("held_out_cosine", "")),
            a.id,
        )
    return [models, matrix, adapters]


def regional_table(st: RegionalStatus) -> Table:
    """A regional migration: each region and tenant, its phase and progress, and the barrier."""
    title = f"{st.migration_id}: {st.phase}" + (
        f" ({st.blocked_reason or st.outcome})" if st.blocked_reason or st.outcome else ""
    )
    table = Table(title=title)
    for col in ("region", "tenant", "phase", "copied", "task queue", "note"):
        table.add_column(col, justify="right" if col == "copied" else "left")
    for r in st.regions:
        note = r.reason if (r.paused or r.failed or r.phase == "ROLLED_BACK") else ""
        if r.workflow_id in st.cut_over:
            note = (note + " cut over").strip()
        table.add_row(
            r.region or "-",
            r.tenant,
            str(r.phase) + (" (paused)" if r.paused else "") if r.started else "not started",
            f"{r.copied:,}/{r.total:,}" if r.total else "",
            r.task_queue,
            note,
        )
    return table


def firing_line(firing: Firing) -> str:
    """One line for what a firing did (or would do)."""
    where = f" as {firing.migration_id}" if firing.migration_id else ""
    return f"{firing.outcome}{where}: {firing.reason}"


def schedule_tables(view: ScheduleView) -> Group:
    """A schedule: calendar, policies, next runs, and each recent firing with its migration."""
    head = Table.grid(padding=(0, 2))
    head.add_row(
        "schedule",
        f"[bold]{view.schedule_id}[/bold]" + ("  [yellow](paused)[/yellow]" if view.paused else ""),
    )
    if view.note:
        head.add_row("note", view.note)
    head.add_row("fires", "; ".join(view.calendar) or "only when triggered")
    head.add_row("time zone", view.timezone)
    policy = f"overlap {view.overlap}"
    if view.catchup_window_seconds is not None:
        policy += f", catch-up window {view.catchup_window_seconds:,.0f} s"
    if view.jitter_seconds:
        policy += f", jitter up to {view.jitter_seconds:,.0f} s"
    head.add_row("policy", policy)
    head.add_row("next", ", ".join(view.next_runs[:3]) or "none")
    head.add_row(
        "firings",
        f"{view.actions} started, {view.skipped_overlap} skipped (overlap), "
        f"{len(view.running)} running",
    )
    if view.spec_hash:
        head.add_row("spec", view.spec_hash[:12])
    table = Table(title="recent firings")
    for col in ("fired at", "firing", "outcome", "migration", "phase", "reason"):
        table.add_column(col)
    for f in view.firings:
        table.add_row(
            f.fired_at[:19],
            f.workflow_id,
            f.outcome or f.status,
            f.migration_id or "",
            f.phase or "",
            f.reason,
        )
    return Group(head, table)


def directory_table(plan: DirectoryPlan) -> Table:
    """A migration directory's steps: where each stands, its migration and what stops it."""
    verdict = "ready" if plan.ok else "cannot apply"
    table = Table(title=f"{plan.directory} ({verdict})")
    for col in ("step", "state", "migration", "spec", "notes"):
        table.add_column(col)
    styles = {"applied": "green", "pending": "cyan", "running": "yellow"}
    for s in plan.steps:
        style = styles.get(s.state, "red")
        notes = "; ".join(p.splitlines()[0] for p in s.problems) or s.note
        if s.plan is not None and s.plan.ok:
            notes = (notes + "; " if notes else "") + "preconditions ok"
        table.add_row(
            s.name,
            f"[{style}]{s.state}[/{style}]",
            s.migration_id,
            s.spec.spec_hash()[:12],
            notes,
        )
    return table


def gc_table(report: GcReport) -> Group:
    """What a gc pass pruned (or would), what it kept and why, and what it tidied."""
    table = Table(title="gc" + (" (dry run: nothing removed)" if report.dry_run else ""))
    for col in ("version", "state", "action", "bytes", "why"):
        table.add_column(col, justify="right" if col == "bytes" else "left")
    for v in report.verdicts:
        style = {"pruned": "green", "would prune": "cyan"}.get(v.action, "yellow")
        table.add_row(
            f"{v.tenant}/{v.collection}@{v.version}",
            v.state,
            f"[{style}]{v.action}[/{style}]",
            f"{v.freed_bytes / 1e6:,.1f} MB" if v.freed_bytes else "",
            v.reason,
        )
    tidy = Table.grid(padding=(0, 2))
    tidy.add_row("change-log entries removed", f"{report.log_entries_removed:,}")
    verb = "to remove" if report.dry_run else "removed"
    tidy.add_row(
        f"unreferenced artifact files {verb}",
        f"{report.artifacts_removed:,} ({report.artifact_bytes_removed / 1e6:,.1f} MB)",
    )
    tidy.add_row(
        f"ended migrations' streamed-check files {verb}",
        f"{report.streamed_removed:,} ({report.streamed_bytes_removed / 1e6:,.1f} MB)",
    )
    return Group(table, tidy)


def migration_costs(entries: list[LedgerEntry]) -> MigrationCosts:
    """A migration's costs from its ledger: the estimate its prepare recorded, its storage
    snapshots, and each shard's last copy and build."""
    costs = MigrationCosts()
    shards: dict[int, ShardCost] = {}
    for e in entries:
        d = e.data
        if e.kind == ESTIMATE_KIND:
            costs.estimate = StorageEstimate.model_validate(d)
        elif e.kind == STORAGE_KIND:
            costs.snapshots.append(StorageSnapshot.model_validate(d))
        elif e.kind in ("shard.copied", "shard.indexed") and "shard" in d:
            cost = shards.setdefault(int(d["shard"]), ShardCost(shard=int(d["shard"])))
            if e.kind == "shard.copied":
                cost.copy_seconds = d.get("seconds")
                cost.copy_bytes_read = d.get("bytes_read")
                cost.copy_bytes_written = d.get("bytes_written")
            else:
                cost.build_seconds = d.get("seconds")
                cost.build_peak_memory = d.get("peak_memory")
                cost.build_bytes_read = d.get("bytes_read")
                cost.build_bytes_written = d.get("bytes_written")
    costs.shards = [shards[k] for k in sorted(shards)]
    return costs


def _mb(value: int | None) -> str:
    return "" if value is None else f"{value / 1e6:,.1f}"


def cost_tables(costs: MigrationCosts) -> Group:
    """Storage over the migration's life next to the plan's estimate, and each shard's cost."""
    parts: list[Table] = []
    storage = Table(title="storage over the migration's life (MB)")
    for col in ("when", "source", "target", "change log", "total", "plan's estimate"):
        storage.add_column(col, justify="left" if col == "when" else "right")
    est = costs.estimate
    expected = {
        "peak": est.peak if est else None,
        "finalized": est.after_finalize if est else None,
        "pruned": est.after_prune if est else None,
    }
    if est is not None:
        storage.add_row(
            "before (estimate)", _mb(est.source.total), "", "", _mb(est.before), _mb(est.before)
        )
    labels = {
        "peak": "peak (both versions)",
        "finalized": "after finalize",
        "pruned": "after pruning",
    }
    for snap in costs.snapshots:
        storage.add_row(
            labels[snap.stage],
            _mb(snap.source.total),
            _mb(snap.target.total),
            _mb(snap.change_log),
            _mb(snap.total),
            _mb(expected.get(snap.stage)),
        )
    if est is not None or costs.snapshots:
        parts.append(storage)
        index = Table(title="the target's index")
        for col in ("", "MB", "bytes a vector", "as float32 (MB)"):
            index.add_column(col, justify="left" if not col else "right")
        if est is not None:
            per = est.target.index / est.target.count if est.target.count else 0
            index.add_row(
                "estimated", _mb(est.target.index), f"{per:,.1f}", _mb(est.target_index_float32)
            )
        measured = next((s for s in reversed(costs.snapshots) if s.target.index), None)
        if measured is not None:
            t = measured.target
            per = t.index / t.count if t.count else 0
            how = "measured" if t.index_measured else "estimated (engine's own)"
            index.add_row(how, _mb(t.index), f"{per:,.1f}", "")
        parts.append(index)
    if costs.shards:
        shards = Table(title="cost per shard")
        for col in (
            "shard",
            "copy s",
            "copy read MB",
            "copy written MB",
            "build s",
            "build peak memory MB",
            "build read MB",
            "index written MB",
        ):
            shards.add_column(col, justify="right")
        for c in costs.shards[:SHARD_ROWS]:
            shards.add_row(
                str(c.shard),
                "" if c.copy_seconds is None else f"{c.copy_seconds:,.2f}",
                _mb(c.copy_bytes_read),
                _mb(c.copy_bytes_written),
                "" if c.build_seconds is None else f"{c.build_seconds:,.2f}",
                _mb(c.build_peak_memory),
                _mb(c.build_bytes_read),
                _mb(c.build_bytes_written),
            )
        parts.append(shards)
    return Group(*parts)


def divergence_table(r: RegionDivergence, bound: DivergenceBound, given: bool) -> Group:
    """Two regions' copies compared: records differing per kind, per shard and in total, then
    the figures against the bound (a line each) and the ids listed."""
    verdict = "within the bound" if r.passed else "OVER THE BOUND"
    source = "region_policy.divergence" if given else "the defaults (the spec sets no bound)"
    table = Table(title=f"{r.region}/{r.tenant} against {r.reference}: {verdict}")
    table.add_column("shard")
    for kind in DIFF_KINDS:
        table.add_column(kind, justify="right")
    for s in r.shards:
        table.add_row(str(s.shard), *(f"{getattr(s, k):,}" for k in DIFF_KINDS))
    table.add_row("total", *(f"{getattr(r, k):,}" for k in DIFF_KINDS))
    lines = [
        f"records: {r.reference_records:,} in {r.reference}, {r.region_records:,} in {r.region}",
        f"differing: {r.differing_share:.4%} (at most {bound.max_differing_share:.4%})",
        "overlap: no query sample"
        if r.overlap is None
        else f"overlap@{r.k} {r.overlap:.3f} on {r.queries} queries "
        f"(at least {bound.min_overlap:.3f})",
        f"bound: {source}",
    ]
    if r.why:
        lines.append(f"over: {r.why}")
    if not r.complete:
        lines.append("more records differ than were compared: the counts are a lower bound")
    for kind, ids in r.listed.items():
        more = getattr(r, kind) - len(ids)
        lines.append(
            f"{kind}: " + ", ".join(str(i) for i in ids) + (f" and {more:,} more" if more else "")
        )
    return Group(table, *lines)
