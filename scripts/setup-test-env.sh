#!/usr/bin/env bash
# Prepares a machine for scripts/test.sh: the Debian packages the system tests use, and the Python
# environment the conformance suite (compat/) runs in: the official Azure IoT SDKs at the exact versions
# Outpost promises to be compatible with, plus pytest, in <repo>/.venv.
#
# Idempotent: packages already installed are skipped, and a marker file inside the venv records a hash of
# the requirement list and the Python version; when it matches, the venv is left alone. Works as root on a
# fresh Debian machine that has python3 (installs python3-venv through apt-get when the venv module is missing).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${repo_root}/.venv"
marker="${venv}/.outpost-requirements.sha256"

# azure-iot-hub imports `six` without declaring it, so it is listed explicitly. `requests` (used by
# the tests for raw REST calls) comes in with both SDKs. azure-eventhub (pure Python AMQP) reads the hub's
# Event Hubs-compatible endpoint; uamqp is what azure-iot-hub's send_c2d_message speaks AMQP with (both from
# wheels); websocket-client is azure-eventhub's optional dependency for transport_type=AmqpOverWebsocket.
requirements=(
  "azure-iot-device==2.14.0"
  "azure-iot-hub==2.7.0"
  "azure-eventhub==5.15.1"
  "uamqp==1.6.11"
  "websocket-client==1.8.0"
  "six==1.16.0"
  "pytest==8.3.3"
)

# Debian packages the system tests need: a static busybox (the FROM scratch test image), the local container
# registry the edge agent pulls from, mosquitto (the broker the benchmarks compare against), and prometheus (the
# metrics test scrapes the hub and the edge with it), openssl (the $edgeAgent upload test makes its HTTPS
# endpoint's certificates with it), postgresql (scripts/postgres.sh starts throwaway servers from its binaries for
# the hub's PostgreSQL engine) and haproxy (one address in front of several hub replicas).
packages=(busybox-static docker-registry mosquitto prometheus openssl postgresql haproxy)
missing=()
for package in "${packages[@]}"; do
  dpkg -s "${package}" >/dev/null 2>&1 || missing+=("${package}")
done
if (( ${#missing[@]} > 0 )); then
  if [[ "$(id -u)" -eq 0 ]]; then
    echo "setup-test-env: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
    # The packaged services are not wanted: the tests start their own registry, broker and Prometheus on loopback.
    for service in docker-registry mosquitto prometheus prometheus-node-exporter; do
      if command -v systemctl >/dev/null 2>&1; then systemctl disable --now "${service}" >/dev/null 2>&1 || true; fi
      service "${service}" stop >/dev/null 2>&1 || true
    done
  else
    echo "setup-test-env: missing ${missing[*]} and this is not root; the tests that need them will say so" >&2
  fi
fi

python="${PYTHON:-python3}"
req_hash="$(printf '%s\n' "${requirements[@]}" "$("${python}" -c 'import sys; print(sys.version)')" | sha256sum | cut -d' ' -f1)"

if [[ -f "${marker}" && "$(cat "${marker}")" == "${req_hash}" && -x "${venv}/bin/python" ]]; then
  echo "setup-test-env: ${venv} is up to date"
  exit 0
fi

# Debian splits the venv module (and ensurepip) into python3-venv.
if ! "${python}" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "setup-test-env: installing python3-venv"
  if [[ "$(id -u)" -ne 0 ]]; then
    echo "setup-test-env: python3-venv is missing and this is not root; install it and retry" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y python3-venv
fi

# A venv half-built by an interrupted run (or by another Python) is rebuilt from scratch.
if [[ -d "${venv}" ]]; then
  rm -rf "${venv}"
fi
echo "setup-test-env: creating ${venv}"
"${python}" -m venv "${venv}"
"${venv}/bin/python" -m pip install --disable-pip-version-check --quiet --upgrade pip
"${venv}/bin/python" -m pip install --disable-pip-version-check --quiet "${requirements[@]}"
"${venv}/bin/python" -c 'import azure.iot.device, azure.iot.hub, azure.eventhub, uamqp, pytest, six' >/dev/null

printf '%s' "${req_hash}" > "${marker}"
echo "setup-test-env: ready (${venv})"
