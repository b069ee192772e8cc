"""Which OpenBLAS kernel the process's BLAS libraries load, chosen before they load.

FAISS's exact search (the copy's streamed ground truth, the gates' exact search, the router's
search of records not yet in an index) and its k-means (IVF training) run on BLAS, and the
faiss-cpu wheels bundle their own OpenBLAS, 0.3.15 (2021). That release does not know AMD's
Zen 5 (CPU family 26) and falls back to its kernel for the 2007 "Barcelona": on a Zen 5
machine with AVX-512, the gate's exact search (1,000 queries over 100,000 x 128) took 0.65 s
with it against 0.23 s with OpenBLAS's AVX-512 kernel ("SkylakeX"); numpy's newer OpenBLAS
picks that kernel by itself. OpenBLAS reads ``OPENBLAS_CORETYPE`` once, when it loads, so the
``vecmigrate`` program sets it before anything imports numpy or FAISS (:func:`prefer_core`):

* only on AMD processors, where OpenBLAS 0.3.15 chooses by the processor's family and takes
  Barcelona for one it does not know (elsewhere its choice is kept): with the AVX-512
  features OpenBLAS's AVX-512 kernel uses, ``SkylakeX`` (what numpy's OpenBLAS 0.3.31 chose
  on that Zen 5 itself); on a family it does not know (26 and later) without them,
  ``Haswell`` (AVX2 and FMA);
* never over a value already set: whoever set ``OPENBLAS_CORETYPE`` chose;
* not at all with ``VECMIGRATE_BLAS_CORE=off``.

A program that imports vecmigrate as a library keeps its own BLAS set-up: the libraries may be
loaded by then, and the choice is the program's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

VARIABLE = "OPENBLAS_CORETYPE"
SWITCH = "VECMIGRATE_BLAS_CORE"
CPUINFO = "/proc/cpuinfo"

# What OpenBLAS's SkylakeX kernels execute (its own test for them, ``support_avx512``).
AVX512 = frozenset({"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"})
AVX2 = frozenset({"avx2", "fma"})
# The first AMD family OpenBLAS 0.3.15 does not know (Zen 5).
UNKNOWN_FAMILY = 0x1A

# What :func:`prefer_core` set in this process, for the worker's log.
_chosen: str | None = None


@dataclass(frozen=True)
class Cpu:
    """What :func:`chosen_core` needs of the first processor in ``/proc/cpuinfo``."""

    vendor: str
    family: int
    flags: frozenset[str]

    @classmethod
    def parse(cls, cpuinfo: str) -> Cpu | None:
        """The first processor's vendor, family and flags; None when the text lacks them."""
        fields: dict[str, str] = {}
        for line in cpuinfo.splitlines():
            if not line.strip():
                if fields:
                    break
                continue
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
        try:
            return cls(
                vendor=fields["vendor_id"],
                family=int(fields["cpu family"]),
                flags=frozenset(fields["flags"].split()),
            )
        except (KeyError, ValueError):
            return None


def this_cpu(cpuinfo: str = CPUINFO) -> Cpu | None:
    """This machine's first processor (None where ``cpuinfo`` cannot be read or lacks it)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            return Cpu.parse(f.read())
    except OSError:
        return None


def chosen_core(cpu: Cpu | None, env: Mapping[str, str]) -> str | None:
    """The OpenBLAS kernel to ask for, or None to leave OpenBLAS its own choice."""
    if cpu is None or VARIABLE in env or env.get(SWITCH, "auto").lower() == "off":
        return None
    if cpu.vendor != "AuthenticAMD":
        return None
    if cpu.flags >= AVX512:
        return "SkylakeX"
    if cpu.family >= UNKNOWN_FAMILY and cpu.flags >= AVX2:
        return "Haswell"
    return None


def prefer_core(
    environ: MutableMapping[str, str] | None = None, cpuinfo: str = CPUINFO
) -> str | None:
    """Set ``OPENBLAS_CORETYPE`` to :func:`chosen_core`'s kernel, if any, and return it.

    Call it before numpy or FAISS is imported; later it changes nothing for them.
    """
    env = os.environ if environ is None else environ
    core = chosen_core(this_cpu(cpuinfo), env)
    if core is not None:
        env[VARIABLE] = core
        if environ is None:
            global _chosen
            _chosen = core
    return core


def described() -> str | None:
    """Which OpenBLAS kernel this process asked for, and who chose it (None: OpenBLAS's own)."""
    if _chosen is not None and os.environ.get(VARIABLE) == _chosen:
        return f"{_chosen}, chosen for this processor ({SWITCH}=off leaves OpenBLAS its own)"
    core = os.environ.get(VARIABLE)
    return None if core is None else f"{core}, as {VARIABLE} sets it"
