#!/bin/sh
# Create and upgrade Temporal's two PostgreSQL databases (persistence and visibility) with the
# admin-tools image's temporal-sql-tool: what the deprecated auto-setup image did at every start,
# done once by a job before the server starts. Safe to run again (upgrades only).
set -eu
: "${POSTGRES_SEEDS:?}" "${POSTGRES_USER:?}"
PASSWORD="${POSTGRES_PWD:-$(cat "${POSTGRES_PWD_FILE:?set POSTGRES_PWD or POSTGRES_PWD_FILE}")}"
SCHEMA=/etc/temporal/schema/postgresql/v12
for db in "${DBNAME:-temporal}:temporal" "${VISIBILITY_DBNAME:-temporal_visibility}:visibility"; do
  name="${db%%:*}"
  kind="${db##*:}"
  tool="temporal-sql-tool --plugin postgres12 --ep $POSTGRES_SEEDS -p ${DB_PORT:-5432} -u $POSTGRES_USER --pw $PASSWORD --db $name"
  $tool create-database || true  # exists already on a second run
  $tool setup-schema -v 0.0 || true
  $tool update-schema -d "$SCHEMA/$kind/versioned"
done
