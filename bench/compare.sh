#!/usr/bin/env bash
# Measures this project's server and the tutorial's naive server
# (examples/naive_server.rs) at the same loads, in one run, on this machine:
# prints a table with the ratios and writes img/bench.png (p99 latency against
# delivered messages per second).
#
#   bash bench/compare.sh           full run (a few minutes), writes the plot
#   bash bench/compare.sh --smoke   a few seconds of small loads; fails unless
#                                   this project's server lost nothing (CI)
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=false
[ "${1:-}" = "--smoke" ] && smoke=true

cargo build --release --quiet --bin server --bin chat-bench --example naive_server
out=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$out"' EXIT

# "clients rate duration warmup" per load; 10 senders, 64-byte messages.
if $smoke; then
  loads=("50 200 2 0.5" "200 500 2 0.5")
else
  loads=("1000 100 5 1" "1000 500 5 1" "1000 1000 5 1" "1000 1500 5 1" "1000 2000 5 1"
         "1000 3000 5 1" "10000 100 5 2" "10000 150 5 2" "10000 1 5 1")
fi

# Starts a server; sets $pid and $url.
start() {
  local log=$out/server.log
  case $1 in
    # A fresh store file each time: messages are written as in a deployment.
    chat) rm -f "$out"/chat.db*
      RUST_LOG=warn target/release/server --port 0 --max-connections 100000 --rate-limit 0 \
      --max-handshakes-per-ip 0 --max-connections-per-ip 0 --joins-per-ip 0 --db "$out/chat.db" \
      >"$out/listening" 2>"$log" & ;;
    naive) RUST_LOG=warn target/release/examples/naive_server --port 0 >"$out/listening" 2>"$log" & ;;
  esac
  pid=$!
  for _ in $(seq 300); do
    grep -q listening "$out/listening" 2>/dev/null && break
    sleep 0.1
  done
  url=$(sed -n 's/^listening on //p' "$out/listening")/
  [ "$url" != "/" ] || { echo "the $1 server did not start" >&2; exit 1; }
}

field() { # json, name: a number from chat-bench's JSON report
  grep -o "\"$2\":[0-9.e+-]*" <<<"$1" | head -1 | cut -d: -f2
}

echo "$(date -u +%Y-%m-%d) on $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)," \
  "$(awk '/^MemTotal/ {printf "%d", $2 / 1048576}' /proc/meminfo) GiB; 10 senders, 64-byte messages, generator on the same machine"
printf '%7s %6s | %12s %9s %10s | %12s %9s %10s | %7s %7s\n' \
  clients rate "chat deliv/s" "p99 ms" lost "naive d/s" "p99 ms" lost "x d/s" "x p99"
: >"$out/results"
failed=false
for load in "${loads[@]}"; do
  read -r clients rate duration warmup <<<"$load"
  declare -A result=()
  for server in chat naive; do
    start "$server"
    json=$(target/release/chat-bench --url "$url" --clients "$clients" --senders 10 --rate "$rate" \
      --duration "$duration" --warmup "$warmup" --payload 64 --server-pid "$pid" --json) || json='{}'
    kill "$pid"; wait "$pid" 2>/dev/null || true
    echo "$server $clients $rate $json" >>"$out/results"
    result[$server]=$json
  done
  c=${result[chat]} n=${result[naive]}
  cd_=$(field "$c" delivered_per_s); cp=$(field "$c" p99); cl=$(field "$c" lost)
  nd=$(field "$n" delivered_per_s); np=$(field "$n" p99); nl=$(field "$n" lost)
  awk -v c="$clients" -v r="$rate" -v cd="${cd_:-0}" -v cp="${cp:-0}" -v cl="${cl:-?}" \
      -v nd="${nd:-0}" -v np="${np:-0}" -v nl="${nl:-?}" 'BEGIN {
    printf "%7d %6d | %12.0f %9.2f %10s | %12.0f %9.2f %10s | %7.2f %7.2f\n",
      c, r, cd, cp, cl, nd, np, nl, (nd > 0 ? cd / nd : 0), (cp > 0 ? np / cp : 0) }'
  [ "${cl:-x}" = "0" ] || failed=true
  rss=$(grep -o '"server_rss_kib":{[^}]*}' <<<"$c" || true)
  cpu=$(field "$c" server_cpu_us_per_delivery)
  echo "        chat: $rss cpu_us_per_delivery=${cpu:-?}"
done
echo "(x d/s: chat's delivered/s over naive's; x p99: naive's p99 over chat's. lost = deliveries lost.)"

if ! $smoke; then
  venv=${TMPDIR:-/tmp}/chat-bench-venv
  [ -x "$venv/bin/python" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install --quiet matplotlib; }
  "$venv/bin/python" bench/plot.py "$out/results" img/bench.png
  cp "$out/results" bench/last-run.txt
  echo "wrote img/bench.png and bench/last-run.txt (the raw chat-bench reports)"
fi

if $failed; then
  echo "error: this project's server lost deliveries" >&2
  exit 1
fi
