"""Migrations as code: a directory of ordered, versioned spec files in the application's
repository, planned in CI and applied in order after an approval.

Files are named ``<number>_<name>.yaml`` (or ``-``, ``.yml``, ``.json``): the number orders them,
and the name without its extension is the step's key in the catalog (``code_migrations``).
``apply`` starts, in order, every step not applied yet and waits for each migration to end; a
step already applied with the same spec is skipped (re-running is a no-op), and a step whose file
changed since it was applied is refused, with the diff, before anything starts. ``plan`` checks
the same without starting anything: the first step still to run on each collection against the
catalog and stores, the later ones against the steps before them.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vecmigrate.catalog.applied import AppliedSpecs
from vecmigrate.catalog.catalog import Catalog
from vecmigrate.config import resolve_spec
from vecmigrate.control.client import MigrationClient
from vecmigrate.control.plan import Plan, plan_migration
from vecmigrate.errors import PreconditionError, SpecError
from vecmigrate.model.lifecycle import Phase
from vecmigrate.model.spec import MigrationSpec, as_applied_before, load_spec, parse_spec

STEP_FILE = re.compile(r"^(\d+)[_-][A-Za-z0-9_.-]*\.(ya?ml|json)$")


@dataclass
class Step:
    """One spec file of the directory and where it stands."""

    name: str
    path: Path
    order: int
    spec: MigrationSpec
    # applied (same spec, completed), running, pending, edited (changed since applied), failed
    # (its migration rolled back or was aborted).
    state: str = "pending"
    migration_id: str = ""
    diff: str = ""
    plan: Plan | None = None
    problems: list[str] = field(default_factory=list)
    note: str = ""


@dataclass
class DirectoryPlan:
    """Every step of a directory, and whether ``apply`` may go ahead."""

    directory: Path
    steps: list[Step]

    @property
    def problems(self) -> list[str]:
        return [f"{s.name}: {p}" for s in self.steps for p in s.problems]

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def pending(self) -> list[Step]:
        return [s for s in self.steps if s.state in ("pending", "running")]


def read_directory(directory: Path) -> list[Step]:
    """The directory's spec files in order, each validated.

    Raises:
        SpecError: a spec file without an order number, two files with one number, or an
            invalid spec (naming the file).
    """
    if not directory.is_dir():
        raise SpecError([f"{directory} is not a directory of spec files"])
    steps: list[Step] = []
    problems = []
    for path in sorted(directory.iterdir()):
        if path.suffix.lower() not in (".yaml", ".yml", ".json") or path.name.startswith("."):
            continue
        match = STEP_FILE.match(path.name)
        if match is None:
            problems.append(
                f"{path.name}: name each spec <number>_<name>.yaml (0001_ivf_to_hnsw.yaml); "
                "the number orders the steps"
            )
            continue
        try:
            spec = load_spec(path)
        except SpecError as exc:
            problems.extend(f"{path.name}: {p}" for p in exc.problems)
            continue
        steps.append(Step(name=path.stem, path=path, order=int(match.group(1)), spec=spec))
    steps.sort(key=lambda s: (s.order, s.name))
    seen: dict[int, str] = {}
    for step in steps:
        if step.order in seen:
            problems.append(f"{step.path.name} and {seen[step.order]} share number {step.order}")
        seen[step.order] = step.path.name
    if problems:
        raise SpecError(problems)
    if not steps:
        raise SpecError([f"{directory} holds no spec files (<number>_<name>.yaml)"])
    return steps


def spec_diff(recorded: dict[str, Any], current: MigrationSpec, name: str) -> str:
    """A unified diff of the spec as applied and as the file holds it now."""

    def lines(data: dict[str, Any]) -> list[str]:
        return yaml.safe_dump(data, sort_keys=True).splitlines(keepends=True)

    return "".join(
        difflib.unified_diff(
            lines(recorded),
            lines(current.model_dump(mode="json")),
            f"{name} (applied)",
            f"{name} (file)",
        )
    )


def plan_directory(catalog: Catalog, directory: Path) -> DirectoryPlan:
    """Where every step stands, and the plan of each one still to run; writes nothing."""
    steps = read_directory(directory)
    applied = AppliedSpecs(catalog)
    ahead: dict[tuple[str, str], Step] = {}  # the last step still to run, by collection
    for step in steps:
        spec = step.spec
        record = applied.get(step.name)
        step.migration_id = spec.migration_id
        if record is not None:
            step.migration_id = record.migration_id
            if record.spec_hash not in (spec.spec_hash(), _applied_hash(spec, record.spec)):
                step.state = "edited"
                step.diff = spec_diff(record.spec, spec, step.path.name)
                step.problems.append(
                    f"changed since it was applied ({record.started_at:%Y-%m-%d %H:%M}, "
                    f"migration {record.migration_id}); an applied spec cannot change: restore "
                    "it and add a new spec file for the change\n" + step.diff
                )
                continue
            if record.outcome == Phase.COMPLETED:
                step.state = "applied"
                continue
            if record.outcome == "running":
                step.state = "running"
                step.note = f"migration {record.migration_id} is running; apply waits for it"
                ahead[(spec.tenant, spec.collection)] = step
                continue
            step.state = "failed"
            step.problems.append(
                f"its migration {record.migration_id} ended {record.outcome}; an applied spec "
                "does not run again: fix forward with a new spec file (a new target version)"
            )
            continue
        if spec.schedule is not None:
            step.problems.append(
                "a schedule's template cannot be applied; create it with `vecmigrate schedule "
                "create`"
            )
            continue
        before = ahead.get((spec.tenant, spec.collection))
        if before is None:
            step.plan = plan_migration(catalog, resolve_spec(spec))
            step.problems.extend(step.plan.problems)
        else:
            step.note = f"checked against the catalog once {before.name} has run"
            if spec.source.name != before.spec.target.name:
                step.problems.append(
                    f"migrates from {spec.source.name}, but {before.name} leaves "
                    f"{before.spec.target.name} serving {spec.tenant}/{spec.collection}"
                )
        ahead[(spec.tenant, spec.collection)] = step
    return DirectoryPlan(directory=directory, steps=steps)


Progress = Callable[[Step, str], None]


async def apply_directory(
    mc: MigrationClient,
    catalog: Catalog,
    directory: Path,
    operator: str,
    progress: Progress | None = None,
) -> DirectoryPlan:
    """Start every step not applied yet, in order, waiting for each to end.

    Raises:
        PreconditionError: a step was edited since it was applied, its migration failed, or a
            step still to run fails its preconditions (nothing is started after the problem;
            an edited or failed step stops everything before the first start).
    """
    plan = plan_directory(catalog, directory)
    blocking = [s for s in plan.steps if s.state in ("edited", "failed")]
    if blocking:
        raise PreconditionError(
            "nothing was applied:\n  "
            + "\n  ".join(f"{s.name}: {p}" for s in blocking for p in s.problems)
        )
    applied = AppliedSpecs(catalog)
    tell = progress or (lambda _step, _text: None)
    for step in plan.steps:
        if step.state == "applied":
            tell(step, f"applied (spec {step.spec.spec_hash()[:12]}): skipped")
            continue
        if step.state == "pending":
            # Checked now, against the catalog as the steps before it left it.
            checked = plan_migration(catalog, resolve_spec(step.spec))
            if not checked.ok:
                raise PreconditionError(
                    f"{step.name} cannot start:\n  " + "\n  ".join(checked.problems)
                )
            mid = await mc.start(step.spec, operator=operator)
            applied.started(
                step.name,
                step.spec.spec_hash(),
                step.spec.model_dump(mode="json"),
                mid,
                str(directory),
                operator,
            )
            step.migration_id = mid
            tell(step, f"started {mid}")
        else:
            tell(step, f"waiting for {step.migration_id}")
        final = await mc.result(step.migration_id)
        applied.finished(step.name, str(final.phase))
        step.state = "applied" if final.phase == Phase.COMPLETED else "failed"
        tell(step, f"{final.phase}: {final.outcome}")
        if final.phase != Phase.COMPLETED:
            raise PreconditionError(
                f"{step.name}: migration {step.migration_id} ended {final.phase} "
                f"({final.outcome}); the steps after it were not started"
            )
    return plan


def _applied_hash(spec: MigrationSpec, recorded: dict[str, Any]) -> str:
    """The hash ``spec`` would have had when ``recorded`` was applied, under the defaults of
    that release (a gate default changed since is not an edit of the file)."""
    try:
        before = parse_spec(recorded)
    except SpecError:
        return ""
    return as_applied_before(spec, before).spec_hash()
