#!/usr/bin/env bash
# Every test of the project: the README's test command, and what CI runs.
#
# 1. Sets up what the suites that drive real external clients need, with the project's
#    own setup scripts: the official MCP Python SDK in target/py-sdks
#    (scripts/setup-python-sdks.sh), and a 3-node NATS JetStream cluster on 127.0.0.1 for
#    the cluster-mode suites (scripts/nats-cluster.sh; its URLs go to the tests in
#    CAR_TEST_NATS_URLS, and it is stopped, node by node by pid, when this script exits),
#    and headless Chromium with a pinned playwright-core for the dashboard's browser test
#    (scripts/setup-browser.sh: CAR_TEST_CHROMIUM, CAR_TEST_NODE_MODULES).
# 2. Runs `cargo test --workspace` (extra arguments are passed on).
# 3. Says which suites were skipped and why. A skipped suite is never counted as passed:
#    the tests that need something missing print `SKIPPED <test>: <why>` and return.
#
# In CI (CI=true) a setup that fails is an error, so a suite is never skipped there
# unnoticed; elsewhere it is a warning and the suite is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

skipped=()

if sdk_python="$(scripts/setup-python-sdks.sh)"; then
    export CAR_TEST_PYTHON_SDKS="$sdk_python"
else
    if [ "${CI:-}" = "true" ]; then
        echo "scripts/test.sh: setting up the Python SDK clients failed" >&2
        exit 1
    fi
    skipped+=("mcp::official_python_sdk_client (the MCP Python SDK could not be set up)")
fi

if nats_urls="$(scripts/nats-cluster.sh start)"; then
    export CAR_TEST_NATS_URLS="$nats_urls"
    trap 'scripts/nats-cluster.sh stop' EXIT
else
    if [ "${CI:-}" = "true" ]; then
        echo "scripts/test.sh: starting the NATS cluster failed" >&2
        exit 1
    fi
    skipped+=("cluster suites: car-events jetstream::*, e2e cluster::* (the NATS cluster could not be started)")
fi

if browser="$(scripts/setup-browser.sh)"; then
    export CAR_TEST_CHROMIUM="${browser%%$'\t'*}"
    export CAR_TEST_NODE_MODULES="${browser#*$'\t'}"
else
    if [ "${CI:-}" = "true" ]; then
        echo "scripts/test.sh: setting up headless Chromium failed" >&2
        exit 1
    fi
    skipped+=("dashboard::in_headless_chromium_*, dashboard::with_10k_runs_* (headless Chromium could not be set up)")
fi

if [ "$(id -u)" != "0" ]; then
    skipped+=("disk_full::* (mounting a small tmpfs needs root)")
fi

status=0
cargo test --workspace "$@" || status=$?

if [ ${#skipped[@]} -gt 0 ]; then
    echo >&2
    echo "skipped suites (not passed):" >&2
    for suite in "${skipped[@]}"; do
        echo "  SKIPPED $suite" >&2
    done
fi
exit $status
