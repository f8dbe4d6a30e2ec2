#!/usr/bin/env bash
# Checks that the server is compiled with the same features whether it is built alone
# (`cargo run --release`, the README's first command) or together with the load generator (the
# test command). If a dependency of the load generator turns on a feature of a crate the server
# also uses, the test command rebuilds that crate and everything above it (about 70 crates, two
# minutes on 2 cores) right after `cargo run --release`. The fix is a feature pin in
# server/Cargo.toml (see the num-traits note there). Usage: bash tests/feature-parity.sh
set -euo pipefail
cd "$(dirname "$0")/.."
tree() { cargo tree --locked --offline -e normal,build --prefix none -f '{p} [{f}]' "$@" | sort -u; }
alone=$(mktemp); together=$(mktemp); trap 'rm -f "$alone" "$together"' EXIT
tree -p concord-server >"$alone"
tree -p concord-server -p concord-loadtest >"$together"
# Every crate and feature set of the server alone must appear unchanged in the joint build.
missing=$(comm -23 "$alone" "$together")
if [ -n "$missing" ]; then
  echo "the server's dependencies get other features when built with the load generator:" >&2
  echo "$missing" | sed 's/^/  /' >&2
  echo "pin those features in server/Cargo.toml so both builds share their artifacts" >&2
  exit 1
fi
echo "feature parity: the server builds identically alone and with the load generator"
