#!/usr/bin/env bash
# The README's first command: builds Outpost and its sample modules, packages the modules as container images
# when Docker is there (FROM scratch, pushed to a local registry on 127.0.0.1:5000), then runs
# `outpost quickstart`: a hub and an edge device on this machine, the sensor routed through the filter to the
# hub. Ctrl-C stops everything, module containers included. Arguments go to `outpost quickstart` (e.g.
# --processes, --data-dir DIR); its state lives in ${TMPDIR:-/tmp}/outpost-quickstart unless --data-dir says
# otherwise, so the checkout stays clean. `exec` hands Ctrl-C straight to outpost, which stops what it started.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${repo_root}"

cargo build --release --workspace --bins
if [[ " $* " != *" --processes "* ]] && docker version >/dev/null 2>&1; then
  if ! scripts/build-module-images.sh >/tmp/outpost-module-images.log 2>&1; then
    echo "quickstart: could not build the module images (see /tmp/outpost-module-images.log); modules run as processes" >&2
  fi
fi
exec target/release/outpost quickstart "$@"
