#!/usr/bin/env python3
"""Hot-path throughput, side by side in one run.

Postfix's smtp-source drives, in interleaved rounds, each of:
  ringmx-uring     ringmx, io_uring driver, durable before 250 (the defaults: direct I/O)
  ringmx-epoll     ringmx, epoll driver, fsync before 250
  ringmx-nofsync   ringmx, io_uring driver, [spool] fsync = false (operator's choice)
  ringmx-fdatasync ringmx, io_uring driver, [spool] direct_io = false (buffered writes and
                   fdatasync, as before decision 007); ringmx-epoll-fdatasync the same with
                   epoll (ringmx-uring and ringmx-epoll write with direct I/O, the default)
  ringmx-nolog     ringmx, io_uring driver, the activity log off (`[log] activity = false`;
                   ringmx-uring writes it, the default); no W3C log, no metrics endpoint
  ringmx-alllogs   ringmx, io_uring driver, every log and the metrics on: the activity
                   log, the W3C log with all its fields, `[metrics] listen` (scraped
                   by nobody: the shards publish their counters all the same)
  ringmx-alllogs-shm  ringmx-alllogs with its logs on /dev/shm: the same work, but the
                   logs' writeback no longer shares the spool's disk and journal
  ringmx-rspamd    ringmx-uring with rspamd's proxy worker as a milter (`[[milter]]`); rspamd
                   starts once for the whole run and its CPU is reported on its own
  ringmx-scripts   ringmx-uring with a Lua script (`[scripts]`) whose five hooks (connect,
                   EHLO, MAIL, RCPT, DATA) do nothing: the price of calling them
  ringmx-w3c       ringmx-uring plus the W3C log (to attribute ringmx-alllogs' cost)
  ringmx-metrics   ringmx-uring plus the metrics endpoint
  ringmx-policy    ringmx, io_uring driver, with a realistic policy set: an access list of
                   10,000 entries (addresses, CIDR ranges, wildcards), EHLO blocking,
                   recipients per hour counted per client, relay rules (DNSBL and PTR
                   lookups are skipped for loopback clients, so they cost nothing here)
  smtp-sink        Postfix's smtp-sink (writes nothing: the reference)
  loadgen-sink     `ringmx-loadgen sink --threads 1 --io uring`: the ideal sink (io_uring,
                   one thread, writes nothing), the second reference
  postfix-mta      a private full Postfix MTA with a discard transport (persistent mode,
                   fewer messages: it runs at a few hundred messages per second)
in two modes: persistent connections (`smtp-source -d`) and a connection per message.
It prints medians of msgs/s and server CPU µs per message (utime+stime of the server's
processes from /proc, over the run), the whole machine's busy CPU per message minus the
client's (kernel threads such as kworkers and interrupts included: where a server's work
lands outside its own threads), ratios to smtp-sink, and ringmx's group-commit factor
(messages per fdatasync, from its exit log).

With `--shards N` every ringmx runs N ingress shards (`[runtime] ingress_cores`); with
`--cores LIST` every server (ringmx, smtp-sink, the private Postfix) runs on those CPUs and
smtp-source on `--client-cores LIST` (taskset), so that the same script measures scaling on
a machine with many cores and keeps client and server apart on a small one.

Usage: perf/hotpath.py [--rounds 3] [--messages 20000] [--cpm-messages 10000]
                       [--sessions 20] [--size 1024] [--ringmx target/release/ringmx]
                       [--no-postfix-mta] [--only NAME,...] [--alt NAME=BINARY]...
                       [--shards N] [--cores LIST --client-cores LIST] [--counts]
                       [--loadgen target/release/ringmx-loadgen]
Loopback only; every run is bounded by its message count.
"""

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from common import free_port

CLK_TCK = os.sysconf("SC_CLK_TCK")
# Set from the command line: CPUs of the servers and of the client (taskset), and the
# runtime lines every ringmx gets.
SERVER_CPUS = None
CLIENT_CPUS = None
RINGMX_RUNTIME = ""


