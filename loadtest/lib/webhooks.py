"""Webhook figures behind loadtest/webhooks (which installs wrk and builds DodoDB and
the ceiling first). See loadtest/README.md.

1. The receiver alone: the ceiling binary answers POST with 200; wrk POSTs an
   event-sized payload to it for --duration seconds: its own maximum req/s.
2. For each case, a fresh DodoDB (--fsync never) gets its subscriptions, then wrk PUTs
   the 100-byte value to random keys k0..k99999 for --duration seconds. Reported: PUT
   req/s, and from /system/stats the events delivered, dropped, retried and failed,
   and the delivery rate: events delivered ÷ (load time + time to drain the queue).
   The server's CPU time from the start of the load to the end of the drain gives
   PUTs per server core-second (no subscriber) and delivered events per server
   core-second: the case's CPU time less what its PUTs cost at the no-subscriber
   rate, divided into the events delivered.
   Cases: no subscriber; 1, 10 and 100 subscribers of prefix "k" (every PUT is an
   event for each) on the fast receiver; one dead subscriber (connection refused);
   one hanging subscriber (accepts, never answers).
With --pin, DodoDB runs on core 0; wrk and the receiver share core 1.

With --dead-events N, only this instead: one dead subscriber (connection refused) on a
fresh DodoDB while wrk PUTs until N events are due to it; the server's RSS is sampled
every 0.5 s and reported at each tenth of N (the events wait in the log, not in RAM).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import socket
import subprocess
import sys
import threading
import time

import dodo


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="loadtest/webhooks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=10, help="seconds of load per case (default 10)")
    p.add_argument("--conns", type=int, default=32, help="wrk connections (default 32)")
    p.add_argument("--pin", action="store_true", help="DodoDB on core 0; wrk and receiver on core 1")
    p.add_argument("--cases", default="none,1,10,100,dead,hanging",
                   help="comma-separated subset of none,1,10,100,dead,hanging")
    p.add_argument("--drain-timeout", type=float, default=60,
                   help="longest wait for the queue to drain (live receivers only; default 60)")
    p.add_argument("--dead-events", type=int, default=0,
                   help="only measure RSS while this many events pile up for a dead subscriber")
    p.add_argument("--dododb-bin", default=dodo.DODODB_BIN)
    p.add_argument("--ceiling-bin", default=dodo.CEILING_BIN)
    p.add_argument("--out", default=None)
    p.add_argument("--no-build", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def webhook_stats(url: str) -> dict:
    status, body = dodo.http_request(url, path="/system/stats")
    if status != 200:
        raise RuntimeError(f"/system/stats answered {status}: {body[:200]!r}")
    return json.loads(body)["webhooks"]


def subscribe(url: str, callback: str) -> str:
    """Subscribes `callback` to the keys the load writes; returns the subscription's id."""
    body = json.dumps({"prefix": "k", "callback_url": callback})
    status, answer = dodo.http_request(url, "POST", "/pubsub/subscribe", body)
    if status not in (200, 201):
        raise RuntimeError(f"subscribe answered {status}: {answer[:200]!r}")
    return json.loads(answer)["id"]


