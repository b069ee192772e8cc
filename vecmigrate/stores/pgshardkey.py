"""The shard key ``_vm_h`` of a table vecmigrate made, computed in PostgreSQL for the rows an
application inserts through a stable-name view.

vecmigrate writes ``_vm_h`` itself (:func:`vecmigrate.records.sharding.hash_key` of the id's
label, :func:`vecmigrate.records.ids.labels`); the view applications query leaves the column
out, so an ``INSERT`` through it would give the ``NOT NULL`` column no value. Before the view
is pointed at such a table, :func:`install` gives it a ``BEFORE INSERT OR UPDATE OF <id>``
trigger that sets ``_vm_h`` when a row comes without one (or changes its id), with SQL functions
that compute the same key as the Python ones: SplitMix64's finaliser in wrapping 64-bit
arithmetic (``numeric`` for the products, ``bit(64)`` for shifts and exclusive ors), and the
byte hash of a text's UTF-8 or a UUID's 16 bytes. A row inserted by the application is then in
the shard every later scan, reconcile and migration reads it from.

The functions (``vm_u64``, ``vm_i64``, ``vm_mix64``, ``vm_label``, ``vm_shard_key``) live in the
table's schema beside it, and the trigger and its function (``<table>_vm_h_fn``) stay with the
table for as long as applications may insert through the view: they are part of the table, not
of one migration.
"""

from __future__ import annotations

from sqlalchemy import Engine, text

from vecmigrate.model.records import IdKind

_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
_BYTES_SEED = 0x243F6A8885A308D3
_TWO64 = 1 << 64


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def function_sql(schema: str) -> list[str]:
    """The statements that (re)create the key functions in ``schema`` (idempotent)."""
    s = _q(schema)
    return [
        f"CREATE OR REPLACE FUNCTION {s}.vm_u64(x bigint) RETURNS numeric LANGUAGE sql "
        "IMMUTABLE STRICT PARALLEL SAFE AS "
        f"$$ SELECT CASE WHEN x < 0 THEN x::numeric + {_TWO64} ELSE x::numeric END $$",
        f"CREATE OR REPLACE FUNCTION {s}.vm_i64(n numeric) RETURNS bigint LANGUAGE sql "
        "IMMUTABLE STRICT PARALLEL SAFE AS "
        f"$$ SELECT (CASE WHEN m >= {1 << 63} THEN m - {_TWO64} ELSE m END)::bigint "
        f"FROM (SELECT mod(n, {_TWO64}) AS m) AS w $$",
        f"CREATE OR REPLACE FUNCTION {s}.vm_mix64(x bigint) RETURNS bigint LANGUAGE plpgsql "
        "IMMUTABLE STRICT PARALLEL SAFE AS $$\n"
        "DECLARE b bit(64) := x::bit(64);\n"
        "BEGIN\n"
        "  b := b # (b >> 30);\n"
        f"  b := {s}.vm_i64({s}.vm_u64(b::bigint) * {_MIX1})::bit(64);\n"
        "  b := b # (b >> 27);\n"
        f"  b := {s}.vm_i64({s}.vm_u64(b::bigint) * {_MIX2})::bit(64);\n"
        "  b := b # (b >> 31);\n"
        "  RETURN b::bigint;\n"
        "END $$",
        # The byte hash of vecmigrate.records.checksums.hash_bytes, then the label's rule that
        # -1 (no result) moves one down.
        f"CREATE OR REPLACE FUNCTION {s}.vm_label(b bytea) RETURNS bigint LANGUAGE plpgsql "
        "IMMUTABLE STRICT PARALLEL SAFE AS $$\n"
        "DECLARE n int := length(b); acc bigint; w numeric; k int := 0; i int;\n"
        "BEGIN\n"
        f"  acc := {s}.vm_mix64({s}.vm_i64(n::numeric + {_BYTES_SEED}));\n"
        "  WHILE k * 8 < n LOOP\n"
        "    w := 0; i := 0;\n"
        "    WHILE i < 8 AND k * 8 + i < n LOOP\n"
        "      w := w + get_byte(b, k * 8 + i)::numeric * (256::numeric ^ i); i := i + 1;\n"
        "    END LOOP;\n"
        f"    acc := {s}.vm_mix64((acc::bit(64) # {s}.vm_i64(w)::bit(64) # "
        f"{s}.vm_i64((k + 1)::numeric * {_GOLDEN})::bit(64))::bigint);\n"
        "    k := k + 1;\n"
        "  END LOOP;\n"
        "  RETURN CASE WHEN acc = -1 THEN -2 ELSE acc END;\n"
        "END $$",
        f"CREATE OR REPLACE FUNCTION {s}.vm_label(v text) RETURNS bigint LANGUAGE sql "
        f"IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT {s}.vm_label(convert_to(v, 'UTF8')) $$",
        f"CREATE OR REPLACE FUNCTION {s}.vm_label(v uuid) RETURNS bigint LANGUAGE sql "
        f"IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT {s}.vm_label(uuid_send(v)) $$",
        f"CREATE OR REPLACE FUNCTION {s}.vm_label(v bigint) RETURNS bigint LANGUAGE sql "
        "IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT v $$",
        # vecmigrate.records.sharding.hash_key: the high half of the finaliser of label+golden.
        f"CREATE OR REPLACE FUNCTION {s}.vm_shard_key(label bigint) RETURNS bigint "
        "LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS "
        f"$$ SELECT ({s}.vm_mix64({s}.vm_i64({s}.vm_u64(label) + {_GOLDEN}))::bit(64) >> 32)"
        "::bigint $$",
    ]


