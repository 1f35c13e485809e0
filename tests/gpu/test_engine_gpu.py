"""The real SGLang engine on the GPU (0.5.17 on the device machines), plugin off vs on.

CUDA graphs on (SGLang's default) with no plugin variable set: verify graph buckets are
captured without their KV writes (graph staging) and every replayed step commits its
accepted rows, checked step by step in debug mode (poisoned verify windows, committed ==
accepted, rows outside the commit list untouched). Also eager verify, graph staging
switched off (the one-launch move takes every tree move), and EAGLE3 with a dummy
draft head. ``NWOR_SCV_GPU_MEM_FRACTION`` lets several of these run side by side.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from tools.engine_run import SPEC_CONFIGS, run_engine  # noqa: E402
from tools.make_tiny_models import encode  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.engine]

PROMPTS = ["The old miller watched", "A quiet river crossed the long road. The grey fox",
           "Seven stones", "The village bell"]
GPU_KW = dict(dtype="bfloat16", mem_fraction_static=float(os.environ.get("NWOR_SCV_GPU_MEM_FRACTION", "0.3")))
SPECS = os.environ.get("NWOR_SCV_GPU_SPECS",
                       "ngram-tree,ngram-chain,standalone-chain,standalone-tree").split(",")


_upstream_runs: dict = {}


def _engine_kw(graphs: bool, **extra) -> dict:
    """The GPU engine arguments, CUDA graphs on or off; with graphs, few buckets are
    captured (start-up time)."""
    kw = dict(GPU_KW, disable_cuda_graph=not graphs, **extra)
    if graphs:
        kw["cuda_graph_max_bs_decode"] = 8
    return kw

# Forced acceptance for dummy-weight models whose draft never agrees with the target:
# accepted tokens are the draft's, bonus tokens the target's (upstream's
# ``real-draft-token`` mode, EAGLE topk 1 only), so outputs still depend on the K/V the
# plugin commits.
SIMULATED_ACCEPTANCE = {"SGLANG_SIMULATE_ACC_LEN": "2.5",
                        "SGLANG_SIMULATE_ACC_TOKEN_MODE": "real-draft-token"}


def _graph_env(algorithm: str) -> dict:
    """Graph staging for ``algorithm``: the default where SGLANG_NWOR_GRAPH=auto stages
    it, else forced on (=1), so the staged graph path is what every graph test checks."""
    from sglang_nwor_scv.config import GRAPH_AUTO_ALGORITHMS

    return {} if algorithm in GRAPH_AUTO_ALGORITHMS else {"SGLANG_NWOR_GRAPH": "1"}


def _upstream(spec, models, prompts, **kw):
    """Plugin-off outputs, run once per configuration in this session (several tests
    compare against the same upstream run)."""
    key = (spec, str(models), repr(prompts), repr(sorted(kw.items(), key=lambda x: x[0])))
    if key not in _upstream_runs:
        _upstream_runs[key] = run_engine(spec, models, prompts, plugin_on=False, **kw)
    return _upstream_runs[key]


def _check_steps(steps, graph: bool):
    assert steps, "the plugin recorded no verify step"
    for s in steps:
        assert s["ok"] and s["committed"] == s["accepted"] and s["staged"] == s["verify_rows"], s
        assert s["poison_ok"] and s["outside_ok"] and s["commit_ok"], s
        assert s["graph"] is graph, s  # replayed from a bucket captured without KV writes
    assert sum(s["staged"] - s["committed"] for s in steps) > 0


@pytest.mark.parametrize("graphs", [True, False], ids=["graphs", "eager"])
@pytest.mark.parametrize("spec", SPECS)
def test_gpu_identity_and_invariants(spec, graphs, tiny_models):
    prompts = [encode(p) for p in PROMPTS]
    kw = _engine_kw(graphs)
    off = _upstream(spec, tiny_models, prompts, max_new_tokens=48, **kw)
    env = _graph_env(SPEC_CONFIGS[spec]["speculative_algorithm"]) if graphs else {}
    on = run_engine(spec, tiny_models, prompts, plugin_on=True, max_new_tokens=48, extra_env=env, **kw)
    print("IDENTITY", spec, "graphs" if graphs else "eager", env or "defaults", "identical",
          off.outputs == on.outputs, "steps", len(on.steps), "staged",
          sum(s["staged"] for s in on.steps), "committed", sum(s["committed"] for s in on.steps), flush=True)
    assert off.outputs == on.outputs
    _check_steps(on.steps, graph=graphs)


def test_graph_replay_equals_eager_step_for_step(tiny_models):
    """The plugin's graph-replayed verify steps (staged buckets, fused acceptance, the
    commit) equal its eager steps one for one: the same rows verified, accepted and committed
    at every step, and the same outputs. Upstream's own graph and eager runs must agree first:
    if bf16 kernels differ between the two on a card there is no common reference, and the
    test skips saying so."""
    prompts = [encode(p) for p in PROMPTS]
    runs = {}
    for graphs in (True, False):
        kw = _engine_kw(graphs)
        off = _upstream("ngram-tree", tiny_models, prompts, max_new_tokens=48, **kw)
        on = run_engine("ngram-tree", tiny_models, prompts, plugin_on=True, max_new_tokens=48, **kw)
        runs[graphs] = (off, on)
    (graph_off, graph_on), (eager_off, eager_on) = runs[True], runs[False]
    if graph_off.outputs != eager_off.outputs:
        pytest.skip("upstream's own graph and eager outputs differ on this card")
    assert graph_on.outputs == eager_on.outputs == graph_off.outputs

    def step(s):
        return s["verify_rows"], s["accepted"], s["committed"]

    assert [step(s) for s in graph_on.steps] == [step(s) for s in eager_on.steps]
    assert all(s["graph"] for s in graph_on.steps) and not any(s["graph"] for s in eager_on.steps)


def _graph_tree_run(name: str, env: dict, models, totals_path):
    """NGRAM tree, CUDA graphs on, plugin off and on (with ``env``); the plugin's totals."""
    prompts = [encode(p) for p in PROMPTS]
    kw = _engine_kw(True)
    off = _upstream("ngram-tree", models, prompts, max_new_tokens=48, **kw)
    on = run_engine("ngram-tree", models, prompts, plugin_on=True, max_new_tokens=48,
                    extra_env={**env, "SGLANG_NWOR_SCV_TOTALS": str(totals_path),
                               "SGLANG_NWOR_SCV_LOG_INTERVAL": "1"}, **kw)
    totals = json.loads(totals_path.read_text())
    print(name, "identical", off.outputs == on.outputs, totals, flush=True)
    return off, on, totals


