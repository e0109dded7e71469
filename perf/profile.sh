#!/bin/bash
# Where a server's CPU goes under smtp-source's load: ringmx (or the ideal sink) on one CPU,
# smtp-source on another, `perf record` of the server over a bounded run; prints the
# samples by thread, by thread and object (kernel, ringmx, libc), and the top symbols.
#
# Usage: perf/profile.sh [persistent|cpm] [MESSAGES]
# Environment:
#   RINGMX_BIN   ringmx binary (target/release/ringmx)
#   IO           uring | epoll (uring)
#   EXTRA        TOML appended to the configuration, e.g. $'[log.w3c]\nenabled = true\n'
#   SINK=1       profile `ringmx-loadgen sink --threads 1 --io uring` instead (LOADGEN_BIN)
#   PERF_ARGS    perf record's options (-g; e.g. "--call-graph dwarf,16384 -F 1000")
#   OUT          where the run's files and perf.data go (a new temporary directory)
#   SERVER_CPUS, CLIENT_CPUS  taskset lists (0 and 1)
#   SESSIONS     smtp-source's parallel sessions (20)
# Loopback only; the run ends when smtp-source has sent MESSAGES (30,000).
set -euo pipefail
mode=${1:-cpm}
n=${2:-30000}
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${RINGMX_BIN:-$here/target/release/ringmx}
loadgen=${LOADGEN_BIN:-$here/target/release/ringmx-loadgen}
out=${OUT:-$(mktemp -d /tmp/ringmx-profile.XXXXXX)}
server_cpus=${SERVER_CPUS:-0}
client_cpus=${CLIENT_CPUS:-1}
smtp_source=$(command -v smtp-source || echo /usr/sbin/smtp-source)
mkdir -p "$out"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

if [ "${SINK:-0}" = 1 ]; then
    taskset -c "$server_cpus" "$loadgen" sink --listen "127.0.0.1:$port" --threads 1 --io uring \
        > "$out/out" 2> "$out/log" &
else
    printf 'data_dir = "%s/data"\nlocal_domains = ["example.test"]\n[[listener]]\nport = %d\nbind = ["127.0.0.1"]\n[limits]\nmax_connections_per_ip = 100000\nmax_connections = 100000\n%s' \
        "$out" "$port" "${EXTRA:-}" > "$out/ringmx.toml"
    taskset -c "$server_cpus" "$bin" serve --config "$out/ringmx.toml" --io "${IO:-uring}" > "$out/out" 2> "$out/log" &
fi
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    grep -q "127.0.0.1" "$out/out" 2> /dev/null && break
    sleep 0.1
done
args=()
[ "$mode" = persistent ] && args=(-d)
# A warm-up, then the recorded run.
sessions=${SESSIONS:-20}
taskset -c "$client_cpus" "$smtp_source" "${args[@]}" -s "$sessions" -l 1024 -m 2000 -f a@example.test -t b@example.test "127.0.0.1:$port"
# shellcheck disable=SC2086
perf record -q ${PERF_ARGS:--g} -p "$server" -o "$out/perf.data" 2> /dev/null &
recorder=$!
sleep 0.2
taskset -c "$client_cpus" "$smtp_source" "${args[@]}" -s "$sessions" -l 1024 -m "$n" -f a@example.test -t b@example.test "127.0.0.1:$port"
kill -INT "$recorder"
wait "$recorder" || true
kill "$server"
wait "$server" || true
trap - EXIT

report() { perf report -i "$out/perf.data" --no-children -g none "$@" 2> /dev/null | grep -E '^ +[0-9]' | sort -rn; }
echo "== $mode, $n messages, $sessions sessions; samples by thread ($out/perf.data)"
report --sort comm -F sample,comm
echo "== by thread and object"
report --sort comm,dso -F sample,comm,dso | head -12
echo "== top symbols"
report --sort comm,sym -F sample,comm,sym | head -30
