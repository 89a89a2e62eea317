#!/bin/sh
# Installs every Debian package needed to build, test, bench and demo.
# Idempotent and quiet when everything is present.
set -eu

PACKAGES="build-essential pkg-config libunwind-dev libprotobuf-c-dev
protobuf-c-compiler libcurl4-openssl-dev libzstd-dev zlib1g-dev
libmicrohttpd-dev golang-go python3 python3-pytest python3-yaml curl
libjemalloc-dev libjemalloc2 binutils procps docker-compose libc6-dbg
openssl"

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup-deps: this is not a Debian/Ubuntu system; install the equivalents of:" >&2
    echo "  $(echo $PACKAGES)" >&2
    echo "then run 'make all' and 'make unit integration' directly." >&2
    exit 1
fi

missing=""
for p in $PACKAGES; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    case "$status" in
        *"install ok installed"*) ;;
        *) missing="$missing $p" ;;
    esac
done
[ -z "$missing" ] && exit 0

echo "setup-deps: installing$missing"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "setup-deps: not root and no sudo; as root run: apt-get install$missing" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
echo "setup-deps: done"
