"""Loading an hnswlib file without holding the GIL for the whole load
(``vecmigrate.indexes.hnswfile``): the index it makes is the one ``load_index`` makes, slot for
slot, after any history of writes, and a damaged file is refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np
import pytest

from vecmigrate.errors import ArtifactError
from vecmigrate.indexes.artifacts import LoadedIndex, build_index, write_artifact
from vecmigrate.indexes.hnswfile import read_index, slot_labels
from vecmigrate.model.spec import HnswlibHnsw, Metric
from vecmigrate.security.keyring import KeyRing


def written(
    tmp_path: Path, space: str, dim: int, m: int, n: int, seed: int, history: bool
) -> tuple[Path, np.ndarray]:
    """An hnswlib file after ``n`` adds and, with ``history``, a random run of deletes,
    overwrites, deleted labels brought back and new labels in freed slots, the writes
    ``LoadedIndex`` makes (labels negative as int64, as string and UUID ids are, among
    them)."""
    rng = np.random.default_rng(seed)
    index = hnswlib.Index(space=space, dim=dim)
    index.init_index(max(n, 1) + 64, M=m, ef_construction=40, allow_replace_deleted=True)
    labels = rng.integers(-(2**62), 2**62, n).astype(np.int64)
    labels[: n // 3] = np.arange(n // 3)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    if n:
        index.add_items(x, labels.view(np.uint64))
    live = set(labels.tolist())
    gone: set[int] = set()
    for _ in range(200 if history and n > 1 else 0):
        op = rng.integers(4)
        v = rng.standard_normal((1, dim)).astype(np.float32)
        if op == 0 and len(live) > 1:  # delete
            label = int(rng.choice(sorted(live)))
            index.mark_deleted(np.uint64(label & (2**64 - 1)))
            live.discard(label)
            gone.add(label)
        elif op == 1 and live:  # overwrite in place
            label = int(rng.choice(sorted(live)))
            index.add_items(v, np.array([label], np.int64).view(np.uint64))
        elif op == 2 and gone:  # a deleted label comes back (as ``LoadedIndex.replace`` does)
            label = int(rng.choice(sorted(gone)))
            as_label = np.array([label], np.int64).view(np.uint64)
            try:
                index.unmark_deleted(as_label[0])  # in its own slot
                index.add_items(v, as_label)
            except RuntimeError:  # its slot went to another label: a new slot
                index.add_items(v, as_label, replace_deleted=True)
            gone.discard(label)
            live.add(label)
        else:  # a new label, into a freed slot when there is one
            label = int(rng.integers(-(2**62), 2**62))
            index.add_items(v, np.array([label], np.int64).view(np.uint64), replace_deleted=True)
            live.add(label)
    path = tmp_path / f"{space}-{dim}-{m}-{n}-{seed}.bin"
    index.save_index(str(path))
    return path, x


def state(index: Any) -> dict[str, Any]:
    """What an index holds: its parameters, slots, links, labels and deletions (the label map
    as sorted pairs: its order is a hash map's)."""
    s = dict(index.__getstate__()[0])
    del s["num_threads"], s["seed"]  # the process's defaults, not the file's
    external, internal = s.pop("label_lookup_external"), s.pop("label_lookup_internal")
    s["labels"] = sorted(zip(external.tolist(), internal.tolist(), strict=True))
    return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in s.items()}


def loaded(path: Path, space: str, dim: int, max_elements: int) -> Any:
    index = hnswlib.Index(space=space, dim=dim)
    index.load_index(str(path), max_elements=max_elements, allow_replace_deleted=True)
    return index


@pytest.mark.parametrize(
    ("space", "dim", "m", "n", "history"),
    [
        ("l2", 16, 16, 2000, True),
        ("ip", 5, 4, 700, True),
        ("cosine", 64, 32, 1500, True),
        ("l2", 3, 8, 1, False),
        ("l2", 8, 8, 0, False),
        ("l2", 8, 8, 300, False),
    ],
)
@pytest.mark.parametrize("room", [0, 5000])
def test_the_index_is_the_one_load_index_makes(
    tmp_path: Path, space: str, dim: int, m: int, n: int, history: bool, room: int
) -> None:
    path, x = written(tmp_path, space, dim, m, n, seed=n + dim, history=history)
    expected = loaded(path, space, dim, room)
    made = read_index(path.read_bytes(), space=space, dim=dim, max_elements=room, where=path)
    assert state(made) == state(expected)
    assert made.get_max_elements() == expected.get_max_elements()
    if n:
        expected.set_ef(50)
        made.set_ef(50)
        q, k = x[:50], min(5, n)
        for a, b in zip(made.knn_query(q, k), expected.knn_query(q, k), strict=True):
            np.testing.assert_array_equal(a, b)
    # Both take the same writes the same way afterwards: a delete frees a slot for reuse.
    rng = np.random.default_rng(1)
    v = rng.standard_normal((3, dim)).astype(np.float32)
    for index in (made, expected):
        if n > 1:
            index.mark_deleted(min(index.get_ids_list()))
        index.resize_index(index.get_max_elements() + 3)
        index.add_items(v, np.array([7, 2**63 + 5, 11], np.uint64), replace_deleted=True)
    assert state(made) == state(expected)


