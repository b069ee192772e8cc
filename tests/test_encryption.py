"""The key ring and envelope encryption: authenticated, rotatable, and in the index artifacts."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from vecmigrate.errors import KeyRingError, TamperError
from vecmigrate.indexes.artifacts import (
    LoadedIndex,
    build_index,
    find_artifact,
    rewrap_manifest,
    write_artifact,
)
from vecmigrate.model.spec import FaissIvfFlat, HnswlibHnsw, Metric
from vecmigrate.security.envelope import (
    CHUNK,
    decrypt_stream,
    encrypt_stream,
    rewrap,
)
from vecmigrate.security.keyring import (
    LEDGER_MAC,
    PAYLOAD,
    KeyRing,
    KeyRingSource,
)


def test_purposes_get_distinct_keys_and_rotation_keeps_old_keys_readable() -> None:
    ring = KeyRing.generate("k1")
    assert ring.derived(PAYLOAD)[1] != ring.derived(LEDGER_MAC)[1]
    key_id, sealed = ring.seal(PAYLOAD, b"hello", b"aad")
    newer = ring.rotated("k2")
    assert newer.active == "k2"
    assert newer.open(PAYLOAD, key_id, sealed, b"aad") == b"hello"  # old still readable
    assert newer.seal(PAYLOAD, b"x")[0] == "k2"  # new data under the new key
    with pytest.raises(TamperError):
        newer.open(PAYLOAD, key_id, sealed, b"other aad")
    with pytest.raises(KeyRingError, match="restore it"):
        newer.without("k1").open(PAYLOAD, "k1", sealed, b"aad")
    with pytest.raises(KeyRingError, match="active key"):
        newer.without("k2")
    assert KeyRing.from_json(newer.to_json()) == newer
    assert "material" not in repr(newer)


def test_a_ring_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "ring.json"
    source = KeyRingSource(f"file:{path}")
    source.save(KeyRing.generate("k1"))
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    seen = source.current()
    assert seen.active == "k1"
    other = KeyRingSource(f"file:{path}")  # another process's view
    other.save(seen.rotated("k2"))
    assert source.current().active == "k2"


@pytest.mark.parametrize("size", [0, 10, CHUNK, CHUNK + 1, 3 * CHUNK + 17])
def test_envelope_round_trip_at_chunk_boundaries(size: int) -> None:
    ring = KeyRing.generate("k1")
    data = os.urandom(size)
    sealed = io.BytesIO()
    wrapped = encrypt_stream(io.BytesIO(data), sealed, ring)
    assert data[:64] not in sealed.getvalue() or size == 0
    out = io.BytesIO()
    decrypt_stream(io.BytesIO(sealed.getvalue()), out, ring, wrapped)
    assert out.getvalue() == data


def test_every_kind_of_tampering_with_an_envelope_is_detected() -> None:
    ring = KeyRing.generate("k1")
    data = os.urandom(2 * CHUNK + 100)
    sealed = io.BytesIO()
    wrapped = encrypt_stream(io.BytesIO(data), sealed, ring)
    blob = sealed.getvalue()
    header = blob.index(b"}") + 1
    chunk = CHUNK + 16

    def flip(at: int) -> bytes:
        return blob[:at] + bytes([blob[at] ^ 1]) + blob[at + 1 :]

    variants = {
        "flipped data byte": flip(header + 5000),
        "flipped tag byte": flip(header + chunk - 1),
        "flipped header byte": flip(12),
        "truncated at a chunk boundary": blob[: header + 2 * chunk],
        "truncated mid-chunk": blob[:-50],
        "chunks swapped": blob[:header]
        + blob[header + chunk : header + 2 * chunk]
        + blob[header : header + chunk]
        + blob[header + 2 * chunk :],
        "appended bytes": blob + b"\0" * 32,
    }
    for name, bad in variants.items():
        with pytest.raises(TamperError):
            decrypt_stream(io.BytesIO(bad), io.BytesIO(), ring, wrapped)
        print("detected:", name)
    other = encrypt_stream(io.BytesIO(data), io.BytesIO(), ring)
    with pytest.raises(TamperError):  # another file's data key
        decrypt_stream(io.BytesIO(blob), io.BytesIO(), ring, other)


def test_rewrap_changes_the_key_not_the_data() -> None:
    ring = KeyRing.generate("k1")
    sealed = io.BytesIO()
    wrapped = encrypt_stream(io.BytesIO(b"payload" * 1000), sealed, ring)
    newer = ring.rotated("k2")
    moved = rewrap(newer, wrapped)
    assert moved.kek == "k2"
    assert wrapped.kek == "k1"
    out = io.BytesIO()
    decrypt_stream(io.BytesIO(sealed.getvalue()), out, newer.without("k1"), moved)
    assert out.getvalue() == b"payload" * 1000


@pytest.mark.parametrize(
    "spec", [HnswlibHnsw(m=8, ef_construction=40), FaissIvfFlat(nlist=4, nprobe=4)]
)
def test_index_artifacts_are_encrypted_at_rest_and_a_flipped_byte_is_caught(
    tmp_path: Path, spec: HnswlibHnsw | FaissIvfFlat
) -> None:
    ring = KeyRing.generate("k1")
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((500, 8)).astype(np.float32)
    ids = np.arange(500, dtype=np.int64)
    index = build_index(spec, Metric.L2, ids, vectors)
    art = write_artifact(index, spec, Metric.L2, 8, tmp_path, "shard-0000", "b" * 64, 500, ring)
    assert art.protected_by == "k1"
    raw = art.data_file.read_bytes()
    assert raw.startswith(b"VMENC1")
    assert vectors[0].tobytes() not in raw  # no vector is stored in the clear
    meta = json.loads(art.manifest.read_text())
    assert meta["encryption"]["kek"] == "k1"
    loaded = LoadedIndex(art.manifest, art.sha256, ring)
    _, found = loaded.search(vectors[:5], 1)
    assert found[:, 0].tolist() == [0, 1, 2, 3, 4]
    assert find_artifact(tmp_path, "shard-0000", "b" * 64, encrypted=True) is not None

    # A key rotation re-wraps the manifest; the data file is byte for byte the same.
    newer = ring.rotated("k2")
    assert rewrap_manifest(art.manifest, newer) == ("k1", "k2")
    assert art.data_file.read_bytes() == raw
    LoadedIndex(art.manifest, art.sha256, newer.without("k1"))

    # One flipped byte: caught by the checksum; with the checksum forged too, by the cipher.
    at = len(raw) // 2
    art.data_file.write_bytes(raw[:at] + bytes([raw[at] ^ 0x40]) + raw[at + 1 :])
    with pytest.raises(Exception, match="does not match its checksum"):
        LoadedIndex(art.manifest, None, newer)
    forged = json.loads(art.manifest.read_text())
    import hashlib

    forged["sha256"] = hashlib.sha256(art.data_file.read_bytes()).hexdigest()
    art.manifest.write_text(json.dumps(forged))
    with pytest.raises(TamperError, match="fails authentication"):
        LoadedIndex(art.manifest, None, newer)


def test_an_encrypted_artifact_needs_the_ring(tmp_path: Path) -> None:
    ring = KeyRing.generate("k1")
    spec = HnswlibHnsw(m=8, ef_construction=40)
    vectors = np.random.default_rng(1).standard_normal((50, 4)).astype(np.float32)
    index = build_index(spec, Metric.L2, np.arange(50, dtype=np.int64), vectors)
    art = write_artifact(index, spec, Metric.L2, 4, tmp_path, "shard-0000", "c" * 64, 50, ring)
    with pytest.raises(KeyRingError, match="VECMIGRATE_KEYRING"):
        LoadedIndex(art.manifest, art.sha256, None)
    # A plaintext artifact found where encryption is required is rebuilt, not reused.
    plain = write_artifact(index, spec, Metric.L2, 4, tmp_path, "shard-0001", "d" * 64, 50, None)
    assert plain.protected_by is None
    assert find_artifact(tmp_path, "shard-0001", "d" * 64, encrypted=True) is None
    assert find_artifact(tmp_path, "shard-0001", "d" * 64) is not None
