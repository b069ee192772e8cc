"""``vecmigrate report ID --html out.html``: one self-contained page of a migration's plots.

Everything comes from the ledger (each shard's copy and build, every gate and shadow gate, each
phase change, with their times) and, while Temporal can be asked, the live status. The plots are
matplotlib figures inlined as SVG: the page needs no network, no script and no other file.
Store locations and credentials never appear: versions are named by their store kind.
"""

from __future__ import annotations

import html
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vecmigrate.catalog.catalog import LedgerEntry
from vecmigrate.errors import VecmigrateError
from vecmigrate.model.gates import GateReport, ShadowFigures
from vecmigrate.model.spec import MigrationSpec
from vecmigrate.model.status import MigrationStatus
from vecmigrate.model.tuning import TuningResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Bytes of one record in a store, beside its vector: the int64 id.
ID_BYTES = 8


@dataclass
class ReportData:
    """What the page is made from."""

    migration_id: str
    entries: list[LedgerEntry]
    spec: MigrationSpec | None = None
    status: MigrationStatus | None = None
    generated: datetime = field(default_factory=lambda: datetime.now(UTC))

    def of(self, kind: str) -> list[LedgerEntry]:
        """The entries of one kind, in ledger order."""
        return [e for e in self.entries if e.kind == kind]

    @property
    def began(self) -> datetime | None:
        return _at(self.entries[0]) if self.entries else None

    def seconds(self, entry: LedgerEntry) -> float:
        """Seconds from the migration's first entry to ``entry``."""
        began = self.began
        assert began is not None
        return (_at(entry) - began).total_seconds()

    def time_axis(self) -> tuple[float, str]:
        """(divisor of seconds, axis label): minutes, or seconds for a run of under two."""
        span = self.seconds(self.entries[-1]) if self.entries else 0.0
        if span < 120:
            return 1.0, "seconds since the migration began"
        return 60.0, "minutes since the migration began"

    def elapsed(self, entry: LedgerEntry) -> float:
        """Time from the migration's first entry to ``entry``, in :meth:`time_axis` units."""
        return self.seconds(entry) / self.time_axis()[0]


@dataclass
class Plot:
    """One figure of the page: its title, its SVG (None: no data) and what it shows."""

    key: str
    title: str
    svg: str | None
    caption: str


