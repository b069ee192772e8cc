"""Load an hnswlib index file while holding the GIL only in short slices.

hnswlib's ``load_index`` reads and parses its file in C++ without releasing the GIL: about
1 us a vector (37,500 x 64 took 26-42 ms), during which no other thread of the process runs.
In a gateway that loads a candidate's index while it serves (SHADOWING), every request in
flight waits that long for each shard. This module reads the same file differently:

1. the bytes are read (and hashed, when asked) with the GIL released, as file reads and
   ``hashlib`` on large buffers release it;
2. the file is parsed with numpy (the level-0 block is used where it lies; the upper-level
   link lists are found by a walk over the few elements that have them, which yields the GIL
   between steps like any Python loop);
3. hnswlib builds the index from those arrays (``hnswlib.Index(params=...)``, the constructor
   its pickling uses), a few memory copies and the label map: about a tenth of
   ``load_index``'s time with the GIL held.

The file format is hnswlib's ``saveIndex`` (``hnswalg.h``, unchanged since 0.7): a header of
fixed-size fields, the level-0 block (``cur_element_count * size_data_per_element`` bytes),
then for each element a 4-byte size and that many bytes of upper-level links. The parse checks
what ``loadIndex`` checks (the records end exactly at the end of the file) and more (each size
is whole levels, the header agrees with the dimension); hnswlib's constructor asserts that the
sizes agree with the space and ``M``. The cost is a second copy of the index in memory while it
is built (the file's bytes), which the plain ``load_index`` does not need: use it where a
stall matters more than that, as in a process that serves.
"""

from __future__ import annotations

import os
import struct
import time
from bisect import bisect_left
from pathlib import Path
from typing import Any, NamedTuple

import hnswlib
import numpy as np

from vecmigrate.errors import ArtifactError

# offsetLevel0_, max_elements_, cur_element_count, size_data_per_element_, label_offset_,
# offsetData_ (size_t each), maxlevel_ (int), enterpoint_node_ (uint32), maxM_, maxM0_, M_
# (size_t), mult_ (double), ef_construction_ (size_t): written field by field, no padding.
_HEADER = struct.Struct("<6QiI3QdQ")
_LINK_COUNT = 4  # bytes of the count at the head of every link list (linklistsizeint)
_LABEL = 8  # bytes of a label (labeltype, size_t)
_DELETE_MARK = 0x01  # the mark of a deleted slot (hnswalg.h)
_YIELD_EVERY = 512  # link lists walked between two offers of the GIL to other threads
_RANDOM_SEED = 100  # hnswlib's default seed for the levels of records added later


class _Header(NamedTuple):
    """The fields ``saveIndex`` writes first, in its order."""

    offset_level0: int
    saved_max: int
    elements: int
    per_element: int
    label_offset: int
    offset_data: int
    max_level: int
    entry: int
    max_m: int
    max_m0: int
    m: int
    mult: float
    ef_construction: int


def _header(view: memoryview, dim: int, where: Path) -> _Header:
    """The header of an hnswlib file's bytes, checked against their length and ``dim``.

    Raises:
        ArtifactError: the bytes are not an hnswlib index of this dimension.
    """
    if len(view) < _HEADER.size:
        raise ArtifactError(f"index file {where} is too short to be an hnswlib index")
    h = _Header(*_HEADER.unpack_from(view, 0))
    level0_end = _HEADER.size + h.elements * h.per_element
    if (
        h.elements > len(view)
        or level0_end > len(view)
        or (len(view) - level0_end) % 4
        or h.per_element < h.offset_data + dim * 4
        or h.label_offset + _LABEL > h.per_element
        or h.offset_level0 + _LINK_COUNT > h.per_element
    ):
        raise ArtifactError(f"index file {where} is not an hnswlib index of dimension {dim}")
    return h


def _slots(view: memoryview, h: _Header) -> np.ndarray:
    """The level-0 block, one row of bytes a slot (where it lies: no copy)."""
    return np.frombuffer(view, np.int8, h.elements * h.per_element, _HEADER.size).reshape(
        h.elements, h.per_element
    )


def slot_labels(
    data: bytes | memoryview, *, dim: int, where: Path
) -> tuple[np.ndarray, np.ndarray]:
    """Each slot's label (as the int64 id it was written for) and whether it is marked
    deleted, read from an hnswlib file's bytes (or a memory map of it): what hnswlib does not
    list (``get_ids_list`` has the labels, not which are deleted).

    Raises:
        ArtifactError: the bytes are not an hnswlib index of this dimension.
    """
    view = memoryview(data).cast("B")
    h = _header(view, dim, where)
    slots = _slots(view, h)
    # The third byte of a slot's level-0 link count holds its marks (hnswlib's DELETE_MARK, 1).
    deleted = (slots[:, h.offset_level0 + 2] & _DELETE_MARK).astype(np.bool_)
    return _labels(slots, h), deleted