def test_graph_staging_off_moves_in_one_launch(tiny_models, tmp_path):
    """SGLANG_NWOR_GRAPH=0: replayed steps keep upstream's KV writes and every tree move is
    the one-launch move, not upstream's copy kernel; outputs identical."""
    off, on, t = _graph_tree_run("MOVE-ONLY", {"SGLANG_NWOR_GRAPH": "0"}, tiny_models,
                                 tmp_path / "totals.json")
    assert off.outputs == on.outputs
    assert not on.steps and t["moves_fused"] > 0 and t["moves_upstream"] == 0, t


def test_ngram_mask_kernel_identity_under_graphs(tiny_models, tmp_path):
    """SGLANG_SCV_NGRAM_MASK=1: the full verify mask from one kernel, CUDA graphs on;
    outputs identical to upstream's per-request loop, invariants every step."""
    off, on, t = _graph_tree_run("NGRAM-MASK", {"SGLANG_SCV_NGRAM_MASK": "1"}, tiny_models,
                                 tmp_path / "totals.json")
    assert off.outputs == on.outputs
    assert t["ngram_mask_kernel"] > 0
    _check_steps(on.steps, graph=True)


def test_ngram_draft_kernel_identity_under_graphs(tiny_models, tmp_path):
    """SGLANG_SCV_NGRAM_DRAFT=1 (the default since runs 49-50): NGRAM's tree links, full mask
    and cache locations from one kernel, CUDA graphs on; outputs identical to upstream's,
    invariants every step, and the kernel ran on every verify step."""
    off, on, t = _graph_tree_run("NGRAM-DRAFT", {"SGLANG_SCV_NGRAM_DRAFT": "1"}, tiny_models,
                                 tmp_path / "totals.json")
    assert off.outputs == on.outputs
    assert t["ngram_draft_kernel"] == t["verify_steps"] > 0, t
    _check_steps(on.steps, graph=True)
    from sglang_nwor_scv.versions import installed_sglang_version

    if installed_sglang_version() == "0.5.17":  # the plugin's lookup (prompt-tail adapter)
        # read the scheduler's copies of the accepted tokens, not .cpu() (accept_readback.py)
        assert t["accept_readback"] > 0, t


