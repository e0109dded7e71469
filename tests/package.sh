#!/usr/bin/env bash
# The Debian package, installed for real (tests/run.sh runs this after the suite, as root):
# build it from the binary under test, install it, check what it set up, start the service
# (with systemd when it runs; else the same steps by hand: the unit's user, its one
# capability, its ExecStartPre and ExecStart), read the SMTP banner on port 25, stop it,
# purge the package and check that it left nothing behind. Bounded: every wait has a limit.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "tests/package.sh: not root: the package is built but not installed"
  bash docs/packaging/build-deb.sh target/debug/ringmx target/debian
  exit 0
fi
fail() { echo "tests/package.sh: $*" >&2; exit 1; }
if dpkg -s ringmx >/dev/null 2>&1; then fail "a ringmx package is installed already: not touching it"; fi
deb="$(bash docs/packaging/build-deb.sh target/debug/ringmx target/debian)"
echo "tests/package.sh: installing $deb"
dpkg -i "$deb" >/dev/null
trap 'dpkg -P ringmx >/dev/null 2>&1 || true' EXIT

getent passwd ringmx >/dev/null || fail "no system user ringmx"
[ "$(stat -c %U:%a /var/lib/ringmx)" = "ringmx:750" ] || fail "/var/lib/ringmx: $(stat -c %U:%a /var/lib/ringmx)"
[ "$(stat -c %G /etc/ringmx/ringmx.toml)" = ringmx ] || fail "/etc/ringmx/ringmx.toml is not readable by the service"
[ -f /lib/systemd/system/ringmx.service ] || fail "no unit"
/usr/bin/ringmx check-config --config /etc/ringmx/ringmx.toml >/dev/null || fail "the installed configuration does not check"

banner() {
  # The greeting on 127.0.0.1:25 (called once the server said it listens).
  python3 - <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", 25), timeout=20)
s.settimeout(20)
line = s.recv(512).decode()
s.sendall(b"QUIT\r\n")
s.close()
print(line.strip())
sys.exit(0 if line.startswith("220 ") else 1)
PY
}

if [ -d /run/systemd/system ]; then
  systemctl is-active --quiet ringmx || fail "the service is not active: $(systemctl status ringmx --no-pager | tail -5)"
  banner || fail "no SMTP greeting on port 25"
  systemctl reload ringmx || fail "systemctl reload"
  systemctl stop ringmx
elif ss -ltn 2>/dev/null | grep -qE '[:.]25 '; then
  echo "tests/package.sh: port 25 is taken here: the service is not started"
else
  # As the unit runs it: its user, CAP_NET_BIND_SERVICE only, ExecStartPre, ExecStart.
  caps=(setpriv --reuid=ringmx --regid=ringmx --init-groups --inh-caps=+net_bind_service --ambient-caps=+net_bind_service)
  "${caps[@]}" /usr/bin/ringmx check-config --config /etc/ringmx/ringmx.toml >/dev/null || fail "ExecStartPre as ringmx"
  log="$(mktemp)"
  "${caps[@]}" /usr/bin/ringmx serve --config /etc/ringmx/ringmx.toml >"$log" 2>&1 &
  pid=$!
  # It says so once it accepts.
  if ! timeout 20 bash -c "tail -n +1 -f '$log' | grep -q -m1 '^listening on'" || ! greeting="$(banner)"; then
    kill -TERM "$pid" 2>/dev/null || true
    cat "$log" >&2
    fail "no SMTP greeting on port 25"
  fi
  echo "tests/package.sh: greeting: $greeting"
  # ExecReload.
  "${caps[@]}" /usr/bin/ringmx reload --config /etc/ringmx/ringmx.toml >/dev/null || fail "ExecReload as ringmx"
  kill -TERM "$pid"
  # Until it exits (at most 20 s).
  if ! timeout 20 tail --pid="$pid" -f /dev/null; then kill -KILL "$pid"; fail "did not stop on SIGTERM"; fi
  wait "$pid" || fail "exited with $?: $(tail -5 "$log")"
  rm -f "$log"
fi

dpkg -P ringmx >/dev/null
trap - EXIT
getent passwd ringmx >/dev/null && fail "purge left the user"
[ -e /var/lib/ringmx ] && fail "purge left /var/lib/ringmx"
[ -e /usr/bin/ringmx ] && fail "purge left the binary"
echo "tests/package.sh: the package installs, runs, reloads, stops and purges"
