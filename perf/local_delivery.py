#!/usr/bin/env python3
"""Accept + Maildir delivery, beside accept-only, in the same run.

For each round, two fresh ringmx servers (io_uring driver, fsync on) take the same load
from Postfix's smtp-source (`-d -s 20 -m N -l 1024`):
  accept-only   recipients of an accept-all domain: spooled, nothing delivered
  accept+local  recipients of a directory mailbox: spooled, then delivered into its
                Maildir (file fsync, rename, directory fsync) and marked
The figure for accept+local is end to end: from the first connection until the last
message is in the Maildir (`new/` holds N files). Rounds are interleaved; medians and the
ratio are printed.

With `--alt NAME=BINARY` (repeatable) another build's accept+local runs in the same rounds,
for old-versus-new comparisons.

Usage: perf/local_delivery.py [--rounds 3] [--messages 20000] [--ringmx target/release/ringmx]
                              [--alt NAME=BINARY]...
Loopback only; every run is bounded by its message count (and a 10-minute time limit).
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


def start(binary, tmp, with_mailbox):
    port = free_port()
    d = tempfile.mkdtemp(dir=tmp)
    os.makedirs(f"{d}/data/directory")
    if with_mailbox:
        data = {
            "postoffices": [{"name": "po"}],
            "domains": [{"name": "example.net", "postoffice": "po"}],
            "mailboxes": [{"postoffice": "po", "name": "u", "addresses": ["u@example.net"]}],
        }
        with open(f"{d}/data/directory/directory.json", "w") as f:
            json.dump(data, f)
    with open(f"{d}/ringmx.toml", "w") as f:
        f.write(f'data_dir = "{d}/data"\nlocal_domains = ["example.test"]\n')
        f.write(f'[[listener]]\nport = {port}\nbind = ["127.0.0.1"]\n')
        f.write("[limits]\nmax_connections_per_ip = 100000\n")
    p = subprocess.Popen([binary, "serve", "--config", f"{d}/ringmx.toml", "--io", "uring"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    p.stdout.readline()
    return p, port, d


def count_new(d):
    try:
        return len(os.listdir(f"{d}/data/mailboxes/po/u/Maildir/new"))
    except FileNotFoundError:
        return 0


def run(binary, tmp, n, local):
    p, port, d = start(binary, tmp, local)
    rcpt = "u@example.net" if local else "u@example.test"
    t0 = time.time()
    subprocess.run([SMTP_SOURCE, "-d", "-s", "20", "-m", str(n), "-l", "1024", "-f", "s@remote.example",
                    "-t", rcpt, f"127.0.0.1:{port}"], check=True, stdout=subprocess.DEVNULL, timeout=600)
    accepted = time.time()
    if local:
        while count_new(d) < n and time.time() - t0 < 600:
            time.sleep(0.01)
    done = time.time()
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=60)
    delivered = count_new(d)
    shutil.rmtree(d, ignore_errors=True)
    return n / (accepted - t0), n / (done - t0), delivered


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--ringmx", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "ringmx"))
    ap.add_argument("--alt", action="append", default=[], metavar="NAME=BINARY")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="ringmx-local-")
    kinds = [("accept-only", a.ringmx, False), ("accept+local", a.ringmx, True)]
    kinds += [(f"{name} accept+local", binary, True) for name, binary in parse_alts(a.alt)]

    def one(binary, local):
        acc, e2e, delivered = run(binary, tmp, a.messages, local)
        return acc, e2e, f"({delivered} files)"

    accept_against_delivery(a.rounds, a.messages, kinds, one)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
