#!/usr/bin/env python3
"""The discard sinks side by side in one run: how close each gets to the machine's limit.

Postfix's smtp-source drives, in interleaved rounds (the order rotates every round), each of:
  sink-uring   ringmx-loadgen sink --io uring
  sink-epoll   ringmx-loadgen sink --io epoll
  smtp-sink    Postfix's smtp-sink (the reference)
in two modes: persistent connections (`smtp-source -d`) and a connection per message. Each
run gets a fresh server. It prints medians of msgs/s (messages / smtp-source's wall time)
and server CPU µs per message (utime+stime of the server process from /proc/PID/stat, all
threads, over the run), and the ratios to smtp-sink. smtp-source costs about as much CPU
per message as the servers, so on 2 cores it often sets msgs/s: read the CPU column.
`--client loadgen` drives them with `ringmx-loadgen run` instead (PIPELINING, the next
message's commands sent with the previous content; one client thread): more commands per
loop turn.

Usage: perf/sink.py [--rounds 5] [--messages 20000] [--cpm-messages 10000]
                    [--sessions 10] [--size 1024] [--threads 1] [--client smtp-source|loadgen]
                    [--loadgen target/release/ringmx-loadgen] [--only NAME,...]
Loopback only; every run is bounded by its message count.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

from hotpath import CLK_TCK, SmtpSink, cpu_ticks, run_source


class LoadgenSink:
    def __init__(self, binary, io, threads):
        self.p = subprocess.Popen(
            [binary, "sink", "--listen", "127.0.0.1:0", "--threads", str(threads), "--io", io],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.p.stdout.readline()
        if not line.startswith("listening on "):
            self.p.kill()
            raise RuntimeError(f"{binary} sink --io {io} did not start: {line!r} {self.p.stderr.read()}")
        self.port = int(line.strip().rsplit(":", 1)[1])
        self.driver = self.p.stderr.readline().strip()

    def pids(self):
        return [self.p.pid]

    def stop(self):
        self.p.terminate()
        out, _ = self.p.communicate(timeout=30)
        return out


def run_loadgen(binary, port, n, sessions, size, persistent):
    cmd = [binary, "run", "-q", "--target", f"127.0.0.1:{port}", "--threads", "1", "-c", str(sessions),
           "--messages", str(n), "--size", str(size)]
    if not persistent:
        cmd += ["--messages-per-connection", "1"]
    t0 = time.time()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    return time.time() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--cpm-messages", type=int, default=10000)
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--client", choices=["smtp-source", "loadgen"], default="smtp-source")
    ap.add_argument("--loadgen",
                    default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "ringmx-loadgen"))
    ap.add_argument("--only", default="")
    a = ap.parse_args()

    makers = {
        "sink-uring": lambda: LoadgenSink(a.loadgen, "uring", a.threads),
        "sink-epoll": lambda: LoadgenSink(a.loadgen, "epoll", a.threads),
        "smtp-sink": lambda: SmtpSink(None),
    }
    names = [n for n in makers if not a.only or n in a.only.split(",")]
    results = {}  # (name, mode) -> list of (msgs/s, cpu µs/msg)
    for r in range(a.rounds):
        for mode in ("persistent", "cpm"):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                n = a.messages if mode == "persistent" else a.cpm_messages
                srv = makers[name]()
                if r == 0 and mode == "persistent" and hasattr(srv, "driver"):
                    print(f"{name}: {srv.driver}", flush=True)
                try:
                    c0 = cpu_ticks(srv.pids())
                    if a.client == "loadgen":
                        secs = run_loadgen(a.loadgen, srv.port, n, a.sessions, a.size, mode == "persistent")
                    else:
                        secs = run_source(srv.port, n, a.sessions, a.size, mode == "persistent")
                    c1 = cpu_ticks(srv.pids())
                finally:
                    srv.stop()
                cpu_us = (c1 - c0) / CLK_TCK / n * 1e6
                results.setdefault((name, mode), []).append((n / secs, cpu_us))
                print(f"round {r + 1} {mode:10} {name:11} {n / secs:9.0f} msg/s {cpu_us:7.1f} µs/msg", flush=True)

    med = {k: (statistics.median(x for x, _ in v), statistics.median(y for _, y in v)) for k, v in results.items()}
    print()
    print(f"medians over {a.rounds} round(s); {a.client}, {a.sessions} sessions, {a.size}-byte messages; "
          f"{a.messages} msgs persistent, {a.cpm_messages} connection-per-message; sink --threads {a.threads}")
    print(f"{'server':11} {'mode':11} {'msg/s':>9} {'µs/msg':>8} {'msg/s ÷ smtp-sink':>18} {'CPU ÷ smtp-sink':>16}")
    for mode in ("persistent", "cpm"):
        ref = med.get(("smtp-sink", mode))
        for name in names:
            if (name, mode) not in med:
                continue
            rate, cpu = med[(name, mode)]
            rr = f"{rate / ref[0]:.2f}" if ref else "-"
            cr = f"{cpu / ref[1]:.2f}" if ref and ref[1] > 0 else "-"
            print(f"{name:11} {mode:11} {rate:9.0f} {cpu:8.1f} {rr:>18} {cr:>16}")
    for mode in ("persistent", "cpm"):
        u, e = med.get(("sink-uring", mode)), med.get(("sink-epoll", mode))
        if u and e and e[1] > 0:
            print(f"io_uring ÷ epoll CPU/msg, {mode}: {u[1] / e[1]:.2f}")


if __name__ == "__main__":
    sys.exit(main())
