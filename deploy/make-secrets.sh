#!/usr/bin/env bash
# Creates what deploy/docker-compose.yml mounts as secrets, in deploy/secrets/: the key ring,
# database passwords, API keys for the gateway and the codec server (printed once; only their
# hashes are kept), and self-signed TLS certificates for both. Existing files are kept. Needs
# vecmigrate installed (./scripts/demo.sh sets up .venv) and openssl.
#
# The directory is its owner's alone. Compose mounts each file into the containers as it is on
# the host, and the containers read it as users of their own (vecmigrate's uid 10001,
# Temporal's 1000), so the files themselves are readable by any uid that can reach them: only
# through that directory on this host, or mounted into the stack's containers.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/secrets"
vecmigrate="${VECMIGRATE:-$here/../.venv/bin/vecmigrate}"
mkdir -p "$out"
chmod 700 "$out"
umask 077

[ -f "$out/keyring.json" ] || "$vecmigrate" keys init --keyring "file:$out/keyring.json"
for name in temporal_db_password catalog_password; do
  [ -f "$out/$name" ] || openssl rand -base64 32 | tr -d '\n' > "$out/$name"
done
if [ ! -f "$out/gateway_credentials.yaml" ]; then
  echo "gateway API key for tenant 'default' (search and write):"
  "$vecmigrate" keys api-key --credentials "$out/gateway_credentials.yaml" --name app \
    --tenant default --action search --action write
fi
if [ ! -f "$out/codec_credentials.yaml" ]; then
  echo "codec server API key (decode payloads in the UI and CLI):"
  "$vecmigrate" keys api-key --credentials "$out/codec_credentials.yaml" --name auditors \
    --tenant '*' --action codec
fi
for name in gateway codec; do
  [ -f "$out/$name.pem" ] || openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
    -nodes -days 365 -subj "/CN=$name" -addext "subjectAltName=DNS:localhost,DNS:$name" \
    -keyout "$out/$name.key" -out "$out/$name.pem" 2>/dev/null
done
chmod 644 "$out"/*
echo "secrets in $out (keep them out of version control)"
