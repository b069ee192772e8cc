"""Chaos run at any size: kill -9 workers at random moments and restart Temporal once.

    python bench/chaos.py --vectors 1000000 --dim 128 --shards 32 --kills 8

Prints a table of what happened and what was checked, and writes it as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.table import Table

from bench.common import scratch, sized_parser, wide_console
from vecmigrate.testing.chaos import run_chaos


def main() -> None:
    p = sized_parser(__doc__, vectors=1_000_000, dim=128, shards=32, batch_size=10_000, out=False)
    p.add_argument("--parallel", type=int, default=2, help="shards in flight")
    p.add_argument("--workers", type=int, default=2, help="worker processes")
    p.add_argument("--kills", type=int, default=8)
    p.add_argument(
        "--kill-gap",
        type=float,
        nargs=2,
        default=(2.0, 12.0),
        metavar=("MIN", "MAX"),
        help="seconds between kills, drawn uniformly (default 2 12)",
    )
    p.add_argument("--throttle", type=float, default=None, help="vectors/s (default: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--home", type=Path, default=None, help="work directory (default: temporary)")
    p.add_argument("--json", type=Path, default=Path("bench/results/chaos.json"))
    args = p.parse_args()
    console = wide_console()
    home = args.home or scratch("chaos")
    report = run_chaos(
        home,
        n=args.vectors,
        dim=args.dim,
        shards=args.shards,
        batch_size=args.batch_size,
        parallel=args.parallel,
        workers=args.workers,
        kills=args.kills,
        throttle=args.throttle,
        heartbeat_seconds=5.0,
        seed=args.seed,
        timeout=3600,
        kill_gap=tuple(args.kill_gap),
        log=console.log,
    )
    table = Table(title=f"chaos run: {args.vectors:,} x {args.dim} vectors")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("worker kills (SIGKILL)", f"{report.kills} ({', '.join(report.kill_phases)})"),
        ("Temporal server restarts", str(report.server_restarts)),
        ("copy attempts retried", str(report.retried_copies)),
        ("vectors re-copied", f"{report.recopied:,}"),
        (
            "most re-copied by one retry",
            f"{report.max_recopied_per_retry:,} (batch {args.batch_size:,})",
        ),
        ("final phase / Temporal runs", f"{report.phase} / {report.runs}"),
        ("target rows / distinct ids", f"{report.target_rows:,} / {report.distinct_ids:,}"),
        (
            "ids and bytes match source",
            str(report.ids_match and report.checksum_source == report.checksum_target),
        ),
        ("total seconds", f"{report.seconds:,.1f}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report.as_dict(), indent=2))
    if not report.passed:
        console.print("[red]FAILED[/red]: " + "; ".join(report.problems))
        sys.exit(1)
    console.print(f"[green]passed[/green]; figures in {args.json}")


if __name__ == "__main__":
    main()
