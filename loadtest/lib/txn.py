"""Keys written per second through POST /txn (100 puts per transaction) against single
PUTs, in one run, behind loadtest/txn (which installs wrk and builds DodoDB first).

For each --fsync mode and round, interleaved: a fresh DodoDB preloaded with the keys,
wrk's put.lua (one key per request), then a fresh one with wrk's txn100.lua (100 keys
per request). keys/s = req/s x keys per request; the ratio is txn keys/s over PUT
keys/s of the same round and mode. See loadtest/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys

import dodo
from run import render


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="loadtest/txn", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=10, help="seconds measured per run (default 10)")
    p.add_argument("--warmup", type=float, default=2, help="seconds of unmeasured load first (default 2)")
    p.add_argument("--pin", action="store_true", help="server on cpu0, wrk -t1 on cpu1")
    p.add_argument("--conns", type=int, default=32, help="connections (default 32)")
    p.add_argument("--fsync", default="always,never", help="comma-separated modes (default always,never)")
    p.add_argument("--rounds", type=int, default=2, help="PUT/txn pairs per mode (default 2)")
    p.add_argument("--keys", type=int, default=100_000, help="keys preloaded and addressed (default 100000)")
    p.add_argument("--puts", type=int, default=100, help="puts per transaction (default 100)")
    p.add_argument("--tmp-dir", default=None, help="parent of the data dirs (a real disk for --fsync always)")
    p.add_argument("--dododb-bin", default=dodo.DODODB_BIN)
    p.add_argument("--out", default=None, help="results JSON (default loadtest/results/txn-<timestamp>.json)")
    p.add_argument("--no-build", action="store_true", help=argparse.SUPPRESS)  # read by the wrapper
    return p.parse_args(argv)


def one_run(a: argparse.Namespace, fsync: str, script: str) -> dict:
    wrk_cpu = 1 if a.pin else None
    threads = 1 if a.pin else 2
    srv = dodo.start_dododb(a.dododb_bin, fsync, tag=f"txn-{fsync}", tmp_dir=a.tmp_dir,
                            cpu=0 if a.pin else None)
    try:
        dodo.preload_wrk(srv.url, a.keys, threads=threads, cpu=wrk_cpu)
        os.environ["DODO_TXN_PUTS"] = str(a.puts)
        if a.warmup > 0:
            dodo.run_wrk(srv.url, script, conns=a.conns, duration=a.warmup, threads=threads,
                         keys=a.keys, cpu=wrk_cpu)
        r = dodo.run_wrk(srv.url, script, conns=a.conns, duration=a.duration, threads=threads,
                         keys=a.keys, cpu=wrk_cpu, server_pid=srv.pid)
    finally:
        srv.discard()
    per_request = a.puts if script == "txn100.lua" else 1
    return {"fsync": fsync, "mode": "txn" if per_request > 1 else "put", "rps": round(r.rps, 1),
            "keys_per_s": round(r.rps * per_request, 1), "p50_ms": r.p50_ms, "p99_ms": r.p99_ms,
            "non_2xx": r.non_2xx, "socket_errors": r.socket_errors,
            "server_cpu_pct": round(r.server_cpu_pct, 1), "wrk_cpu_pct": round(r.wrk_cpu_pct, 1),
            "other_cpu_pct": round(r.other_cpu_pct, 1), "wrk_output": r.raw}


def main(argv: list[str]) -> int:
    a = parse_args(argv)
    started = dt.datetime.now()
    rows = []
    for fsync in [m for m in a.fsync.split(",") if m]:
        for rnd in range(1, a.rounds + 1):
            for script in ("put.lua", "txn100.lua"):
                row = one_run(a, fsync, script)
                row["round"] = rnd
                rows.append(row)
                print(f"  {fsync:<7} #{rnd} {row['mode']:<4} {row['rps']:>10,.0f} req/s "
                      f"{row['keys_per_s']:>12,.0f} keys/s  p99 {row['p99_ms']} ms"
                      f"{'  NON2XX=' + str(row['non_2xx']) if row['non_2xx'] else ''}", flush=True)
    head = ["fsync", "round", "mode", "req/s", "keys/s", "p50 ms", "p99 ms", "srv CPU%", "other%", "x put"]
    body, ratios = [], {}
    for r in rows:
        put = next(x for x in rows if x["fsync"] == r["fsync"] and x["round"] == r["round"] and x["mode"] == "put")
        ratio = r["keys_per_s"] / put["keys_per_s"] if put["keys_per_s"] else 0
        if r["mode"] == "txn":
            ratios.setdefault(r["fsync"], []).append(ratio)
        body.append([r["fsync"], str(r["round"]), r["mode"], f"{r['rps']:,.0f}", f"{r['keys_per_s']:,.0f}",
                     f"{r['p50_ms']}", f"{r['p99_ms']}", f"{r['server_cpu_pct']:.0f}",
                     f"{r['other_cpu_pct']:.0f}", "ref" if r["mode"] == "put" else f"{ratio:.1f}"])
    text = render(head, body, right={1, 3, 4, 5, 6, 7, 8, 9})
    for fsync, rs in ratios.items():
        text += f"\n{fsync}: txn keys/s over PUT keys/s, median of {len(rs)}: {statistics.median(rs):.1f}x"
    print()
    print(text)
    res = {"started": started.isoformat(timespec="seconds"), "settings": vars(a), "results": rows,
           "table": text}
    print(f"\nresults: {dodo.write_results(res, a.out, 'txn', started)}")
    return 1 if any(r["non_2xx"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
