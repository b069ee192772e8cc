"""Operator ergonomics: every option explains itself, the catalog is the same from any directory,
and a command that steers a finished migration says how it ended and what can still be done."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from temporalio.client import Client

from tests.conftest import Sandbox, running_worker
from tests.test_cli_matrix import run_cli, said
from tests.test_workflow import wait_for
from vecmigrate.config import default_catalog_url, home_dir, resolve_store, sqlite_url
from vecmigrate.control.arguments import parser
from vecmigrate.control.client import MigrationClient
from vecmigrate.model.lifecycle import Phase
from vecmigrate.model.spec import MilvusStoreRef, QdrantStoreRef


def walk(
    p: argparse.ArgumentParser, path: str = "vecmigrate"
) -> list[tuple[str, argparse.ArgumentParser]]:
    """Every parser under ``p`` with its command line."""
    found = [(path, p)]
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += walk(child, f"{path} {name}")
    return found


def test_every_command_and_every_option_has_a_help_line() -> None:
    missing = []
    commands = 0
    for path, p in walk(parser()):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                helped = {a.dest for a in action._choices_actions if a.help}
                missing += [f"{path} {n}" for n in action.choices if n not in helped]
                commands += len(action.choices)
            elif not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    assert commands > 20
    assert missing == []


_LOADED_LIBRARIES = """
import sys
try:
    CALL
except SystemExit as done:
    code = done.code
