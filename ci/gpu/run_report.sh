#!/usr/bin/env bash
# Issue-6 measurements on the real engine, then the nightly report; artifacts in $OUT.
#   sweep: tools/measure_engine.py  latency/throughput vs batch size (+ NVML GPM) and
#          torch.profiler launches/host time per verify step, per mode
#   ncu:   tools/measure_ncu.py     Nsight Compute DRAM/L2 bytes per whole verify step, per mode
# Knobs (env): REPORT_PARTS=sweep,ncu  SPECS  SWEEP_MODES  SWEEP_BS  SAMPLING  NCU_SPECS  NCU_MODES
#              NCU_BS  NCU_LAYERS  NCU_ARGS  SWEEP_ARGS (extra flags)  REPORT_GPUS=0,1,..  SKIP_INSTALL=1 (environment already set up)
# Defaults suit an unattended runner (8 ncu sessions of ~1 min, sweep ~10 min on one GPU).
# Device tool (10-minute calls): set the *_TIMEOUT knobs below 600 s, and on a 2-GPU kind
# REPORT_GPUS=0,1 gives the whole report in one call (docs/measurements.md, run 16):
#   run(command="REPORT_GPUS=0,1 ... bash ci/gpu/run_report.sh && bash ci/gpu/pack_results.sh",
#       carry=[".wheelhouse"])
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TVM_FFI_CACHE_DIR=/tmp/tvmffi
[ -x /usr/local/cuda/bin/nvcc ] && export PATH=$PATH:/usr/local/cuda/bin
if [ -z "${SKIP_INSTALL:-}" ]; then
  eval "$(bash ci/gpu/install_device_env.sh)" || { echo "install failed"; exit 1; }
fi
bash ci/gpu/card.sh "$OUT"
PARTS=${REPORT_PARTS:-sweep,ncu}
# REPORT_GPUS=0,1[,2,3] (several GPUs): the sweep runs on the first GPU while the ncu
# sessions share the remaining GPUs, all at once.
IFS=, read -r -a GPUS <<< "${REPORT_GPUS:-}"
SWEEP_ENV=() NCU_GPUS=""
if [ "${#GPUS[@]}" -ge 2 ]; then
  SWEEP_ENV=(env CUDA_VISIBLE_DEVICES="${GPUS[0]}")
  NCU_GPUS=$(IFS=,; echo "${GPUS[*]:1}")
fi
run_ncu() {
  echo "=== ncu${NCU_GPUS:+ (GPUs $NCU_GPUS)}"; local t0=$SECONDS r=0
  timeout "${NCU_TIMEOUT:-1800}" python3 tools/measure_ncu.py --out "$OUT" \
    --specs "${NCU_SPECS:-ngram-chain,ngram-tree-n8}" \
    --modes "${NCU_MODES:-upstream,upstream-native-move,default}" \
    --bs "${NCU_BS:-8,32,128}" --layers "${NCU_LAYERS:-8}" --timeout "${NCU_MODE_TIMEOUT:-300}" \
    ${NCU_GPUS:+--gpus "$NCU_GPUS"} ${NCU_ARGS:-} > "$OUT/ncu_log.txt" 2>&1 || r=1
  grep -E '^(===|FAILED|\{)' "$OUT/ncu_log.txt" | cut -c1-400
  echo "=== ncu rc=$r $((SECONDS - t0))s"; return $r
}
run_sweep() {
  echo "=== sweep${SWEEP_ENV:+ (GPU ${GPUS[0]})}"; local t0=$SECONDS r=0
  timeout "${SWEEP_TIMEOUT:-2400}" "${SWEEP_ENV[@]}" python3 tools/measure_engine.py --out "$OUT" \
    --specs "${SPECS:-ngram-chain,ngram-tree-n8}" --modes "${SWEEP_MODES:-plugin-off,plugin-off-native-move,default}" \
    --bs "${SWEEP_BS:-1,8,32,64,128}" --sampling "${SAMPLING:-greedy,sampling}" \
    --config-timeout "${SWEEP_CONFIG_TIMEOUT:-300}" ${SWEEP_ARGS:-} \
    > "$OUT/sweep_log.txt" 2>&1 || r=1
  grep -E '^(===|FAILED|\{)' "$OUT/sweep_log.txt" | cut -c1-240
  echo "=== sweep rc=$r $((SECONDS - t0))s"; return $r
}
rc=0
if [ -n "$NCU_GPUS" ] && [[ $PARTS == *ncu* && $PARTS == *sweep* ]]; then
  run_sweep > "$OUT/.sweep_summary.txt" 2>&1 & sweep_pid=$!
  run_ncu || rc=1
  wait "$sweep_pid" || rc=1
  cat "$OUT/.sweep_summary.txt"; rm -f "$OUT/.sweep_summary.txt"
else
  if [[ $PARTS == *ncu* ]]; then run_ncu || rc=1; fi
  if [[ $PARTS == *sweep* ]]; then run_sweep || rc=1; fi
fi
if [ -f tools/nightly_report.py ]; then
  python3 tools/nightly_report.py "$OUT" > "$OUT/report_log.txt" 2>&1 || echo "report: see $OUT/report_log.txt"
fi
exit $rc
