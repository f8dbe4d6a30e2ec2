#!/usr/bin/env bash
# Runs every Concord test: Rust (unit, integration, property), the real Yjs client tests in
# Node, the browser tests of the demo, and a short multi-region load-test smoke run. Installs
# what it needs: npm packages (from the package-locks) and Debian's Chromium via apt-get when it
# is missing. Usage: bash tests/run-all.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
step() { printf '\n==> %s [%ss]\n' "$*" "$SECONDS"; }

step "build the concord binary and the load generator (release)"
cargo build --release --locked -p concord-server -p concord-loadtest
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

step "browser tests (Chromium via playwright-core)"
if [ -z "${CHROMIUM:-}" ] && ! [ -x /usr/bin/chromium ]; then
  echo "installing Debian's chromium"
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi
(cd web-demo && npm ci --no-audit --no-fund)
(cd tests/browser && npm ci --no-audit --no-fund && npm test)

step "load test smoke run (3 regions, full convergence required)"
"$root/target/release/loadtest" --regions 3 --latency 50ms --docs 6 --editors 6 --rate 5 \
  --duration 5s --quiet --out "$root/target/loadtest/smoke"

echo
echo "all tests passed in ${SECONDS}s"
