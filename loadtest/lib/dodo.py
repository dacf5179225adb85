"""Shared pieces of DodoDB's load tests: start a server (a fresh DodoDB on a new
data dir, or a restart of one, timed) and read its URL, preload keys, run wrk and
parse what it prints, read CPU time and RSS from /proc (peak RSS sampled in a
thread), and write a results file.

Used by every script in loadtest/lib/. Standard library only (Python 3.11).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

LOADTEST = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(LOADTEST)
WRK_DIR = os.path.join(LOADTEST, "wrk")
DODODB_BIN = os.path.join(REPO, "target", "release", "dododb")
CEILING_BIN = os.path.join(LOADTEST, "ceiling", "target", "release", "dododb-ceiling")

# The ~100-byte JSON value every PUT sends (the same literal is wrk/common.lua's default).
BODY = '{"id":1234,"name":"dodo bird","tags":["extinct","flightless"],"weight_kg":10.6,"island":"Mauritius"}'
assert len(BODY) == 100

CLK_TCK = os.sysconf("SC_CLK_TCK")
URL_RE = re.compile(r"(https?://\S+)")


# --------------------------------------------------------------------------- /proc


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name (field 2) may contain spaces: split after its ')'.
            rest = f.read().rsplit(")", 1)[1].split()
        return int(rest[11]) + int(rest[12])  # fields 14 and 15 of proc(5)
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0


def system_ticks() -> tuple[int, int, int]:
    """Clock ticks of all CPUs together: (busy, irq + softirq, steal). Busy is
    everything but idle and iowait; steal is time the hypervisor gave to other
    guests, which on a shared VM is most of the noise."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]] + [0] * 8
    idle = parts[3] + parts[4]
    # guest time is already counted in user; steal is not ours but is not idle either.
    return sum(parts[:8]) - idle, parts[5] + parts[6], parts[7]


def all_cpu_ticks() -> dict[int, tuple[str, int]]:
    """pid -> (command name, utime + stime) for every process (kernel threads too)."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                text = f.read()
            comm = text[text.index("(") + 1:text.rindex(")")]
            rest = text.rsplit(")", 1)[1].split()
            out[int(name)] = (comm, int(rest[11]) + int(rest[12]))
        except (OSError, ValueError, IndexError):
            pass  # it exited meanwhile
    return out


def top_other(before: dict, after: dict, exclude: set[int], wall: float, n: int = 3) -> list:
    """The n processes (by name, summed) that used the most CPU between two
    all_cpu_ticks() snapshots, leaving out `exclude`: [(name, % of one core)]."""
    used: dict[str, int] = {}
    for pid, (comm, ticks) in after.items():
        if pid in exclude:
            continue
        delta = ticks - before.get(pid, (comm, 0))[1]
        if delta > 0:
            used[comm] = used.get(comm, 0) + delta
    top = sorted(used.items(), key=lambda kv: -kv[1])[:n]
    return [(comm, round(100.0 * t / CLK_TCK / wall, 1)) for comm, t in top]


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


class PeakRss:
    """Samples a process's VmRSS every `interval` seconds in a thread; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.01):
        self.pid, self.interval, self.peak, self.samples = pid, interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_kib(self.pid))


def settled_rss(pid: int, wait: float = 1.0) -> int:
    """RSS after a short pause, so allocator work in flight has finished."""
    time.sleep(wait)
    return rss_kib(pid)


def mib(kib: float) -> float:
    return kib / 1024.0


# --------------------------------------------------------------------------- servers


def pinned(cmd: list[str], cpu: int | None) -> list[str]:
    """Prefix a command with `taskset -c CPU` (taskset execs it: the pid stays the same)."""
    return ["taskset", "-c", str(cpu), *cmd] if cpu is not None else cmd


@dataclass
class Server:
    """A server process we started, and the URL it printed on its first stdout line."""

    name: str
    proc: subprocess.Popen
    url: str
    data_dir: str | None
    log_path: str
    started_at: float
    ready_s: float  # from spawn to its "listening on" line
    cmd: list[str] = field(default_factory=list)  # what was started (without taskset)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except FileNotFoundError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> float:
        """Signal the server and wait for it to exit; returns the seconds it took."""
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return time.monotonic() - t0

    def discard(self, keep_log: bool = False) -> None:
        """Stop the server, then delete its data dir and (unless `keep_log`) its log."""
        self.stop()
        remove_dir(self.data_dir)
        if not keep_log and os.path.exists(self.log_path):
            os.remove(self.log_path)