def test_each_slots_label_and_deleted_mark_are_read_from_the_file(tmp_path: Path) -> None:
    path, _ = written(tmp_path, "l2", 16, 8, 900, seed=11, history=True)
    index = loaded(path, "l2", 16, 0)
    for label in index.get_ids_list()[::30]:  # some deleted slots left in the file
        index.mark_deleted(label)
    index.save_index(str(path))
    labels, deleted = slot_labels(path.read_bytes(), dim=16, where=path)
    assert len(labels) == len(deleted) == index.element_count
    listed = {int(label) for label in np.asarray(index.get_ids_list(), np.uint64).view(np.int64)}
    assert set(labels.tolist()) == listed
    gone = set()
    for label in listed:
        try:
            index.get_items(np.array([label], np.int64).view(np.uint64))
        except RuntimeError:  # hnswlib refuses a deleted record
            gone.add(label)
    assert gone  # the history deleted some
    assert set(labels[deleted].tolist()) == gone


def test_a_damaged_or_foreign_file_is_refused(tmp_path: Path) -> None:
    path, _ = written(tmp_path, "l2", 16, 8, 500, seed=3, history=True)
    data = path.read_bytes()
    levels = np.asarray(loaded(path, "l2", 16, 0).__getstate__()[0]["element_levels"])
    assert levels.max() > 0  # the file has upper-level link lists to damage

    def refused(damaged: bytes, dim: int = 16) -> None:
        with pytest.raises(ArtifactError, match=str(path)):
            read_index(damaged, space="l2", dim=dim, max_elements=0, where=path)

    refused(data[:40])  # shorter than the header
    refused(data[:-4])  # the last record cut
    refused(data + b"\0" * 4)  # something after the last record
    refused(data, dim=64)  # another dimension
    # A link list's size that is not whole levels: find the first non-empty record.
    count, per_element = (int.from_bytes(data[f : f + 8], "little") for f in (16, 24))
    at = 96 + count * per_element  # after the header and the level-0 block
    while int.from_bytes(data[at : at + 4], "little") == 0:
        at += 4
    size = int.from_bytes(data[at : at + 4], "little")
    refused(data[:at] + (size + 4).to_bytes(4, "little") + data[at + 4 :])


def artifact(tmp_path: Path, ring: KeyRing | None = None) -> tuple[Any, np.ndarray]:
    spec = HnswlibHnsw(m=8, ef_construction=40, ef_search=32)
    x = np.random.default_rng(0).standard_normal((800, 8)).astype(np.float32)
    ids = np.arange(800, dtype=np.int64) - 400
    index = build_index(spec, Metric.L2, ids, x)
    return write_artifact(index, spec, Metric.L2, 8, tmp_path, "s0", "c" * 64, 800, ring), x


@pytest.mark.parametrize("encrypted", [False, True])
def test_a_low_stall_load_serves_the_same_answers(tmp_path: Path, encrypted: bool) -> None:
    ring = KeyRing.generate("k1") if encrypted else None
    art, x = artifact(tmp_path, ring)
    plain = LoadedIndex(art.manifest, art.sha256, ring)
    low = LoadedIndex(art.manifest, art.sha256, ring, low_stall=True)
    assert (low.kind, low.count, low.dimension) == (plain.kind, plain.count, plain.dimension)
    for a, b in zip(low.search(x[:40], 10), plain.search(x[:40], 10), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_low_stall_load_checks_the_checksum_before_it_builds(tmp_path: Path) -> None:
    art, _ = artifact(tmp_path)
    raw = art.data_file.read_bytes()
    art.data_file.write_bytes(raw[:200] + bytes([raw[200] ^ 1]) + raw[201:])
    with pytest.raises(ArtifactError, match="does not match its checksum"):
        LoadedIndex(art.manifest, art.sha256, low_stall=True)
    # With the checksum forged to match, the parse still refuses a file that is not whole.
    meta = json.loads(art.manifest.read_text())
    art.data_file.write_bytes(raw[:-4])
    meta["sha256"] = hashlib.sha256(raw[:-4]).hexdigest()
    art.manifest.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="damaged"):
        LoadedIndex(art.manifest, low_stall=True)
