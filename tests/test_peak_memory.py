"""The memory a block adds to the process, sampled by one thread of the process for every
block open at once."""

from __future__ import annotations

import threading
import time

import numpy as np

from vecmigrate.telemetry.resources import PeakMemory


def samplers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "peak-memory"]


def test_blocks_open_at_once_share_one_thread_and_each_sees_what_grew_inside_it() -> None:
    with PeakMemory(every=0.01, keep=True) as outer:
        time.sleep(0.05)
        with PeakMemory(every=0.01) as inner:
            grown = np.ones(64 * 2**20 // 8)  # 64 MB, every page touched
            time.sleep(0.05)
            assert len(samplers()) == 1
            del grown
        time.sleep(0.03)
    assert inner.peak >= 60 * 2**20
    assert outer.peak >= inner.peak - 2**20  # the outer block saw the same growth
    # Sampled at the interval asked for: at least a few samples over its 0.13 s, each with
    # its time.
    assert len(outer.samples) >= 5
    times = [t for t, _ in outer.samples]
    assert times == sorted(times)
    # The thread outlives the blocks and serves the next one: no thread a block.
    with PeakMemory(every=0.01):
        time.sleep(0.02)
    assert len(samplers()) == 1


def test_a_block_measures_its_own_start_not_the_process_total() -> None:
    held = np.ones(32 * 2**20 // 8)  # allocated before the block: not its growth
    with PeakMemory(every=0.01) as block:
        time.sleep(0.03)
    assert block.peak < 16 * 2**20
    del held
