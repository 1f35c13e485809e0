#!/usr/bin/env bash
# The full flashinfer wheel (with the JIT sources the device wheelhouse strips), for a
# FlashInfer call on the GPU machine. It goes to .flashinfer/ (git-ignored), 14.3 MiB.
# Together with .wheelhouse (52.7 MiB) and the repository it is over the 64 MiB a call
# carries, so a FlashInfer run takes two calls on one warm machine:
#   1. carry [".wheelhouse"]:  bash ci/gpu/install_device_env.sh   (installs into /tmp/site)
#   2. within the warm window, carry [".flashinfer"]:
#      WITH_FLASHINFER=1 SUITE_STEPS=flashinfer bash ci/gpu/run_gpu_suite.sh
#      install_device_env.sh then reuses /tmp/site, lays the full flashinfer over the trimmed
#      one and leaves SGLANG_IS_FLASHINFER_AVAILABLE on (only when WITH_FLASHINFER is set).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEST="$REPO/.flashinfer"
. "$REPO/ci/gpu/device_wheel.sh"
PIN="$(device_wheel_pin flashinfer-python)"
download_device_wheel "$DEST" "$PIN"
du -sh "$DEST"/*.whl
