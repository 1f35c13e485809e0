"""Does the carried FA3 library load and compute? (ci/gpu/fa3_receive.sh put it in place.)

One ``flash_attn_with_kvcache`` call at the Llama-3-8B attention shape (32 query heads, 8 KV
heads, head dim 128, bf16), 8 query tokens per request against a cached context, compared
with torch's SDPA on the same data. Prints one line and exits non-zero on a mismatch, so a
device call knows before it starts an FA3 engine."""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F


def main() -> int:
    from sgl_kernel.flash_attn import flash_attn_with_kvcache

    torch.manual_seed(0)
    bs, q_len, ctx, hq, hk, d = 2, 8, 300, 32, 8, 128
    dev = torch.device("cuda")
    q = torch.randn(bs, q_len, hq, d, device=dev, dtype=torch.bfloat16)
    k = torch.randn(bs, ctx, hk, d, device=dev, dtype=torch.bfloat16)
    v = torch.randn(bs, ctx, hk, d, device=dev, dtype=torch.bfloat16)
    lens = torch.full((bs,), ctx, dtype=torch.int32, device=dev)
    out = flash_attn_with_kvcache(q, k, v, cache_seqlens=lens, causal=True)
    # causal with q_len < ctx: query i sees the first ctx - q_len + i + 1 keys (bottom-right)
    rep = hq // hk
    kk, vv = (t.repeat_interleave(rep, dim=2).transpose(1, 2).float() for t in (k, v))
    qq = q.transpose(1, 2).float()
    allowed = torch.ones(q_len, ctx, dtype=torch.bool, device=dev).tril(ctx - q_len)
    ref = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=allowed).transpose(1, 2)
    err = (out.float() - ref).abs().max().item()
    ok = err < 2e-2
    print(f"fa3_smoke: flash_attn_with_kvcache bf16 bs {bs} q {q_len} ctx {ctx}: "
          f"max |err| vs SDPA {err:.2e} -> {'ok' if ok else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
