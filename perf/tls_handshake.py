#!/usr/bin/env python3
"""TLS handshake cost of the server, by rustls crypto provider and certificate type.

ringmx-loadgen opens a connection per message with implicit TLS (full TLS 1.3 handshake,
no resumption) and sends one message on it; the same load runs without TLS as the
baseline. Each server variant (a ringmx binary: e.g. one built with `--features aws-lc`)
runs with an ECDSA P-256 and an RSA-2048 certificate, interleaved over rounds. Printed:
medians of connections/s and server CPU µs per connection (utime+stime from /proc, from the
server's "listening on" to the end of the load), and the handshake's share: CPU with TLS
minus CPU without.

Usage: perf/tls_handshake.py --variant ring=/tmp/ringmx-ring --variant aws-lc=/tmp/ringmx-awslc
                             [--rounds 3] [--connections 2000] [--sessions 10]
                             [--loadgen target/release/ringmx-loadgen]
Loopback only; every run is bounded by its message count. Needs `openssl` for the
certificates.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from hotpath import CLK_TCK, cpu_ticks, free_port, wait_port  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def make_certs(tmp):
    certs = {}
    for name, args in (("ecdsa-p256", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]),
                       ("rsa-2048", ["-newkey", "rsa:2048"])):
        key, crt = os.path.join(tmp, f"{name}.key"), os.path.join(tmp, f"{name}.crt")
        subprocess.run(["openssl", "req", "-x509", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                        *args, "-keyout", key, "-out", crt], check=True, capture_output=True)
        certs[name] = (crt, key)
    return certs


def run(binary, loadgen, tmp, cert, connections, sessions):
    port = free_port()
    d = tempfile.mkdtemp(dir=tmp)
    cfg = os.path.join(d, "ringmx.toml")
    with open(cfg, "w") as f:
        f.write(f'data_dir = "{d}/data"\nlocal_domains = ["example.test"]\n')
        f.write(f'[[listener]]\nport = {port}\nbind = ["127.0.0.1"]\n')
        if cert:
            f.write('tls = "implicit"\n')
            f.write(f'[tls]\ncertificate = "{cert[0]}"\nprivate_key = "{cert[1]}"\n')
        f.write("[spool]\nfsync = false\nsegment_size = \"8MiB\"\n")
        f.write("[limits]\nmax_connections_per_ip = 100000\nmax_connections = 100000\n")
    p = subprocess.Popen([binary, "serve", "--config", cfg, "--io", "uring"], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    try:
        if "listening on" not in p.stdout.readline():
            raise RuntimeError("ringmx did not start")
        wait_port(port)
        c0 = cpu_ticks([p.pid])
        cmd = [loadgen, "run", "--target", f"127.0.0.1:{port}", "--connections", str(sessions),
               "--messages", str(connections), "--messages-per-connection", "1", "--size", "1024"]
        if cert:
            cmd += ["--tls", "--insecure"]
        import time
        t0 = time.time()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
        secs = time.time() - t0
        c1 = cpu_ticks([p.pid])
    finally:
        p.terminate()
        p.wait(timeout=60)
        shutil.rmtree(d, ignore_errors=True)
    return connections / secs, (c1 - c0) / CLK_TCK / connections * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", action="append", required=True, metavar="NAME=BINARY")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=2000)
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--loadgen", default=os.path.join(HERE, "..", "target", "release", "ringmx-loadgen"))
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="ringmx-tls-")
    certs = make_certs(tmp)
    variants = [v.split("=", 1) for v in a.variant]
    cases = [(vn, vb, cn) for vn, vb in variants for cn in ["plain", *certs]]
    results = {}
    for r in range(a.rounds):
        order = cases[r % len(cases):] + cases[:r % len(cases)]
        for vn, vb, cn in order:
            rate, cpu = run(vb, a.loadgen, tmp, certs.get(cn), a.connections, a.sessions)
            results.setdefault((vn, cn), []).append((rate, cpu))
            print(f"round {r + 1} {vn:<10} {cn:<11} {rate:8.0f} conn/s {cpu:8.1f} µs/conn", flush=True)
    print(f"\nmedians over {a.rounds} round(s); {a.connections} connections, one 1 KiB message each, "
          f"{a.sessions} at a time, full TLS 1.3 handshakes (no resumption)")
    print(f"{'provider':<10} {'certificate':<11} {'conn/s':>8} {'µs/conn':>8} {'handshake µs':>13}")
    for vn, _ in variants:
        base = statistics.median(c for _, c in results[(vn, "plain")])
        for cn in ["plain", *certs]:
            rate = statistics.median(x for x, _ in results[(vn, cn)])
            cpu = statistics.median(y for _, y in results[(vn, cn)])
            hs = "" if cn == "plain" else f"{cpu - base:13.1f}"
            print(f"{vn:<10} {cn:<11} {rate:8.0f} {cpu:8.1f} {hs}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
