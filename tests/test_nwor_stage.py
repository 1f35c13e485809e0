"""Stage/commit life cycle on a real SGLang KV pool with the real commit kernel.

The model runner and attention backend are plain containers here (the engine
tests drive the real ones); everything that touches KV is real: SGLang's
``MHATokenToKVPool``, ``ForwardMode`` and our Triton commit kernel.
"""

from __future__ import annotations

from types import SimpleNamespace

from tests.stand_ins import LaunchFails, Obj

import pytest
import torch

from sglang_nwor_scv import nwor, sites, state
from sglang_nwor_scv.config import modes
from sglang_nwor_scv.graph_stage import BucketStage
from sglang_nwor_scv.kernels.move_kv import move_accepted_kv_ref
from sglang_nwor_scv.nwor import commit_plan

LAYERS, HEADS, DIM, N = 2, 2, 8, 4


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("SGLANG_NWOR_MODE", "stage")
    monkeypatch.setenv("SGLANG_NWOR_SCV_DEBUG", "0")
    monkeypatch.delenv("SGLANG_NWOR_SCV_STEP_LOG", raising=False)
    modes.cache_clear()
    monkeypatch.setattr(state, "nwor_refusal", lambda runner: None)
    monkeypatch.setattr(state, "missing_sites", lambda: set())
    yield
    modes.cache_clear()


def _runner():
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool

    pool = MHATokenToKVPool(size=64, page_size=1, dtype=torch.float32, head_num=HEADS,
                            head_dim=DIM, layer_num=LAYERS, device="cpu",
                            enable_memory_saver=False)
    for buf in list(pool.k_buffer) + list(pool.v_buffer):
        buf.fill_(-7.0)  # poison: any row the test does not expect written keeps it
    backend = Obj(token_to_kv_pool=pool)
    return Obj(attn_backend=backend, token_to_kv_pool=pool)


def _verify_batch(slots):
    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    loc = torch.tensor(slots, dtype=torch.int64)
    return SimpleNamespace(forward_mode=ForwardMode.TARGET_VERIFY, out_cache_loc=loc)


def _stage_all_layers(runner, fb, seed):
    g = torch.Generator().manual_seed(seed)
    kv = []
    for layer_id in range(LAYERS):
        k = torch.randn(fb.out_cache_loc.numel(), HEADS, DIM, generator=g)
        v = torch.randn(fb.out_cache_loc.numel(), HEADS, DIM, generator=g)
        layer = SimpleNamespace(layer_id=layer_id)
        assert sites.stage_kv(runner.attn_backend, fb, layer, k, v)
        kv.append((k, v))
    return kv


def _stage_all_layers_detached(seed):
    """Staged layers like _stage_all_layers', outside any stage (same layout)."""
    g = torch.Generator().manual_seed(seed)
    return {i: sites.StagedLayer(torch.randn(4, HEADS, DIM, generator=g),
                                 torch.randn(4, HEADS, DIM, generator=g)) for i in range(LAYERS)}


def _allocator(runner):
    return SimpleNamespace(get_kvcache=lambda: runner.token_to_kv_pool)


def _accept(bs, lens, depth=N):
    lens_t = torch.tensor(lens, dtype=torch.int32)
    idx = torch.full((bs, depth), -1, dtype=torch.int32)
    for b, n in enumerate(lens):
        idx[b, :n] = torch.arange(b * N, b * N + n, dtype=torch.int32)
    return lens_t, idx


def test_commit_writes_only_accepted_rows():
    runner = _runner()
    fb = _verify_batch([10, 11, 12, 13, 20, 21, 22, 23])
    sites.begin_verify_forward(runner, fb)
    kv = _stage_all_layers(runner, fb, seed=0)
    sites.end_verify_forward(runner, fb, ok=True)
    lens, idx = _accept(2, [2, 1])
    worker = SimpleNamespace(model_runner=runner)
    sites.commit_after_accept(worker, fb, lens, idx, N)
    pool = runner.token_to_kv_pool
    for layer_id, (k, v) in enumerate(kv):
        assert torch.equal(pool.k_buffer[layer_id][[10, 11, 20]], k[[0, 1, 4]])
        assert torch.equal(pool.v_buffer[layer_id][[10, 11, 20]], v[[0, 1, 4]])
        untouched = [i for i in range(pool.k_buffer[layer_id].shape[0]) if i not in (10, 11, 20)]
        assert (pool.k_buffer[layer_id][untouched] == -7.0).all()
        assert (pool.v_buffer[layer_id][untouched] == -7.0).all()


