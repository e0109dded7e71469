#!/usr/bin/env python3
"""Server memory per idle connection, and per connection that pipelines without reading.

Starts ringmx (each driver in turn), opens N connections that read the greeting, say
EHLO and then stay idle, and reports the growth of the server's resident set size
(VmRSS from /proc) divided by N. Then, on a fresh server, M connections each send
`EHLO x` as fast as the server takes it and never read a reply (the hostile client of
back-pressure): it reports the peak (VmHWM) and final RSS growth divided by M, to set
against the per-connection budget in docs/operations.md. Loopback only; the connections
are closed at the end.

Usage: perf/idle_memory.py [--connections 5000] [--flooders 1000] [--ringmx target/release/ringmx]
"""

import argparse
import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time

from common import free_port, rss_kib


def start(binary, io, n):
    port = free_port()
    d = tempfile.mkdtemp(prefix="ringmx-idle-")
    cfg = os.path.join(d, "ringmx.toml")
    with open(cfg, "w") as f:
        f.write(f'data_dir = "{d}/data"\n[[listener]]\nport = {port}\nbind = ["127.0.0.1"]\n')
        f.write(f"[limits]\nmax_connections = {n + 100}\nmax_connections_per_ip = {n + 100}\n")
        # No stress time-outs: the connections must stay for the measurement.
        f.write("stress_threshold = 0\n")
    p = subprocess.Popen([binary, "serve", "--config", cfg, "--io", io], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    p.stdout.readline()  # "listening on ..."
    return p, port


def warm_baseline(p, port):
    """One full conversation, so that lazily built state exists, then the server's RSS."""
    w = socket.create_connection(("127.0.0.1", port))
    w.recv(512)
    w.sendall(b"EHLO warm\r\n")
    w.recv(4096)
    w.close()
    time.sleep(0.3)
    return rss_kib(p.pid)


def flood(binary, io, n):
    """M connections that pipeline EHLO and never read: (base, peak, after) in KiB."""
    p, port = start(binary, io, n)
    base = warm_baseline(p, port)
    chunk = b"EHLO x\r\n" * 8192
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        s.connect(("127.0.0.1", port))
        s.setblocking(False)
        socks.append(s)
    # Send until every connection is blocked: the server stopped reading each of them.
    sent = 0
    open_ = set(socks)
    deadline = time.time() + 120
    stalled_rounds = 0
    while open_ and time.time() < deadline and stalled_rounds < 20:
        progress = 0
        for s in list(open_):
            try:
                k = s.send(chunk)
                progress += k
            except BlockingIOError:
                pass
            except OSError:
                open_.discard(s)
        sent += progress
        stalled_rounds = stalled_rounds + 1 if progress == 0 else 0
        if progress == 0:
            time.sleep(0.05)
    peak = rss_kib(p.pid, "VmHWM:")
    after = rss_kib(p.pid)
    for s in socks:
        s.close()
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=60)
    return base, peak, after, sent


def measure(binary, io, n):
    p, port = start(binary, io, n)
    base = warm_baseline(p, port)
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        socks.append(s)
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    # Read every greeting, then EHLO on each, then read the EHLO replies.
    pending = set(socks)
    deadline = time.time() + 60
    while pending and time.time() < deadline:
        for key, _ in sel.select(timeout=1):
            try:
                if key.fileobj.recv(4096):
                    pending.discard(key.fileobj)
            except BlockingIOError:
                pass
    for s in socks:
        s.sendall(b"EHLO idle.example\r\n")
    pending = set(socks)
    while pending and time.time() < deadline:
        for key, _ in sel.select(timeout=1):
            try:
                if key.fileobj.recv(4096):
                    pending.discard(key.fileobj)
            except BlockingIOError:
                pass
    time.sleep(0.5)
    after = rss_kib(p.pid)
    for s in socks:
        s.close()
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=30)
    return base, after


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=5000)
    ap.add_argument("--flooders", type=int, default=1000)
    ap.add_argument("--ringmx", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "ringmx"))
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max(a.connections, a.flooders) * 2 + 200
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(need, soft), max(need, hard)))
    for io in ("uring", "epoll"):
        base, after = measure(a.ringmx, io, a.connections)
        per = (after - base) * 1024 / a.connections
        print(f"{io:6} {a.connections} idle connections: RSS {base} KiB -> {after} KiB, "
              f"{per / 1024:.2f} KiB per connection")
    for io in ("uring", "epoll"):
        base, peak, after, sent = flood(a.ringmx, io, a.flooders)
        print(f"{io:6} {a.flooders} connections pipelining without reading ({sent / 2**20:.0f} MiB taken): "
              f"RSS {base} KiB -> peak {peak} KiB, {(peak - base) / a.flooders:.1f} KiB per connection; "
              f"{after} KiB while they wait")


if __name__ == "__main__":
    sys.exit(main())
