#!/usr/bin/env bash
# Remakes crates/outpost-cli/edged.order, the order in which the edge build (scripts/build-edge.sh) lays out the daemon's functions
# (crates/outpost-cli/build.rs says why): runs `outpost-bench edge --quick` with the daemon under valgrind's
# callgrind, so that the profile holds what an edge device runs (startup, deployment of process and container
# modules, the edge hub routing over TLS into the message log, the upstream link, a hub outage and the drain of its
# backlog), then lists every function the profiles saw with scripts/edge-order.py and relinks.
#
# Run it after a toolchain, dependency or large code change (names the file lists but the build no longer has are
# skipped, so a stale order costs memory, not correctness; `outpost-bench edge` shows the idle RSS). Needs valgrind
# and what `outpost-bench edge` needs (scripts/local-registry.sh for the container case; without Docker only the
# process runtime is profiled). Takes about ten minutes after the builds.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${repo}"
command -v valgrind >/dev/null || { echo "edge-order: valgrind is needed (apt-get install valgrind)" >&2; exit 1; }

edge="$(scripts/build-edge.sh)"
cargo build --release -p outpost-bench -p simulated-temperature-sensor -p filter

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
cp "${edge}/outpost" target/release/filter target/release/simulated-temperature-sensor "${work}/"
# `outpost edge run` execs the outpost-edged beside it: here, the real one under callgrind (one profile per daemon).
cat >"${work}/outpost-edged" <<WRAPPER
#!/bin/sh
exec valgrind --tool=callgrind --demangle=no --callgrind-out-file=${work}/callgrind.%p \
  "${edge}/outpost-edged" "\$@"
WRAPPER
chmod +x "${work}/outpost-edged"

docker_args=(--skip-docker)
if docker version >/dev/null 2>&1; then
  scripts/local-registry.sh
  docker_args=()
fi
target/release/outpost-bench --outpost "${work}/outpost" --quick --no-report edge \
  --skip-mosquitto --skip-rumqttd --window 64 --soak 10 "${docker_args[@]}"

# In the order the daemons started (by pid): the process-runtime daemon's functions before the container one's.
mapfile -t profiles < <(cd "${work}" && ls callgrind.* | sort -t. -k2 -n | sed "s|^|${work}/|")
python3 scripts/edge-order.py "${edge}/outpost-edged" "${profiles[@]}" >crates/outpost-cli/edged.order
scripts/build-edge.sh >/dev/null
echo "edge-order: crates/outpost-cli/edged.order remade; ${edge}/outpost-edged relinked with it"
