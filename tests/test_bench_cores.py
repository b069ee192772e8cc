"""The online benchmark's split of the cores between the application's side and the
migration's (``--serving-cores``)."""

from __future__ import annotations

import os

import pytest

from bench.common import pinned, split_cores

linux = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux pins to cores")


def test_no_split_without_serving_cores() -> None:
    assert split_cores(0) is None


@linux
def test_the_last_cores_serve_and_the_others_migrate() -> None:
    mine = sorted(os.sched_getaffinity(0))
    if len(mine) < 2:
        pytest.skip("one core: nothing to split")
    split = split_cores(1)
    assert split is not None
    serving, migration = split
    assert serving == {mine[-1]}
    assert migration == set(mine[:-1])
    with pytest.raises(SystemExit, match=f"--serving-cores {len(mine)} leaves no core"):
        split_cores(len(mine))


@linux
def test_pinned_holds_the_thread_on_its_cores_and_lets_go() -> None:
    before = os.sched_getaffinity(0)
    one = {min(before)}
    with pinned(one):
        assert os.sched_getaffinity(0) == one
    assert os.sched_getaffinity(0) == before
    with pinned(None):
        assert os.sched_getaffinity(0) == before
