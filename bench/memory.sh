#!/usr/bin/env bash
# The memory scenarios of the bounds issue, each against a fresh server with
# default bounds: prints the server's RSS (from /proc) and the bytes it
# accounts for (chat_memory_bytes, against --max-memory) before, during and
# after each. See examples/memory_scenarios.rs.
#
#   bash bench/memory.sh           the full scenarios (about a minute)
#   bash bench/memory.sh --smoke   small ones (CI): fails if a scenario fails
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=false
[ "${1:-}" = "--smoke" ] && smoke=true

cargo build --release --quiet --bin server --example memory_scenarios
out=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; cat "$out/server.log" >&2; rm -rf "$out"' EXIT

# Starts a server with extra flags "$@"; sets $pid and $addr.
start() {
  # The last server's address must not be read before this one writes its own.
  rm -f "$out/listening"
  # The scenarios open their clients from one address: per-address limits off.
  # A fresh store file each time, as in a deployment (its pages are not RSS).
  rm -f "$out"/chat.db*
  RUST_LOG=warn target/release/server --port 0 --max-connections 100000 --max-connections-per-ip 0 \
    --max-handshakes-per-ip 0 --joins-per-ip 0 --db "$out/chat.db" "$@" \
    >"$out/listening" 2>"$out/server.log" &
  pid=$!
  for _ in $(seq 300); do
    grep -q listening "$out/listening" 2>/dev/null && break
    sleep 0.1
  done
  addr=$(sed -n 's|^listening on [a-z]*://||p' "$out/listening")
  [ -n "$addr" ] || { echo "the server did not start" >&2; exit 1; }
}

if $smoke; then
  extra=(--rooms 100 --seconds 2 --message-bytes 16384 --pagers 10)
else
  extra=()
fi
echo "$(date -u +%Y-%m-%d) on $(nproc) cores; server defaults: --max-lag-bytes 4MiB, --history-bytes 1MiB, --max-memory 256MiB"
for scenario in rooms history reader pages; do
  start
  target/release/examples/memory_scenarios --addr "$addr" --pid "$pid" "${extra[@]}" "$scenario"
  if [ $scenario = rooms ]; then
    # Again on the same server: memory freed when rooms empty is reused.
    echo -n "again: "
    target/release/examples/memory_scenarios --addr "$addr" --pid "$pid" "${extra[@]}" "$scenario"
  fi
  kill "$pid"; wait "$pid" 2>/dev/null || true
done
# The pages scenario again under a smaller total, to see it hold.
start --max-memory 64MiB
echo -n "with --max-memory 64MiB: "
target/release/examples/memory_scenarios --addr "$addr" --pid "$pid" "${extra[@]}" pages
kill "$pid"; wait "$pid" 2>/dev/null || true
