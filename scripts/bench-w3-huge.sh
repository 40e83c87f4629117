#!/usr/bin/env bash
# W3 with huge groups (issue 15): one sender at 100 messages/s to a group of 1,000, 10,000 and
# 100,000 members, 1,000 of them online, on a fresh im-server each time (default read-fan-out
# threshold: groups above 500 members use read fan-out). Prints each run's table: send → last
# online member latency, setup time and the cost of each add of 500 members at the start and
# the end of the setup (equal when setup is linear), server RSS growth per member.
# BENCHMARKS.md "Issue 15 (huge groups)" records the figures. WARMUP=1 first runs W3 once
# unmeasured on the same server (a group of the same size, 500 messages): the first seconds of
# a fresh process have a tail of their own (see BENCHMARKS.md); the setup and memory figures
# are then those of a second group.
#   cargo build --release -p im-server -p loadtest && ulimit -n 20000 && scripts/bench-w3-huge.sh [SIZES...]
# RATE=50 sends 50 messages/s; SERVER_FLAGS="--read-fanout-threshold 2000" keeps a group of
# 1,000 in write fan-out, for comparison. The load generator's own CPU time is printed too.
set -euo pipefail
cd "$(dirname "$0")/.."
server=target/release/im-server
loadtest=target/release/loadtest
data="$(mktemp -d)"
trap 'rm -rf "$data"' EXIT
sizes=("$@")
[[ ${#sizes[@]} -eq 0 ]] && sizes=(1000 10000 100000)

for members in "${sizes[@]}"; do
    rm -rf "$data/store"
    secret="$(openssl rand -hex 32)"
    "$server" --listen 127.0.0.1:18080 --data-dir "$data/store" --secret "$secret" \
        --rate-limit 0 --max-connections 5000 ${SERVER_FLAGS:-} > "$data/out" 2>/dev/null &
    pid=$!
    sleep 1
    if [[ "${WARMUP:-0}" != 0 ]]; then
        "$loadtest" w3 --server 127.0.0.1:18080 --secret "$secret" --members "$members" \
            --online 1000 --messages 500 --rate 100 --timeout 300 --prefix warm >/dev/null 2>&1
    fi
    rate="${RATE:-100}"
    echo "== W3, $members members, 1,000 online, $rate messages/s ${SERVER_FLAGS:-}"
    /usr/bin/time -f "  load generator CPU-s %U user + %S system" \
        "$loadtest" w3 --server 127.0.0.1:18080 --secret "$secret" --server-pid "$pid" \
        --members "$members" --online 1000 --messages $((rate * 10)) --rate "$rate" \
        --timeout 300 2>&1 | grep -v "^  deliveries  "
    kill "$pid"; wait "$pid" 2>/dev/null || true
done