def _labels(slots: np.ndarray, h: _Header) -> np.ndarray:
    """Every slot's label, read where the level-0 block keeps it (as int64 ids)."""
    field = slots[:, h.label_offset : h.label_offset + _LABEL]
    return np.ascontiguousarray(field).view("<i8").ravel()


def read_index(
    data: bytes | memoryview, *, space: str, dim: int, max_elements: int, where: Path
) -> Any:
    """An ``hnswlib.Index`` made from the bytes of a file ``save_index`` wrote, as
    ``load_index(path, max_elements, allow_replace_deleted=True)`` would make it.

    Raises:
        ArtifactError: the bytes are not an hnswlib index of this dimension.
    """
    view = memoryview(data)
    h = _header(view, dim, where)
    count = h.elements
    links_per_level = h.max_m * 4 + _LINK_COUNT
    slots = _slots(view, h)
    levels, link_lists = _upper_levels(
        np.frombuffer(view, "<u4", offset=_HEADER.size + count * h.per_element),
        count,
        links_per_level,
        where,
    )
    # hnswlib's map keeps the first pair inserted for a label, and loadIndex lets a later slot
    # win: hence last slot first.
    labels = np.ascontiguousarray(_labels(slots, h)[::-1]).view("<u8")
    params = {
        "ser_version": 1,
        "space": space,
        "dim": dim,
        "index_inited": True,
        "ep_added": True,
        "normalize": space == "cosine",
        "num_threads": os.cpu_count() or 1,  # as load_index leaves it
        "seed": _RANDOM_SEED,
        "offset_level0": h.offset_level0,
        # As loadIndex: room for ``max_elements``, or the saved room if that is too little.
        "max_elements": max_elements if max_elements >= count else h.saved_max,
        "cur_element_count": count,
        "size_data_per_element": h.per_element,
        "label_offset": h.label_offset,
        "offset_data": h.offset_data,
        "max_level": h.max_level,
        "enterpoint_node": h.entry,
        "max_M": h.max_m,
        "max_M0": h.max_m0,
        "M": h.m,
        "mult": h.mult,
        "ef_construction": h.ef_construction,
        "ef": 10,
        "has_deletions": True,  # hnswlib then finds the deleted slots itself, as loadIndex does
        "size_links_per_element": links_per_level,
        "allow_replace_deleted": True,
        "label_lookup_external": labels,
        "label_lookup_internal": np.arange(count - 1, -1, -1, dtype=np.uint32),
        "element_levels": levels,
        "data_level0": slots.ravel(),
        "link_lists": link_lists,
    }
    try:
        return hnswlib.Index(params=params)
    except (RuntimeError, ValueError) as exc:
        raise ArtifactError(f"index file {where} does not fit an hnswlib index: {exc}") from None


def _upper_levels(
    words: np.ndarray, count: int, links_per_level: int, where: Path
) -> tuple[np.ndarray, np.ndarray]:
    """Each element's level and the concatenated bytes of the upper-level link lists.

    After the level-0 block comes one record per element: a 4-byte size, then that many
    bytes. Most elements (all but about 1/M) have no upper level: a zero word. The walk jumps
    from one non-zero size to the next, so it steps only over the elements that have links.
    """
    nonzero = np.flatnonzero(words).tolist()
    levels = np.zeros(count, np.int32)
    pieces: list[np.ndarray] = []
    element, at, step = 0, 0, 0  # the element whose record starts at word ``at``
    while True:
        step += 1
        if step % _YIELD_EVERY == 0:
            time.sleep(0)  # let the threads waiting for the GIL run
        k = bisect_left(nonzero, at)
        first = nonzero[k] if k < len(nonzero) else len(words)
        if first - at >= count - element:  # every element left has no upper level
            at += count - element
            break
        element += first - at
        size = int(words[first]) if first < len(words) else 0  # 0: the file ended early
        if not size or size % links_per_level or first + 1 + size // 4 > len(words):
            raise ArtifactError(f"index file {where} has a damaged link list")
        levels[element] = size // links_per_level
        pieces.append(words[first + 1 : first + 1 + size // 4])
        element, at = element + 1, first + 1 + size // 4
    if at != len(words):  # what loadIndex checks: the records end where the file does
        raise ArtifactError(f"index file {where} seems damaged or not an hnswlib index")
    links = np.concatenate(pieces) if pieces else np.empty(0, "<u4")
    return levels, links.view(np.int8)
