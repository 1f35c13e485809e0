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

import gc  # noqa: E402
import itertools  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from sglang_nwor_scv.nwor import StagedLayer, commit_plan, eager_commit_plan  # noqa: E402
from tests.host_timing import interleaved_host_us  # noqa: E402
from tools.measure_latency import bootstrap_ci  # noqa: E402

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
    turn = itertools.count()  # each call takes the next step's tensors, alternating

    def step(make):
        return lambda: make(batches[next(turn) % 2]).release_sources()

    result = interleaved_host_us(benchmark, {"new plan": step(lambda layers: commit_plan(pool, layers)),
                                             "rebind": step(lambda layers: eager_commit_plan(pool, layers))},
                                 rounds=rounds, calls=steps)
    diff = result["second_vs_first"]
    benchmark.extra_info.update(layers=LAYERS, tokens=tokens, device=DEV.type, rounds=rounds,
                                steps_per_round=steps, per_variant=result["per_variant"],
                                rebind_vs_new_plan=diff)
    assert diff is not None and diff["n"] == rounds


class _LaunchClock:
    """Wraps a Triton kernel object (module attribute) so the host time of each launch
    (``kernel[grid](...)``: Triton's dispatch on a GPU, the interpreter's run on the
    CPU) is measured and can be told apart from the plugin's own work. With
    ``stub=True`` the kernel is not run at all: a stand-in for the launch, used so the
    CPU figure is not polluted by the Triton interpreter (which runs the kernel inside
    the launch and leaves the caches cold for the code after it); the same test runs on
    a GPU with the real launches too."""

    def __init__(self, kernel, clock, stub: bool = False):
        self.kernel, self.clock, self.stub = kernel, clock, stub

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            t0 = time.perf_counter_ns()
            try:
                return None if self.stub else self.kernel[grid](*args, **kwargs)
            finally:
                self.clock["ns"] += time.perf_counter_ns() - t0
                self.clock["launches"] += 1
        return launch


