#!/usr/bin/env bash
# The project's whole test suite, as README.md and CI run it on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked
