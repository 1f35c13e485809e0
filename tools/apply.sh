#!/usr/bin/env bash
# Apply the NWOR/SCV patch series (patches/sglang-<version>/series) to an SGLang tree.
#
# Usage: tools/apply.sh <sglang-tree> [--check | --reverse | --status]
#
#   <sglang-tree>  a checkout (the directory holding python/sglang/), an installed
#                  site-packages directory (holding sglang/), or the sglang/ package
#                  directory itself.
#   (no option)    apply the whole series; a no-op when it is already applied
#   --check        only say whether the series would apply (or is applied); change nothing
#   --reverse      remove the series again, restoring the files byte for byte
#   --status       print applied / not-applied / conflict for every patch, then the tree state
#   -h, --help     print this text (exit 0)
# At most one of --check, --reverse, --status (two different ones are refused, exit 2).
#
# The upstream version is read from sglang/version.py (a literal __version__), else
# sglang/_version.py (what release wheels and builds generate), else the adjacent
# sglang-<version>.dist-info, else an exact git tag of the checkout; the environment
# variable SGLANG_NWOR_SCV_FORCE_VERSION=<version> overrides it (development builds).
# The version must match a patches/sglang-<version>/ directory exactly.
#
# Atomic: the whole series is first applied (or reversed) to a scratch copy of the
# files it touches, with exact context (--fuzz=0); only when every patch succeeded are
# the results moved into the tree. On any failure the tree is left as it was. No
# .orig or .rej files are ever written into the tree.
#
# Exit status: 0 done (or nothing to do), 2 usage, 3 no tree / no sglang package,
# 4 unknown or undetectable version, 5 conflict (a patch neither applies nor is
# applied: the tree differs from upstream there), 6 partially applied series,
# 1 anything else (e.g. a file could not be written; the tree was restored).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PATCH_ROOT=${NWOR_SCV_PATCHES_DIR:-$REPO/patches}
PROG=tools/apply.sh

die() {
  local code=$1
  shift
  echo "$PROG: error: $*" >&2
  exit "$code"
}
say() { echo "$PROG: $*"; }

usage() {  # usage [exit status]: 0 (asked for with --help) prints to stdout
  local code=${1:-2}
  if [ "$code" = 0 ]; then
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
  else
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
  fi
  exit "$code"
}

# ------------------------------------------------------------------ arguments
MODE=apply
MODE_FLAG=""
TREE=""
set_mode() {  # one of --check / --reverse / --status: two different ones contradict
  if [ -n "$MODE_FLAG" ] && [ "$MODE_FLAG" != "$1" ]; then
    echo "$PROG: $MODE_FLAG and $1 cannot be combined (one of --check, --reverse, --status)" >&2
    exit 2
  fi
  MODE_FLAG=$1 MODE=$2
}
for arg in "$@"; do
  case "$arg" in
    --check) set_mode "$arg" check ;;
    --reverse) set_mode "$arg" reverse ;;
    --status) set_mode "$arg" status ;;
    -h | --help) usage 0 ;;
    -*) echo "$PROG: unknown option $arg" >&2; usage ;;
    *)
      [ -z "$TREE" ] || { echo "$PROG: more than one tree given" >&2; usage; }
      TREE=$arg
      ;;
  esac
done
[ -n "$TREE" ] || usage
patch --version 2>/dev/null | grep -q 'GNU patch' || die 1 "GNU patch is required"

# ------------------------------------------------------------------ layout
[ -e "$TREE" ] || die 3 "$TREE does not exist"
[ -d "$TREE" ] || die 3 "$TREE is not a directory"
TREE=$(cd "$TREE" && pwd -P)
if [ -f "$TREE/python/sglang/__init__.py" ]; then
  LAYOUT=checkout ROOT=$TREE PKG=$TREE/python/sglang STRIP=1
elif [ -f "$TREE/sglang/__init__.py" ]; then
  LAYOUT=site-packages ROOT=$TREE PKG=$TREE/sglang STRIP=2
elif [ "$(basename "$TREE")" = sglang ] && [ -f "$TREE/__init__.py" ] && [ -d "$TREE/srt" ]; then
  LAYOUT=site-packages ROOT=$(dirname "$TREE") PKG=$TREE STRIP=2
else
  die 3 "no sglang package in $TREE (expected a checkout with python/sglang/, a" \
    "site-packages directory with sglang/, or the sglang/ package directory)"
fi

# ------------------------------------------------------------------ version
supported() {
  local d out=()
  for d in "$PATCH_ROOT"/sglang-*/series; do
    [ -f "$d" ] || continue
    d=${d%/series}
    out+=("${d##*/sglang-}")
  done
  local IFS=,
  echo "${out[*]}" | sed 's/,/, /g'
}

version_literal() { # a top-level __version__ = "x" (or __version__ = version = 'x') line
  [ -f "$1" ] || return 0
  sed -n -E "s/^__version__[[:space:]]*=.*['\"]([^'\"]+)['\"][[:space:]]*(#.*)?\$/\\1/p" "$1" | head -n1
}

