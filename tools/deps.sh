#!/bin/sh
# deps.sh PKG...: install the Debian packages that are missing (as root, via
# apt-get); quiet when everything is there, so `make test` stays fast.
set -eu
missing=""
for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "deps: installing$missing"
if [ "$(id -u)" != 0 ]; then
    echo "deps: not root; run as root or install:$missing" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends $missing >/dev/null
# The package starts a system redis-server on :6379; capgate's tests and `make run`
# use private instances, so leave the system one as the admin configured it.
