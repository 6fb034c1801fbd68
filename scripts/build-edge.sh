#!/usr/bin/env bash
# Builds Outpost for an edge device: `outpost` and the daemon `outpost-edged` with the `edge` profile (whole-program
# LTO; the daemon's functions laid out in the order crates/outpost-cli/edged.order lists, see build.rs), statically
# linked (`+crt-static`, a static PIE): one file to install, and no shared C library whose pages the daemon's
# resident set carries (docs/benchmarks.md, "The edge daemon's layout").
#
# Prints the directory the two executables are in: target/<host triple>/edge (under $CARGO_TARGET_DIR if it is set).
# Extra arguments go to cargo.
#
# The C library's name service is linked in for `files` and `dns` (/etc/hosts, /etc/resolv.conf); other modules in
# /etc/nsswitch.conf (mdns, systemd's resolve) are loaded from the device's glibc, which must then be the version
# the build linked against.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${repo}"
host="$(rustc -vV | sed -n 's/^host: //p')"
# With --target, RUSTFLAGS reach the target's crates only: build scripts and proc-macros stay dynamic, as they must.
RUSTFLAGS="${RUSTFLAGS:+${RUSTFLAGS} }-C target-feature=+crt-static" \
  cargo build --profile edge -p outpost-cli --target "${host}" "$@" >&2
target_dir="${CARGO_TARGET_DIR:-target}"
[[ "${target_dir}" == /* ]] || target_dir="${repo}/${target_dir}"
echo "${target_dir}/${host}/edge"
