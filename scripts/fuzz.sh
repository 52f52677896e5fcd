#!/usr/bin/env bash
# `make fuzz`: the long mode of the policy checks. First the property tests with many cases,
# then coverage-guided fuzzing (cargo-fuzz, libFuzzer) of the policy reader and the bootstrap
# file, FUZZ_SECONDS each (default 300). A crash is written to fuzz/artifacts/TARGET/; commit
# it with the fix, and `make test` replays it from then on.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-300}"

echo "fuzz: property tests, ${PROPTEST_CASES:=100000} cases each"
PROPTEST_CASES="$PROPTEST_CASES" cargo test -q -p bulwark-policy --test properties

if ! command -v cargo-fuzz >/dev/null; then
    echo "fuzz: installing cargo-fuzz from crates.io"
    cargo install cargo-fuzz --locked
fi
# libFuzzer needs -Zsanitizer, a nightly flag; this machine has only a stable toolchain, and
# RUSTC_BOOTSTRAP lets stable rustc accept it for this build alone.
export RUSTC_BOOTSTRAP=1

seed() {
    local dir="fuzz/corpus/$1"; shift
    mkdir -p "$dir"
    for f in "$@"; do cp "$f" "$dir/$(basename "$f")"; done
}
seed policy_documents examples/policies/*.yaml
seed bootstrap_config examples/proxy.yaml

for target in policy_documents bootstrap_config; do
    echo "fuzz: $target for ${seconds}s"
    (cd fuzz && cargo fuzz run --sanitizer none "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -max_len=65536 -timeout=10 -artifact_prefix="artifacts/$target/")
done
echo "fuzz: no crash; corpus in fuzz/corpus (not committed), crashes would be in fuzz/artifacts"
