"""NWOR/SCV metrics appear on a real SGLang server's /metrics (CPU), and their
values match the engine's own accept counts."""

from __future__ import annotations

import re
import socket

import pytest

from tools import engine_run
from tools.engine_run import Server, engine_kwargs
from tools.make_tiny_models import encode

pytestmark = pytest.mark.engine


def _metric(text: str, name: str) -> float:
    values = [float(m.group(1)) for m in re.finditer(
        rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M)]
    assert values, f"{name} not on /metrics"
    return sum(values)


def test_metrics_on_real_server(tiny_models, tmp_path, monkeypatch):
    # the first port handed out is already taken (free_port's race, which failed a CI run
    # once): the server must start anyway, on a fresh port
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    ports = iter([taken.getsockname()[1]])
    real_free_port = engine_run.free_port
    monkeypatch.setattr(engine_run, "free_port", lambda: next(ports, None) or real_free_port())
    server = Server(engine_kwargs("ngram-tree", tiny_models, enable_metrics=True, skip_server_warmup=True),
                    plugin_on=True, env={"SGLANG_NWOR_SCV_LOG_INTERVAL": "1"}, log=tmp_path / "server.log")
    try:
        server.wait_ready(600)
        assert server.port != taken.getsockname()[1]
        outs = [server.post("/generate", {"input_ids": encode(p), "sampling_params":
                                          {"temperature": 0, "max_new_tokens": 20}})
                for p in ("The old miller watched", "Seven stones")]
        text = server.get("/metrics")
    finally:
        server.stop()
        taken.close()
    accepted = sum(o["meta_info"]["spec_verify_ct"] + o["meta_info"]["spec_num_correct_drafts"]
                   for o in outs)
    staged = _metric(text, "sglang:nwor_tokens_staged_total")
    committed = _metric(text, "sglang:nwor_tokens_committed_total")
    saved = _metric(text, "sglang:nwor_kv_bytes_not_written_total")
    assert committed == accepted
    assert staged == 4 * sum(o["meta_info"]["spec_verify_ct"] for o in outs)
    assert staged > committed and saved > 0
    assert _metric(text, "sglang:nwor_invariant_violations_total") == 0
