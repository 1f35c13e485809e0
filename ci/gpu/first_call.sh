#!/usr/bin/env bash
# A session's first device call, whichever card comes (docs/status.md "Open"): a cold start
# costs 90-195 s and the card is not chosen, so the call branches on it.
#   By default: the 8B latency group of ci/gpu/latency_call.sh, which branches on the card
#     itself (an H200, issue 15's missing card: all four modes at bs 1, 32, 128; an H100:
#     bs 1 and 32 against both upstream baselines).
#   FIRST_CALL=a: call A (the cached launcher's GPU cases and host time; engine identity under
#     graphs with EAGLE3 topk 2, replay = eager, the host-sync test, and the verify-metadata
#     identity test, which also checks that the engine's launches took the kept path). Every
#     case passed on an H100 with the launcher on (runs 57-60); run it again after a change
#     to the launcher, acceptance, commit or graph staging. Run 59 cut two engine tests at
#     the old step limits (190 and 320 s), so the NGRAM mask engine test (passed in runs 58
#     and 60) is no longer in it.
# Device tool:  run(command="bash ci/gpu/first_call.sh $OUT", carry=[".wheelhouse"])
set -uo pipefail
OUT=${1:?usage: first_call.sh OUT}
cd "$(dirname "$0")/../.."
eval "$(bash ci/gpu/install_device_env.sh)" || { echo "install failed"; exit 1; }
export PATH=$PATH:/usr/local/cuda/bin TVM_FFI_CACHE_DIR=/tmp/tvmffi PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
call_a() {
  SGLANG_SCV_CACHED_LAUNCH=1 OUT=$OUT SUITE_STEPS=kernels,engine \
    KERNEL_TESTS="tests/test_launcher.py tests/test_ngram_draft.py::test_launch_host_us_decomposed" \
    KERNELS_TIMEOUT=60 ENGINE_TIMEOUT=450 \
    ENGINE_K='eagle3 or no_host_sync or replay_equals or verify_metadata_kernel_identity' \
    bash ci/gpu/run_gpu_suite.sh
}
if [ "${FIRST_CALL:-}" = a ]; then
  call_a
else
  SKIP_MASK_TESTS=1 bash ci/gpu/latency_call.sh "$OUT"  # it branches on the card itself
fi
bash ci/gpu/pack_results.sh "$OUT"
