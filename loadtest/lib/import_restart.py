"""Import time against restart time, and peak RSS while importing, behind
loadtest/import (which builds DodoDB first). See loadtest/README.md.

1. Writes N entries (default 1M; keys k<i>, the 100-byte JSON value) as JSON lines.
2. A fresh DodoDB (--fsync always by default) on a temporary data dir:
   POST /system/import of that file, timed from the first byte sent to the answer,
   with RSS sampled every 10 ms meanwhile (peak) and settled 1 s after (final).
3. POST /system/snapshot on that server, timed (the answer comes once the file is
   on disk, fsync included), with peak RSS sampled meanwhile.
4. GET /system/export of the same server to a file (a real export, with its header
   and checksum trailer), then SIGTERM (which writes a final snapshot) and a restart
   on the same data dir, timed until GET /system/alive answers 200; --restarts times
   (3 by default), and the ratios use the median.
5. A second fresh DodoDB: POST /system/import of the real export, timed the same way.

Ratios in the summary: import seconds / median restart seconds (same data, one run), and
peak RSS while importing / RSS after; the snapshot and restart seconds beside their
targets (1 s and 1.5 s at 1M keys). The load average is recorded before and after.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import os
import signal
import statistics
import sys
import time
import urllib.parse

import dodo


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="loadtest/import", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keys", type=int, default=1_000_000, help="entries (default 1000000)")
    p.add_argument("--fsync", default="always", help="--fsync of the servers (default always)")
    p.add_argument("--restarts", type=int, default=3,
                   help="restarts timed; the ratios use their median (default 3)")
    p.add_argument("--tmp-dir", default=None, help="where data dirs and files go (a real disk)")
    p.add_argument("--dododb-bin", default=dodo.DODODB_BIN)
    p.add_argument("--out", default=None, help="results JSON (default loadtest/results/import-<timestamp>.json)")
    p.add_argument("--no-build", action="store_true", help=argparse.SUPPRESS)  # read by the wrapper
    return p.parse_args(argv)


def say(msg: str) -> None:
    print(msg, flush=True)


def write_entries(path: str, keys: int) -> int:
    with open(path, "wb") as f:
        for start in range(0, keys, 100_000):
            f.write(b"".join(b'{"key":"k%d","value":%s}\n' % (i, dodo.BODY.encode())
                             for i in range(start, min(start + 100_000, keys))))
    return os.path.getsize(path)


def post_file(url: str, path: str) -> tuple[int, bytes]:
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=3600, blocksize=1 << 20)
    try:
        with open(path, "rb") as f:
            conn.request("POST", "/system/import", body=f,
                         headers={"Content-Length": str(os.path.getsize(path)),
                                  "Content-Type": "application/x-ndjson"})
            resp = conn.getresponse()
            return resp.status, resp.read()
    finally:
        conn.close()


def get_to_file(url: str, path: str, out: str) -> int:
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=3600)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        with open(out, "wb") as f:
            while chunk := resp.read(1 << 20):
                f.write(chunk)
        return resp.status
    finally:
        conn.close()


def timed_import(a: argparse.Namespace, name: str, path: str) -> tuple[dict, dodo.Server]:
    # An import of 1M entries may outlast the default 30 s request deadline on a
    # busy host; the deadline would answer 503 while the import goes on.
    srv = dodo.start_dododb(a.dododb_bin, a.fsync, tag=name, tmp_dir=a.tmp_dir,
                            extra=["--request-timeout-secs", "3600"])
    empty = dodo.settled_rss(srv.pid, 0.5)
    with dodo.PeakRss(srv.pid) as peak:
        t0 = time.monotonic()
        status, body = post_file(srv.url, path)
        seconds = time.monotonic() - t0
    final = dodo.settled_rss(srv.pid)
    n = dodo.count_keys(srv.url)
    answer = body.decode(errors="replace").strip()
    say(f"{name}: POST /system/import -> {status} in {seconds:.2f} s ({a.keys / seconds:,.0f} keys/s): "
        f"{answer[:200]}; /kv/count = {n:,}")
    say(f"{name}: RSS empty {dodo.mib(empty):.1f} MiB, peak while importing {dodo.mib(peak.peak):.1f} MiB, "
        f"after {dodo.mib(final):.1f} MiB (peak / after = {peak.peak / final:.2f})")
    return ({"status": status, "seconds": round(seconds, 3), "answer": answer, "count": n,
             "rss_empty_kib": empty, "rss_peak_kib": peak.peak, "rss_final_kib": final,
             "peak_over_final": round(peak.peak / final, 3), "samples": peak.samples},
            srv)


def main(argv: list[str]) -> int:
    a = parse_args(argv)
    started = dt.datetime.now()
    work = dodo.make_data_dir(a.tmp_dir, "import-files")
    res = {"started": started.isoformat(timespec="seconds"), "keys": a.keys, "fsync": a.fsync,
           "loadavg_before": os.getloadavg()}
    say("load average before: " + " ".join(f"{x:.2f}" for x in res["loadavg_before"]))
    servers = []
    try:
        lines = os.path.join(work, "entries.jsonl")
        size = write_entries(lines, a.keys)
        say(f"import: {a.keys:,} entries x {len(dodo.BODY)}-byte values, {size / 2**20:.1f} MiB of JSON lines, "
            f"--fsync {a.fsync}")
        res["plain"], srv = timed_import(a, "import-plain", lines)
        servers.append(srv)
        with dodo.PeakRss(srv.pid) as peak:
            t0 = time.monotonic()
            status, body = dodo.http_request(srv.url, "POST", "/system/snapshot", timeout=600)
            snapshot_s = time.monotonic() - t0
        say(f"snapshot: POST /system/snapshot -> {status} in {snapshot_s * 1000:.0f} ms, peak RSS "
            f"{dodo.mib(peak.peak):.1f} MiB: {body.decode(errors='replace').strip()[:200]}")
        res["snapshot"] = {"status": status, "seconds": round(snapshot_s, 3), "rss_peak_kib": peak.peak}
        export = os.path.join(work, "export.jsonl")
        status = get_to_file(srv.url, "/system/export", export)
        say(f"export: GET /system/export -> {status}, {os.path.getsize(export) / 2**20:.1f} MiB")
        # One restart moved by a third between runs on a quiet host, so the
        # ratios use the median of a few, each after SIGTERM's final snapshot.
        each = []
        for i in range(max(1, a.restarts)):
            stop_s = srv.stop(signal.SIGTERM, timeout=600)
            srv, _, alive_s = dodo.restart_timed(srv, f"restart{i + 1}")
            servers.append(srv)
            n = dodo.count_keys(srv.url)
            each.append(alive_s)
            say(f"restart {i + 1}: SIGTERM took {stop_s * 1000:.0f} ms (final snapshot); restart to alive "
                f"{alive_s * 1000:.0f} ms, /kv/count = {n:,}")
        restart_s = statistics.median(each)
        res["restart"] = {"sigterm_exit_seconds": round(stop_s, 3), "alive_seconds": round(restart_s, 3),
                          "alive_seconds_each": [round(x, 3) for x in each], "count": n}
        srv.stop()
        res["export"], srv2 = timed_import(a, "import-export", export)
        servers.append(srv2)
        say("")
        say("summary")
        for name in ("plain", "export"):
            r = res[name]
            res[name]["over_restart"] = round(r["seconds"] / restart_s, 2)
            say(f"  import of {name + ' lines':<14} {r['seconds']:7.2f} s = {r['seconds'] / restart_s:5.2f} x restart; "
                f"peak RSS {r['peak_over_final']:.2f} x final")
        say(f"  snapshot (POST)        {snapshot_s:7.2f} s   (target <= 1 s at 1M keys)")
        say(f"  restart from snapshot  {restart_s:7.2f} s   (target <= 1.5 s at 1M keys; median of "
            f"{len(each)}: " + ", ".join(f"{x:.2f}" for x in each) + ")")
        res["loadavg_after"] = os.getloadavg()
        say("  load average after: " + " ".join(f"{x:.2f}" for x in res["loadavg_after"]))
    finally:
        for srv in servers:
            srv.discard()
        dodo.remove_dir(work)
    say(f"\nresults: {dodo.write_results(res, a.out, 'import', started)}")
    return 0 if res.get("plain", {}).get("status") == 200 and res.get("export", {}).get("status") == 200 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