def start_server(
    name: str,
    cmd: list[str],
    *,
    data_dir: str | None = None,
    cpu: int | None = None,
    log_dir: str | None = None,
    timeout: float = 120.0,
) -> Server:
    """Spawn a server that prints `... listening on http://ADDR` as its first stdout
    line, and wait for that line. stderr goes to a log file (shown on failure)."""
    log_dir = log_dir or tempfile.gettempdir()
    log_path = os.path.join(log_dir, f"{name}.{int(time.time() * 1000)}.log")
    log = open(log_path, "wb")
    t0 = time.monotonic()
    proc = subprocess.Popen(
        pinned(cmd, cpu), stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL
    )
    log.close()
    line = _read_line(proc, timeout)
    ready = time.monotonic() - t0
    m = URL_RE.search(line or "")
    if not m or "listening on" not in line:
        proc.kill()
        proc.wait()
        with open(log_path, errors="replace") as f:
            tail = f.read()[-3000:]
        raise RuntimeError(
            f"{name}: no 'listening on' line (got {line!r}, exit {proc.returncode}); "
            f"command: {' '.join(cmd)}\n--- stderr ---\n{tail}"
        )
    # Keep draining stdout so a chatty server can never block on a full pipe.
    threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()
    return Server(name, proc, m.group(1).rstrip("/"), data_dir, log_path, t0, ready, cmd)


def start_dododb(binary: str, fsync: str, *, tag: str, tmp_dir: str | None = None,
                 extra: list[str] | None = None, cpu: int | None = None) -> Server:
    """A fresh DodoDB (`serve --fsync FSYNC` plus `extra`) on a new temporary data dir,
    once GET /system/alive answers. If it does not come up, nothing is left behind."""
    data_dir = make_data_dir(tmp_dir, tag)
    try:
        srv = start_server(tag, dododb_cmd(binary, data_dir, fsync, extra), data_dir=data_dir, cpu=cpu)
    except Exception:
        remove_dir(data_dir)
        raise
    try:
        wait_alive(srv.url)
    except Exception:
        srv.discard(keep_log=True)
        raise
    return srv


def restart_timed(srv: Server, name: str) -> tuple[Server, float, float]:
    """Start a stopped server's command again on the same data dir; returns the new
    server, the seconds until its `listening` line and until GET /system/alive
    answers 200 (polled every 10 ms)."""
    if os.path.exists(srv.log_path):
        os.remove(srv.log_path)
    t0 = time.monotonic()
    new = start_server(name, srv.cmd, data_dir=srv.data_dir, timeout=600)
    listening = time.monotonic() - t0
    wait_alive(new.url, timeout=600, interval=0.01)
    return new, listening, time.monotonic() - t0


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    """The first stdout line of proc, or '' on timeout / exit."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not sel.select(left):
            break
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            break
        buf += chunk
    sel.close()
    return buf.split(b"\n", 1)[0].decode(errors="replace")


def _drain(pipe) -> None:
    try:
        while os.read(pipe.fileno(), 65536):
            pass
    except OSError:
        pass


def dododb_cmd(binary: str, data_dir: str, fsync: str, extra: list[str] | None = None) -> list[str]:
    return [
        binary, "serve", "--listen", "127.0.0.1:0",
        "--data-dir", data_dir, "--fsync", fsync, *(extra or []),
    ]


def ceiling_cmd(binary: str = CEILING_BIN) -> list[str]:
    return [binary, "--listen", "127.0.0.1:0"]


def free_port() -> int:
    """A loopback port that was free a moment ago (for servers without port 0 support)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_data_dir(base: str | None, tag: str) -> str:
    return tempfile.mkdtemp(prefix=f"dododb-loadtest-{tag}-", dir=base)


def remove_dir(path: str | None) -> None:
    if path:
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- HTTP