def test_eager_steps_rebind_one_plan_and_commit_each_steps_rows():
    """Eager verify steps stage new tensors every step: the pool's plan is rebound to
    them (not rebuilt), commits exactly each step's accepted rows, and holds no step's
    K/V after its commit; a step with another layout gets a plan of its own."""
    runner = _runner()
    worker = SimpleNamespace(model_runner=runner)
    pool = runner.token_to_kv_pool
    plans = []
    for step, base in enumerate((10, 20, 30)):
        fb = _verify_batch([base, base + 1, base + 2, base + 3])
        sites.begin_verify_forward(runner, fb)
        kv = _stage_all_layers(runner, fb, seed=step)
        sites.end_verify_forward(runner, fb, ok=True)
        lens, idx = _accept(1, [2 + step % 2])
        sites.commit_after_accept(worker, fb, lens, idx, N)
        plan = nwor._eager_plans[pool][-1]
        assert plan._sources is None  # released after its launch
        plans.append(plan)
        n = 2 + step % 2
        for layer_id, (k, v) in enumerate(kv):
            assert torch.equal(pool.k_buffer[layer_id][base:base + n], k[:n]), step
            assert torch.equal(pool.v_buffer[layer_id][base:base + n], v[:n]), step
            assert (pool.k_buffer[layer_id][base + n:base + 4] == -7.0).all(), step
    assert plans[0] is plans[1] is plans[2]
    # Head-major K (other strides): a new plan, still the right rows.
    fb = _verify_batch([40, 41, 42, 43])
    sites.begin_verify_forward(runner, fb)
    ks = [torch.randn(HEADS, 4, DIM).transpose(0, 1) for _ in range(LAYERS)]
    for layer_id, k in enumerate(ks):
        assert sites.stage_kv(runner.attn_backend, fb, SimpleNamespace(layer_id=layer_id), k, k + 1)
    sites.end_verify_forward(runner, fb, ok=True)
    lens, idx = _accept(1, [3])
    sites.commit_after_accept(worker, fb, lens, idx, N)
    assert nwor._eager_plans[pool][-1] is not plans[0]
    for layer_id, k in enumerate(ks):
        assert torch.equal(pool.k_buffer[layer_id][40:43], k[:3])
        assert torch.equal(pool.v_buffer[layer_id][40:43], k[:3] + 1)
    # Flat [T, H * D] K/V never match a plan's [T, H, D] layout: a plan per step, right rows.
    seen = set()
    for base in (44, 48):
        fb = _verify_batch([base, base + 1, base + 2, base + 3])
        sites.begin_verify_forward(runner, fb)
        ks = [torch.randn(4, HEADS * DIM) for _ in range(LAYERS)]
        for layer_id, k in enumerate(ks):
            assert sites.stage_kv(runner.attn_backend, fb, SimpleNamespace(layer_id=layer_id), k, k - 1)
        sites.end_verify_forward(runner, fb, ok=True)
        sites.commit_after_accept(worker, fb, lens, idx, N)
        seen.add(id(nwor._eager_plans[pool][-1]))
        for layer_id, k in enumerate(ks):
            assert torch.equal(pool.k_buffer[layer_id][base:base + 3].flatten(1), k[:3])
            assert torch.equal(pool.v_buffer[layer_id][base:base + 3].flatten(1), k[:3] - 1)
    assert len(seen) == 2
    # The pool's buffers replaced (a re-created pool): the kept plan would write to the
    # old ones, so a new plan is built and the rows land in the new buffers.
    fb = _verify_batch([56, 57, 58, 59])  # a step of the usual layout first: its plan is kept
    sites.begin_verify_forward(runner, fb)
    _stage_all_layers(runner, fb, seed=7)
    sites.end_verify_forward(runner, fb, ok=True)
    sites.commit_after_accept(worker, fb, *_accept(1, [2]), N)
    kept = nwor._eager_plans[pool][-1]
    assert kept.rebind(*nwor._sources(_stage_all_layers_detached(seed=7))[1:3])
    kept.release_sources()
    pool.k_buffer = [torch.full_like(b, -7.0) for b in pool.k_buffer]
    fb = _verify_batch([52, 53, 54, 55])
    sites.begin_verify_forward(runner, fb)
    kv = _stage_all_layers(runner, fb, seed=8)
    sites.end_verify_forward(runner, fb, ok=True)
    before = nwor._eager_plans[pool][-1]
    lens, idx = _accept(1, [2])
    sites.commit_after_accept(worker, fb, lens, idx, N)
    assert nwor._eager_plans[pool][-1] is not before
    for layer_id, (k, _) in enumerate(kv):
        assert torch.equal(pool.k_buffer[layer_id][52:54], k[:2])