def test_verify_metadata_kernel_identity_under_graphs(tiny_models, tmp_path):
    """By default (SGLANG_SCV_VERIFY_METADATA on): each replayed verify graph's Triton attention
    metadata from one kernel; outputs identical to upstream's, invariants every step, and the
    kernel really filled the replayed steps (its counter)."""
    off, on, t = _graph_tree_run("VERIFY-METADATA", {},
                                 tiny_models, tmp_path / "totals.json")
    assert off.outputs == on.outputs
    assert t["verify_metadata_kernel"] > 0, t
    # the cached launcher is on by default: the engine's launches really take the kept path
    assert t["launches_kept"] > 0 and t["launches_kept"] + t["launches_triton"] >= 2 * t["verify_steps"], t
    _check_steps(on.steps, graph=True)


def test_patched_tree_stages_graph_verify_steps(tiny_models, patched_site):
    """The patch series instead of the plugin (plugin off, patched sglang first on the
    path), CUDA graphs on, no variable set: verify buckets captured without KV writes
    (patch 0006) and every replayed step committing its accepted rows (0001 passes
    graph_replayed), checked every step; outputs identical to upstream."""
    prompts = [encode(p) for p in PROMPTS]
    kw = _engine_kw(True)
    off = _upstream("ngram-tree", tiny_models, prompts, max_new_tokens=48, **kw)
    patched = run_engine("ngram-tree", tiny_models, prompts, plugin_on=False, max_new_tokens=48,
                         extra_pythonpath=(str(patched_site),), **kw)
    print("PATCHED-GRAPHS identical", off.outputs == patched.outputs, "steps", len(patched.steps),
          "committed", sum(s["committed"] for s in patched.steps), flush=True)
    assert off.outputs == patched.outputs
    _check_steps(patched.steps, graph=True)


@pytest.mark.parametrize("topk", [1, 2], ids=["chain-forced", "tree-own"])
def test_eagle3_dummy_draft_identity_and_invariants(topk, tmp_path):
    """EAGLE3 with a dummy-weight draft head on a 4-layer Llama-3-8B-shaped target (dummy
    weights), CUDA graphs on. A dummy head agrees with the target on almost nothing.
    topk 1: acceptance forced (SGLANG_SIMULATE_ACC_LEN) in upstream's ``real-draft-token``
    mode, which takes only topk 1: accepted tokens are the draft's own and each bonus token
    the target's prediction, so outputs depend on the committed K/V (the default ``fixed``
    mode writes token 100 everywhere, and identity would check nothing). topk 2: the
    models' own acceptance, mostly the root row of each window."""
    from tools.realistic_model import write_eagle3_draft, write_llama3_8b

    target = write_llama3_8b(tmp_path / "target", layers=4)
    draft = write_eagle3_draft(tmp_path / "draft", aux_layers=(0, 1, 2))
    prompts = [[1000 + (7 * i + j) % 5000 for j in range(24)] for i in range(4)]
    kw = dict(GPU_KW, model_path=str(target), load_format="dummy", speculative_algorithm="EAGLE3",
              speculative_draft_model_path=str(draft), speculative_draft_load_format="dummy",
              speculative_num_steps=3, speculative_eagle_topk=topk,
              speculative_num_draft_tokens=4 if topk == 1 else 6,
              cuda_graph_max_bs_decode=8, max_running_requests=8)
    env = dict(SIMULATED_ACCEPTANCE) if topk == 1 else {}
    off = run_engine("ngram-tree", tmp_path, prompts, plugin_on=False, max_new_tokens=32, extra_env=env, **kw)
    on = run_engine("ngram-tree", tmp_path, prompts, plugin_on=True, max_new_tokens=32,
                    extra_env={**env, **_graph_env("EAGLE3")}, **kw)
    print("EAGLE3 topk", topk, _graph_env("EAGLE3") or "defaults", "identical",
          off.outputs == on.outputs, "steps", len(on.steps), "staged",
          sum(s["staged"] for s in on.steps), "committed", sum(s["committed"] for s in on.steps),
          flush=True)
    assert len({tok for out in off.outputs for tok in out}) > 1, "degenerate outputs check nothing"
    assert off.outputs == on.outputs
    assert on.steps and all(s["ok"] and s["committed"] == s["accepted"] for s in on.steps)
    assert all(s["graph"] for s in on.steps), "verify steps not replayed from staged buckets"


