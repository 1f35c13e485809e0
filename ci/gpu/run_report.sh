#!/usr/bin/env bash
# Issue-6 measurements on the real engine, then the nightly report; artifacts in $OUT.
#   sweep: tools/measure_engine.py  latency/throughput vs batch size (+ NVML GPM) and
#          torch.profiler launches/host time per verify step, per mode
#   ncu:   tools/measure_ncu.py     Nsight Compute DRAM/L2 bytes per whole verify step, per mode
# Knobs (env): REPORT_PARTS=sweep,ncu  SPECS  SWEEP_MODES  SWEEP_BS  SAMPLING  NCU_SPECS  NCU_MODES
#              NCU_BS  NCU_LAYERS  NCU_ARGS  SWEEP_ARGS (extra flags)  SKIP_INSTALL=1 (environment already set up)
# Device tool: run(command="bash ci/gpu/run_report.sh", carry=[".wheelhouse"])
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TVM_FFI_CACHE_DIR=/tmp/tvmffi
[ -x /usr/local/cuda/bin/nvcc ] && export PATH=$PATH:/usr/local/cuda/bin
if [ -z "${SKIP_INSTALL:-}" ]; then
  eval "$(bash ci/gpu/install_device_env.sh)" || { echo "install failed"; exit 1; }
fi
if [ ! -s "$OUT/card.txt" ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -n 1 > "$OUT/card.txt"
  python3 -c 'import sglang, torch, triton; print("sglang", sglang.__version__, "torch", torch.__version__, "triton", triton.__version__)' >> "$OUT/card.txt"
fi
cat "$OUT/card.txt"
PARTS=${REPORT_PARTS:-sweep,ncu}
rc=0
if [[ $PARTS == *ncu* ]]; then
  echo "=== ncu"; t0=$SECONDS
  timeout "${NCU_TIMEOUT:-540}" python3 tools/measure_ncu.py --out "$OUT" \
    --specs "${NCU_SPECS:-ngram-chain,ngram-tree}" \
    --modes "${NCU_MODES:-nwor_off_scv_off,nwor_stage_scv_off,nwor_off_scv_graph,nwor_stage_scv_graph}" \
    --bs "${NCU_BS:-32,128}" --layers "${NCU_LAYERS:-8}" --timeout "${NCU_MODE_TIMEOUT:-400}" ${NCU_ARGS:-} \
    > "$OUT/ncu_log.txt" 2>&1 || rc=1
  grep -E '^(===|FAILED|\{)' "$OUT/ncu_log.txt" | cut -c1-400
  echo "=== ncu rc=$rc $((SECONDS - t0))s"
fi
if [[ $PARTS == *sweep* ]]; then
  echo "=== sweep"; t0=$SECONDS
  timeout "${SWEEP_TIMEOUT:-540}" python3 tools/measure_engine.py --out "$OUT" \
    --specs "${SPECS:-ngram-chain,ngram-tree}" --modes "${SWEEP_MODES:-plugin-off,off,nwor+scv}" \
    --bs "${SWEEP_BS:-1,8,32,64,128}" --sampling "${SAMPLING:-greedy,sampling}" \
    --config-timeout "${SWEEP_CONFIG_TIMEOUT:-300}" ${SWEEP_ARGS:-} \
    > "$OUT/sweep_log.txt" 2>&1 || rc=1
  grep -E '^(===|FAILED|\{)' "$OUT/sweep_log.txt" | cut -c1-240
  echo "=== sweep rc=$rc $((SECONDS - t0))s"
fi
if [ -f tools/nightly_report.py ]; then
  python3 tools/nightly_report.py "$OUT" > "$OUT/report_log.txt" 2>&1 || echo "report: see $OUT/report_log.txt"
fi
exit $rc
