#!/bin/sh
# Namespace and search attributes for vecmigrate, once the Temporal frontend answers.
# Run by the compose file's temporal-setup service and by the Kubernetes setup Job (admin-tools
# image). Idempotent: a namespace or attribute that exists is left as it is.
# The attribute list must match vecmigrate/model/search.py (a test checks it).
set -eu
: "${TEMPORAL_ADDRESS:?set TEMPORAL_ADDRESS to the frontend, host:7233}"
NAMESPACE="${TEMPORAL_NAMESPACE:-default}"
RETENTION="${TEMPORAL_RETENTION:-30d}"

until temporal operator cluster health --address "$TEMPORAL_ADDRESS" >/dev/null 2>&1; do
  echo "waiting for Temporal at $TEMPORAL_ADDRESS"
  sleep 2
done

if ! temporal operator namespace describe --address "$TEMPORAL_ADDRESS" --namespace "$NAMESPACE" >/dev/null 2>&1; then
  temporal operator namespace create --address "$TEMPORAL_ADDRESS" --namespace "$NAMESPACE" --retention "$RETENTION"
fi

existing="$(temporal operator search-attribute list --address "$TEMPORAL_ADDRESS" --namespace "$NAMESPACE")"
for attribute in \
  VecmigratePhase \
  VecmigrateStrategy \
  VecmigrateTenant \
  VecmigrateCollection \
  VecmigrateSourceVersion \
  VecmigrateTargetVersion \
  VecmigrateRegion; do
  if ! printf '%s\n' "$existing" | grep -qw "$attribute"; then
    temporal operator search-attribute create --address "$TEMPORAL_ADDRESS" \
      --namespace "$NAMESPACE" --name "$attribute" --type Keyword
  fi
done
echo "namespace $NAMESPACE ready with vecmigrate's search attributes"
