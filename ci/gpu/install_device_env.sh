#!/usr/bin/env bash
# Make SGLang 0.5.17 and this repo importable on a GPU machine with no network.
# Run from anywhere (paths are taken from this file's location):
#
#   eval "$(ci/gpu/install_device_env.sh)"        # installs, then exports PYTHONPATH here
#   ci/gpu/install_device_env.sh && . /tmp/site/activate.sh
#
# 1. If `python3 -c 'import sglang'` already gives 0.5.17 (a user's own GPU box), use it.
#    Else install .wheelhouse/*.whl (built by tools/build_device_wheelhouse.sh, carried to the
#    device) with pip --no-index --no-deps --target $DEVICE_SITE (default /tmp/site).
# 2. Make the repo importable without `pip install -e .` (needs build isolation = network):
#    generate under $DEVICE_SITE/_repo_shim a `sglang_nwor_scv` package of symlinks following pyproject's
#    [tool.setuptools] package-dir (overlay/ -> sglang_nwor_scv, kernels/ -> .kernels) and a
#    sglang_nwor_scv-<version>.dist-info with entry_points.txt, so importlib.metadata finds the
#    `sglang.srt.plugins: nwor_scv` entry point. Skipped if the package is already installed.
# With the wheelhouse it also exports SGLANG_IS_FLASHINFER_AVAILABLE=false (the carried flashinfer
# has no JIT sources; sglang only needs it importable). The repo root goes on PYTHONPATH too
# (tools/, tests/); note its top-level `kernels/` then shadows Hugging Face's `kernels` package,
# which is not installed on the device anyway.
# Progress goes to stderr; stdout carries only the `export ...` line (hence `eval`).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SITE="${DEVICE_SITE:-/tmp/site}"
SHIM="$SITE/_repo_shim"          # kept apart from pip's --target tree
WH="${WHEELHOUSE:-$REPO/.wheelhouse}"
WANT="${SGLANG_VERSION_WANTED:-0.5.17}"
PY="${PYTHON:-python3}"
log() { echo "[install_device_env] $*" >&2; }
mkdir -p "$SITE"

have="$("$PY" -c 'import sglang, sys; sys.stdout.write(sglang.__version__)' 2>/dev/null || true)"
PP=""
USED_WHEELHOUSE=0
if [ "$have" = "$WANT" ] && [ -z "${FORCE_WHEELHOUSE:-}" ]; then
  log "sglang $have already importable: using it (set FORCE_WHEELHOUSE=1 to install the wheelhouse)"
else
  shopt -s nullglob; wheels=("$WH"/*.whl); shopt -u nullglob
  stamp="$SITE/.wheelhouse-installed"
  if [ "${#wheels[@]}" -eq 0 ] && [ -f "$stamp" ]; then
    log "no wheels carried: using the wheelhouse an earlier call installed in $SITE (warm machine)"
  elif [ "${#wheels[@]}" -eq 0 ]; then
    log "no wheels in $WH (found sglang '${have:-none}', want $WANT): build them with"
    log "  tools/build_device_wheelhouse.sh   and carry .wheelhouse to the device"
    exit 1
  fi
  sig="$(cd "$WH" 2>/dev/null && ls -l -- *.whl 2>/dev/null | awk '{print $5, $NF}' | sha256sum | cut -c1-32)" || sig=""
  if [ "${#wheels[@]}" -eq 0 ] || { [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sig" ]; }; then
    log "wheelhouse already installed in $SITE"
  else
    log "installing ${#wheels[@]} wheels from $WH into $SITE"
    t0=$(date +%s)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --disable-pip-version-check --target "$SITE" "${wheels[@]}" >&2
    echo "$sig" > "$stamp"
    log "installed in $(( $(date +%s) - t0 )) s"
  fi
  PP="$SITE"
  USED_WHEELHOUSE=1
  # WITH_FLASHINFER=1: the full flashinfer (JIT sources), carried as .flashinfer/
  # (ci/gpu/build_flashinfer_carry.sh), laid over the trimmed one and left on. Without it
  # SGLANG_IS_FLASHINFER_AVAILABLE=false below keeps every other step off flashinfer, even
  # on a warm machine where an earlier call laid the full wheel.
  if [ -n "${WITH_FLASHINFER:-}" ]; then
    fi_wheel="$(ls "$REPO"/.flashinfer/flashinfer_python-*.whl 2>/dev/null | sort | tail -n 1)" || true
    [ -n "$fi_wheel" ] || { log "WITH_FLASHINFER=1 but no .flashinfer/flashinfer_python-*.whl carried"; exit 1; }
    log "laying the full flashinfer over the trimmed one: ${fi_wheel##*/}"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --disable-pip-version-check --target "$SITE" "$fi_wheel" >&2
  fi
fi

