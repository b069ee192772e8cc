"""Divergence between two regions' copies of a collection: what each region computes of its
own copy, and the pure comparison of two regions' figures against the spec's bound.

Vectors never leave a region. Each region digests its copy (per hash shard and per id-hash
bucket inside it: a count and an order-independent sum of the record checksums of
:mod:`vecmigrate.records.checksums`); only the buckets whose digests differ are compared
record by record, by (label, vector hash, payload hash) lists; and the query sample is named
by the labels of records drawn from the reference region, each region searching with its own
copy of their vectors and returning only the labels of its top k.

Pure models and functions (no I/O, no numpy): the regional workflow, the activities and
``vecmigrate diff --regions`` share them.
"""

from __future__ import annotations

from pydantic import Field

from vecmigrate.model.base import Model as _Model
from vecmigrate.model.gates import DIFF_KINDS
from vecmigrate.model.spec import DivergenceBound
from vecmigrate.model.tasks import SpecTask

# Id-hash buckets per shard: a bucket whose digest differs is listed record by record, so with
# a million records in a shard one differing record lists about 4,000. With many shards, fewer
# a shard: a digest holds at most CELLS buckets in all (about 25 bytes each in its payload).
BUCKETS = 256
CELLS = 16_384


def buckets_for(shards: int) -> int:
    """Buckets per shard for a copy of ``shards`` hash shards (every region uses the same)."""
    return max(4, min(BUCKETS, CELLS // max(shards, 1)))


# (label, hashes) entries one region returns for the buckets that differ, at most: about 60
# bytes each, well inside one Temporal payload.
MAX_ENTRIES = 20_000

Id = int | str


class ShardDigest(_Model):
    """One shard of a region's copy: its checksum (``count:sum``) and each non-empty bucket's."""

    shard: int
    checksum: str
    buckets: dict[int, str] = Field(default_factory=dict)

    @property
    def records(self) -> int:
        return int(self.checksum.split(":", 1)[0])


class CopyDigest(_Model):
    """A region's copy digested: per shard and bucket, and (the reference region's) the labels
    of the records whose vectors make the query sample."""

    shards: list[ShardDigest] = Field(default_factory=list)
    buckets: int = BUCKETS
    sample: list[int] = Field(default_factory=list)

    @property
    def records(self) -> int:
        return sum(s.records for s in self.shards)


class Cell(_Model):
    """One bucket of one shard."""

    shard: int
    bucket: int


class Entry(_Model):
    """One record of a differing bucket: its shard, label, id as the store holds it, and its
    vector and payload hashes (hex)."""

    shard: int
    label: int
    id: Id
    vector: str
    payload: str


class CopyEntries(_Model):
    """The records of a region's copy in the cells asked for (at most ``MAX_ENTRIES``)."""

    entries: list[Entry] = Field(default_factory=list)
    truncated: bool = False


class CopyAnswers(_Model):
    """A region's top-k labels for each query label (``None``: this copy lacks the record)."""

    answers: list[list[int] | None] = Field(default_factory=list)


class ShardDivergence(_Model):
    """What differs in one shard."""

    shard: int
    missing: int = 0
    extra: int = 0
    vector: int = 0
    payload: int = 0


class RegionDivergence(_Model):
    """One region's copy against the reference region's, and the verdict against the bound."""

    reference: str
    region: str
    tenant: str
    reference_records: int
    region_records: int
    missing: int = 0
    """Records the reference holds and this region lacks."""
    extra: int = 0
    """Records this region holds and the reference lacks."""
    vector: int = 0
    payload: int = 0
    shards: list[ShardDivergence] = Field(default_factory=list)
    """The shards that differ."""
    listed: dict[str, list[Id]] = Field(default_factory=dict)
    """Differing ids per kind, up to the bound's ``max_listed`` each."""
    complete: bool = True
    """False when the differing buckets held more records than were compared: the counts are
    then a lower bound, and the share the upper bound of the buckets' records."""
    differing_share: float = 0.0
    queries: int = 0
    overlap: float | None = None
    """Mean overlap@k of the two copies' answers (None: no query sample)."""
    k: int = 0
    passed: bool = True
    why: str = ""

    @property
    def differing(self) -> int:
        return self.missing + self.extra + self.vector + self.payload

    def line(self) -> str:
        """One line of figures, as the blocked reason and the CLI print it."""
        share = f"{self.differing_share:.4%} of records differ"
        counts = ", ".join(f"{getattr(self, k)} {k}" for k in DIFF_KINDS)
        over = "" if self.overlap is None else f", overlap@{self.k} {self.overlap:.3f}"
        return f"{self.region}/{self.tenant} against {self.reference}: {share} ({counts}){over}"


def differing_cells(reference: CopyDigest, region: CopyDigest) -> list[Cell]:
    """The buckets whose digests differ between two copies, in (shard, bucket) order.

    Raises:
        ValueError: the copies were digested with different bucket counts.
    """
    if reference.buckets != region.buckets:
        raise ValueError(
            f"digests of {reference.buckets} and {region.buckets} buckets cannot be compared"
        )
    a = {s.shard: s for s in reference.shards}
    b = {s.shard: s for s in region.shards}
    cells = []
    for shard in sorted(set(a) | set(b)):
        sa, sb = a.get(shard), b.get(shard)
        if sa is not None and sb is not None and sa.checksum == sb.checksum:
            continue
        ba = sa.buckets if sa is not None else {}
        bb = sb.buckets if sb is not None else {}
        cells += [
            Cell(shard=shard, bucket=k) for k in sorted(set(ba) | set(bb)) if ba.get(k) != bb.get(k)
        ]
    return cells


def _bucket_records(digest: CopyDigest, cells: list[Cell]) -> int:
    by = {s.shard: s.buckets for s in digest.shards}
    return sum(int(by.get(c.shard, {}).get(c.bucket, "0:0").split(":", 1)[0]) for c in cells)


def overlap_at_k(reference: CopyAnswers, region: CopyAnswers, k: int) -> float | None:
    """Mean share of the reference's top k that the region's top k holds too, over the query
    sample; a query whose record the region lacks counts as no overlap."""
    if not reference.answers:
        return None
    total = 0.0
    for ref, got in zip(reference.answers, region.answers, strict=True):
        if ref is None or got is None:
            continue  # the reference lacks it too (it was written since the draw): nothing
        want = ref[:k]
        if want:
            total += len(set(want) & set(got[:k])) / len(want)
    counted = sum(a is not None for a in reference.answers)
    return round(total / counted, 6) if counted else None


def compare_copies(
    bound: DivergenceBound,
    *,
    reference: str,
    region: str,
    tenant: str,
    digests: tuple[CopyDigest, CopyDigest],
    entries: tuple[CopyEntries, CopyEntries],
    answers: tuple[CopyAnswers, CopyAnswers],
    cells: list[Cell],
) -> RegionDivergence:
    """Two regions' figures compared record by record and by their answers, and the verdict
    against ``bound``. ``entries`` are both copies' records in ``cells`` (the differing
    buckets)."""
    ref_d, reg_d = digests
    ref_e = {e.label: e for e in entries[0].entries}
    reg_e = {e.label: e for e in entries[1].entries}
    out = RegionDivergence(
        reference=reference,
        region=region,
        tenant=tenant,
        reference_records=ref_d.records,
        region_records=reg_d.records,
        complete=not (entries[0].truncated or entries[1].truncated),
        k=bound.k,
    )
    listed: dict[str, list[Id]] = {k: [] for k in DIFF_KINDS}
    per_shard: dict[int, ShardDivergence] = {}

    def note(kind: str, label: int, entry: Entry) -> None:
        setattr(out, kind, getattr(out, kind) + 1)
        row = per_shard.setdefault(entry.shard, ShardDivergence(shard=entry.shard))
        setattr(row, kind, getattr(row, kind) + 1)
        if len(listed[kind]) < bound.max_listed:
            listed[kind].append(entry.id)

    for label in sorted(set(ref_e) | set(reg_e)):
        a, b = ref_e.get(label), reg_e.get(label)
        if b is None and a is not None:
            note("missing", label, a)
        elif a is None and b is not None:
            note("extra", label, b)
        elif a is not None and b is not None:
            if a.vector != b.vector:
                note("vector", label, a)
            if a.payload != b.payload:
                note("payload", label, a)
    out.shards = [per_shard[s] for s in sorted(per_shard)]
    out.listed = {k: v for k, v in listed.items() if v}
    larger = max(out.reference_records, out.region_records, 1)
    differing = out.differing
    if not out.complete:
        differing = max(differing, _bucket_records(ref_d, cells), _bucket_records(reg_d, cells))
    out.differing_share = round(differing / larger, 6)
    out.overlap = overlap_at_k(answers[0], answers[1], bound.k)
    out.queries = len(answers[0].answers)
    over = []
    if out.differing_share > bound.max_differing_share:
        over.append(
            f"{out.differing_share:.4%} of records differ (bound {bound.max_differing_share:.4%})"
        )
    if out.overlap is not None and out.overlap < bound.min_overlap:
        over.append(f"overlap@{bound.k} {out.overlap:.3f} (bound {bound.min_overlap:.3f})")
    out.passed = not over
    out.why = "; ".join(over)
    return out


def verdict(reports: list[RegionDivergence]) -> str:
    """The blocked reason when some region's copy is over the bound, else ``""``."""
    over = [r for r in reports if not r.passed]
    if not over:
        return ""
    return (
        "regions' copies diverge beyond region_policy.divergence: "
        + "; ".join(f"{r.line()} -> {r.why}" for r in over)
        + "; approve_cutover cuts over anyway, rollback ends all"
    )


class DigestInput(SpecTask):
    """Digest a region's copy of the migration's target (and draw ``sample`` query labels)."""

    sample: int = 0


class EntriesInput(SpecTask):
    """The records of a region's copy in ``cells``."""

    cells: list[Cell]


class AnswersInput(SpecTask):
    """A region's top ``k`` for the query records named by ``labels``."""

    labels: list[int]
    k: int
