#!/usr/bin/env bash
# SGLang's default attention backend on Hopper (FA3) with the plugin: what most H100/H200
# users run, where NWOR steps aside and the move, SCV and the NGRAM kernels still run.
#   FA3_PART=identity (default): the engine identity test on FA3 (NGRAM tree and chain, CUDA
#     graphs), then where a verify step's GPU time goes (SGLang's profiler, bs 1, 8B shape,
#     plugin-off, Triton and FA3; tools/trace_stats.py --kernels)
#   FA3_PART=test: the identity test alone (about 250 s with the install)
#   FA3_PART=latency: ci/gpu/latency_call.sh's FA3 group (plugin-off, native move, default;
#     bs 1 and 32)
# FA3 needs sgl_kernel's flash_ops library, which the wheelhouse cannot carry (run 65): carry it
# in parts first, one call each on the same warm machine (ci/gpu/build_fa3_carry.sh's header);
# the last part's call can be this one:
#   run(command="bash ci/gpu/fa3_call.sh $OUT", carry=[".fa3/pN"])
# This script assembles the parts (ci/gpu/fa3_receive.sh), checks one FA3 call against SDPA
# (ci/gpu/fa3_smoke.py) and stops with a clear line when either fails.
set -uo pipefail
OUT=${1:?usage: fa3_call.sh OUT}
cd "$(dirname "$0")/../.."
eval "$(bash ci/gpu/install_device_env.sh)" || { echo "install failed"; exit 1; }
export PATH=$PATH:/usr/local/cuda/bin TVM_FFI_CACHE_DIR=/tmp/tvmffi PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
bash ci/gpu/fa3_receive.sh || { echo "FA3 library not in place: no FA3 run (see ci/gpu/build_fa3_carry.sh)"; exit 3; }
python3 ci/gpu/fa3_smoke.py | tee "$OUT/fa3_smoke.txt"
[ "${PIPESTATUS[0]}" = 0 ] || { echo "FA3 smoke check failed: no FA3 run"; bash ci/gpu/pack_results.sh "$OUT"; exit 1; }
if [ "${FA3_PART:-identity}" = latency ]; then
  SKIP_MASK_TESTS=1 LATENCY_PART=fa3 bash ci/gpu/latency_call.sh "$OUT"
  tail -n 40 "$OUT/f.log"
else
  bash ci/gpu/card.sh "$OUT"
  timeout 230 python3 -m pytest -q -p no:cacheprovider -s tests/gpu/test_engine_gpu.py \
    -k "backend_move_fix_identity and fa3" > "$OUT/fa3_identity.txt" 2>&1
  grep -E "^FA3|passed|failed|Error" "$OUT/fa3_identity.txt" | tail -n 12
  steps='VerifyTreeGreedy|_verify_accept_greedy_kernel|verify_tree_greedy'
  [ "${FA3_PART:-identity}" = test ] || for backend in triton fa3; do
    timeout 160 python3 tools/measure_engine.py --out "$OUT/k_$backend" --attention-backend "$backend" \
      --specs ngram-tree-n8 --modes plugin-off --bs 1 --sampling greedy --tokens 64 \
      --repeats 1 --profile-bs 1 --profile-tokens 48 --config-timeout 130 > "$OUT/k_$backend.log" 2>&1
    for t in $(find "$OUT/k_$backend" -name "*.trace.json*" | sort); do
      python3 tools/trace_stats.py --kernels "$steps" "$t" | head -n 24 | tee -a "$OUT/kernels_$backend.md"
    done
    rm -rf "$OUT/k_$backend/traces"
  done
fi
bash ci/gpu/pack_results.sh "$OUT"
