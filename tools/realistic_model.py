"""Dummy-weight model directories at real shapes (``load_format="dummy"``).

SGLang fills the weights itself, so a directory holds only ``config.json``: no
download, no disk. Two shapes (``SHAPES``): the Llama-3-8B shape, where a verify step
is mostly GPU work, and the Llama-3.2-1B shape (16 layers, hidden 2048, head dim 64),
the host-bound "1B class" of issue 14, where the GPU idles most of a step. ``layers``
below a shape's own keeps every layer's shape and only cuts depth, for tools whose cost
grows per kernel (Nsight Compute): per-layer bytes are unchanged, per-step totals scale
with depth.
"""

from __future__ import annotations

import json
from pathlib import Path

LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "vocab_size": 128256, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0, "torch_dtype": "bfloat16", "model_type": "llama",
    "bos_token_id": 128000, "eos_token_id": 128001, "tie_word_embeddings": False,
}

# Llama-3.2-1B (its rope scaling left out: dummy weights, contexts of a few thousand tokens)
LLAMA32_1B = dict(LLAMA3_8B, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                  num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                  tie_word_embeddings=True)
SHAPES = {"llama3-8b": LLAMA3_8B, "llama3.2-1b": LLAMA32_1B}
SHAPE_NAMES = {"llama3-8b": "Llama-3-8B", "llama3.2-1b": "Llama-3.2-1B"}  # for reports


def write_model(directory: Path, shape: str = "llama3-8b", layers: int | None = None) -> Path:
    """Write ``shape``'s config (``layers`` deep, default its own) into ``directory``
    (created) and return it."""
    cfg = SHAPES[shape]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(
        json.dumps(dict(cfg, num_hidden_layers=layers or cfg["num_hidden_layers"])))
    return directory


def write_llama3_8b(directory: Path, layers: int = 32) -> Path:
    """The Llama-3-8B shape, ``layers`` deep."""
    return write_model(directory, "llama3-8b", layers)


def write_eagle3_draft(directory: Path, aux_layers: tuple[int, ...] = (0, 1, 2)) -> Path:
    """An EAGLE3 draft head for the Llama-3-8B shape (one layer, dummy weights:
    ``speculative_draft_load_format="dummy"``); ``aux_layers`` are the target layers whose
    hidden states it reads (the target needs more than ``max(aux_layers) + 1`` layers)."""
    directory.mkdir(parents=True, exist_ok=True)
    cfg = dict(LLAMA3_8B, architectures=["LlamaForCausalLMEagle3"], num_hidden_layers=1,
               draft_vocab_size=LLAMA3_8B["vocab_size"],
               eagle_config={"eagle_aux_hidden_state_layer_ids": list(aux_layers),
                             "use_aux_hidden_state": True})
    (directory / "config.json").write_text(json.dumps(cfg))
    return directory


def _head_dim(c: dict) -> int:
    return c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]


def kv_row_bytes(layers: int = 32, dtype_bytes: int = 2, shape: str = "llama3-8b") -> int:
    """Bytes of one token's K and V over all layers (the unit NWOR saves)."""
    c = SHAPES[shape]
    return 2 * layers * c["num_key_value_heads"] * _head_dim(c) * dtype_bytes


def weight_bytes(layers: int = 32, dtype_bytes: int = 2, shape: str = "llama3-8b") -> int:
    """Bytes of the model's weights (embedding, layers, final norm, LM head unless tied to
    the embedding): what every resident engine holds before its KV pool."""
    c = SHAPES[shape]
    h, inter, vocab = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    q_width = c["num_attention_heads"] * _head_dim(c)
    kv_width = c["num_key_value_heads"] * _head_dim(c)
    per_layer = h * (q_width + 2 * kv_width) + q_width * h + 3 * h * inter + 2 * h
    embeddings = (1 if c["tie_word_embeddings"] else 2) * vocab * h
    return dtype_bytes * (embeddings + layers * per_layer + h)