def pinned(cmd, cpus):
    """`cmd` under `taskset -c cpus` when given."""
    return ["taskset", "-c", cpus] + cmd if cpus else cmd
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"


def wait_port(port, limit=20.0):
    t0 = time.time()
    while time.time() - t0 < limit:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def cpu_ticks(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            # utime, stime, cutime, cstime (fields 14-17 of stat; 12-15 after the name)
            total += sum(int(x) for x in fields[11:15])
        except OSError:
            pass
    return total


def machine_busy_ticks():
    """Busy CPU ticks of the whole machine (every field of /proc/stat's cpu line but idle
    and iowait): kernel threads (kworkers, io-wq workers, interrupts) included."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return sum(fields) - fields[3] - fields[4]


def client_ticks():
    """CPU ticks of this script's reaped children (smtp-source), user and system."""
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (r.ru_utime + r.ru_stime) * CLK_TCK


POLICY = None


def policy_config():
    """10,000 deny-listed entries that do not match 127.0.0.1, and the other checks."""
    global POLICY
    if POLICY is None:
        entries = [f'"10.{i // 250 % 250}.{i % 250}.{(i * 7) % 250}"' for i in range(9000)]
        entries += [f'"172.{16 + i % 16}.{i % 250}.0/24"' for i in range(900)]
        entries += [f'"192.168.{i}.*"' for i in range(100)]
        POLICY = ("[policy]\naccess_control = \"deny_listed\"\naccess_list = [" + ", ".join(entries) + "]\n"
                  "ehlo_block = [\"ylmf-pc\", \"spambot\"]\nmax_recipients_per_hour = 100000000\n"
                  "[relay]\nenabled = true\nauthenticated = true\n")
    return POLICY


class Ringmx:
    def __init__(self, binary, io, fsync, tmp, extra="", direct=None):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(dir=tmp)
        cfg = os.path.join(self.dir, "ringmx.toml")
        with open(cfg, "w") as f:
            f.write(f'data_dir = "{self.dir}/data"\nlocal_domains = ["example.test"]\n')
            f.write(f'[[listener]]\nport = {self.port}\nbind = ["127.0.0.1"]\n')
            f.write(f"[spool]\nfsync = {'true' if fsync else 'false'}\n")
            if direct is not None:
                f.write(f"direct_io = {'true' if direct else 'false'}\n")
            f.write("[limits]\nmax_connections_per_ip = 100000\nmax_connections = 100000\n")
            f.write(extra)
            f.write(RINGMX_RUNTIME)
        self.log = open(os.path.join(self.dir, "log"), "w+")
        self.p = subprocess.Popen(pinned([binary, "serve", "--config", cfg, "--io", io], SERVER_CPUS),
                                  stdout=subprocess.PIPE, stderr=self.log, text=True)
        # The socket listens before the spool is ready (a fresh spool writes its first
        # segments through): measure from "listening on", which comes once it is.
        line = self.p.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError(f"ringmx did not start: {line!r}")
        wait_port(self.port)

    def pids(self):
        return [self.p.pid]

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        self.p.wait(timeout=60)
        self.log.seek(0)
        text = self.log.read()
        m = re.search(r"spool: (\d+) record\(s\) in (\d+) batch", text)
        shutil.rmtree(self.dir, ignore_errors=True)
        return (int(m.group(1)), int(m.group(2))) if m else None


RSPAMD_CONF = os.path.join(os.path.dirname(__file__), "..", "tests", "peers", "rspamd.conf")


class Rspamd:
    """rspamd with its proxy worker in milter mode, its files in a directory of the run."""

    def __init__(self, tmp):
        self.dir = tempfile.mkdtemp(dir=tmp)
        self.proxy = free_port()
        conf = os.path.join(self.dir, "rspamd.conf")
        with open(RSPAMD_CONF) as f:
            text = f.read()
        for key, value in (("@DIR@", self.dir), ("@NORMAL@", free_port()), ("@CONTROLLER@", free_port()),
                           ("@PROXY@", self.proxy)):
            text = text.replace(key, str(value))
        with open(conf, "w") as f:
            f.write(text)
        self.p = subprocess.Popen(["rspamd", "-f", "-u", "root", "-g", "root", "-i", "-c", conf,
                                   f"--var=DBDIR={self.dir}", f"--var=RUNDIR={self.dir}", f"--var=LOGDIR={self.dir}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.proxy, limit=120.0)

    def pids(self):
        """The main process and its workers."""
        out = subprocess.run(["pgrep", "-P", str(self.p.pid)], capture_output=True, text=True).stdout
        return [self.p.pid] + [int(x) for x in out.split()]

    def stop(self):
        self.p.terminate()
        self.p.wait(timeout=30)


class SmtpSink:
    def __init__(self, tmp):
        self.port = free_port()
        self.p = subprocess.Popen(pinned([SMTP_SINK, "-u", "nobody", f"127.0.0.1:{self.port}", "1000"], SERVER_CPUS),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def pids(self):
        return [self.p.pid]

    def stop(self):
        self.p.terminate()
        self.p.wait(timeout=30)


class LoadgenSink:
    """`ringmx-loadgen sink --threads 1 --io uring`: the ideal sink (io_uring, one thread,
    writes nothing), the second reference."""

    def __init__(self, loadgen):
        self.p = subprocess.Popen(pinned([loadgen, "sink", "--listen", "127.0.0.1:0", "--threads", "1", "--io", "uring"],
                                         SERVER_CPUS), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.p.stdout.readline()
        self.port = int(line.strip().rsplit(":", 1)[1])
        wait_port(self.port)

    def pids(self):
        return [self.p.pid]

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        self.p.wait(timeout=30)


class Counts:
    """`perf stat` on the server's processes while the client runs: context switches and
    system calls (all threads), for `--counts`."""

    def __init__(self, pids):
        self.out = tempfile.NamedTemporaryFile(mode="w+", suffix=".perf")
        self.p = subprocess.Popen(["perf", "stat", "-x", ",", "-o", self.out.name, "-e",
                                   "context-switches,raw_syscalls:sys_enter", "-p", ",".join(map(str, pids))],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # The client starts once perf has its counters open (perf_event descriptors).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not self.attached():
            time.sleep(0.01)

    def attached(self):
        try:
            fds = os.listdir(f"/proc/{self.p.pid}/fd")
            return any("perf_event" in os.readlink(f"/proc/{self.p.pid}/fd/{fd}") for fd in fds)
        except OSError:
            return False

    def stop(self):
        """(context switches, system calls)."""
        self.p.send_signal(signal.SIGINT)
        self.p.wait(timeout=30)
        values = {}
        for line in open(self.out.name):
            f = line.strip().split(",")
            if len(f) > 2 and f[0].isdigit():
                values[f[2]] = int(f[0])
        return values.get("context-switches", 0), values.get("raw_syscalls:sys_enter", 0)


class PostfixMta:
    """A private Postfix instance on loopback with a discard transport (LAB.md)."""

    def __init__(self, tmp):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(dir=tmp)
        d = self.dir
        os.chmod(d, 0o755)
        for sub in ("queue", "data"):
            os.makedirs(os.path.join(d, sub))
        shutil.chown(os.path.join(d, "data"), "postfix")
        master = open("/etc/postfix/master.cf").read()
        master = re.sub(r"^smtp\s+inet.*$", f"127.0.0.1:{self.port} inet n - y - - smtpd", master, flags=re.M)
        open(os.path.join(d, "master.cf"), "w").write(master)
        open(os.path.join(d, "main.cf"), "w").write("")
        settings = [
            "compatibility_level=3.6", "inet_interfaces=127.0.0.1", "inet_protocols=ipv4",
            "mydestination=example.test", "local_recipient_maps=", "default_transport=discard:",
            "local_transport=discard:", "mynetworks=127.0.0.0/8", f"queue_directory={d}/queue",
            f"data_directory={d}/data", "myhostname=perf.example.test", "smtpd_banner=$myhostname ESMTP",
            "default_process_limit=100", f"maillog_file={d}/maillog", f"maillog_file_prefixes={d}",
        ]
        subprocess.run(["postconf", "-c", d, "-e"] + settings, check=True)
        main = "/etc/postfix/main.cf"
        text = open(main).read() if os.path.exists(main) else ""
        if d not in text:
            # The default instance must name the alternate configuration directory.
            lines = [l for l in text.splitlines() if not l.startswith("alternate_config_directories")]
            lines.append(f"alternate_config_directories = {d}")
            open(main, "w").write("\n".join(lines) + "\n")
        subprocess.run(["postfix", "-c", d, "check"], check=False, capture_output=True)
        # Postfix reports start-up errors only to a terminal or syslog (LAB.md).
        start = f"taskset -c {SERVER_CPUS} postfix -c {d} start" if SERVER_CPUS else f"postfix -c {d} start"
        r = subprocess.run(["script", "-qc", start, "/dev/null"], capture_output=True, text=True)
        try:
            wait_port(self.port)
        except RuntimeError:
            raise RuntimeError(f"private Postfix did not start: {r.stdout}")

    def pids(self):
        out = subprocess.run(["pgrep", "-f", self.dir], capture_output=True, text=True).stdout
        master = subprocess.run(["cat", f"{self.dir}/queue/pid/master.pid"], capture_output=True, text=True).stdout
        pids = {int(x) for x in out.split()}
        if master.strip():
            pids.add(int(master.strip()))
            kids = subprocess.run(["pgrep", "-P", master.strip()], capture_output=True, text=True).stdout
            pids |= {int(x) for x in kids.split()}
        return sorted(pids)

    def stop(self):
        subprocess.run(["postfix", "-c", self.dir, "stop"], capture_output=True)
        time.sleep(0.5)
        shutil.rmtree(self.dir, ignore_errors=True)


def run_source(port, n, sessions, size, persistent):
    cmd = [SMTP_SOURCE, "-s", str(sessions), "-m", str(n), "-l", str(size),
           "-f", "sender@remote.example", "-t", "rcpt@example.test", f"127.0.0.1:{port}"]
    if persistent:
        cmd.insert(1, "-d")
    t0 = time.time()
    subprocess.run(pinned(cmd, CLIENT_CPUS), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=600)
    return time.time() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--cpm-messages", type=int, default=10000)
    ap.add_argument("--mta-messages", type=int, default=3000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--ringmx", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "ringmx"))
    ap.add_argument("--no-postfix-mta", action="store_true")
    ap.add_argument("--only", default="")
    ap.add_argument("--alt", action="append", default=[], metavar="NAME=BINARY",
                    help="another ringmx binary, run as NAME-uring and NAME-epoll in the same rounds "
                         "(e.g. a build with another allocator)")
    ap.add_argument("--shards", type=int, default=0, help="ingress shards of every ringmx (default: its own choice)")
    ap.add_argument("--cores", default="", help="CPUs of the servers (taskset -c LIST)")
    ap.add_argument("--client-cores", default="", help="CPUs of smtp-source (taskset -c LIST)")
    ap.add_argument("--counts", action="store_true",
                    help="also count the servers' context switches and system calls per message (perf stat)")
    ap.add_argument("--loadgen", default=os.path.join(os.path.dirname(__file__), "..", "target", "release",
                                                      "ringmx-loadgen"))
    ap.add_argument("--data-root", default=None,
                    help="where the servers keep their files (default: a temporary directory), to "
                         "measure on another file system or device")
    a = ap.parse_args()
    global SERVER_CPUS, CLIENT_CPUS, RINGMX_RUNTIME
    SERVER_CPUS, CLIENT_CPUS = a.cores or None, a.client_cores or None
    if a.shards:
        RINGMX_RUNTIME = f"[runtime]\ningress_cores = {a.shards}\n"

    tmp = tempfile.mkdtemp(prefix="ringmx-perf-", dir=a.data_root)
    shm = []  # log directories on /dev/shm, removed at the end

    def shm_dir():
        shm.append(tempfile.mkdtemp(prefix="ringmx-perf-log-", dir="/dev/shm"))
        return shm[-1]

    os.chmod(tmp, 0o755)  # the private Postfix's unprivileged daemons must reach their queue
    rspamd = []  # started at its first use, stopped at the end

    def ringmx_rspamd():
        if not rspamd:
            rspamd.append(Rspamd(tmp))
        srv = Ringmx(a.ringmx, "uring", True, tmp, f"[[milter]]\naddress = \"inet:{rspamd[0].proxy}@127.0.0.1\"\n")
        srv.filter_pids = rspamd[0].pids
        return srv

    def ringmx_scripts():
        path = os.path.join(tmp, "noop.lua")
        with open(path, "w") as f:
            f.write("".join(f"function {h}(ctx) end\n" for h in ("connect", "ehlo", "mail", "rcpt", "data")))
        return Ringmx(a.ringmx, "uring", True, tmp, f"[scripts]\npath = \"{path}\"\n")

    makers = {
        "ringmx-uring": lambda: Ringmx(a.ringmx, "uring", True, tmp),
        "ringmx-scripts": ringmx_scripts,
        "ringmx-epoll": lambda: Ringmx(a.ringmx, "epoll", True, tmp),
        "ringmx-nofsync": lambda: Ringmx(a.ringmx, "uring", False, tmp),
        "ringmx-fdatasync": lambda: Ringmx(a.ringmx, "uring", True, tmp, direct=False),
        "ringmx-epoll-fdatasync": lambda: Ringmx(a.ringmx, "epoll", True, tmp, direct=False),
        "ringmx-nolog": lambda: Ringmx(a.ringmx, "uring", True, tmp, "[log]\nactivity = false\n"),
        "ringmx-rspamd": ringmx_rspamd,
        "ringmx-w3c": lambda: Ringmx(a.ringmx, "uring", True, tmp, "[log.w3c]\nenabled = true\n"),
        "ringmx-metrics": lambda: Ringmx(a.ringmx, "uring", True, tmp,
                                         f"[metrics]\nlisten = \"127.0.0.1:{free_port()}\"\n"),
        "ringmx-alllogs-shm": lambda: Ringmx(a.ringmx, "uring", True, tmp,
                                             f"[log]\ndir = \"{shm_dir()}\"\n"
                                             "[log.w3c]\nenabled = true\n"
                                             f"[metrics]\nlisten = \"127.0.0.1:{free_port()}\"\n"),
        "ringmx-alllogs": lambda: Ringmx(a.ringmx, "uring", True, tmp,
                                         "[log.w3c]\nenabled = true\n"
                                         f"[metrics]\nlisten = \"127.0.0.1:{free_port()}\"\n"),
        "ringmx-policy": lambda: Ringmx(a.ringmx, "uring", True, tmp, policy_config()),
        "smtp-sink": lambda: SmtpSink(tmp),
        "loadgen-sink": lambda: LoadgenSink(a.loadgen),
    }
    for alt in a.alt:
        alt_name, binary = alt.split("=", 1)
        makers[f"{alt_name}-uring"] = lambda b=binary: Ringmx(b, "uring", True, tmp)
        makers[f"{alt_name}-epoll"] = lambda b=binary: Ringmx(b, "epoll", True, tmp)
    if not a.no_postfix_mta:
        makers["postfix-mta"] = lambda: PostfixMta(tmp)
    names = [n for n in makers if not a.only or n in a.only.split(",")]
    results = {}  # (name, mode) -> list of (msgs/s, cpu µs/msg)
    commit = {}   # name -> list of records per batch
    machine = {}  # (name, mode) -> whole-machine busy CPU µs per message, minus the client's
    counts = {}   # (name, mode) -> (context switches, system calls) per message
    filters = {}  # (name, mode) -> the filter's own CPU µs per message (ringmx-rspamd)
    for r in range(a.rounds):
        for mode in ("persistent", "cpm"):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                if name == "postfix-mta" and mode == "cpm":
                    continue
                n = a.mta_messages if name == "postfix-mta" else (a.messages if mode == "persistent" else a.cpm_messages)
                srv = makers[name]()
                try:
                    filter_pids = getattr(srv, "filter_pids", lambda: [])()
                    f0 = cpu_ticks(filter_pids)
                    c0 = cpu_ticks(srv.pids())
                    counter = Counts(srv.pids()) if a.counts else None
                    m0, k0 = machine_busy_ticks(), client_ticks()
                    secs = run_source(srv.port, n, a.sessions, a.size, mode == "persistent")
                    c1 = cpu_ticks(srv.pids())
                    m1, k1 = machine_busy_ticks(), client_ticks()
                    if counter:
                        cs, sc = counter.stop()
                        counts.setdefault((name, mode), []).append((cs / n, sc / n))
                    f1 = cpu_ticks(filter_pids)
                finally:
                    st = srv.stop()
                cpu_us = (c1 - c0) / CLK_TCK / n * 1e6
                machine_us = ((m1 - m0) - (k1 - k0)) / CLK_TCK / n * 1e6
                results.setdefault((name, mode), []).append((n / secs, cpu_us))
                machine.setdefault((name, mode), []).append(machine_us)
                if filter_pids:
                    filters.setdefault((name, mode), []).append((f1 - f0) / CLK_TCK / n * 1e6)
                if st and name.startswith("ringmx"):
                    commit.setdefault((name, mode), []).append(st[0] / max(st[1], 1))
                print(f"round {r + 1} {mode:10} {name:15} {n / secs:9.0f} msg/s {cpu_us:7.1f} µs/msg "
                      f"(machine but the client {machine_us:.1f})", flush=True)
    for r in rspamd:
        r.stop()
    shutil.rmtree(tmp, ignore_errors=True)
    for d in shm:
        shutil.rmtree(d, ignore_errors=True)

    med = {k: (statistics.median(x for x, _ in v), statistics.median(y for _, y in v)) for k, v in results.items()}
    print()
    print(f"medians over {a.rounds} round(s); smtp-source -s {a.sessions} -l {a.size}; "
          f"{a.messages} msgs persistent, {a.cpm_messages} connection-per-message")
    print(f"{'server':15} {'mode':11} {'msg/s':>9} {'µs/msg':>8} {'msg/s ÷ sink':>13} {'CPU ÷ sink':>11} "
          f"{'machine µs/msg':>15} {'÷ sink':>7} {'CPU ÷ ideal':>12} {'machine ÷ ideal':>16}")
    mmed = {k: statistics.median(v) for k, v in machine.items()}
    for (name, mode), (rate, cpu) in sorted(med.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        sink = med.get(("smtp-sink", mode))
        rr = f"{rate / sink[0]:.2f}" if sink else "-"
        cr = f"{cpu / sink[1]:.2f}" if sink and sink[1] > 0 else "-"
        ms, msink = mmed.get((name, mode)), mmed.get(("smtp-sink", mode))
        mr = f"{ms / msink:.2f}" if ms and msink else "-"
        ideal, mideal = med.get(("loadgen-sink", mode)), mmed.get(("loadgen-sink", mode))
        ir = f"{cpu / ideal[1]:.2f}" if ideal and ideal[1] > 0 else "-"
        mir = f"{ms / mideal:.2f}" if ms and mideal else "-"
        print(f"{name:15} {mode:11} {rate:9.0f} {cpu:8.1f} {rr:>13} {cr:>11} {ms or 0:15.1f} {mr:>7} {ir:>12} {mir:>16}")
    u, e = med.get(("ringmx-uring", "cpm")), med.get(("ringmx-epoll", "cpm"))
    if u and e:
        print(f"\nio_uring ÷ epoll CPU/msg, connection per message: {u[1] / e[1]:.2f}")
    u, e = med.get(("ringmx-uring", "persistent")), med.get(("ringmx-epoll", "persistent"))
    if u and e:
        print(f"io_uring ÷ epoll CPU/msg, persistent: {u[1] / e[1]:.2f}")
    for mode in ("persistent", "cpm"):
        on, off = med.get(("ringmx-uring", mode)), med.get(("ringmx-nolog", mode))
        if on and off:
            print(f"activity log on ÷ off, {mode}: msg/s {on[0] / off[0]:.2f}, CPU/msg {on[1] / off[1]:.2f}")
        on = med.get(("ringmx-alllogs", mode))
        if on and off:
            print(f"every log and metrics on ÷ all off, {mode}: msg/s {on[0] / off[0]:.2f}, "
                  f"CPU/msg {on[1] / off[1]:.2f}")
        # Each round's own ratio (the two ran back to back), then their median: steadier
        # on a VM whose speed drifts from round to round.
        for variant in ("ringmx-uring", "ringmx-w3c", "ringmx-metrics", "ringmx-alllogs", "ringmx-alllogs-shm"):
            on_r, off_r = results.get((variant, mode)), results.get(("ringmx-nolog", mode))
            if on_r and off_r and len(on_r) == len(off_r):
                rate = statistics.median(x[0] / y[0] for x, y in zip(on_r, off_r))
                cpu = statistics.median(x[1] / y[1] for x, y in zip(on_r, off_r))
                print(f"  paired per round, {variant} ÷ ringmx-nolog, {mode}: msg/s {rate:.2f}, CPU/msg {cpu:.2f}")
    for mode in ("persistent", "cpm"):
        on_r, off_r = results.get(("ringmx-scripts", mode)), results.get(("ringmx-uring", mode))
        if on_r and off_r and len(on_r) == len(off_r):
            rate = statistics.median(x[0] / y[0] for x, y in zip(on_r, off_r))
            cpu = statistics.median(x[1] / y[1] for x, y in zip(on_r, off_r))
            print(f"  paired per round, ringmx-scripts ÷ ringmx-uring, {mode}: msg/s {rate:.2f}, CPU/msg {cpu:.2f}")
    for mode in ("persistent", "cpm"):
        p, u = med.get(("ringmx-policy", mode)), med.get(("ringmx-uring", mode))
        if p and u:
            print(f"policy on ÷ off msgs/s, {mode}: {p[0] / u[0]:.2f} (CPU/msg {p[1] / u[1]:.2f})")
    u = med.get(("ringmx-uring", "persistent"))
    m = med.get(("postfix-mta", "persistent"))
    if m and u:
        print(f"ringmx-uring ÷ Postfix MTA msgs/s, persistent: {u[0] / m[0]:.1f}")
    for (name, mode), v in sorted(filters.items()):
        u = med.get(("ringmx-uring", mode))
        m = med.get((name, mode))
        ratio = f"; msg/s ÷ ringmx-uring {m[0] / u[0]:.2f}, ringmx CPU/msg ÷ ringmx-uring {m[1] / u[1]:.2f}" if u and m else ""
        print(f"{name} {mode}: rspamd's own CPU {statistics.median(v):.1f} µs/msg{ratio}")
    for (name, mode), v in sorted(counts.items()):
        print(f"per message {name:15} {mode:10}: {statistics.median(c for c, _ in v):.2f} context switches, "
              f"{statistics.median(s for _, s in v):.2f} system calls (median)")
    for (name, mode), v in sorted(commit.items()):
        print(f"group commit {name:15} {mode:10}: {statistics.median(v):.2f} messages per "
              f"{'write' if 'nofsync' in name else 'fdatasync'} (median)")


if __name__ == "__main__":
    sys.exit(main())
