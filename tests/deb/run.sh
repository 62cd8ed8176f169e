#!/bin/sh
# tests/deb/run.sh: builds the .deb (make deb), checks it with lintian (no
# tag but the overridden ones), installs it here with dpkg -i and checks what
# an operator gets: `capgate -t` on the installed config succeeds, the man
# pages are found, the unit passes systemd-analyze verify and its offline
# security score; then purges the package again (unless it was installed
# before the test).  Needs root (dpkg -i); skips, saying so, without it.
#
# Not tested here: starting the unit under systemd -- no systemd runs as
# PID 1 on this machine or in CI.  The unit's start is checked as far as it
# can be: the installed binary, run as the capgate user with the installed
# config, passes -t (what ExecReload= runs).
set -eu
cd "$(dirname "$0")/../.."
fail() { echo "deb test: FAIL: $*" >&2; exit 1; }
if [ "$(id -u)" -ne 0 ]; then
    echo "deb test: SKIPPED: dpkg -i needs root" >&2
    exit 0
fi
make --no-print-directory deb >/dev/null
deb=$(ls build/capgate_*_"$(dpkg --print-architecture)".deb | head -1)

# lintian: nothing but the two overridden (and explained) tags.
if command -v lintian >/dev/null 2>&1; then
    tags=$(lintian "$deb" 2>&1 | grep -v 'running with root privileges' || true)
    [ -z "$tags" ] || fail "lintian: $tags"
else
    echo "deb test: lintian not installed (make deps installs it)" >&2
    exit 1
fi
dpkg-deb -c "$deb" | grep ' ./usr/bin/capgate$' >/dev/null || fail "no /usr/bin/capgate"
dpkg-deb -I "$deb" conffiles | grep -qx /etc/capgate/capgate.yaml || fail "capgate.yaml is not a conffile"

before=$(dpkg-query -W -f='${Status}' capgate 2>/dev/null || true)
cleanup() {
    case $before in *installed*) ;; *) dpkg --purge capgate >/dev/null 2>&1 || true ;; esac
}
trap cleanup EXIT
dpkg -i "$deb" >/dev/null || fail "dpkg -i $deb"

out=$(capgate -t -c /etc/capgate/capgate.yaml 2>&1) || fail "capgate -t on the installed config: $out"
echo "$out" | grep -q "test is successful" || fail "capgate -t said: $out"
# The service's user reads the config (root:capgate 0640) but not the key
# (root 0600, handed over as a credential): with the key as a credential,
# as systemd would, -t passes as that user too.
cred=$(mktemp -d)
cp /etc/capgate/user.key "$cred/user.key"
chown -R capgate "$cred"
out=$(CREDENTIALS_DIRECTORY=$cred setpriv --reuid=capgate --regid=capgate --clear-groups \
      --inh-caps=-all capgate -t -c /etc/capgate/capgate.yaml 2>&1) || {
    rm -rf "$cred"; fail "capgate -t as the capgate user with the credential: $out"; }
rm -rf "$cred"
[ "$(stat -c '%U:%G %a' /etc/capgate/capgate.yaml)" = "root:capgate 640" ] || fail "config owner/mode"
[ "$(stat -c '%U:%G %a' /etc/capgate/user.key)" = "root:root 600" ] || fail "key owner/mode"
man -w capgate >/dev/null && man -w capgate.yaml >/dev/null || fail "man pages not found"
unit=/usr/lib/systemd/system/capgate.service
grep -q '^ExecStart=/usr/bin/capgate ' "$unit" || fail "ExecStart= is not /usr/bin/capgate"
v=$(systemd-analyze verify "$unit" 2>&1) || fail "systemd-analyze verify: $v"
[ -z "$v" ] || fail "systemd-analyze verify: $v"
score=$(systemd-analyze security --offline=yes "$unit" 2>&1 | sed -n 's/.*Overall exposure level for capgate.service: \([0-9.]*\).*/\1/p')
echo "deb test: $deb: lintian clean, installed, capgate -t OK, systemd-analyze security $score"
awk "BEGIN { exit !($score <= 2.0) }" || fail "exposure $score > 2.0"
