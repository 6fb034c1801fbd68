#!/usr/bin/env bash
# The one test command: unit and integration tests of every crate, then the conformance suite that
# drives the `outpost` binary with the official Azure IoT Python SDKs (compat/).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${repo_root}"

# CI builds once from scratch: incremental state would only take disk (a CI machine has run out of it).
if [[ "${CI:-}" == "true" ]]; then
    export CARGO_INCREMENTAL=0
fi
df -h . | sed 's/^/disk: /'

echo "==> test environment"
bash scripts/setup-test-env.sh

echo "==> cargo build --workspace --bins"
cargo build --workspace --bins

df -h . | sed 's/^/disk: /'
echo "==> cargo test --workspace"
# A hung test fails the run here, with the test's name in the output above ("has been running for over 60
# seconds"), instead of using up CI's whole time with compat never run. The cargo tests take about ten minutes.
status=0
timeout --kill-after=30s 45m cargo test --workspace --no-fail-fast || status=$?
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    echo "cargo test did not finish within 45 minutes: a test hung (see above)" >&2
fi
[ "$status" -eq 0 ] || exit "$status"

echo "==> compat (azure-iot-device 2.14.0, azure-iot-hub 2.7.0)"
export OUTPOST_BIN="${repo_root}/target/debug/outpost"
.venv/bin/pytest compat -q
