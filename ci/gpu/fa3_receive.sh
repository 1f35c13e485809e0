#!/usr/bin/env bash
# On the GPU machine: take the FA3 library parts carried so far (ci/gpu/build_fa3_carry.sh)
# and, once every part has come, put sgl_kernel's flash_ops.abi3.so into the device site.
#
# Each call carries one folder .fa3/pK; this script checks that part against its MANIFEST
# and keeps it in $FA3_PARTS (default /tmp/fa3parts; a warm machine keeps /tmp). When all
# parts are there it decompresses them (Python's lzma: no xz binary needed) into the site's
# sgl_kernel/, checks the library's sha256 and renames it into place; a wrong checksum
# leaves no library behind. Exit 0 with the library in place, 3 while parts are missing
# (it names them), 1 on a bad part or checksum. FA3_CARRIED (instead of .fa3) is for tests.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SITE="${DEVICE_SITE:-/tmp/site}"
KEEP="${FA3_PARTS:-/tmp/fa3parts}"
log() { echo "[fa3_receive] $*" >&2; }
mkdir -p "$KEEP"

shopt -s nullglob
for dir in "${FA3_CARRIED:-$REPO/.fa3}"/p*/; do
  [ -f "$dir/MANIFEST" ] || { log "no MANIFEST in $dir"; exit 1; }
  cp "$dir/MANIFEST" "$KEEP/MANIFEST.new"
  if [ -f "$KEEP/MANIFEST" ] && ! cmp -s "$KEEP/MANIFEST" "$KEEP/MANIFEST.new"; then
    log "$dir belongs to another build of the parts than those kept in $KEEP: starting over"
    rm -f "$KEEP"/flash_ops.xz.*
  fi
  mv "$KEEP/MANIFEST.new" "$KEEP/MANIFEST"
  for part in "$dir"/flash_ops.xz.*; do
    n="${part##*.}"
    want="$(awk -v n="$n" '$1 == "part" && $2 == n {print $3}' "$KEEP/MANIFEST")"
    got="$(sha256sum "$part" | cut -d' ' -f1)"
    [ "$want" = "$got" ] || { log "part $n: sha256 $got, MANIFEST says $want"; exit 1; }
    cp "$part" "$KEEP/flash_ops.xz.$n"
    log "part $n kept"
  done
done
shopt -u nullglob
[ -f "$KEEP/MANIFEST" ] || { log "no part carried yet (build them: ci/gpu/build_fa3_carry.sh)"; exit 3; }

lib_sha="$(awk '$1 == "library" {print $3}' "$KEEP/MANIFEST")"
count="$(awk '$1 == "parts" {print $2}' "$KEEP/MANIFEST")"
target="$SITE/sgl_kernel/flash_ops.abi3.so"
[ -d "$SITE/sgl_kernel" ] || { log "no sgl_kernel in $SITE: run install_device_env.sh with .wheelhouse first"; exit 1; }
if [ -f "$target" ] && [ "$(sha256sum "$target" | cut -d' ' -f1)" = "$lib_sha" ]; then
  log "flash_ops.abi3.so already in place"
  exit 0
fi
missing=()
for n in $(seq 1 "$count"); do [ -f "$KEEP/flash_ops.xz.$n" ] || missing+=("$n"); done
if [ "${#missing[@]}" -gt 0 ]; then
  log "parts missing: ${missing[*]} of $count (carry .fa3/p<N> for each, one call apiece)"
  exit 3
fi
python3 - "$KEEP" "$count" "$target.part" <<'PYEOF'
import lzma, sys
keep, count, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
d = lzma.LZMADecompressor()
with open(out, "wb") as dst:
    for n in range(1, count + 1):
        with open(f"{keep}/flash_ops.xz.{n}", "rb") as src:
            while chunk := src.read(1 << 24):
                dst.write(d.decompress(chunk))
if not d.eof:
    raise SystemExit("the parts end before the compressed stream does")
PYEOF
got="$(sha256sum "$target.part" | cut -d' ' -f1)"
if [ "$got" != "$lib_sha" ]; then
  rm -f "$target.part"
  log "assembled library: sha256 $got, MANIFEST says $lib_sha"
  exit 1
fi
mv "$target.part" "$target"
log "flash_ops.abi3.so in place ($(( $(stat -c %s "$target") >> 20 )) MiB): FA3 can run"
