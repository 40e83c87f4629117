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
