#!/usr/bin/env python3
"""The admin API on a large queue: what listing, paging and bulk operations cost.

Fills a fresh spool with N messages of 1 KiB that stay queued (their smart host refuses
every connection, retries are an hour apart; the sender is s<i mod 7>@senders.example),
waits until every one is deferred, then, with the server running, times over the admin
socket (`curl --unix-socket`):
- GET /v1/queue?limit=1000: the first page, a page from the middle (`after`), and every
  page in turn;
- GET /v1/queue?sender=s3@…&limit=1000 (a filter selecting 1/7 of the queue), every page;
- POST /v1/queue/hold?sender=s3@… then /v1/queue/release?state=held (bulk by filter);
- `ringmx queue list --json` through the API, and on the stopped server.
Listing figures are the median of 3 runs; the bulk operations and the command line run once. Loopback only; everything it starts is stopped at the
end, and its spool removed.

Usage: perf/admin_api.py [--messages 10000] [--ringmx target/release/ringmx]
                         [--loadgen target/release/ringmx-loadgen]
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

from common import free_port, held_queue_config as write_config


def start(binary, cfg):
    p = subprocess.Popen([binary, "serve", "--config", cfg], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    line = p.stdout.readline().decode()
    assert line.startswith("listening on"), line
    return p


def stop(p):
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=120)


def api(sock, method, path):
    """One request over the admin socket: (seconds, parsed JSON answer)."""
    t0 = time.monotonic()
    out = subprocess.run(["curl", "-s", "--unix-socket", sock, "-X", method, f"http://ringmx{path}"],
                         check=True, stdout=subprocess.PIPE).stdout
    return time.monotonic() - t0, json.loads(out)


def pages(sock, query):
    """Every page of /v1/queue?QUERY&limit=1000: (seconds, messages, pages)."""
    t0 = time.monotonic()
    n, k, after = 0, 0, None
    while True:
        path = f"/v1/queue?limit=1000{'&' + query if query else ''}{'&after=' + after if after else ''}"
        _, page = api(sock, "GET", path)
        n += len(page["messages"])
        k += 1
        after = page["next"]
        if not after:
            return time.monotonic() - t0, n, k


def median3(f):
    runs = [f() for _ in range(3)]
    return sorted(runs, key=lambda r: r[0])[1]


def main():
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "target", "release")
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--ringmx", default=os.path.join(here, "ringmx"))
    ap.add_argument("--loadgen", default=os.path.join(here, "ringmx-loadgen"))
    a = ap.parse_args()
    if not shutil.which("curl"):
        raise SystemExit("perf/admin_api.py needs curl")
    d = tempfile.mkdtemp(prefix="ringmx-admin-")
    port, dead = free_port(), free_port()
    cfg = write_config(d, port, dead)
    sock = os.path.join(d, "data", "control.sock")
    p = start(a.ringmx, cfg)
    try:
        per = a.messages // 7
        for s in range(7):
            n = per + (1 if s < a.messages % 7 else 0)
            subprocess.run([a.loadgen, "run", "--target", f"127.0.0.1:{port}", "-n", str(n), "-c", "4",
                            "--size", "1k", "--from", f"s{s}@senders.example", "--rcpt-domain", "held.example"],
                           check=True, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and pages(sock, "state=deferred")[1] < a.messages:
            time.sleep(1)
        n = a.messages
        first, page = median3(lambda: api(sock, "GET", "/v1/queue?limit=1000"))
        mid = page["messages"][-1]["id"]
        for _ in range(n // 2000):
            _, pg = api(sock, "GET", f"/v1/queue?limit=1000&after={mid}")
            mid = pg["messages"][-1]["id"] if pg["messages"] else mid
        middle, _ = median3(lambda: api(sock, "GET", f"/v1/queue?limit=1000&after={mid}"))
        every = median3(lambda: pages(sock, ""))
        s3 = median3(lambda: pages(sock, "sender=s3%40senders.example"))
        hold, held = api(sock, "POST", "/v1/queue/hold?sender=s3%40senders.example")
        release, rel = api(sock, "POST", "/v1/queue/release?state=held")
        t0 = time.monotonic()
        subprocess.run([a.ringmx, "queue", "list", "--json", "--config", cfg], check=True, stdout=subprocess.DEVNULL)
        cli_online = time.monotonic() - t0
    finally:
        stop(p)
    t0 = time.monotonic()
    subprocess.run([a.ringmx, "queue", "list", "--json", "--config", cfg], check=True, stdout=subprocess.DEVNULL)
    cli_offline = time.monotonic() - t0
    shutil.rmtree(d, ignore_errors=True)
    print(f"{n} queued messages of 1 KiB; medians of 3 unless said")
    print(f"GET /v1/queue?limit=1000: first page {first * 1000:.0f} ms, a page from the middle {middle * 1000:.0f} ms")
    print(f"every page ({every[2]} of up to 1000): {every[0]:.2f} s for {every[1]} messages")
    print(f"sender filter (1/7 of the queue), every page: {s3[0]:.2f} s for {s3[1]} messages in {s3[2]} page(s)")
    print(f"POST /v1/queue/hold?sender=…: {hold * 1000:.0f} ms ({len(held['done'])} held); "
          f"POST /v1/queue/release?state=held: {release * 1000:.0f} ms ({len(rel['done'])} released)")
    print(f"ringmx queue list --json: {cli_online:.2f} s through the API, {cli_offline:.2f} s on the stopped server")


if __name__ == "__main__":
    main()
