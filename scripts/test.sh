#!/usr/bin/env bash
# The project's whole test suite, as README.md and CI run it on a fresh machine: the house
# rules (formatting, clippy with every warning an error, the workspace lints), then every test.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add rustfmt clippy
fi
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
# The server's protocol suites once more, with every connection an in-memory byte stream to a
# server in the test's process: connection handling must not depend on TCP. (The suites that
# kill, restart or measure a server process run only above.)
IM_TEST_TRANSPORT=memory cargo test -p im-server --locked \
    --test messaging --test frame_rules --test refusals --test recall_and_leave \
    --test delete_for_me --test oversized_input --test retention --test client_core
