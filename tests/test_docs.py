"""The documentation: a README short enough to read, links that resolve, generated parts that
match the code, and every command, import and spec it shows accepted by the code it describes."""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import io
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import TIERS
from vecmigrate.control import cli, specdoc
from vecmigrate.model.spec import parse_spec
from vecmigrate.workflows.migration import MigrationWorkflow

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = sorted(
    [README, ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").glob("*.md")]
)
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.DOTALL | re.MULTILINE)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def blocks(*languages: str) -> Iterator[tuple[Path, str]]:
    """Every fenced block of one of ``languages`` in the pages, with its page."""
    for page in PAGES:
        for language, body in FENCE.findall(page.read_text(encoding="utf-8")):
            if language in languages:
                yield page, body


def prose(text: str) -> str:
    """The page without its code: fenced blocks and inline code spans."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def anchors(page: Path) -> set[str]:
    """The anchors GitHub makes of a page's headings."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} (.+)$", FENCE.sub("", page.read_text()), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def test_readme_is_at_most_300_lines() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= 300, f"README.md has {lines} lines; move detail under docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_at_something_that_exists(page: Path) -> None:
    broken = []
    for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not ours to check offline
        path, _, fragment = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            broken.append(f"{target}: no heading makes #{fragment}")
    assert broken == [], f"{page.relative_to(ROOT)}: {broken}"


def test_generated_pages_and_blocks_match_the_code() -> None:
    stale = [
        str(path.relative_to(ROOT))
        for path, text in specdoc.pages(ROOT).items()
        if not path.exists() or path.read_text(encoding="utf-8") != text
    ]
    assert stale == [], f"stale: {stale}; run `python -m vecmigrate.control.specdoc --write .`"
    carried = {
        name: [p.name for p in PAGES if f"<!-- generated: {name} -->" in p.read_text()]
        for name in specdoc.BLOCKS
    }
    assert carried == {
        "capabilities": ["backends.md"],
        "layout": ["architecture.md"],
        "lifecycle": ["README.md"],
    }


def test_a_generated_block_without_its_end_marker_is_refused() -> None:
    with pytest.raises(ValueError, match="has no <!-- end generated: lifecycle -->"):
        specdoc.refreshed("intro\n<!-- generated: lifecycle -->\nold diagram\n")
    page = "a\n<!-- generated: lifecycle -->\nold\n<!-- end generated: lifecycle -->\nb\n"
    assert specdoc.lifecycle_diagram() in specdoc.refreshed(page)


def test_the_spec_reference_covers_every_field() -> None:
    schema = specdoc.MigrationSpec.model_json_schema()
    reference = (ROOT / "docs" / specdoc.SPEC_PAGE).read_text(encoding="utf-8")
    for name, model in [("MigrationSpec", schema), *schema["$defs"].items()]:
        section = reference.split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]
        for field in model.get("properties", {}):
            assert f"| `{field}` |" in section, (name, field)
    # A field's docstring is its description (pydantic's attribute docstrings).
    assert "| Records per copy batch: one transaction (under a `budget`" in reference


# -- commands --------------------------------------------------------------------------------


def commands() -> Iterator[tuple[Path, list[str]]]:
    """Each command line in the pages' shell blocks, split into words (``$(...)`` apart)."""
    for page, body in blocks("bash", "sh", "console"):
        for line in re.sub(r"\\\n\s*", " ", body).splitlines():  # continued lines joined
            line = line.removeprefix("$ ").strip()
            inner = re.findall(r"\$\(([^)]*)\)", line)
            for part in [re.sub(r"\$\([^)]*\)", "SUB", line), *inner]:
                words = shlex.split(part, comments=True)
                for segment in " ".join(shlex.quote(w) for w in words).split(" '&&' "):
                    split = shlex.split(segment)
                    while split and "=" in split[0] and not split[0].startswith("-"):
                        split = split[1:]  # environment assignments
                    if split and split[-1] == "&":
                        split = split[:-1]
                    if split:
                        yield page, split


