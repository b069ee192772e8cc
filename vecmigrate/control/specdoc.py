"""Documentation generated from the code, so that it cannot drift from it.

``python -m vecmigrate.control.specdoc > docs/spec-reference.md`` prints the spec reference,
rendered from the JSON schema of :class:`~vecmigrate.model.spec.MigrationSpec` (each model's
docstring and each field's, its type, default and bounds). Pages also carry generated blocks
between ``<!-- generated: NAME -->`` and ``<!-- end generated: NAME -->``: the stores'
capabilities (from :data:`~vecmigrate.stores.capabilities.CAPABILITIES`), the phases of each
strategy (from :data:`~vecmigrate.model.lifecycle.LIFECYCLE`) and the package's layout
(each module with the first sentence of its docstring). ``--write .`` rewrites the reference
and every block from the repository root; tests/test_docs.py fails when a committed page
differs from what this would write.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import re
import sys
import textwrap
import tokenize
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vecmigrate.model.lifecycle import LIFECYCLE, TERMINAL, Message, Phase
from vecmigrate.model.spec import ARTIFACT_INDEX_KINDS, NAME_PATTERN, MigrationSpec
from vecmigrate.stores.capabilities import CAPABILITIES

SPEC_PAGE = "spec-reference.md"

_BOUNDS = (
    ("minimum", ">="),
    ("exclusiveMinimum", ">"),
    ("maximum", "<="),
    ("exclusiveMaximum", "<"),
    ("minLength", "length >="),
    ("maxLength", "length <="),
)


def _prose(text: str) -> str:
    """A docstring as Markdown on one line: reST roles and double backticks become code."""
    return " ".join(re.sub(r":[a-z]+:(?=`)", "", text).replace("``", "`").split())


def _cell(text: str) -> str:
    return _prose(text).replace("|", "\\|")


def _anchor(name: str) -> str:
    """The anchor GitHub gives the heading ``## name`` (a model name: letters and digits)."""
    return name.lower()


def _ref_name(schema: dict[str, Any]) -> str:
    return str(schema["$ref"]).rsplit("/", 1)[-1]


def _bounds(schema: dict[str, Any]) -> str:
    return ", ".join(f"{op} {schema[key]:,}" for key, op in _BOUNDS if key in schema)


def _type(schema: dict[str, Any]) -> str:
    """A field's type in words, with links to the models it refers to."""
    if "$ref" in schema:
        name = _ref_name(schema)
        return f"[{name}](#{_anchor(name)})"
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    if "enum" in schema:
        return "one of " + ", ".join(f"`{v}`" for v in schema["enum"])
    for key in ("oneOf", "anyOf"):
        if key in schema:
            options = [_type(s) for s in schema[key] if s.get("type") != "null"]
            nullable = any(s.get("type") == "null" for s in schema[key])
            joined = options[0] if len(options) == 1 else "one of " + ", ".join(options)
            tag = schema.get("discriminator", {}).get("propertyName")
            if tag:
                joined += f" (chosen by `{tag}`)"
            return joined + (" or `null`" if nullable else "")
    kind = schema.get("type")
    if kind == "array":
        return f"list of {_type(schema.get('items', {}))}"
    if kind == "object" and schema.get("patternProperties"):
        ((pattern, value),) = schema["patternProperties"].items()
        key = "[name](#names)" if pattern == NAME_PATTERN else f"key matching `{pattern}`"
        return f"map of {key} to {_type(value)}"
    if kind == "string" and schema.get("pattern") == NAME_PATTERN:
        words = "[name](#names)"
    else:
        words = {"integer": "integer", "number": "number", "boolean": "boolean"}.get(
            str(kind), str(kind or "any")
        )
        if "pattern" in schema:
            words += f" matching `{schema['pattern']}`"
    bounds = _bounds(schema)
    return f"{words} ({bounds})" if bounds else words


def _default(field: dict[str, Any], required: bool) -> str:
    if required:
        return "required"
    if "default" in field:
        return f"`{json.dumps(field['default'])}`"
    # A default made by a factory is not in the schema: an empty container, or a model whose
    # own fields take their defaults.
    empty = {"object": "`{}`", "array": "`[]`"}.get(field.get("type", ""))
    return empty or "the defaults of its fields"


def _models_in_order(schema: dict[str, Any]) -> list[str]:
    """Every model the spec refers to, depth first in the order a spec names them."""
    defs: dict[str, Any] = schema.get("$defs", {})
    order: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if "$ref" in node:
                name = _ref_name(node)
                if name not in order:
                    order.append(name)
                    visit(defs[name])
            for key, value in node.items():
                if key != "$defs":
                    visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(schema.get("properties", {}))
    return order


