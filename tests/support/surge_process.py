"""A `surge serve` started by a test script: the flags that say which binary and model,
the port it listens on (read from its log) and the moment /health answers 200."""
import http.client
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def add_server_args(parser):
    """`--surge BIN` (the release build) and `--model DIR` (SmolLM2 from the model cache)."""
    parser.add_argument("--surge", default=os.path.join(ROOT, "target/release/surge"))
    cache = os.environ.get("SURGE_MODEL_CACHE", os.path.join(ROOT, ".cache/models"))
    parser.add_argument("--model", default=os.path.join(cache, "smollm2-hf"))


def wait_listening(log_path, server, timeout=120):
    """The port from surge's `listening on http://127.0.0.1:PORT` log line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = open(log_path).read()
        m = re.search(r"listening on https?://\S*:(\d+)", log)
        if m:
            return int(m.group(1))
        if server.poll() is not None:
            sys.exit(f"surge exited:\n{log[-2000:]}")
        time.sleep(0.05)
    sys.exit("surge did not start listening")


def wait_health(port, server, timeout=600):
    """Returns once GET /health is 200 (the model is loaded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit("surge exited while loading")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit("surge did not become ready")
