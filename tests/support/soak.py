#!/usr/bin/env python3
"""Soak test: surge under a bounded mix of good, bad and rude clients.

Starts `surge serve` on 127.0.0.1 (small --max-num-seqs and --max-num-queued-reqs, so
bursts go past the queue limit), then for DURATION seconds (and at most MAX_REQUESTS)
runs WORKERS clients that send, each request drawn at random (seeded):
  - chat or completions, streaming or not, with a few output tokens;
  - 10 %: a streaming request dropped by the client after its first chunks;
  - 5 %: a malformed request (bad JSON, wrong types, out-of-range values), expecting 400;
plus, every BURST_EVERY seconds, a burst of 3 x the queue limit at once (429s expected).
A client refused with 429 waits as its Retry-After says (capped), as a good client would.
At the end it checks that nothing is stuck (no request running or waiting), every KV
block is free, the RSS grew by less than 5 % after warm-up, and the server's counters
equal the client's counts; prints a report (JSON with --report) and exits 1 on a failure.

Usage: soak.py [--surge BIN] [--model DIR] [--duration 1200] [--max-requests 100000]
               [--workers 12] [--seed 1] [--report FILE]
"""
import argparse
import http.client
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from surge_process import add_server_args, wait_health, wait_listening  # noqa: E402
MAX_NUM_SEQS = 4
MAX_QUEUED = 8
BURST_EVERY = 20.0
WARMUP_FRACTION = 0.15
MAX_RSS_GROWTH = 0.05
MAX_BACKOFF = 3.0

MALFORMED = [
    b'{"model": "m", "messages": [',
    b'{"model": "m", "prompt": "x", "max_tokens": -1}',
    b'{"model": "m", "prompt": "x", "temperature": "hot"}',
    b'{"model": "m", "messages": [{"role": "wizard", "content": "x"}]}',
    b'{"model": "m", "prompt": "x", "n": 100000}',
    b'{"model": "m", "prompt": "x", "stop": ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q", "r", "s", "t", "u", "v", "w", "x", "y", "z", "aa", "bb", "cc", "dd", "ee", "ff", "gg"]}',
    b'{"model": "m", "prompt": "x", "unknown_field": 1}',
    b'[1, 2, 3]',
    b'\xff\xfe not utf-8',
]