heavy = ("temporalio", "sqlalchemy", "faiss", "hnswlib", "numpy", "pyarrow", "psycopg")
print(f"{code}|{','.join(m for m in heavy if m in sys.modules)}", file=sys.stderr)
"""


@pytest.mark.integration
@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["--help"], 0),
        (["worker", "--help"], 0),
        (["keys", "rotate", "--help"], 0),
        (["status", "some-migration", "--no-such-flag"], 2),
        (["stattus"], 2),
        (["serve", "--help"], 0),
    ],
)
def test_help_and_mistyped_flags_are_answered_before_the_commands_libraries_load(
    argv: list[str], code: int
) -> None:
    """``vecmigrate --help`` took 1.3 s when every command's libraries loaded first; the flags
    are read before them now (``vecmigrate.control.arguments``)."""
    if argv[0] == "serve":
        call = f"from vecmigrate.serving.command import main; main({argv[1:]!r})"
    else:
        call = f"sys.argv = {['vecmigrate', *argv]!r}; from vecmigrate.__main__ import run; run()"
    done = subprocess.run(
        [sys.executable, "-c", _LOADED_LIBRARIES.replace("CALL", call)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    exited, loaded = done.stderr.strip().splitlines()[-1].split("|")
    assert (int(exited), loaded) == (code, ""), done.stderr
    if code == 0:
        assert "usage: vecmigrate" in done.stdout
    else:
        assert "error:" in done.stderr


def test_the_home_does_not_depend_on_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VECMIGRATE_HOME", raising=False)
    monkeypatch.delenv("VECMIGRATE_CATALOG_URL", raising=False)
    seen = set()
    for where in ("a", "b"):
        (tmp_path / where).mkdir()
        monkeypatch.chdir(tmp_path / where)
        seen.add(
            (home_dir(), default_catalog_url(), resolve_store(MilvusStoreRef(uri="/m.db")).uri)
        )
    assert len(seen) == 1
    (home,) = {h for h, _, _ in seen}
    assert tmp_path not in home.parents
    monkeypatch.setenv("VECMIGRATE_HOME", str(tmp_path / "mine"))
    assert default_catalog_url() == sqlite_url(tmp_path / "mine" / "catalog.db")
    monkeypatch.setenv("VECMIGRATE_CATALOG_URL", "postgresql://u@db/catalog")
    assert default_catalog_url() == "postgresql://u@db/catalog"
    # Relative file locations in a spec are taken from where the command runs, once.
    monkeypatch.chdir(tmp_path / "a")
    assert resolve_store(QdrantStoreRef(path="q")).path == str(tmp_path / "a" / "q")
    assert resolve_store(MilvusStoreRef(uri="m.db")).uri == str(tmp_path / "a" / "m.db")
    assert resolve_store(MilvusStoreRef(uri="http://milvus:19530")).uri == "http://milvus:19530"


def test_where_and_plan_see_one_catalog_from_any_directory(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("VECMIGRATE_HOME", str(home))
    monkeypatch.delenv("VECMIGRATE_CATALOG_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(
        "seed", "--collection", "docs", "--size", "800", "--data", "synthetic", "--shards", "1"
    )
    assert code == 0, err
    v1 = json.loads(out)["version"]
    v2 = {**v1, "name": "v2", "index": {"kind": "hnswlib_hnsw"}}
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"collection": "docs", "source": v1, "target": v2}))
    for where in ("x", "y/z"):
        (tmp_path / where).mkdir(parents=True)
        monkeypatch.chdir(tmp_path / where)
        code, out, _ = run_cli("where")
        assert f"catalog     sqlite:///{home / 'catalog.db'}" in out
        code, out, err = run_cli("plan", str(spec), "--json")
        assert code == 0, err + out
        assert json.loads(out)["ok"]
        assert list((tmp_path / where).iterdir()) == []
    # An earlier release's catalog in the current directory is pointed out, not used.
    legacy = tmp_path / "old" / ".vecmigrate"
    legacy.mkdir(parents=True)
    (legacy / "catalog.db").write_bytes(b"")
    monkeypatch.chdir(tmp_path / "old")
    monkeypatch.delenv("VECMIGRATE_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    code, out, err = run_cli("where")
    assert code == 0
    assert said(f"set VECMIGRATE_HOME={legacy}", err), err


async def test_steering_a_finished_migration_says_how_it_ended(
    client: Client, sandbox: Sandbox
) -> None:
    sandbox.seed(1500)
    address = client.service_client.config.target_host
    completed = sandbox.spec(cutover={"mode": "automatic", "bake_seconds": 0.1})
    rolled_back = sandbox.spec(
        collection="docs2",
        gates={"min_recall": 0.999, "sample_queries": 50, "on_failure": "rollback"},
        target=sandbox.poor_target(),
    )
    sandbox.seed(1500, collection="docs2")
    async with running_worker(client, sandbox) as queue:
        mc = MigrationClient(client, queue)
        done = await mc.result(await mc.start(completed))
        assert done.phase == Phase.COMPLETED
        back = await mc.result(await mc.start(rolled_back))
        assert back.phase == Phase.ROLLED_BACK
        cases = {
            ("cutover", completed.migration_id): (
                "has finished at",
                "completed: reads are served by v2. v1 is retained.",
                f"vecmigrate report {completed.migration_id}",
                "`vecmigrate cutover` does nothing now",
            ),
            ("throttle", completed.migration_id): ("`vecmigrate throttle` does nothing now",),
            ("resume", rolled_back.migration_id): (
                "rolled back",
                "reads are served by v1",
                "v2 was abandoned.",
                "start a migration to a new target version name",
            ),
        }
        for (command, mid), expected in cases.items():
            args = [command, mid, *(["1000"] if command == "throttle" else [])]
            code, out, err = await asyncio.to_thread(
                run_cli, *args, "--address", address, "--task-queue", queue
            )
            assert code == 2, out + err
            for words in expected:
                assert said(words, err), err
            assert "Traceback" not in err
        await wait_for(mc, completed.migration_id, lambda s: s.phase == Phase.COMPLETED)


def test_the_operations_guide_names_every_command_message_and_payload() -> None:
    guide = (Path(__file__).parent.parent / "docs" / "operations.md").read_text()
    for path, _ in walk(parser()):
        if path == "vecmigrate":
            continue
        parent, name = path.rsplit(" ", 1)
        assert f"`{parent} " in guide, path
        assert re.search(rf"`{parent} [^`]*\b{re.escape(name)}\b", guide), path
    for name in ("pause", "resume", "approve_cutover", "rollback", "abort"):
        assert f"--name {name} " in guide, name
    for name, field in (("set_throttle", "max_vectors_per_second"), ("set_ramp", "percent")):
        assert f"update execute --workflow-id ID --name {name}" in guide
        assert f'"{field}"' in guide
    assert "temporal workflow query  --workflow-id ID --name status" in guide
