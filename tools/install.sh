#!/bin/sh
# tools/install.sh: installs capgate (`make install` calls it).
#
#     DESTDIR=/tmp/pkg PREFIX=/usr BINARY=build/capgate sh tools/install.sh
#
#   DESTDIR   staging root, prepended to every path (default: none)
#   PREFIX    installation prefix (default /usr/local)
#   BINARY    the built daemon (default build/capgate)
#
# What goes where:
#   $PREFIX/bin/capgate                         0755
#   $PREFIX/share/man/man8/capgate.8.gz         0644 (gzip -9n: reproducible)
#   $PREFIX/share/man/man5/capgate.yaml.5.gz    0644
#   /etc/capgate/capgate.yaml                   0640; an existing one is kept
#                                               and the new one is installed
#                                               beside it as capgate.yaml.new
#   $PREFIX/lib/systemd/system/capgate.service  0644; ExecStart= points at
#                                               $PREFIX/bin/capgate
#   $PREFIX/lib/sysusers.d/capgate.conf         0644 (the capgate user)
#   $PREFIX/lib/tmpfiles.d/capgate.conf         0644 (owners and modes of
#                                               /etc/capgate)
#
# The installed configuration names the key as an operator sees it
# (/etc/capgate/user.key), so `capgate -t -c /etc/capgate/capgate.yaml`
# works as root; the service reads systemd's private copy of the same file
# (LoadCredential=, $CREDENTIALS_DIRECTORY/user.key) instead.  The key itself
# is never created or touched here.
set -eu

DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
BINARY=${BINARY:-build/capgate}

# The unit's path before rewriting, and the key the example config names.
UNIT_BIN=/usr/local/bin/capgate
KEY=/etc/capgate/user.key

die() {
    printf 'install.sh: %s\n' "$*" >&2
    exit 1
}

top=$(cd "$(dirname "$0")/.." && pwd)

case $PREFIX in
    /*) ;;
    *) die "PREFIX must be an absolute path, got '$PREFIX'" ;;
esac
# Relative to the caller's directory, else to the source tree.
if [ ! -f "$BINARY" ] && [ -f "$top/$BINARY" ]; then
    BINARY=$top/$BINARY
fi
[ -f "$BINARY" ] && [ -x "$BINARY" ] || die "no executable $BINARY (run make first)"
for f in docs/capgate.8 docs/capgate.yaml.5 conf/capgate.yaml systemd/capgate.service \
         systemd/capgate.sysusers systemd/capgate.tmpfiles; do
    [ -f "$top/$f" ] || die "missing $top/$f"
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/capgate-install.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
trap 'exit 1' HUP INT TERM

# For sed replacements: escape the characters special there (# is our
# delimiter).
sed_escape() {
    printf '%s\n' "$1" | sed 's/[#&\\]/\\&/g'
}

# ---- the daemon ----------------------------------------------------------
install -D -m 0755 "$BINARY" "$DESTDIR$PREFIX/bin/capgate"

# ---- manual pages --------------------------------------------------------
# -n: no name and no time stamp in the header, so the output is reproducible.
gzip -9n -c "$top/docs/capgate.8" > "$tmp/capgate.8.gz"
gzip -9n -c "$top/docs/capgate.yaml.5" > "$tmp/capgate.yaml.5.gz"
install -D -m 0644 "$tmp/capgate.8.gz" "$DESTDIR$PREFIX/share/man/man8/capgate.8.gz"
install -D -m 0644 "$tmp/capgate.yaml.5.gz" "$DESTDIR$PREFIX/share/man/man5/capgate.yaml.5.gz"

# ---- configuration -------------------------------------------------------
cp "$top/conf/capgate.yaml" "$tmp/capgate.yaml"
grep -q "^[[:space:]]*key_file:[[:space:]]*\"$KEY\"" "$tmp/capgate.yaml" ||
    die "conf/capgate.yaml's privacy.key_file is not $KEY, which the unit's LoadCredential= reads"
confdir=$DESTDIR/etc/capgate
if [ ! -d "$confdir" ]; then
    install -d -m 0750 "$confdir"
fi
if [ -e "$confdir/capgate.yaml" ]; then
    # Never overwrite a configuration someone may have edited.
    install -m 0640 "$tmp/capgate.yaml" "$confdir/capgate.yaml.new"
    conf_note="kept $confdir/capgate.yaml; the new example is $confdir/capgate.yaml.new"
else
    install -m 0640 "$tmp/capgate.yaml" "$confdir/capgate.yaml"
    conf_note="installed $confdir/capgate.yaml"
fi
# On a live system whose capgate group exists already, let the service read
# it now; otherwise capgate.tmpfiles sets the group at boot.
if [ -z "$DESTDIR" ] && [ "$(id -u)" -eq 0 ] && getent group capgate >/dev/null 2>&1; then
    chgrp capgate "$confdir" "$confdir/capgate.yaml"
    [ ! -e "$confdir/capgate.yaml.new" ] || chgrp capgate "$confdir/capgate.yaml.new"
fi

# ---- systemd -------------------------------------------------------------
sed "s#$(sed_escape "$UNIT_BIN")#$(sed_escape "$PREFIX/bin/capgate")#g" \
    "$top/systemd/capgate.service" > "$tmp/capgate.service"
grep -q "^ExecStart=$PREFIX/bin/capgate " "$tmp/capgate.service" ||
    die "could not point ExecStart= at $PREFIX/bin/capgate"
install -D -m 0644 "$tmp/capgate.service" "$DESTDIR$PREFIX/lib/systemd/system/capgate.service"
install -D -m 0644 "$top/systemd/capgate.sysusers" "$DESTDIR$PREFIX/lib/sysusers.d/capgate.conf"
install -D -m 0644 "$top/systemd/capgate.tmpfiles" "$DESTDIR$PREFIX/lib/tmpfiles.d/capgate.conf"

printf 'install.sh: capgate installed under %s%s; %s\n' "$DESTDIR" "$PREFIX" "$conf_note"
if [ -z "$DESTDIR" ]; then
    cat <<EOF
next steps (as root):
  systemd-sysusers capgate.conf && systemd-tmpfiles --create capgate.conf
  [ -s /etc/capgate/user.key ] || (umask 077; head -c 32 /dev/urandom > /etc/capgate/user.key)
  systemctl daemon-reload && systemctl enable --now capgate
EOF
fi
