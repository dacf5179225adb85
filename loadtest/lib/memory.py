"""Memory and restart figures behind loadtest/memory (which installs redis and builds
DodoDB first). See loadtest/README.md.

1. DodoDB (--fsync never, temporary data dir): RSS empty, then after loading N keys
   (default 1M) of the 100-byte JSON value.
2. Redis (--save '' --appendonly no, a free loopback port): the same keys and value,
   loaded with `redis-cli --pipe`; RSS and the DodoDB/Redis ratio.
3. DodoDB: POST /system/snapshot, timed, with peak RSS sampled every 10 ms meanwhile.
4. DodoDB: SIGTERM, then a restart on the same data dir, timed until
   GET /system/alive answers 200; the key count afterwards is checked.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import time

import dodo


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="loadtest/memory", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="read by the bash wrapper loadtest/memory:\n"
               "  --no-build   skip the cargo build of dododb")
    p.add_argument("--keys", type=int, default=1_000_000, help="keys to load (default 1000000)")
    p.add_argument("--loader", choices=["wrk", "python"], default="wrk",
                   help="how DodoDB is loaded: wrk + wrk/preload.lua (default, ~10x faster here) "
                        "or Python threads with keep-alive connections")
    p.add_argument("--wrk-threads", type=int, default=2, help="wrk -t for the load (default 2)")
    p.add_argument("--conns", type=int, default=64, help="connections for the load (default 64)")
    p.add_argument("--py-threads", type=int, default=8, help="threads of the Python loader (default 8)")
    p.add_argument("--skip-redis", action="store_true", help="no Redis comparison")
    p.add_argument("--skip-restart", action="store_true", help="no snapshot / restart timing")
    p.add_argument("--tmp-dir", default=None, help="where the temporary data dir goes")
    p.add_argument("--dododb-bin", default=dodo.DODODB_BIN)
    p.add_argument("--dododb-arg", action="append", default=[], help="extra argument for `dododb serve`")
    p.add_argument("--out", default=None, help="results JSON (default loadtest/results/memory-<timestamp>.json)")
    p.add_argument("--no-build", action="store_true", help=argparse.SUPPRESS)  # read by the bash wrapper
    return p.parse_args(argv)


def say(msg: str) -> None:
    print(msg, flush=True)


def dir_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def dododb_part(a: argparse.Namespace, res: dict) -> None:
    srv = dodo.start_dododb(a.dododb_bin, "never", tag="memory", tmp_dir=a.tmp_dir, extra=a.dododb_arg)
    data_dir = srv.data_dir
    try:
        base = dodo.settled_rss(srv.pid, 0.5)
        say(f"dododb: {srv.url}, data dir {data_dir}, RSS empty {dodo.mib(base):.1f} MiB")
        if a.loader == "wrk":
            pre = dodo.preload_wrk(srv.url, a.keys, threads=a.wrk_threads, conns=a.conns)
        else:
            pre = dodo.preload_python(srv.url, a.keys, threads=a.py_threads)
        n = dodo.count_keys(srv.url)
        loaded = dodo.settled_rss(srv.pid)
        per_key = (loaded - base) * 1024 / max(1, a.keys)
        say(f"dododb: loaded {a.keys:,} keys in {pre.seconds:.1f} s ({pre.rate:,.0f} keys/s, {pre.method}), "
            f"/kv/count = {n:,}, failed PUTs {pre.failed}")
        say(f"dododb: RSS loaded {dodo.mib(loaded):.1f} MiB ({per_key:.0f} B/key over empty)")
        res["dododb"] = {"url": srv.url, "rss_empty_kib": base, "rss_loaded_kib": loaded,
                         "bytes_per_key": round(per_key, 1), "count": n,
                         "load": {"seconds": round(pre.seconds, 2), "keys_per_s": round(pre.rate),
                                  "method": pre.method, "failed": pre.failed}}
        if a.skip_restart:
            return

        # Snapshot: timed, with RSS sampled every 10 ms to catch its peak.
        with dodo.PeakRss(srv.pid) as peak:
            t0 = time.monotonic()
            status, body = dodo.http_request(srv.url, "POST", "/system/snapshot", timeout=600)
            snap_s = time.monotonic() - t0
        answer = body.decode(errors="replace").strip()
        say(f"dododb: POST /system/snapshot -> {status} in {snap_s * 1000:.0f} ms: {answer[:300]}")
        say(f"dododb: peak RSS during snapshot {dodo.mib(peak.peak):.1f} MiB "
            f"(+{dodo.mib(peak.peak - loaded):.1f} MiB over loaded; {peak.samples} samples), "
            f"data dir {dir_bytes(data_dir) / 2**20:.1f} MiB")
        res["dododb"]["snapshot"] = {"status": status, "seconds": round(snap_s, 3), "answer": answer,
                                     "peak_rss_kib": peak.peak, "samples": peak.samples,
                                     "data_dir_bytes": dir_bytes(data_dir)}

        # Graceful stop, then a restart on the same data dir.
        stop_s = srv.stop(signal.SIGTERM, timeout=120)
        exit_code = srv.proc.returncode
        say(f"dododb: SIGTERM -> exited in {stop_s * 1000:.0f} ms (exit code {exit_code})")
        srv, listening_s, alive_s = dodo.restart_timed(srv, "dododb")
        n2 = dodo.count_keys(srv.url)
        rss2 = dodo.settled_rss(srv.pid)
        say(f"dododb: restart -> 'listening' line after {listening_s * 1000:.0f} ms, "
            f"/system/alive 200 after {alive_s * 1000:.0f} ms; /kv/count = {n2:,}; RSS {dodo.mib(rss2):.1f} MiB")
        if n2 != n:
            say(f"dododb: WARNING: {n:,} keys before the restart, {n2:,} after")
        res["dododb"]["restart"] = {"sigterm_exit_seconds": round(stop_s, 3), "exit_code": exit_code,
                                    "listening_seconds": round(listening_s, 3),
                                    "alive_seconds": round(alive_s, 3), "count": n2, "rss_kib": rss2}
    finally:
        srv.discard()


def redis_cli(port: int, *args: str) -> str:
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True,
                          timeout=60).stdout.strip()


def resp_set_commands(keys: int, chunk: int = 20_000):
    """SET k<i> <BODY> in Redis's wire protocol, in chunks (1M commands are ~130 MB)."""
    body = dodo.BODY.encode()
    tail = b"$%d\r\n%s\r\n" % (len(body), body)
    for start in range(0, keys, chunk):
        parts = []
        for i in range(start, min(start + chunk, keys)):
            k = b"k%d" % i
            parts.append(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n" % (len(k), k) + tail)
        yield b"".join(parts)


def redis_part(a: argparse.Namespace, res: dict) -> None:
    port = dodo.free_port()
    redis_dir = dodo.make_data_dir(a.tmp_dir, "redis")  # --save '': nothing is written there
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--daemonize", "no", "--dir", redis_dir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while redis_cli(port, "ping") != "PONG":
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        version = redis_cli(port, "info", "server").split("redis_version:")[1].split()[0]
        base = dodo.settled_rss(proc.pid, 0.5)
        say(f"redis {version}: port {port}, RSS empty {dodo.mib(base):.1f} MiB")
        t0 = time.monotonic()
        pipe = subprocess.Popen(["redis-cli", "-p", str(port), "--pipe"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for chunk in resp_set_commands(a.keys):
            pipe.stdin.write(chunk)
        pipe.stdin.close()
        out = pipe.stdout.read().decode(errors="replace")
        pipe.wait()
        load_s = time.monotonic() - t0
        n = int(redis_cli(port, "dbsize") or -1)
        loaded = dodo.settled_rss(proc.pid)
        used = redis_cli(port, "info", "memory").split("used_memory:")[1].split()[0]
        per_key = (loaded - base) * 1024 / max(1, a.keys)
        say(f"redis: loaded {a.keys:,} keys in {load_s:.1f} s with redis-cli --pipe "
            f"({out.strip().splitlines()[-1] if out.strip() else 'no output'}), dbsize = {n:,}")
        say(f"redis: RSS loaded {dodo.mib(loaded):.1f} MiB ({per_key:.0f} B/key over empty), "
            f"used_memory {int(used) / 2**20:.1f} MiB")
        res["redis"] = {"version": version, "rss_empty_kib": base, "rss_loaded_kib": loaded,
                        "bytes_per_key": round(per_key, 1), "used_memory": int(used), "dbsize": n,
                        "load_seconds": round(load_s, 2)}
    finally:
        proc.terminate()
        proc.wait(30)
        dodo.remove_dir(redis_dir)


def main(argv: list[str]) -> int:
    a = parse_args(argv)
    if a.skip_redis is False and not shutil.which("redis-server"):
        say("redis-server is missing (loadtest/memory installs it); use --skip-redis")
        return 2
    started = dt.datetime.now()
    res = {"started": started.isoformat(timespec="seconds"), "keys": a.keys, "value_bytes": len(dodo.BODY),
           "loader": a.loader}
    say(f"memory: {a.keys:,} keys x {len(dodo.BODY)}-byte JSON values")
    dododb_part(a, res)
    if not a.skip_redis:
        redis_part(a, res)
    d, r = res.get("dododb"), res.get("redis")
    say("")
    say("summary")
    say(f"  dododb RSS loaded   {dodo.mib(d['rss_loaded_kib']):9.1f} MiB  ({d['bytes_per_key']:.0f} B/key)")
    if r:
        say(f"  redis  RSS loaded   {dodo.mib(r['rss_loaded_kib']):9.1f} MiB  ({r['bytes_per_key']:.0f} B/key)")
        say(f"  ratio dododb/redis  {d['rss_loaded_kib'] / r['rss_loaded_kib']:9.2f}")
        say(f"  ratio per key       {d['bytes_per_key'] / r['bytes_per_key']:9.2f}   (RSS growth over empty)")
        res["ratio_rss_dododb_to_redis"] = round(d["rss_loaded_kib"] / r["rss_loaded_kib"], 3)
        res["ratio_bytes_per_key"] = round(d["bytes_per_key"] / r["bytes_per_key"], 3)
    if "snapshot" in d:
        s, rs = d["snapshot"], d["restart"]
        say(f"  snapshot            {s['seconds'] * 1000:9.0f} ms   (peak RSS {dodo.mib(s['peak_rss_kib']):.1f} MiB)")
        say(f"  SIGTERM to exit     {rs['sigterm_exit_seconds'] * 1000:9.0f} ms")
        say(f"  restart to alive    {rs['alive_seconds'] * 1000:9.0f} ms   ({rs['count']:,} keys back, "
            f"RSS then {dodo.mib(rs['rss_kib']):.1f} MiB)")
    say(f"\nresults: {dodo.write_results(res, a.out, 'memory', started)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
