"""What a killed worker costs: vectors copied again and seconds lost, per kill.

    python bench/resume_cost.py --vectors 200000 --kills 6

Runs the chaos migration twice on the same data: once with no fault, once with worker
processes killed with SIGKILL (no server restart). Re-copied vectors come from the shard
journal (every vector handed to the target over all attempts, minus the ones that count);
seconds lost per kill are the difference in wall time over the number of kills.
Target: at most one batch re-copied per kill.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import bar_chart, report, scratch, sized_parser
from vecmigrate.testing.chaos import run_chaos


def main() -> None:
    p = sized_parser(__doc__, vectors=200_000, dim=64, shards=8, batch_size=5_000)
    p.add_argument("--kills", type=int, default=6)
    p.add_argument("--throttle", type=float, default=20_000.0, help="copy vectors/s")
    args = p.parse_args()
    runs = []
    for kills in (0, args.kills):
        home = scratch("resume")
        runs.append(
            run_chaos(
                home,
                n=args.vectors,
                dim=args.dim,
                shards=args.shards,
                batch_size=args.batch_size,
                kills=kills,
                restart_server=False,
                throttle=args.throttle,
                heartbeat_seconds=3.0,
                kill_gap=(1.0, 3.0),
                log=lambda _: None,
            )
        )
    clean, faulty = runs
    rows: list[dict[str, Any]] = [
        {
            "run": "no fault" if r.kills == 0 else f"{r.kills} kills",
            "seconds": r.seconds,
            "retried_copies": r.retried_copies,
            "recopied": r.recopied,
            "most_per_retry": r.max_recopied_per_retry,
            "data_intact": r.passed,
        }
        for r in runs
    ]
    per_kill = (faulty.seconds - clean.seconds) / max(1, faulty.kills)

    report(
        "resume_cost",
        f"resume cost: {args.vectors:,} x {args.dim}, batch {args.batch_size:,}",
        rows,
        {
            "re-copied per retried copy (max)": f"{faulty.max_recopied_per_retry:,}",
            "target": f"<= one batch ({args.batch_size:,})",
            "met": faulty.max_recopied_per_retry <= args.batch_size and faulty.passed,
            "seconds lost per kill": f"{per_kill:.1f} (heartbeat timeout 3 s)",
        },
        bar_chart(
            [row["run"] for row in rows],
            [row["seconds"] for row in rows],
            value_label="seconds",
            title=f"{args.vectors:,} vectors: {per_kill:.1f} s lost per kill",
            figsize=(6, 3),
        ),
        out=args.out,
    )


if __name__ == "__main__":
    main()
