#!/usr/bin/env bash
# Assemble .wheelhouse/: the cp312 manylinux x86_64 wheels that make the REAL SGLang 0.5.17
# engine import and run on the GPU machine (Python 3.12, torch 2.11.0+cu130, no network).
#
#   tools/build_device_wheelhouse.sh            # build / refresh .wheelhouse (idempotent)
#   WHEEL_CACHE=/somewhere tools/build_device_wheelhouse.sh
#
# Pins live in ONE file: ci/device-wheelhouse.txt. Raw downloads go to $WHEEL_CACHE (outside
# the repo: the raw sglang-kernel wheel alone is 383 MB); .wheelhouse gets only what travels.
# Four wheels are rebuilt smaller (valid wheels, fresh RECORD with sha256 + size):
#   sglang-kernel  -> python files + sm90/common_ops + spatial_ops + triton_kernels/, and its
#                     flashinfer norm/sampling shortcut obeys SGLANG_IS_FLASHINFER_AVAILABLE=false
#   sglang         -> minus the Rust server/gRPC/multimodal _core .so files and multimodal_gen/,
#                     plus a one-line fix to the NGRAM corpus JIT header (missing <cstddef>)
#   xgrammar       -> minus lib/libxgrammar.a, bindings .so stripped of debug info
#   flashinfer     -> minus the JIT sources under flashinfer/data (import-only: sglang imports it
#                     at module level on CUDA; install_device_env.sh sets SGLANG_IS_FLASHINFER_AVAILABLE=false)
# Then .wheelhouse must stay under 56 MiB (a device call carries 64 MiB with the repo).
# Install there with ci/gpu/install_device_env.sh. See docs/device-wheelhouse.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PINS="$ROOT/ci/device-wheelhouse.txt"
OUT="${WHEELHOUSE:-$ROOT/.wheelhouse}"
CACHE="${WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sglang-nwor-scv/device-wheels}"
LIMIT_MIB="${WHEELHOUSE_LIMIT_MIB:-56}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT" "$CACHE"

# name==version lines, comments and blanks dropped
mapfile -t REQS < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$PINS" | grep -v '^$')
[ "${#REQS[@]}" -gt 0 ] || { echo "no pins in $PINS" >&2; exit 1; }

# wheel file name stem: distribution name normalised as in wheel file names (PEP 427/491)
stem() { local n="${1%%==*}" v="${1#*==}"; n="$(echo "$n" | tr 'A-Z' 'a-z' | sed -E 's/[-_.]+/_/g')"; echo "${n}-${v}-"; }
find_wheel() { # $1 dir, $2 req -> path of the matching wheel (case-insensitive) or nothing
  local s; s="$(stem "$2")"
  find "$1" -maxdepth 1 -type f -iname "${s}*.whl" | head -n 1
}

# ---- 1. download what is missing from the cache ------------------------------------------------
MISSING=()
for r in "${REQS[@]}"; do
  [ -n "$(find_wheel "$CACHE" "$r")" ] || MISSING+=("$r")
done
if [ "${#MISSING[@]}" -gt 0 ]; then
  echo "downloading ${#MISSING[@]} wheel(s) into $CACHE"
  PLAT=()
  for p in manylinux_2_34_x86_64 manylinux_2_31_x86_64 manylinux_2_28_x86_64 manylinux_2_27_x86_64 \
           manylinux_2_26_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
           manylinux_2_5_x86_64 manylinux1_x86_64; do PLAT+=(--platform "$p"); done
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp "${PLAT[@]}" -d "$CACHE" "${MISSING[@]}"
fi
for r in "${REQS[@]}"; do
  [ -n "$(find_wheel "$CACHE" "$r")" ] || { echo "still missing after download: $r" >&2; exit 1; }
done

