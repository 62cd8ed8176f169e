#!/bin/sh
# promtool.sh DIR: puts Debian's promtool (from the prometheus package) into
# DIR/usr/bin without installing the package, which would start a Prometheus
# server on the machine.  Used by the /metrics test; quiet when present.
set -eu
dir=$1
[ -x "$dir/usr/bin/promtool" ] && exit 0
mkdir -p "$dir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
( cd "$tmp" && apt-get download prometheus >/dev/null 2>&1 ) || {
    apt-get update -qq >/dev/null 2>&1 && ( cd "$tmp" && apt-get download prometheus >/dev/null )
}
dpkg -x "$tmp"/prometheus_*.deb "$tmp/x"
mkdir -p "$dir/usr/bin"
cp "$tmp/x/usr/bin/promtool" "$dir/usr/bin/promtool"
