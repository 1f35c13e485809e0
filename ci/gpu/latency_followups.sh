#!/usr/bin/env bash
# The second device call of a session: where SCV graph mode could pay (EAGLE3 chain under the
# overlap scheduler, 8B shape and a host-bound 8-layer shape) and NGRAM with long prompts (the
# 0.5.17 prompt-tail fix, patch/hook 0008), each plugin-off against default.
#   bash ci/gpu/latency_followups.sh OUT
#   FOLLOWUPS=eagle3: the two EAGLE3 shapes alone, with the whole call's time, so each point
#     gets the 5+ interleaved rounds a claim needs (run 67 got 1-3 rounds with the default)
set -uo pipefail
OUT=${1:?usage: latency_followups.sh OUT}
bash ci/gpu/card.sh "$OUT"
M=(python3 tools/measure_latency.py --tokens 512 --start-timeout 200 --modes plugin-off,default)
t0=$SECONDS
if [ "${FOLLOWUPS:-all}" = eagle3 ]; then
  timeout -k 20 320 "${M[@]}" --out "$OUT/eagle3-32l" --layers 32 --spec eagle3-chain --bs 1,8,32 \
    --repeats 12 --target-ci-points 2 --deadline-s 270 > "$OUT/eagle3-32l.log" 2>&1
  echo "eagle3-32l $((SECONDS - t0)) s"
  pkill -9 -f multiprocessing.spawn 2> /dev/null
  timeout -k 20 250 "${M[@]}" --out "$OUT/eagle3-8l" --layers 8 --spec eagle3-chain --bs 1,8,32 \
    --repeats 12 --target-ci-points 2 --deadline-s 200 > "$OUT/eagle3-8l.log" 2>&1
  echo "eagle3-8l $((SECONDS - t0)) s"
  for f in "$OUT"/*.log; do echo "== $f"; tr '\r' '\n' < "$f" | grep -v 'Capturing\|it/s\]' | tail -n 20; done
  exit 0
fi
timeout -k 20 200 "${M[@]}" --out "$OUT/eagle3-32l" --layers 32 --spec eagle3-chain --bs 1,8,32 --repeats 5 \
  --deadline-s 150 > "$OUT/eagle3-32l.log" 2>&1; echo "eagle3-32l $((SECONDS - t0)) s"
pkill -9 -f multiprocessing.spawn 2> /dev/null
timeout -k 20 130 "${M[@]}" --out "$OUT/eagle3-8l" --layers 8 --spec eagle3-chain --bs 1,8,32 --repeats 5 \
  --deadline-s 100 > "$OUT/eagle3-8l.log" 2>&1; echo "eagle3-8l $((SECONDS - t0)) s"
pkill -9 -f multiprocessing.spawn 2> /dev/null
timeout -k 20 150 "${M[@]}" --out "$OUT/ngram-long" --layers 32 --spec ngram-tree-n8 --prompt-len 2048 --bs 32 \
  --repeats 5 --deadline-s 110 > "$OUT/ngram-long.log" 2>&1; echo "ngram-long $((SECONDS - t0)) s"
for f in "$OUT"/*.log; do echo "== $f"; tr '\r' '\n' < "$f" | grep -v 'Capturing\|it/s\]' | tail -n 20; done
