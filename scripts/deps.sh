#!/usr/bin/env bash
# Installs what `make test` and `make demo` need, when it can, and says what it skips.
#   scripts/deps.sh            check and install
#   scripts/deps.sh --summary  only say which test families ran and which were skipped
set -euo pipefail

root=false
[ "$(id -u)" = 0 ] && root=true
have() { command -v "$1" >/dev/null 2>&1; }

netns_status() {
    if ! $root; then
        echo "SKIPPED: not root (network namespaces and iptables need root)"
    elif ! have ip || ! have iptables || ! have ip6tables || ! have setpriv; then
        echo "SKIPPED: ip, iptables, ip6tables or setpriv is missing"
    elif ! ip netns add "bwdeps$$" 2>/dev/null; then
        echo "SKIPPED: this machine does not allow creating network namespaces"
    else
        ip netns del "bwdeps$$"
        echo "ran (root, iptables and network namespaces available)"
    fi
}

if [ "${1:-}" = "--summary" ]; then
    echo "transparent-capture tests (network namespaces + iptables): $(netns_status)"
    venv_python="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python"
    if [ -x "$venv_python" ] && "$venv_python" -c "import grpc, grpc_tools" 2>/dev/null; then
        echo "python grpcio client test: ran"
    else
        echo "python grpcio client test: SKIPPED (no virtualenv with grpcio; see the deps lines above)"
    fi
    if [ -x "$venv_python" ] && "$venv_python" -c "import grpc_reflection, kubernetes_validate" 2>/dev/null; then
        echo "python reflection client and strict chart validation: ran"
    else
        echo "python reflection client and strict chart validation: SKIPPED (grpcio-reflection or kubernetes-validate missing from .venv)"
    fi
    if have go && [ -d /usr/share/gocode/src/github.com/Masterminds/sprig ]; then
        echo "chart rendered by Helm's template engine (Go text/template + sprig): ran"
    else
        echo "chart tests: SKIPPED (Go or Debian's sprig package missing: scripts/deps.sh installs them as root)"
    fi
    if have nginx; then
        echo "nginx HTTP/2 upstream tests: ran"
    else
        echo "nginx HTTP/2 upstream tests: SKIPPED (nginx not installed)"
    fi
    # The 10,000-idle-connections test raises its soft limit itself; the hard limit must allow it.
    if [ "$(ulimit -Hn)" = unlimited ] || [ "$(ulimit -Hn)" -ge 11024 ]; then
        echo "10,000 idle connections test: ran"
    else
        echo "10,000 idle connections test: SKIPPED (open-file hard limit $(ulimit -Hn) < 11024)"
    fi
    exit 0
fi

have cargo || { echo "deps: cargo is required: install Rust (https://rustup.rs) first" >&2; exit 1; }
for comp in rustfmt clippy; do
    sub=${comp/rustfmt/fmt}
    if ! cargo "$sub" --version >/dev/null 2>&1; then
        echo "deps: installing the $comp component"
        rustup component add "$comp"
    fi
done

missing=()
have nginx || missing+=(nginx)
have curl || missing+=(curl)
have go || missing+=(golang-go)
[ -d /usr/share/gocode/src/github.com/Masterminds/sprig ] || missing+=(golang-github-masterminds-sprig-dev)
[ -d /usr/share/gocode/src/gopkg.in/yaml.v2 ] || missing+=(golang-gopkg-yaml.v2-dev)
have iptables || missing+=(iptables)
have ip || missing+=(iproute2)
have setpriv || missing+=(util-linux)
have openssl || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
    if $root && have apt-get; then
        echo "deps: installing ${missing[*]} (bulwark-proxy init and the namespaced tests, test certificates, nginx as a real HTTP/2 upstream, Go and sprig for Helm's template engine)"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "deps: ${missing[*]} missing and cannot be installed here (needs root and apt-get)"
    fi
fi
echo "deps: transparent-capture tests will be $(netns_status | sed 's/^ran/run/')"

# A Python gRPC client for the control plane's cross-language test, in a virtualenv of our own.
venv="$(cd "$(dirname "$0")/.." && pwd)/.venv"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import grpc, grpc_tools, grpc_reflection, prometheus_client, kubernetes_validate, jsonpatch" 2>/dev/null; then
    echo "deps: python grpcio and reflection clients, metrics parser, kubernetes-validate ready ($venv)"
elif have python3; then
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
        if $root && have apt-get; then
            echo "deps: installing python3-venv"
            apt-get update -qq >/dev/null
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            python3 -m venv "$venv" >/dev/null 2>&1 || true
        fi
    fi
    if [ -x "$venv/bin/pip" ] && "$venv/bin/pip" install -q grpcio grpcio-tools grpcio-reflection prometheus-client kubernetes-validate jsonpatch >/dev/null 2>&1; then
        echo "deps: python grpcio and reflection clients, metrics parser, kubernetes-validate installed ($venv)"
    else
        echo "deps: python grpcio client SKIPPED: could not create a virtualenv with grpcio (python3-venv or PyPI missing)"
    fi
else
    echo "deps: python grpcio client SKIPPED: python3 is not installed"
fi
