#!/usr/bin/env bash
# W1 with two load generator binaries, alternating, in one session: against the bare relay,
# then against a fresh im-server at full speed and paced at 5,000/s. For judging a change to
# the load generator (or, with two im-server binaries via IM_SERVER_A/IM_SERVER_B, to the
# server) by figures measured side by side.
#   scripts/bench-w1-ab.sh A_LOADTEST B_LOADTEST [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
a="$1"; b="$2"; rounds="${3:-2}"
server_a="${IM_SERVER_A:-target/release/im-server}"
server_b="${IM_SERVER_B:-$server_a}"
data="$(mktemp -d)"
trap 'rm -rf "$data"' EXIT

run() {
    local loadtest="$1" server="$2" label="$3"
    "$loadtest" relay --listen 127.0.0.1:18090 >/dev/null 2>&1 &
    local relay=$!
    sleep 0.5
    echo "== $label: bare relay"
    "$loadtest" w1 --server 127.0.0.1:18090 --secret "$(openssl rand -hex 32)" \
        --server-pid "$relay" --duration 10 2>&1 | grep -E "delivered/s|CPU-s|latency"
    kill "$relay"; wait "$relay" 2>/dev/null || true
    for rate in 0 5000; do
        rm -rf "$data/store"
        local secret; secret="$(openssl rand -hex 32)"
        "$server" --listen 127.0.0.1:18080 --data-dir "$data/store" --secret "$secret" \
            --rate-limit 0 >/dev/null 2>&1 &
        local pid=$!
        sleep 1
        echo "== $label: im-server, rate $rate"
        "$loadtest" w1 --server 127.0.0.1:18080 --secret "$secret" --server-pid "$pid" \
            --rate "$rate" --duration 10 2>&1 | grep -E "delivered/s|CPU-s|latency"
        kill "$pid"; wait "$pid" 2>/dev/null || true
    done
}

for round in $(seq "$rounds"); do
    echo "# round $round"
    run "$a" "$server_a" A
    run "$b" "$server_b" B
done
