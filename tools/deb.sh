#!/bin/sh
# tools/deb.sh: builds build/capgate_<version>_<arch>.deb with Debian's own
# tools (`make deb` calls it): tools/install.sh stages the files with
# PREFIX=/usr, dpkg-shlibdeps computes Depends: from the binary's
# libraries, dpkg-deb --root-owner-group builds the package.
#
#   VERSION=0.1.0 BINARY=build/capgate sh tools/deb.sh
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
VERSION=${VERSION:?VERSION}
BINARY=${BINARY:-build/capgate}
ARCH=$(dpkg --print-architecture)
out=$top/build/deb
root=$out/root
rm -rf "$out"
mkdir -p "$root/DEBIAN"

DESTDIR=$root PREFIX=/usr BINARY=$top/$BINARY sh "$top/tools/install.sh" >/dev/null
# A native package (no Debian revision): its changelog is changelog.gz.
# Debian wants the binary stripped (the debug symbols belong in a -dbgsym
# package, which this one does not build) and /etc/capgate to be the
# tmpfiles' (0750 root:capgate, set by postinst).
strip --remove-section=.comment --remove-section=.note --strip-unneeded "$root/usr/bin/capgate"

doc=$root/usr/share/doc/capgate
install -d -m 0755 "$doc"
install -m 0644 "$top/tools/deb/copyright" "$doc/copyright"
printf 'capgate (%s) unstable; urgency=medium\n\n  * Package built from the capgate sources.\n\n -- Seed 4db00181 maintainers <maintainers@users.noreply.h-seed-4db00181.example>  %s\n' \
    "$VERSION" "$(date -R -u -d @"${SOURCE_DATE_EPOCH:-$(git -C "$top" log -1 --format=%ct 2>/dev/null || date +%s)}")" \
    | gzip -9n > "$doc/changelog.gz"
chmod 0644 "$doc/changelog.gz"

# Depends: from the libraries the binary links (dpkg-shlibdeps reads
# debian/control of the directory it runs in).
work=$out/shlibs
mkdir -p "$work/debian"
printf 'Source: capgate\n\nPackage: capgate\nArchitecture: any\n' > "$work/debian/control"
depends=$(cd "$work" && dpkg-shlibdeps -O "$root/usr/bin/capgate" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
[ -n "$depends" ] || { echo "deb.sh: dpkg-shlibdeps found no libraries" >&2; exit 1; }
rm -rf "$work"

size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s|@VERSION@|$VERSION|" -e "s|@ARCH@|$ARCH|" -e "s|@SIZE@|$size|" \
    -e "s|@DEPENDS@|$depends|" "$top/tools/deb/control.in" > "$root/DEBIAN/control"
echo /etc/capgate/capgate.yaml > "$root/DEBIAN/conffiles"
install -m 0755 "$top/tools/deb/postinst" "$root/DEBIAN/postinst"
install -m 0755 "$top/tools/deb/postrm" "$root/DEBIAN/postrm"
# The two modes lintian would flag are meant: the configuration may hold a
# Redis password, so /etc/capgate is 0750 and capgate.yaml 0640 (root:capgate
# once postinst has run systemd-tmpfiles).
install -D -m 0644 "$top/tools/deb/lintian-overrides" "$root/usr/share/lintian/overrides/capgate"
(cd "$root" && find usr etc -type f | sort | xargs md5sum) > "$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/md5sums" "$root/DEBIAN/control" "$root/DEBIAN/conffiles"

deb=$top/build/capgate_${VERSION}_${ARCH}.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "deb.sh: built $deb"
