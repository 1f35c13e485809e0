"""GPU checks of the NWOR commit kernel at real shapes.

32 layers, 8 KV heads, head_dim 128, K/V sliced out of a fused qkv tensor,
bf16 and FP8 e4m3 pools, batch 1..128 x N 2..64 verify rows. The reference
runs the same torch ops as ``MHATokenToKVPool.set_kv_buffer`` on the GPU, so
"kernel == reference" is "kernel == upstream bytes" (including how CUDA torch
divides by a device-tensor scale vs. a host float). Where SGLang imports, a
real pool's ``set_kv_buffer`` is compared too.
"""

import pytest
import torch
from tests.gpu.sanitizer_shapes import ends

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from sglang_nwor_scv.kernels.commit_kv import (  # noqa: E402
    KVCommitPlan,
    commit_accepted_kv,
    commit_accepted_kv_ref,
)

pytestmark = pytest.mark.gpu

LAYERS, Q_HEADS, KV_HEADS, HEAD_DIM = 32, 32, 8, 128
DEV = torch.device("cuda")
FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)
SHAPES = [(1, 2), (1, 64), (3, 5), (16, 4), (64, 8), (128, 2), (128, 64)]


def store_dtype(kv_dtype):
    return torch.uint8 if kv_dtype in FP8 else kv_dtype


def as_bytes(t):
    return t.contiguous().reshape(-1).view(torch.uint8)


def fused_sources(tokens, dtype, seed, layers=LAYERS):
    """Per-layer K/V as strided slices of a [T, (Hq + 2 Hkv) * D] qkv output."""
    gen = torch.Generator(device=DEV).manual_seed(seed)
    width = (Q_HEADS + 2 * KV_HEADS) * HEAD_DIM
    qkv = torch.empty(layers, tokens, width, dtype=dtype, device=DEV)
    for layer in range(layers):
        qkv[layer].normal_(generator=gen).mul_(4.0)
    k0, k1 = Q_HEADS * HEAD_DIM, (Q_HEADS + KV_HEADS) * HEAD_DIM
    ks = [qkv[i, :, k0:k1].view(tokens, KV_HEADS, HEAD_DIM) for i in range(layers)]
    vs = [qkv[i, :, k1:].view(tokens, KV_HEADS, HEAD_DIM) for i in range(layers)]
    return ks, vs


def poisoned_pool(rows, kv_dtype, seed, layers=LAYERS):
    gen = torch.Generator(device=DEV).manual_seed(seed)
    out = []
    for _ in range(2 * layers):
        raw = torch.randint(
            0,
            256,
            (rows, KV_HEADS, HEAD_DIM * store_dtype(kv_dtype).itemsize),
            dtype=torch.uint8,
            device=DEV,
            generator=gen,
        )
        out.append(raw.view(store_dtype(kv_dtype)))
    return out[:layers], out[layers:]


def commit_lists(bs, n, rows, seed):
    """Accepted path per request (root first, then a random increasing subset of
    the draft, as chains and trees give), sent to the front of a random window."""
    gen = torch.Generator().manual_seed(seed)
    window = torch.randperm(rows, generator=gen)[: bs * n].view(bs, n)
    src = torch.full((bs, n), -1, dtype=torch.int64)
    dst = torch.full((bs, n), -1, dtype=torch.int64)
    for b in range(bs):
        accept = int(torch.randint(1, n + 1, (1,), generator=gen))
        path = torch.cat(
            [
                torch.zeros(1, dtype=torch.int64),
                torch.randperm(n - 1, generator=gen)[: accept - 1].sort().values + 1,
            ]
        )
        src[b, :accept] = b * n + path
        dst[b, :accept] = window[b, :accept]
    return src.flatten().to(DEV), dst.flatten().to(DEV)


def scales_for(kind, seed):
    if kind is None:
        return None, None
    gen = torch.Generator().manual_seed(seed)
    vals = (torch.rand(2, LAYERS, generator=gen) * 1.5 + 0.02).tolist()
    if kind == "tensor":  # RadixAttention.k_scale after loading: 0-dim fp32 on the GPU
        return tuple([torch.tensor(v, device=DEV) for v in row] for row in vals)
    if kind == "cpu-tensor":  # 0-dim fp32 on the host: CUDA torch applies x * fp32(1/s)
        return tuple([torch.tensor(v) for v in row] for row in vals)
    return tuple(vals)  # k_scale_float style host floats


