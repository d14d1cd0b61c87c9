#!/usr/bin/env bash
# Runs pibl's whole test suite: unit tests and the integration tests, which
# start the built binary against real backends on loopback.  Needs only the
# Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --all-targets "$@"
