#!/usr/bin/env bash
# Runs every Concord test: Rust (unit, integration, property), the real Yjs client tests in
# Node, the browser tests of the demo, and short multi-region load-test smoke runs. Installs
# what it needs: npm packages (from the package-locks), and Debian's openssl and Chromium via
# apt-get when missing. Usage: bash tests/run-all.sh
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

# Debian packages the tests need: openssl (the Node TLS test makes its certificates with it) and
# chromium (the browser tests).
need=()
command -v openssl >/dev/null 2>&1 || need+=(openssl)
if [ -z "${CHROMIUM:-}" ] && ! [ -x /usr/bin/chromium ]; then need+=(chromium); fi
if [ ${#need[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need[*]}"
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

step "real Yjs client tests (Node)"
(cd tests/node && npm ci --no-audit --no-fund && npm test)

step "browser tests (Chromium via playwright-core)"
(cd web-demo && npm ci --no-audit --no-fund)
(cd tests/browser && npm ci --no-audit --no-fund && npm test)

step "load test smoke run (3 regions, full convergence required)"
"$root/target/release/loadtest" --regions 3 --latency 50ms --docs 6 --editors 6 --rate 5 \
  --duration 5s --quiet --out "$root/target/loadtest/smoke"

step "load test smoke run with tokens and TLS (wss:// clients, https:// peer links)"
"$root/target/release/loadtest" --regions 3 --latency 50ms --docs 6 --editors 6 --rate 5 \
  --duration 5s --quiet --tls --auth-secret smoke-secret --out "$root/target/loadtest/smoke-tls"

echo
echo "all tests passed in ${SECONDS}s"