def test_committed_tree_path_is_not_moved_again():
    """A tree step: the accepted path (rows 0, 2, 3) is committed to the window front
    (slots 10, 11, 12). The move site then must not copy anything: the path's source
    rows were never written, so a move would copy poison over committed rows."""
    runner = _runner()
    fb = _verify_batch([10, 11, 12, 13])
    sites.begin_verify_forward(runner, fb)
    kv = _stage_all_layers(runner, fb, seed=9)
    sites.end_verify_forward(runner, fb, ok=True)
    lens = torch.tensor([3], dtype=torch.int32)
    idx = torch.tensor([[0, 2, 3, -1]], dtype=torch.int32)
    sites.commit_after_accept(SimpleNamespace(model_runner=runner), fb, lens, idx, N)
    pool = runner.token_to_kv_pool
    before = [b.clone() for b in [*pool.k_buffer, *pool.v_buffer]]
    assert sites.accept_move(fb, idx, lens - 1, _allocator(runner))
    assert all(torch.equal(a, b) for a, b in zip(before, [*pool.k_buffer, *pool.v_buffer], strict=True))
    for layer_id, (k, v) in enumerate(kv):
        assert torch.equal(pool.k_buffer[layer_id][10:13], k[[0, 2, 3]])
        assert torch.equal(pool.v_buffer[layer_id][10:13], v[[0, 2, 3]])
        assert (pool.k_buffer[layer_id][13] == -7.0).all()  # rejected: never written


def test_exception_between_staging_and_commit_leaves_no_stale_stage():
    runner = _runner()
    worker = SimpleNamespace(model_runner=runner)
    # Step A stages every layer, then fails before acceptance (e.g. in sampling).
    fa = _verify_batch([30, 31, 32, 33])
    sites.begin_verify_forward(runner, fa)
    _stage_all_layers(runner, fa, seed=1)
    sites.end_verify_forward(runner, fa, ok=True)
    # Step B opens a new stage: A must be gone and never committed.
    fb = _verify_batch([40, 41, 42, 43])
    sites.begin_verify_forward(runner, fb)
    kv = _stage_all_layers(runner, fb, seed=2)
    sites.end_verify_forward(runner, fb, ok=True)
    lens, idx = _accept(1, [3])
    # A late commit for A finds B's stage: A is never written; B, which cannot be
    # matched to this acceptance, is written whole (upstream-equivalent), once.
    sites.commit_after_accept(worker, fa, lens, idx, N)
    pool = runner.token_to_kv_pool
    assert (pool.k_buffer[0][30:34] == -7.0).all()
    assert torch.equal(pool.k_buffer[0][40:44], kv[0][0])
    pool.k_buffer[0][40:44] = -7.0
    sites.commit_after_accept(worker, fb, lens, idx, N)  # stage is one-shot: nothing left
    assert (pool.k_buffer[0][40:44] == -7.0).all()


def test_forward_that_raises_discards_its_stage():
    runner = _runner()
    worker = SimpleNamespace(model_runner=runner)
    fa = _verify_batch([50, 51, 52, 53])
    sites.begin_verify_forward(runner, fa)
    _stage_all_layers(runner, fa, seed=3)
    sites.end_verify_forward(runner, fa, ok=False)  # the forward raised
    lens, idx = _accept(1, [4])
    sites.commit_after_accept(worker, fa, lens, idx, N)
    assert (runner.token_to_kv_pool.k_buffer[1][50:54] == -7.0).all()
    # ... and the next step is correct.
    fb = _verify_batch([54, 55, 56, 57])
    sites.begin_verify_forward(runner, fb)
    kv = _stage_all_layers(runner, fb, seed=4)
    sites.end_verify_forward(runner, fb, ok=True)
    sites.commit_after_accept(worker, fb, lens, idx, N)
    assert torch.equal(runner.token_to_kv_pool.k_buffer[1][54:58], kv[1][0])


