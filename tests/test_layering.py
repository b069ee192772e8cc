"""Import rules: the domain never imports Temporal; workflows import nothing with I/O."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parent.parent


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_domain_never_imports_temporalio() -> None:
    offenders = {
        str(p.relative_to(ROOT)): m
        for p in (ROOT / "vecmigrate").rglob("*.py")
        for m in imported_modules(p)
        if m.split(".")[0] == "temporalio"
    }
    assert offenders == {}


def test_workflows_import_only_temporalio_stdlib_and_pure_models() -> None:
    import sys

    allowed_vecmigrate = {
        "vecmigrate.spec",
        "vecmigrate.lifecycle",
        "vecmigrate.regions",
        "vecmigrate.tasks",
        "vecmigrate.errors",
    }
    for path in (ROOT / "workflows").rglob("*.py"):
        for module in imported_modules(path):
            top = module.split(".")[0]
            if top in ("temporalio", "__future__") or top in sys.stdlib_module_names:
                continue
            if module == "workflows.common":  # shared deterministic helpers, checked here too
                continue
            assert module in allowed_vecmigrate, f"{path.name} imports {module}"


def test_pure_models_import_no_io_libraries() -> None:
    banned = {"numpy", "faiss", "hnswlib", "sqlalchemy"}
    for name in ("spec.py", "lifecycle.py", "tasks.py", "errors.py"):
        tops = {m.split(".")[0] for m in imported_modules(ROOT / "vecmigrate" / name)}
        assert not (tops & banned), f"{name} imports {tops & banned}"
