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
before its one commit launch.
"""

import pytest
import torch

memory_pool = pytest.importorskip("sglang.srt.mem_cache.memory_pool", reason="the pool is SGLang's")

from sglang_nwor_scv.nwor import StagedLayer, commit_plan, eager_commit_plan  # noqa: E402

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