class HangingReceiver:
    """Accepts connections and never answers (a subscriber that hangs)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hang"
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for c in self.held:
            c.close()


def callbacks_for(case: str, receiver_url: str, hanging: HangingReceiver | None) -> list[str]:
    if case == "none":
        return []
    if case == "dead":
        return [f"http://127.0.0.1:{dodo.free_port()}/dead"]
    if case == "hanging":
        assert hanging is not None
        return [hanging.url]
    return [f"{receiver_url}/hook{i}" for i in range(int(case))]


def run_case(args, case: str, receiver_url: str, hanging, cpu_db, cpu_load) -> dict:
    server = dodo.start_dododb(args.dododb_bin, "never", tag=f"dododb-webhooks-{case}",
                               extra=["--snapshot-interval", "0"], cpu=cpu_db)
    try:
        for callback in callbacks_for(case, receiver_url, hanging):
            subscribe(server.url, callback)
        before = webhook_stats(server.url)
        ticks0 = dodo.cpu_ticks(server.pid)
        r = dodo.run_wrk(server.url, "put.lua", conns=args.conns, duration=args.duration,
                         cpu=cpu_load, server_pid=server.pid)
        load_done = time.monotonic()
        during = webhook_stats(server.url)
        after = during
        drained = True
        # A dead or hanging subscriber keeps retrying for minutes: don't wait for it.
        timeout = args.drain_timeout if case not in ("dead", "hanging") else 0
        while after["queue_depth"] or after["in_flight"]:
            if time.monotonic() - load_done > timeout:
                drained = False
                break
            time.sleep(0.05)
            after = webhook_stats(server.url)
        drain_s = time.monotonic() - load_done
        server_cpu_s = (dodo.cpu_ticks(server.pid) - ticks0) / dodo.CLK_TCK
        delivered = after["delivered"] - before["delivered"]
        return {
            "case": case,
            "subscribers": len(callbacks_for(case, receiver_url, hanging)) if case not in ("dead", "hanging") else 1,
            "put_rps": r.rps, "p99_ms": r.p99_ms or 0.0, "errors": r.errors,
            "events_delivered": delivered,
            "delivered_during_load": during["delivered"] - before["delivered"],
            "dropped": after["dropped"] - before["dropped"],
            "retried": after["retried"] - before["retried"],
            "failed": after["failed"] - before["failed"],
            "drain_s": round(drain_s, 2), "drained": drained,
            "delivered_per_s": delivered / (r.duration_s + drain_s) if delivered else 0.0,
            "server_cpu_pct": r.server_cpu_pct, "other_cpu_pct": r.other_cpu_pct,
            "puts": r.requests, "server_cpu_s": round(server_cpu_s, 2),
        }
    finally:
        server.discard()


def dead_rss(args, cpu_db, cpu_load) -> int:
    server = dodo.start_dododb(args.dododb_bin, "never", tag="dododb-webhooks-dead-rss",
                               extra=["--snapshot-interval", "0"], cpu=cpu_db)
    wrk = None
    try:
        sub = subscribe(server.url, callbacks_for("dead", "", None)[0])

        def revision() -> int:
            _, body = dodo.http_request(server.url, path="/system/stats")
            return json.loads(body)["revision"]

        start_rev = revision()
        samples = [(0, dodo.rss_kib(server.pid))]
        wrk = subprocess.Popen(
            dodo.pinned(dodo.wrk_cmd(server.url, "put.lua", args.conns, 3600, 1, latency=False),
                        cpu_load),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=dodo.WRK_DIR,
            env=dodo.wrk_env(100_000))
        step = max(1, args.dead_events // 10)
        t0 = time.monotonic()
        while True:
            events = revision() - start_rev
            rss = dodo.rss_kib(server.pid)
            if events >= samples[-1][0] + step or events >= args.dead_events:
                samples.append((events, rss))
                print(f"  {events:>9,} events due  RSS {dodo.mib(rss):7.1f} MiB", flush=True)
            if events >= args.dead_events:
                break
            time.sleep(0.5)
        wrk.terminate()
        wrk.wait()
        wrk = None
        load_s = time.monotonic() - t0
        _, body = dodo.http_request(server.url, path=f"/pubsub/subscriptions/{sub}")
        state = json.loads(body)
        samples.append((samples[-1][0], dodo.rss_kib(server.pid)))
        first = next((kib for ev, kib in samples if ev >= step), samples[0][1])
        print(f"\n{samples[-1][0]:,} events for a dead subscriber in {load_s:.0f} s: "
              f"RSS {dodo.mib(samples[0][1]):.1f} MiB before, {dodo.mib(first):.1f} MiB at "
              f"{step:,}, {dodo.mib(samples[-1][1]):.1f} MiB at the end "
              f"(subscription: status {state.get('status')}, pending {state.get('pending')}, "
              f"cursor {state.get('cursor')})")
        return 0
    finally:
        if wrk is not None:
            wrk.kill()
        server.discard()


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    cpu_db, cpu_load = (0, 1) if args.pin else (None, None)
    if args.dead_events:
        return dead_rss(args, cpu_db, cpu_load)
    started = dt.datetime.now(dt.timezone.utc)
    receiver = dodo.start_server("receiver", [args.ceiling_bin, "--listen", "127.0.0.1:0"], cpu=cpu_load)
    hanging = HangingReceiver()
    try:
        alone = dodo.run_wrk(receiver.url, "post.lua", conns=args.conns, duration=args.duration,
                             cpu=cpu_db, server_pid=receiver.pid)
        print(f"receiver alone: {alone.rps:,.0f} POST/s (wrk -c{args.conns}), errors {alone.errors}",
              flush=True)
        rows = []
        for case in args.cases.split(","):
            print(f"case {case} ...", flush=True)
            rows.append(run_case(args, case, receiver.url, hanging, cpu_db, cpu_load))
    finally:
        receiver.stop()
        hanging.close()
    base = next((r["put_rps"] for r in rows if r["case"] == "none"), None)
    none = next((r for r in rows if r["case"] == "none" and r["puts"]), None)
    cpu_per_put = none["server_cpu_s"] / none["puts"] if none else None
    for r in rows:
        r["puts_per_core_s"] = r["puts"] / r["server_cpu_s"] if r["server_cpu_s"] else 0.0
        delivery_cpu_s = r["server_cpu_s"] - r["puts"] * cpu_per_put if cpu_per_put else 0.0
        r["events_per_core_s"] = (r["events_delivered"] / delivery_cpu_s
                                  if r["events_delivered"] and delivery_cpu_s > 0 else 0.0)
    header = (f"{'case':<8} {'PUT/s':>8} {'x none':>6} {'p99 ms':>7} {'delivered':>9} "
              f"{'deliv/s':>8} {'x recv':>6} {'dropped':>8} {'retried':>7} {'failed':>6} {'drain s':>7} "
              f"{'cpu s':>6} {'PUT/core-s':>10} {'ev/core-s':>9}")
    lines = [header, "-" * len(header)]
    for r in rows:
        ratio = f"{r['put_rps'] / base:.2f}" if base else "-"
        recv = f"{r['delivered_per_s'] / alone.rps:.2f}" if r["events_delivered"] else "-"
        lines.append(
            f"{r['case']:<8} {r['put_rps']:>8,.0f} {ratio:>6} {r['p99_ms']:>7.2f} "
            f"{r['events_delivered']:>9,} {r['delivered_per_s']:>8,.0f} {recv:>6} {r['dropped']:>8,} "
            f"{r['retried']:>7,} {r['failed']:>6,} {r['drain_s']:>7.2f} "
            f"{r['server_cpu_s']:>6.1f} {r['puts_per_core_s']:>10,.0f} {r['events_per_core_s']:>9,.0f}")
    table = "\n".join(lines)
    print(f"\nreceiver alone: {alone.rps:,.0f} POST/s\n{table}")
    res = {"started": started.isoformat(), "settings": vars(args), "receiver_alone_rps": alone.rps,
           "table": table, "results": rows}
    print(f"\nresults: {dodo.write_results(res, args.out, 'webhooks', started)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
