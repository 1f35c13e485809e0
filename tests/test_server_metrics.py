"""NWOR/SCV metrics appear on a real SGLang server's /metrics (CPU), and their
values match the engine's own accept counts."""

from __future__ import annotations

import re

import pytest

from tools.engine_run import Server, engine_kwargs
from tools.make_tiny_models import encode

pytestmark = pytest.mark.engine


def _metric(text: str, name: str) -> float:
    values = [float(m.group(1)) for m in re.finditer(
        rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M)]
    assert values, f"{name} not on /metrics"
    return sum(values)


def test_metrics_on_real_server(tiny_models, tmp_path):
    server = Server(engine_kwargs("ngram-tree", tiny_models, enable_metrics=True, skip_server_warmup=True),
                    plugin_on=True, env={"SGLANG_NWOR_SCV_LOG_INTERVAL": "1"}, log=tmp_path / "server.log")
    try:
        server.wait_ready(600)
        outs = [server.post("/generate", {"input_ids": encode(p), "sampling_params":
                                          {"temperature": 0, "max_new_tokens": 20}})
                for p in ("The old miller watched", "Seven stones")]
        text = server.get("/metrics")
    finally:
        server.stop()
    accepted = sum(o["meta_info"]["spec_verify_ct"] + o["meta_info"]["spec_num_correct_drafts"]
                   for o in outs)
    staged = _metric(text, "sglang:nwor_tokens_staged_total")
    committed = _metric(text, "sglang:nwor_tokens_committed_total")
    saved = _metric(text, "sglang:nwor_kv_bytes_not_written_total")
    assert committed == accepted
    assert staged == 4 * sum(o["meta_info"]["spec_verify_ct"] for o in outs)
    assert staged > committed and saved > 0
    assert _metric(text, "sglang:nwor_invariant_violations_total") == 0
