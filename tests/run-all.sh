#!/usr/bin/env bash
# Runs every Concord test: Rust (unit, integration, property), the real Yjs client tests in
# Node, the browser tests of the demo, and short multi-region load-test smoke runs. Installs
# what it needs: npm packages (from the package-locks), and Debian's openssl and Chromium via
# apt-get when missing. Usage: bash tests/run-all.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
step() { printf '\n==> %s [%ss]\n' "$*" "$SECONDS"; }
# quietly LOG COMMAND...: runs a slow, chatty command with its output in LOG, printing a line
# every 10 s so the run never looks stuck; if it fails, prints the end of LOG and stops.
quietly() {
  local log=$1; shift
  local start=$SECONDS
  "$@" >"$log" 2>&1 &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    if (( (SECONDS - start) % 10 == 0 )) && kill -0 "$pid" 2>/dev/null; then
      echo "  ... still at it after $((SECONDS - start)) s (output: $log)"
    fi
  done
  if ! wait "$pid"; then
    echo "failed after $((SECONDS - start)) s; the end of $log:" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
  echo "  done in $((SECONDS - start)) s (output: $log)"
}

step "build the concord binary and the load generator (release)"
cargo build --release --locked -p concord-server -p concord-loadtest
export CONCORD_BIN="$root/target/release/concord"
# The server must build with the same features alone (`cargo run --release`) and with the load
# generator (just above), or this step rebuilds about 70 crates after the README's first command.
bash tests/feature-parity.sh

step "Rust tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --profile ci
  cargo test --workspace --locked --doc
else
  cargo test --workspace --locked
fi

# The suite above runs the server's default document mode (encoded); the tests of what users
# rely on most (the protocol, lost updates, replication) run again with --doc-mode live.
step "Rust tests again with --doc-mode live (protocol, lost updates, replication)"
if cargo nextest --version >/dev/null 2>&1; then
  CONCORD_DOC_MODE=live cargo nextest run -p concord-tests --locked --profile ci \
    --test protocol --test lost_updates --test replication --test live_docs
else
  CONCORD_DOC_MODE=live cargo test -p concord-tests --locked \
    --test protocol --test lost_updates --test replication --test live_docs
fi

# Debian packages the tests need: openssl (the Node TLS test makes its certificates with it),
# chromium (the browser tests) and prometheus (its promtool checks the alerting rules in ops/).
# apt is chatty (and warns that debconf has no terminal to ask questions on, which is harmless
# here), so its output goes to a log, and a line every 10 s shows it is still working.
need=()
command -v openssl >/dev/null 2>&1 || need+=(openssl)
if [ -z "${CHROMIUM:-}" ] && ! [ -x /usr/bin/chromium ]; then need+=(chromium); fi
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
  step "install Debian packages: ${need[*]} (about 30 s, only the first time)"
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  mkdir -p "$root/target/test-logs"
  quietly "$root/target/test-logs/apt.log" \
    $sudo env DEBIAN_FRONTEND=noninteractive sh -c \
    "apt-get update -q && apt-get install -y -q ${need[*]}"
fi

step "alerting rules and the example Prometheus config (promtool)"
promtool check rules ops/alerts.yml
promtool test rules ops/alerts.test.yml
promtool check config ops/prometheus.yml

step "real Yjs client tests (Node)"
(cd tests/node && npm ci --no-audit --no-fund && npm test)

step "browser tests (Chromium via playwright-core)"
(cd web-demo && npm ci --no-audit --no-fund)
(cd tests/browser && npm ci --no-audit --no-fund && npm test)

step "load test smoke run (3 regions, full convergence required)"
"$root/target/release/loadtest" --regions 3 --latency 50ms --docs 6 --editors 6 --rate 5 \
  --duration 5s --quiet --out "$root/target/loadtest/smoke"
node tests/replication-cost-fields.mjs "$root/target/loadtest/smoke/report.json"

step "load test smoke run with tokens and TLS (wss:// clients, https:// peer links)"
"$root/target/release/loadtest" --regions 3 --latency 50ms --docs 6 --editors 6 --rate 5 \
  --duration 5s --quiet --tls --auth-secret smoke-secret --out "$root/target/loadtest/smoke-tls"
node tests/replication-cost-fields.mjs "$root/target/loadtest/smoke-tls/report.json"

step "load test smoke run with pre-filled documents (--doc-size: server RSS per document and connection)"
"$root/target/release/loadtest" --regions 2 --latency 20ms --doc-size 50KB --docs 2 --editors 2 \
  --duration 3s --quiet --out "$root/target/loadtest/smoke-docsize"
node tests/doc-size-fields.mjs "$root/target/loadtest/smoke-docsize" 50000

echo
echo "all tests passed in ${SECONDS}s"
