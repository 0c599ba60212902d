"""Waiting for a `surge serve` started by a test script: the port it listens on (read
from its log) and the moment /health answers 200."""
import http.client
import re
import sys
import time


def wait_listening(log_path, server, timeout=120):
    """The port from surge's `listening on http://127.0.0.1:PORT` log line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = open(log_path).read()
        m = re.search(r"listening on https?://[^ ]*:(\d+)", log)
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
