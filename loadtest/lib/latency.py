"""p99 at half the maximum rate, DodoDB against the HTTP ceiling (issue 4's latency
target). wrk saturates, so it cannot say what latency looks like below saturation;
oha can pace (-q) and corrects for coordinated omission (--latency-correction).

For each scenario and connection count:
1. DodoDB (--fsync never, fresh data dir, keys preloaded) under wrk: its maximum rate.
2. Half of that rate is offered with oha, for the same duration, to the ceiling and to
   DodoDB (each fresh, DodoDB preloaded), interleaved --rounds times.
3. One table: offered rate, achieved rate, p50/p99/p99.9 and DodoDB's p99 over the
   ceiling's p99 at the same rate. JSON in loadtest/results/latency-<timestamp>.json.

Pinned (--pin): servers on core 0, wrk and oha on core 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile

import dodo
import run

# scenario -> (HTTP method, URL path or "random", body or None)
SCENARIOS = {
    "get_hot": ("GET", "/kv/k0", None),
    "put": ("PUT", "random", dodo.BODY),
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="loadtest/latency", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=10, help="seconds per measured run (default 10)")
    p.add_argument("--warmup", type=float, default=2, help="seconds of load before each run (default 2)")
    p.add_argument("--pin", action="store_true", help="servers on core 0, wrk and oha on core 1")
    p.add_argument("--conns", default="32", help="comma-separated connection counts (default 32)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"subset of {','.join(SCENARIOS)}")
    p.add_argument("--fraction", type=float, default=0.5, help="share of the maximum rate offered (default 0.5)")
    p.add_argument("--rounds", type=int, default=2, help="ceiling/DodoDB pairs per case, interleaved (default 2)")
    p.add_argument("--keys", type=int, default=100_000, help="keys preloaded and addressed (default 100000)")
    p.add_argument("--tmp-dir", default=None)
    p.add_argument("--dododb-bin", default=dodo.DODODB_BIN)
    p.add_argument("--ceiling-bin", default=dodo.CEILING_BIN)
    p.add_argument("--out", default=None)
    p.add_argument("--no-build", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.conns = [int(c) for c in a.conns.split(",") if c]
    a.scenarios = [s for s in a.scenarios.split(",") if s]
    for s in a.scenarios:
        if s not in SCENARIOS:
            p.error(f"unknown scenario {s!r}")
    # What run.start() reads.
    a.fake_dododb, a.dododb_arg = False, []
    return a


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fresh(a: argparse.Namespace, server: str, tag: str) -> dodo.Server:
    """A started server; DodoDB with its keys preloaded."""
    srv = run.start(a, server, tag)
    if server != "ceiling":
        dodo.preload_wrk(srv.url, a.keys, cpu=1 if a.pin else None)
    return srv


def stop(srv: dodo.Server) -> None:
    srv.discard()


def oha_cmd(a: argparse.Namespace, scenario: str, url: str, conns: int, rate: float,
            seconds: float, urls_file: str) -> list[str]:
    method, path, body = SCENARIOS[scenario]
    cmd = ["oha", "--no-tui", "--output-format", "json", "-z", f"{max(1, round(seconds))}s",
           "-c", str(conns), "-q", str(round(rate)), "--latency-correction", "-m", method]
    if body is not None:
        cmd += ["-d", body, "-T", "application/json"]
    if path == "random":
        cmd += ["--urls-from-file", urls_file]
    else:
        cmd.append(url + path)
    return dodo.pinned(cmd, 1 if a.pin else None)


def write_urls(url: str, keys: int) -> str:
    fd, path = tempfile.mkstemp(prefix="dododb-latency-urls-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        for i in range(keys):
            f.write(f"{url}/kv/k{i}\n")
    return path


def paced(a: argparse.Namespace, scenario: str, server: str, conns: int, rate: float) -> dict:
    srv = fresh(a, server, f"latency-{server}-{scenario}-{conns}")
    urls = write_urls(srv.url, a.keys)
    try:
        if a.warmup > 0:
            subprocess.run(oha_cmd(a, scenario, srv.url, conns, rate, a.warmup, urls),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        out = subprocess.run(oha_cmd(a, scenario, srv.url, conns, rate, a.duration, urls),
                             capture_output=True, text=True, check=False)
        if srv.proc.poll() is not None:
            raise RuntimeError(f"{server} exited during the run:\n{srv.log_tail()}")
        if out.returncode != 0:
            raise RuntimeError(f"oha failed ({out.returncode}): {out.stderr[-2000:]}")
        d = json.loads(out.stdout)
    finally:
        os.remove(urls)
        stop(srv)
    pct = d["latencyPercentiles"]
    codes = d.get("statusCodeDistribution", {})
    good = sum(n for code, n in codes.items() if code.startswith("2"))
    return {
        "scenario": scenario, "server": server, "connections": conns, "offered_rps": round(rate),
        "achieved_rps": round(d["summary"]["requestsPerSec"], 1),
        "success_rate": d["summary"]["successRate"], "ok_2xx": good,
        "other_status": {c: n for c, n in codes.items() if not c.startswith("2")},
        "errors": d.get("errorDistribution", {}),
        "p50_ms": pct["p50"] * 1000, "p99_ms": pct["p99"] * 1000, "p999_ms": pct["p99.9"] * 1000,
    }


def max_rate(a: argparse.Namespace, scenario: str, conns: int) -> float:
    srv = fresh(a, "dododb-never", f"latency-max-{scenario}-{conns}")
    try:
        script = run.SCENARIOS[scenario]
        cpu = 1 if a.pin else None
        dodo.run_wrk(srv.url, script, conns=conns, duration=a.warmup, keys=a.keys, cpu=cpu)
        r = dodo.run_wrk(srv.url, script, conns=conns, duration=a.duration, keys=a.keys,
                         cpu=cpu, server_pid=srv.pid)
    finally:
        stop(srv)
    return r.rps


def table(rows: list[dict]) -> str:
    head = ["scenario", "conns", "offered/s", "server", "achieved/s", "p50 ms", "p99 ms", "p99.9 ms",
            "p99 x ceiling", "non-2xx/errors"]
    body = []
    for r in rows:
        bad = sum(r["other_status"].values()) + sum(r["errors"].values())
        ratio = "ref" if r["server"] == "ceiling" else f"{r.get('p99_ratio', float('nan')):.2f}"
        body.append([r["scenario"], str(r["connections"]), f"{r['offered_rps']:,}", r["server"],
                     f"{r['achieved_rps']:,.0f}", f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}",
                     f"{r['p999_ms']:.3f}", ratio, str(bad)])
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(head, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in body]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    a = parse_args(argv)
    started = dt.datetime.now()
    rows, cases = [], []
    for conns in a.conns:
        for scenario in a.scenarios:
            top = max_rate(a, scenario, conns)
            rate = top * a.fraction
            say(f"latency: {scenario} c{conns}: DodoDB maximum {top:,.0f} req/s (wrk); offering {rate:,.0f}/s")
            case = {"scenario": scenario, "connections": conns, "dododb_max_rps": round(top, 1),
                    "offered_rps": round(rate)}
            for _ in range(a.rounds):
                pair = [paced(a, scenario, s, conns, rate) for s in ("ceiling", "dododb-never")]
                pair[1]["p99_ratio"] = round(pair[1]["p99_ms"] / pair[0]["p99_ms"], 3)
                for r in pair:
                    say(f"  {r['server']:<13} achieved {r['achieved_rps']:>9,.0f}/s  "
                        f"p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms")
                rows += pair
            ratios = sorted(r["p99_ratio"] for r in rows if r.get("p99_ratio") and
                            r["scenario"] == scenario and r["connections"] == conns)
            case["p99_ratio_median"] = ratios[len(ratios) // 2]
            cases.append(case)
    print(table(rows))
    for c in cases:
        print(f"{c['scenario']} c{c['connections']}: at {c['offered_rps']:,}/s "
              f"(half of DodoDB's {c['dododb_max_rps']:,.0f}/s) DodoDB p99 / ceiling p99 = "
              f"{c['p99_ratio_median']:.2f} (median of {a.rounds})")
    res = {"started": started.isoformat(timespec="seconds"), "pinned": a.pin, "duration_s": a.duration,
           "fraction": a.fraction, "cases": cases, "rows": rows}
    print(f"results: {dodo.write_results(res, a.out, 'latency', started)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