# ---- 2. the wheel rewriter (drop members, strip .so, patch text, fresh RECORD) -----------------
TRIM="$CACHE/.trim_wheel.py"
cat > "$TRIM" <<'PYEOF'
import argparse, base64, csv, fnmatch, hashlib, io, os, subprocess, tempfile, zipfile
ap = argparse.ArgumentParser()
ap.add_argument("src"); ap.add_argument("dst")
ap.add_argument("--drop", action="append", default=[], help="glob of members to leave out")
ap.add_argument("--strip", action="append", default=[], help="glob of .so members to strip")
ap.add_argument("--patch", action="append", default=[], help="MEMBER::OLD::NEW (OLD must occur)")
a = ap.parse_args()
patches = {}
for p in a.patch:
    member, old, new = p.split("::")
    patches.setdefault(member, []).append((old.encode().decode("unicode_escape"),
                                           new.encode().decode("unicode_escape")))
zin = zipfile.ZipFile(a.src)
record = next(n for n in zin.namelist() if n.endswith(".dist-info/RECORD"))
rows, kept, dropped, seen_patch = [], 0, 0, set()
tmp = a.dst + ".part"
with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
    for info in zin.infolist():
        n = info.filename
        if n == record or n.endswith("/"):
            continue
        if any(fnmatch.fnmatch(n, g) for g in a.drop):
            dropped += 1
            continue
        data = zin.read(n)
        if any(fnmatch.fnmatch(n, g) for g in a.strip):
            fd, path = tempfile.mkstemp(suffix=".so")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            subprocess.run(["strip", "--strip-unneeded", path], check=True)
            with open(path, "rb") as f:
                data = f.read()
            os.unlink(path)
        for old, new in patches.get(n, []):
            text = data.decode()
            if new in text:          # already patched upstream: leave as is
                seen_patch.add(n); continue
            assert old in text, f"patch anchor not found in {n}: {old!r}"
            data = text.replace(old, new, 1).encode(); seen_patch.add(n)
        zi = zipfile.ZipInfo(n, date_time=info.date_time)
        zi.external_attr = info.external_attr
        zi.compress_type = zipfile.ZIP_DEFLATED
        zout.writestr(zi, data, compresslevel=9)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        rows.append((n, f"sha256={digest}", str(len(data))))
        kept += 1
    rows.append((record, "", ""))
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)  # CSV: some paths hold commas
    zout.writestr(record, buf.getvalue(), compresslevel=9)
missing = set(patches) - seen_patch
assert not missing, f"patch targets not in wheel: {missing}"
os.replace(tmp, a.dst)
mib = lambda p: os.path.getsize(p) / 2**20
print(f"  trimmed {os.path.basename(a.dst)}: kept {kept}, dropped {dropped}, "
      f"{mib(a.src):.1f} -> {mib(a.dst):.1f} MiB")
PYEOF

# sgl_kernel 0.4.5 routes rmsnorm/fused_add_rmsnorm and top-k/top-p renorm to flashinfer whenever
# `import flashinfer.norm` / `.sampling` works, which JIT-compiles flashinfer sources we do not
# carry. This guard makes sgl_kernel use its own ops when SGLANG_IS_FLASHINFER_AVAILABLE is false
# (the switch sglang itself reads; install_device_env.sh sets it with this wheelhouse).
FI_GUARD='try:\n    import os as _os\n    if _os.environ.get("SGLANG_IS_FLASHINFER_AVAILABLE", "true").lower() in ("0", "false", "no", "off"):\n        raise ImportError("flashinfer disabled by SGLANG_IS_FLASHINFER_AVAILABLE")'