@pytest.mark.parametrize("launches", ["real", "stubbed"])
def test_plugin_step_host_us(benchmark, monkeypatch, launches):
    """The plugin's own host work in one replayed (CUDA-graph) verify step: open/close
    the stage on a staged bucket, SCV's fused verify, the commit, the move site.
    Upstream's buffers (eagle_sample's) are made outside the clock.

    Steady state, as a serving process runs it: timed batches of ``steps`` consecutive
    steps (garbage collection off inside a batch, run between batches), ``batches``
    batches; per batch the mean µs per step of the sites' whole host time, of the time
    inside the two kernel launches, and of the rest (the plugin's own work). Medians
    over the batches with a bootstrap 95% CI go to ``extra_info``. Host work does not
    depend on the layer count (the bucket's plan is built once); the GPU run uses the
    Llama-3-8B KV shape at bs 32, the CPU a small pool.

    ``real`` launches are the figure users pay on a GPU (Triton's dispatch included);
    on the CPU they run the interpreter, so there only a short batch checks that the
    step really commits (the figure is not meaningful). ``stubbed`` skips the kernels
    (see ``_LaunchClock``) and measures the plugin's own work alone, on both."""
    from types import SimpleNamespace

    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    from sglang_nwor_scv import config, sites, state
    from sglang_nwor_scv.graph_stage import BucketStage
    from sglang_nwor_scv.kernels import commit_kv, verify_accept
    from tests.stand_ins import Obj
    from tests.test_verify_accept import make_case

    monkeypatch.setenv("SGLANG_NWOR_MODE", "stage")
    monkeypatch.setenv("SGLANG_NWOR_SCV_DEBUG", "0")
    monkeypatch.delenv("SGLANG_NWOR_SCV_STEP_LOG", raising=False)
    monkeypatch.delenv("SGLANG_NWOR_SCV_TOTALS", raising=False)
    monkeypatch.setenv("SGLANG_NWOR_SCV_LOG_INTERVAL", "1000000")  # no counter read inside
    config.modes.cache_clear()
    monkeypatch.setattr(state, "nwor_refusal", lambda runner: None)
    monkeypatch.setattr(state, "missing_sites", lambda: set())
    gpu = DEV.type == "cuda"
    interpreted = launches == "real" and not gpu
    batches, steps = (1, 4) if interpreted else (9, 200)
    bs, n = (32, 8) if gpu else (8, 8)
    layers, heads, dim = (LAYERS, KV_HEADS, HEAD_DIM) if gpu else (2, 2, 8)
    pool = memory_pool.MHATokenToKVPool(size=bs * n * 4, page_size=1, dtype=torch.bfloat16,
                                        head_num=heads, head_dim=dim, layer_num=layers,
                                        device=str(DEV), enable_memory_saver=False)
    runner = Obj(attn_backend=Obj(token_to_kv_pool=pool), token_to_kv_pool=pool,
                 decode_cuda_graph_runner=SimpleNamespace(bs=bs))
    worker = SimpleNamespace(model_runner=runner)
    allocator = SimpleNamespace(get_kvcache=lambda: pool)
    bucket = {i: StagedLayer(torch.randn(bs * n, heads, dim, device=DEV).to(torch.bfloat16),
                             torch.randn(bs * n, heads, dim, device=DEV).to(torch.bfloat16))
              for i in range(layers)}
    st = sites.runner_state(runner)
    st.graph.buckets[bs] = BucketStage(bucket, commit_plan(pool, bucket), bs * n, 0)
    case = make_case("ngram", bs, seed=3, n=n, device=DEV)
    windows = [case.out_cache_loc, case.out_cache_loc + 1]  # two steps' windows, alternating
    clock = {"ns": 0, "launches": 0}
    stub = launches == "stubbed"
    monkeypatch.setattr(commit_kv, "commit_accepted_kv_kernel",
                        _LaunchClock(commit_kv.commit_accepted_kv_kernel, clock, stub))
    monkeypatch.setattr(verify_accept, "_verify_accept_greedy_kernel",
                        _LaunchClock(verify_accept._verify_accept_greedy_kernel, clock, stub))

    def one_step(step):
        fb = SimpleNamespace(forward_mode=ForwardMode.TARGET_VERIFY, out_cache_loc=windows[step % 2])
        predicts = torch.zeros(bs * n, dtype=torch.int32, device=DEV)  # eagle_sample's buffers
        accept_index = torch.full((bs, case.max_depth), -1, dtype=torch.int32, device=DEV)
        accept_num = torch.empty(bs, dtype=torch.int32, device=DEV)
        t0 = time.perf_counter_ns()
        sites.begin_verify_forward(runner, fb)
        sites.end_verify_forward(runner, fb, ok=True, graph_replayed=True)
        sites.try_verify_greedy(predicts, accept_index, accept_num, *case.args()[:4],
                                case.target_predict)
        t1 = time.perf_counter_ns()
        accept_lens = accept_num + 1  # upstream's, between the two sites: off the clock
        t1b = time.perf_counter_ns()
        sites.commit_after_accept(worker, fb, accept_lens, accept_index, n)
        done = sites.accept_move(fb, accept_index, accept_num, allocator)
        t2 = time.perf_counter_ns()
        assert done and st.committed_window is None  # committed, and the move stood aside
        return (t1 - t0) + (t2 - t1b)

    def measure():
        for i in range(3):  # warm-up: first-call checks, plan lookups, Triton's cache
            one_step(i)
        per_batch = []
        for _ in range(batches):
            gc.collect()
            gc.disable()
            try:
                launch_ns, launch_count = clock["ns"], clock["launches"]
                site_ns = sum(one_step(i) for i in range(steps))
                inside = clock["ns"] - launch_ns
                per_batch.append({"site_us": site_ns / steps / 1e3,
                                  "launch_us": inside / steps / 1e3,
                                  "own_us": (site_ns - inside) / steps / 1e3,
                                  "launches": (clock["launches"] - launch_count) / steps})
            finally:
                gc.enable()
        if gpu:
            torch.cuda.synchronize()
        return per_batch

    per_batch = benchmark.pedantic(measure, rounds=1, iterations=1)
    benchmark.group = f"plugin host work per replayed verify step, {DEV.type}"
    summary = {}
    for key in ("site_us", "launch_us", "own_us"):
        values = [b[key] for b in per_batch]
        summary[key] = {"median": statistics.median(values),
                        "ci95": list(bootstrap_ci(values)) if len(values) > 1 else None}
    benchmark.extra_info.update(device=DEV.type, launches=launches, bs=bs, n=n, layers=layers,
                                batches=batches, steps_per_batch=steps, per_batch=per_batch,
                                **summary)
    assert all(b["launches"] == 2 for b in per_batch)  # SCV's kernel and the commit, nothing else
    if not stub:  # the kernels ran: the commit wrote exactly the rows verify accepted
        committed, accepted = st.pending.tolist()
        assert committed == accepted > 0