VERSION="" VSRC=""
if [ -n "${SGLANG_NWOR_SCV_FORCE_VERSION:-}" ]; then
  VERSION=$SGLANG_NWOR_SCV_FORCE_VERSION VSRC="SGLANG_NWOR_SCV_FORCE_VERSION"
fi
for f in version.py _version.py; do
  [ -z "$VERSION" ] || break
  VERSION=$(version_literal "$PKG/$f") VSRC="sglang/$f"
done
if [ -z "$VERSION" ]; then
  shopt -s nullglob
  metas=("$(dirname "$PKG")"/sglang-*.dist-info/METADATA)
  shopt -u nullglob
  if [ "${#metas[@]}" -eq 1 ]; then
    VERSION=$(sed -n 's/^Version:[[:space:]]*//p' "${metas[0]}" | head -n1)
    VSRC=${metas[0]#"$(dirname "$PKG")"/}
  fi
fi
if [ -z "$VERSION" ] && [ "$LAYOUT" = checkout ] && command -v git >/dev/null \
  && git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
  VERSION=$(git -C "$ROOT" describe --tags --exact-match HEAD 2>/dev/null | sed 's/^v//') || true
  VSRC="git tag"
fi
[ -n "$VERSION" ] || die 4 "cannot tell which SGLang version $PKG is (no __version__ in" \
  "sglang/version.py or sglang/_version.py, no sglang-*.dist-info, no exact git tag);" \
  "set SGLANG_NWOR_SCV_FORCE_VERSION=<version> (supported: $(supported))"
SERIES_DIR=$PATCH_ROOT/sglang-$VERSION
[ -f "$SERIES_DIR/series" ] || die 4 "sglang $VERSION (from $VSRC) is not supported by this" \
  "patch series (supported: $(supported)); nothing was changed"

# ------------------------------------------------------------------ series
PATCHES=()
while IFS= read -r line || [ -n "$line" ]; do
  line=${line%%#*}
  read -r name rest <<<"$line" || true
  [ -n "${name:-}" ] || continue
  [ -z "${rest:-}" ] || die 1 "$SERIES_DIR/series: options are not supported ($line)"
  [ -f "$SERIES_DIR/$name" ] || die 1 "$SERIES_DIR/series names $name, which does not exist"
  PATCHES+=("$name")
done <"$SERIES_DIR/series"
[ "${#PATCHES[@]}" -gt 0 ] || die 1 "$SERIES_DIR/series lists no patch"

touched() { # the files one patch touches, relative to $ROOT
  awk -v strip="$STRIP" '
    prev ~ /^--- / && /^\+\+\+ / {
      p = substr($0, 5); sub(/[\t].*$/, "", p); sub(/ +$/, "", p)
      n = split(p, parts, "/"); out = ""
      for (i = strip + 1; i <= n; i++) out = out (out == "" ? "" : "/") parts[i]
      print out
    }
    { prev = $0 }' "$SERIES_DIR/$1"
}

declare -A PATCH_FILES=()
FILES=()
for p in "${PATCHES[@]}"; do
  mapfile -t fs < <(touched "$p")
  [ "${#fs[@]}" -gt 0 ] || die 1 "$p touches no file"
  PATCH_FILES[$p]="${fs[*]}"
  for f in "${fs[@]}"; do
    case " ${FILES[*]:-} " in *" $f "*) ;; *) FILES+=("$f") ;; esac
  done
done

SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/nwor-scv-apply.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT

# ------------------------------------------------------------------ helpers
copy_tree_files() { # dest: the touched files of the tree, same relative paths
  local f
  for f in "${FILES[@]}"; do
    [ -f "$ROOT/$f" ] || continue # a missing file makes its patch fail below
    mkdir -p "$1/$(dirname "$f")"
    cp -p "$ROOT/$f" "$1/$f"
  done
}

run_patch() { # dir patch [patch options...]: exact context, nothing left behind
  local dir=$1 p=$2
  shift 2
  patch -d "$dir" -p"$STRIP" -f --fuzz=0 --no-backup-if-mismatch --reject-file=- \
    "$@" -i "$SERIES_DIR/$p" </dev/null
}

