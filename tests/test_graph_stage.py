"""Graph staging's bookkeeping on the CPU: the budget decision, release to borrowed views,
and a replayed bucket's commit (sglang_nwor_scv.graph_stage).

The capture itself needs CUDA: here ``torch.cuda.is_current_stream_capturing`` is
replaced by a stand-in that says "capturing" for the calls a real capture would make
(the warm-up forwards before it say "not capturing"). Everything else is real: the
KV pool, the commit kernel, the sites. tests/gpu/test_engine_gpu.py runs the same
path under real CUDA-graph capture with SGLang's decode graph runner.
"""

from __future__ import annotations

import gc
import weakref
from types import SimpleNamespace

from tests.stand_ins import Obj

import pytest
import torch

from sglang_nwor_scv import config, graph_stage, sites, state

LAYERS, HEADS, DIM, N = 2, 2, 8, 4


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    for name in ("SGLANG_NWOR_GRAPH", "SGLANG_NWOR_MODE"):
        monkeypatch.delenv(name, raising=False)
    # the toy pool's automatic budget (1% of 65 KB) is below one toy bucket
    monkeypatch.setenv("SGLANG_NWOR_GRAPH_MAX_MB", "1")
    config.modes.cache_clear()
    monkeypatch.setattr(state, "nwor_refusal", lambda runner: None)
    monkeypatch.setattr(state, "missing_sites", lambda: set())
    yield
    config.modes.cache_clear()


def _runner(algorithm="NGRAM"):
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool

    pool = MHATokenToKVPool(size=256, page_size=1, dtype=torch.float32, head_num=HEADS,
                            head_dim=DIM, layer_num=LAYERS, device="cpu", enable_memory_saver=False)
    for buf in [*pool.k_buffer, *pool.v_buffer]:
        buf.fill_(-7.0)
    return Obj(attn_backend=Obj(token_to_kv_pool=pool), token_to_kv_pool=pool,
                           server_args=SimpleNamespace(speculative_algorithm=algorithm))


def _graph_runner(runner):
    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    return SimpleNamespace(capture_forward_mode=ForwardMode.TARGET_VERIFY, model_runner=runner)


def _batch(n_tokens):
    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    return SimpleNamespace(forward_mode=ForwardMode.TARGET_VERIFY,
                           out_cache_loc=torch.arange(n_tokens, dtype=torch.int64))


def _capture_bucket(monkeypatch, runner, bucket, qkv_by_layer):
    """What SGLang's capture_one_shape does to the KV write site: two warm-up forwards
    (not capturing), then the captured forward. k and v are views of one qkv tensor."""
    graph_runner = _graph_runner(runner)
    token = sites.begin_graph_capture(graph_runner, bucket)
    fb = _batch(bucket * N)
    handled = []
    for capturing in (False, False, True):
        monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda c=capturing: c)
        for layer_id, qkv in qkv_by_layer.items():
            k, v = qkv[:, 1], qkv[:, 2]
            handled.append(sites.stage_kv(runner.attn_backend, fb, SimpleNamespace(layer_id=layer_id), k, v))
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    sites.end_graph_capture(graph_runner, bucket, token, ok=True)
    return handled


def _qkv(tokens, seed):
    g = torch.Generator().manual_seed(seed)
    return {i: torch.randn(tokens, 3, HEADS, DIM, generator=g) for i in range(LAYERS)}


def test_bucket_within_budget_is_staged_and_released_to_borrowed_views(monkeypatch):
    runner = _runner()
    qkv = _qkv(4 * N, seed=0)
    handled = _capture_bucket(monkeypatch, runner, 4, qkv)
    # warm-ups write as upstream; the captured forward is staged, every layer
    assert handled == [False] * (2 * LAYERS) + [True] * LAYERS
    st = state.runner_state(runner)
    bucket = st.graph.buckets[4]
    assert bucket.held_bytes == sum(t.numel() * t.element_size() for t in qkv.values())
    for i, s in bucket.layers.items():  # borrowed: same memory, no ownership
        assert s.k.data_ptr() == qkv[i][:, 1].data_ptr() and s.k.stride() == qkv[i][:, 1].stride()
        assert torch.equal(s.v, qkv[i][:, 2])
    # The plugin keeps nothing alive: once the "graph pool" lets go, the memory is free.
    alive = [weakref.ref(t) for t in qkv.values()]
    # (the borrowed views must be used only while the memory holds the bucket's rows;
    # here we drop them before the owners go away)
    st.graph.buckets.clear()
    del bucket, qkv
    gc.collect()
    assert all(r() is None for r in alive)


