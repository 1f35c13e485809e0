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


def test_mismatch_triage_reads_upstream_solo_logprobs(tiny_models, tmp_path):
    """The GPU soak's triage (tools/soak.divergence) against a real plugin-off server: a
    fabricated plugin output that leaves upstream's at token 2 gets the log-probability gap
    of the two tokens from upstream's own solo prefill; a stop (one output a prefix of the
    other) gets none. On the CPU the soak itself has no mismatch to triage."""
    from tools.engine_run import Server, engine_kwargs
    from tools.make_tiny_models import encode
    from tools.soak import divergence

    kw = engine_kwargs("ngram-tree", tiny_models, skip_server_warmup=True)
    server = Server(kw, False, {}, tmp_path / "server.log")
    try:
        server.wait_ready(600)
        req = {"id": "r", "input_ids": encode("The old miller watched")}
        want = server.post("/generate", {"input_ids": req["input_ids"], "sampling_params": {
            "temperature": 0, "max_new_tokens": 6}})["output_ids"]
        top = server.post("/generate", {
            "input_ids": req["input_ids"] + want[:2], "return_logprob": True,
            "top_logprobs_num": 20, "logprob_start_len": -1,
            "sampling_params": {"temperature": 0, "max_new_tokens": 1}})["meta_info"]
        ranked = sorted(top["output_top_logprobs"][0], key=lambda t: -t[0])
        assert int(ranked[0][1]) == want[2], "greedy token is not upstream's top-1"
        worst = int(ranked[-1][1])
        got = want[:2] + [worst] + want[3:]
        far = divergence(server, req, got, want, tie_tol=1e-6)
        assert far["at"] == 2 and far["plugin"][0] == worst and far["upstream"][0] == want[2]
        assert abs(far["logprob_gap"] - (ranked[0][0] - ranked[-1][0])) < 1e-4, far
        assert far["logprob_gap"] > 0 and not far["near_tie"]
        assert divergence(server, req, got, want, tie_tol=1e9)["near_tie"]
        stop = divergence(server, req, want[:4], want, tie_tol=1e9)
        assert stop["at"] == 4 and stop["logprob_gap"] is None and not stop["near_tie"]
    finally:
        server.stop()
