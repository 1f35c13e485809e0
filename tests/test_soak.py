"""Serving soak on the CPU: tools/soak.py with a few concurrent streams against real
``launch_server`` children (plugin on with debug invariants, plugin off as the
reference): shared prefixes, chunked prefill, client drops mid-stream, forced
retraction. Every completed request must match upstream token for token, no invariant
may break, and no KV slot may stay in use after the cache flush (SGLang's strict idle
memory check would also have taken a leaking server down). The GPU runs the same tool
with 128 streams (ci/gpu/run_gpu_suite.sh, step soak)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tools.engine_run import REPO

pytestmark = pytest.mark.engine


def test_soak_concurrent_streams_aborts_retraction(tmp_path, tiny_models):
    cmd = [sys.executable, str(REPO / "tools" / "soak.py"), "--out", str(tmp_path),
           "--streams", "4", "--requests", "3", "--abort-fraction", "0.3", "--seed", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    result = json.loads((tmp_path / "soak.json").read_text())
    assert proc.returncode == 0, (result, proc.stderr[-3000:])
    assert result["errors"] == [] and result["mismatches"] == []
    assert result["completed"] >= 4 and result["dropped"] >= 1, result
    assert result["retractions"] > 0, "the soak forced no retraction"
    assert result["violations"] == 0 and result["committed"] > 0
    assert result["in_use_after_flush"] == {"plugin": 0.0, "upstream": 0.0}
    assert result["alive"] == {"plugin": True, "upstream": True}
