"""The real SGLang 0.5.23 engine with speculative decoding, plugin off vs on.

Each case starts real engines (CPU: Triton interpreter + tests/cpu_shims) and
checks: greedy outputs identical token for token; every verify step staged all
verify rows and committed exactly sum(accept_lens); verify-window rows were
poisoned before the forward and the rejected ones still hold the poison; no pool
row outside the commit list changed (debug mode checks, recorded per step).
"""

from __future__ import annotations

import pytest

from tools.engine_run import run_engine
from tools.make_tiny_models import encode
from tests.upstream_memo import upstream_run

pytestmark = pytest.mark.engine

PROMPTS = [
    "The old miller watched",
    "A quiet river crossed the long road. The grey fox",
    "Seven stones",
]


def _check_steps(run, expect_rows_per_req: int, expect_scv: bool = True):
    assert run.steps, "the plugin recorded no verify step"
    for s in run.steps:
        assert s["ok"], s
        assert s["staged"] == s["verify_rows"] == s["bs"] * expect_rows_per_req, s
        assert s["committed"] == s["accepted"], s
        assert s["poison_ok"] and s["outside_ok"] and s["commit_ok"], s
    assert all(s["scv"] == expect_scv for s in run.steps), "SCV fused path use"
    # Partial acceptance really happened: some rows were rejected and never written.
    assert sum(s["staged"] - s["committed"] for s in run.steps) > 0


@pytest.mark.parametrize("spec", ["ngram-tree", "ngram-chain", "standalone-chain", "standalone-tree"])
def test_outputs_identical_and_invariants(spec, tiny_models):
    prompts = [encode(p) for p in PROMPTS]
    off = upstream_run(spec, tiny_models, prompts)
    on = run_engine(spec, tiny_models, prompts, plugin_on=True)
    assert off.outputs == on.outputs
    assert all(len(o) > 0 for o in on.outputs)
    assert not off.steps, "plugin-off run must not stage anything"
    _check_steps(on, expect_rows_per_req=4)
    # The engine's own accept counts match what the plugin committed.
    engine_accepted = sum(m["completion_tokens"] for m in on.meta)
    committed = sum(s["committed"] for s in on.steps)
    assert committed <= engine_accepted + len(prompts) * 4  # last step may overshoot max tokens
    assert on.accept_length == pytest.approx(off.accept_length)


def test_batch_size_one_and_single_prompt(tiny_models):
    prompts = [encode("The lantern keeper mended")]
    off = upstream_run("ngram-tree", tiny_models, prompts, max_new_tokens=16)
    on = run_engine("ngram-tree", tiny_models, prompts, plugin_on=True, max_new_tokens=16)
    assert off.outputs == on.outputs
    _check_steps(on, expect_rows_per_req=4)


@pytest.mark.parametrize("nwor,scv", [("stage", "off"), ("off", "vectorized")])
def test_each_feature_alone(nwor, scv, tiny_models):
    """NWOR with upstream's verify (commit list from torch glue), and SCV alone."""
    prompts = [encode(p) for p in PROMPTS[:2]]
    off = upstream_run("standalone-tree", tiny_models, prompts)
    on = run_engine("standalone-tree", tiny_models, prompts, plugin_on=True,
                    extra_env={"SGLANG_NWOR_MODE": nwor, "SGLANG_SCV_MODE": scv})
    assert off.outputs == on.outputs
    if nwor == "stage":
        _check_steps(on, expect_rows_per_req=4, expect_scv=False)
    else:
        assert not on.steps


@pytest.mark.parametrize("move", ["on", "off"])
def test_refused_configuration_runs_upstream_with_the_one_launch_move(move, tiny_models, capfd, tmp_path):
    """NWOR refused (here the off switch; on this CPU host only the triton backend runs
    speculative decoding at all, so other refusals are unit-tested in
    test_eligibility.py): one log line, no stage, outputs identical to upstream, and
    every tree move is the one-launch move (or upstream's, with SGLANG_NWOR_MOVE=off)."""
    import json

    prompts = [encode(PROMPTS[0]), encode(PROMPTS[1])]
    totals = tmp_path / "totals.json"
    on = run_engine("ngram-tree", tiny_models, prompts, plugin_on=True,
                    extra_env={"SGLANG_NWOR_MODE": "off", "SGLANG_NWOR_MOVE": move,
                               "SGLANG_NWOR_SCV_TOTALS": str(totals),
                               "SGLANG_NWOR_SCV_LOG_INTERVAL": "1"})
    off = upstream_run("ngram-tree", tiny_models, prompts)
    assert on.outputs == off.outputs
    assert not on.steps
    err = capfd.readouterr().err
    assert err.count("NWOR disabled for this model runner: SGLANG_NWOR_MODE=off") == 1
    t = json.loads(totals.read_text())
    moves = t["moves_fused"] + t["moves_upstream"]
    assert moves > 0 and t["staged"] == 0, t
    assert t["moves_fused" if move == "on" else "moves_upstream"] == moves, t