def test_automatic_budget_is_one_percent_of_the_pool_at_most_one_gib(monkeypatch):
    monkeypatch.setenv("SGLANG_NWOR_GRAPH_MAX_MB", "auto")
    config.modes.cache_clear()
    runner = _runner()
    pool = runner.token_to_kv_pool
    pool_bytes = sum(b.numel() * b.element_size() for b in [*pool.k_buffer, *pool.v_buffer])
    assert state.runner_state(runner).kv_pool_bytes == pool_bytes
    assert graph_stage.budget_bytes(pool_bytes) == int(pool_bytes * 0.01)
    assert graph_stage.budget_bytes(1 << 40) == 1 << 30


def test_bucket_over_budget_keeps_upstream_writes(monkeypatch):
    monkeypatch.setenv("SGLANG_NWOR_GRAPH_MAX_MB", "0")
    config.modes.cache_clear()
    runner = _runner()
    handled = _capture_bucket(monkeypatch, runner, 8, _qkv(8 * N, seed=1))
    assert not any(handled)
    st = state.runner_state(runner)
    assert 8 not in st.graph.buckets and st.graph.skipped[8] > 0
    assert "keep upstream KV writes" in graph_stage.summary(st.graph)


@pytest.mark.parametrize("algorithm,switch,staged", [
    ("NGRAM", "auto", True), ("EAGLE", "auto", True), ("EAGLE3", "auto", True),
    ("STANDALONE", "auto", True), ("LOOKAHEAD", "auto", False), ("LOOKAHEAD", "1", True),
    ("EAGLE3", "0", False)])
def test_auto_stages_the_algorithms_verified_on_a_gpu(monkeypatch, algorithm, switch, staged):
    monkeypatch.setenv("SGLANG_NWOR_GRAPH", switch)
    config.modes.cache_clear()
    runner = _runner(algorithm)
    assert any(_capture_bucket(monkeypatch, runner, 4, _qkv(4 * N, seed=5))) is staged
    assert (4 in state.runner_state(runner).graph.buckets) is staged


@pytest.mark.parametrize("variants", [dict(record_nolora_graph=True),
                                      dict(attention_graph_variants=SimpleNamespace(
                                          capture_labels=("dense", "sparse")))])
def test_several_graphs_per_size_keep_upstream_writes(variants):
    """LoRA (lora / nolora) or attention graph variants capture several graphs per batch
    size; a bucket keyed by size could hold only one of them, so none is staged."""
    runner = _runner()
    assert graph_stage.wants_capture(_graph_runner(runner))
    assert not graph_stage.wants_capture(SimpleNamespace(**vars(_graph_runner(runner)), **variants))
    one_label = SimpleNamespace(capture_labels=("dense",))
    assert graph_stage.wants_capture(SimpleNamespace(**vars(_graph_runner(runner)),
                                                     attention_graph_variants=one_label))


def test_graph_staging_off_switch(monkeypatch):
    monkeypatch.setenv("SGLANG_NWOR_GRAPH", "off")
    config.modes.cache_clear()
    runner = _runner()
    assert not any(_capture_bucket(monkeypatch, runner, 4, _qkv(4 * N, seed=2)))
    assert not state.runner_state(runner).graph.buckets


def test_replayed_bucket_commits_this_replays_rows(monkeypatch):
    """After a replay (the graph refilled the bucket's K/V), a smaller batch in the
    bucket commits its accepted rows from the bucket's memory with the bucket's plan."""
    runner = _runner()
    qkv = _qkv(4 * N, seed=3)
    _capture_bucket(monkeypatch, runner, 4, qkv)
    runner.decode_cuda_graph_runner = SimpleNamespace(bs=4)
    for t in qkv.values():  # the replay writes new values into the same memory
        t.normal_()
    fb = SimpleNamespace(forward_mode=_batch(1).forward_mode,
                         out_cache_loc=torch.tensor([100, 101, 102, 103, 110, 111, 112, 113]))
    sites.begin_verify_forward(runner, fb)
    sites.end_verify_forward(runner, fb, ok=True, graph_replayed=True)
    st = state.runner_state(runner)
    assert st.stage.plan is st.graph.buckets[4].plan
    lens = torch.tensor([2, 3], dtype=torch.int32)
    idx = torch.tensor([[0, 2, -1, -1], [4, 5, 7, -1]], dtype=torch.int32)
    sites.commit_after_accept(SimpleNamespace(model_runner=runner), fb, lens, idx, N)
    pool = runner.token_to_kv_pool
    for i, t in qkv.items():
        assert torch.equal(pool.k_buffer[i][[100, 101, 110, 111, 112]], t[[0, 2, 4, 5, 7], 1])
        assert torch.equal(pool.v_buffer[i][[100, 101, 110, 111, 112]], t[[0, 2, 4, 5, 7], 2])
        assert (pool.k_buffer[i][[102, 103, 113]] == -7.0).all()  # rejected: never written


