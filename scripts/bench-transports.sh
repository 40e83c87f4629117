#!/usr/bin/env bash
# W1 and W2 over each transport against one im-server (release build), each workload on a fresh
# server process and data directory. Prints the load tester's summaries; see BENCHMARKS.md.
#   [TRANSPORTS="tcp tls quic tunnel"] ./scripts/bench-transports.sh [W2_CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
connections=${1:-15000}
cargo build --release -q -p im-server -p loadtest
ulimit -n 20000
secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

run() { # transport workload args...
    local transport=$1 workload=$2; shift 2
    rm -rf "$work/data"
    ./target/release/im-server --data-dir "$work/data" --secret "$secret" --rate-limit 0 \
        --fanout-bytes-per-sec 0 --listen 127.0.0.1:0 --tls-listen 127.0.0.1:0 \
        > "$work/out" 2> "$work/err" &
    local pid=$!
    for _ in $(seq 100); do [ "$(wc -l < "$work/out")" -ge 2 ] && break; sleep 0.1; done
    local plain tls addr
    plain=$(sed -n 's/^listening on //p' "$work/out")
    tls=$(sed -n 's/^tls listening on //p' "$work/out")
    case $transport in tls|quic) addr=$tls ;; *) addr=$plain ;; esac
    echo "== $workload over $transport"
    ./target/release/loadtest "$workload" --server "$addr" --secret "$secret" --server-pid "$pid" \
        --transport "$transport" --ca-cert "$work/data/tls/cert.pem" "$@"
    kill "$pid"; wait "$pid" 2>/dev/null || true
}

for transport in ${TRANSPORTS:-tcp tls quic tunnel}; do
    run "$transport" w1 --pairs 100 --duration 10 --warmup 2
    run "$transport" w1 --pairs 100 --duration 10 --warmup 2 --rate 5000
    run "$transport" w2 --connections "$connections" --processes 4 --hold 10
done
