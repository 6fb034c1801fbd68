#!/usr/bin/env bash
# Builds the sample modules (modules/*) as statically linked binaries and packages each as a container
# image FROM scratch, tagged ${REGISTRY}/outpost/<module>:<version> and pushed, so that the edge runtime
# can deploy them as containers (settings.image) or run the same binaries as process modules.
#
#   REGISTRY   where to push (default 127.0.0.1:5000; a local registry is started there if none answers)
#   VERSION    the image tag (default: the workspace version in Cargo.toml)
#   MODULES    which modules (default: "simulated-temperature-sensor filter")
#   NO_PUSH=1  build and tag only
#
# The binaries are printed at the end; they are the same files that went into the images.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${repo_root}"

registry="${REGISTRY:-127.0.0.1:5000}"
version="${VERSION:-$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)}"
read -r -a modules <<< "${MODULES:-simulated-temperature-sensor filter}"
target="x86_64-unknown-linux-gnu"

if [[ -z "${version}" ]]; then
  echo "build-module-images: cannot read the workspace version from Cargo.toml; set VERSION" >&2
  exit 1
fi
command -v docker >/dev/null || { echo "build-module-images: docker is not installed" >&2; exit 1; }

if [[ "${registry}" == "127.0.0.1:5000" && "${NO_PUSH:-0}" != 1 ]]; then
  scripts/local-registry.sh
fi

echo "==> static release build (${target}): ${modules[*]}"
packages=()
for module in "${modules[@]}"; do packages+=(-p "${module}"); done
# With an explicit --target, RUSTFLAGS reach only the target's crates, not build scripts and proc macros
# (which cannot be static). glibc links statically; rustls uses ring, which builds without system libraries.
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target "${target}" "${packages[@]}"

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT

for module in "${modules[@]}"; do
  binary="target/${target}/release/${module}"
  if ! file "${binary}" | grep -Eq "statically linked|static-pie linked"; then
    echo "build-module-images: ${binary} is not statically linked:" >&2
    file "${binary}" >&2
    exit 1
  fi
  image="${registry}/outpost/${module}:${version}"
  context="${work}/${module}"
  mkdir -p "${context}"
  # The release profile keeps line tables for backtraces; the image does not need them.
  if command -v strip >/dev/null; then
    strip --strip-debug -o "${context}/${module}" "${binary}"
  else
    cp "${binary}" "${context}/${module}"
  fi
  cat > "${context}/Dockerfile" <<DOCKERFILE
FROM scratch
COPY ${module} /${module}
LABEL org.opencontainers.image.title="${module}" \\
      org.opencontainers.image.version="${version}" \\
      org.opencontainers.image.description="Outpost sample module ${module}"
ENTRYPOINT ["/${module}"]
DOCKERFILE

  echo "==> ${image}"
  if ! DOCKER_BUILDKIT=0 docker build --quiet --tag "${image}" "${context}"; then
    # Without the classic builder, the same image from a tarball: one file and an entrypoint.
    echo "build-module-images: docker build failed; importing a tarball instead" >&2
    tar -C "${context}" -cf - "${module}" \
      | docker import --change "ENTRYPOINT [\"/${module}\"]" - "${image}"
  fi
  if [[ "${NO_PUSH:-0}" != 1 ]]; then
    docker push "${image}"
  fi
  size="$(docker image inspect --format '{{.Size}}' "${image}")"
  echo "    ${image}: $((size / 1024)) KiB, from ${binary}"
done
