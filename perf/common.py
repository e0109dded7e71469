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
