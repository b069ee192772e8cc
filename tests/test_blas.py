"""The OpenBLAS kernel the ``vecmigrate`` program asks for before numpy and FAISS load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vecmigrate.blas import SWITCH, VARIABLE, Cpu, chosen_core, prefer_core, this_cpu

AVX512 = "avx512f avx512dq avx512cd avx512bw avx512vl"


def cpuinfo(vendor: str, family: int, flags: str) -> str:
    one = f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: {family}\nflags\t\t: {flags}\n"
    # A second processor, unlike the first: only the first is read.
    return one + "\n" + one.replace(vendor, "Other").replace("processor\t: 0", "processor\t: 1")


@pytest.mark.fast
@pytest.mark.parametrize(
    ("vendor", "family", "flags", "environ", "expected"),
    [
        # Zen 5: OpenBLAS 0.3.15 knows neither the family nor, so, its AVX-512.
        ("AuthenticAMD", 26, f"sse3 avx2 fma {AVX512}", {}, "SkylakeX"),
        # Zen 4: a family OpenBLAS 0.3.15 knows, with AVX-512 it does not use.
        ("AuthenticAMD", 25, f"avx2 fma {AVX512}", {}, "SkylakeX"),
        # A later family without AVX-512 (or a VM that hides it): AVX2, not Barcelona.
        ("AuthenticAMD", 26, "sse3 avx2 fma avx512f", {}, "Haswell"),
        # Families OpenBLAS knows without AVX-512: its own choice.
        ("AuthenticAMD", 23, "avx2 fma", {}, None),
        ("AuthenticAMD", 26, "sse3 sse4_2", {}, None),
        # Intel: OpenBLAS finds the kernel by the processor's features.
        ("GenuineIntel", 6, f"avx2 fma {AVX512}", {}, None),
        # Whoever set the variable chose; the switch turns the choice off.
        ("AuthenticAMD", 26, f"avx2 fma {AVX512}", {VARIABLE: "Haswell"}, None),
        ("AuthenticAMD", 26, f"avx2 fma {AVX512}", {VARIABLE: ""}, None),
        ("AuthenticAMD", 26, f"avx2 fma {AVX512}", {SWITCH: "off"}, None),
        ("AuthenticAMD", 26, f"avx2 fma {AVX512}", {SWITCH: "auto"}, "SkylakeX"),
    ],
)
def test_the_kernel_chosen_for_a_processor(
    vendor: str, family: int, flags: str, environ: dict[str, str], expected: str | None
) -> None:
    assert chosen_core(Cpu.parse(cpuinfo(vendor, family, flags)), environ) == expected


@pytest.mark.fast
def test_prefer_core_sets_the_variable_only_when_it_chooses(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(cpuinfo("AuthenticAMD", 26, f"avx2 fma {AVX512}"))
    env: dict[str, str] = {}
    assert prefer_core(env, str(info)) == "SkylakeX"
    assert env == {VARIABLE: "SkylakeX"}
    kept = {VARIABLE: "Zen"}
    assert prefer_core(kept, str(info)) is None
    assert kept == {VARIABLE: "Zen"}
    # No such file (not Linux), or one without the fields: nothing chosen, nothing set.
    assert prefer_core(env := {}, str(tmp_path / "none")) is None
    assert env == {}
    info.write_text("processor\t: 0\nmodel name\t: something\n")
    assert prefer_core(env, str(info)) is None
    assert env == {}


# How each program is started, in a probe: ``vecmigrate`` (the command, every subcommand) and
# ``python -m vecmigrate.workers.main`` (the worker alone, as its module runs).
PROGRAMS = {
    "vecmigrate": "from vecmigrate.__main__ import run\nrun()\n",
    "python -m vecmigrate.workers.main": (
        "import runpy\nrunpy.run_module('vecmigrate.workers.main', run_name='__main__')\n"
    ),
}


@pytest.mark.integration  # a Python process of its own
@pytest.mark.parametrize("program", list(PROGRAMS))
def test_the_program_sets_it_before_faiss_loads_its_openblas(program: str) -> None:
    """Each program's entry point chooses before anything imports numpy or FAISS, and FAISS's
    own OpenBLAS then runs the chosen kernel (on this machine's processor: where nothing is
    chosen, the variable stays unset)."""
    pytest.importorskip("threadpoolctl")
    start = "".join(f"    {line}\n" for line in PROGRAMS[program].splitlines())
    probe = (
        "import os, sys, json\n"
        "sys.argv = ['prog', '--help']\n"
        "import vecmigrate.blas\n"
        "chosen = []\n"
        "prefer = vecmigrate.blas.prefer_core\n"
        "def watched(*a, **k):\n"
        "    chosen.append('numpy' in sys.modules)\n"
        "    return prefer(*a, **k)\n"
        "vecmigrate.blas.prefer_core = watched\n"
        "try:\n"
        f"{start}"
        "except SystemExit:\n"
        "    pass\n"
        "first = chosen == [False]\n"
        "import faiss\n"
        "from threadpoolctl import threadpool_info\n"
        "kernels = [lib.get('architecture') for lib in threadpool_info()\n"
        "           if 'faiss' in str(lib.get('filepath'))\n"
        "           and lib.get('internal_api') == 'openblas']\n"
        "print(json.dumps([os.environ.get('OPENBLAS_CORETYPE'), first, kernels]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in (VARIABLE, SWITCH)}
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    core, chosen_first, kernels = json.loads(done.stdout.strip().splitlines()[-1])
    assert core == chosen_core(this_cpu(), env)
    assert chosen_first, "the program did not choose the kernel before it imported numpy"
    if core is not None and kernels:
        assert kernels == [core]
