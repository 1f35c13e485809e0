"""CPU tests for the NWOR commit kernel (``kernels/commit_kv.py``).

Without CUDA the Triton kernel runs under the Triton interpreter, so shapes are
kept small. Every comparison is bitwise (``torch.equal`` on byte views): the
commit must write exactly the bytes upstream's ``set_kv_buffer`` writes, and
nothing else.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sglang_nwor_scv.kernels import commit_kv  # noqa: E402
from sglang_nwor_scv.kernels.commit_kv import (  # noqa: E402
    KVCommitPlan,
    commit_accepted_kv,
    commit_accepted_kv_ref,
)

# numpy (under the Triton interpreter) warns about NaN/inf lanes the kernel masks off
pytestmark = pytest.mark.filterwarnings("ignore:(invalid value|overflow) encountered:RuntimeWarning")

FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)
FLOATS = (torch.float32, torch.bfloat16, torch.float16)


def store_dtype(kv_dtype):
    return torch.uint8 if kv_dtype in FP8 else kv_dtype


def as_bytes(t):
    return t.contiguous().reshape(-1).view(torch.uint8)


def poisoned(rows, heads, dim, kv_dtype, layers, gen):
    """Pool buffers filled with random bytes (a copy is the expected 'untouched')."""
    item = torch.empty((), dtype=store_dtype(kv_dtype)).element_size()
    out = []
    for _ in range(layers):
        raw = torch.randint(0, 256, (rows, heads, dim * item), dtype=torch.uint8, generator=gen)
        out.append(raw.view(store_dtype(kv_dtype)))
    return out


def make_sources(layers, tokens, heads, dk, dv, dtype, layout, gen, magnitude=1.0):
    """Per-layer K/V views with awkward strides (slices of a fused qkv, or head-major)."""
    ks, vs = [], []
    for _ in range(layers):
        if layout == "fused":  # [T, q | k | v | pad] like a qkv projection output
            q_width = 2 * heads * max(dk, dv)
            width = q_width + heads * (dk + dv) + 3
            fused = torch.randn(tokens, width, generator=gen) * magnitude
            fused = fused.to(dtype)
            k = fused[:, q_width : q_width + heads * dk].view(tokens, heads, dk)
            v = fused[:, q_width + heads * dk : q_width + heads * (dk + dv)].view(tokens, heads, dv)
        elif layout == "head_major":  # [H, T, D] permuted: token stride D, head stride T*D
            k = (torch.randn(heads, tokens, dk, generator=gen) * magnitude).to(dtype)
            v = (torch.randn(heads, tokens, dv, generator=gen) * magnitude).to(dtype)
            k, v = k.permute(1, 0, 2), v.permute(1, 0, 2)
        else:
            k = (torch.randn(tokens, heads, dk, generator=gen) * magnitude).to(dtype)
            v = (torch.randn(tokens, heads, dv, generator=gen) * magnitude).to(dtype)
        ks.append(k)
        vs.append(v)
    return ks, vs


def run_both(ks, vs, kd, vd, src, dst, k_scales=None, v_scales=None, kv_dtype=None):
    """Commit with the kernel and with the reference into copies of the same pool."""
    kd_ref = [t.clone() for t in kd]
    vd_ref = [t.clone() for t in vd]
    kd_out = [t.clone() for t in kd]
    vd_out = [t.clone() for t in vd]
    c_ref = torch.full((1,), 7, dtype=torch.int64)
    c_out = torch.full((1,), 7, dtype=torch.int64)
    commit_accepted_kv_ref(ks, vs, kd_ref, vd_ref, src, dst, k_scales, v_scales, c_ref, kv_dtype=kv_dtype)
    commit_accepted_kv(ks, vs, kd_out, vd_out, src, dst, k_scales, v_scales, c_out, kv_dtype=kv_dtype)
    return kd_ref, vd_ref, c_ref, kd_out, vd_out, c_out


def assert_commit(kd, vd, kd_ref, vd_ref, kd_out, vd_out, src, dst, c_ref, c_out):
    valid = [(int(s), int(d)) for s, d in zip(src, dst, strict=True) if s >= 0 and d >= 0]
    written = {d for _, d in valid}
    assert int(c_out) == int(c_ref) == 7 + len(valid)
    for layer in range(len(kd)):
        for before, ref, out in ((kd, kd_ref, kd_out), (vd, vd_ref, vd_out)):
            assert torch.equal(as_bytes(out[layer]), as_bytes(ref[layer])), f"layer {layer}"
            untouched = [r for r in range(before[layer].shape[0]) if r not in written]
            assert torch.equal(as_bytes(out[layer][untouched]), as_bytes(before[layer][untouched])), (
                "a row outside the commit list changed"
            )


# --------------------------------------------------------------------------
# Property test: random shapes, dtypes, strides, commit lists.
# --------------------------------------------------------------------------

DIMS = st.sampled_from([1, 2, 3, 5, 8, 16, 17, 33])


@st.composite
def commit_cases(draw):
    layers = draw(st.integers(1, 4))
    heads = draw(st.integers(1, 4))
    dk, dv = draw(DIMS), draw(DIMS)
    src_dtype = draw(st.sampled_from(FLOATS))
    kv_dtype = draw(st.sampled_from([src_dtype, src_dtype, *FLOATS, *FP8]))
    layout = draw(st.sampled_from(["fused", "head_major", "contiguous"]))
    tokens = draw(st.integers(1, 9))
    rows = draw(st.integers(tokens, 24))
    m = draw(st.integers(1, 12))
    slots = draw(st.permutations(range(rows)))[:m]
    slots = slots + [-1] * (m - len(slots))
    src = [draw(st.integers(-1, tokens - 1)) for _ in range(m)]
    dst = [d if draw(st.integers(0, 4)) else -1 for d in slots]  # ~1/5 padding
    scale_kind = draw(st.sampled_from(["none", "float", "tensor"]))
    scales = None
    if scale_kind != "none":
        vals = [draw(st.floats(0.01, 8.0)) for _ in range(layers)]
        scales = vals if scale_kind == "float" else [torch.tensor(v) for v in vals]
    magnitude = draw(st.sampled_from([1.0, 100.0, 1e4]))
    tile = draw(st.sampled_from([commit_kv._MAX_TILE_ELEMS, 4, 32]))  # small: loop over heads
    seed = draw(st.integers(0, 2**31 - 1))
    return dict(
        layers=layers, heads=heads, dk=dk, dv=dv, src_dtype=src_dtype, kv_dtype=kv_dtype,
        layout=layout, tokens=tokens, rows=rows, src=src, dst=dst, scales=scales,
        magnitude=magnitude, tile=tile, seed=seed,
    )  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=commit_cases())
def test_commit_matches_reference_and_leaves_other_rows(case):
    gen = torch.Generator().manual_seed(case["seed"])
    c = case
    ks, vs = make_sources(
        c["layers"], c["tokens"], c["heads"], c["dk"], c["dv"], c["src_dtype"], c["layout"],
        gen, c["magnitude"],
    )  # fmt: skip
    ks_before = [k.clone() for k in ks]
    vs_before = [v.clone() for v in vs]
    kd = poisoned(c["rows"], c["heads"], c["dk"], c["kv_dtype"], c["layers"], gen)
    vd = poisoned(c["rows"], c["heads"], c["dv"], c["kv_dtype"], c["layers"], gen)
    src = torch.tensor(c["src"], dtype=torch.int64)
    dst = torch.tensor(c["dst"], dtype=torch.int64)
    # the K list and the V list may use different scale kinds
    v_scales = None if c["scales"] is None else [float(s) * 0.5 for s in c["scales"]]
    saved_tile = commit_kv._MAX_TILE_ELEMS
    commit_kv._MAX_TILE_ELEMS = c["tile"]
    try:
        out = run_both(ks, vs, kd, vd, src, dst, c["scales"], v_scales, kv_dtype=c["kv_dtype"])
    finally:
        commit_kv._MAX_TILE_ELEMS = saved_tile
    kd_ref, vd_ref, c_ref, kd_out, vd_out, c_out = out
    assert_commit(kd, vd, kd_ref, vd_ref, kd_out, vd_out, src, dst, c_ref, c_out)
    # sources are never modified (set_kv_buffer divides in place; we must not)
    for a, b in zip(ks + vs, ks_before + vs_before, strict=True):
        assert torch.equal(as_bytes(a), as_bytes(b))
    # independent check of the plain-copy case: committed row == source row
    if c["kv_dtype"] == c["src_dtype"]:
        for s, d in zip(c["src"], c["dst"], strict=True):
            if s >= 0 and d >= 0:
                assert torch.equal(kd_out[0][d], ks[0][s])
                assert torch.equal(vd_out[-1][d], vs[-1][s])


# --------------------------------------------------------------------------
# Conversions, exhaustively: every bf16 and fp16 bit pattern (NaN, inf and
# subnormals included), and random fp32 patterns, through the real kernel.
# --------------------------------------------------------------------------


def _convert_with_kernel(values, kv_dtype, scale=None):
    """values: 1-D tensor with 4096*k elements -> [k, 16, 256] rows committed 1:1."""
    rows = values.numel() // 4096
    src = values.view(rows, 16, 256)
    dst = torch.zeros(rows, 16, 256, dtype=store_dtype(kv_dtype))
    idx = torch.arange(rows, dtype=torch.int64)
    scales = None if scale is None else [scale]
    commit_accepted_kv([src], [src], [dst], [dst.clone()], idx, idx, scales, scales, kv_dtype=kv_dtype)
    return dst.view(-1)


def _torch_convert(values, kv_dtype, scale=None):
    x = values.clone()
    if scale is not None:
        x.div_(scale)
    return x.to(kv_dtype).view(store_dtype(kv_dtype)).view(-1)


def _all_16bit(dtype):
    return torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)


@pytest.mark.parametrize("kv_dtype", [*FP8, torch.float32])
@pytest.mark.parametrize("src_dtype", [torch.bfloat16, torch.float16])
def test_every_16bit_pattern_converts_like_torch(src_dtype, kv_dtype):
    values = _all_16bit(src_dtype)
    out = _convert_with_kernel(values, kv_dtype)
    want = _torch_convert(values, kv_dtype)
    if kv_dtype == torch.float32:
        # bits, except that fp16 signaling NaNs come out quieted by torch and kept
        # by numpy (the interpreter): a NaN payload is no torch contract
        nan = torch.isnan(want)
        assert torch.equal(torch.isnan(out), nan)
        assert torch.equal(out.view(torch.int32)[~nan], want.view(torch.int32)[~nan])
        if src_dtype == torch.bfloat16:
            assert torch.equal(out.view(torch.int32), want.view(torch.int32))
    else:
        assert torch.equal(out, want)


@pytest.mark.parametrize("scale", [0.37, torch.tensor(0.0372), torch.tensor(3.0)])
@pytest.mark.parametrize("kv_dtype", FP8)
@pytest.mark.parametrize("src_dtype", [torch.bfloat16, torch.float16])
def test_every_16bit_pattern_scaled_like_torch(src_dtype, kv_dtype, scale):
    values = _all_16bit(src_dtype)
    finite = torch.isfinite(values.float())  # NaN payload of a division is not specified
    values = torch.where(finite, values, torch.zeros_like(values))
    out = _convert_with_kernel(values, kv_dtype, scale)
    assert torch.equal(out, _torch_convert(values, kv_dtype, scale))


@pytest.mark.parametrize("kv_dtype", [torch.bfloat16, torch.float16, *FP8])
def test_random_fp32_patterns_convert_like_torch(kv_dtype):
    gen = torch.Generator().manual_seed(1234)
    bits = torch.randint(-(2**31), 2**31, (4 * 4096,), dtype=torch.int64, generator=gen)
    values = bits.to(torch.int32).view(torch.float32)
    # dense near the fp8 / bf16 rounding boundaries too
    near = torch.randn(4 * 4096, generator=gen) * torch.tensor([1e-3, 1.0, 300.0, 6e4]).repeat(4096)
    values = torch.cat([values, near, torch.tensor([float("inf"), -float("inf")] * 2048)])
    out = _convert_with_kernel(values, kv_dtype)
    want = _torch_convert(values, kv_dtype)
    if kv_dtype in FP8:  # FP8 NaN is one code (0x7F | sign): exact
        assert torch.equal(out, want)
    else:
        # NaN payloads are no torch contract: fp32->bf16 NaN is 0x7FC0 in c10's scalar
        # path, 0xFFFF in its vectorized CPU path, 0x7FFF on CUDA; we write 0x7FC0
        nan = torch.isnan(want)
        assert torch.equal(torch.isnan(out), nan)
        assert torch.equal(as_bytes(out[~nan]), as_bytes(want[~nan]))


def test_e4m3fn_overflow_codes_match_installed_torch():
    overflow, carry = commit_kv._e4m3fn_overflow_codes()
    assert overflow in (0x7E, 0x7F) and carry in (0x7E, 0x7F)
    values = torch.tensor([449.0, 463.9, 464.0, 470.0, 479.9, 480.0, 1e6, float("inf")] * 512)
    out = _convert_with_kernel(values, torch.float8_e4m3fn)
    assert torch.equal(out, _torch_convert(values, torch.float8_e4m3fn))


# --------------------------------------------------------------------------
# Against a real SGLang MHATokenToKVPool: commit into one pool, set_kv_buffer
# into another, compare every buffer byte for byte.
# --------------------------------------------------------------------------


class _Layer:
    """What ``MHATokenToKVPool.set_kv_buffer`` reads from a RadixAttention."""

    def __init__(self, layer_id):
        self.layer_id = layer_id


def _pool(kv_dtype, layers, heads, dk, dv):
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool

    return MHATokenToKVPool(
        size=48, page_size=16, dtype=kv_dtype, head_num=heads, head_dim=dk, layer_num=layers,
        device="cpu", enable_memory_saver=False, v_head_dim=dv,
    )  # fmt: skip


@pytest.mark.parametrize(
    "kv_dtype,src_dtype,dk,dv",
    [
        (torch.float8_e4m3fn, torch.bfloat16, 8, 8),
        (torch.float8_e4m3fn, torch.float32, 17, 5),
        (torch.float8_e5m2, torch.bfloat16, 8, 3),
        (torch.float8_e5m2, torch.float16, 16, 16),
        (torch.bfloat16, torch.bfloat16, 8, 8),
        (torch.bfloat16, torch.float32, 3, 17),
    ],
)
def test_same_bytes_as_real_pool_set_kv_buffer(kv_dtype, src_dtype, dk, dv):
    pytest.importorskip("sglang.srt.mem_cache.memory_pool")
    layers, heads, tokens = 3, 2, 10
    gen = torch.Generator().manual_seed(7)
    ks, vs = make_sources(layers, tokens, heads, dk, dv, src_dtype, "fused", gen, 40.0)
    ours, theirs = _pool(kv_dtype, layers, heads, dk, dv), _pool(kv_dtype, layers, heads, dk, dv)
    for a, b in zip(ours.k_buffer + ours.v_buffer, theirs.k_buffer + theirs.v_buffer, strict=True):
        a.view(torch.uint8).copy_(torch.randint(0, 256, a.view(torch.uint8).shape, generator=gen))
        b.copy_(a)
    # k scales as RadixAttention keeps them (0-dim fp32 tensors), v scales as floats
    k_scales = [torch.tensor(s, dtype=torch.float32) for s in (0.0372, 1.7, 0.5)]
    v_scales = [0.11, 2.3, 1.0]
    src = torch.tensor([3, -1, 0, 9, 5, 4, -1], dtype=torch.int64)
    dst = torch.tensor([17, 20, 1, 63, -1, 40, -1], dtype=torch.int64)
    committed = torch.zeros(1, dtype=torch.int64)

    plan = KVCommitPlan.for_pool(ours, ks, vs, k_scales, v_scales)
    plan.launch(src, dst, committed)

    valid = (src >= 0) & (dst >= 0)
    for layer in range(layers):
        theirs.set_kv_buffer(
            _Layer(layer), dst[valid],
            ks[layer][src[valid]].clone(), vs[layer][src[valid]].clone(),
            k_scales[layer], v_scales[layer],
        )  # fmt: skip
    assert int(committed) == int(valid.sum())
    for a, b in zip(ours.k_buffer + ours.v_buffer, theirs.k_buffer + theirs.v_buffer, strict=True):
        assert torch.equal(as_bytes(a), as_bytes(b))


# --------------------------------------------------------------------------
# Edges: size 1, all padding, empty, plan reuse, host-scalar (CUDA) scale mode.
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "src,dst",
    [([0], [5]), ([-1], [5]), ([0], [-1]), ([-1, -1, -1, -1], [2, -1, 3, -1]), ([], [])],
)
def test_size_one_all_padding_and_empty(src, dst):
    gen = torch.Generator().manual_seed(3)
    ks, vs = make_sources(2, 1, 1, 1, 3, torch.bfloat16, "fused", gen)
    kd = poisoned(6, 1, 1, torch.float8_e4m3fn, 2, gen)
    vd = poisoned(6, 1, 3, torch.float8_e4m3fn, 2, gen)
    src = torch.tensor(src, dtype=torch.int64)
    dst = torch.tensor(dst, dtype=torch.int64)
    out = run_both(ks, vs, kd, vd, src, dst, [0.5, 2.0], None, kv_dtype=torch.float8_e4m3fn)
    kd_ref, vd_ref, c_ref, kd_out, vd_out, c_out = out
    assert_commit(kd, vd, kd_ref, vd_ref, kd_out, vd_out, src, dst, c_ref, c_out)


def test_plan_is_reused_without_rebuilding():
    """The graph-replay pattern: fixed tensors, new contents, same plan."""
    gen = torch.Generator().manual_seed(5)
    ks, vs = make_sources(2, 4, 2, 8, 8, torch.bfloat16, "fused", gen)
    kd = poisoned(12, 2, 8, torch.bfloat16, 2, gen)
    vd = poisoned(12, 2, 8, torch.bfloat16, 2, gen)
    src = torch.full((4,), -1, dtype=torch.int64)
    dst = torch.full((4,), -1, dtype=torch.int64)
    committed = torch.zeros(1, dtype=torch.int64)
    plan = KVCommitPlan(ks, vs, kd, vd)
    kd_ref = [t.clone() for t in kd]
    vd_ref = [t.clone() for t in vd]
    for step, (s, d) in enumerate([([0, 1, -1, -1], [3, 4, -1, -1]), ([2, 3, 0, -1], [7, 8, 11, -1])]):
        for k, v in zip(ks, vs, strict=True):  # new verify pass writes new K/V in place
            k.copy_(torch.randn(k.shape, generator=gen))
            v.copy_(torch.randn(v.shape, generator=gen))
        src.copy_(torch.tensor(s))
        dst.copy_(torch.tensor(d))
        plan.launch(src, dst, committed)
        commit_accepted_kv_ref(ks, vs, kd_ref, vd_ref, src, dst)
        for a, b in zip(kd + vd, kd_ref + vd_ref, strict=True):
            assert torch.equal(as_bytes(a), as_bytes(b)), f"step {step}"
    assert int(committed) == 5


def test_rebind_to_new_sources_commits_them_and_refuses_another_layout():
    """The eager-step pattern: new K/V tensors every step. A plan rebound to sources of
    its layout commits those sources (not the old ones); sources of another layout
    (strides, dtype, layer count, rows) are refused, and a released plan refuses to
    launch until rebound."""
    gen = torch.Generator().manual_seed(11)
    kd = poisoned(16, 2, 8, torch.bfloat16, 3, gen)
    vd = poisoned(16, 2, 8, torch.bfloat16, 3, gen)
    kd_ref, vd_ref = [t.clone() for t in kd], [t.clone() for t in vd]
    ks, vs = make_sources(3, 4, 2, 8, 8, torch.bfloat16, "fused", gen)
    plan = KVCommitPlan(ks, vs, kd, vd)
    plan.release_sources()
    with pytest.raises(ValueError, match="released"):
        plan.launch(torch.zeros(1, dtype=torch.int64), torch.zeros(1, dtype=torch.int64))
    for step, (s, d) in enumerate([([0, 2], [5, 6]), ([1, 3], [9, 1])]):
        ks, vs = make_sources(3, 4, 2, 8, 8, torch.bfloat16, "fused", gen)  # new tensors
        assert plan.rebind(ks, vs)
        src, dst = torch.tensor(s), torch.tensor(d)
        plan.launch(src, dst)
        plan.release_sources()
        commit_accepted_kv_ref(ks, vs, kd_ref, vd_ref, src, dst)
        for a, b in zip(kd + vd, kd_ref + vd_ref, strict=True):
            assert torch.equal(as_bytes(a), as_bytes(b)), f"step {step}"
    for other in (make_sources(3, 4, 2, 8, 8, torch.bfloat16, "head_major", gen),
                  make_sources(3, 4, 2, 8, 8, torch.float16, "fused", gen),
                  make_sources(2, 4, 2, 8, 8, torch.bfloat16, "fused", gen),
                  make_sources(3, 5, 2, 8, 8, torch.bfloat16, "fused", gen)):
        assert not plan.rebind(*other)
    ks, vs = make_sources(3, 4, 2, 8, 8, torch.bfloat16, "fused", gen)
    ks[1] = ks[1].clone()  # one layer with other strides
    assert not plan.rebind(ks, vs)


def test_rebind_keeps_the_scales_it_was_built_with():
    """FP8: a plan reads its scale objects, so only the same scale objects (or equal
    numbers) may reuse it."""
    gen = torch.Generator().manual_seed(12)
    ks, vs = make_sources(2, 4, 2, 8, 8, torch.bfloat16, "plain", gen)
    kd = poisoned(8, 2, 8, torch.float8_e4m3fn, 2, gen)
    vd = poisoned(8, 2, 8, torch.float8_e4m3fn, 2, gen)
    k_scales, v_scales = [torch.tensor(0.5), torch.tensor(2.0)], [1.5, 3.0]
    plan = KVCommitPlan(ks, vs, kd, vd, k_scales, v_scales, kv_dtype=torch.float8_e4m3fn)
    assert plan.rebind(ks, vs, list(k_scales), [1.5, 3.0])
    assert not plan.rebind(ks, vs, [torch.tensor(0.5), torch.tensor(2.0)], v_scales)
    assert not plan.rebind(ks, vs, k_scales, [1.5, 4.0])
    assert not plan.rebind(ks, vs, None, None)
    # A weight reload updates the same scale tensor in place: the launch re-reads it.
    k_scales[1].copy_(torch.tensor(4.0))
    assert plan.rebind(ks, vs, k_scales, v_scales)
    src, dst = torch.tensor([0, 3]), torch.tensor([2, 5])
    kd_ref, vd_ref = [t.clone() for t in kd], [t.clone() for t in vd]
    plan.launch(src, dst)
    commit_accepted_kv_ref(ks, vs, kd_ref, vd_ref, src, dst, k_scales, v_scales,
                           kv_dtype=torch.float8_e4m3fn)
    for a, b in zip(kd + vd, kd_ref + vd_ref, strict=True):
        assert torch.equal(as_bytes(a), as_bytes(b))


@pytest.mark.parametrize("v_kind", ["float", "tensor", "none"])
def test_a_kept_plan_follows_in_place_scale_updates(v_kind):
    """A CUDA-graph bucket's plan is built once and launched every step, never rebound.
    FP8 scales updated in place after the build (SGLang's weight reloads keep the
    scale tensors) must be the ones the next launch quantizes with."""
    gen = torch.Generator().manual_seed(13)
    ks, vs = make_sources(2, 4, 2, 8, 8, torch.bfloat16, "fused", gen)
    kd = poisoned(8, 2, 8, torch.float8_e4m3fn, 2, gen)
    vd = poisoned(8, 2, 8, torch.float8_e4m3fn, 2, gen)
    k_scales = [torch.tensor(0.5), torch.tensor(2.0)]
    v_scales = {"float": [1.5, 3.0], "tensor": [torch.tensor(1.5), torch.tensor(3.0)],
                "none": None}[v_kind]
    plan = KVCommitPlan(ks, vs, kd, vd, k_scales, v_scales, kv_dtype=torch.float8_e4m3fn)
    kd_ref, vd_ref = [t.clone() for t in kd], [t.clone() for t in vd]
    for step, (src, dst) in enumerate([(torch.tensor([0, 3]), torch.tensor([2, 5])),
                                       (torch.tensor([1, 2]), torch.tensor([2, 6]))]):
        if step:  # the reload, between two launches of the same plan
            k_scales[0].copy_(torch.tensor(0.03))
            k_scales[1].mul_(8)
            if v_kind == "tensor":
                v_scales[1].fill_(0.25)
        plan.launch(src, dst)
        commit_accepted_kv_ref(ks, vs, kd_ref, vd_ref, src, dst, k_scales, v_scales,
                               kv_dtype=torch.float8_e4m3fn)
        for a, b in zip(kd + vd, kd_ref + vd_ref, strict=True):
            assert torch.equal(as_bytes(a), as_bytes(b)), f"step {step}"


def test_scale_reader_equals_the_checked_table():
    """The batched re-read gives ``_scale_table``'s values, each mode (CPU rules here;
    tests/gpu/test_commit_kv_gpu.py checks the CUDA ones)."""
    cpu = torch.device("cpu")
    ks = ([torch.tensor(0.0372), torch.tensor(1.7)], [0.5, 2.0],
          [torch.tensor(0.0372), torch.tensor(1.7, dtype=torch.float64)],  # mixed dtypes
          [torch.tensor(4097), torch.tensor(1.5, dtype=torch.float16)])  # stack would round 4097
    for k in ks:
        for v in ([0.11, 2.3], [torch.tensor(0.11), torch.tensor(2.3)], None):
            k_mode, k_t = commit_kv._scale_table("k", k, 2, torch.bfloat16, cpu)
            v_mode, v_t = commit_kv._scale_table("v", v, 2, torch.bfloat16, cpu)
            read = commit_kv._scale_reader(k, v, k_mode, v_mode, torch.bfloat16, cpu)
            if read is None:  # numbers only
                assert not any(isinstance(x, torch.Tensor) for x in [*k, *(v or [])])
                continue
            assert torch.equal(read(), torch.stack([k_t, v_t])), (k, v)
    assert commit_kv._scale_reader([0.5, 2.0], [1.0, 3.0], commit_kv.SCALE_DIV,
                                   commit_kv.SCALE_DIV, torch.bfloat16, cpu) is None  # numbers


@pytest.mark.parametrize("loc_dtype", [torch.int64, torch.int32])
def test_window_positions_and_accepted_count_in_the_same_launch(loc_dtype):
    """SCV hands the commit window positions, not slots; the commit maps them through
    the window and counts committed entries and accepted rows in one launch."""
    gen = torch.Generator().manual_seed(11)
    ks, vs = make_sources(3, 8, 2, 8, 8, torch.bfloat16, "fused", gen)
    kd = poisoned(40, 2, 8, torch.bfloat16, 3, gen)
    vd = poisoned(40, 2, 8, torch.bfloat16, 3, gen)
    kd_ref, vd_ref = [t.clone() for t in kd], [t.clone() for t in vd]
    window = torch.tensor([31, 7, 22, 15, 3, 38, 9, 26], dtype=loc_dtype)
    src = torch.tensor([0, 2, -1, 4, 5, 6, -1, -1], dtype=torch.int64)
    pos = torch.tensor([0, 1, -1, 4, 5, 6, 2, -1], dtype=torch.int64)
    accept_lens = torch.tensor([2, 3], dtype=torch.int32)
    counter = torch.tensor([10, 20], dtype=torch.int64)
    counter_ref = counter.clone()
    KVCommitPlan(ks, vs, kd, vd).launch(src, pos, counter, dst_window=window, accept_lens=accept_lens)
    commit_accepted_kv_ref(ks, vs, kd_ref, vd_ref, src, pos, committed=counter_ref,
                           dst_window=window, accept_lens=accept_lens)
    for a, b in zip(kd + vd, kd_ref + vd_ref, strict=True):
        assert torch.equal(as_bytes(a), as_bytes(b))
    assert counter.tolist() == counter_ref.tolist() == [15, 25]
    # and the slots are the window's: entry (row 2, pos 1) landed in slot 7
    assert torch.equal(as_bytes(kd[0][7]), as_bytes(ks[0][2]))


@pytest.mark.parametrize("src_dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_host_scalar_on_cuda_rule_multiplies_by_fp32_reciprocal(monkeypatch, src_dtype):
    """On CUDA torch applies a host-scalar divisor as x * fp32(1/s); run that mode here."""
    real = commit_kv._scale_entry

    def as_if_cuda(scale, dtype, device):
        return real(scale, dtype, torch.device("cuda"))

    monkeypatch.setattr(commit_kv, "_scale_entry", as_if_cuda)
    values = _all_16bit(torch.bfloat16).to(src_dtype)
    values = torch.where(torch.isfinite(values), values, torch.zeros_like(values))
    s = 0.0372
    out = _convert_with_kernel(values, torch.float8_e4m3fn, s)
    recip = torch.tensor(1.0, dtype=torch.float32) / torch.tensor(s, dtype=torch.float32)
    want = (values.float() * recip).to(src_dtype).to(torch.float8_e4m3fn).view(torch.uint8)
    assert torch.equal(out, want)
    # while on a CPU source the fp32 scale divides, not rounded to the source dtype
    mode, value = real(torch.tensor(s), src_dtype, torch.device("cpu"))
    assert mode == commit_kv.SCALE_DIV and torch.equal(value, torch.tensor(s))


# --------------------------------------------------------------------------
# Argument checks name the tensor and the expected shape.
# --------------------------------------------------------------------------


def _args(layers=2):
    gen = torch.Generator().manual_seed(0)
    ks, vs = make_sources(layers, 4, 2, 8, 4, torch.bfloat16, "fused", gen)
    kd = [torch.zeros(10, 2, 8, dtype=torch.bfloat16) for _ in range(layers)]
    vd = [torch.zeros(10, 2, 4, dtype=torch.bfloat16) for _ in range(layers)]
    return ks, vs, kd, vd


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda a: a.update(vs=a["vs"][:1]), "v_src has 1 layers, expected 2"),
        (
            lambda a: a.update(kd=[torch.zeros(10, 3, 8, dtype=torch.bfloat16)] * 2),
            r"k_dst\[0\] has shape \[10, 3, 8\], expected \[R, 2, 8\]",
        ),
        (lambda a: a.update(vd=[torch.zeros(10, 2, 5, dtype=torch.bfloat16)] * 2), r"v_dst\[0\]"),
        (lambda a: a.update(kd=[t.to(torch.uint8) for t in a["kd"]]), "kv_dtype is required"),
        (lambda a: a.update(kd=[t.float() for t in a["kd"]]), "v_dst dtype"),
        (
            lambda a: a.update(kd=[t.transpose(0, 1).contiguous().transpose(0, 1) for t in a["kd"]]),
            "must be contiguous",
        ),
        (
            lambda a: a.update(ks=[torch.zeros(4, 2, 16, dtype=torch.bfloat16)[..., ::2]] * 2),
            r"k_src\[0\] must have stride 1",
        ),
        (lambda a: a.update(ks=[t.to(torch.int32) for t in a["ks"]]), "k_src dtype"),
    ],
)
def test_plan_rejects_bad_tensors(mutate, match):
    ks, vs, kd, vd = _args()
    a = dict(ks=ks, vs=vs, kd=kd, vd=vd)
    mutate(a)
    with pytest.raises(ValueError, match=match):
        KVCommitPlan(a["ks"], a["vs"], a["kd"], a["vd"])


def test_launch_rejects_bad_index_tensors():
    ks, vs, kd, vd = _args()
    plan = KVCommitPlan(ks, vs, kd, vd)
    ok = torch.zeros(3, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"src_rows must be an int64 \[M\]"):
        plan.launch(ok.int(), ok)
    with pytest.raises(ValueError, match=r"dst_slots has shape \(2,\), expected \(3,\)"):
        plan.launch(ok, ok[:2])
    with pytest.raises(ValueError, match="committed must be an int64"):
        plan.launch(ok, ok, torch.zeros(1, dtype=torch.int32))


def test_fp8_scales_are_checked():
    ks, vs, kd, vd = _args()
    kd = [torch.zeros(t.shape, dtype=torch.uint8) for t in kd]
    vd = [torch.zeros(t.shape, dtype=torch.uint8) for t in vd]
    with pytest.raises(ValueError, match="k_scales has 1 entries, expected 2"):
        KVCommitPlan(ks, vs, kd, vd, [1.0], None, kv_dtype=torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="0-dim"):
        KVCommitPlan(ks, vs, kd, vd, [torch.ones(1)] * 2, None, kv_dtype=torch.float8_e4m3fn)
