#!/usr/bin/env python3
"""Overload: a CRM that works on N calls at once, behind permgate, under 10x that load.

Issue 14 item 6. Everything on 127.0.0.1, all children of this script (stopped by pid):

- the CRM: an HTTP/1.1 keep-alive server (asyncio, its own process: this script with
  --crm) with N workers: each call takes --work-ms of work; more calls queue inside the CRM (as
  a thread pool with a backlog). It records how many connections were open at once, how many
  calls it worked on at once and how many waited for a worker.
- permgate (`serve`, the demo config, `upstream.max_connections = N`, its queue and queue
  timeout as given), then the same with `max_connections = 0` (no cap) to compare.
- the load: 10 x N keep-alive client connections in a closed loop (asyncio, in this process)
  calling the demo's public route for --duration seconds; status, latency per call. A client
  refused with 503 pauses --refused-pause-ms before its next call (a client that would retry
  at once only measures how fast Python can loop).

Without the bench harness (no release build of permgate-bench needed): any permgate binary
(`--permgate-bin`, default target/release/permgate, else target/debug/permgate).

    python3 bench/overload.py --n 10 --duration 10
"""

import argparse
import asyncio
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent


class Crm:
    def __init__(self, workers, work):
        self.workers = asyncio.Semaphore(workers)
        self.work = work
        self.open = self.max_open = 0
        self.busy = self.max_busy = 0
        self.waiting = self.max_waiting = 0
        self.calls = 0

    async def serve(self, reader, writer):
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    break
                self.waiting += 1
                self.max_waiting = max(self.max_waiting, self.waiting)
                async with self.workers:
                    self.waiting -= 1
                    self.busy += 1
                    self.max_busy = max(self.max_busy, self.busy)
                    await asyncio.sleep(self.work)
                    self.busy -= 1
                self.calls += 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open -= 1
            writer.close()


async def crm_main(args):
    crm = Crm(args.n, args.work_ms / 1000)
    server = await asyncio.start_server(crm.serve, "127.0.0.1", 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    # A line on stdin: reset the counters (the measured phase starts); EOF: print them, stop.
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        crm.max_open = crm.open
        crm.max_busy = crm.max_waiting = crm.calls = 0
    print(crm.max_open, crm.max_busy, crm.max_waiting, crm.calls, flush=True)
    server.close()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def client(port, until, results, pause=0.0):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = b"GET /__crm/health HTTP/1.1\r\nHost: crm\r\n\r\n"
    try:
        while time.monotonic() < until:
            started = time.monotonic()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
            await reader.readexactly(length)
            results.append((status, time.monotonic() - started, b"retry-after" in head.lower()))
            if status == 503 and pause:
                await asyncio.sleep(pause)
            if b"connection: close" in head.lower():
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except (asyncio.IncompleteReadError, ConnectionError) as e:
        results.append((0, 0.0, repr(e)))
    finally:
        writer.close()


def pct(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


async def run(args, cap):
    crm = subprocess.Popen(
        [sys.executable, __file__, "--crm", "--n", str(args.n), "--work-ms", str(args.work_ms)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    crm_port = int(crm.stdout.readline())
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        text = (REPO / "config/demo/permgate.toml").read_text()
        text = text.replace(
            "pool_size = 1024",
            f"pool_size = 1024\nmax_connections = {cap}\nqueue_size = {args.queue}\n"
            f"queue_timeout_ms = {args.queue_timeout_ms}",
            1,
        )
        (pathlib.Path(d) / "permgate.toml").write_text(text)
        (pathlib.Path(d) / "snapshot.json").write_text(
            (REPO / "config/demo/snapshot.json").read_text()
        )
        cmd = [args.permgate_bin, "serve", "--config", f"{d}/permgate.toml",
               "--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{crm_port}"]
        if args.h1_lane == "off":
            cmd += ["--h1-lane", "off"]
        gateway = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   env={**os.environ, "RUST_LOG": "warn"})
        try:
            for _ in range(200):
                try:
                    socket.create_connection(("127.0.0.1", port), 0.1).close()
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            # Warm up: the CRM connections exist before the clock starts.
            warm = []
            await asyncio.gather(*(client(port, time.monotonic() + 1, warm)
                                   for _ in range(args.n)))
            crm.stdin.write("reset\n")
            crm.stdin.flush()
            results = []
            started = time.monotonic()
            until = started + args.duration
            pause = args.refused_pause_ms / 1000
            await asyncio.gather(*(client(port, until, results, pause)
                                   for _ in range(args.n * args.load)))
            elapsed = time.monotonic() - started
        finally:
            gateway.send_signal(signal.SIGTERM)
            try:
                gateway.wait(5)
            except subprocess.TimeoutExpired:
                gateway.kill()
    crm.stdin.close()
    max_open, max_busy, max_waiting, calls = map(int, crm.stdout.readline().split())
    crm.wait(5)
    ok = [t for s, t, _ in results if s == 200]
    busy = [t for s, t, _ in results if s == 503]
    other = [s for s, _, _ in results if s not in (200, 503)]
    busy_with_retry_after = sum(1 for s, _, r in results if s == 503 and r is True)
    return {
        "cap": cap,
        "crm_max_open": max_open,
        "crm_max_busy": max_busy,
        "crm_max_waiting": max_waiting,
        "crm_calls_per_s": calls / elapsed,
        "ok_per_s": len(ok) / elapsed,
        "ok_p50_ms": pct(ok, 0.5) * 1000,
        "ok_p99_ms": pct(ok, 0.99) * 1000,
        "busy_per_s": len(busy) / elapsed,
        "busy_p50_ms": pct(busy, 0.5) * 1000,
        "busy_p99_ms": pct(busy, 0.99) * 1000,
        "busy_retry_after": busy_with_retry_after,
        "busy": len(busy),
        "other": len(other),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=10, help="CRM workers = upstream.max_connections")
    p.add_argument("--load", type=int, default=10, help="client connections = load x n")
    p.add_argument("--work-ms", type=float, default=20.0, help="CRM time per call")
    p.add_argument("--queue", type=int, default=10, help="upstream.queue_size")
    p.add_argument("--queue-timeout-ms", type=int, default=100, help="upstream.queue_timeout_ms")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--h1-lane", default="on", choices=["on", "off"])
    p.add_argument("--refused-pause-ms", type=float, default=20.0)
    p.add_argument("--permgate-bin", default=None)
    p.add_argument("--crm", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.crm:
        asyncio.run(crm_main(args))
        return 0
    if args.permgate_bin is None:
        release = REPO / "target/release/permgate"
        args.permgate_bin = str(release if release.exists() else REPO / "target/debug/permgate")
    print(f"permgate: {args.permgate_bin}; CRM: {args.n} workers x {args.work_ms} ms "
          f"(capacity {args.n * 1000 / args.work_ms:.0f} calls/s); load: "
          f"{args.n * args.load} connections, closed loop, {args.duration} s; "
          f"queue {args.queue}, queue timeout {args.queue_timeout_ms} ms; a refused client pauses "
          f"{args.refused_pause_ms} ms; lane {args.h1_lane}")
    rows = [asyncio.run(run(args, cap)) for cap in (args.n, 0)]
    cols = ["cap", "crm_max_open", "crm_max_busy", "crm_max_waiting", "crm_calls_per_s",
            "ok_per_s", "ok_p50_ms",
            "ok_p99_ms", "busy_per_s", "busy_p50_ms", "busy_p99_ms", "busy_retry_after", "other"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(
            f"{r[c]:.1f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