def http_request(url: str, method: str = "GET", path: str = "/", body: str | bytes | None = None,
                 timeout: float = 5.0) -> tuple[int, bytes]:
    """One request on a fresh connection; (status, body)."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_alive(url: str, path: str = "/system/alive", timeout: float = 120.0,
               interval: float = 0.01) -> float:
    """Poll GET path until it answers 200; returns the seconds waited."""
    t0 = time.monotonic()
    while True:
        try:
            status, _ = http_request(url, "GET", path, timeout=1.0)
            if status == 200:
                return time.monotonic() - t0
        except OSError:
            pass
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{url}{path} did not answer 200 within {timeout}s")
        time.sleep(interval)


def count_keys(url: str) -> int:
    """GET /kv/count, or -1 when it does not answer 200."""
    status, body = http_request(url, "GET", "/kv/count", timeout=60)
    return json.loads(body)["count"] if status == 200 else -1


def write_results(res: dict, out: str | None, kind: str, started) -> str:
    """Write `res` as JSON to `out`, by default loadtest/results/<kind>-<started>.json;
    returns the path."""
    out = out or os.path.join(LOADTEST, "results", f"{kind}-{started.strftime('%Y%m%d-%H%M%S')}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(res, f, indent=2)
        f.write("\n")
    return out


# --------------------------------------------------------------------------- wrk


@dataclass
class WrkResult:
    rps: float = 0.0
    requests: int = 0
    duration_s: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    non_2xx: int = 0  # wrk's "Non-2xx or 3xx responses" (its status errors, 4xx/5xx)
    socket_errors: dict = field(default_factory=lambda: {"connect": 0, "read": 0, "write": 0, "timeout": 0})
    wrk_cpu_pct: float = 0.0     # % of one core
    server_cpu_pct: float = 0.0  # % of one core
    other_cpu_pct: float = 0.0   # everything else on the machine, % of one core
    steal_cpu_pct: float = 0.0   # of which stolen by the hypervisor
    irq_cpu_pct: float = 0.0     # of which interrupts and softirqs (loopback TCP runs there too)
    other_top: list = field(default_factory=list)  # [(process name, % of one core)], biggest first
    exit_code: int = 0
    raw: str = ""

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def _to_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"bad wrk duration {text!r}")
    return float(m.group(1)) * _UNITS_MS[m.group(2)]


def _si_count(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)([kMG]?)", text)
    return float(m.group(1)) * {"": 1, "k": 1e3, "M": 1e6, "G": 1e9}[m.group(2)] if m else 0.0


def parse_wrk(text: str) -> WrkResult:
    """Parse wrk 4's summary (run with --latency)."""
    r = WrkResult(raw=text)
    if m := re.search(r"Requests/sec:\s+([\d.]+)", text):
        r.rps = float(m.group(1))
    if m := re.search(r"(\d+) requests in ([\d.]+\w+),", text):
        r.requests = int(m.group(1))
        r.duration_s = _to_ms(m.group(2)) / 1000.0
    # "Latency Distribution" block: "     50%  302.00us"
    for pct, val in re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)\s*$", text, re.M):
        setattr(r, f"p{pct}_ms", _to_ms(val))
    if m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text):
        r.non_2xx = int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text):
        r.socket_errors = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups())))
    return r


def wrk_cmd(url: str, script: str, conns: int, duration: float, threads: int,
            latency: bool = True, timeout_s: int = 10) -> list[str]:
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{max(1, round(duration))}s",
           f"--timeout", f"{timeout_s}s", "-s", os.path.join(WRK_DIR, script)]
    if latency:
        cmd.append("--latency")
    return cmd + [url]


def wrk_env(keys: int, extra: dict | None = None) -> dict:
    env = dict(os.environ, DODO_KEYS=str(keys), DODO_BODY=BODY)
    env.update(extra or {})
    return env


def run_wrk(url: str, script: str, *, conns: int, duration: float, threads: int = 1,
            keys: int = 100_000, cpu: int | None = None, server_pid: int | None = None) -> WrkResult:
    """Run wrk once and return its parsed summary plus the CPU used meanwhile by wrk
    (its rusage), by the server (/proc/PID/stat) and by everything else (/proc/stat)."""
    out = tempfile.TemporaryFile()
    srv0 = cpu_ticks(server_pid) if server_pid else 0
    procs0 = all_cpu_ticks()
    sys0 = system_ticks()
    t0 = time.monotonic()
    proc = subprocess.Popen(
        pinned(wrk_cmd(url, script, conns, duration, threads), cpu),
        stdout=out, stderr=subprocess.STDOUT, cwd=WRK_DIR, env=wrk_env(keys),
    )
    # wait4 rather than wait(): it also returns the CPU time wrk used.
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - t0
    srv_ticks = (cpu_ticks(server_pid) - srv0) if server_pid else 0
    sys1 = system_ticks()
    sys_ticks, irq_ticks, steal_ticks = (b - a for a, b in zip(sys0, sys1))
    procs1 = all_cpu_ticks()
    out.seek(0)
    r = parse_wrk(out.read().decode(errors="replace"))
    out.close()
    r.exit_code = proc.returncode
    wrk_s = usage.ru_utime + usage.ru_stime
    r.wrk_cpu_pct = 100.0 * wrk_s / wall
    r.server_cpu_pct = 100.0 * srv_ticks / CLK_TCK / wall
    other_s = sys_ticks / CLK_TCK - wrk_s - srv_ticks / CLK_TCK
    r.other_cpu_pct = max(0.0, 100.0 * other_s / wall)
    r.steal_cpu_pct = 100.0 * steal_ticks / CLK_TCK / wall
    r.irq_cpu_pct = 100.0 * irq_ticks / CLK_TCK / wall
    # Who the others were: a compile, or the kernel's own work for us (e.g. jbd2 for fsyncs)?
    r.other_top = top_other(procs0, procs1, {server_pid or -1, proc.pid, os.getpid()}, wall)
    return r


