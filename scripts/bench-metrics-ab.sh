#!/usr/bin/env bash
# W1 against im-server with metrics off (no admin listener: no recorder is installed and every
# metrics call is a no-op) and on (--admin-listen, scraped every 5 s as Prometheus would),
# alternating, at full speed and paced at 5,000/s. Prints each run's figures; BENCHMARKS.md
# "Metrics on vs off" records the medians.
#   cargo build --release -p im-server -p loadtest && scripts/bench-metrics-ab.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
server=target/release/im-server
loadtest=target/release/loadtest
data="$(mktemp -d)"
trap 'rm -rf "$data"' EXIT

run() {
    local label="$1" rate="$2"; shift 2
    rm -rf "$data/store"
    local secret; secret="$(openssl rand -hex 32)"
    "$server" --listen 127.0.0.1:18080 --data-dir "$data/store" --secret "$secret" \
        --rate-limit 0 "$@" > "$data/out" 2>/dev/null &
    local pid=$! scraper=""
    sleep 1
    if grep -q "admin listening on" "$data/out"; then
        local admin; admin="$(sed -n 's/^admin listening on //p' "$data/out")"
        ( while sleep 5; do curl -s "http://$admin/metrics" >/dev/null || true; done ) &
        scraper=$!
    fi
    echo "== metrics $label, rate $rate"
    "$loadtest" w1 --server 127.0.0.1:18080 --secret "$secret" --server-pid "$pid" \
        --rate "$rate" --duration 10 2>&1 | grep -E "delivered/s|CPU-s|latency"
    [[ -n "$scraper" ]] && kill "$scraper"
    kill "$pid"; wait "$pid" 2>/dev/null || true
}

for round in $(seq "$rounds"); do
    echo "# round $round"
    for rate in 0 5000; do
        run off "$rate"
        run on "$rate" --admin-listen 127.0.0.1:0
    done
done