class Counts:
    """What the clients saw, shared by the worker threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.by_kind = {}
        self.statuses = {}
        self.completed = 0
        self.dropped = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.errors = {}

    def add(self, **fields):
        with self.lock:
            for key, value in fields.items():
                if key in ("kind", "status", "error"):
                    table = {"kind": self.by_kind, "status": self.statuses,
                             "error": self.errors}[key]
                    table[str(value)] = table.get(str(value), 0) + 1
                else:
                    setattr(self, key, getattr(self, key) + value)

    def total(self):
        with self.lock:
            return sum(self.by_kind.values())


def main():
    p = argparse.ArgumentParser()
    add_server_args(p)
    p.add_argument("--duration", type=float, default=1200.0)
    p.add_argument("--max-requests", type=int, default=100_000)
    p.add_argument("--workers", type=int, default=12)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--report")
    args = p.parse_args()

    log = tempfile.NamedTemporaryFile(prefix="surge-soak-", suffix=".log", delete=False)
    server = subprocess.Popen(
        [args.surge, "serve", "--host", "127.0.0.1", "--port", "0", "--model", args.model,
         "--served-model-name", "m", "--max-num-seqs", str(MAX_NUM_SEQS),
         "--max-num-queued-reqs", str(MAX_QUEUED), "--max-model-len", "512",
         "--kv-cache-memory", "32MiB"],
        stdout=log, stderr=log)
    failures = []
    try:
        port = wait_listening(log.name, server)
        wait_health(port, server)
        counts = Counts()
        start = time.monotonic()
        stop = start + args.duration
        baseline = {}

        def take_baseline():
            time.sleep(args.duration * WARMUP_FRACTION)
            baseline["rss"] = rss_kib(server.pid)

        threads = [threading.Thread(target=take_baseline, daemon=True),
                   threading.Thread(target=bursts, args=(port, stop, counts, args), daemon=True)]
        threads += [threading.Thread(target=worker, args=(port, stop, counts, args, i),
                                     daemon=True) for i in range(args.workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=max(0.0, stop - time.monotonic()) + 120)
        if any(t.is_alive() for t in threads):
            failures.append("a client thread is stuck")
        metrics = settle(port)
        rss_end = rss_kib(server.pid)
        report = summarize(counts, metrics, baseline.get("rss"), rss_end,
                           time.monotonic() - start, failures)
        if server.poll() is not None:
            failures.append(f"surge exited with {server.returncode}")
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    print(json.dumps(report, indent=2))
    if args.report:
        with open(args.report, "w") as f:
            json.dump(report, f, indent=2)
    if failures:
        print("soak: FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        print(f"soak: server log: {log.name}", file=sys.stderr)
        sys.exit(1)
    print("soak: ok", file=sys.stderr)


def worker(port, stop, counts, args, index):
    rng = random.Random(args.seed * 1000 + index)
    while time.monotonic() < stop and counts.total() < args.max_requests:
        roll = rng.random()
        try:
            if roll < 0.05:
                malformed(port, rng, counts)
            elif roll < 0.15:
                dropped_stream(port, rng, counts)
            else:
                generate(port, rng, counts)
        except (OSError, http.client.HTTPException) as e:
            counts.add(error=type(e).__name__)


def bursts(port, stop, counts, args):
    while time.monotonic() + BURST_EVERY < stop:
        time.sleep(BURST_EVERY)
        rng = random.Random(args.seed + int(time.monotonic()))
        burst = [threading.Thread(target=generate, args=(port, rng, counts, True), daemon=True)
                 for _ in range(3 * MAX_QUEUED)]
        for t in burst:
            t.start()
        for t in burst:
            t.join(timeout=120)


def request_body(rng, chat, stream):
    max_tokens = rng.randint(1, 12)
    text = rng.choice(["Hello", "Name a colour.", "Count: one two three",
                       "Tell me about the sea " * rng.randint(1, 8)])
    body = {"model": "m", "max_tokens": max_tokens, "temperature": rng.choice([0.0, 0.8]),
            "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    if chat:
        body["messages"] = [{"role": "user", "content": text}]
    else:
        body["prompt"] = text
    return body


def post(port, path, payload, timeout=120):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
    return conn, conn.getresponse()


def generate(port, rng, counts, burst=False):
    chat, stream = rng.random() < 0.5, rng.random() < 0.5
    path = "/v1/chat/completions" if chat else "/v1/completions"
    kind = ("burst " if burst else "") + ("chat" if chat else "completion") + (
        " stream" if stream else "")
    counts.add(kind=kind)
    try:
        conn, resp = post(port, path, request_body(rng, chat, stream))
    except (OSError, http.client.HTTPException) as e:
        counts.add(error=type(e).__name__)
        return
    counts.add(status=resp.status)
    try:
        if resp.status != 200:
            resp.read()
            if resp.status != 429:
                counts.add(error=f"http {resp.status}")
            elif not burst:
                back_off(resp)
            return
        usage = None
        if stream:
            for line in resp:
                line = line.strip()
                if line.startswith(b"data: {"):
                    event = json.loads(line[6:])
                    usage = event.get("usage") or usage
                    if "error" in event:
                        counts.add(error="stream error event")
        else:
            usage = json.loads(resp.read()).get("usage")
        if usage is None:
            counts.add(error="no usage")
            return
        counts.add(completed=1, prompt_tokens=usage["prompt_tokens"],
                   completion_tokens=usage["completion_tokens"])
    finally:
        conn.close()


def dropped_stream(port, rng, counts):
    """A streaming request the client abandons after its first chunk or two."""
    counts.add(kind="dropped stream")
    body = request_body(rng, rng.random() < 0.5, True)
    body["max_tokens"] = 64
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    conn, resp = post(port, path, body)
    counts.add(status=resp.status)
    if resp.status != 200:
        resp.read()
        conn.close()
        if resp.status != 429:
            counts.add(error=f"http {resp.status}")
        else:
            back_off(resp)
        return
    events = 0
    for line in resp:
        if line.startswith(b"data: {"):
            events += 1
            if events >= 2:
                break
    conn.sock.close() if conn.sock else None
    conn.close()
    # The server sees the request end by abort, unless it had already finished.
    counts.add(dropped=1)


def back_off(resp):
    """A well-behaved client waits as a 429's Retry-After says (at most a few seconds)."""
    try:
        delay = float(resp.getheader("Retry-After", "1"))
    except ValueError:
        delay = 1.0
    time.sleep(min(max(delay, 0.1), MAX_BACKOFF))