def install(
    engine: Engine, table: str, id_column: str, id_type: str, kind: IdKind, key: str
) -> None:
    """Give ``table`` (a table vecmigrate made, schema-qualified or not) the trigger that sets
    ``key`` for rows inserted without it (idempotent)."""
    with engine.begin() as conn:
        schema, relname = conn.execute(
            text(
                "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n "
                "ON n.oid = c.relnamespace WHERE c.oid = to_regclass(:t)"
            ),
            {"t": ".".join(_q(p) for p in table.split("."))},
        ).one()
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('vecmigrate shard key'))"))
        for stmt in function_sql(schema):
            conn.execute(text(stmt))
        idc = "NEW." + _q(id_column)
        # A UUID kept as text is labelled by its 16 bytes, as vecmigrate labels it.
        value = f"{idc}::uuid" if kind == IdKind.UUID and id_type != "uuid" else idc
        if kind == IdKind.INT:
            value = f"{idc}::bigint"
        fn = f"{_q(schema)}.{_q(relname[:40] + '_vm_h_fn')}"
        k = _q(key)
        conn.execute(
            text(
                f"CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $body$\n"
                "BEGIN\n"
                f"  IF (TG_OP = 'INSERT' AND NEW.{k} IS NULL) OR (TG_OP = 'UPDATE' AND "
                f"{idc} IS DISTINCT FROM OLD.{_q(id_column)} AND NEW.{k} IS NOT DISTINCT FROM "
                f"OLD.{k}) THEN\n"
                f"    NEW.{k} := {_q(schema)}.vm_shard_key({_q(schema)}.vm_label({value}));\n"
                "  END IF;\n"
                "  RETURN NEW;\n"
                "END\n$body$"
            )
        )
        trigger = _q(relname[:40] + "_vm_h")
        qualified = f"{_q(schema)}.{_q(relname)}"
        conn.execute(text(f"DROP TRIGGER IF EXISTS {trigger} ON {qualified}"))
        conn.execute(
            text(
                f"CREATE TRIGGER {trigger} BEFORE INSERT OR UPDATE OF {_q(id_column)} ON "
                f"{qualified} FOR EACH ROW EXECUTE FUNCTION {fn}()"
            )
        )
