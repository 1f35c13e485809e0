#!/usr/bin/env bash
# Fetch the upstream SGLang sources the patch series (patches/sglang-<V>/) is written
# against, as checkout-shaped trees: .cache/upstream/sglang-<V>/python/sglang/.
#
# Usage: ci/fetch_upstream_sources.sh [VERSION...]      (default: 0.5.23 0.5.17)
#
# The source is the release wheel from PyPI (`pip download --no-deps`): its
# sglang/ tree is upstream python/sglang/ at that tag (plus the generated
# _version.py). Idempotent: a tree that is already there is checked by its stamp
# and left alone, so a second run makes no network call.
# Env: PYTHON (interpreter whose pip is used; default .venv/bin/python, else python3),
#      NWOR_SCV_UPSTREAM_CACHE (default <repo>/.cache/upstream).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
CACHE=${NWOR_SCV_UPSTREAM_CACHE:-$REPO/.cache/upstream}
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
[ $# -gt 0 ] || set -- 0.5.23 0.5.17

fetch_one() (  # a subshell: its EXIT trap removes the scratch dir
  local ver=$1 dest=$CACHE/sglang-$1 stamp=$CACHE/sglang-$1/.fetched
  if [ -f "$stamp" ] && [ -f "$dest/python/sglang/__init__.py" ]; then
    echo "[fetch] sglang $ver: $dest (cached)"
    return 0
  fi
  local tmp
  tmp=$(mktemp -d "$CACHE/.fetch-$ver.XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" EXIT
  local pip=("$PYTHON" -m pip --disable-pip-version-check -q download --no-deps -d "$tmp/dl")
  # A wheel for this interpreter first; else any CPython 3.11 manylinux wheel
  # (the wheel's Python code is what we need, not its native parts).
  if ! "${pip[@]}" "sglang==$ver" 2>"$tmp/err1"; then
    local plat ok=""
    for plat in manylinux_2_34_x86_64 manylinux_2_28_x86_64 manylinux2014_x86_64; do
      if "${pip[@]}" --python-version 3.11 --only-binary=:all: --platform "$plat" \
          "sglang==$ver" 2>"$tmp/err2"; then ok=1; break; fi
    done
    if [ -z "$ok" ]; then
      echo "[fetch] error: cannot download sglang==$ver:" >&2
      cat "$tmp/err1" "$tmp/err2" >&2
      return 1
    fi
  fi
  local whl
  whl=$(find "$tmp/dl" -maxdepth 1 -name "sglang-$ver-*.whl" | head -n1)
  if [ -z "$whl" ]; then
    echo "[fetch] error: pip produced no sglang-$ver wheel (only: $(ls "$tmp/dl"))" >&2
    return 1
  fi
  mkdir -p "$tmp/x"
  unzip -q "$whl" 'sglang/*' -d "$tmp/x"
  rm -rf "$dest"
  mkdir -p "$dest/python"
  mv "$tmp/x/sglang" "$dest/python/sglang"
  printf 'sglang %s\nwheel %s\nsha256 %s\n' "$ver" "$(basename "$whl")" \
    "$(sha256sum "$whl" | cut -d' ' -f1)" >"$stamp"
  echo "[fetch] sglang $ver: $dest (from $(basename "$whl"))"
)

mkdir -p "$CACHE"
for v in "$@"; do fetch_one "$v"; done
