"""A Llama-3-8B-shaped model directory for dummy-weight runs (``load_format="dummy"``).

SGLang fills the weights itself, so the directory holds only ``config.json``: no
download, no disk. ``layers`` below 32 keeps every layer's shape (hidden 4096, 8 KV
heads of 128, MLP 14336) and only cuts depth, for tools whose cost grows per kernel
(Nsight Compute): per-layer bytes are unchanged, per-step totals scale with depth.
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


def write_llama3_8b(directory: Path, layers: int = 32) -> Path:
    """Write the config into ``directory`` (created) and return it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(dict(LLAMA3_8B, num_hidden_layers=layers)))
    return directory


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


def kv_row_bytes(layers: int = 32, dtype_bytes: int = 2) -> int:
    """Bytes of one token's K and V over all layers (the unit NWOR saves)."""
    cfg = LLAMA3_8B
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    return 2 * layers * cfg["num_key_value_heads"] * head_dim * dtype_bytes


def weight_bytes(layers: int = 32, dtype_bytes: int = 2) -> int:
    """Bytes of the model's weights (embedding, layers, final norm, LM head): what every
    resident engine holds before its KV pool."""
    c = LLAMA3_8B
    h, inter, vocab = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    kv_width = c["num_key_value_heads"] * (h // c["num_attention_heads"])
    per_layer = h * (h + 2 * kv_width) + h * h + 3 * h * inter + 2 * h
    return dtype_bytes * (2 * vocab * h + layers * per_layer + h)