@pytest.mark.parametrize("bs,n", ends(SHAPES))
@pytest.mark.parametrize(
    "kv_dtype,scale_kind",
    [(torch.bfloat16, None), (torch.float8_e4m3fn, "tensor"), (torch.float8_e4m3fn, "float")],
)
def test_commit_matches_reference_at_real_shapes(bs, n, kv_dtype, scale_kind):
    tokens = bs * n
    rows = 2 * tokens + 16
    ks, vs = fused_sources(tokens, torch.bfloat16, seed=bs * 1000 + n)
    kd, vd = poisoned_pool(rows, kv_dtype, seed=n)
    src, dst = commit_lists(bs, n, rows, seed=bs + n)
    k_scales, v_scales = scales_for(scale_kind, seed=bs)
    kd_ref, vd_ref = [t.clone() for t in kd], [t.clone() for t in vd]
    before = [t.clone() for t in kd + vd]
    c_out = torch.full((1,), 3, dtype=torch.int64, device=DEV)
    c_ref = c_out.clone()

    commit_accepted_kv(ks, vs, kd, vd, src, dst, k_scales, v_scales, c_out, kv_dtype=kv_dtype)
    commit_accepted_kv_ref(ks, vs, kd_ref, vd_ref, src, dst, k_scales, v_scales, c_ref, kv_dtype=kv_dtype)

    valid = (src >= 0) & (dst >= 0)
    assert int(c_out) == int(c_ref) == 3 + int(valid.sum())
    untouched = torch.ones(rows, dtype=torch.bool, device=DEV)
    untouched[dst[valid]] = False
    for out, ref, old in zip(kd + vd, kd_ref + vd_ref, before, strict=True):
        assert torch.equal(as_bytes(out), as_bytes(ref))
        assert torch.equal(as_bytes(out[untouched]), as_bytes(old[untouched]))


@pytest.mark.parametrize("kv_dtype", [torch.bfloat16, torch.float8_e4m3fn])
@pytest.mark.parametrize("bs,n", [(1, 2), (16, 4), (128, 8)])
def test_same_bytes_as_real_pool_set_kv_buffer(kv_dtype, bs, n):
    memory_pool = pytest.importorskip("sglang.srt.mem_cache.memory_pool")
    tokens = bs * n
    pools = [
        memory_pool.MHATokenToKVPool(
            size=2 * tokens + 16,
            page_size=16,
            dtype=kv_dtype,
            head_num=KV_HEADS,
            head_dim=HEAD_DIM,
            layer_num=LAYERS,
            device="cuda",
            enable_memory_saver=False,
        )  # fmt: skip
        for _ in range(2)
    ]
    ours, theirs = pools
    gen = torch.Generator(device=DEV).manual_seed(11)
    for a, b in zip(ours.k_buffer + ours.v_buffer, theirs.k_buffer + theirs.v_buffer, strict=True):
        a.view(torch.uint8).copy_(
            torch.randint(0, 256, a.view(torch.uint8).shape, dtype=torch.uint8, device=DEV, generator=gen)
        )
        b.copy_(a)
    ks, vs = fused_sources(tokens, torch.bfloat16, seed=5)
    k_scales, v_scales = scales_for("tensor" if kv_dtype in FP8 else None, seed=3)
    src, dst = commit_lists(bs, n, 2 * tokens + 16, seed=9)
    committed = torch.zeros(1, dtype=torch.int64, device=DEV)

    KVCommitPlan.for_pool(ours, ks, vs, k_scales, v_scales).launch(src, dst, committed)

    class Layer:  # what set_kv_buffer reads from a RadixAttention
        def __init__(self, layer_id):
            self.layer_id = layer_id

    valid = (src >= 0) & (dst >= 0)
    for layer in range(LAYERS):
        k = ks[layer][src[valid]]  # fresh tensors: set_kv_buffer divides in place
        v = vs[layer][src[valid]]
        if k_scales is None:
            theirs.set_kv_buffer(Layer(layer), dst[valid], k, v)
        else:
            theirs.set_kv_buffer(Layer(layer), dst[valid], k, v, k_scales[layer], v_scales[layer])
    assert int(committed) == int(valid.sum())
    for a, b in zip(ours.k_buffer + ours.v_buffer, theirs.k_buffer + theirs.v_buffer, strict=True):
        assert torch.equal(as_bytes(a), as_bytes(b))


def _all_16bit(dtype):
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32, device=DEV).to(torch.int16)
    return bits.view(dtype)


