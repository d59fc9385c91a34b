#!/usr/bin/env bash
# Creates (once) a Python virtual environment under target/py-sdks with the official MCP
# Python SDK, pinned, for the e2e test `mcp::official_python_sdk_client`, and prints the
# venv's python. Idempotent: when the pinned version is already installed it only prints.
#
#   export CAR_TEST_PYTHON_SDKS="$(scripts/setup-python-sdks.sh)"
#   CARGO_TARGET_DIR=... cargo test -p car-tests --test e2e mcp
#
# Needs python3 (3.10+) with the venv module, and PyPI.
set -euo pipefail

MCP_VERSION="2.3.0"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CAR_PY_SDKS_DIR:-$root/target/py-sdks}"
python="$venv/bin/python"

installed() {
    [ -x "$python" ] && [ "$("$python" -c 'import importlib.metadata as m; print(m.version("mcp"))' 2>/dev/null)" = "$MCP_VERSION" ]
}

if ! installed; then
    echo "setting up $venv (mcp==$MCP_VERSION)" >&2
    python3 -m venv "$venv" >&2
    "$python" -m pip install --quiet --disable-pip-version-check "mcp==$MCP_VERSION" >&2
    installed || { echo "mcp==$MCP_VERSION did not install into $venv" >&2; exit 1; }
fi
echo "$python"
