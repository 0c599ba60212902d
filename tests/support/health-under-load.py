#!/usr/bin/env python3
"""/health latency while surge is overloaded.

Starts `surge serve` on 127.0.0.1 with --max-num-seqs CAP, keeps OVERLOAD x CAP
streaming completions in flight (each re-sent when it ends, for DURATION seconds),
and meanwhile times sequential GET /health calls. Prints p50/p99/max.

Usage: health-under-load.py [--surge BIN] [--model DIR] [--cap 4] [--overload 10]
                            [--duration 30]
"""
import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from surge_process import add_server_args, wait_health, wait_listening  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    add_server_args(p)
    p.add_argument("--cap", type=int, default=4)
    p.add_argument("--overload", type=int, default=10)
    p.add_argument("--duration", type=float, default=30.0)
    args = p.parse_args()

    log = tempfile.NamedTemporaryFile(prefix="surge-", suffix=".log", delete=False)
    server = subprocess.Popen(
        [args.surge, "serve", "--host", "127.0.0.1", "--port", "0", "--model", args.model,
         "--served-model-name", "m", "--max-num-seqs", str(args.cap),
         "--max-model-len", "1024", "--kv-cache-memory", "512MiB"],
        stdout=log, stderr=log)
    try:
        port = wait_listening(log.name, server)
        wait_health(port, server)
        stop = time.monotonic() + args.duration
        threads = [threading.Thread(target=client, args=(port, i, stop), daemon=True)
                   for i in range(args.cap * args.overload)]
        for t in threads:
            t.start()
        time.sleep(2.0)  # let the queue fill
        latencies, statuses = [], {}
        while time.monotonic() < stop and len(latencies) < 10_000:
            start = time.perf_counter()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", "/health")
            status = conn.getresponse().status
            latencies.append(time.perf_counter() - start)
            statuses[status] = statuses.get(status, 0) + 1
            conn.close()
            time.sleep(0.05)
        metrics = get(port, "/metrics")
        waiting = re.search(r"^vllm:num_requests_waiting\{[^}]*\} (\S+)", metrics, re.M)
        latencies.sort()
        q = lambda f: latencies[min(len(latencies) - 1, int(f * len(latencies)))] * 1e3
        print(f"clients {args.cap * args.overload} on --max-num-seqs {args.cap} "
              f"({args.overload}x overload), waiting at the end: "
              f"{waiting.group(1) if waiting else '?'}")
        print(f"/health: {len(latencies)} calls, statuses {statuses}, "
              f"p50 {q(0.50):.2f} ms, p99 {q(0.99):.2f} ms, max {latencies[-1] * 1e3:.2f} ms, "
              f"mean {statistics.mean(latencies) * 1e3:.2f} ms")
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()



def get(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path)
    return conn.getresponse().read().decode()


def client(port, i, stop):
    body = json.dumps({"model": "m", "prompt": f"Essay {i} about rivers and their history.",
                       "max_tokens": 64, "ignore_eos": True, "stream": True})
    while time.monotonic() < stop:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            while response.readline():
                if time.monotonic() > stop:
                    break
            conn.close()
        except OSError:
            time.sleep(0.1)


if __name__ == "__main__":
    main()
