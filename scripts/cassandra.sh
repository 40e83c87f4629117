#!/usr/bin/env bash
# A real single-node Apache Cassandra (CQL-compatible with ScyllaDB) for tests and benchmarks,
# from Maven Central. Needs a JDK (17) and Maven.
#
#   scripts/cassandra.sh start [DIR]   start a node in DIR (default target/cassandra), wait until
#                                      it accepts CQL, print "127.0.0.1:PORT"; reuses a running one
#   scripts/cassandra.sh stop [DIR]    SIGTERM, then SIGKILL after 20 s
#   scripts/cassandra.sh port [DIR]    print the address of the running node, or fail
#
# CASSANDRA_HEAP sets the JVM heap (default 2g).
#
# The node's data lives in DIR and is thrown away by `stop`; each test makes its own keyspace.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
cmd="${1:-start}"
dir="${2:-$root/target/cassandra}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

running_pid() {
    [[ -f "$dir/pid" ]] || return 1
    local pid; pid="$(cat "$dir/pid")"
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_for_cql() {
    local port="$1" pid="$2"
    for _ in $(seq 1 240); do
        if grep -q "Starting listening for CQL clients" "$dir/system.log" 2>/dev/null \
            && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "cassandra exited during start; the end of its log ($dir/system.log):" >&2
            tail -n 40 "$dir/system.log" "$dir/stdout.log" >&2 || true
            return 1
        fi
        sleep 0.5
    done
    echo "cassandra did not accept CQL on port $port within 120 s" >&2
    return 1
}

case "$cmd" in
start)
    if pid="$(running_pid)"; then
        port="$(cat "$dir/cql_port")"
        wait_for_cql "$port" "$pid"
        echo "127.0.0.1:$port"
        exit 0
    fi
    command -v java >/dev/null || { echo "no JDK on PATH (java)" >&2; exit 3; }
    command -v mvn >/dev/null || { echo "no Maven on PATH (mvn)" >&2; exit 3; }
    # The classpath: resolved once per Maven repository (downloads ~100 jars the first time).
    cp_file="$root/target/cassandra-classpath.txt"
    if [[ ! -s "$cp_file" ]] || ! head -c 4096 "$cp_file" | tr ':' '\n' | head -n 1 | xargs test -f; then
        mkdir -p "$root/target"
        mvn -q -B -f "$here/cassandra/pom.xml" dependency:build-classpath \
            -Dmdep.outputFile="$cp_file" >&2
    fi
    rm -rf "$dir/data" "$dir/commitlog" "$dir/saved_caches" "$dir/hints" "$dir/cdc_raw"
    cql_port="$(free_port)"; storage_port="$(free_port)"; jmx_port="$(free_port)"
    cat > "$dir/cassandra.yaml" <<YAML
cluster_name: im-test
num_tokens: 1
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
commitlog_directory: $dir/commitlog
data_file_directories: [$dir/data]
saved_caches_directory: $dir/saved_caches
hints_directory: $dir/hints
cdc_raw_directory: $dir/cdc_raw
commitlog_sync: periodic
commitlog_sync_period: 10000ms
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:$storage_port"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: $storage_port
native_transport_port: $cql_port
start_native_transport: true
endpoint_snitch: SimpleSnitch
# Tests create and drop many keyspaces; a single node has nobody to agree with.
auto_snapshot: false
# Lightweight transactions carry the inbox seq allocation; Paxos v2 needs fewer round trips.
paxos_variant: v2
YAML
    cat > "$dir/logback.xml" <<XML
<configuration>
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>$dir/system.log</file>
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
</configuration>
XML
    : > "$dir/system.log"
    # Every table costs heap (about 1.6 MiB each here), and the tests make a keyspace of a dozen
    # tables per store: 512 MiB ran out at ~300 tables, 1 GiB at ~640; 2 GiB holds a whole
    # test run with room to spare.
    heap="${CASSANDRA_HEAP:-2g}"
    java_opts=("-Xms$heap" "-Xmx$heap" -XX:+ExitOnOutOfMemoryError -XX:+UseG1GC
        -Dcassandra.config="file://$dir/cassandra.yaml" -Dcassandra-foreground=yes
        -Dcassandra.jmx.local.port="$jmx_port" -Dlogback.configurationFile="$dir/logback.xml"
        -Dcassandra.storagedir="$dir"
        -Dcassandra.skip_wait_for_gossip_to_settle=0 -Dcassandra.ring_delay_ms=100)
    for m in java.base/jdk.internal.misc java.base/jdk.internal.ref java.base/sun.nio.ch \
        java.management.rmi/com.sun.jmx.remote.internal.rmi java.rmi/sun.rmi.registry \
        java.rmi/sun.rmi.server java.sql/java.sql; do
        java_opts+=(--add-exports "$m=ALL-UNNAMED")
    done
    for m in java.lang.module jdk.internal.loader jdk.internal.ref jdk.internal.reflect \
        jdk.internal.math jdk.internal.module jdk.internal.util.jar sun.nio.ch java.io java.nio \
        java.util.concurrent java.util java.util.concurrent.atomic java.lang java.math \
        java.lang.reflect java.net; do
        java_opts+=(--add-opens "java.base/$m=ALL-UNNAMED")
    done
    java_opts+=(--add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED)
    nohup java "${java_opts[@]}" -cp "$(cat "$cp_file")" \
        org.apache.cassandra.service.CassandraDaemon >"$dir/stdout.log" 2>&1 &
    pid=$!
    echo "$pid" > "$dir/pid"
    echo "$cql_port" > "$dir/cql_port"
    wait_for_cql "$cql_port" "$pid"
    echo "127.0.0.1:$cql_port"
    ;;
stop)
    if pid="$(running_pid)"; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/pid"
    rm -rf "$dir/data" "$dir/commitlog" "$dir/saved_caches" "$dir/hints" "$dir/cdc_raw"
    ;;
port)
    pid="$(running_pid)" || { echo "no cassandra running in $dir" >&2; exit 1; }
    echo "127.0.0.1:$(cat "$dir/cql_port")"
    ;;
*)
    echo "usage: $0 start|stop|port [DIR]" >&2; exit 2 ;;
esac
