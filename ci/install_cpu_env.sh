#!/usr/bin/env bash
# Install the CPU environment: real SGLang 0.5.23 + torch 2.14.1 + this package (editable)
# into ./.venv (or $VENV). Idempotent: a second run only checks. Pins: ci/constraints-cpu.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
C=ci/constraints-cpu.txt
stamp="$VENV/.nwor-scv-env-$(sha256sum "$C" ci/requirements-cpu.txt pyproject.toml | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
  echo "[install] $VENV is up to date"
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
echo "[install] torch 2.14.1 (local wheel on the dev/CI machines) and the engine's dependencies"
pip install -c "$C" -r ci/requirements-cpu.txt
echo "[install] sglang 0.5.23, sglang-kernel 0.4.10 (for triton_kernels), xgrammar without their CUDA-only dependency tree"
pip install -c "$C" --no-deps sglang==0.5.23 sglang-kernel==0.4.10 xgrammar==0.2.7
pip install --no-deps --no-build-isolation -e .
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md, sglang, torch
eps = [e.value for e in md.entry_points(group="sglang.srt.plugins")]
assert "sglang_nwor_scv.plugin:register" in eps, eps
print(f"[install] sglang {sglang.__version__}, torch {torch.__version__}, plugin entry point ok")
PY
rm -f "$VENV"/.nwor-scv-env-*
touch "$stamp"
