#!/usr/bin/env bash
# Builds the Debian package of ringmx with dpkg-deb (Debian's own tool):
#   docs/packaging/build-deb.sh [BINARY] [OUTDIR]
# BINARY defaults to target/release/ringmx (build it first: cargo build --release); the
# package goes to OUTDIR (default target/debian) as ringmx_<version>_<arch>.deb.
# It installs /usr/bin/ringmx, the systemd unit, /etc/ringmx/ringmx.toml (a conffile: an
# edited one survives upgrades), the documentation and a production example; its
# maintainer scripts create the system user `ringmx` and /var/lib/ringmx, and enable and
# start the unit where systemd runs.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${1:-$root/target/release/ringmx}"
out="${2:-$root/target/debian}"
[ -x "$bin" ] || { echo "build-deb.sh: $bin is not an executable (cargo build --release)" >&2; exit 2; }
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)"
arch="$(dpkg --print-architecture)"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
chmod 0755 "$stage"

install -D -m 0755 "$bin" "$stage/usr/bin/ringmx"
# The release profile keeps debug information for profiling; the package does not.
strip --strip-debug "$stage/usr/bin/ringmx"
install -D -m 0644 "$root/docs/packaging/ringmx.service" "$stage/lib/systemd/system/ringmx.service"
install -D -m 0640 "$root/docs/packaging/ringmx.toml" "$stage/etc/ringmx/ringmx.toml"
doc="$stage/usr/share/doc/ringmx"
for f in README.md docs/configuration.md docs/operations.md docs/architecture.md; do
  install -D -m 0644 "$root/$f" "$doc/$(basename "$f")"
done
install -D -m 0644 "$root/docs/packaging/ringmx.production.toml" "$doc/examples/ringmx.production.toml"
cat > "$doc/copyright" <<COPY
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: ringmx
License: Apache-2.0
COPY

mkdir -p "$stage/DEBIAN"
size="$(du -sk "$stage" | cut -f1)"
cat > "$stage/DEBIAN/control" <<CTRL
Package: ringmx
Version: $version
Architecture: $arch
Maintainer: ringmx developers <ringmx@localhost>
Installed-Size: $size
Depends: libc6, passwd
Section: mail
Priority: optional
Description: mail gateway: inbound MX and relay on io_uring
 ringmx accepts mail over SMTP at line rate, spools every accepted message
 durably, delivers it to Maildirs, an LMTP server or remote servers, retries
 what fails and sends delivery status notifications.
CTRL
echo "/etc/ringmx/ringmx.toml" > "$stage/DEBIAN/conffiles"

cat > "$stage/DEBIAN/postinst" <<'POST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  if ! getent passwd ringmx >/dev/null; then
    useradd --system --home-dir /var/lib/ringmx --no-create-home --shell /usr/sbin/nologin ringmx
  fi
  install -d -o ringmx -g ringmx -m 0750 /var/lib/ringmx
  chgrp ringmx /etc/ringmx/ringmx.toml
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable ringmx.service >/dev/null
    if systemctl is-active --quiet ringmx.service; then
      # An upgrade: the new binary takes over from the running one, nothing refused.
      systemctl kill -s SIGUSR2 --kill-whom=main ringmx.service || systemctl restart ringmx.service
    else
      systemctl start ringmx.service || echo "ringmx: the service did not start: journalctl -u ringmx" >&2
    fi
  fi
fi
exit 0
POST
cat > "$stage/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
  systemctl stop ringmx.service || true
  systemctl disable ringmx.service >/dev/null || true
fi
exit 0
PRERM
cat > "$stage/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
fi
# Mail and the queue stay on remove; purge takes them, and the user.
if [ "$1" = purge ]; then
  rm -rf /var/lib/ringmx
  if getent passwd ringmx >/dev/null; then userdel ringmx || true; fi
fi
exit 0
POSTRM
chmod 0755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/prerm" "$stage/DEBIAN/postrm"

mkdir -p "$out"
deb="$out/ringmx_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "$deb"
