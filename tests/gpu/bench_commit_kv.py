"""Benchmark: NWOR commit (one launch, accepted rows only) vs. upstream's verify write.

Run on a GPU host with SGLang installed:

    pytest tests/gpu/bench_commit_kv.py --benchmark-enable --benchmark-json=out/bench_commit_kv.json

Per (kv dtype, bs, N) group two entries:

- ``ours``: ``KVCommitPlan.launch`` writing the accepted rows (60% of each
  request's N verify rows, root included) for all 32 layers in one launch;
- ``upstream``: what the triton backend does during TARGET_VERIFY today:
  ``MHATokenToKVPool.set_kv_buffer`` of all bs*N verify rows, once per layer
  (with ``k.clone()`` / ``v.clone()`` + ``layer.k_scale`` for FP8, as
  ``TritonAttnBackend.forward_extend`` passes them).

Correctness is checked once per group before timing (ours == upstream bytes on
every committed slot). Timings are host wall time of one call plus a
``torch.cuda.synchronize()``; ``extra_info`` also holds the device time from
CUDA events over 50 back-to-back calls and the byte counts from the formula in
``traffic()``.
"""

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

memory_pool = pytest.importorskip(
    "sglang.srt.mem_cache.memory_pool", reason="the upstream baseline needs SGLang"
)

from sglang_nwor_scv.kernels.commit_kv import KVCommitPlan  # noqa: E402
from tools.cuda_timing import device_us_per_call  # noqa: E402

pytestmark = pytest.mark.gpu

LAYERS, Q_HEADS, KV_HEADS, HEAD_DIM = 32, 32, 8, 128
ACCEPT_FRACTION = 0.6
DEV = torch.device("cuda")
CONFIGS = [(1, 4), (8, 4), (32, 4), (64, 8), (128, 8), (128, 64)]
KV_DTYPES = {"bf16": torch.bfloat16, "fp8_e4m3": torch.float8_e4m3fn}


class _Layer:
    """The RadixAttention fields set_kv_buffer and the triton backend read."""

    def __init__(self, layer_id, k_scale=None, v_scale=None):
        self.layer_id = layer_id
        self.k_scale = k_scale
        self.v_scale = v_scale


def traffic(rows, kv_dtype, src_dtype=torch.bfloat16):
    """Bytes one KV write of ``rows`` rows moves, all layers: (pool bytes written,
    source bytes read). Indices and the FP8 path's temporaries are not counted."""
    row_elems = LAYERS * KV_HEADS * 2 * HEAD_DIM  # K and V, every layer
    store = 1 if kv_dtype in (torch.float8_e4m3fn, torch.float8_e5m2) else kv_dtype.itemsize
    return rows * row_elems * store, rows * row_elems * src_dtype.itemsize


