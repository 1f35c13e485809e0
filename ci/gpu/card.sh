#!/usr/bin/env bash
# Write OUT/card.txt once (card, driver, memory; then the sglang / torch / triton versions):
# the one writer of the file every report names its card from.  bash ci/gpu/card.sh OUT
set -euo pipefail
OUT=${1:?usage: card.sh OUT}
if [ ! -s "$OUT/card.txt" ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -n 1 > "$OUT/card.txt"
  python3 -c 'import sglang, torch, triton; print("sglang", sglang.__version__, "torch", torch.__version__, "triton", triton.__version__)' >> "$OUT/card.txt"
fi
cat "$OUT/card.txt"