# ---- the repo as an installed package (symlink shim + dist-info with entry points) ------------
if PYTHONPATH="${PP:+$PP:}${PYTHONPATH:-}" "$PY" - "$REPO" >/dev/null 2>&1 <<'PYEOF'
import importlib.metadata as md, importlib.util, os, sys
repo = os.path.realpath(sys.argv[1])
md.distribution("sglang-nwor-scv")
spec = importlib.util.find_spec("sglang_nwor_scv")
# an install of THIS checkout (pip -e .) counts; a copy of another checkout does not
ok = spec is not None and os.path.realpath(spec.origin).startswith(repo + os.sep)
sys.exit(0 if ok and not os.environ.get("FORCE_SHIM") else 1)
PYEOF
then
  log "sglang_nwor_scv from $REPO already installed: no shim"
else
  mkdir -p "$SHIM"
  "$PY" - "$REPO" "$SHIM" >&2 <<'PYEOF'
import os, shutil, sys, tomllib
repo, site = sys.argv[1], sys.argv[2]
with open(os.path.join(repo, "pyproject.toml"), "rb") as f:
    pp = tomllib.load(f)
proj, st = pp["project"], pp.get("tool", {}).get("setuptools", {})
name, version = proj["name"], proj["version"]
dist = name.replace("-", "_").replace(".", "_")
pkg_dir = st.get("package-dir", {})
pkgs = sorted(set(st.get("packages", [])) | set(pkg_dir), key=lambda p: p.count("."))

def src_of(pkg):  # package-dir mapping, else parent's dir + last component (setuptools rule)
    if pkg in pkg_dir:
        return os.path.join(repo, pkg_dir[pkg])
    parent, _, leaf = pkg.rpartition(".")
    return os.path.join(src_of(parent), leaf) if parent else os.path.join(repo, pkg)

tops = sorted({p.split(".")[0] for p in pkgs})
for top in tops:  # fresh shim each time (rmtree does not follow the symlinks inside)
    dst = os.path.join(site, top)
    if os.path.islink(dst) or os.path.isfile(dst):
        os.unlink(dst)
    elif os.path.isdir(dst):
        shutil.rmtree(dst)
for d in os.listdir(site):
    if d.startswith(dist + "-") and d.endswith(".dist-info"):
        shutil.rmtree(os.path.join(site, d))

for pkg in pkgs:
    src, dst = src_of(pkg), os.path.join(site, *pkg.split("."))
    if not os.path.isdir(src):
        print(f"  skip {pkg}: {src} missing"); continue
    if os.path.islink(dst) or os.path.isfile(dst):
        os.unlink(dst)
    os.makedirs(dst, exist_ok=True)
    children = {p.split(".")[pkg.count(".") + 1] for p in pkgs if p.startswith(pkg + ".")}
    for entry in os.listdir(src):
        if entry == "__pycache__" or entry in children:
            continue
        link = os.path.join(dst, entry)
        if not os.path.lexists(link):
            os.symlink(os.path.join(src, entry), link)
    print(f"  {pkg} -> {os.path.relpath(src, repo)}")

info = os.path.join(site, f"{dist}-{version}.dist-info")
os.makedirs(info)
with open(os.path.join(info, "METADATA"), "w") as f:
    f.write(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
            f"Summary: symlink shim of {repo} (ci/gpu/install_device_env.sh)\n")
with open(os.path.join(info, "entry_points.txt"), "w") as f:
    for group, eps in proj.get("entry-points", {}).items():
        f.write(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n")
    if proj.get("scripts"):
        f.write("[console_scripts]\n" + "".join(f"{k} = {v}\n" for k, v in proj["scripts"].items()))
with open(os.path.join(info, "top_level.txt"), "w") as f:
    f.write("\n".join(tops) + "\n")
with open(os.path.join(info, "INSTALLER"), "w") as f:
    f.write("install_device_env.sh\n")
open(os.path.join(info, "RECORD"), "w").close()
print(f"  {os.path.basename(info)} (entry points: {', '.join(proj.get('entry-points', {}))})")
PYEOF
  log "repo shim written to $SHIM"
  PP="$SHIM${PP:+:$PP}"
fi

EXPORT="export PYTHONPATH=${PP:+$PP:}$REPO\${PYTHONPATH:+:\$PYTHONPATH}"
if [ "$USED_WHEELHOUSE" = 1 ] && [ -z "${WITH_FLASHINFER:-}" ]; then
  # the carried flashinfer is import-only (JIT sources trimmed): keep sglang off its kernels
  EXPORT="$EXPORT SGLANG_IS_FLASHINFER_AVAILABLE=false"
fi
printf '%s\n' "$EXPORT" > "$SITE/activate.sh"
log "env: . $SITE/activate.sh   (or: $EXPORT)"
echo "$EXPORT"