@pytest.mark.parametrize("scale", [None, "tensor", "float"])
@pytest.mark.parametrize("kv_dtype", FP8)
@pytest.mark.parametrize("src_dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_every_16bit_pattern_quantizes_like_cuda_torch(src_dtype, kv_dtype, scale):
    """All bf16/fp16 bit patterns (and their fp32 widening) through the kernel vs.
    ``x.div_(scale).to(fp8)`` on the GPU: checks the divisor rules, the source-dtype
    rounding and torch's FP8 overflow codes as they are on CUDA."""
    values = _all_16bit(torch.float16 if src_dtype == torch.float16 else torch.bfloat16)
    values = values.to(src_dtype)
    s = {None: None, "tensor": torch.tensor(0.0372, device=DEV), "float": 0.0372}[scale]
    src = values.view(16, 16, 256)
    dst = torch.zeros(16, 16, 256, dtype=torch.uint8, device=DEV)
    idx = torch.arange(16, dtype=torch.int64, device=DEV)
    scales = None if s is None else [s]
    commit_accepted_kv([src], [src], [dst], [dst.clone()], idx, idx, scales, scales, kv_dtype=kv_dtype)
    want = values.clone()
    if s is not None:
        want.div_(s)
    want = want.to(kv_dtype).view(torch.uint8)
    out = dst.view(-1)
    nan_in = torch.isnan(values)
    assert torch.equal(out[~nan_in], want[~nan_in])
    assert bool(torch.isnan(out[nan_in].view(kv_dtype).float()).all())


@pytest.mark.parametrize("kv_dtype", [torch.bfloat16, torch.float16])
def test_fp32_source_rounds_like_cuda_torch(kv_dtype):
    gen = torch.Generator(device=DEV).manual_seed(2)
    bits = torch.randint(-(2**31), 2**31 - 1, (64 * 4096,), dtype=torch.int64, device=DEV, generator=gen).to(
        torch.int32
    )
    values = bits.view(torch.float32)
    values = torch.where(torch.isnan(values), torch.zeros_like(values), values)
    src = values.view(64, 16, 256)
    dst = torch.zeros(64, 16, 256, dtype=kv_dtype, device=DEV)
    idx = torch.arange(64, dtype=torch.int64, device=DEV)
    commit_accepted_kv([src], [src], [dst], [dst.clone()], idx, idx)
    assert torch.equal(as_bytes(dst), as_bytes(values.to(kv_dtype)))


def test_plan_replays_in_a_cuda_graph():
    """Capture one launch, then change indices and sources in place and replay."""
    bs, n = 8, 4
    tokens, rows = bs * n, 2 * bs * n + 16
    ks, vs = fused_sources(tokens, torch.bfloat16, seed=1)
    kd, vd = poisoned_pool(rows, torch.float8_e4m3fn, seed=2)
    k_scales, v_scales = scales_for("tensor", seed=4)
    src = torch.full((tokens,), -1, dtype=torch.int64, device=DEV)
    dst = torch.full((tokens,), -1, dtype=torch.int64, device=DEV)
    committed = torch.zeros(1, dtype=torch.int64, device=DEV)
    plan = KVCommitPlan(ks, vs, kd, vd, k_scales, v_scales, kv_dtype=torch.float8_e4m3fn)
    plan.launch(src, dst, committed)  # warm up (compile) outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        plan.launch(src, dst, committed)

    kd_ref, vd_ref = [t.clone() for t in kd], [t.clone() for t in vd]
    expected = 0
    for step in range(3):
        s, d = commit_lists(bs, n, rows, seed=100 + step)
        src.copy_(s)
        dst.copy_(d)
        for k, v in zip(ks, vs, strict=True):
            k.normal_()
            v.normal_()
        graph.replay()
        commit_accepted_kv_ref(
            ks, vs, kd_ref, vd_ref, src, dst, k_scales, v_scales, kv_dtype=torch.float8_e4m3fn
        )
        expected += int(((s >= 0) & (d >= 0)).sum())
        for out, ref in zip(kd + vd, kd_ref + vd_ref, strict=True):
            assert torch.equal(out, ref), f"step {step}"
    assert int(committed) == expected


@pytest.mark.parametrize("src_list,dst_list", [([5], [9]), ([-1] * 7, [3] * 7), ([], [])])
def test_size_one_and_all_padding_at_real_shapes(src_list, dst_list):
    ks, vs = fused_sources(8, torch.bfloat16, seed=0)
    kd, vd = poisoned_pool(32, torch.bfloat16, seed=1)
    before = [t.clone() for t in kd + vd]
    src = torch.tensor(src_list, dtype=torch.int64, device=DEV)
    dst = torch.tensor(dst_list, dtype=torch.int64, device=DEV)
    committed = torch.zeros(1, dtype=torch.int64, device=DEV)
    commit_accepted_kv(ks, vs, kd, vd, src, dst, committed=committed)
    assert int(committed) == (1 if src_list == [5] else 0)
    for layer in range(LAYERS):
        for out, srcs, old in (
            (kd[layer], ks[layer], before[layer]),
            (vd[layer], vs[layer], before[LAYERS + layer]),
        ):
            if src_list == [5]:
                assert torch.equal(as_bytes(out[9]), as_bytes(srcs[5]))
                out, old = torch.cat([out[:9], out[10:]]), torch.cat([old[:9], old[10:]])
            assert torch.equal(as_bytes(out), as_bytes(old))


@pytest.mark.parametrize("scale_kind", [None, "float", "tensor", "cpu-tensor"])
def test_commit_never_syncs_the_host(scale_kind):
    """Building the plan and committing must not wait for the GPU: a pageable
    host-to-device copy of the pointer or scale tables would block until the verify
    forward has finished (torch's sync debug mode raises on any such sync)."""
    bs, n = 32, 8
    tokens, rows = bs * n, 2 * bs * n + 16
    kv = torch.float8_e4m3fn if scale_kind else torch.bfloat16
    ks, vs = fused_sources(tokens, torch.bfloat16, seed=5)
    kd, vd = poisoned_pool(rows, kv, seed=6)
    k_scales, v_scales = scales_for(scale_kind, seed=7) if scale_kind else (None, None)
    s, d = commit_lists(bs, n, rows, seed=8)
    commit_accepted_kv(ks, vs, kd, vd, s, d, k_scales, v_scales, kv_dtype=kv)  # compile first
    torch.cuda.synchronize()
    torch.cuda._sleep(50_000_000)  # keep the stream busy, as a verify forward would
    torch.cuda.set_sync_debug_mode("error")
    try:
        commit_accepted_kv(ks, vs, kd, vd, s, d, k_scales, v_scales, kv_dtype=kv)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@pytest.mark.parametrize("scale_kind", ["tensor", "cpu-tensor", "float"])
def test_kept_plan_follows_in_place_scale_updates_on_cuda(scale_kind):
    """A graph bucket's plan is launched every step without a rebuild: after the scale
    tensors change in place (a weight reload), its next launch writes the bytes
    ``set_kv_buffer`` would write with the new scales; and the batched re-read equals
    the checked per-layer table for each of CUDA torch's two division rules."""
    from sglang_nwor_scv.kernels import commit_kv

    bs, n = 16, 8
    tokens, rows = bs * n, 2 * bs * n + 16
    kv = torch.float8_e4m3fn
    ks, vs = fused_sources(tokens, torch.bfloat16, seed=21)
    kd, vd = poisoned_pool(rows, kv, seed=22)
    k_scales, v_scales = scales_for(scale_kind, seed=23)
    plan = KVCommitPlan(ks, vs, kd, vd, k_scales, v_scales, kv_dtype=kv)
    kd_ref, vd_ref = [t.clone() for t in kd], [t.clone() for t in vd]
    for step in range(2):
        if step and scale_kind != "float":  # the reload, between two launches
            for t in (*k_scales, *v_scales):
                t.mul_(1.75)
        s, d = commit_lists(bs, n, rows, seed=24 + step)
        plan.launch(s, d)
        commit_accepted_kv_ref(ks, vs, kd_ref, vd_ref, s, d, k_scales, v_scales, kv_dtype=kv)
        torch.cuda.synchronize()
        for a, b in zip(kd + vd, kd_ref + vd_ref, strict=True):
            assert torch.equal(as_bytes(a), as_bytes(b)), f"step {step}"
        dev = ks[0].device  # cuda:0: the plan's device, as KVCommitPlan passes it
        k_mode, k_t = commit_kv._scale_table("k", k_scales, LAYERS, torch.bfloat16, dev)
        v_mode, v_t = commit_kv._scale_table("v", v_scales, LAYERS, torch.bfloat16, dev)
        read = commit_kv._scale_reader(k_scales, v_scales, k_mode, v_mode, torch.bfloat16, dev)
        if scale_kind == "float":
            assert read is None
        else:
            assert torch.equal(read(), torch.stack([k_t, v_t]))
