"""Benchmark: the post-verify KV move, upstream's tiled copy vs upstream's native move vs
the plugin's one-launch move, Llama-3-8B pool, 32-1,024 rows (tools/move_kv_repro.py
builds the pools and the calls; its ``--ncu`` adds DRAM and spill bytes).

    pytest tests/gpu/bench_move_kv.py --benchmark-enable --benchmark-json=out/bench_move_kv.json

Each group checks once that the plugin's move leaves the bytes of the move's spec (the
torch gather-then-scatter; tools/move_kv_repro.py reports how often each provider does),
then times one call
plus a synchronize (host wall time); ``extra_info`` holds the device time per call
(CUDA events, back-to-back calls), launches per call and the bytes to move (formula).
"""

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from tools.cuda_timing import device_us_per_call, launches_per_call  # noqa: E402
from sglang_nwor_scv.kernels.move_kv import move_accepted_kv_ref  # noqa: E402
from tools.move_kv_repro import PATH, SHAPES, make_pool, move_inputs, providers, row_bytes  # noqa: E402

pytestmark = pytest.mark.gpu
SHAPE = SHAPES["llama3-8b"]
_cache: dict = {}


def _calls(rows):
    if rows not in _cache:
        _cache.clear()
        calls = providers(SHAPE, torch.bfloat16, rows)
        for _, call in calls.values():
            call()
        torch.cuda.synchronize()
        ours = calls["plugin"][0]
        spec = make_pool(SHAPE, torch.bfloat16, ours.k_buffer[0].shape[0] - 1, False)
        accept_index, num_correct, loc, _, _ = move_inputs(rows)
        move_accepted_kv_ref([*spec.k_buffer, *spec.v_buffer], accept_index, num_correct, loc)
        for a, b in zip([*ours.k_buffer, *ours.v_buffer], [*spec.k_buffer, *spec.v_buffer], strict=True):
            assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))
        _cache[rows] = calls
    return _cache[rows]


@pytest.mark.parametrize("provider", ["upstream", "native", "plugin"])
@pytest.mark.parametrize("rows", [64, 128, 256, 1024])
def test_move(benchmark, rows, provider):
    _, call = _calls(rows)[provider]
    benchmark.group = f"move bf16 rows={rows}"
    benchmark.extra_info.update(
        device_us=device_us_per_call(call, iters=50, warmup=5), launches=launches_per_call(call),
        rows_moved=rows - rows // len(PATH),
        bytes_to_move=(rows - rows // len(PATH)) * row_bytes(SHAPE, torch.bfloat16))

    def once():
        call()
        torch.cuda.synchronize()

    benchmark(once)
