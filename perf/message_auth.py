#!/usr/bin/env python3
"""Message authentication on the hot path: SPF + DKIM + DMARC (+ ARC) on beside off.

ringmx-loadgen replays one signed message (RFC 8463 Appendix A.3: an ed25519-sha256 and an
rsa-sha256 signature, tests/golden/rfc8463-a3.eml) from joe@football.example.com, in
interleaved rounds, to two ringmx servers (io_uring, fsync):
  ringmx-off   no message authentication
  ringmx-auth  [spf] enabled, [dmarc] enabled (DKIM verified, ARC checked): every message
               passes SPF (ip4:127.0.0.1), both signatures and DMARC (p=reject); the
               verification threads as configured by default (one per two cores)
  ringmx-auth-2t  the same with [dkim] threads = 2 (two verification workers)
The DNS answers come from a small authoritative server of this script on loopback (UDP);
the resolvers of ringmx's SPF and DKIM threads cache them (hickory's cache), so after the
first message every check is answered from memory: the cost measured is the checks.

It prints msgs/s and server CPU µs per message (utime+stime from /proc, the server's
threads included: the SPF and DKIM threads are ringmx's own), medians and paired per-round
ratios. Target (issue 14): auth on ≥ 0.8× the msgs/s of off.

Usage: perf/message_auth.py [--rounds 3] [--messages 20000] [--connections 20]
                            [--ringmx target/release/ringmx]
                            [--loadgen target/release/ringmx-loadgen]
Loopback only; every run is bounded by its message count.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(__file__))
from hotpath import Ringmx  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

ED25519_KEY = "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
RSA_KEY = ("v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDkHlOQoBTzWRiGs5V6NpP3idY6Wk08a5qhdR6wy5bdOKb2"
           "jLQiY/J16JYi0Qvx/byYzCNb3W91y3FutACDfzwQ/BC/e/8uBsCR+yz1Lxj+PL6lHvqMKrM3rG4hstT5QjvHO9PzoxZyVYLzBfO2"
           "EeC3Ip3G+2kryOTIKT+l/K4w3QIDAQAB")
TXT = {
    "football.example.com": "v=spf1 ip4:127.0.0.1 -all",
    "brisbane._domainkey.football.example.com": ED25519_KEY,
    "test._domainkey.football.example.com": RSA_KEY,
    "_dmarc.football.example.com": "v=DMARC1; p=reject",
}


def dns_server():
    """An authoritative UDP server on loopback: TXT answers for `TXT`, NXDOMAIN for the rest
    (and an empty answer for other types of a known name). Returns its port."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))

    def serve():
        while True:
            q, peer = s.recvfrom(4096)
            if len(q) < 12:
                continue
            qid, _flags, qd = struct.unpack(">HHH", q[:6])
            pos, labels = 12, []
            while pos < len(q) and q[pos]:
                n = q[pos]
                labels.append(q[pos + 1:pos + 1 + n].decode("ascii", "replace").lower())
                pos += 1 + n
            pos += 1
            qtype = struct.unpack(">H", q[pos:pos + 2])[0]
            question = q[12:pos + 4]
            name = ".".join(labels)
            answers = []
            if name in TXT and qtype == 16:
                data = TXT[name].encode()
                rdata = b"".join(bytes([len(data[i:i + 255])]) + data[i:i + 255] for i in range(0, len(data), 255))
                answers.append(b"\xc0\x0c" + struct.pack(">HHIH", 16, 1, 300, len(rdata)) + rdata)
            rcode = 0 if name in TXT else 3
            flags = 0x8400 | rcode  # response, authoritative
            head = struct.pack(">HHHHHH", qid, flags, qd, len(answers), 0, 0)
            s.sendto(head + question + b"".join(answers), peer)

    threading.Thread(target=serve, daemon=True).start()
    return s.getsockname()[1]


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--connections", type=int, default=20)
    ap.add_argument("--ringmx", default=os.path.join(ROOT, "target", "release", "ringmx"))
    ap.add_argument("--loadgen", default=os.path.join(ROOT, "target", "release", "ringmx-loadgen"))
    a = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="ringmx-perf-auth-")
    eml = os.path.join(tmp, "eml")
    os.makedirs(eml)
    with open(os.path.join(ROOT, "tests", "golden", "rfc8463-a3.eml")) as f:
        text = f.read()
    with open(os.path.join(eml, "signed.eml"), "w", newline="") as f:
        f.write(text.replace("\n", "\r\n"))
    dns = dns_server()
    auth = f'[dns]\nservers = ["127.0.0.1:{dns}"]\n[spf]\nenabled = true\n[dmarc]\nenabled = true\n'
    variants = {
        "ringmx-off": "",
        "ringmx-auth": auth,
        "ringmx-auth-2t": auth + "[dkim]\nthreads = 2\n",
    }
    ticks = os.sysconf("SC_CLK_TCK")
    results = {n: [] for n in variants}
    for r in range(a.rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            srv = Ringmx(a.ringmx, "uring", True, tmp, variants[name])
            out = os.path.join(tmp, "run.json")
            before = cpu_ticks(srv.p.pid)
            subprocess.run([a.loadgen, "run", "--target", f"127.0.0.1:{srv.port}", "-n", str(a.messages),
                            "-c", str(a.connections), "--eml-dir", eml, "--from", "joe@football.example.com",
                            "--json", out, "--quiet"], check=True, stdout=subprocess.DEVNULL)
            cpu = (cpu_ticks(srv.p.pid) - before) / ticks
            srv.stop()
            with open(out) as f:
                rep = json.load(f)
            ok = rep["messages"]["ok"]
            if ok != a.messages:
                raise SystemExit(f"{name}: {ok} of {a.messages} accepted: {rep['codes']}")
            rate = rep["throughput"]["msgs_per_s"]
            results[name].append((rate, cpu * 1e6 / ok))
            print(f"round {r + 1} {name:14} {rate:8.0f} msg/s  {cpu * 1e6 / ok:7.1f} µs/msg", flush=True)
    print(f"\nmedians over {a.rounds} round(s); {a.messages} messages, {a.connections} connections, "
          f"the RFC 8463 A.3 message ({len(text)} bytes)")
    for name, v in results.items():
        print(f"{name:14} {statistics.median(x[0] for x in v):8.0f} msg/s  "
              f"{statistics.median(x[1] for x in v):7.1f} µs/msg")
    off = results["ringmx-off"]
    for name in ("ringmx-auth", "ringmx-auth-2t"):
        on = results[name]
        rate = statistics.median(x[0] / y[0] for x, y in zip(on, off))
        cpu = statistics.median(x[1] / y[1] for x, y in zip(on, off))
        print(f"paired per round, {name[7:]} ÷ off: msg/s {rate:.2f}, CPU/msg {cpu:.2f}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
