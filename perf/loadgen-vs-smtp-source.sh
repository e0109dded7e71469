#!/usr/bin/env bash
# ringmx-loadgen vs Postfix smtp-source: the same server, the same offered load (SESSIONS
# connections, MESSAGES messages of SIZE bytes, one recipient, as fast as the server
# answers), interleaved rounds. Prints, per client and mode, the median client CPU per
# message (user+system of the client process, from getrusage of children via `times`) and
# the median achieved msgs/s (messages / client wall time), then the ratios.
#
# Servers: Postfix smtp-sink always; ringmx too when RINGMX_BIN points at its binary.
# Modes: persistent connections (smtp-source -d) and one connection per message.
#
#   cargo build --release -p ringmx-loadgen
#   perf/loadgen-vs-smtp-source.sh                  # ROUNDS=3 MESSAGES=20000 SESSIONS=10 SIZE=1024
#   RINGMX_BIN=target/release/ringmx perf/loadgen-vs-smtp-source.sh
#   SERVER_CPUS=0 CLIENT_CPUS=1 perf/loadgen-vs-smtp-source.sh   # pinned (taskset -c), servers apart from clients
set -euo pipefail

ROUNDS=${ROUNDS:-3}
MESSAGES=${MESSAGES:-20000}
PER_MESSAGE_MESSAGES=${PER_MESSAGE_MESSAGES:-5000}
SESSIONS=${SESSIONS:-10}
SIZE=${SIZE:-1024}
LOADGEN=${LOADGEN:-target/release/ringmx-loadgen}
SMTP_SOURCE=${SMTP_SOURCE:-/usr/sbin/smtp-source}
SMTP_SINK=${SMTP_SINK:-/usr/sbin/smtp-sink}
FROM=loadgen@example.net
TO=user@example.test
# Pinning: the servers on SERVER_CPUS, the clients on CLIENT_CPUS (taskset -c LIST).
server_pin=()
client_pin=()
[ -n "${SERVER_CPUS:-}" ] && server_pin=(taskset -c "$SERVER_CPUS")
[ -n "${CLIENT_CPUS:-}" ] && client_pin=(taskset -c "$CLIENT_CPUS")

for b in "$LOADGEN" "$SMTP_SOURCE" "$SMTP_SINK"; do
  [ -x "$b" ] || { echo "missing $b (cargo build --release -p ringmx-loadgen; apt-get install postfix)" >&2; exit 2; }
done

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2
  return 1
}

servers=()
port=$(free_port)
"${server_pin[@]}" "$SMTP_SINK" -u nobody "127.0.0.1:$port" 1000 &
pids+=($!)
wait_port "$port"
servers+=("smtp-sink=127.0.0.1:$port")
if [ -n "${RINGMX_BIN:-}" ]; then
  port=$(free_port)
  "${server_pin[@]}" "$RINGMX_BIN" serve --listen "127.0.0.1:$port" --data-dir "$work/ringmx" >"$work/ringmx.log" 2>&1 &
  pids+=($!)
  wait_port "$port"
  servers+=("ringmx=127.0.0.1:$port")
fi

# Runs a client; prints "cpu_seconds wall_seconds". Fails if the client fails.
measure() {
  local t0 t1 ch
  t0=$(date +%s.%N)
  ch=$( ( "${client_pin[@]}" "$@" >"$work/client.out" 2>&1 || { echo "client failed: $*" >&2; cat "$work/client.out" >&2; exit 1; }
          times ) | sed -n 2p)
  t1=$(date +%s.%N)
  # `times` line 2: children user and system, e.g. "0m0.036s 0m0.171s".
  awk -v ch="$ch" -v t0="$t0" -v t1="$t1" 'BEGIN {
    split(ch, f, " "); cpu = 0
    for (i = 1; i <= 2; i++) { split(f[i], ms, "m"); sub("s", "", ms[2]); cpu += ms[1] * 60 + ms[2] }
    printf "%.3f %.3f\n", cpu, t1 - t0 }'
}

run_client() { # client mode addr messages
  local client=$1 mode=$2 addr=$3 n=$4
  case "$client/$mode" in
    smtp-source/persistent) measure "$SMTP_SOURCE" -s "$SESSIONS" -m "$n" -l "$SIZE" -d -f "$FROM" -t "$TO" "$addr" ;;
    smtp-source/per-message) measure "$SMTP_SOURCE" -s "$SESSIONS" -m "$n" -l "$SIZE" -f "$FROM" -t "$TO" "$addr" ;;
    loadgen/persistent) measure "$LOADGEN" run -q --target "$addr" -c "$SESSIONS" --messages "$n" --size "$SIZE" --from "$FROM" ;;
    loadgen/per-message) measure "$LOADGEN" run -q --target "$addr" -c "$SESSIONS" --messages "$n" --size "$SIZE" --from "$FROM" --messages-per-connection 1 ;;
  esac
}

results="$work/results"
: >"$results"
for round in $(seq "$ROUNDS"); do
  for s in "${servers[@]}"; do
    name=${s%%=*}
    addr=${s#*=}
    for mode in persistent per-message; do
      n=$MESSAGES
      [ "$mode" = per-message ] && n=$PER_MESSAGE_MESSAGES
      # Alternate which client goes first, so drift within a round favours neither.
      if [ $((round % 2)) -eq 1 ]; then order="smtp-source loadgen"; else order="loadgen smtp-source"; fi
      for client in $order; do
        read -r cpu wall < <(run_client "$client" "$mode" "$addr" "$n")
        awk -v s="$name" -v m="$mode" -v c="$client" -v n="$n" -v cpu="$cpu" -v wall="$wall" -v r="$round" \
          'BEGIN { printf "%s %s %s %d %.2f %.0f\n", s, m, c, r, cpu * 1e6 / n, n / wall }' >>"$results"
        tail -n 1 "$results" | awk '{ printf "round %s  %-10s %-12s %-12s %7.2f µs/msg %9.0f msg/s\n", $4, $1, $2, $3, $5, $6 }'
      done
    done
  done
done

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo
echo "medians over $ROUNDS rounds ($SESSIONS sessions, $SIZE-byte messages; $MESSAGES persistent, $PER_MESSAGE_MESSAGES per-message)"
printf "%-10s %-12s %16s %16s %14s %14s %10s %10s\n" server mode "src µs/msg" "loadgen µs/msg" "src msg/s" "loadgen msg/s" "cpu ratio" "rate ratio"
for s in "${servers[@]}"; do
  name=${s%%=*}
  for mode in persistent per-message; do
    sc=$(awk -v s="$name" -v m="$mode" '$1 == s && $2 == m && $3 == "smtp-source" { print $5 }' "$results" | median)
    lc=$(awk -v s="$name" -v m="$mode" '$1 == s && $2 == m && $3 == "loadgen" { print $5 }' "$results" | median)
    sr=$(awk -v s="$name" -v m="$mode" '$1 == s && $2 == m && $3 == "smtp-source" { print $6 }' "$results" | median)
    lr=$(awk -v s="$name" -v m="$mode" '$1 == s && $2 == m && $3 == "loadgen" { print $6 }' "$results" | median)
    awk -v n="$name" -v m="$mode" -v sc="$sc" -v lc="$lc" -v sr="$sr" -v lr="$lr" \
      'BEGIN { printf "%-10s %-12s %16.2f %16.2f %14.0f %14.0f %10.2f %10.2f\n", n, m, sc, lc, sr, lr, lc / sc, lr / sr }'
  done
done