def _section(name: str, model: dict[str, Any]) -> list[str]:
    lines = [f"## {name}", ""]
    if model.get("description"):
        lines += [_prose(model["description"]), ""]
    if "enum" in model:
        lines += ["Values: " + ", ".join(f"`{v}`" for v in model["enum"]) + ".", ""]
        return lines
    required = set(model.get("required", ()))
    lines += ["| field | type | default | description |", "|---|---|---|---|"]
    for field, spec in model.get("properties", {}).items():
        lines.append(
            f"| `{field}` | {_type(spec)} | {_default(spec, field in required)} "
            f"| {_cell(spec.get('description', ''))} |"
        )
    return [*lines, ""]


def spec_reference() -> str:
    """The spec reference page, in Markdown."""
    schema = MigrationSpec.model_json_schema()
    defs: dict[str, Any] = schema["$defs"]
    lines = [
        "# Spec reference",
        "",
        "<!-- Generated by `python -m vecmigrate.control.specdoc` from the pydantic models in",
        "vecmigrate/model/spec.py: edit the docstrings there, not this page. -->",
        "",
        "A migration spec is a YAML or JSON document (`vecmigrate plan SPEC` checks one without",
        "running it). Unknown fields are refused, so a misspelled field is an error, not a",
        "silent default. Where a threshold's type allows `null`, `null` switches its check off.",
        "Worked specs: [examples/](../examples/).",
        "",
        "## Names",
        "",
        "Tenants, collections, versions, regions and migration ids are names: 1 to 64 letters,",
        "digits, `_`, `.` or `-`, starting with a letter or a digit",
        f"(`{NAME_PATTERN}`).",
        "",
        *_section("MigrationSpec", schema),
    ]
    for name in _models_in_order(schema):
        lines += _section(name, defs[name])
    return "\n".join(lines).rstrip() + "\n"


# What a stable name is in each engine, for the capabilities table.
STABLE_NAMES = {
    "alias": "an alias (switched atomically)",
    "view": "a view (swapped in one transaction)",
}