@pytest.mark.skipif(os.environ.get("NWOR_SCV_GPU_REALISTIC", "1") == "0", reason="disabled")
def test_realistic_shape_dummy_weights(tmp_path):
    """Llama-3-8B shapes, dummy weights, acceptance forced by SGLANG_SIMULATE_ACC_LEN
    (default ``fixed`` token mode: ``real-draft-token`` takes EAGLE topk 1 only, not
    NGRAM); eager verify (NWOR stages every step) at batch sizes 1, 8, 32, 64, one engine.
    Invariants every step, no identity: the forced tokens are all the same."""
    import sglang as sgl

    from tools.engine_run import engine_kwargs, prepare_process_env, restore_env

    from tools.realistic_model import write_llama3_8b

    model = write_llama3_8b(tmp_path / "llama3-8b-dummy")
    log = tmp_path / "steps.jsonl"
    old = prepare_process_env(True, {"SGLANG_SIMULATE_ACC_LEN": "2.5",
                                     "SGLANG_NWOR_SCV_STEP_LOG": str(log)})
    try:
        kw = engine_kwargs("ngram-tree", tmp_path, model_path=str(model), load_format="dummy",
                           dtype="bfloat16", disable_cuda_graph=True, mem_fraction_static=0.6,
                           max_running_requests=64)
        engine = sgl.Engine(**kw)
        try:
            for bs in (1, 8, 32, 64):
                prompts = [[1000 + (7 * i + j) % 5000 for j in range(16)] for i in range(bs)]
                engine.generate(input_ids=prompts,
                                sampling_params={"temperature": 0, "max_new_tokens": 16})
        finally:
            engine.shutdown()
    finally:
        restore_env(old)
    steps = [json.loads(x) for x in log.read_text().splitlines()]
    assert steps and all(s["ok"] and s["committed"] == s["accepted"] for s in steps)
    assert {1, 8, 32, 64} <= {s["bs"] for s in steps}


