#!/usr/bin/env bash
# The project's whole test suite, as README.md and CI run it on a fresh machine: the house
# rules (formatting, clippy with every warning an error, the workspace lints), then every test.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add rustfmt clippy
fi

# The real services the cluster shape runs on: a Cassandra node (CQL, as ScyllaDB speaks it) from
# Maven Central and a Redis server from Debian's packages, started by the project's scripts
# while the code compiles, and stopped when the tests end.
mkdir -p target
services_log="target/test-services.log"
: > "$services_log"
stop_services() {
    ./scripts/cassandra.sh stop >>"$services_log" 2>&1 || true
    ./scripts/redis.sh stop >>"$services_log" 2>&1 || true
}
trap stop_services EXIT
if command -v java >/dev/null 2>&1; then
    ./scripts/cassandra.sh start >target/cassandra.addr 2>>"$services_log" &
    cassandra_starting=$!
else
    cassandra_starting=""
    echo "=================================================================" >&2
    echo "NO JDK: the CQL store's tests will SKIP (nothing checks them here)" >&2
    echo "=================================================================" >&2
fi
IM_TEST_REDIS="$(./scripts/redis.sh start 2>>"$services_log")" || {
    echo "redis failed to start:" >&2; cat "$services_log" >&2; exit 1; }
export IM_TEST_REDIS

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
if [[ -n "$cassandra_starting" ]]; then
    wait "$cassandra_starting" || { echo "cassandra failed to start:" >&2; cat "$services_log" >&2; exit 1; }
    IM_TEST_CQL="$(cat target/cassandra.addr)"
    export IM_TEST_CQL
fi
cargo test --workspace --locked
# The server's protocol suites once more, with every connection an in-memory byte stream to a
# server in the test's process: connection handling must not depend on TCP. (The suites that
# kill, restart or measure a server process run only above.)
IM_TEST_TRANSPORT=memory cargo test -p im-server --locked \
    --test messaging --test frame_rules --test refusals --test recall_and_leave \
    --test delete_for_me --test oversized_input --test retention --test client_core
# The bindings: the Swift sources are current, and the Python wheel and the Kotlin jar each pass
# their tests against a real im-server process (maturin and pytest from PyPI, the Kotlin
# toolchain and JNA from Maven Central).
./scripts/bindings.sh test
