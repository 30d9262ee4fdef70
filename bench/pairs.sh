#!/usr/bin/env bash
# Runs two server variants alternately (A, B, A, B...) at the same loads, so
# that a change's cost in speed shows above this machine's noise: prints
# delivered/s, p99 latency and server CPU per delivery for every run, then the
# median of each variant.
#
#   bash bench/pairs.sh "LABEL=COMMAND" "LABEL=COMMAND" [ROUNDS]
#
# Each COMMAND starts a server; the script adds --port 0 and the flags a
# load from one address needs (no rate limit, per-address limits off), and
# replaces {db} with a fresh store file. For example, the store on its file
# against the store in memory:
#
#   bash bench/pairs.sh "file=target/release/server --db {db}" \
#                       "memory=target/release/server --db :memory:" 3
#
# LOADS ("clients rate duration warmup", ";"-separated) overrides the loads:
# 1,000 clients at 2,000 and at 100 messages/s, 10 senders, 64-byte messages.
set -euo pipefail
cd "$(dirname "$0")/.."

[ $# -ge 2 ] || { echo "usage: bash bench/pairs.sh LABEL=COMMAND LABEL=COMMAND [ROUNDS]" >&2; exit 2; }
variants=("$1" "$2")
rounds=${3:-3}
IFS=';' read -r -a loads <<<"${LOADS:-1000 2000 5 1;1000 100 5 1}"

cargo build --release --quiet --bin server --bin chat-bench
out=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$out"' EXIT

field() { # json, name: a number from chat-bench's JSON report
  grep -o "\"$2\":[0-9.e+-]*" <<<"$1" | head -1 | cut -d: -f2
}

echo "$(date -u +%Y-%m-%d) on $(nproc) cores; generator on the same machine; 10 senders, 64-byte messages"
printf '%-8s %5s %7s %6s | %12s %9s %8s %9s %6s\n' variant round clients rate "deliv/s" "p99 ms" "cpu us" "KiB/conn" lost
for round in $(seq "$rounds"); do
  for variant in "${variants[@]}"; do
    label=${variant%%=*} command=${variant#*=}
    for load in "${loads[@]}"; do
      read -r clients rate duration warmup <<<"$load"
      rm -f "$out"/chat.db*
      # shellcheck disable=SC2086 # the command is words on purpose
      RUST_LOG=warn ${command//\{db\}/$out/chat.db} --port 0 --max-connections 100000 --rate-limit 0 \
        --max-handshakes-per-ip 0 --max-connections-per-ip 0 --joins-per-ip 0 \
        >"$out/listening" 2>"$out/server.log" &
      pid=$!
      for _ in $(seq 300); do
        grep -q listening "$out/listening" 2>/dev/null && break
        sleep 0.1
      done
      url=$(sed -n 's/^listening on //p' "$out/listening")/
      [ "$url" != "/" ] || { cat "$out/server.log" >&2; echo "error: $label did not start" >&2; exit 1; }
      json=$(target/release/chat-bench --url "$url" --clients "$clients" --senders 10 --rate "$rate" \
        --duration "$duration" --warmup "$warmup" --payload 64 --server-pid "$pid" --json) || json='{}'
      kill "$pid"; wait "$pid" 2>/dev/null || true
      d=$(field "$json" delivered_per_s); p=$(field "$json" p99)
      c=$(field "$json" server_cpu_us_per_delivery); l=$(field "$json" lost)
      b=$(field "$json" before); k=$(field "$json" connected)
      m=$(awk -v b="${b:-0}" -v k="${k:-0}" -v n="$clients" 'BEGIN { print (k - b) / n }')
      printf '%-8s %5d %7d %6d | %12.0f %9.2f %8.3f %9.2f %6s\n' "$label" "$round" "$clients" "$rate" \
        "${d:-0}" "${p:-0}" "${c:-0}" "$m" "${l:-?}" | tee -a "$out/runs"
    done
  done
done

echo "medians:"
for variant in "${variants[@]}"; do
  label=${variant%%=*}
  for load in "${loads[@]}"; do
    read -r clients rate _ <<<"$load"
    awk -v l="$label" -v c="$clients" -v r="$rate" '
      BEGIN { n = 0 }
      $1 == l && $3 == c && $4 == r { d[n] = $6; p[n] = $7; u[n] = $8; k[n] = $9; n++ }
      function median(a, n,   i, j, t) {
        for (i = 0; i < n; i++) for (j = i + 1; j < n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
        return n % 2 ? a[int(n / 2)] : (a[n / 2 - 1] + a[n / 2]) / 2
      }
      END { if (n) printf "%-8s %7d %6d | %12.0f %9.2f %8.3f %9.2f  (%d runs)\n", l, c, r, median(d, n), median(p, n), median(u, n), median(k, n), n }' \
      "$out/runs"
  done
done
