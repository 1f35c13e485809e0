"""NWOR/SCV metrics appear on a real SGLang server's /metrics (CPU), and their
values match the engine's own accept counts."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.request

import pytest

from tools.engine_run import prepare_process_env, restore_env, server_cli
from tools.make_tiny_models import encode

pytestmark = pytest.mark.engine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def _metric(text: str, name: str) -> float:
    values = [float(m.group(1)) for m in re.finditer(
        rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M)]
    assert values, f"{name} not on /metrics"
    return sum(values)


def test_metrics_on_real_server(tiny_models, tmp_path):
    port = _free_port()
    old = prepare_process_env(plugin_on=True, extra_env={"SGLANG_NWOR_SCV_LOG_INTERVAL": "1"})
    log = open(tmp_path / "server.log", "w")
    try:
        proc = subprocess.Popen(
            server_cli("ngram-tree", tiny_models, port, enable_metrics=True,
                       skip_server_warmup=True),
            stdout=log, stderr=subprocess.STDOUT)
    finally:
        restore_env(old)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 600
        while True:
            try:
                _get(base + "/health")
                break
            except Exception:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail("server did not start:\n" + (tmp_path / "server.log").read_text()[-4000:])
                time.sleep(2)
        outs = [_post(base + "/generate", {"input_ids": encode(p), "sampling_params":
                                           {"temperature": 0, "max_new_tokens": 20}})
                for p in ("The old miller watched", "Seven stones")]
        text = _get(base + "/metrics")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()
    accepted = sum(o["meta_info"]["spec_verify_ct"] + o["meta_info"]["spec_num_correct_drafts"]
                   for o in outs)
    staged = _metric(text, "sglang:nwor_tokens_staged_total")
    committed = _metric(text, "sglang:nwor_tokens_committed_total")
    saved = _metric(text, "sglang:nwor_kv_bytes_not_written_total")
    assert committed == accepted
    assert staged == 4 * sum(o["meta_info"]["spec_verify_ct"] for o in outs)
    assert staged > committed and saved > 0
    assert _metric(text, "sglang:nwor_invariant_violations_total") == 0
