"""Helpers the perf/ scripts share (imported as `common`: the scripts run as
`python3 perf/NAME.py`, which puts perf/ on the import path)."""

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