def accepts(parser: argparse.ArgumentParser, args: list[str]) -> str | None:
    """Why ``parser`` refuses ``args``, or ``None`` (``--help`` is accepted)."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(args)
    except SystemExit as exc:
        return None if exc.code == 0 else err.getvalue().strip().splitlines()[-1]
    return None


def sized_options(source: str) -> set[str]:
    """The options a benchmark script's source takes from ``bench.common.sized_parser`` (the
    sizes it gives defaults for, and ``--out``): that parser, built with the same keywords."""
    from bench.common import sized_parser

    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "sized_parser":
            keywords = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg}
            parser = sized_parser(None, **keywords)
            found |= {o for a in parser._actions for o in a.option_strings}
    return found


def refusal(words: list[str]) -> str | None:
    """Why the code would refuse the command ``words``, or ``None``; commands of other
    programs are not checked."""
    program, args = Path(words[0]).name, words[1:]
    missing = [w for w in words if re.match(r"(examples|bench|scripts|docs)/\S+\.\w+$", w)]
    missing = [w for w in missing if not (ROOT / w).exists() and ".vector-io" not in w]
    if missing:
        return f"no such file {missing}"
    if program == "vecmigrate":
        return accepts(cli.parser(), args)
    if program == "demo.sh":
        return accepts(cli.parser(), ["demo", *args])
    if program == "test.sh":
        marks = args[args.index("-m") + 1].split() if "-m" in args else []
        unknown = [m for m in marks if m not in (*TIERS, "and", "or", "not")]
        return f"no tier {unknown}" if unknown else None
    if program.startswith("python") and args[:2] == ["-m", "vecmigrate.control.specdoc"]:
        return accepts(specdoc.parser(), args[2:])
    if program.startswith("python") and args and args[0].startswith("bench/"):
        script = ROOT / args[0]
        if not script.exists():
            return f"no script {args[0]}"
        source = script.read_text()
        shared = sized_options(source)
        flags = [a.split("=")[0] for a in args[1:] if a.startswith("--")]
        missing = [f for f in flags if f'"{f}"' not in source and f not in shared]
        return f"{args[0]} has no {missing}" if missing else None
    if program == "temporal" and "--name" in args:
        name = args[args.index("--name") + 1]
        return None if hasattr(MigrationWorkflow, name) else f"the workflow has no {name!r}"
    if program.endswith(".sh") and not (ROOT / words[0].removeprefix("./")).exists():
        return f"no script {words[0]}"
    return None


def test_every_command_in_the_docs_is_one_the_code_accepts() -> None:
    checked, refused = 0, []
    for page, words in commands():
        checked += 1
        reason = refusal(words)
        if reason is not None:
            refused.append(f"{page.relative_to(ROOT)}: {shlex.join(words)}: {reason}")
    assert refused == []
    assert checked > 40  # the pages' shell blocks were found and read


def test_the_command_check_catches_what_the_code_would_refuse() -> None:
    assert refusal(["vecmigrate", "start", "spec.yaml", "--wacth"]) is not None
    assert refusal(["vecmigrate", "cut-over", "ID"]) is not None
    assert refusal(["temporal", "workflow", "signal", "--name", "approve"]) is not None
    assert refusal(["python", "bench/copy_throughput.py", "--vectorz", "5"]) is not None
    # The size options sized_parser adds are the ones the script asks for, no others.
    assert refusal(["python", "bench/copy_throughput.py", "--vectors", "5", "--out", "x"]) is None
    assert refusal(["python", "bench/copy_throughput.py", "--shards", "2"]) is not None
    assert refusal(["python", "bench/chaos.py", "--out", "x"]) is not None
    assert refusal(["./scripts/test.sh", "-m", "quick"]) is not None
    assert refusal(["vecmigrate", "plan", "examples/no_such_spec.yaml"]) is not None
    assert refusal(["vecmigrate", "cutover", "ID", "--reason", "ok"]) is None


# -- code and specs --------------------------------------------------------------------------


def test_python_examples_import_names_that_exist() -> None:
    found = 0
    for page, body in blocks("python"):
        for node in ast.walk(ast.parse(body)):
            if isinstance(node, ast.ImportFrom) and node.module:
                module = importlib.import_module(node.module)
                for alias in node.names:
                    found += 1
                    assert hasattr(module, alias.name), (page.name, node.module, alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    importlib.import_module(alias.name)
    assert found >= 3


def test_dotted_names_in_the_docs_exist() -> None:
    for page in PAGES:
        for dotted in set(re.findall(r"`(vecmigrate(?:\.\w+)+)`", page.read_text())):
            parts = dotted.split(".")
            for cut in range(len(parts), 0, -1):
                with contextlib.suppress(ImportError):
                    target: object = importlib.import_module(".".join(parts[:cut]))
                    break
            for attr in parts[cut:]:
                assert hasattr(target, attr), (page.name, dotted)
                target = getattr(target, attr)


def test_whole_specs_in_the_docs_are_valid() -> None:
    specs = 0
    for _page, body in blocks("yaml"):
        data = yaml.safe_load(body)
        if isinstance(data, dict) and {"collection", "source", "target"} <= data.keys():
            parse_spec(data)
            specs += 1
    assert specs >= 3
