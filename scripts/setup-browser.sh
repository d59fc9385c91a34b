#!/usr/bin/env bash
# Sets up what the dashboard's browser test needs (tests/e2e/dashboard.rs): headless
# Chromium (Debian's `chromium` package, installed with apt when missing and we are root)
# and a pinned playwright-core (npm, no browser download: it drives that Chromium) in
# target/browser. Idempotent. Prints `CHROMIUM_PATH<TAB>NODE_MODULES_DIR` on success; exits
# non-zero, saying why on stderr, when either cannot be had.
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned: the driver script is written against this API.
PLAYWRIGHT_CORE_VERSION="1.65.1"
dir="target/browser"

chromium="$(command -v chromium || true)"
if [ -z "$chromium" ]; then
    if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null; then
        echo "setup-browser: chromium is not installed and cannot be (needs root and apt-get)" >&2
        exit 1
    fi
    echo "setup-browser: installing Debian's chromium" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >&2 \
        || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >&2; }
    chromium="$(command -v chromium)"
fi

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "setup-browser: node and npm are needed for playwright-core" >&2
    exit 1
fi
installed="$(node -p "require('./$dir/node_modules/playwright-core/package.json').version" 2>/dev/null || true)"
if [ "$installed" != "$PLAYWRIGHT_CORE_VERSION" ]; then
    mkdir -p "$dir"
    echo "setup-browser: installing playwright-core $PLAYWRIGHT_CORE_VERSION into $dir" >&2
    (cd "$dir" && [ -f package.json ] || echo '{"private": true}' > package.json)
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --prefix "$dir" --no-audit --no-fund \
        --silent "playwright-core@$PLAYWRIGHT_CORE_VERSION" >&2
fi
printf '%s\t%s\n' "$chromium" "$(pwd)/$dir/node_modules"
