#!/usr/bin/env bash
# Wake-ups of an idle ringmx, thread by thread: starts `ringmx serve` on loopback with the
# embedded defaults and a fresh data directory, waits for it to listen, counts each
# thread's context switches (voluntary + involuntary, /proc/PID/task/*/status) over
# SECONDS_IDLE seconds with no client, then stops it with SIGTERM and times the stop.
#
#   cargo build --release
#   perf/idle_wakeups.sh                     # SECONDS_IDLE=20 RINGMX_BIN=target/release/ringmx
#
# Loopback only; the run ends by itself.
set -euo pipefail

RINGMX_BIN=${RINGMX_BIN:-target/release/ringmx}
SECONDS_IDLE=${SECONDS_IDLE:-20}
[ -x "$RINGMX_BIN" ] || { echo "missing $RINGMX_BIN (cargo build --release)" >&2; exit 2; }

work=$(mktemp -d)
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkfifo "$work/out"
"$RINGMX_BIN" serve --listen "127.0.0.1:$port" --data-dir "$work/data" >"$work/out" 2>"$work/err" &
pid=$!
# The server prints "listening on …" once its spool is ready.
exec 3<"$work/out"
read -r line <&3 || { echo "ringmx did not start" >&2; cat "$work/err" >&2; exit 1; }
case $line in *"listening on"*) ;; *) echo "ringmx did not start: $line" >&2; exit 1 ;; esac
cat <&3 >/dev/null &

snapshot() {
  for t in /proc/"$pid"/task/*; do
    printf '%s %s\n' "$(tr ' ' _ <"$t/comm")" \
      "$(awk '/^(voluntary|nonvoluntary)_ctxt_switches/ { s += $2 } END { print s }' "$t/status")"
  done | awk '{ n[$1] += $2 } END { for (k in n) print k, n[k] }' | sort
}
snapshot >"$work/before"
sleep "$SECONDS_IDLE"
snapshot >"$work/after"
t0=$(date +%s%N)
kill -TERM "$pid"
wait "$pid" || true
t1=$(date +%s%N)
pid=""

echo "idle for ${SECONDS_IDLE}s, wake-ups per second by thread:"
join "$work/before" "$work/after" | awk -v s="$SECONDS_IDLE" '
  { d = ($3 - $2) / s; t += d; printf "  %-14s %6.2f\n", $1, d }
  END { printf "  %-14s %6.2f\n", "total", t }'
echo "stop (SIGTERM to exit): $(( (t1 - t0) / 1000000 )) ms"
