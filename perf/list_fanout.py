#!/usr/bin/env python3
"""A post to a 10,000-member list, delivered to a sink on loopback, beside the same members
as a group (issue 13).

Each round starts fresh: `ringmx-loadgen sink` on loopback, and ringmx (io_uring, fsync on)
whose global smart host is the sink, with a directory holding
  list   big@lists.example: 10,000 members m<i>@d<i mod 200>.example (200 domains), posting
         open; the post becomes one spool record with every member as a recipient, sent one
         transaction per member, each from its own VERP reverse path
         (big-bounces+m<i>=d<j>.example@lists.example), over the pool's connections
  group  all@lists.example: the same 10,000 members; the post is forwarded as one message
         and sent with as many recipients per transaction as the sink takes
One message (about 1 KiB) is posted with SMTP; the script prints, per kind: the time from
the start of the post to its 250, from the 250 to the last delivery (ringmx's metric
ringmx_remote_deliveries_total reaching 10,000), the transactions and connections the sink
saw, and the server's CPU time. Rounds interleave the kinds; medians are printed.

Usage: perf/list_fanout.py [--rounds 3] [--members 10000] [--domains 200]
                           [--ringmx target/release/ringmx] [--loadgen target/release/ringmx-loadgen]
Loopback only; every run is bounded by its member count and a 10-minute limit.
"""

import argparse
import json
import os
import shutil
import signal
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from common import free_port  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LIMIT = 600.0


def start_sink(loadgen, tmp):
    out = os.path.join(tmp, f"sink-{time.time_ns()}.json")
    p = subprocess.Popen([loadgen, "sink", "--listen", "127.0.0.1:0", "--threads", "1", "--json", out],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    line = p.stdout.readline().decode()
    return p, line.strip().split("listening on ")[1], out


def directory(members):
    return {
        "postoffices": [{"name": "po"}],
        "domains": [{"name": "lists.example", "postoffice": "po"}],
        "groups": [{"address": "all@lists.example", "members": members}],
        "lists": [{
            "address": "big@lists.example", "posting": "anyone", "prefix": "name",
            "footer_text": "-- \nbig@lists.example: send unsubscribe to big-request@lists.example",
            "members": [{"address": a} for a in members],
        }],
    }


def start_ringmx(binary, tmp, sink, members):
    d = tempfile.mkdtemp(dir=tmp)
    os.makedirs(f"{d}/data/directory")
    with open(f"{d}/data/directory/directory.json", "w") as f:
        json.dump(directory(members), f)
    port, metrics = free_port(), free_port()
    host, sport = sink.rsplit(":", 1)
    with open(f"{d}/ringmx.toml", "w") as f:
        f.write(f'data_dir = "{d}/data"\nhostname = "mx.lists.example"\n')
        f.write(f'[[listener]]\nport = {port}\nbind = ["127.0.0.1"]\n')
        f.write(f'[metrics]\nlisten = "127.0.0.1:{metrics}"\n')
        f.write('[delivery.remote]\ntls = "off"\n')
        f.write(f'[delivery.routing.smart_host]\nhost = "{host}"\nport = {sport}\n')
        f.write("[lists]\ndmarc_dns = false\n")
    p = subprocess.Popen([binary, "serve", "--config", f"{d}/ringmx.toml", "--io", "uring"],
                         stdout=subprocess.PIPE, stderr=open(f"{d}/log", "w"), text=True)
    line = p.stdout.readline()
    if "listening on" not in line:
        raise RuntimeError(f"ringmx did not start: {line!r}")
    return p, port, metrics, d


def relayed(metrics):
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("ringmx_remote_deliveries_total"):
                return int(float(line.split()[-1]))
    return 0


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


POST = ("From: Poster <poster@elsewhere.example>\r\nTo: {to}\r\nSubject: release notes\r\n"
        "Message-ID: <{n}@elsewhere.example>\r\n\r\n" + ("The quick brown fox jumps over the lazy dog. " * 20 + "\r\n") * 1)


def one(kind, args, tmp, members):
    sink, sink_addr, sink_json = start_sink(args.loadgen, tmp)
    p, port, metrics, d = start_ringmx(args.ringmx, tmp, sink_addr, members)
    to = "big@lists.example" if kind == "list" else "all@lists.example"
    cpu0 = cpu_seconds(p.pid)
    t0 = time.monotonic()
    with smtplib.SMTP("127.0.0.1", port) as s:
        s.sendmail("poster@elsewhere.example", [to], POST.format(to=to, n=time.time_ns()))
    accepted = time.monotonic()
    n = len(members)
    while relayed(metrics) < n:
        if time.monotonic() - t0 > LIMIT:
            raise RuntimeError(f"{kind}: {relayed(metrics)} of {n} delivered after {LIMIT} s")
        time.sleep(0.02)
    done = time.monotonic()
    cpu = cpu_seconds(p.pid) - cpu0
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=60)
    sink.send_signal(signal.SIGTERM)
    sink.wait(timeout=30)
    with open(sink_json) as f:
        s = json.load(f)
    shutil.rmtree(d, ignore_errors=True)
    return {"accept_s": accepted - t0, "deliver_s": done - accepted, "cpu_s": cpu,
            "transactions": s.get("messages"), "recipients": s.get("recipients"), "connections": s.get("connections")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--members", type=int, default=10000)
    ap.add_argument("--domains", type=int, default=200)
    ap.add_argument("--ringmx", default=os.path.join(ROOT, "target/release/ringmx"))
    ap.add_argument("--loadgen", default=os.path.join(ROOT, "target/release/ringmx-loadgen"))
    args = ap.parse_args()
    members = [f"m{i}@d{i % args.domains}.example" for i in range(args.members)]
    tmp = tempfile.mkdtemp(prefix="ringmx-list-fanout-")
    results = {"list": [], "group": []}
    try:
        for r in range(args.rounds):
            for kind in (["list", "group"] if r % 2 == 0 else ["group", "list"]):
                res = one(kind, args, tmp, members)
                results[kind].append(res)
                print(f"round {r + 1} {kind:5}: 250 after {res['accept_s'] * 1000:.0f} ms, last delivery "
                      f"{res['deliver_s']:.2f} s after the 250, {res['transactions']} transaction(s), "
                      f"{res['recipients']} recipient(s), {res['connections']} connection(s), "
                      f"server CPU {res['cpu_s']:.2f} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nmedians over {args.rounds} round(s), {args.members} members on {args.domains} domains:")
    for kind, rs in results.items():
        med = lambda k: statistics.median(x[k] for x in rs)  # noqa: E731
        print(f"  {kind:5}: post to 250 {med('accept_s') * 1000:.0f} ms; 250 to last delivery "
              f"{med('deliver_s'):.2f} s ({args.members / med('deliver_s'):.0f} recipients/s); "
              f"{med('transactions'):.0f} transactions, {med('connections'):.0f} connections; "
              f"server CPU {med('cpu_s'):.2f} s")
    lst, grp = (statistics.median(x["deliver_s"] for x in results[k]) for k in ("list", "group"))
    print(f"  list / group delivery time: {lst / grp:.2f}x (VERP: one transaction per member)")


if __name__ == "__main__":
    main()
