#!/usr/bin/env bash
# Messages the store (--db) writes a second at saturation: many rooms, one
# client each, small messages as fast as the server echoes them
# (examples/store_writes.rs), against a release server on a fresh file.
#
#   bash bench/store.sh [ROOMS [SECONDS [PAYLOAD]]]   default 200 rooms, 10 s, 32 bytes
set -euo pipefail
cd "$(dirname "$0")/.."
rooms=${1:-200} seconds=${2:-10} payload=${3:-32}

cargo build --release --quiet --bin server --example store_writes
out=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$out"' EXIT
RUST_LOG=warn target/release/server --port 0 --db "$out/chat.db" --rate-limit 0 \
  --max-handshakes-per-ip 0 --max-connections-per-ip 0 --joins-per-ip 0 >"$out/listening" 2>"$out/log" &
pid=$!
for _ in $(seq 300); do
  grep -q listening "$out/listening" 2>/dev/null && break
  sleep 0.1
done
addr=$(sed -n 's|^listening on ws://||p' "$out/listening")
[ -n "$addr" ] || { echo "the server did not start" >&2; exit 1; }
echo "$(date -u +%Y-%m-%d) on $(nproc) cores; the generator on the same machine"
target/release/examples/store_writes --addr "$addr" --rooms "$rooms" --seconds "$seconds" --payload "$payload"
echo "file: $(du -k "$out/chat.db" | cut -f1) KiB, WAL: $(du -k "$out/chat.db-wal" 2>/dev/null | cut -f1) KiB; server CPU: $(awk '{print ($14 + $15) / 100}' /proc/$pid/stat) s"