series_runs() { # dir forward|reverse: run the whole series there; 0 when every patch applied
  local dir=$1 dir_mode=$2 i p
  copy_tree_files "$dir"
  if [ "$dir_mode" = forward ]; then
    for p in "${PATCHES[@]}"; do run_patch "$dir" "$p" >/dev/null 2>&1 || return 1; done
  else
    for ((i = ${#PATCHES[@]} - 1; i >= 0; i--)); do
      run_patch "$dir" "${PATCHES[$i]}" -R >/dev/null 2>&1 || return 1
    done
  fi
}

failed_files() { # patch output on stdin -> "file: hunk #n FAILED at l" lines
  awk '
    /^(checking|patching) file / { f = $0; sub(/^(checking|patching) file /, "", f) }
    /FAILED at/ { h = $0; sub(/\.$/, "", h); print f ": " tolower(substr(h, 1, 1)) substr(h, 2) }'
}

declare -A PSTATE=() PWHY=()
diagnose() { # per patch, independently, dry-run on the tree itself
  local p out f missing
  for p in "${PATCHES[@]}"; do
    missing=""
    for f in ${PATCH_FILES[$p]}; do [ -f "$ROOT/$f" ] || missing+="$f (missing) "; done
    if [ -n "$missing" ]; then
      PSTATE[$p]=conflict PWHY[$p]=${missing% }
    elif run_patch "$ROOT" "$p" -R --dry-run >/dev/null 2>&1; then
      PSTATE[$p]=applied
    elif out=$(run_patch "$ROOT" "$p" --dry-run 2>&1); then
      PSTATE[$p]=not-applied
    else
      PSTATE[$p]=conflict
      PWHY[$p]=$(printf '%s\n' "$out" | failed_files | paste -sd';' - | sed 's/;/; /g')
      [ -n "${PWHY[$p]}" ] || PWHY[$p]="${PATCH_FILES[$p]}: $(printf '%s' "$out" | tail -n1)"
    fi
  done
}

# Whole-series state: reversing everything works only on a fully patched tree (the
# inserted lines must be there), so it is tried first; then applying everything.
if series_runs "$SCRATCH/reversed" reverse; then
  STATE=applied
elif series_runs "$SCRATCH/applied" forward; then
  STATE=not-applied
else
  diagnose
  STATE=partial
  for p in "${PATCHES[@]}"; do [ "${PSTATE[$p]}" != conflict ] || STATE=conflict; done
fi

install_from() { # dir: move its files into the tree; restore every file on any error
  local src=$1 f g tmp done=()
  mkdir -p "$SCRATCH/orig"
  for f in "${FILES[@]}"; do
    mkdir -p "$SCRATCH/orig/$(dirname "$f")"
    cp -p "$ROOT/$f" "$SCRATCH/orig/$f"
  done
  for f in "${FILES[@]}"; do
    tmp="$ROOT/$f.nwor-scv-tmp.$$"
    if ! { cp "$src/$f" "$tmp" && chmod --reference="$ROOT/$f" "$tmp" && mv -f "$tmp" "$ROOT/$f"; }; then
      rm -f "$tmp"
      for g in "${done[@]}"; do cp -p "$SCRATCH/orig/$g" "$ROOT/$g" || true; done
      die 1 "could not write $f; the tree was restored"
    fi
    done+=("$f")
  done
}

where="sglang $VERSION ($LAYOUT, version from $VSRC): $ROOT"
n=${#PATCHES[@]}

report_dirty() { # exit with the conflict / partial message
  local p msg=""
  for p in "${PATCHES[@]}"; do
    case "${PSTATE[$p]}" in
      conflict) msg+=$'\n'"  $p: does not apply to ${PWHY[$p]}" ;;
      *) msg+=$'\n'"  $p: ${PSTATE[$p]}" ;;
    esac
  done
  if [ "$STATE" = conflict ]; then
    die 5 "$where: conflict (the tree differs from upstream sglang $VERSION where a" \
      "patch goes), nothing was changed:$msg"
  fi
  die 6 "$where: the series is partially applied (dirty tree), nothing was changed;" \
    "restore the files or finish by hand:$msg"
}

case "$MODE" in
  status)
    if [ "$STATE" = applied ] || [ "$STATE" = not-applied ]; then
      for p in "${PATCHES[@]}"; do printf '%-12s %s\n' "$STATE" "$p"; done
    else
      for p in "${PATCHES[@]}"; do
        printf '%-12s %s%s\n' "${PSTATE[$p]}" "$p" "${PWHY[$p]:+  (${PWHY[$p]})}"
      done
    fi
    echo "state: $STATE ($where)"
    case "$STATE" in applied | not-applied) exit 0 ;; conflict) exit 5 ;; *) exit 6 ;; esac
    ;;
  check)
    case "$STATE" in
      applied) say "$where: already applied ($n patches)" ;;
      not-applied) say "$where: all $n patches apply cleanly" ;;
      *) report_dirty ;;
    esac
    ;;
  apply)
    case "$STATE" in
      applied) say "$where: already applied ($n patches); nothing to do" ;;
      not-applied)
        install_from "$SCRATCH/applied"
        say "$where: applied $n patches (${PATCHES[*]})"
        ;;
      *) report_dirty ;;
    esac
    ;;
  reverse)
    case "$STATE" in
      not-applied) say "$where: not applied; nothing to reverse" ;;
      applied)
        install_from "$SCRATCH/reversed"
        say "$where: reversed $n patches; the files are upstream again"
        ;;
      *) report_dirty ;;
    esac
    ;;
esac