class Setup:
    def __init__(self, kv_dtype, bs, n):
        self.kv_dtype, self.bs, self.n = kv_dtype, bs, n
        tokens = bs * n
        self.pool = memory_pool.MHATokenToKVPool(
            size=tokens + 16, page_size=16, dtype=kv_dtype, head_num=KV_HEADS,
            head_dim=HEAD_DIM, layer_num=LAYERS, device="cuda", enable_memory_saver=False,
        )  # fmt: skip
        width = (Q_HEADS + 2 * KV_HEADS) * HEAD_DIM
        self.qkv = torch.randn(LAYERS, tokens, width, device=DEV).mul_(4).to(torch.bfloat16)
        k0, k1 = Q_HEADS * HEAD_DIM, (Q_HEADS + KV_HEADS) * HEAD_DIM
        self.k = [self.qkv[i, :, k0:k1].view(tokens, KV_HEADS, HEAD_DIM) for i in range(LAYERS)]
        self.v = [self.qkv[i, :, k1:].view(tokens, KV_HEADS, HEAD_DIM) for i in range(LAYERS)]
        fp8 = kv_dtype != torch.bfloat16
        self.layers = [
            _Layer(i, torch.tensor(0.05 + 0.01 * i, device=DEV) if fp8 else None,
                   torch.tensor(0.07 + 0.01 * i, device=DEV) if fp8 else None)
            for i in range(LAYERS)
        ]  # fmt: skip
        # verify window: slots 1..tokens (slot 0's page absorbs padding upstream)
        self.out_cache_loc = torch.arange(16, 16 + tokens, dtype=torch.int64, device=DEV)
        # accepted chain per request: rows b*N + [0, a), written to their own slots
        accept = max(1, round(ACCEPT_FRACTION * n))
        step = torch.arange(n, device=DEV).repeat(bs)
        valid = step < accept
        self.src = torch.where(valid, torch.arange(tokens, device=DEV), -1)
        self.dst = torch.where(valid, self.out_cache_loc, -1)
        self.committed_rows = bs * accept
        self.committed = torch.zeros(1, dtype=torch.int64, device=DEV)
        scales = ([x.k_scale for x in self.layers], [x.v_scale for x in self.layers])
        self.plan = KVCommitPlan.for_pool(self.pool, self.k, self.v, *(scales if fp8 else (None, None)))

    def ours(self):
        self.plan.launch(self.src, self.dst, self.committed)

    def upstream(self):
        for i, layer in enumerate(self.layers):
            if layer.k_scale is None:
                self.pool.set_kv_buffer(layer, self.out_cache_loc, self.k[i], self.v[i])
            else:
                self.pool.set_kv_buffer(
                    layer,
                    self.out_cache_loc,
                    self.k[i].clone(),
                    self.v[i].clone(),
                    layer.k_scale,
                    layer.v_scale,
                )

    def check(self):
        """Ours and upstream write the same bytes into every slot we commit."""
        for buf in self.pool.k_buffer + self.pool.v_buffer:
            buf.view(torch.uint8).fill_(0xA5)
        self.ours()
        ours = [b.clone() for b in self.pool.k_buffer + self.pool.v_buffer]
        self.upstream()
        slots = self.dst[self.dst >= 0]
        for mine, theirs in zip(ours, self.pool.k_buffer + self.pool.v_buffer, strict=True):
            assert torch.equal(mine[slots].view(torch.uint8), theirs[slots].view(torch.uint8))
        torch.cuda.synchronize()
        assert int(self.committed) == self.committed_rows


_SETUPS = {}


def _setup(kv_name, bs, n):
    key = (kv_name, bs, n)
    if key not in _SETUPS:
        _SETUPS.clear()  # one config's buffers at a time
        torch.cuda.empty_cache()
        s = Setup(KV_DTYPES[kv_name], bs, n)
        s.check()
        _SETUPS[key] = s
    return _SETUPS[key]


@pytest.mark.parametrize("provider", ["ours", "upstream"])
@pytest.mark.parametrize("bs,n", CONFIGS)
@pytest.mark.parametrize("kv_name", list(KV_DTYPES))
def test_bench_commit_kv(benchmark, kv_name, bs, n, provider):
    s = _setup(kv_name, bs, n)
    fn = getattr(s, provider)
    rows = s.committed_rows if provider == "ours" else bs * n
    written, read = traffic(rows, s.kv_dtype)
    benchmark.group = f"commit_kv {kv_name} bs={bs} N={n}"
    benchmark.extra_info.update(
        rows=rows, layers=LAYERS, pool_bytes_written=written, src_bytes_read=read,
        launches_formula=1 if provider == "ours" else f"{LAYERS} x set_kv_buffer",
        device_us=device_us_per_call(fn, iters=50, warmup=1),
    )  # fmt: skip
    print(
        f"\n[{provider}] {kv_name} bs={bs} N={n}: rows={rows} pool bytes written={written} "
        f"source bytes read={read} device_us={benchmark.extra_info['device_us']:.1f}"
    )

    def run():
        fn()
        torch.cuda.synchronize()

    benchmark.pedantic(run, rounds=50, iterations=1, warmup_rounds=5)