def malformed(port, rng, counts):
    counts.add(kind="malformed")
    path = rng.choice(["/v1/chat/completions", "/v1/completions"])
    conn, resp = post(port, path, rng.choice(MALFORMED))
    resp.read()
    conn.close()
    counts.add(status=resp.status)
    if resp.status not in (400, 422, 429):
        counts.add(error=f"malformed got http {resp.status}")


def settle(port, timeout=60.0):
    """The server's metrics once nothing runs or waits (or after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        metrics = scrape(port)
        idle = (metrics.get("vllm:num_requests_running", 0) == 0
                and metrics.get("vllm:num_requests_waiting", 0) == 0
                and metrics.get("vllm:kv_cache_usage_perc", 0) == 0)
        if idle or time.monotonic() > deadline:
            return metrics
        time.sleep(0.5)


def scrape(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    metrics = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        if name == "vllm:request_success_total":
            reason = re.search(r'finished_reason="([^"]+)"', name_labels).group(1)
            name = f"{name}:{reason}"
        try:
            metrics[name] = metrics.get(name, 0) + float(value)
        except ValueError:
            pass
    return metrics


def summarize(counts, metrics, rss_start, rss_end, elapsed, failures):
    finished = sum(v for k, v in metrics.items() if k.startswith("vllm:request_success_total:")
                   and not k.endswith(":abort"))
    aborted = metrics.get("vllm:request_success_total:abort", 0)
    report = {
        "seconds": round(elapsed, 1),
        "requests": counts.total(),
        "by_kind": counts.by_kind,
        "statuses": counts.statuses,
        "client_errors": counts.errors,
        "completed": counts.completed,
        "dropped_by_client": counts.dropped,
        "server_finished": finished,
        "server_aborted": aborted,
        "prompt_tokens": {"client": counts.prompt_tokens,
                          "server": metrics.get("vllm:prompt_tokens_total")},
        "generation_tokens": {"client_completed": counts.completion_tokens,
                              "server": metrics.get("vllm:generation_tokens_total")},
        "running_at_end": metrics.get("vllm:num_requests_running"),
        "waiting_at_end": metrics.get("vllm:num_requests_waiting"),
        "kv_cache_usage_at_end": metrics.get("vllm:kv_cache_usage_perc"),
        "rss_kib": {"after_warmup": rss_start, "end": rss_end},
    }
    unexpected = {k: v for k, v in counts.errors.items()}
    if unexpected:
        failures.append(f"client errors: {unexpected}")
    if counts.completed == 0:
        failures.append("no request completed")
    if report["running_at_end"] != 0 or report["waiting_at_end"] != 0:
        failures.append("requests still running or waiting at the end")
    if report["kv_cache_usage_at_end"] != 0:
        failures.append("KV blocks still in use at the end")
    # Every completed request is a finished one on the server; a dropped stream is an
    # abort there, unless it had finished before the client let go.
    if finished != counts.completed + (counts.dropped - aborted):
        failures.append(f"server finished {finished}, client completed {counts.completed} "
                        f"and dropped {counts.dropped} ({aborted} aborts)")
    if aborted > counts.dropped:
        failures.append(f"{aborted} aborts for {counts.dropped} dropped streams")
    server_generated = metrics.get("vllm:generation_tokens_total", 0)
    if server_generated < counts.completion_tokens:
        failures.append("the server counted fewer generated tokens than the clients got")
    if rss_start and rss_end and rss_end > rss_start * (1 + MAX_RSS_GROWTH):
        failures.append(f"RSS grew from {rss_start} KiB to {rss_end} KiB")
    return report


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


if __name__ == "__main__":
    main()
