"""Benchmark on the GPU: what upstream's tree sampling path (temperature > 0) costs per
verify step, and how much of it is the ``zeros_like`` draft-probability buffer issue 14
asks about.

    pytest tests/gpu/bench_sampling_path.py --benchmark-enable --benchmark-json=out/bench_sampling.json

The sequence is ``eagle_sample``'s sampling branch without penalties, top-k or top-p
(SGLang 0.5.17 and 0.5.23 alike): logits / temperature, softmax, ``zeros_like``, then
sgl_kernel's ``tree_speculative_sampling_target_only``. ``extra_info`` has the device µs
per call of the whole path and of the ``zeros_like`` alone (CUDA events, back to back):
the data for deciding whether a fused path is worth building (issue 14, item 3).
"""

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from tools.cuda_timing import device_us_per_call, launches_per_call  # noqa: E402

pytestmark = pytest.mark.gpu
N, DEPTH, VOCAB = 8, 4, 128256  # NGRAM tree N 8, Llama-3's vocabulary


def _chain(bs: int):
    """A chain tree per request (node i's child is i + 1): upstream's retrieve tensors."""
    idx = torch.arange(bs * N, dtype=torch.int64, device="cuda").view(bs, N)
    nxt = torch.arange(1, N + 1, dtype=torch.int64, device="cuda").repeat(bs, 1)
    nxt[:, -1] = -1
    sib = torch.full((bs, N), -1, dtype=torch.int64, device="cuda")
    return idx, nxt, sib


@pytest.mark.parametrize("bs", [1, 32, 128])
def test_bench_upstream_sampling_path(benchmark, bs):
    from sgl_kernel import tree_speculative_sampling_target_only

    logits = torch.randn(bs * N, VOCAB, device="cuda")
    temps = torch.full((bs, 1), 0.7, device="cuda")
    candidates = torch.randint(0, VOCAB, (bs, N), device="cuda")
    idx, nxt, sib = _chain(bs)
    predict = torch.empty(bs * N, dtype=torch.int32, device="cuda")
    accept_index = torch.empty(bs, DEPTH, dtype=torch.int32, device="cuda")
    accept_num = torch.empty(bs, dtype=torch.int32, device="cuda")
    coins = torch.rand(bs, N, device="cuda")
    coins_final = torch.rand(bs, device="cuda")

    def path():
        t = torch.repeat_interleave(temps, N, dim=0)
        target = torch.softmax(logits / t, dim=-1).reshape(bs, N, -1)
        draft = torch.zeros_like(target)
        tree_speculative_sampling_target_only(
            predicts=predict, accept_index=accept_index, accept_token_num=accept_num,
            candidates=candidates, retrive_index=idx, retrive_next_token=nxt,
            retrive_next_sibling=sib, uniform_samples=coins,
            uniform_samples_for_final_sampling=coins_final, target_probs=target,
            draft_probs=draft, threshold_single=1.0, threshold_acc=1.0, deterministic=True)

    shape = (bs, N, VOCAB)

    def zeros():
        torch.zeros(shape, device="cuda")

    path()
    assert int(accept_num.max()) <= DEPTH - 1  # the kernel ran and wrote its outputs
    benchmark.extra_info["device_us_path"] = device_us_per_call(path, 50, 5)
    benchmark.extra_info["device_us_zeros_like"] = device_us_per_call(zeros, 50, 5)
    benchmark.extra_info["launches_per_call"] = launches_per_call(path)
    benchmark.extra_info["zeros_like_mb"] = bs * N * VOCAB * 4 / 1e6
    benchmark.group = f"sampling path bs {bs}"

    def timed():
        path()
        torch.cuda.synchronize()

    benchmark(timed)
