#!/usr/bin/env bash
# Runs every test of the workspace, then says which test families were skipped and why, and
# ends with one total line over all test binaries.
set -uo pipefail
log=$(mktemp)
trap 'rm -f "$log"' EXIT
rm -f target/tmp/churn-soak.txt
cargo test --workspace "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
"$(dirname "$0")/deps.sh" --summary
cat target/tmp/churn-soak.txt 2>/dev/null
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
exit "$status"
