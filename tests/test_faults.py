"""Fault injection in the real engine (CPU): NaN logits on chosen verify steps.

A test-only plugin (tests/fault_injection, whitelisted beside ours) fills the target's
verify logits with NaN on verify steps 2 and 5, identically with the NWOR/SCV plugin on
and off. The steps after the fault must stay correct: outputs identical to upstream's
under the same fault, every step checked in debug mode (committed == accepted, poisoned
window, rows outside the commit list untouched). The unit-level faults (an exception in
the verify forward, between acceptance and commit) are in tests/test_nwor_stage.py.
"""

from __future__ import annotations

import pytest

from tools.engine_run import REPO, run_engine
from tools.make_tiny_models import encode

pytestmark = pytest.mark.engine

FAULTS = str(REPO / "tests" / "fault_injection")


@pytest.mark.parametrize("spec", ["ngram-tree", "standalone-chain"])
def test_nan_logits_on_some_verify_steps(spec, tiny_models):
    prompts = [encode(p) for p in ("The old miller watched", "Seven stones", "The village bell")]
    kw = dict(extra_env={"NWOR_SCV_FAULT": "nan_logits:2,5"}, extra_pythonpath=(FAULTS,),
              extra_plugins=("fault_injection",), max_new_tokens=20)
    off = run_engine(spec, tiny_models, prompts, plugin_on=False, **kw)
    on = run_engine(spec, tiny_models, prompts, plugin_on=True, **kw)
    clean = run_engine(spec, tiny_models, prompts, plugin_on=False, max_new_tokens=20)
    assert off.outputs != clean.outputs, "the fault changed nothing: it was not injected"
    assert on.outputs == off.outputs
    assert on.steps and all(s["ok"] and s["committed"] == s["accepted"] for s in on.steps), on.steps
    assert all(s["poison_ok"] and s["outside_ok"] and s["commit_ok"] for s in on.steps)
