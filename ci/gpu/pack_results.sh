#!/usr/bin/env bash
# Pack a results folder into OUT/results.tgz and remove the rest, for transports that
# return only a few files (the device tool returns at most 8). Traces over 8 MiB are
# dropped (they are for local viewing; the per-step numbers are in profile.json).
#   bash ci/gpu/pack_results.sh [OUT]
set -euo pipefail
OUT=${1:-${OUT:-out/gpu}}
cd "$OUT"
find . -name '*.trace.json.gz' -size +8M -delete
shopt -s dotglob nullglob
items=(*)
items=("${items[@]/results.tgz}")
tar czf results.tgz --exclude=results.tgz ${items[@]}
rm -rf ${items[@]}
ls -la results.tgz
