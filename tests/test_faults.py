"""Fault injection in the real engine (CPU; on a GPU the suite's ``faults`` step, CUDA
graphs on): NaN logits on chosen verify steps, and an exception inside or right after
chosen verify forwards followed by a retry of the same step.

A test-only plugin (tests/fault_injection, whitelisted beside ours) fills the target's
verify logits with NaN on verify steps 2 and 5, identically with the NWOR/SCV plugin on
and off. The steps after the fault must stay correct: outputs identical to upstream's
under the same fault, every step checked in debug mode (committed == accepted, poisoned
window, rows outside the commit list untouched). The unit-level faults (an exception in
the verify forward, between acceptance and commit) are in tests/test_nwor_stage.py.
"""

from __future__ import annotations

import json

import pytest

from tools.engine_run import REPO, run_engine
from tools.make_tiny_models import encode
from tests.upstream_memo import upstream_run

pytestmark = pytest.mark.engine

FAULTS = str(REPO / "tests" / "fault_injection")
FAULT_KERNELS = ("_ngram_draft_kernel", "_full_tree_mask_kernel", "_verify_accept_greedy_kernel",
                 "commit_accepted_kv_kernel", "_move_accepted_kv_kernel", "_target_verify_buffers_kernel")


@pytest.mark.parametrize("spec", ["ngram-tree", "standalone-chain"])
def test_nan_logits_on_some_verify_steps(spec, tiny_models):
    prompts = [encode(p) for p in ("The old miller watched", "Seven stones", "The village bell")]
    kw = dict(extra_env={"NWOR_SCV_FAULT": "nan_logits:2,5"}, extra_pythonpath=(FAULTS,),
              extra_plugins=("fault_injection",), max_new_tokens=20)
    off = run_engine(spec, tiny_models, prompts, plugin_on=False, **kw)
    on = run_engine(spec, tiny_models, prompts, plugin_on=True, **kw)
    clean = upstream_run(spec, tiny_models, prompts, max_new_tokens=20)
    assert off.outputs != clean.outputs, "the fault changed nothing: it was not injected"
    assert on.outputs == off.outputs, ("plugin on differs from upstream under the same fault",
                                       on.outputs, off.outputs)
    assert on.steps and all(s["ok"] and s["committed"] == s["accepted"] for s in on.steps), on.steps
    assert all(s["poison_ok"] and s["outside_ok"] and s["commit_ok"] for s in on.steps)


@pytest.mark.parametrize("spec", ["ngram-tree", "standalone-chain"])
def test_exception_inside_verify_forward_then_retry(spec, tiny_models, tmp_path):
    """Verify forwards 2 and 5 raise in layer 1 (layer 0 already staged, or written by
    upstream) and the worker runs the same forward again. With the plugin the failed
    attempt's stage is dropped, never committed (two verify forwards more than commits),
    the retry stages afresh, and outputs equal upstream's under the same fault and the
    fault-free run, every step checked. Eager forwards (on a GPU too): the fault sits in
    layer 1's Python attention, which a CUDA-graph replay does not run."""
    _fault_then_retry("raise_in_verify", spec, tiny_models, tmp_path, disable_cuda_graph=True)


@pytest.mark.parametrize("spec", ["ngram-tree", "standalone-chain"])
def test_exception_after_verify_forward_then_retry(spec, tiny_models, tmp_path):
    """Verify forwards 2 and 5 run whole, then raise before acceptance, and the worker runs
    them again. On a GPU the forwards replay CUDA graphs (staged buckets, SGLang's
    defaults); on the CPU they are eager. The first attempt's complete stage must be
    dropped, never committed."""
    _fault_then_retry("raise_after_verify", spec, tiny_models, tmp_path)


