"""One pass over a shard: counts, bad vectors, norms and checksums (integrity and parity)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from vecmigrate.data.transforms import Transform
from vecmigrate.model.gates import ShardProfile
from vecmigrate.model.tasks import ShardRef
from vecmigrate.records.checksums import RecordChecksum
from vecmigrate.records.vectors import Ids, Vectors, repeated_ids
from vecmigrate.stores import VectorStore


class IdChecksum(RecordChecksum):
    """Order-independent checksum of the ids alone (id-set parity when vectors changed)."""

    def add(self, ids: Ids, vectors: Vectors) -> None:
        super().add(ids, np.empty((ids.shape[0], 0), np.float32))


def _norms(vectors: Vectors) -> npt.NDArray[np.float64]:
    """Euclidean norm of each (finite) row: summed in float32 (1.4 ms for 50,000 x 128 where a
    float64 copy and ``np.linalg.norm`` took 28; relative difference ~1e-7), again in float64
    for rows whose squares overflow float32."""
    v = np.asarray(vectors, dtype=np.float32)
    norms: npt.NDArray[np.float64] = np.sqrt(np.einsum("ij,ij->i", v, v)).astype(np.float64)
    big = ~np.isfinite(norms)
    if big.any():
        norms[big] = np.linalg.norm(v[big].astype(np.float64), axis=1)
    return norms


class ProfileBuilder:
    """Accumulates a :class:`ShardProfile` batch by batch.

    With ``keep``, it also keeps the batches, so records can be left out afterwards: an online
    migration leaves out the records written while it scanned (the change log names them, and
    dual-write and catch-up account for them).
    """

    def __init__(self, unit_norm_tolerance: float = 1e-3, keep: bool = False) -> None:
        self.tolerance = unit_norm_tolerance
        self.keep = keep
        self.batches: list[tuple[Ids, Vectors]] = []
        self.records = RecordChecksum()
        self.ids = IdChecksum()
        self.seen: list[Ids] = []
        self.count = 0
        self.nonfinite = 0
        self.zero = 0
        self.off_unit = 0
        self.norm_min = np.inf
        self.norm_max = -np.inf
        self.norm_sum = 0.0

    def add(self, ids: Ids, vectors: Vectors) -> None:
        """Fold one batch in."""
        if self.keep:
            self.batches.append((ids, vectors))
        self.records.add(ids, vectors)
        self.ids.add(ids, vectors)
        self.seen.append(ids)
        self.count += int(ids.shape[0])
        finite = np.isfinite(vectors).all(axis=1)
        self.nonfinite += int((~finite).sum())
        norms = _norms(vectors if finite.all() else vectors[finite])
        self.zero += int((norms == 0).sum())
        self.off_unit += int((np.abs(norms - 1.0) > self.tolerance).sum())
        if norms.size:
            self.norm_min = min(self.norm_min, float(norms.min()))
            self.norm_max = max(self.norm_max, float(norms.max()))
            self.norm_sum += float(norms.sum())

    def without(self, exclude: Ids) -> ShardProfile:
        """The profile of the kept batches with the records of ``exclude`` left out."""
        if not self.keep:
            raise ValueError("records can be left out only of a builder made with keep=True")
        rest = ProfileBuilder(self.tolerance)
        for ids, vectors in self.batches:
            mask = ~np.isin(ids, exclude)
            rest.add(ids[mask], vectors[mask])
        return rest.result()

    def result(self) -> ShardProfile:
        """The profile of everything added."""
        all_ids = np.concatenate(self.seen) if self.seen else np.empty(0, np.int64)
        duplicates = repeated_ids(all_ids)
        finite = self.count - self.nonfinite
        return ShardProfile(
            count=self.count,
            nonfinite=self.nonfinite,
            zero=self.zero,
            duplicate_ids=duplicates,
            off_unit_norm=self.off_unit,
            norm_min=None if finite == 0 else round(self.norm_min, 6),
            norm_max=None if finite == 0 else round(self.norm_max, 6),
            norm_mean=None if finite == 0 else round(self.norm_sum / finite, 6),
            checksum=self.records.hexdigest(),
            id_checksum=self.ids.hexdigest(),
        )


def scan_shard(
    store: VectorStore,
    shard: ShardRef,
    transform: Transform | None = None,
    *,
    batch_size: int = 50_000,
    unit_norm_tolerance: float = 1e-3,
    keep: bool = False,
    also: Callable[[Ids, Vectors], None] | None = None,
) -> ProfileBuilder:
    """Scan ``shard`` once into a profile builder, seen through ``transform`` if given.

    ``also`` sees every batch too (the exact search of the recall gate rides on this read)."""
    builder = ProfileBuilder(unit_norm_tolerance, keep=keep)
    for batch in store.iter_shard(shard, batch_size, read_ahead=True):
        vectors = batch.vectors if transform is None else transform(batch.vectors)
        builder.add(batch.ids, vectors)
        if also is not None:
            also(batch.ids, vectors)
    return builder


def profile_shard(
    store: VectorStore,
    shard: ShardRef,
    transform: Transform | None = None,
    *,
    batch_size: int = 50_000,
    unit_norm_tolerance: float = 1e-3,
    also: Callable[[Ids, Vectors], None] | None = None,
) -> ShardProfile:
    """Scan ``shard`` once and profile it, seen through ``transform`` if given."""
    return scan_shard(
        store,
        shard,
        transform,
        batch_size=batch_size,
        unit_norm_tolerance=unit_norm_tolerance,
        also=also,
    ).result()
