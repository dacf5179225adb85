"""A 3-node cluster against a single server, in one run, behind loadtest/cluster
(which installs wrk and builds DodoDB first). See loadtest/README.md.

For each round: a fresh single server (--fsync always by default) preloaded with the
keys, wrk's put.lua and get_random.lua against it; then three fresh members on
127.0.0.1 (--node-id 1..3, the same --fsync), made one group, preloaded through the
leader, and wrk's put.lua against the leader, get_random.lua against the leader
(linearizable reads: the read index) and get_random.lua with ?consistency=stale against
a follower. Ratios are cluster req/s over single-server req/s of the same round. Nothing
is pinned: the three members, the single server and wrk share this machine's cores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time

import dodo
from run import render


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="loadtest/cluster", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=10, help="seconds measured per run (default 10)")
    p.add_argument("--warmup", type=float, default=2, help="seconds of unmeasured load first (default 2)")
    p.add_argument("--conns", type=int, default=256, help="connections (default 256)")
    p.add_argument("--fsync", default="always", help="every server's --fsync (default always)")
    p.add_argument("--rounds", type=int, default=1, help="single/cluster pairs (default 1)")
    p.add_argument("--keys", type=int, default=100_000, help="keys preloaded and addressed (default 100000)")
    p.add_argument("--wrk-threads", type=int, default=2)
    p.add_argument("--tmp-dir", default=None, help="parent of the data dirs (a real disk for --fsync always)")
    p.add_argument("--member-args", default="",
                   help='more flags for each member, e.g. "--raft-heartbeat-ms 100 --raft-election-ms 500"')
    p.add_argument("--dododb-bin", default=dodo.DODODB_BIN)
    p.add_argument("--out", default=None, help="results JSON (default loadtest/results/cluster-<timestamp>.json)")
    p.add_argument("--no-build", action="store_true", help=argparse.SUPPRESS)  # read by the wrapper
    return p.parse_args(argv)


def measure(a: argparse.Namespace, url: str, script: str, pid: int, query: str = "") -> dict:
    os.environ["DODO_GET_QUERY"] = query
    try:
        if a.warmup > 0:
            dodo.run_wrk(url, script, conns=a.conns, duration=a.warmup, threads=a.wrk_threads,
                         keys=a.keys)
        r = dodo.run_wrk(url, script, conns=a.conns, duration=a.duration, threads=a.wrk_threads,
                         keys=a.keys, server_pid=pid)
    finally:
        os.environ.pop("DODO_GET_QUERY", None)
    if r.exit_code != 0 or r.non_2xx or r.requests == 0:
        raise RuntimeError(f"{script} on {url}: wrk failed or counted errors:\n{r.raw}")
    return {"rps": round(r.rps, 1), "p50_ms": r.p50_ms, "p99_ms": r.p99_ms,
            "other_cpu_pct": round(r.other_cpu_pct, 1), "wrk_output": r.raw}


def single(a: argparse.Namespace) -> dict:
    data_dir = dodo.make_data_dir(a.tmp_dir, "single")
    srv = dodo.start_server("dododb-single", dodo.dododb_cmd(a.dododb_bin, data_dir, a.fsync),
                            data_dir=data_dir)
    try:
        dodo.preload_wrk(srv.url, a.keys, threads=a.wrk_threads)
        return {"put": measure(a, srv.url, "put.lua", srv.pid),
                "get": measure(a, srv.url, "get_random.lua", srv.pid)}
    finally:
        srv.stop()
        dodo.remove_dir(data_dir)


def status(url: str) -> dict:
    code, body = dodo.http_request(url, "GET", "/cluster/status")
    if code != 200:
        raise RuntimeError(f"{url}/cluster/status: {code} {body!r}")
    return json.loads(body)


def cluster(a: argparse.Namespace) -> dict:
    members, dirs = [], []
    try:
        for node in (1, 2, 3):
            data_dir = dodo.make_data_dir(a.tmp_dir, f"member{node}")
            dirs.append(data_dir)
            cmd = dodo.dododb_cmd(a.dododb_bin, data_dir, a.fsync, ["--node-id", str(node), *a.member_args.split()])
            members.append(dodo.start_server(f"dododb-member{node}", cmd, data_dir=data_dir))
        body = json.dumps({"members": {str(i + 1): {"url": m.url} for i, m in enumerate(members)}})
        code, answer = dodo.http_request(members[0].url, "POST", "/cluster/init", body, timeout=60)
        if code != 200:
            raise RuntimeError(f"/cluster/init: {code} {answer!r}")
        deadline = time.monotonic() + 30
        while True:
            leader_id = status(members[0].url).get("leader_id")
            if leader_id and status(members[leader_id - 1].url).get("role") == "leader":
                break
            if time.monotonic() > deadline:
                raise RuntimeError("no leader within 30 s")
            time.sleep(0.1)
        leader = members[leader_id - 1]
        follower = members[leader_id % 3]
        term = status(leader.url)["term"]
        dodo.preload_wrk(leader.url, a.keys, threads=a.wrk_threads)
        result = {"leader": leader_id,
                  "put": measure(a, leader.url, "put.lua", leader.pid),
                  "get_leader": measure(a, leader.url, "get_random.lua", leader.pid),
                  "get_stale_follower": measure(a, follower.url, "get_random.lua", follower.pid,
                                                "?consistency=stale")}
        # A term that moved under load means a follower started an election (the
        # timing flags are too tight for this machine's load): say so with the figures.
        after = status(leader.url)
        result["elections"] = after["term"] - term
        result["leader_after"] = after.get("leader_id")
        return result
    finally:
        for m in members:
            m.stop()
        for d in dirs:
            dodo.remove_dir(d)


def main(argv: list[str]) -> int:
    a = parse_args(argv)
    started = dt.datetime.now()
    rounds = []
    for n in range(1, a.rounds + 1):
        one = single(a)
        three = cluster(a)
        rounds.append({"round": n, "single": one, "cluster": three})
        print(f"  round {n}: single PUT {one['put']['rps']:,.0f} GET {one['get']['rps']:,.0f}; "
              f"cluster PUT {three['put']['rps']:,.0f} GET leader {three['get_leader']['rps']:,.0f} "
              f"GET stale follower {three['get_stale_follower']['rps']:,.0f} req/s; "
              f"elections during the load {three['elections']}", flush=True)
    rows = []
    for label, mine, theirs in (("PUT on the leader", "put", "put"),
                                ("GET (linearizable) on the leader", "get_leader", "get"),
                                ("GET ?consistency=stale on a follower", "get_stale_follower", "get")):
        for r in rounds:
            c, s = r["cluster"][mine], r["single"][theirs]
            rows.append([label, str(r["round"]), f"{s['rps']:,.0f}", f"{c['rps']:,.0f}",
                         f"{c['rps'] / s['rps']:.2f}", f"{s['p99_ms']}", f"{c['p99_ms']}"])
    table = render(["scenario", "round", "single req/s", "cluster req/s", "x single",
                    "single p99 ms", "cluster p99 ms"], rows, {2, 3, 4, 5, 6})
    print(f"\n--fsync {a.fsync}, {a.conns} connections, {a.keys} keys, wrk -t{a.wrk_threads}, "
          f"nothing pinned (3 members + wrk on this machine's cores)\n")
    print(table)
    elections = [r["cluster"]["elections"] for r in rounds]
    print(f"\nelections while the cluster was under load (term changes), per round: {elections}")
    out = a.out or os.path.join(dodo.LOADTEST, "results",
                                f"cluster-{started.strftime('%Y%m%d-%H%M%S')}.json")
    with open(out, "w") as f:
        json.dump({"started": started.isoformat(), "settings": {k: v for k, v in vars(a).items()},
                   "rounds": rounds, "table": table}, f, indent=1)
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
