#!/usr/bin/env bash
# Issue 16 on a GPU, one part per device call (run inside an installed env, see
# install_device_env.sh):
#   bash ci/gpu/robustness_call.sh OUT serve     the 128-stream soak (NGRAM tree; defaults, then
#                                                every bucket staged) and a 64-stream STANDALONE
#                                                soak, each against a plugin-off server
#   bash ci/gpu/robustness_call.sh OUT faults    fault injection, one pytest process per test so
#                                                a failure's message prints when it happens (run
#                                                28/31: the step's timeout cut pytest before its
#                                                summary and the failures were lost)
#   bash ci/gpu/robustness_call.sh OUT sanitizer compute-sanitizer memcheck/initcheck/racecheck
# Each part has hard timeouts inside the call's 10 minutes; pass/fail per part is printed last.
# ONLY=REGEX runs only the parts whose name matches (e.g. ONLY=after_verify), so two parts of
# different kinds fit one call.
set -uo pipefail
OUT=${1:?usage: robustness_call.sh OUT serve|faults|sanitizer}; PART=${2:?serve|faults|sanitizer}
bash ci/gpu/card.sh "$OUT"
python3 tools/make_tiny_models.py .fixtures/tiny > /dev/null 2>&1
declare -A RC
part() {  # name timeout cmd...
  local name=$1 t=$2 t0=$SECONDS; shift 2
  [[ $name =~ ${ONLY:-.} ]] || return 0
  timeout -k 10 "$t" "$@" > "$OUT/$name.log" 2>&1; RC[$name]=$?
  pkill -9 -f "sglang.launch_server|multiprocessing.spawn" 2> /dev/null  # a cut part frees the card
  echo "== $name rc=${RC[$name]} $((SECONDS - t0))s"
  grep -v 'Capturing\|it/s\]' "$OUT/$name.log" | tail -n "$([ "${RC[$name]}" = 0 ] && echo 4 || echo 40)"
}
SOAK=(python3 tools/soak.py --requests 2 --max-total-tokens 6000 --chunked-prefill 256 --start-timeout 150)
case $PART in
  serve)  # about 80 s a soak on an H200 (run 28); defaults first (what users run: few buckets
    # staged in a small pool), then every bucket staged (NWOR on every verify step)
    part soak-ngram-tree 170 "${SOAK[@]}" --out "$OUT/soak-ngram-tree" --spec ngram-tree --streams 128
    part soak-ngram-tree-staged 170 "${SOAK[@]}" --out "$OUT/soak-ngram-tree-staged" --spec ngram-tree \
      --streams 128 --graph-max-mb 64
    part soak-standalone-staged 170 "${SOAK[@]}" --out "$OUT/soak-standalone-staged" \
      --spec standalone-chain --streams 64 --graph-max-mb 64 ;;
  faults)  # about 75 s a test on an H200 (three engines each)
    for node in $(python3 -m pytest -q -p no:cacheprovider --collect-only tests/test_faults.py | grep '::'); do
      name=faults-$(printf %s "${node#*::}" | tr -c 'A-Za-z0-9_.-' '_')
      part "$name" 120 python3 -m pytest -q -s -p no:cacheprovider -p no:warnings --tb=short "$node"
    done ;;
  sanitizer)
    OUT=$OUT SUITE_STEPS=sanitizer bash ci/gpu/run_gpu_suite.sh
    RC[sanitizer]=$? ;;
  *) echo "unknown part '$PART' (serve|faults|sanitizer)"; exit 2 ;;
esac
for k in "${!RC[@]}"; do echo "$k rc=${RC[$k]}"; done
for k in "${!RC[@]}"; do [ "${RC[$k]}" = 0 ] || exit 1; done
