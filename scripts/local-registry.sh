#!/usr/bin/env bash
# Makes sure a container registry answers on 127.0.0.1:5000 (or REGISTRY_ADDRESS): if nothing listens there,
# starts Debian's `docker-registry` in the background with its storage in a temporary directory.
#
# The registry is plain HTTP on loopback, which Docker accepts without configuration (127.0.0.0/8 is an
# insecure registry by default). It keeps running after this script exits; its pid, config, log and data
# are in OUTPOST_REGISTRY_DIR (default: $TMPDIR/outpost-registry). Stop it with:
#   kill "$(cat "${OUTPOST_REGISTRY_DIR:-${TMPDIR:-/tmp}/outpost-registry}/registry.pid")"
set -euo pipefail

address="${REGISTRY_ADDRESS:-127.0.0.1:5000}"
host="${address%:*}"
port="${address##*:}"
state_dir="${OUTPOST_REGISTRY_DIR:-${TMPDIR:-/tmp}/outpost-registry}"

listening() {
  (exec 3<>"/dev/tcp/${host}/${port}") 2>/dev/null
}

if listening; then
  echo "local-registry: something already listens on ${address}; using it"
  exit 0
fi

binary="$(command -v docker-registry || true)"
for candidate in /usr/bin/docker-registry /usr/sbin/docker-registry; do
  [[ -z "${binary}" && -x "${candidate}" ]] && binary="${candidate}"
done
if [[ -z "${binary}" ]]; then
  if [[ "$(id -u)" -ne 0 ]]; then
    echo "local-registry: docker-registry is not installed; run: sudo apt-get install -y docker-registry" >&2
    exit 1
  fi
  echo "local-registry: installing docker-registry"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq docker-registry >/dev/null
  # The packaged service is not wanted: this script runs its own on loopback.
  if command -v systemctl >/dev/null 2>&1; then systemctl disable --now docker-registry >/dev/null 2>&1 || true; fi
  service docker-registry stop >/dev/null 2>&1 || true
  binary="$(command -v docker-registry || echo /usr/bin/docker-registry)"
fi

mkdir -p "${state_dir}/data"
cat > "${state_dir}/config.yml" <<CONFIG
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: ${state_dir}/data
  delete:
    enabled: true
http:
  addr: ${address}
  headers:
    X-Content-Type-Options: [nosniff]
CONFIG

# setsid + nohup: the registry outlives this script and the shell that ran it.
setsid nohup "${binary}" serve "${state_dir}/config.yml" >"${state_dir}/registry.log" 2>&1 < /dev/null &
echo $! > "${state_dir}/registry.pid"

for _ in $(seq 1 100); do
  if listening; then
    echo "local-registry: docker-registry (pid $(cat "${state_dir}/registry.pid")) serves ${address}, storage in ${state_dir}/data"
    exit 0
  fi
  if ! kill -0 "$(cat "${state_dir}/registry.pid")" 2>/dev/null; then
    echo "local-registry: docker-registry exited; its log:" >&2
    cat "${state_dir}/registry.log" >&2
    exit 1
  fi
  sleep 0.1
done
echo "local-registry: docker-registry did not start listening on ${address} within 10 s; log: ${state_dir}/registry.log" >&2
exit 1
