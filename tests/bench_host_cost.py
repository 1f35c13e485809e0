"""Benchmark: the plugin's host work per eager verify step, new commit plan vs rebind.

Eager verify steps (batches above the largest CUDA-graph bucket, or graphs off) stage
new K/V tensors every step, so the commit needs a plan over new addresses. Building a
``KVCommitPlan`` checks every layer's tensors and builds its tables; ``rebind`` (what
``nwor.eager_commit_plan`` does when the layout is the step before's) compares one
layout tuple and rebuilds only the address table. Llama-3-8B KV shape: 32 layers,
8 KV heads, head dim 128, K/V as slices of a fused qkv output (the triton backend's).

Runs on the CPU and on a GPU (there the table copies are pinned, non-blocking H2D):

    pytest tests/bench_host_cost.py --benchmark-enable --benchmark-json=out/bench_host_cost.json

Host work only: no kernel is launched, so the number is the host time the step pays
before its one commit launch. ``test_rebind_vs_new_plan_interleaved`` alternates the two
in rounds (order swapped every round) and stores per-round means, the paired relative
difference and its bootstrap 95% CI (tools/measure_latency.py's) in ``extra_info``.
"""

import pytest
import torch

memory_pool = pytest.importorskip("sglang.srt.mem_cache.memory_pool", reason="the pool is SGLang's")

import statistics  # noqa: E402
import time  # noqa: E402

from sglang_nwor_scv.nwor import StagedLayer, commit_plan, eager_commit_plan  # noqa: E402
from tools.measure_latency import bootstrap_ci, paired_difference  # noqa: E402

LAYERS, Q_HEADS, KV_HEADS, HEAD_DIM = 32, 32, 8, 128
DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _stage(pool, tokens):
    width = (Q_HEADS + 2 * KV_HEADS) * HEAD_DIM
    k0, k1 = Q_HEADS * HEAD_DIM, (Q_HEADS + KV_HEADS) * HEAD_DIM
    layers = {}
    for i in range(LAYERS):
        qkv = torch.empty(tokens, width, dtype=torch.bfloat16, device=DEV)
        layers[i] = StagedLayer(qkv[:, k0:k1].view(tokens, KV_HEADS, HEAD_DIM),
                                qkv[:, k1:].view(tokens, KV_HEADS, HEAD_DIM))
    return layers


@pytest.fixture(scope="module")
def pool():
    return memory_pool.MHATokenToKVPool(size=4096, page_size=1, dtype=torch.bfloat16,
                                        head_num=KV_HEADS, head_dim=HEAD_DIM, layer_num=LAYERS,
                                        device=str(DEV), enable_memory_saver=False)


@pytest.mark.parametrize("tokens", [64 * 8, 128 * 8])
@pytest.mark.parametrize("how", ["new plan", "rebind"])
def test_eager_commit_plan_host_us(benchmark, pool, tokens, how):
    benchmark.group = f"eager commit plan, {LAYERS} layers, {tokens} verify rows, {DEV.type}"
    benchmark.extra_info.update(layers=LAYERS, tokens=tokens, device=DEV.type)
    steps = [_stage(pool, tokens) for _ in range(2)]  # two steps' tensors, alternating
    eager_commit_plan(pool, steps[0]).release_sources()
    turn = [0]

    def one_step():
        layers = steps[turn[0] % 2]
        turn[0] += 1
        plan = commit_plan(pool, layers) if how == "new plan" else eager_commit_plan(pool, layers)
        plan.release_sources()
        return plan

    plan = benchmark(one_step)
    if how == "rebind":
        assert plan is eager_commit_plan(pool, steps[0])  # it really reused the plan


def test_rebind_vs_new_plan_interleaved(benchmark, pool, rounds=60, steps=100, tokens=128 * 8):
    """Rounds of ``steps`` eager steps per variant, variants alternating (order swapped
    every round): mean host us per step per round, paired difference with a 95% CI."""
    benchmark.group = f"eager commit plan, interleaved, {LAYERS} layers, {DEV.type}"
    batches = [_stage(pool, tokens) for _ in range(2)]
    eager_commit_plan(pool, batches[0]).release_sources()
    make = {"new plan": lambda layers: commit_plan(pool, layers),
            "rebind": lambda layers: eager_commit_plan(pool, layers)}

    def measure():
        per_round = {name: {} for name in make}
        for r in range(rounds):
            for name in (list(make) if r % 2 == 0 else list(make)[::-1]):
                t0 = time.perf_counter_ns()
                for i in range(steps):
                    make[name](batches[i % 2]).release_sources()
                per_round[name][r] = (time.perf_counter_ns() - t0) / steps / 1e3
        return per_round

    per_round = benchmark.pedantic(measure, rounds=1, iterations=1)
    stats = {name: {"median_us": statistics.median(v.values()),
                    "ci95_us": list(bootstrap_ci(list(v.values())))} for name, v in per_round.items()}
    diff = paired_difference(per_round["rebind"], per_round["new plan"])
    benchmark.extra_info.update(layers=LAYERS, tokens=tokens, device=DEV.type, rounds=rounds,
                                steps_per_round=steps, per_variant=stats,
                                rebind_vs_new_plan=diff)
    assert diff is not None and diff["n"] == rounds