def test_partial_stage_is_written_whole_at_once():
    runner = _runner()
    fb = _verify_batch([60, 61, 62, 63])
    sites.begin_verify_forward(runner, fb)
    k = torch.randn(4, HEADS, DIM)
    assert sites.stage_kv(runner.attn_backend, fb, SimpleNamespace(layer_id=0), k, k + 1)
    sites.end_verify_forward(runner, fb, ok=True)  # layer 1 never staged
    pool = runner.token_to_kv_pool
    assert torch.equal(pool.k_buffer[0][60:64], k)  # upstream-equivalent full write
    assert torch.equal(pool.v_buffer[0][60:64], k + 1)


def test_mismatched_batch_is_written_whole():
    runner = _runner()
    worker = SimpleNamespace(model_runner=runner)
    fb = _verify_batch([0, 1, 2, 3])
    sites.begin_verify_forward(runner, fb)
    kv = _stage_all_layers(runner, fb, seed=5)
    sites.end_verify_forward(runner, fb, ok=True)
    other = _verify_batch([0, 1, 2, 3])  # a different window tensor
    lens, idx = _accept(1, [1])
    sites.commit_after_accept(worker, other, lens, idx, N)
    pool = runner.token_to_kv_pool
    assert torch.equal(pool.k_buffer[0][0:4], kv[0][0])
    # Not NWOR's window: the move runs (the one-launch move, same bytes as upstream's).
    want = [b.clone() for b in [*pool.k_buffer, *pool.v_buffer]]
    move_accepted_kv_ref(want, idx, lens - 1, other.out_cache_loc)
    assert sites.accept_move(other, idx, lens - 1, _allocator(runner))
    assert all(torch.equal(a, b) for a, b in zip(want, [*pool.k_buffer, *pool.v_buffer], strict=True))


def test_nwor_off_stages_nothing(monkeypatch):
    monkeypatch.setenv("SGLANG_NWOR_MODE", "off")
    modes.cache_clear()
    runner = _runner()
    fb = _verify_batch([0, 1, 2, 3])
    sites.begin_verify_forward(runner, fb)
    k = torch.randn(4, HEADS, DIM)
    assert not sites.stage_kv(runner.attn_backend, fb, SimpleNamespace(layer_id=0), k, k)


def test_graph_bucket_commit_plan_is_built_once_and_follows_replays():
    """SGLANG_NWOR_GRAPH path: a replayed bucket's stage is its captured K/V cut to the
    batch; the bucket's commit plan is built on first use and reused, and each replay's
    new values (the graph refills the same tensors) are what gets committed."""
    runner = _runner()
    bucket, rows_full = 4, 4 * N
    g = torch.Generator().manual_seed(3)
    captured = {i: sites.StagedLayer(torch.randn(rows_full, HEADS, DIM, generator=g),
                                     torch.randn(rows_full, HEADS, DIM, generator=g))
                for i in range(LAYERS)}
    st = sites.runner_state(runner)
    st.graph.buckets[bucket] = BucketStage(captured, commit_plan(runner.token_to_kv_pool, captured),
                                           rows_full, 0)
    runner.decode_cuda_graph_runner = SimpleNamespace(bs=bucket)
    pool = runner.token_to_kv_pool
    plans = []
    for step, slots in enumerate(([30, 31, 32, 33, 40, 41, 42, 43], [50, 51, 52, 53, 60, 61, 62, 63])):
        for s in captured.values():  # what a replay does: same tensors, new values
            s.k.normal_(generator=g)
            s.v.normal_(generator=g)
        fb = _verify_batch(slots)  # bs 2 replayed in the bs-4 bucket
        sites.begin_verify_forward(runner, fb)
        sites.end_verify_forward(runner, fb, ok=True, graph_replayed=True)
        plans.append(st.stage.plan)
        lens, idx = _accept(2, [3, 2])
        sites.commit_after_accept(SimpleNamespace(model_runner=runner), fb, lens, idx, N)
        for layer_id, s in captured.items():
            assert torch.equal(pool.k_buffer[layer_id][[slots[0], slots[1], slots[2], slots[4], slots[5]]],
                               s.k[[0, 1, 2, 4, 5]]), step
            assert torch.equal(pool.v_buffer[layer_id][[slots[3], slots[6]]][:, :1, :1],
                               torch.full((2, 1, 1), -7.0)), step  # rejected: never written
    assert plans[0] is not None and plans[0] is plans[1] is st.graph.buckets[bucket].plan


