#!/usr/bin/env python3
"""Memory and time with a large queue: what a backlog during a downstream outage costs.

Fills a fresh spool with N messages of 1 KiB that stay queued (their smart host refuses
every connection, retries are an hour apart), stops the server, then measures:
- the server restarted on that spool: time from start to `listening on`, and its RSS once
  every message is back in memory (VmRSS from /proc), minus an empty server's;
- `ringmx queue list --json` and `ringmx queue show ID` on the stopped server: wall time and
  peak RSS.
Prints bytes per queued message. Loopback only; everything it starts is stopped at the end,
and its spool removed.

Usage: perf/queue_memory.py [--messages 200000] [--ringmx target/release/ringmx]
                            [--loadgen target/release/ringmx-loadgen] [--keep]
"""

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from common import free_port, held_queue_config as write_config, rss_kib


def start(binary, cfg):
    t0 = time.monotonic()
    p = subprocess.Popen([binary, "serve", "--config", cfg], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    line = p.stdout.readline().decode()
    assert line.startswith("listening on"), line
    return p, time.monotonic() - t0


def stop(p):
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=120)


def timed(cmd):
    """Runs `cmd`; returns (seconds, peak RSS KiB, stdout). The peak is measured by GNU time
    (`/usr/bin/time`, Debian's `time` package), whose own small process forks the command:
    forking from this script would count the script's memory (the parsed queue listings)
    in the child's peak, since Linux keeps the pre-exec high-water mark."""
    out_path = os.path.join(tempfile.gettempdir(), "queue_memory.out")
    rss_path = os.path.join(tempfile.gettempdir(), "queue_memory.rss")
    gnu_time = "/usr/bin/time"
    if not os.path.exists(gnu_time):
        raise SystemExit("perf/queue_memory.py needs GNU time (apt-get install time)")
    t0 = time.monotonic()
    with open(out_path, "w") as out:
        subprocess.run([gnu_time, "-f", "%M", "-o", rss_path] + cmd, stdout=out, check=True)
    secs = time.monotonic() - t0
    with open(out_path) as f:
        out = f.read()
    with open(rss_path) as f:
        peak = int(f.read().split()[-1])
    return secs, peak, out


def main():
    ap = argparse.ArgumentParser()
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release")
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--keep", action="store_true", help="leave the spool (its path is printed) for more runs")
    ap.add_argument("--ringmx", default=os.path.join(here, "ringmx"))
    ap.add_argument("--loadgen", default=os.path.join(here, "ringmx-loadgen"))
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    d = tempfile.mkdtemp(prefix="ringmx-queue-")
    port, dead = free_port(), free_port()
    cfg = write_config(d, port, dead)

    # An empty server, for the baseline.
    p, _ = start(a.ringmx, cfg)
    time.sleep(1)
    empty = rss_kib(p.pid)
    # Fill: N messages of 1 KiB for a domain relayed to the dead smart host.
    subprocess.run([a.loadgen, "run", "--target", f"127.0.0.1:{port}", "-n", str(a.messages), "-c", "8",
                    "--size", "1k", "--rcpt-domain", "held.example"], check=True, stdout=subprocess.DEVNULL)
    # Every message is tried once and deferred: wait until the queue says so.
    deadline = time.monotonic() + 3600
    while time.monotonic() < deadline:
        _, _, out = timed([a.ringmx, "queue", "list", "--json", "--config", cfg])
        q = [json.loads(l) for l in out.splitlines()]
        if len(q) == a.messages and all(m["status"] == "deferred" for m in q):
            break
        time.sleep(5)
    stop(p)

    # Restart on the full spool.
    p, startup = start(a.ringmx, cfg)
    time.sleep(5)
    full = rss_kib(p.pid)
    stop(p)
    list_s, list_kib, out = timed([a.ringmx, "queue", "list", "--json", "--config", cfg])
    some_id = json.loads(out.splitlines()[len(out.splitlines()) // 2])["id"]
    # The first run after the stop pays for cold caches; the median of three is the usual cost.
    shows = [timed([a.ringmx, "queue", "show", some_id, "--config", cfg]) for _ in range(3)]
    show_first = shows[0][0]
    show_s, show_kib, _ = sorted(shows, key=lambda r: r[0])[1]
    n = a.messages
    print(f"{n} queued messages of 1 KiB")
    print(f"server: start to 'listening on' {startup:.2f} s; RSS empty {empty} KiB, with the queue {full} KiB: "
          f"{(full - empty) * 1024 / n:.0f} bytes per queued message")
    print(f"queue list --json (server stopped): {list_s:.2f} s, peak RSS {list_kib} KiB")
    print(f"queue show ID (server stopped): {show_s * 1000:.0f} ms (median of 3; first {show_first * 1000:.0f} ms), "
          f"peak RSS {show_kib} KiB")
    if a.keep:
        print(f"spool kept in {d} (ringmx serve --config {cfg})")
    else:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