def _fault_then_retry(kind, spec, tiny_models, tmp_path, **engine_kw):
    prompts = [encode(p) for p in ("The old miller watched", "Seven stones", "The village bell")]

    def run(plugin_on, name):
        log, totals = tmp_path / f"{name}.faults", tmp_path / f"{name}.totals.json"
        env = {"NWOR_SCV_FAULT": f"{kind}:2,5", "NWOR_SCV_FAULT_LOG": str(log),
               "SGLANG_NWOR_SCV_TOTALS": str(totals)}
        r = run_engine(spec, tiny_models, prompts, plugin_on=plugin_on, extra_env=env,
                       extra_pythonpath=(FAULTS,), extra_plugins=("fault_injection",),
                       max_new_tokens=20, **engine_kw)
        return r, log.read_text().split("\n")[:-1], totals

    off, off_faults, _ = run(False, "off")
    on, on_faults, totals = run(True, "on")
    clean = upstream_run(spec, tiny_models, prompts, max_new_tokens=20, **engine_kw)
    assert off_faults == on_faults == [f"{kind} 2", f"{kind} 5"], (off_faults, on_faults)
    # separate checks, so a GPU log says which side broke (run 31 lost the message)
    assert off.outputs == clean.outputs, ("upstream alone: the retried step changed the outputs",
                                          off.outputs, clean.outputs)
    assert on.outputs == off.outputs, ("plugin on differs from upstream under the same retry",
                                       on.outputs, off.outputs)
    assert on.steps and all(s["ok"] and s["committed"] == s["accepted"] for s in on.steps), on.steps
    assert all(s["poison_ok"] and s["outside_ok"] and s["commit_ok"] for s in on.steps)
    t = json.loads(totals.read_text())
    assert t["verify_steps"] == len(on.steps) + 2, (t, len(on.steps))
    assert t["violations"] == 0 and t["committed"] == t["accepted"], t


def test_plugin_kernels_that_cannot_launch_leave_upstream_serving(tiny_models, tmp_path):
    """Every Triton kernel of the plugin fails at its first launch (a GPU or Triton build
    the CI never saw). The server must not die and the KV cache must stay right: SCV and
    the move hand their steps to upstream, the NWOR commit writes the staged rows with its
    torch reference; outputs equal upstream's, every step checked, each kernel tried once."""
    prompts = [encode(p) for p in ("The old miller watched", "Seven stones", "The village bell")]
    log, totals = tmp_path / "on.faults", tmp_path / "on.totals.json"
    # defaults (the verify-metadata kernel among them where it is hooked: 0.5.17, the GPU
    # machines), plus the opt-in NGRAM draft kernel, whose failure hands its step to
    # upstream's reconstruct and cache locations and the mask kernel (failing next)
    env = {"NWOR_SCV_FAULT": "kernels_fail", "NWOR_SCV_FAULT_LOG": str(log),
           "SGLANG_NWOR_SCV_TOTALS": str(totals), "SGLANG_SCV_NGRAM_DRAFT": "1"}
    kw = dict(extra_pythonpath=(FAULTS,), extra_plugins=("fault_injection",), max_new_tokens=20)
    off = run_engine("ngram-tree", tiny_models, prompts, plugin_on=False, **kw)
    on = run_engine("ngram-tree", tiny_models, prompts, plugin_on=True, extra_env=env, **kw)
    failed = log.read_text().split("\n")[:-1]
    tried = [line.removeprefix("kernels_fail ") for line in failed]
    assert len(tried) == len(set(tried)), ("a kernel was launched again after failing", tried)
    # the move launches only for steps NWOR did not commit (none here, unless a GPU bucket
    # was left unstaged)
    assert {"_ngram_draft_kernel", "_full_tree_mask_kernel", "_verify_accept_greedy_kernel",
            "commit_accepted_kv_kernel"} <= set(tried) <= set(FAULT_KERNELS), tried
    assert on.outputs == off.outputs, (on.outputs, off.outputs)
    assert on.steps and all(s["ok"] and s["committed"] == s["accepted"] for s in on.steps), on.steps
    assert all(s["poison_ok"] and s["outside_ok"] and s["commit_ok"] for s in on.steps)
    t = json.loads(totals.read_text())
    assert t["scv_kernel"] == 0 and t["scv_fallback"] == t["verify_steps"] > 0, t
    assert t["violations"] == 0 and t["committed"] == t["accepted"] > 0, t
    # the totals name each kernel that stepped aside and why (a GPU test's count assertion
    # then shows the cause: the cold-machine mask failures of runs 49 and 51 left none)
    aside = t["kernels_stepped_aside"]
    assert {"NGRAM draft", "NGRAM mask", "SCV acceptance", "NWOR commit"} <= set(aside), aside
    assert all("injected:" in why for why in aside.values()), aside