# --------------------------------------------------------------------------- preload


@dataclass
class Preload:
    keys: int
    seconds: float
    method: str
    failed: int = 0

    @property
    def rate(self) -> float:
        return self.keys / self.seconds if self.seconds > 0 else 0.0


def preload_wrk(url: str, keys: int, *, first: int = 0, threads: int = 1, conns: int = 64,
                cpu: int | None = None, any_2xx: bool = False, timeout: float | None = None) -> Preload:
    """PUT k<first> .. k<first+keys-1> once each with wrk + wrk/preload.lua.

    Each wrk thread prints `preload-done ID CREATED BAD` when all its keys were
    created; wrk itself runs until -d, so we SIGINT it once every thread is done."""
    threads = max(1, min(threads, keys))
    if timeout is None:
        timeout = 60 + keys / 2000  # generous: wrk loads 50-100k keys/s here
    env = wrk_env(keys, {"DODO_FIRST": str(first), "DODO_THREADS": str(threads)})
    if any_2xx:
        env["DODO_PRELOAD_OK"] = "2xx"
    cmd = pinned(wrk_cmd(url, "preload.lua", max(conns, threads), timeout, threads, latency=False), cpu)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=WRK_DIR, env=env)
    done, bad, lines, error = 0, 0, [], None
    deadline = t0 + timeout
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf = b""
    while done < threads and error is None and time.monotonic() < deadline:
        if not sel.select(max(0.0, deadline - time.monotonic())):
            break
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            break  # wrk exited
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            text = line.decode(errors="replace")
            lines.append(text)
            if text.startswith("preload-done "):
                done += 1
                bad += int(text.split()[3])
            elif text.startswith("preload-error "):
                error = text  # a key that failed is not retried: stop now
    elapsed = time.monotonic() - t0
    sel.close()
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # wrk prints its summary and exits
    rest, _ = proc.communicate(timeout=30)
    if done < threads:
        why = error or (f"{done}/{threads} wrk threads done after {elapsed:.1f}s "
                        "(was the server fresh? keys that existed answer 200, not 201)")
        raise RuntimeError(
            f"preload of {keys} keys failed: {why}; wrk said:\n"
            + "\n".join(lines) + rest.decode(errors="replace")
        )
    return Preload(keys, elapsed, f"wrk -t{threads} -c{max(conns, threads)}", bad)


def preload_python(url: str, keys: int, *, first: int = 0, threads: int = 8) -> Preload:
    """The same preload from Python threads, each with one keep-alive connection.
    Slower than wrk here (the GIL); kept to compare, see loadtest/README.md."""
    u = urllib.parse.urlsplit(url)
    body = BODY.encode()
    headers = {"Content-Type": "application/json"}
    failed = [0] * threads

    def work(t: int) -> None:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        for i in range(first + t, first + keys, threads):
            conn.request("PUT", f"/kv/k{i}", body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            if not 200 <= resp.status < 300:
                failed[t] += 1
        conn.close()

    t0 = time.monotonic()
    ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return Preload(keys, time.monotonic() - t0, f"python x{threads}", sum(failed))


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


# --------------------------------------------------------------------------- CLI


def _main(argv: list[str]) -> int:
    """`python3 loadtest/lib/dodo.py preload URL [--keys N] [--first N] [--threads N]`:
    the preloader on its own, for loadtest/oha.sh and for k6 or manual runs."""
    import argparse

    p = argparse.ArgumentParser(prog="loadtest/lib/dodo.py")
    sub = p.add_subparsers(dest="cmd", required=True)
    pre = sub.add_parser("preload", help="PUT k<first>..k<first+keys-1> (the 100-byte value) with wrk")
    pre.add_argument("url")
    pre.add_argument("--keys", type=int, default=100_000)
    pre.add_argument("--first", type=int, default=0)
    pre.add_argument("--threads", type=int, default=2)
    pre.add_argument("--conns", type=int, default=64)
    pre.add_argument("--any-2xx", action="store_true", help="count 200 as stored too (servers that never say 201)")
    a = p.parse_args(argv)
    r = preload_wrk(a.url.rstrip("/"), a.keys, first=a.first, threads=a.threads, conns=a.conns,
                    any_2xx=a.any_2xx)
    print(f"preloaded {r.keys} keys in {r.seconds:.2f} s ({r.rate:,.0f}/s, {r.method}, failed {r.failed})")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))
