#!/usr/bin/env bash
# Mutation check: proves that the test suite catches the bugs it exists to catch.
#
# Each file in tests/mutation/mutants/ is a small patch that breaks one promise on purpose (a
# room broadcasting before its commit, a link acknowledging before the local commit, eviction
# switched off, garbage accepted silently), brings back one of the defects of issue 12 (D1-D5), or
# opens a hole in access control (a viewer's writes applied, a token outliving its expiry, status
# open, an auth backend failing open, a connection place freed early, a peer proof not bound to
# its TLS session).
# Its header says what it breaks (`# what:`) and which tests must catch it (`# catch:`, a
# nextest filter expression). For each mutant this script applies the patch to a scratch copy of
# HEAD, builds the release binary and the tests, and runs the catching tests N times: a mutant
# must make them fail every time. It prints one table row per mutant and exits non-zero if any
# run let a mutant through.
#
# Usage: bash tests/mutation/run.sh [-n RUNS] [MUTANT...]     (default: 10 runs, every mutant;
# about 50 minutes on 2 cores)
# Not part of tests/run-all.sh: each mutant needs its own build (about a minute incremental on
# 2 cores) and ten runs. Everything happens in target/mutation/; your working tree is untouched.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
runs=10
if [ "${1:-}" = "-n" ]; then runs=$2; shift 2; fi
mutants=("$@")
if [ ${#mutants[@]} -eq 0 ]; then
  for p in tests/mutation/mutants/*.patch; do mutants+=("$(basename "$p" .patch)"); done
fi

scratch=$root/target/mutation/tree
export CARGO_TARGET_DIR=$root/target/mutation/target
mkdir -p "$root/target/mutation"
if [ ! -d "$scratch/.git" ] && [ ! -f "$scratch/.git" ]; then
  git worktree add --detach "$scratch" HEAD >/dev/null
fi
git -C "$scratch" checkout --detach -q HEAD
git -C "$scratch" reset -q --hard "$(git rev-parse HEAD)"

results=()
status=0
for m in "${mutants[@]}"; do
  patch=$root/tests/mutation/mutants/$m.patch
  what=$(sed -n 's/^# what: //p' "$patch")
  filter=$(sed -n 's/^# catch: //p' "$patch")
  git -C "$scratch" reset -q --hard
  git -C "$scratch" apply "$patch"
  echo "==> $m: $what"
  (cd "$scratch" && cargo build --release --locked -q -p concord-server &&
    cargo nextest run --workspace --locked --no-run) >"$root/target/mutation/$m.build.log" 2>&1 || {
    echo "    the mutant does not build; see target/mutation/$m.build.log"
    results+=("| $m | does not build | |")
    status=1
    continue
  }
  caught=0
  failing=""
  for i in $(seq 1 "$runs"); do
    log=$root/target/mutation/$m.run$i.log
    if (cd "$scratch" && CONCORD_BIN=$CARGO_TARGET_DIR/release/concord \
      cargo nextest run --workspace --locked --no-fail-fast -E "$filter") >"$log" 2>&1; then
      echo "    run $i: NOT caught"
    else
      caught=$((caught + 1))
      failing=$(grep -oE 'FAIL \[[^]]*\] \([^)]*\) [^ ]+ [^ ]+' "$log" | awk '{print $NF}' | sort -u | paste -sd, -)
      echo "    run $i: caught by $failing"
    fi
  done
  [ "$caught" -eq "$runs" ] || status=1
  results+=("| $m | $caught/$runs | $failing |")
done
git -C "$scratch" reset -q --hard

echo
echo "| mutant | caught | failing tests (last run) |"
echo "| --- | --- | --- |"
printf '%s\n' "${results[@]}"
exit $status