def test_patched_tree_and_plugin_both_active_is_said_once_per_runner(monkeypatch, caplog):
    """Both ways in at once (a patched tree with the plugin loaded) still works, but the
    runner's log says so and how to fix it."""
    monkeypatch.setattr(state, "_wired", {"model_forward", "stage_kv"})
    monkeypatch.setattr(state, "_wiring_check", lambda: {"model_forward", "after_accept"})
    with caplog.at_level("WARNING", logger="sglang_nwor_scv"):
        sites.runner_state(_runner())
    assert any("both wire ['model_forward']" in r.getMessage() for r in caplog.records)
    monkeypatch.setattr(state, "_wiring_check", None)
    caplog.clear()
    with caplog.at_level("WARNING", logger="sglang_nwor_scv"):
        sites.runner_state(_runner())
    assert not any("both wire" in r.getMessage() for r in caplog.records)


def _committed_pool(seed, lens, idx, flush_whole=False):
    runner = _runner()
    fb = _verify_batch([10, 11, 12, 13, 20, 21, 22, 23])
    sites.begin_verify_forward(runner, fb)
    _stage_all_layers(runner, fb, seed)
    sites.end_verify_forward(runner, fb, ok=True)
    st = state.existing_state(runner)
    if flush_whole:  # the list form of the commit: every staged row to its own slot
        st.stage.flush_all()
    else:  # no SCV list: the commit reads upstream's acceptance itself
        sites.commit_after_accept(SimpleNamespace(model_runner=runner), fb, lens, idx, N)
    pool = runner.token_to_kv_pool
    return [b.clone() for b in [*pool.k_buffer, *pool.v_buffer]], st.pending


@pytest.mark.parametrize("flush_whole", [False, True], ids=["from-acceptance", "commit-list"])
def test_commit_kernel_that_cannot_launch_is_replaced_by_its_reference(monkeypatch, caplog,
                                                                       flush_whole):
    """Only the commit writes staged rows, so a failed launch cannot be handed back to
    upstream: its torch reference writes the same bytes and counts (this step and every
    later one, the kernel not launched again), with one log line; the server keeps going."""
    from sglang_nwor_scv import kernel_guard
    from sglang_nwor_scv.kernels import commit_kv

    monkeypatch.setattr(kernel_guard, "_failed", {})
    lens, idx = _accept(2, [2, 1])
    want = [_committed_pool(seed, lens, idx, flush_whole) for seed in (0, 1)]
    failing = LaunchFails()
    monkeypatch.setattr(commit_kv, "commit_accepted_kv_kernel", failing)
    with caplog.at_level("WARNING", logger="sglang_nwor_scv"):
        got = [_committed_pool(seed, lens, idx, flush_whole) for seed in (0, 1)]
    for (want_bufs, want_count), (got_bufs, got_count) in zip(want, got, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(want_bufs, got_bufs, strict=True))
        assert (want_count is None) == (got_count is None)
        assert want_count is None or torch.equal(want_count, got_count)
    assert failing.calls == 1, "the kernel is not launched again after a failure"
    lines = [r.getMessage() for r in caplog.records if "NWOR commit kernel failed" in r.getMessage()]
    assert len(lines) == 1 and "shared memory" in lines[0] and "torch reference" in lines[0]


def test_move_kernel_that_cannot_launch_hands_the_move_to_upstream(monkeypatch, caplog):
    """The move runs before upstream's: a failed launch moved nothing, so upstream's move
    runs for this step and every later one (the site says False), with one log line."""
    from sglang_nwor_scv import kernel_guard, move
    from sglang_nwor_scv.kernels import move_kv

    monkeypatch.setattr(kernel_guard, "_failed", {})
    runner = _runner()
    fb = _verify_batch([10, 11, 12, 13])
    lens, idx = _accept(1, [3])
    allocator = _allocator(runner)
    before = [b.clone() for b in [*runner.token_to_kv_pool.k_buffer, *runner.token_to_kv_pool.v_buffer]]
    failing = LaunchFails()
    monkeypatch.setattr(move_kv, "_move_accepted_kv_kernel", failing)
    with caplog.at_level("WARNING", logger="sglang_nwor_scv"):
        assert not move.accept_move(fb, idx, lens - 1, allocator)
        assert not move.accept_move(fb, idx, lens - 1, allocator)
    after = [*runner.token_to_kv_pool.k_buffer, *runner.token_to_kv_pool.v_buffer]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert failing.calls == 1
    assert sum("KV move kernel failed" in r.getMessage() for r in caplog.records) == 1
