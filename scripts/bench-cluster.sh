#!/usr/bin/env bash
# W1, W3 and W5 against the scaled-out shape on this machine: a Cassandra node and a Redis
# server (started by the project's scripts), two logic nodes over a fresh keyspace and two
# gateways (release builds), with W1's pairs and W3's members spread over both gateways. Then
# the same workloads against the embedded single process, for the side-by-side in
# BENCHMARKS.md. Server CPU is the sum over every server process of the shape: for the split
# shape the gateways, the logic nodes, Redis and Cassandra.
#   ./scripts/bench-cluster.sh [W1_SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
cargo build --release -q -p im-server -p loadtest
cql=$(./scripts/cassandra.sh start)
redis_addr=$(./scripts/redis.sh start)
secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
keyspace="bench_$(date +%s)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_line() { # file prefix
    for _ in $(seq 300); do grep -q "^$2" "$1" 2>/dev/null && break; sleep 0.1; done
    sed -n "s/^$2//p" "$1" | head -1
}

pids=()
logic_nodes=()
for i in 0 1; do
    port=$(free_port)
    ./target/release/im-server --role logic --listen "127.0.0.1:$port" --store cql \
        --cql-nodes "$cql" --cql-keyspace "$keyspace" --secret "$secret" \
        --data-dir "$work/logic$i" --fanout-bytes-per-sec 0 > "$work/logic$i.out" 2> "$work/logic$i.err" &
    pids+=($!)
    logic_nodes+=("$(wait_line "$work/logic$i.out" "logic listening on ")")
done
gateways=()
for i in 0 1; do
    ./target/release/im-server --role gateway --logic-nodes "$(IFS=,; echo "${logic_nodes[*]}")" \
        --redis-url "redis://$redis_addr/" --gateway-id "bench-gw$i" --listen 127.0.0.1:0 \
        --secret "$secret" --rate-limit 0 --data-dir "$work/gw$i" --no-http-tunnel \
        > "$work/gw$i.out" 2> "$work/gw$i.err" &
    pids+=($!)
    gateways+=("$(wait_line "$work/gw$i.out" "listening on ")")
done
pids+=("$(cat target/cassandra/pid)" "$(cat target/redis/pid)")
all_pids=$(IFS=,; echo "${pids[*]}")
lt() { ./target/release/loadtest "$@" --secret "$secret"; }

echo "== split shape: gateways ${gateways[*]}, logic ${logic_nodes[*]}, cassandra $cql, redis $redis_addr"
lt w1 --server "${gateways[0]}" --also-gateway "${gateways[1]}" --server-pid "$all_pids" \
    --pairs 100 --duration "$seconds" --warmup 2 --prefix "w1c$keyspace"
lt w1 --server "${gateways[0]}" --also-gateway "${gateways[1]}" --server-pid "$all_pids" \
    --pairs 100 --duration "$seconds" --warmup 2 --rate 1000 --prefix "w1p$keyspace"
lt w3 --server "${gateways[0]}" --also-gateway "${gateways[1]}" --server-pid "$all_pids" \
    --members 1000 --messages 100 --prefix "w3c$keyspace"
lt w5 --server "${gateways[0]}" --server-pid "$all_pids" --messages 10000 --page 50 \
    --prefix "w5c$keyspace"
kill "${pids[@]:0:4}"; wait "${pids[@]:0:4}" 2>/dev/null || true
# Cassandra keeps compacting after the load (and the test keyspaces it holds): stop it and Redis,
# so the embedded process is measured on an otherwise idle machine.
./scripts/cassandra.sh stop; ./scripts/redis.sh stop

echo "== embedded single process"
./target/release/im-server --data-dir "$work/embedded" --secret "$secret" --rate-limit 0 \
    --fanout-bytes-per-sec 0 --listen 127.0.0.1:0 --no-http-tunnel > "$work/emb.out" 2> "$work/emb.err" &
emb=$!
addr=$(wait_line "$work/emb.out" "listening on ")
lt w1 --server "$addr" --server-pid "$emb" --pairs 100 --duration "$seconds" --warmup 2
lt w1 --server "$addr" --server-pid "$emb" --pairs 100 --duration "$seconds" --warmup 2 --rate 1000 --prefix w1p
lt w3 --server "$addr" --server-pid "$emb" --members 1000 --messages 100
lt w5 --server "$addr" --server-pid "$emb" --messages 10000 --page 50