def test_replay_retried_after_an_exception_commits_the_retry_once(monkeypatch):
    """A verify step whose replay returned and then raised (before acceptance) is run again
    by the worker (tests/test_faults.py's ``raise_after_verify`` on a GPU): the first
    replay's stage is dropped, the retry's rows are committed once, from the retry's values,
    and the verify-forward count runs one ahead of the commits."""
    runner = _runner()
    qkv = _qkv(4 * N, seed=5)
    _capture_bucket(monkeypatch, runner, 4, qkv)
    runner.decode_cuda_graph_runner = SimpleNamespace(bs=4)
    fb = SimpleNamespace(forward_mode=_batch(1).forward_mode,
                         out_cache_loc=torch.tensor([100, 101, 102, 103, 110, 111, 112, 113]))
    st = state.runner_state(runner)
    for t in qkv.values():  # the failed attempt's replay
        t.normal_()
    sites.begin_verify_forward(runner, fb)
    sites.end_verify_forward(runner, fb, ok=True, graph_replayed=True)
    first = st.stage
    for t in qkv.values():  # the retry's replay refills the same memory
        t.normal_()
    sites.begin_verify_forward(runner, fb)
    sites.end_verify_forward(runner, fb, ok=True, graph_replayed=True)
    assert st.stage is not first and st.stage.complete
    lens = torch.tensor([2, 3], dtype=torch.int32)
    idx = torch.tensor([[0, 2, -1, -1], [4, 5, 7, -1]], dtype=torch.int32)
    sites.commit_after_accept(SimpleNamespace(model_runner=runner), fb, lens, idx, N)
    sites.commit_after_accept(SimpleNamespace(model_runner=runner), fb, lens, idx, N)  # one-shot
    pool = runner.token_to_kv_pool
    for i, t in qkv.items():
        assert torch.equal(pool.k_buffer[i][[100, 101, 110, 111, 112]], t[[0, 2, 4, 5, 7], 1])
        assert torch.equal(pool.v_buffer[i][[100, 101, 110, 111, 112]], t[[0, 2, 4, 5, 7], 2])
        assert (pool.k_buffer[i][[102, 103, 113]] == -7.0).all()
    assert (st.steps, st.verify_steps) == (1, 2)


def test_idle_flush_counts_what_the_interval_left_once_and_never_raises(monkeypatch, caplog):
    """The scheduler's idle site: nothing happens while requests are parked (not fully
    idle), one flush counts the pending counter when fully idle, the next idle iteration
    does not even ask, and a flush that fails logs one line and stays off: housekeeping
    never takes the scheduler down."""
    from sglang_nwor_scv import commit

    monkeypatch.setitem(commit._idle_flush, "failed", False)
    runner = _runner()  # the state lives as long as its runner
    st = state.runner_state(runner)
    st.verify_steps, st.steps, st.pending_staged = 3, 3, 12
    st.pending = torch.tensor([7, 7], dtype=torch.int64)
    asked = []

    def idle(answer):
        return lambda: asked.append(answer) or answer

    sites.flush_when_idle(fully_idle=idle(False))  # requests parked: not now
    assert st.metrics.totals["committed"] == 0 and asked == [False]
    sites.flush_when_idle(fully_idle=idle(True))
    t = st.metrics.totals
    assert (t["staged"], t["committed"], t["accepted"], t["violations"]) == (12, 7, 7, 0)
    assert st.pending.tolist() == [0, 0] and st.pending_staged == 0
    sites.flush_when_idle(fully_idle=idle(True))  # nothing new: the scheduler is not asked
    assert asked == [False, True]

    st.verify_steps += 1
    monkeypatch.setattr(commit, "flush_metrics", lambda *a, **k: 1 / 0)
    with caplog.at_level("WARNING", logger="sglang_nwor_scv"):
        sites.flush_when_idle(fully_idle=idle(True))
        st.verify_steps += 1
        sites.flush_when_idle(fully_idle=idle(True))
    assert [r.getMessage().count("idle counter flush failed") for r in caplog.records] == [1]
    assert asked == [False, True, True]  # off for good after the failure
