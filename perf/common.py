"""Helpers the perf/ scripts share (imported as `common`: the scripts run as
`python3 perf/NAME.py`, which puts perf/ on the import path)."""

import os
import socket


def free_port():
    """A loopback port the kernel has just handed out (for programs that need a number)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def rss_kib(pid, field="VmRSS:"):
    """A memory field of /proc/PID/status in KiB (VmRSS, VmHWM, ...); 0 when absent."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def parse_alts(alts):
    """`--alt NAME=BINARY` options as (name, binary) pairs: the same run with another build."""
    out = []
    for a in alts:
        name, _, binary = a.partition("=")
        if not name or not binary:
            raise SystemExit(f"--alt {a!r}: expected NAME=BINARY")
        out.append((name, binary))
    return out


def rotated(items, r):
    """`items` rotated by round `r`, so that each takes every place in turn across rounds."""
    k = r % len(items)
    return items[k:] + items[:k]


def spread(values):
    """Median and range of a list of figures, as text."""
    import statistics
    return f"{statistics.median(values):.0f} (range {min(values):.0f}-{max(values):.0f})"


def accept_against_delivery(rounds, messages, kinds, run_one):
    """The rounds of perf/local_delivery.py and perf/remote_delivery.py: `kinds` are
    (label, binary, delivers) triples, the first one accept-only; `run_one(binary, delivers)`
    returns (accepted msg/s, end-to-end msg/s, a note). Kinds take every place in turn across
    rounds; prints each run, then medians with their range and the ratio to accept-only."""
    import statistics
    figures = {label: [] for label, _, _ in kinds}
    for r in range(rounds):
        for label, binary, delivers in rotated(kinds, r):
            acc, e2e, note = run_one(binary, delivers)
            if not delivers:
                figures[label].append(acc)
                print(f"round {r + 1} {label:24} {acc:8.0f} msg/s accepted", flush=True)
            else:
                figures[label].append(e2e)
                print(f"round {r + 1} {label:24} {acc:8.0f} msg/s accepted, {e2e:8.0f} msg/s delivered "
                      f"end to end {note}", flush=True)
    only = statistics.median(figures[kinds[0][0]])
    print(f"\nmedians over {rounds} round(s), smtp-source -d -s 20 -m {messages} -l 1024:")
    for label, values in figures.items():
        ratio = "" if label == kinds[0][0] else f"; ratio to accept-only {statistics.median(values) / only:.2f}"
        print(f"{label:24} {spread(values)} msg/s{ratio}")


def held_queue_config(d, port, dead_port):
    """A config in `d` whose mail for held.example stays queued: its smart host (`dead_port`)
    refuses every connection, retries are an hour apart."""
    cfg = os.path.join(d, "ringmx.toml")
    with open(cfg, "w") as f:
        f.write(f'data_dir = "{d}/data"\nlocal_domains = ["held.example"]\n')
        f.write(f'[[listener]]\nport = {port}\nbind = ["127.0.0.1"]\n')
        f.write("[limits]\nmax_connections = 10000\nmax_connections_per_ip = 10000\n")
        f.write('[delivery.retry]\nintervals = ["1h"]\n[delivery.delay_notice]\nmode = "off"\n')
        f.write(f'[delivery.routing.smart_host]\nhost = "127.0.0.1"\nport = {dead_port}\n')
        f.write('[delivery.remote]\ntls = "off"\n')
    return cfg
