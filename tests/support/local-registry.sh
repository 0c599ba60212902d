#!/usr/bin/env bash
# Starts a CNCF distribution registry (Debian docker-registry) on a free port of
# 127.0.0.1, storing under DIR, for the scripts that need one (bench-pull.sh,
# containers/check.sh; the Rust tests have tests/support/registry.rs). It waits until
# /v2/ answers, then prints "PORT PID" and leaves the registry running: the caller stops
# it (kill PID).
#
#   read -r port registry_pid < <(bash tests/support/local-registry.sh "$work")
set -euo pipefail

dir="${1:?usage: local-registry.sh DIR}"
mkdir -p "$dir"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
cat >"$dir/registry.yml" <<YML
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $dir/storage
http:
  addr: 127.0.0.1:$port
YML
/usr/bin/docker-registry serve "$dir/registry.yml" >"$dir/registry.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
    if curl -sf "http://127.0.0.1:$port/v2/" >/dev/null; then
        echo "$port $pid"
        exit 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
kill "$pid" 2>/dev/null || true
echo "local-registry: docker-registry did not answer on 127.0.0.1:$port: $(tail -5 "$dir/registry.log")" >&2
exit 1
