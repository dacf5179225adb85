"""Listing and counting at scale, behind loadtest/listing (which builds DodoDB first).
See loadtest/README.md.

One DodoDB (--fsync never, temporary data dir) is loaded with N keys (default 1M)
k0..k<N-1> of the 100-byte JSON value, plus 100 keys list/000..list/099. Then, on
one keep-alive connection, every figure as the median of --samples requests:

  get          GET /kv/k<random>                         (the reference)
  page100      GET /kv?limit=100&cursor=<random key>     a 100-key page anywhere
  first100     GET /kv?limit=100                         the first page
  prefix100    GET /kv?prefix=k1&limit=100&cursor=...    a page of a ~111k-key prefix
  count100     GET /kv/count?prefix=list/                a 100-key prefix
  count_big    GET /kv/count?prefix=k1                   a ~111k-key prefix (fewer samples)

and, once each: a full cursor walk at limit=1000 against GET /system/export of the
same store (the whole body read). Ratios: page100 / get and count100 / get (target
at most 10), walk / export (target at most 3).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import http.client
import json
import os
import random
import statistics
import sys
import time
import urllib.parse

import dodo


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="loadtest/listing", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="read by the bash wrapper loadtest/listing:\n"
               "  --no-build   skip the cargo build of dododb")
    p.add_argument("--keys", type=int, default=1_000_000, help="keys to load (default 1000000)")
    p.add_argument("--samples", type=int, default=100, help="requests per median (default 100)")
    p.add_argument("--walks", type=int, default=1, help="full walks and exports, interleaved (default 1)")
    p.add_argument("--wrk-threads", type=int, default=2, help="wrk -t for the load (default 2)")
    p.add_argument("--conns", type=int, default=64, help="connections for the load (default 64)")
    p.add_argument("--tmp-dir", default=None, help="where the temporary data dir goes")
    p.add_argument("--dododb-bin", default=dodo.DODODB_BIN)
    p.add_argument("--dododb-arg", action="append", default=[], help="extra argument for `dododb serve`")
    p.add_argument("--out", default=None, help="results JSON (default loadtest/results/listing-<timestamp>.json)")
    p.add_argument("--no-build", action="store_true", help=argparse.SUPPRESS)  # read by the bash wrapper
    return p.parse_args(argv)


def say(msg: str) -> None:
    print(msg, flush=True)


class Client:
    """One keep-alive connection; each call returns (seconds, status, body)."""

    def __init__(self, url: str):
        u = urllib.parse.urlsplit(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[float, int, bytes]:
        t0 = time.perf_counter()
        self.conn.request(method, path, body=body)
        resp = self.conn.getresponse()
        data = resp.read()
        return time.perf_counter() - t0, resp.status, data

    def get(self, path: str) -> tuple[float, bytes]:
        seconds, status, data = self.call("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path} -> {status}: {data[:200]!r}")
        return seconds, data


def cursor_of(key: str) -> str:
    """The cursor the server issues after `key` (base64url without padding)."""
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def median_ms(client: Client, paths: list[str]) -> float:
    return statistics.median(client.get(p)[0] for p in paths) * 1000


def walk(client: Client, limit: int) -> tuple[float, int, int]:
    """A full cursor walk: (seconds, keys, pages)."""
    t0 = time.perf_counter()
    cursor, keys, pages = None, 0, 0
    while True:
        path = f"/kv?limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        _, data = client.get(path)
        page = json.loads(data)
        keys += len(page["keys"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            return time.perf_counter() - t0, keys, pages


def main(argv: list[str]) -> int:
    a = parse_args(argv)
    started = dt.datetime.now()
    res: dict = {"started": started.isoformat(timespec="seconds"), "keys": a.keys,
                 "value_bytes": len(dodo.BODY), "samples": a.samples}
    srv = dodo.start_dododb(a.dododb_bin, "never", tag="listing", tmp_dir=a.tmp_dir,
                            extra=["--snapshot-interval", "0", *a.dododb_arg])
    try:
        pre = dodo.preload_wrk(srv.url, a.keys, threads=a.wrk_threads, conns=a.conns)
        client = Client(srv.url)
        for i in range(100):
            _, status, _ = client.call("PUT", f"/kv/list%2F{i:03d}", dodo.BODY.encode())
            assert status == 201, status
        _, data = client.get("/kv/count")
        n = json.loads(data)["count"]
        say(f"listing: {srv.url}, loaded {a.keys:,} keys in {pre.seconds:.1f} s ({pre.method}); "
            f"/kv/count = {n:,}")
        res["count"] = n

        rng = random.Random(19)
        keys = [f"k{rng.randrange(a.keys)}" for _ in range(a.samples)]
        big = [f"k1{rng.randrange(a.keys)}"[:7] for _ in range(a.samples)]
        plans = {
            "get": [f"/kv/{k}" for k in keys],
            "page100": [f"/kv?limit=100&cursor={cursor_of(k)}" for k in keys],
            "first100": ["/kv?limit=100"] * a.samples,
            "prefix100": [f"/kv?prefix=k1&limit=100&cursor={cursor_of(k)}" for k in big],
            "count100": ["/kv/count?prefix=list%2F"] * a.samples,
            "count_big": ["/kv/count?prefix=k1"] * max(5, a.samples // 10),
        }
        # Warm up, then the plans interleaved request by request, so drift
        # on this shared machine touches all of them alike.
        for paths in plans.values():
            for p in paths[:5]:
                client.get(p)
        times: dict[str, list[float]] = {name: [] for name in plans}
        for i in range(a.samples):
            for name, paths in plans.items():
                if i < len(paths):
                    times[name].append(client.get(paths[i])[0])
        medians = {name: statistics.median(t) * 1000 for name, t in times.items()}
        _, data = client.get("/kv/count?prefix=list%2F")
        assert json.loads(data)["count"] == 100, data

        # Wall time, and the server's own CPU time (utime + stime of all its
        # threads): on a busy host the wall time of 1,001 round trips swings
        # with the scheduler, its CPU time much less.
        walks, exports, walk_cpu, export_cpu = [], [], [], []
        for _ in range(a.walks):
            ticks = dodo.cpu_ticks(srv.pid)
            seconds, data = client.get("/system/export")
            export_cpu.append((dodo.cpu_ticks(srv.pid) - ticks) / dodo.CLK_TCK)
            exports.append(seconds)
            export_lines = data.count(b"\n")
            ticks = dodo.cpu_ticks(srv.pid)
            seconds, walked, pages = walk(client, 1000)
            walk_cpu.append((dodo.cpu_ticks(srv.pid) - ticks) / dodo.CLK_TCK)
            walks.append(seconds)
            if walked != n:
                say(f"listing: WARNING: the walk saw {walked:,} keys, /kv/count said {n:,}")
        export_s, walk_s = statistics.median(exports), statistics.median(walks)
        get = medians["get"]
        res["median_ms"] = {k: round(v, 4) for k, v in medians.items()}
        walk_cpu_s, export_cpu_s = statistics.median(walk_cpu), statistics.median(export_cpu)
        res["walk"] = {"seconds": [round(s, 3) for s in walks], "keys": walked, "pages": pages,
                       "server_cpu_seconds": walk_cpu}
        res["export"] = {"seconds": [round(s, 3) for s in exports], "lines": export_lines,
                         "server_cpu_seconds": export_cpu}
        res["ratios"] = {
            "page100_to_get": round(medians["page100"] / get, 2),
            "first100_to_get": round(medians["first100"] / get, 2),
            "prefix100_to_get": round(medians["prefix100"] / get, 2),
            "count100_to_get": round(medians["count100"] / get, 2),
            "count_big_to_get": round(medians["count_big"] / get, 2),
            "walk_to_export": round(walk_s / export_s, 2),
            "walk_to_export_server_cpu": round(walk_cpu_s / max(export_cpu_s, 0.01), 2),
        }
        say("")
        say(f"{'figure':<44} {'median':>10} {'x GET':>7}  target")
        say(f"{'-' * 44} {'-' * 10} {'-' * 7}  ------")
        rows = [
            ("GET /kv/{key}", "get", ""),
            ("GET /kv?limit=100 at a random cursor", "page100", "<= 10"),
            ("GET /kv?limit=100 (first page)", "first100", ""),
            ("GET /kv?prefix=k1&limit=100 (111k under it)", "prefix100", ""),
            ("GET /kv/count?prefix=list/ (100 keys)", "count100", "<= 10"),
            ("GET /kv/count?prefix=k1 (111k keys)", "count_big", ""),
        ]
        for label, name, target in rows:
            say(f"{label:<44} {medians[name]:8.3f}ms {medians[name] / get:7.2f}  {target}")
        say("")
        say(f"full walk at limit=1000: {walk_s:.3f} s ({walked:,} keys, {pages} pages); "
            f"GET /system/export: {export_s:.3f} s ({export_lines:,} lines); "
            f"walk / export = {walk_s / export_s:.2f} (target <= 3)")
        say(f"server CPU time: walk {walk_cpu_s:.2f} s, export {export_cpu_s:.2f} s, "
            f"walk / export = {walk_cpu_s / max(export_cpu_s, 0.01):.2f}  (medians of {a.walks}; "
            f"walks {', '.join(f'{s:.2f}' for s in walks)} s, exports {', '.join(f'{s:.2f}' for s in exports)} s)")
    finally:
        srv.discard()
    say(f"\nresults: {dodo.write_results(res, a.out, 'listing', started)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
