#!/usr/bin/env bash
# sgl_kernel's FA3 library, in parts small enough to carry, for FA3 runs on the GPU machine.
#
# SGLang's default attention backend on Hopper is FA3 (`sgl_kernel.flash_ops`). The device
# wheelhouse drops that file: it is 1,070 MiB (326 MiB in the wheel) against the 64 MiB a
# device call carries, and the machine has no network (run 65). A warm machine keeps the
# git-ignored paths an earlier call carried, so the file goes over in parts, one call each:
#   .fa3/p1 .. .fa3/pN   xz-compressed parts of at most FA3_PART_MIB MiB (default: what the
#                        64 MiB carry leaves beside the repo's working tree, less 2 MiB), each
#                        folder with MANIFEST (the library's sha256, the part count, every
#                        part's sha256), so any one call knows what the whole needs.
# The calls, chained within the warm window (ci/gpu/fa3_receive.sh says what is missing):
#   1. carry [".wheelhouse"]:  bash ci/gpu/install_device_env.sh >/dev/null
#   2. carry [".fa3/p1"]:      bash ci/gpu/fa3_receive.sh
#      ... one call per part ...
#   N+1. carry [".fa3/pN"]:    bash ci/gpu/fa3_receive.sh && bash ci/gpu/fa3_call.sh $OUT
# The last part's call assembles the library into /tmp/site/sgl_kernel/ and checks its sha256.
# FA3_WHEEL (a wheel to take the library from) and FA3_DEST (instead of .fa3) are for tests.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEST="${FA3_DEST:-$REPO/.fa3}"
# A call carries the working tree too (tracked and untracked-not-ignored files): a 60 MiB part
# beside a 10 MiB tree was refused (twenty-first session). Size the parts to what is left.
. "$REPO/ci/gpu/device_wheel.sh"
REPO_MIB=$(( ($(working_tree_bytes "$REPO") + 1048575) >> 20 ))
PART_MIB="${FA3_PART_MIB:-$((62 - REPO_MIB))}"
if [ $((PART_MIB + REPO_MIB)) -gt 63 ] || [ "$PART_MIB" -lt 1 ]; then
  echo "FAIL: parts of $PART_MIB MiB beside a $REPO_MIB MiB working tree exceed a 64 MiB carry" >&2
  exit 1
fi
CACHE="${WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sglang-nwor-scv/device-wheels}"
PIN="$(device_wheel_pin sglang-kernel)"
VERSION="${PIN#*==}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

whl="${FA3_WHEEL:-$(ls "$CACHE"/sglang_kernel-"$VERSION"-*.whl 2>/dev/null | head -n 1 || true)}"
if [ -z "$whl" ]; then
  download_device_wheel "$CACHE" "$PIN"
  whl="$(ls "$CACHE"/sglang_kernel-"$VERSION"-*.whl | head -n 1)"
fi
echo "from ${whl##*/}"
"${PYTHON:-python3}" - "$whl" "$WORK/flash_ops.abi3.so" <<'PYEOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("sgl_kernel/flash_ops.abi3.so") as src, \
        open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 24)
PYEOF
lib_sha="$(sha256sum "$WORK/flash_ops.abi3.so" | cut -d' ' -f1)"
echo "flash_ops.abi3.so: $(( $(stat -c %s "$WORK/flash_ops.abi3.so") >> 20 )) MiB, sha256 $lib_sha"
xz -T0 -6 -c "$WORK/flash_ops.abi3.so" > "$WORK/flash_ops.xz"
echo "compressed: $(( $(stat -c %s "$WORK/flash_ops.xz") >> 20 )) MiB"
split -b "${PART_MIB}M" -d -a 2 "$WORK/flash_ops.xz" "$WORK/part."
parts=("$WORK"/part.*)
rm -rf "$DEST"
{
  echo "library flash_ops.abi3.so $lib_sha"
  echo "version $VERSION"
  echo "parts ${#parts[@]}"
  i=1
  for p in "${parts[@]}"; do echo "part $i $(sha256sum "$p" | cut -d' ' -f1)"; i=$((i + 1)); done
} > "$WORK/MANIFEST"
i=1
for p in "${parts[@]}"; do
  mkdir -p "$DEST/p$i"
  mv "$p" "$DEST/p$i/flash_ops.xz.$i"
  cp "$WORK/MANIFEST" "$DEST/p$i/MANIFEST"
  i=$((i + 1))
done
du -sh "$DEST"/p*
echo "carry each of .fa3/p1 .. .fa3/p${#parts[@]} in its own call on one warm machine (see this file's header)"
