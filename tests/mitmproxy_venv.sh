#!/usr/bin/env bash
# Makes the venv of tests/test_mitmproxy.py: mitmproxy 9.0.1 with its dependencies, and this package in place
# of the mitmproxy_wireguard 0.1.x that mitmproxy pins (installed without dependencies: the pin is ignored).
#
#   bash tests/mitmproxy_venv.sh [WHEEL]
#
# WHEEL is a wheel of this package; without one, a debug build of the tree is made with maturin. The venv is
# $MITMPROXY_VENV (default /tmp/mitmproxy-9.0.1-venv). It is kept: mitmproxy's dependencies are installed
# once, the package again only when its wheel differs from the one installed last.
set -euo pipefail
cd "$(dirname "$0")/.."

MITMPROXY=mitmproxy==9.0.1
venv=${MITMPROXY_VENV:-/tmp/mitmproxy-9.0.1-venv}
pip() { "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@"; }

# The requirements of an installed distribution ($1), without extras and without $2.
requirements() {
    "$venv/bin/python" - "$1" "${2:-}" <<'EOF'
import importlib.metadata
import re
import sys

name, skip = sys.argv[1], sys.argv[2]
normal = lambda n: re.sub(r"[-_.]+", "-", n).lower()
for requirement in importlib.metadata.requires(name) or []:
    project = re.match(r"[A-Za-z0-9._-]+", requirement).group(0)
    if "extra ==" not in requirement and normal(project) != normal(skip):
        print(requirement)
EOF
}

if [ "$#" -ge 1 ]; then
    wheel=$1
else
    built=$(mktemp -d)
    trap 'rm -rf "$built"' EXIT
    maturin build -q -o "$built" >&2
    wheel=$(ls "$built"/mitmproxy_wireguard-*.whl)
fi

if [ ! -e "$venv/.mitmproxy-installed" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    pip --no-deps "$MITMPROXY"
    mapfile -t deps < <(requirements mitmproxy mitmproxy_wireguard)
    pip "${deps[@]}"
    echo "$MITMPROXY" >"$venv/.mitmproxy-installed"
fi

digest=$(sha256sum "$wheel" | cut -d' ' -f1)
if [ "$(cat "$venv/.package-wheel" 2>/dev/null)" != "$digest" ]; then
    pip --no-deps --force-reinstall "$wheel"
    mapfile -t deps < <(requirements mitmproxy_wireguard)
    [ "${#deps[@]}" -eq 0 ] || pip "${deps[@]}"
    echo "$digest" >"$venv/.package-wheel"
fi
echo "$venv"
