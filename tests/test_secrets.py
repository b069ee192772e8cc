"""Secrets by reference: specs refuse written-out credentials, references resolve only where a
connection is made, and the scrubber removes what slips into a message anyway."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from vecmigrate.errors import SecretError, SpecError
from vecmigrate.model.credentials import is_reference, secret_in_url
from vecmigrate.model.spec import parse_spec
from vecmigrate.security import scrub as scrubbing
from vecmigrate.security.secrets import register_resolver, resolve


def spec_with(source_store: dict[str, Any], target_store: dict[str, Any] | None = None) -> Any:
    version = {"embedding": {"model_id": "m", "dimension": 4}, "index": {"kind": "faiss_flat"}}
    return parse_spec(
        {
            "collection": "c",
            "source": {"name": "v1", "store": source_store, **version},
            "target": {"name": "v2", "store": target_store or {"kind": "builtin"}, **version},
        }
    )


@pytest.mark.parametrize(
    ("store", "where"),
    [
        ({"kind": "pgvector", "url": "postgresql://app:hunter2hunter@db/x"}, "source.store.url"),
        (
            {"kind": "pgvector", "url": "postgresql://db/x?password=hunter2hunter"},
            "source.store.url",
        ),
        (
            {"kind": "builtin", "url": "postgresql+psycopg://a:hunter2hunter@db/x"},
            "source.store.url",
        ),
        ({"kind": "milvus", "uri": "http://root:hunter2hunter@m:19530"}, "source.store.uri"),
        ({"kind": "milvus", "uri": "http://m:19530", "token": "root:hunter2hunter"}, "token"),
        ({"kind": "pgvector", "url": "postgresql://db/x", "password": "hunter2hunter"}, "password"),
    ],
)
def test_a_written_out_credential_is_refused_without_being_echoed(
    store: dict[str, Any], where: str
) -> None:
    with pytest.raises(SpecError) as caught:
        spec_with(store)
    message = str(caught.value)
    assert where in message
    assert "hunter2hunter" not in message
    assert "env:NAME" in message
    assert "file:/" in message


def test_references_pass_and_are_kept_as_references() -> None:
    spec = spec_with(
        {
            "kind": "pgvector",
            "url": "postgresql://app@db:5432/x?sslmode=verify-full",
            "password": "env:PG_PASSWORD",
            "tls": {"root_cert": "/etc/ca.pem", "client_cert": "/c.pem", "client_key": "/c.key"},
        },
        {"kind": "milvus", "uri": "https://m:19530", "token": "file:/run/secrets/milvus"},
    )
    dumped = spec.model_dump_json()
    assert "env:PG_PASSWORD" in dumped
    assert "file:/run/secrets/milvus" in dumped


def test_the_reference_forms_are_strict() -> None:
    assert is_reference("env:PGPASSWORD")
    assert is_reference("file:/run/secrets/pg")
    assert is_reference("vault://secret/data/pg#password")
    # user:password pairs and bare words are secrets written out, not references
    assert not is_reference("root:Milvus")
    assert not is_reference("file:relative/path")
    assert not is_reference("hunter2")
    assert secret_in_url("postgresql://postgres:@/x?host=/tmp/s") is None  # empty: no secret


def test_resolution_reads_env_files_and_plugged_resolvers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VM_TEST_SECRET", "from-the-environment")
    secret_file = tmp_path / "pg"
    secret_file.write_text("from-a-file\n")
    register_resolver("testvault", lambda rest: f"vault says {rest.removeprefix('//')}")
    assert resolve("env:VM_TEST_SECRET") == "from-the-environment"
    assert resolve(f"file:{secret_file}") == "from-a-file"
    assert resolve("testvault://pg") == "vault says pg"
    with pytest.raises(SecretError, match="env:VM_MISSING is not set"):
        resolve("env:VM_MISSING")
    with pytest.raises(SecretError, match=r"no resolver .* 'nosuch'"):
        resolve("nosuch://x")


def test_the_scrubber_redacts_urls_parameters_headers_and_resolved_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VM_TEST_RESOLVED", "s3cr3t-resolved-value")
    resolve("env:VM_TEST_RESOLVED")
    text = (
        "connect postgresql://app:pa55word@db:5432/x failed; "
        "dsn host=db password=pa55word2 user=app; token: tok-123456; "
        "Authorization: Bearer abcdefghijklmnop; value s3cr3t-resolved-value"
    )
    cleaned = scrubbing.scrub(text)
    for secret in ("pa55word", "pa55word2", "tok-123456", "abcdefghijklmnop", "s3cr3t-resolved"):
        assert secret not in cleaned
    assert "postgresql://app:***@db:5432/x" in cleaned


def test_log_records_are_scrubbed_messages_and_tracebacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("vecmigrate.test-scrub")
    scrubbing.install()
    handler_filter = scrubbing.ScrubbingFilter()
    caplog.handler.addFilter(handler_filter)
    try:
        try:
            raise RuntimeError("cannot reach postgresql://u:leaked-pass@h/db")
        except RuntimeError:
            log.exception("store %s failed", "postgresql://u:leaked-pass@h/db")
    finally:
        caplog.handler.removeFilter(handler_filter)
    assert "leaked-pass" not in caplog.text
    assert "postgresql://u:***@h/db" in caplog.text
