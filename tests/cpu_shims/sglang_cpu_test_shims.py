"""Test-only stand-ins that let the real SGLang engine run on a CPU host.

Loaded as an SGLang general plugin (entry point declared by the ``*.dist-info``
folder beside this file, found because tests put this folder on PYTHONPATH), so
it runs first in every SGLang process: engine, scheduler and TP workers.
Nothing here is part of the product, and nothing is used on a GPU host:
``install()`` returns at once when CUDA is available.

What each shim replaces:
- ``sgl_kernel.speculative.reconstruct_indices_from_tree_mask`` (CUDA op, used
  by NGRAM): forwards to SGLang's own Triton implementation of the same contract.
- ``_is_xpu`` in three SGLang speculative-op modules: makes SGLang pick its
  pure-Triton/torch code paths instead of ``sgl_kernel`` CUDA ops.
- ``vllm._custom_ops.rotary_embedding`` (CUDA op, picked by ``RotaryEmbedding``
  on a host that is neither CUDA nor SGLang's CPU engine): a torch version of
  the same in-place neox/GPT-J rotation.
"""

from __future__ import annotations

import sys
import types


def _rotary_embedding(positions, query, key, head_size, cos_sin_cache, is_neox=True):
    import torch

    cos, sin = cos_sin_cache.index_select(0, positions.flatten()).chunk(2, dim=-1)
    rot_dim = cos.shape[-1] * 2

    def rotate(x):
        if x is None:
            return
        shape = x.shape
        x3 = x.view(positions.numel(), -1, head_size)
        r = x3[..., :rot_dim].float()
        c, s = cos.unsqueeze(1).float(), sin.unsqueeze(1).float()
        if is_neox:
            x1, x2 = r.chunk(2, dim=-1)
            out = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)
        else:
            x1, x2 = r[..., ::2], r[..., 1::2]
            out = torch.stack((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).flatten(-2)
        x3[..., :rot_dim] = out.to(x.dtype)
        assert x.shape == shape

    rotate(query)
    rotate(key)


def install() -> None:
    import torch

    if torch.cuda.is_available():
        return

    vllm = sys.modules.setdefault("vllm", types.ModuleType("vllm"))
    ops = types.ModuleType("vllm._custom_ops")
    ops.rotary_embedding = _rotary_embedding
    vllm._custom_ops = ops
    sys.modules["vllm._custom_ops"] = ops

    spec = types.ModuleType("sgl_kernel.speculative")

    def reconstruct_indices_from_tree_mask(*args, **kwargs):
        from sglang.kernels.ops.speculative.reconstruct_tree import (
            reconstruct_indices_from_tree_mask_triton,
        )

        return reconstruct_indices_from_tree_mask_triton(*args, **kwargs)

    spec.reconstruct_indices_from_tree_mask = reconstruct_indices_from_tree_mask
    sys.modules["sgl_kernel.speculative"] = spec

    import importlib

    for name in ("spec_tree", "reconstruct_tree", "cache_locs"):
        mod = importlib.import_module(f"sglang.kernels.ops.speculative.{name}")
        mod._is_xpu = True
