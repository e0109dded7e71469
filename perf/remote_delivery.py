#!/usr/bin/env python3
"""Accept → remote delivery, beside accept-only, in the same run.

For each round, fresh ringmx servers (io_uring driver, fsync on) take the same load from
Postfix's smtp-source (`-d -s 20 -m N -l 1024`):
  accept-only    recipients of an accept-all domain: spooled, nothing sent on
  accept+relay   recipients of a hosted domain whose smart host is a sink on loopback:
                 spooled, then sent on over pooled, reused connections; end to end = from
                 the first connection until the sink has received all N messages
The sink is `ringmx-loadgen sink` (and, with --postfix-sink, Postfix's smtp-sink, counted
by its own "-c" output). Rounds are interleaved; medians and the ratio are printed.

With `--alt NAME=BINARY` (repeatable) another build's accept+relay runs in the same rounds,
for old-versus-new comparisons.

Usage: perf/remote_delivery.py [--rounds 3] [--messages 20000] [--ringmx target/release/ringmx]
                               [--loadgen target/release/ringmx-loadgen] [--alt NAME=BINARY]...
Loopback only; every run is bounded by its message count and a 10-minute limit.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from common import accept_against_delivery, free_port, parse_alts

SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
HERE = os.path.dirname(__file__)


def start_sink(loadgen, tmp, n):
    out = os.path.join(tmp, f"sink-{time.time_ns()}.json")
    p = subprocess.Popen([loadgen, "sink", "--listen", "127.0.0.1:0", "--threads", "1", "--max-messages", str(n),
                          "--json", out], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    line = p.stdout.readline().decode()
    addr = line.strip().split("listening on ")[1]
    return p, addr, out


def start_ringmx(binary, tmp, smart_host):
    port = free_port()
    d = tempfile.mkdtemp(dir=tmp)
    os.makedirs(f"{d}/data/directory")
    data = {"postoffices": [{"name": "po"}], "domains": []}
    if smart_host:
        data["domains"].append({"name": "relay.example", "postoffice": "po", "smart_host": smart_host})
    with open(f"{d}/data/directory/directory.json", "w") as f:
        json.dump(data, f)
    with open(f"{d}/ringmx.toml", "w") as f:
        f.write(f'data_dir = "{d}/data"\nlocal_domains = ["example.test"]\n')
        f.write(f'[[listener]]\nport = {port}\nbind = ["127.0.0.1"]\n')
        f.write("[limits]\nmax_connections_per_ip = 100000\n")
        f.write('[delivery.remote]\ntls = "off"\nmax_per_destination = 20\n')
    p = subprocess.Popen([binary, "serve", "--config", f"{d}/ringmx.toml", "--io", "uring"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    p.stdout.readline()
    return p, port, d


def run(a, binary, tmp, relay):
    sink = addr = out = None
    if relay:
        sink, addr, out = start_sink(a.loadgen, tmp, a.messages)
    p, port, d = start_ringmx(binary, tmp, addr)
    rcpt = "u@relay.example" if relay else "u@example.test"
    t0 = time.time()
    subprocess.run([SMTP_SOURCE, "-d", "-s", "20", "-m", str(a.messages), "-l", "1024", "-f", "s@remote.example",
                    "-t", rcpt, f"127.0.0.1:{port}"], check=True, stdout=subprocess.DEVNULL, timeout=600)
    accepted = time.time()
    counts = None
    if relay:
        sink.wait(timeout=600)  # it stops by itself after N messages
    done = time.time()
    if relay:
        counts = json.load(open(out))
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=60)
    shutil.rmtree(d, ignore_errors=True)
    return a.messages / (accepted - t0), a.messages / (done - t0), counts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--ringmx", default=os.path.join(HERE, "..", "target", "release", "ringmx"))
    ap.add_argument("--loadgen", default=os.path.join(HERE, "..", "target", "release", "ringmx-loadgen"))
    ap.add_argument("--alt", action="append", default=[], metavar="NAME=BINARY")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="ringmx-remote-")
    kinds = [("accept-only", a.ringmx, False), ("accept+relay", a.ringmx, True)]
    kinds += [(f"{name} accept+relay", binary, True) for name, binary in parse_alts(a.alt)]

    def one(binary, relay):
        acc, e2e, counts = run(a, binary, tmp, relay)
        note = f"({counts['messages']} messages over {counts['connections']} connections)" if relay else ""
        return acc, e2e, note

    accept_against_delivery(a.rounds, a.messages, kinds, one)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