def test_counters_exact_once_the_scheduler_idles(tiny_models, tmp_path):
    """The device counters are read once per log interval, so a burst shorter than the
    interval stayed uncounted (for good, if the process ended). When the scheduler goes
    idle the plugin counts them (commit.flush_when_idle): with an interval longer than
    the run and no per-step mode, the totals file appears while the engine idles and
    holds every committed step, committed == accepted."""
    import json
    import time

    totals = tmp_path / "totals.json"

    def wait_for_totals(timeout_s=60.0):
        end = time.monotonic() + timeout_s
        while not totals.exists() and time.monotonic() < end:
            time.sleep(0.2)

    prompts = [encode(p) for p in PROMPTS[:2]]
    on = run_engine("ngram-tree", tiny_models, prompts, plugin_on=True, before_shutdown=wait_for_totals,
                    extra_env={"SGLANG_NWOR_SCV_DEBUG": "0", "SGLANG_NWOR_SCV_STEP_LOG": "",
                               "SGLANG_NWOR_SCV_LOG_INTERVAL": "100000",
                               "SGLANG_NWOR_SCV_TOTALS": str(totals)})
    assert not on.steps  # no per-step mode: the counters took the asynchronous path
    assert totals.exists(), "nothing counted while the scheduler idled"
    t = json.loads(totals.read_text())
    verify = max(m.get("spec_verify_ct", 0) for m in on.meta)  # the longest request's steps
    assert t["steps"] >= verify > 0, (t, verify)  # batched steps; meta_info skips a trailing one
    assert t["committed"] == t["accepted"] >= t["steps"], t
    assert t["staged"] > t["committed"] and t["violations"] == 0, t


def test_bad_switch_value_serves_upstream(tiny_models, capfd):
    """A bad value: the plugin registers nothing, the engine serves upstream's outputs,
    and the log names the variable (issue: SGLANG_NWOR_MODE=bogus used to kill the
    scheduler on the first verify step)."""
    prompts = [encode(PROMPTS[0])]
    on = run_engine("ngram-tree", tiny_models, prompts, plugin_on=True,
                    extra_env={"SGLANG_NWOR_MODE": "bogus"})
    off = run_engine("ngram-tree", tiny_models, prompts, plugin_on=False)
    assert on.outputs == off.outputs and not on.steps
    err = capfd.readouterr().err
    assert "SGLANG_NWOR_MODE='bogus' is not one of off, stage" in err
    assert "upstream SGLang runs unmodified" in err


@pytest.mark.parametrize("simulated", [False, True], ids=["dummy-head", "simulated-acceptance"])
def test_eagle3_tree_outputs_identical_and_invariants(simulated, tiny_models, tmp_path):
    """EAGLE3 (topk 2 tree) with a dummy-weight head on the tiny target: the EAGLE v2
    worker's verify path with staging. The head accepts almost nothing, so a second run
    sets SGLANG_SIMULATE_ACC_LEN: upstream then replaces accept_index after verify, and
    the commit builds its own list (the SCV list belongs to the replaced tensor)."""
    from tools.make_tiny_models import write_eagle3_head

    head = write_eagle3_head(tiny_models / "target", tmp_path / "eagle3")
    prompts = [encode(p) for p in PROMPTS]
    kw = dict(speculative_algorithm="EAGLE3", speculative_draft_model_path=str(head),
              speculative_draft_load_format="dummy", speculative_num_steps=2,
              speculative_eagle_topk=2, speculative_num_draft_tokens=4, max_new_tokens=16,
              extra_env={"SGLANG_SIMULATE_ACC_LEN": "2.5"} if simulated else None)
    off = run_engine("ngram-tree", tiny_models, prompts, plugin_on=False, **kw)
    on = run_engine("ngram-tree", tiny_models, prompts, plugin_on=True, **kw)
    assert off.outputs == on.outputs
    assert all(len(o) > 0 for o in on.outputs)
    _check_steps(on, expect_rows_per_req=4, expect_scv=not simulated)
    if simulated:  # the simulated path really accepted drafts
        assert sum(s["committed"] for s in on.steps) > sum(s["bs"] for s in on.steps)
