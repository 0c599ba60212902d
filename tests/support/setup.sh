#!/usr/bin/env bash
# Set up everything the test suite needs (DESIGN.md §5). Idempotent.
#
#   tests/support/setup.sh
#
# 1. Installs the Debian packages the tests run as real servers, when missing:
#      prometheus   /usr/bin/prometheus, scraped by tests/metrics_prometheus.rs
#      docker-registry  /usr/bin/docker-registry (CNCF distribution), the registry of
#                       tests/oci_*.rs
#      skopeo       /usr/bin/skopeo, to copy ModelCar images by hand (and for the pull
#                   benchmark against surge pull)
#      fonts-dejavu-core  the font `surge bench --plot` draws its labels with
#    The tests start their own instances on 127.0.0.1; no system service is started (a
#    service the package's postinst starts anyway is stopped again).
# 2. Fetches the real-model fixtures: tests/support/fetch-models.sh.
# 3. Builds GuideLLM's venv: tests/support/guidellm-venv.sh (PyTorch included, several GB).
#
# Environment:
#   SURGE_SKIP_APT=1   do not install packages (only check and report what is missing)
#   and whatever tests/support/fetch-models.sh reads.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Debian package → a file it installs that proves it is there.
PACKAGES=(
    "prometheus:/usr/bin/prometheus"
    "docker-registry:/usr/bin/docker-registry"
    "skopeo:/usr/bin/skopeo"
    "fonts-dejavu-core:/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
)

log() { echo "setup: $*" >&2; }
die() {
    echo "setup: error: $*" >&2
    exit 1
}

# Runs a command as root (directly, or through sudo).
as_root() {
    if [[ "$(id -u)" == 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n -- "$@" || die "needs root for: $* (sudo -n failed; run this script as root)"
    else
        die "needs root for: $* (not root and no sudo)"
    fi
}

missing=()
for entry in "${PACKAGES[@]}"; do
    pkg="${entry%%:*}"
    file="${entry#*:}"
    if [[ -e "$file" ]] && dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        log "$pkg is installed ($file)"
    else
        missing+=("$pkg")
    fi
done

if ((${#missing[@]} > 0)); then
    if [[ "${SURGE_SKIP_APT:-0}" == 1 ]]; then
        die "missing Debian packages: ${missing[*]} (SURGE_SKIP_APT=1, not installing)"
    fi
    command -v apt-get >/dev/null 2>&1 || die "missing Debian packages ${missing[*]} and no apt-get"
    log "installing ${missing[*]}"

    # Keep maintainer scripts from starting services: a policy-rc.d that denies every
    # start, in place only while installing (one that already exists is left alone).
    policy=/usr/sbin/policy-rc.d
    added_policy=0
    if [[ ! -e "$policy" ]]; then
        as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
        added_policy=1
    fi
    remove_policy() {
        if ((added_policy)); then
            as_root rm -f "$policy"
        fi
    }
    trap remove_policy EXIT

    as_root env DEBIAN_FRONTEND=noninteractive apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        "${missing[@]}"

    remove_policy
    added_policy=0
    trap - EXIT

    for entry in "${PACKAGES[@]}"; do
        file="${entry#*:}"
        [[ -x "$file" ]] || die "${entry%%:*} installed but $file is missing"
    done
fi

# A service the packages may have started anyway (systemd hosts without policy-rc.d
# support): the tests start their own instances, so stop it.
for entry in "${PACKAGES[@]}"; do
    pkg="${entry%%:*}"
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
        if systemctl is-active --quiet "$pkg" 2>/dev/null; then
            log "stopping the $pkg system service (the tests run their own)"
            as_root systemctl stop "$pkg" || log "could not stop $pkg; ignoring"
        fi
    fi
done

bash "$here/fetch-models.sh"
# GuideLLM, in its own venv (tests/bench_guidellm.rs).
bash "$here/guidellm-venv.sh" >/dev/null
log "done"
