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

from vecmigrate.control.client import MigrationClient
from vecmigrate.errors import VecmigrateError
from vecmigrate.model.lifecycle import TERMINAL
from vecmigrate.model.status import MigrationStatus


class RateColumn(TextColumn):
    """Vectors per second of a task."""

    def __init__(self) -> None:
        super().__init__("")

    def render(self, task):  # type: ignore[no-untyped-def]
        from rich.text import Text

        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} vec/s" if speed else "", style="cyan")


# Up to this many shards every shard gets its own bars; beyond, only the shards in flight do.
FEW_SHARDS = 16


async def watch(
    mc: MigrationClient,
    migration_id: str,
    console: Console,
    interval: float = 0.5,
    unreachable_after: float = 120.0,
    until_gate_fails: bool = False,
) -> MigrationStatus:
    """Show progress until the migration ends (or, ``until_gate_fails``, until it waits at a
    failed gate for an operator); returns the status it stopped at.

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
    all_copy: TaskID | None = None
    all_index: TaskID | None = None
    seen: set[str] = set()
    last_phase = ""
    last_note = ""
    last_ok = time.monotonic()

    def say(line: str) -> None:
        if not console.is_terminal and line not in seen:
            seen.add(line)
            console.print(line, highlight=False)

    def shard_bar(tasks: dict[int, TaskID], label: str, shard: int, total: int, show: bool) -> None:
        """A bar per shard while few; with many, bars only for the shards in flight."""
        if show and shard not in tasks:
            tasks[shard] = progress.add_task(f"{label} shard {shard}", total=max(total, 1))
        elif not show and shard in tasks:
            progress.remove_task(tasks.pop(shard))

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
            few = len(st.shards) <= FEW_SHARDS
            if st.shards and all_copy is None:
                total = sum(s.total for s in st.shards)
                all_copy = progress.add_task("copy  all shards", total=max(total, 1))
                all_index = progress.add_task("index all shards", total=len(st.shards))
            copied_all = 0
            for s in st.shards:
                beat = live.get(("copy_shard", s.shard))
                copied = s.copied if s.state != "copying" or beat is None else int(beat["copied"])
                copied_all += copied
                shard_bar(copy_tasks, "copy ", s.shard, s.total, few or s.state == "copying")
                if s.shard in copy_tasks:
                    progress.update(copy_tasks[s.shard], completed=copied, total=max(s.total, 1))
                if few and s.state in ("copied", "indexing", "indexed"):
                    say(f"    shard {s.shard}: copied {s.copied:,}")
                build = live.get(("build_shard_index", s.shard))
                building = s.state == "indexing" or (few and s.state == "indexed")
                shard_bar(build_tasks, "index", s.shard, s.total, building)
                if s.shard in build_tasks:
                    done = s.total if s.state == "indexed" else int(build["added"]) if build else 0
                    progress.update(build_tasks[s.shard], completed=done)
                if few and s.state == "indexed":
                    say(f"    shard {s.shard}: index built")
            if all_copy is not None and all_index is not None:
                progress.update(all_copy, completed=copied_all)
                indexed = sum(s.state in ("indexed", "validating", "validated") for s in st.shards)
                progress.update(all_index, completed=indexed)
            note = st.pause_reason or st.blocked_reason or st.outcome
            if st.retrying and not note:
                step = st.retrying[0]
                note = (
                    f"retrying {step.activity} (attempt {step.attempt}): "
                    f"{step.error_type}: {step.last_error[:120]}"
                )
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
            if until_gate_fails and st.paused and st.remedies:
                return st
            await asyncio.sleep(interval)
