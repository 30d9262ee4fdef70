#!/usr/bin/env bash
# Measures two server nodes sharing a room through Redis (--redis): starts a
# redis-server of its own on a free loopback port, two nodes, and runs
# chat-bench with its clients spread over both (so most deliveries cross Redis).
# Each node runs one tokio worker thread (NODE_THREADS, through tokio's own
# TOKIO_WORKER_THREADS): two nodes on two cores get one core each.
#
#   bash bench/cluster.sh           1,000 clients at 250, 500 and 750 msg/s
#   bash bench/cluster.sh --smoke   a few seconds of a small load; fails unless
#                                   nothing was lost (CI)
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=false
[ "${1:-}" = "--smoke" ] && smoke=true
command -v redis-server >/dev/null || { echo "error: redis-server not found (apt-get install redis-server)" >&2; exit 1; }

cargo build --release --quiet --bin server --bin chat-bench
out=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$out"' EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no >"$out/redis.log" 2>&1 &
for _ in $(seq 300); do grep -q "Ready to accept" "$out/redis.log" && break; sleep 0.1; done
grep -q "Ready to accept" "$out/redis.log" || { echo "error: redis-server did not start" >&2; exit 1; }

urls=()
for node in 1 2; do
  RUST_LOG=warn TOKIO_WORKER_THREADS=${NODE_THREADS:-1} target/release/server --port 0 --redis "redis://127.0.0.1:$port" \
    --max-connections 100000 --rate-limit 0 --max-handshakes-per-ip 0 --max-connections-per-ip 0 --joins-per-ip 0 >"$out/node$node" 2>"$out/node$node.log" &
  for _ in $(seq 300); do grep -q listening "$out/node$node" 2>/dev/null && break; sleep 0.1; done
  url=$(sed -n 's/^listening on //p' "$out/node$node")
  [ -n "$url" ] || { echo "error: node $node did not start" >&2; exit 1; }
  urls+=(--url "$url/bench")
done

if $smoke; then
  loads=("100 200 2 0.5")
else
  loads=("1000 250 5 1" "1000 500 5 1" "1000 750 5 1")
fi
echo "$(date -u +%Y-%m-%d) on $(nproc) cores; 2 nodes + redis-server + generator on the same machine; 10 senders, 64-byte messages"
printf '%7s %6s | %12s %9s %9s %8s\n' clients rate "deliv/s" "p50 ms" "p99 ms" lost
failed=false
for load in "${loads[@]}"; do
  read -r clients rate duration warmup <<<"$load"
  json=$(target/release/chat-bench "${urls[@]}" --clients "$clients" --senders 10 --rate "$rate" \
    --duration "$duration" --warmup "$warmup" --payload 64 --json) || json='{}'
  field() { grep -o "\"$1\":[0-9.e+-]*" <<<"$json" | head -1 | cut -d: -f2; }
  printf '%7d %6d | %12.0f %9.2f %9.2f %8s\n' "$clients" "$rate" "$(field delivered_per_s)" \
    "$(field p50)" "$(field p99)" "$(field lost)"
  [ "$(field lost)" = "0" ] || failed=true
done
if $failed; then
  echo "error: deliveries were lost" >&2
  exit 1
fi