# per-distribution rewrite rules (keyed by the normalised name used in wheel file names)
trim_args() {
  case "$1" in
    sglang_kernel) printf '%s\n' \
        --drop 'sgl_kernel/flash_ops*.so' --drop 'sgl_kernel/flashmla_ops*.so' \
        --drop 'sgl_kernel/infllm_ops*.so' --drop 'sgl_kernel/sm100/*' \
        --patch "sgl_kernel/elementwise.py::try:\n    import flashinfer.norm::$FI_GUARD\n    import flashinfer.norm" \
        --patch "sgl_kernel/sampling.py::try:\n    import flashinfer.sampling::$FI_GUARD\n    import flashinfer.sampling" ;;
    sglang) printf '%s\n' \
        --drop 'sglang/srt/server/_core*.so' --drop 'sglang/srt/grpc/_core*.so' \
        --drop 'sglang/srt/multimodal/_core*.so' --drop 'sglang/multimodal_gen/*' \
        --drop 'tools/*' --drop '*/.claude/*' \
        --patch 'sglang/kernels/jit/csrc/ngram_corpus/result.h::#include <cstdint>::#include <cstddef>\n#include <cstdint>' ;;
    flashinfer_python) printf '%s\n' \
        --drop 'flashinfer/data/cccl/*' --drop 'flashinfer/data/cutlass/*' \
        --drop 'flashinfer/data/csrc/*' --drop 'flashinfer/data/include/*' \
        --drop 'flashinfer/data/spdlog/*' ;;
    xgrammar) printf '%s\n' --drop 'xgrammar/lib/*' --strip 'xgrammar/*.so' ;;
    sgl_deep_gemm) printf '%s\n' --drop 'deep_gemm/include/*' --strip 'deep_gemm/*.so' ;;
    *) return 1 ;;
  esac
}

# ---- 3. fill .wheelhouse ------------------------------------------------------------------------
WANT=()
for r in "${REQS[@]}"; do
  src="$(find_wheel "$CACHE" "$r")"; base="$(basename "$src")"; dst="$OUT/$base"; WANT+=("$base")
  key="$(stem "$r")"; key="${key%%-*}"
  if mapfile -t args < <(trim_args "$key"); [ "${#args[@]}" -gt 0 ]; then
    stamp="$OUT/.$base.rules"
    rules="$(printf '%s\n' "${args[@]}"; sha256sum "$CACHE/.trim_wheel.py" | cut -c1-16)"
    if [ -f "$dst" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$rules" ] && [ "$dst" -nt "$src" ]; then
      continue
    fi
    "$PY" "$TRIM" "$src" "$dst" "${args[@]}"
    printf '%s' "$rules" > "$stamp"
  else
    if [ ! -f "$dst" ] || ! cmp -s "$src" "$dst"; then cp -f "$src" "$dst"; fi
  fi
done

# drop stale wheels (old versions would make pip refuse the install: one version of each)
for f in "$OUT"/*.whl; do
  b="$(basename "$f")"; keep=0
  for w in "${WANT[@]}"; do [ "$w" = "$b" ] && keep=1 && break; done
  if [ "$keep" = 0 ]; then echo "  removing stale $b"; rm -f "$f" "$OUT/.$b.rules"; fi
done

# ---- 4. sizes -----------------------------------------------------------------------------------
echo
echo "wheelhouse $OUT (${#WANT[@]} wheels):"
ls -l "$OUT"/*.whl | awk '{printf "  %8.2f MiB  %s\n", $5/1048576, $NF}' | sed "s|$OUT/||" | sort -rn
WH_BYTES=$(find "$OUT" -maxdepth 1 -name '*.whl' -printf '%s\n' | awk '{s+=$1} END {print s+0}')
. "$ROOT/ci/gpu/device_wheel.sh"
REPO_BYTES=$(working_tree_bytes "$ROOT")
awk -v w="$WH_BYTES" -v r="$REPO_BYTES" -v l="$LIMIT_MIB" 'BEGIN {
  printf "TOTAL wheelhouse: %.2f MiB (limit %d MiB); repo working tree that travels: %.2f MiB; sum %.2f MiB of 64\n",
         w/1048576, l, r/1048576, (w+r)/1048576 }'
if [ "$WH_BYTES" -gt $((LIMIT_MIB * 1048576)) ]; then
  echo "FAIL: wheelhouse over ${LIMIT_MIB} MiB" >&2; exit 1
fi
if [ $((WH_BYTES + REPO_BYTES)) -gt $((63 * 1048576)) ]; then
  echo "FAIL: wheelhouse + repo over 63 MiB: a device call carries at most 64 MiB" >&2; exit 1
fi
