#!/usr/bin/env bash
# Installs the broker peers `outpost-bench edge` compares the edge hub with, into <repo>/.tools (git-ignored):
# rumqttd, built from crates.io with its own lockfile (`cargo install --locked`). mosquitto comes from the system
# package (`apt-get install mosquitto`); this script only says whether it is there.
#
# Idempotent: a peer already installed is skipped. The rumqttd build compiles for several minutes.
#
# rumqttd 0.20.0's lockfile pins metrics 0.22.1, which current rustc rejects (E0521, rust-lang/rust#141402); the
# fix is metrics 0.22.4, semver-compatible. So the crate is built from its source with that entry of its lockfile
# moved (`cargo update --precise`, which also moves what 0.22.4 needs: ahash 0.8.12, zerocopy 0.8), everything
# else as locked. RUMQTTD_VERSION picks another version
# (then the lockfile is used as published).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
root="${repo}/.tools"
version="${RUMQTTD_VERSION:-0.20.0}"

install_rumqttd() {
  if [[ "${version}" != "0.20.0" ]]; then
    cargo install rumqttd --locked --version "${version}" --root "${root}"
    return
  fi
  local work src
  work="$(mktemp -d)"
  trap 'rm -rf "${work}"' RETURN
  src="$(ls -d "${CARGO_HOME:-${HOME}/.cargo}"/registry/src/*/rumqttd-0.20.0 2>/dev/null | head -n 1 || true)"
  if [[ -z "${src}" ]]; then
    # Fetch the crate's source into cargo's registry cache through a throwaway manifest.
    mkdir -p "${work}/fetch/src"
    printf '[package]\nname = "fetch"\nversion = "0.0.0"\nedition = "2021"\n\n[dependencies]\nrumqttd = "=0.20.0"\n' \
      >"${work}/fetch/Cargo.toml"
    : >"${work}/fetch/src/lib.rs"
    cargo fetch --manifest-path "${work}/fetch/Cargo.toml"
    src="$(ls -d "${CARGO_HOME:-${HOME}/.cargo}"/registry/src/*/rumqttd-0.20.0 | head -n 1)"
  fi
  cp -r "${src}" "${work}/rumqttd"
  cargo update --manifest-path "${work}/rumqttd/Cargo.toml" -p metrics@0.22.1 --precise 0.22.4
  cargo install --path "${work}/rumqttd" --locked --root "${root}"
}

if [[ -x "${root}/bin/rumqttd" ]]; then
  echo "bench-peers: rumqttd already at ${root}/bin/rumqttd; skipping"
else
  echo "bench-peers: installing rumqttd ${version} into ${root} (this compiles for a while)"
  install_rumqttd
fi

if command -v mosquitto >/dev/null 2>&1 || [[ -x /usr/sbin/mosquitto ]]; then
  echo "bench-peers: mosquitto found"
else
  echo "bench-peers: mosquitto not found; install it with: apt-get install mosquitto" >&2
fi
