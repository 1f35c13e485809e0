#!/usr/bin/env bash
# Issue 16 on a GPU in two device calls (run inside an installed env, see install_device_env.sh):
#   bash ci/gpu/robustness_call.sh OUT serve     fault injection + the 128-stream soak (NGRAM
#                                                tree) + a 64-stream STANDALONE soak
#   bash ci/gpu/robustness_call.sh OUT sanitizer compute-sanitizer memcheck/racecheck/initcheck
# Each part has a hard timeout inside the call's 10 minutes; pass/fail per part is printed last.
set -uo pipefail
OUT=${1:?usage: robustness_call.sh OUT serve|sanitizer}; PART=${2:?serve|sanitizer}
bash ci/gpu/card.sh "$OUT"
python3 tools/make_tiny_models.py .fixtures/tiny > /dev/null 2>&1
declare -A RC
part() {  # name timeout cmd...
  local name=$1 t=$2 t0=$SECONDS; shift 2
  timeout -k 10 "$t" "$@" > "$OUT/$name.log" 2>&1; RC[$name]=$?
  pkill -9 -f "sglang.launch_server|multiprocessing.spawn" 2> /dev/null  # a cut part frees the card
  echo "== $name rc=${RC[$name]} $((SECONDS - t0))s"; tail -n 12 "$OUT/$name.log"
}
SOAK=(python3 tools/soak.py --requests 2 --max-total-tokens 6000 --chunked-prefill 256 --start-timeout 150)
case $PART in
  serve)
    part faults 170 python3 -m pytest -q -s -p no:cacheprovider tests/test_faults.py --junitxml="$OUT/faults.xml"
    part soak-ngram-tree 200 "${SOAK[@]}" --out "$OUT/soak-ngram-tree" --spec ngram-tree --streams 128
    part soak-standalone 150 "${SOAK[@]}" --out "$OUT/soak-standalone" --spec standalone-chain --streams 64 ;;
  sanitizer)
    OUT=$OUT SUITE_STEPS=sanitizer SANITIZER_TIMEOUT=${SANITIZER_TIMEOUT:-170} bash ci/gpu/run_gpu_suite.sh
    RC[sanitizer]=$? ;;
  *) echo "unknown part '$PART' (serve|sanitizer)"; exit 2 ;;
esac
for k in "${!RC[@]}"; do echo "$k rc=${RC[$k]}"; done
for k in "${!RC[@]}"; do [ "${RC[$k]}" = 0 ] || exit 1; done