def _at(entry: LedgerEntry) -> datetime:
    at = datetime.fromisoformat(entry.at)
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise VecmigrateError(
            "the HTML report draws its plots with matplotlib: pip install 'vecmigrate[report]'"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _svg(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    _pyplot().close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]  # the XML prologue does not belong inside HTML


def _figure(width: float = 8.0, height: float = 3.6) -> tuple[Figure, Any]:
    fig, ax = _pyplot().subplots(figsize=(width, height))
    ax.grid(True, alpha=0.3)
    return fig, ax


# -- the plots -------------------------------------------------------------------------------------


def throughput(data: ReportData) -> Plot:
    """Vectors copied over time (cumulative) and the copy rate between shard completions."""
    copies = data.of("shard.copied")
    title = "Copy throughput"
    if not copies:
        return Plot("throughput", title, None, "No shard copy finished yet.")
    fig, ax = _figure()
    t = [data.elapsed(e) for e in copies]
    total, running = 0, []
    for e in copies:
        total += int(e.data.get("copied", 0))
        running.append(total)
    ax.step(t, running, where="post", color="#1f77b4", label="vectors copied")
    ax.set_xlabel(data.time_axis()[1])
    ax.set_ylabel("vectors copied")
    rates = [
        int(e.data.get("copied", 0)) / float(e.data["seconds"])
        for e in copies
        if float(e.data.get("seconds") or 0) > 0
    ]
    if rates:
        right = ax.twinx()
        right.plot(
            [data.elapsed(e) for e in copies if float(e.data.get("seconds") or 0) > 0],
            rates,
            "o",
            color="#ff7f0e",
            label="shard copy rate",
        )
        right.set_ylabel("vectors/s per shard")
    ax.legend(loc="upper left")
    mean = sum(rates) / len(rates) if rates else 0.0
    return Plot(
        "throughput",
        title,
        _svg(fig),
        f"{total:,} vectors copied in {len(copies)} shard copies; a shard copied at "
        f"{mean:,.0f} vectors/s on average.",
    )


def shard_durations(data: ReportData) -> Plot:
    """Seconds each shard's copy and index build took."""
    copies = {
        int(e.data["shard"]): float(e.data.get("seconds") or 0) for e in data.of("shard.copied")
    }
    builds = {
        int(e.data["shard"]): float(e.data.get("seconds") or 0) for e in data.of("shard.indexed")
    }
    title = "Shard durations"
    shards = sorted(set(copies) | set(builds))
    if not shards:
        return Plot("shards", title, None, "No shard finished its copy or build yet.")
    fig, ax = _figure()
    x = list(range(len(shards)))
    width = 0.4
    ax.bar([i - width / 2 for i in x], [copies.get(s, 0) for s in shards], width, label="copy")
    ax.bar([i + width / 2 for i in x], [builds.get(s, 0) for s in shards], width, label="index")
    ax.set_xticks(x, [str(s) for s in shards], rotation=90 if len(shards) > 24 else 0)
    ax.set_xlabel("shard")
    ax.set_ylabel("seconds")
    ax.legend()
    slowest = max(shards, key=lambda s: copies.get(s, 0) + builds.get(s, 0))
    return Plot(
        "shards",
        title,
        _svg(fig),
        f"{len(shards)} shards; the slowest, shard {slowest}, took "
        f"{copies.get(slowest, 0):.1f} s to copy and {builds.get(slowest, 0):.1f} s to index.",
    )


def _gate_points(data: ReportData) -> list[tuple[str, str, float, float | None, str]]:
    """(gate run, figure, value, threshold, comparison) of every ratio a gate judged."""
    points = []
    for n, entry in enumerate(data.of("gate"), start=1):
        report = GateReport.model_validate(entry.data)
        for v in report.verdicts:
            is_ratio = v.name.startswith(("recall", "overlap")) or v.name == "rank_correlation"
            if v.value is not None and is_ratio and v.comparison != "info":
                points.append((f"validation {n}", v.name, v.value, v.threshold, v.comparison))
    policy = data.spec.online.shadow if data.spec is not None else None
    for entry in data.of("shadow.gate"):
        figures = ShadowFigures.model_validate(entry.data)
        if figures.overlap is not None:
            threshold = policy.min_overlap if policy is not None else None
            points.append(
                (figures.step or "shadow", "shadow overlap", figures.overlap, threshold, ">=")
            )
    return points


def gates(data: ReportData) -> Plot:
    """recall@k and overlap@k of every gate run against its threshold."""
    points = _gate_points(data)
    title = "Recall and overlap per gate"
    if not points:
        return Plot("gates", title, None, "No gate has run yet.")
    fig, ax = _figure()
    runs = list(dict.fromkeys(p[0] for p in points))
    figures = list(dict.fromkeys(p[1] for p in points))
    for name in figures:
        mine = [p for p in points if p[1] == name]
        xs = [runs.index(p[0]) for p in mine]
        line = ax.plot(xs, [p[2] for p in mine], "o-", label=name)[0]
        limits = [(runs.index(p[0]), p[3]) for p in mine if p[3] is not None]
        if limits:
            ax.plot(
                [x for x, _ in limits],
                [y for _, y in limits],
                linestyle="--",
                marker="_",
                markersize=24,
                color=line.get_color(),
                alpha=0.7,
                label=f"{name} threshold",
            )
    ax.set_xticks(range(len(runs)), runs, rotation=20)
    ax.set_xlim(-0.6, len(runs) - 0.4)
    ax.set_ylim(min(0.0, *(p[2] for p in points)) - 0.02, 1.02)
    ax.set_ylabel("share of the top-k")
    ax.legend(fontsize="small", loc="lower left")
    failed = [p for p in points if p[3] is not None and not _holds(p[2], p[3], p[4])]
    return Plot(
        "gates",
        title,
        _svg(fig),
        f"{len(runs)} gate runs; "
        + (
            "every figure met its threshold."
            if not failed
            else f"{len(failed)} figure(s) below threshold: "
            + ", ".join(f"{p[1]} {p[2]:.3f} < {p[3]} at {p[0]}" for p in failed[:5])
        ),
    )


def _holds(value: float, threshold: float, comparison: str) -> bool:
    return value >= threshold if comparison == ">=" else value <= threshold


def latency(data: ReportData) -> Plot:
    """Search latency (p50, p99) of each version at each phase that measured it."""
    rows: list[tuple[str, float | None, float | None, float | None, float | None]] = []
    for n, entry in enumerate(data.of("gate"), start=1):
        f = GateReport.model_validate(entry.data).figures
        if f is not None and (f.p99_ms_old is not None or f.p99_ms_new is not None):
            rows.append((f"validation {n}", f.p50_ms_old, f.p99_ms_old, f.p50_ms_new, f.p99_ms_new))
    for entry in data.of("shadow.gate"):
        s = ShadowFigures.model_validate(entry.data)
        if s.samples:
            rows.append(
                (s.step or "shadow", s.p50_ms_old, s.p99_ms_old, s.p50_ms_new, s.p99_ms_new)
            )
    title = "Search latency per phase and version"
    if not rows:
        return Plot("latency", title, None, "No latency was measured yet.")
    source = data.spec.source.name if data.spec else "source"
    target = data.spec.target.name if data.spec else "target"
    fig, ax = _figure()
    x = list(range(len(rows)))
    width = 0.2
    series = (
        (f"{source} p50", 1, -1.5),
        (f"{source} p99", 2, -0.5),
        (f"{target} p50", 3, 0.5),
        (f"{target} p99", 4, 1.5),
    )
    for label, column, offset in series:
        ax.bar(
            [i + offset * width for i in x],
            [float(r[column] or 0) for r in rows],
            width,
            label=label,
        )
    ax.set_xticks(x, [r[0] for r in rows], rotation=20)
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_ylabel("milliseconds")
    ax.legend(fontsize="small")
    return Plot(
        "latency",
        title,
        _svg(fig),
        f"Latency of {source} (serving) and {target} (new) at validation (one query at a time, "
        "exact ground truth beside) and from shadow reads of live traffic.",
    )


def tuning_frontier(data: ReportData) -> Plot | None:
    """The recall/latency frontier search-parameter tuning measured (None: no tuning ran)."""
    entries = data.of("tuning.chosen")
    if not entries:
        return None
    t = TuningResult.model_validate(entries[-1].data)
    title = f"Tuning {t.parameter}: recall@{t.k} against p99 latency"
    measured = [c for c in t.candidates if c.recall is not None and c.p99_ms is not None]
    if not measured:
        return Plot("tuning", title, None, t.reason or "No candidate was measured.")
    fig, ax = _figure()
    for c in measured:
        assert c.recall is not None
        assert c.p99_ms is not None
        lo, hi = c.recall_interval or (c.recall, c.recall)
        colour = "tab:green" if c.passed else "tab:red"
        ax.errorbar(
            [c.p99_ms],
            [c.recall],
            yerr=[[c.recall - lo], [hi - c.recall]],
            fmt="o",
            color=colour,
            capsize=3,
        )
        served = " (serves)" if c.value == t.serving else ""
        ax.annotate(
            f"{t.parameter}={c.value}{served}",
            (c.p99_ms, c.recall),
            textcoords="offset points",
            xytext=(6, -10),
            fontsize="small",
        )
    ax.plot([c.p99_ms for c in measured], [c.recall for c in measured], color="grey", lw=0.8)
    ax.axhline(t.min_recall, color="black", ls="--", lw=0.8, label=f"min recall {t.min_recall}")
    if t.max_p99_ms is not None:
        ax.axvline(t.max_p99_ms, color="black", ls=":", lw=0.8, label=f"max p99 {t.max_p99_ms} ms")
    ax.set_xlabel("p99 milliseconds (mirrored live reads)")
    ax.set_ylabel(f"recall@{t.k} (95% interval)")
    ax.legend(fontsize="small")
    return Plot(
        "tuning",
        title,
        _svg(fig),
        f"Each candidate {t.parameter} tried on {t.queries} mirrored live reads against the exact "
        f"answer over the target's store; green met the gates. {t.reason}.",
    )


def _artifact_bytes(uri: str) -> int:
    """Bytes of an index artifact from its manifest (0 when it is not on this machine)."""
    try:
        manifest = Path(uri)
        meta = json.loads(manifest.read_text())
        return (manifest.parent / str(meta["file"])).stat().st_size
    except (OSError, ValueError, KeyError):
        return 0


def storage(data: ReportData) -> Plot:
    """What the target version holds over time: its vectors and its index artifacts."""
    title = "Storage growth of the target"
    dim = data.spec.target.embedding.dimension if data.spec is not None else None
    events = [e for e in data.entries if e.kind in ("shard.copied", "shard.indexed")]
    if not events or dim is None:
        return Plot("storage", title, None, "No shard copied or indexed yet.")
    per_record = dim * 4 + ID_BYTES
    t, vectors, index = [], [], []
    v_total = i_total = 0
    unseen = 0
    for e in events:
        if e.kind == "shard.copied":
            v_total += int(e.data.get("copied", 0)) * per_record
        else:
            size = _artifact_bytes(str(e.data.get("uri", "")))
            unseen += size == 0
            i_total += size
        t.append(data.elapsed(e))
        vectors.append(v_total / 2**20)
        index.append(i_total / 2**20)
    fig, ax = _figure()
    ax.stackplot(t, vectors, index, labels=["vectors and ids", "index artifacts"], step="post")
    ax.set_xlabel(data.time_axis()[1])
    ax.set_ylabel("MiB")
    ax.legend(loc="upper left")
    note = f" ({unseen} artifact(s) not on this machine are not counted)" if unseen else ""
    return Plot(
        "storage",
        title,
        _svg(fig),
        f"{(v_total + i_total) / 2**20:,.1f} MiB at the end: {v_total / 2**20:,.1f} MiB of "
        f"vectors ({dim}-d float32 and int64 ids) and {i_total / 2**20:,.1f} MiB of index{note}.",
    )


PLOTS: tuple[Callable[[ReportData], Plot], ...] = (
    throughput,
    shard_durations,
    gates,
    latency,
    storage,
)

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; }
table { border-collapse: collapse; } td, th { padding: 0.2em 0.8em; text-align: left; }
tr:nth-child(even) { background: #f4f4f4; } figure { margin: 1em 0; }
figcaption { color: #555; font-size: 0.9em; } .empty { color: #888; font-style: italic; }
svg { max-width: 100%; height: auto; }
"""


def _table(rows: list[tuple[str, str]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def _summary(data: ReportData) -> list[tuple[str, str]]:
    rows = [("migration", data.migration_id)]
    spec = data.spec
    if spec is not None:
        rows += [
            ("collection", f"{spec.tenant}/{spec.collection}"),
            ("strategy", spec.strategy),
            (
                "source",
                f"{spec.source.name} ({spec.source.store.kind}, {spec.source.index.kind}, "
                f"{spec.source.embedding.model_id}, {spec.source.embedding.dimension}d)",
            ),
            (
                "target",
                f"{spec.target.name} ({spec.target.store.kind}, {spec.target.index.kind}, "
                f"{spec.target.embedding.model_id}, {spec.target.embedding.dimension}d)",
            ),
        ]
    st = data.status
    if st is not None:
        rows.append(("phase", st.phase + (" (paused)" if st.paused else "")))
        if st.rate:
            rows.append(("copy rate", f"{st.rate:,.0f} vectors/s"))
        if st.blocked_reason:
            rows.append(("blocked", st.blocked_reason))
    phases = data.of("phase")
    if phases and st is None:
        rows.append(("phase", str(phases[-1].data.get("to", "?"))))
    return rows


def _timeline(data: ReportData) -> list[tuple[str, str]]:
    phases = data.of("phase")
    out = []
    for n, entry in enumerate(phases):
        ends = _at(phases[n + 1]) if n + 1 < len(phases) else None
        spent = f", {(ends - _at(entry)).total_seconds():,.1f} s" if ends else ""
        out.append((str(entry.data.get("to", "?")), f"{entry.at} by {entry.actor}{spent}"))
    return out


def render(data: ReportData) -> str:
    """The page, as one HTML document."""
    if not data.entries:
        raise VecmigrateError(
            f"migration {data.migration_id!r} has no ledger entries yet: nothing to plot"
        )
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>vecmigrate report: {html.escape(data.migration_id)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Migration {html.escape(data.migration_id)}</h1>",
        _table(_summary(data)),
    ]
    tuned = tuning_frontier(data)
    for plot in [make(data) for make in PLOTS] + ([tuned] if tuned is not None else []):
        parts.append(
            f"<h2 id='{plot.key}'>{html.escape(plot.title)}</h2><figure data-plot='{plot.key}'>"
        )
        if plot.svg is None:
            parts.append(f"<p class='empty'>{html.escape(plot.caption)}</p>")
        else:
            parts.append(plot.svg)
            parts.append(f"<figcaption>{html.escape(plot.caption)}</figcaption>")
        parts.append("</figure>")
    timeline = _timeline(data)
    if timeline:
        parts += ["<h2 id='phases'>Phases</h2>", _table(timeline)]
    parts.append(
        f"<p class='empty'>Generated {data.generated.isoformat(timespec='seconds')} from "
        f"{len(data.entries)} ledger entries.</p></body></html>"
    )
    return "\n".join(parts)