def _flashinfer_kernels_available() -> bool:
    """The device wheelhouse carries flashinfer import-only; a FlashInfer run needs the full
    wheel (ci/gpu/build_flashinfer_carry.sh) and SGLANG_IS_FLASHINFER_AVAILABLE left on."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("flashinfer")
    return (spec is not None and (Path(spec.origin).parent / "data" / "csrc").is_dir()
            and os.environ.get("SGLANG_IS_FLASHINFER_AVAILABLE", "true").lower() not in ("0", "false"))


def _backend_usable(backend: str) -> bool:
    if backend == "flashinfer":
        return _flashinfer_kernels_available()
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9  # FA3: Hopper


@pytest.mark.parametrize("spec", ["ngram-tree", "ngram-chain"])
@pytest.mark.parametrize("backend", ["flashinfer", "fa3"])
def test_backend_move_fix_identity(backend, spec, tmp_path):
    """A backend NWOR does not stage on, CUDA graphs on, no plugin variable: FlashInfer, and
    FA3 (SGLang's default for Llama on Hopper, so what most H100/H200 users run). NWOR steps
    aside (staging is Triton-backend only), every post-verify move is the plugin's one-launch
    move, not upstream's copy kernel, SCV accepts every verify step, and NGRAM's full mask
    comes from the plugin's kernel (FA3 and FlashInfer read it as Triton does); greedy outputs
    identical to plugin off. Llama-3-8B shape (head dim 128, which FlashInfer compiles for), 4
    layers, dummy weights. No SGLANG_SIMULATE_ACC_LEN: its default token mode makes every
    output token the same and every accepted path the front of its window, so identity would
    check nothing; the dummy model's own greedy tokens give whatever acceptance the n-gram
    corpus finds."""
    if not _backend_usable(backend):
        pytest.skip(f"{backend}: not usable here (flashinfer JIT sources, or FA3 on a Hopper card)")
    from tools.realistic_model import write_llama3_8b

    model = write_llama3_8b(tmp_path / "llama3-8b-4l", layers=4)
    prompts = [[1000 + (7 * i + j) % 5000 for j in range(24)] for i in range(24)]
    kw = dict(model_path=str(model), load_format="dummy", dtype="bfloat16",
              attention_backend=backend, disable_cuda_graph=False, mem_fraction_static=0.5,
              max_running_requests=32)
    env: dict = {}
    totals = tmp_path / "totals.json"
    off = run_engine(spec, tmp_path, prompts, plugin_on=False, max_new_tokens=32, extra_env=env, **kw)
    on = run_engine(spec, tmp_path, prompts, plugin_on=True, max_new_tokens=32,
                    extra_env={**env, "SGLANG_NWOR_SCV_TOTALS": str(totals),
                               "SGLANG_NWOR_SCV_LOG_INTERVAL": "1"}, **kw)
    t = json.loads(totals.read_text())
    print(backend.upper(), spec, "identical", off.outputs == on.outputs, "accept length",
          on.accept_length, t, flush=True)
    assert len({tok for out in off.outputs for tok in out}) > 1, "degenerate outputs check nothing"
    assert off.outputs == on.outputs
    assert not on.steps, f"NWOR must step aside on {backend}"
    assert t["moves_upstream"] == 0 and t["moves_fused"] > 0, t  # upstream's copy kernel never ran
    assert t["scv_kernel"] > 0, t  # acceptance and the mask do not depend on the backend
    assert t["ngram_mask_kernel"] > 0, t


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs (nvidia-h100-x2)")
@pytest.mark.parametrize("spec,graphs", [("ngram-tree", False), ("ngram-chain", False),
                                         ("ngram-tree", True)],
                         ids=["ngram-tree-eager", "ngram-chain-eager", "ngram-tree-graphs"])
def test_tp2_identity_and_invariants_per_rank(spec, graphs, tiny_models):
    """TP=2: each rank stages and commits its own KV heads; outputs identical to plugin
    off, and every rank's every step passes the debug checks. (NGRAM only: the tiny
    draft model's 3 attention heads do not split over 2 ranks.)"""
    prompts = [encode(p) for p in PROMPTS]
    kw = _engine_kw(graphs, tp_size=2)
    env = {}
    off = run_engine(spec, tiny_models, prompts, plugin_on=False, max_new_tokens=48, **kw)
    on = run_engine(spec, tiny_models, prompts, plugin_on=True, max_new_tokens=48, extra_env=env, **kw)
    ranks = sorted({s.get("rank") for s in on.steps})
    print("TP2", spec, "graphs" if graphs else "eager", "identical", off.outputs == on.outputs,
          "ranks", ranks, "steps", len(on.steps), "staged", sum(s["staged"] for s in on.steps),
          "committed", sum(s["committed"] for s in on.steps), flush=True)
    assert off.outputs == on.outputs
    assert ranks == [0, 1]
    per_rank = {r: [s for s in on.steps if s.get("rank") == r] for r in ranks}
    assert len(per_rank[0]) == len(per_rank[1])
    for s in on.steps:
        assert s["ok"] and s["committed"] == s["accepted"], s
        assert s["poison_ok"] and s["outside_ok"] and s["commit_ok"], s


@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graph-staging"])
def test_no_host_sync_in_plugin_sites(graphs, tiny_models, tmp_path):
    """No synchronizing CUDA call inside the plugin's step work (torch sync debug mode,
    counted by sglang_nwor_scv.sync_check), with debug checks and the step log off,
    as in production. The interval counter flush is not exempt: it reads the device
    counter without a wait (sglang_nwor_scv.counter_reads)."""
    totals = tmp_path / "totals.json"
    env = {"SGLANG_NWOR_SCV_SYNC_CHECK": "1", "SGLANG_NWOR_SCV_TOTALS": str(totals),
           "SGLANG_NWOR_SCV_DEBUG": "0", "SGLANG_NWOR_SCV_STEP_LOG": "",
           "SGLANG_NWOR_SCV_LOG_INTERVAL": "4"}
    kw = _engine_kw(graphs)
    run_engine("ngram-tree", tiny_models, [encode(p) for p in PROMPTS], plugin_on=True,
               max_new_tokens=48, extra_env=env, **kw)
    t = json.loads(totals.read_text())
    print("SYNC-CHECK", "graphs" if graphs else "eager", t, flush=True)
    assert t["steps"] > 0 and t["staged"] > t["committed"] == t["accepted"] > 0, t
    assert t["host_syncs"] == 0 and t["violations"] == 0, t