def capabilities_table() -> str:
    """What each store holds and builds, as a Markdown table."""
    built = ", ".join(f"`{k}`" for k in ARTIFACT_INDEX_KINDS)
    lines = [
        "| store (`kind`) | indexes the database builds | largest dimension | metrics "
        "| scan order | transactions | stable name (`cutover.stable_name`) |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, caps in CAPABILITIES.items():
        native = ", ".join(
            f"`{k}`"
            + (
                f" (<= {caps.max_index_dimension[k]:,} dimensions)"
                if k in caps.max_index_dimension
                else ""
            )
            for k in sorted(caps.native_indexes)
        )
        metrics = ", ".join(f"`{m}`" for m in sorted(caps.metrics))
        lines.append(
            f"| `{kind}` | {native or 'none'} | {caps.max_dimension:,} | {metrics} "
            f"| {_cell(caps.scan_order)} | {'yes' if caps.transactions else 'no'} "
            f"| {STABLE_NAMES.get(caps.stable_names, 'none')} |"
        )
    lines += ["", f"Every store also carries the indexes vecmigrate builds from its data: {built}."]
    return "\n".join(lines)


def lifecycle_diagram(width: int = 96) -> str:
    """Each strategy in a sentence and its phases in order, with where a rollback and an abort
    lead, from the lifecycle table."""
    lines = [f"- `{name}`: {strategy.summary}" for name, strategy in LIFECYCLE.items()]
    label = max(len(name) for name in LIFECYCLE) + 2
    lines += ["", "```"]
    for name, strategy in LIFECYCLE.items():
        row = name.ljust(label)
        for i, phase in enumerate(strategy.phases):
            step = str(phase) if i == 0 else f" -> {phase}"
            if len(row) + len(step) > width:
                lines.append(row)
                row = " " * label + step.lstrip()
            else:
                row += step
        lines.append(row)
    lines += ["", *_rollback_and_abort(), "paused is a flag beside the phase, not a phase", "```"]
    return "\n".join(lines)


def _rollback_and_abort() -> list[str]:
    strategies = list(LIFECYCLE.values())
    refused = {st.name: next(s.phase for s in st.steps if s.rollback is None) for st in strategies}
    chain = "-> ROLLING_BACK -> ROLLED_BACK"
    if len(set(refused.values())) == 1:
        out = [f"rollback: any phase before {next(iter(refused.values()))} {chain}"]
    else:
        out = [
            f"rollback ({name}): any phase before {end} {chain}" for name, end in refused.items()
        ]
    for st in strategies:
        back = [s for s in st.steps if s.rollback not in (None, Phase.ROLLING_BACK)]
        if back:
            phases = " and ".join(str(s.phase) for s in back)
            out.append(f"          ({st.name} in {phases}: back to {back[0].rollback})")
    live = [s for st in strategies for s in st.steps if s.phase not in TERMINAL]
    if all(Message.ABORT in s.accepts for s in live):
        out.append("abort: any of these phases but COMPLETED -> ABORTED")
    return out


_SKIPPED_TOKENS = {tokenize.ENCODING, tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE}
# The parts whose __init__.py must stay empty (the workflow sandbox re-imports parents).
_EMPTY_PARTS = {
    "activities": "Temporal activities: thin adapters over the domain, typed errors, heartbeats.",
    "workers": "Worker processes and how every process connects to Temporal.",
    "workflows": "The deterministic workflows: the lifecycle, messages, continue-as-new.",
}


def _docstring(path: Path) -> str:
    """A module's docstring, read from its first token (parsing whole modules takes a second)."""
    with path.open("rb") as f:
        for token in tokenize.tokenize(f.readline):
            if token.type in _SKIPPED_TOKENS:
                continue
            if token.type == tokenize.STRING:
                return inspect.cleandoc(str(ast.literal_eval(token.string)))
            return ""
    return ""


def _summary(path: Path) -> str:
    """The first sentence of a module's docstring, on one line."""
    first = _prose(_docstring(path).split("\n\n")[0])
    end = first.find(". ")
    return first if end < 0 else first[: end + 1]


def layout_tree(width: int = 100) -> str:
    """The package's parts and modules, each with the first sentence of its docstring."""
    root = Path(__file__).resolve().parent.parent
    column = 28
    lines = ["```"]

    def entry(indent: int, name: str, text: str) -> None:
        head = " " * indent + name
        lines.extend(
            textwrap.wrap(
                text,
                width=width,
                initial_indent=head.ljust(column - 1) + " ",
                subsequent_indent=" " * column,
                break_on_hyphens=False,
            )
            or [head]
        )

    entry(0, "vecmigrate/", _summary(root / "__init__.py"))
    for module in sorted(root.glob("*.py")):
        if module.name != "__init__.py":
            entry(2, module.name, _summary(module))
    for part in sorted(d for d in root.iterdir() if (d / "__init__.py").exists()):
        text = _summary(part / "__init__.py") or _EMPTY_PARTS.get(part.name, "")
        entry(2, part.name + "/", text)
        for module in sorted(part.glob("*.py")):
            if module.name != "__init__.py":
                entry(4, module.name, _summary(module))
    lines.append("```")
    return "\n".join(lines)


# Blocks that pages carry between two markers, rewritten from the code.
BLOCKS: dict[str, Callable[[], str]] = {
    "capabilities": capabilities_table,
    "layout": layout_tree,
    "lifecycle": lifecycle_diagram,
}


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- generated: {name} -->", f"<!-- end generated: {name} -->"


def _replaced(page: str, pattern: re.Pattern[str], block: str) -> str:
    # A function, not a template: a block's backslashes are text.
    return pattern.sub(lambda _: block, page)


def refreshed(page: str) -> str:
    """``page`` with every generated block it carries rewritten from the code.

    Raises:
        ValueError: a block's opening marker without its closing one.
    """
    for name, render in BLOCKS.items():
        begin, end = _markers(name)
        if begin not in page:
            continue
        pattern = re.compile(re.escape(begin) + r"\n.*?" + re.escape(end), re.DOTALL)
        if not pattern.search(page):
            raise ValueError(f"{begin} has no {end} after it; put one where the block ends")
        page = _replaced(page, pattern, f"{begin}\n{render()}\n{end}")
    return page


def pages(root: Path) -> dict[Path, str]:
    """Every page under ``root`` with generated content, and what it should read."""
    wanted = {root / "docs" / SPEC_PAGE: spec_reference()}
    for path in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        if path.exists() and path not in wanted:
            wanted[path] = refreshed(path.read_text(encoding="utf-8"))
    return wanted


def write(root: Path) -> list[Path]:
    """Rewrite the generated pages and blocks under ``root``; the pages that changed."""
    changed = []
    for path, text in pages(root).items():
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    return changed


def parser() -> argparse.ArgumentParser:
    """The arguments of ``python -m vecmigrate.control.specdoc``."""
    p = argparse.ArgumentParser(
        prog="python -m vecmigrate.control.specdoc", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--block", choices=sorted(BLOCKS), help="print this block instead")
    p.add_argument(
        "--write",
        type=Path,
        metavar="ROOT",
        help="rewrite docs/spec-reference.md and the blocks in README.md and docs/*.md",
    )
    return p


def main(argv: list[str] | None = None) -> None:
    """Print the spec reference or one generated block, or rewrite them all."""
    args = parser().parse_args(argv)
    if args.write is not None:
        for path in write(args.write):
            print(f"wrote {path}", file=sys.stderr)
        return
    sys.stdout.write(BLOCKS[args.block]() + "\n" if args.block else spec_reference())


if __name__ == "__main__":
    main()
