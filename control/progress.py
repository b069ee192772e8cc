"""Live progress of a running migration: a bar per shard and phase, with rate and ETA."""

from __future__ import annotations

import asyncio
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from temporalio.service import RPCError

from control.client import MigrationClient
from vecmigrate.errors import VecmigrateError
from vecmigrate.lifecycle import TERMINAL, MigrationStatus


class RateColumn(TextColumn):
    """Vectors per second of a task."""

    def __init__(self) -> None:
        super().__init__("")

    def render(self, task):  # type: ignore[no-untyped-def]
        from rich.text import Text

        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} vec/s" if speed else "", style="cyan")


async def watch(
    mc: MigrationClient,
    migration_id: str,
    console: Console,
    interval: float = 0.5,
    unreachable_after: float = 120.0,
) -> MigrationStatus:
    """Show progress until the migration ends; returns its final status.

    On a terminal: a live bar per shard with rate and ETA. Elsewhere (logs, CI): one line per
    phase change, pause and finished shard.

    Raises:
        VecmigrateError: Temporal stayed unreachable for ``unreachable_after`` seconds.
    """
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal,
    )
    copy_tasks: dict[int, TaskID] = {}
    build_tasks: dict[int, TaskID] = {}
    phase_line = progress.add_task("phase: PLANNED", total=None)
    seen: set[str] = set()
    last_phase = ""
    last_note = ""
    last_ok = time.monotonic()

    def say(line: str) -> None:
        if not console.is_terminal and line not in seen:
            seen.add(line)
            console.print(line, highlight=False)

    with progress:
        while True:
            try:
                st = await mc.status(migration_id)
                live = await mc.live_progress(migration_id)
                last_ok = time.monotonic()
            except RPCError as exc:
                if time.monotonic() - last_ok > unreachable_after:
                    raise VecmigrateError(
                        f"Temporal has not answered for {unreachable_after:.0f}s ({exc}); "
                        f"the migration {migration_id} goes on where it is: "
                        f"`vecmigrate watch {migration_id}` resumes watching"
                    ) from None
                await asyncio.sleep(interval)
                continue
            for s in st.shards:
                if s.shard not in copy_tasks:
                    copy_tasks[s.shard] = progress.add_task(
                        f"copy  shard {s.shard}", total=max(s.total, 1)
                    )
                beat = live.get(("copy_shard", s.shard))
                copied = s.copied if s.state != "copying" or beat is None else int(beat["copied"])
                progress.update(copy_tasks[s.shard], completed=copied, total=max(s.total, 1))
                if s.state in ("copied", "indexing", "indexed"):
                    say(f"    shard {s.shard}: copied {s.copied:,} in {s.seconds:.1f}s")
                build = live.get(("build_shard_index", s.shard))
                if s.state in ("indexing", "indexed") and s.shard not in build_tasks:
                    build_tasks[s.shard] = progress.add_task(
                        f"index shard {s.shard}", total=max(s.total, 1)
                    )
                if s.shard in build_tasks:
                    done = s.total if s.state == "indexed" else int(build["added"]) if build else 0
                    progress.update(build_tasks[s.shard], completed=done)
                if s.state == "indexed":
                    say(f"    shard {s.shard}: index built")
            note = st.pause_reason or st.blocked_reason
            if st.phase != last_phase or note != last_note:
                label = f"phase: [bold]{st.phase}[/bold]" + (
                    f"  [yellow]{note}[/yellow]" if note else ""
                )
                progress.update(phase_line, description=label)
                say(f"  {st.phase}" + (f": {note}" if note else ""))
                last_phase, last_note = st.phase, note
            if st.phase in TERMINAL:
                progress.update(phase_line, total=1, completed=1)
                return st
            await asyncio.sleep(interval)
