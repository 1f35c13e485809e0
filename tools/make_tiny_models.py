"""Build the deterministic tiny target/draft Llama pair used by the demo and the tests.

Why: speculative decoding needs a draft that agrees with the target *sometimes*.
Random weights accept nothing (or, for identical copies, everything), which hides
bugs in the accept/reject bookkeeping. Both models here are trained for a few
hundred steps on text that this script generates from a fixed grammar, so the
draft (smaller, trained less) agrees with the target on part of its guesses.

The vocabulary is bytes (0..255) plus a few specials, so no tokenizer is needed:
the engine runs with ``skip_tokenizer_init=True`` and prompts are byte ids.

Usage: python tools/make_tiny_models.py OUT_DIR   (writes OUT_DIR/target, OUT_DIR/draft)
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

VOCAB_SIZE = 260  # 256 byte ids + BOS(256) EOS(257) PAD(258) + 1 spare
BOS_ID, EOS_ID, PAD_ID = 256, 257, 258

TARGET = dict(hidden_size=96, intermediate_size=192, num_hidden_layers=2,
              num_attention_heads=6, num_key_value_heads=2, steps=500)
DRAFT = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=1,
             num_attention_heads=3, num_key_value_heads=1, steps=120)
SEQ_LEN, BATCH, LR, SEED = 96, 16, 3e-3, 1234

_SUBJECTS = ["the old miller", "a quiet river", "the grey fox", "my brother",
             "the lantern keeper", "a small boat", "the village bell", "our teacher"]
_VERBS = ["watched", "carried", "followed", "found", "painted", "remembered",
          "crossed", "mended"]
_OBJECTS = ["the long road", "a broken wheel", "the winter garden", "seven stones",
            "the north wind", "a bright coin", "the harbour wall", "an empty cart"]
_TAILS = ["before the rain came", "at the edge of town", "without a word",
          "in the early morning", "as the sun went down", "for many years"]


def corpus_text(n_sentences: int = 4000, seed: int = SEED) -> str:
    """Plain English-like sentences from a fixed grammar (public domain by construction)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n_sentences):
        s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
        if rng.random() < 0.6:
            s += " " + rng.choice(_TAILS)
        out.append(s[0].upper() + s[1:] + ".")
    return " ".join(out)


def encode(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def _train(cfg: dict, data, out_dir: Path, seed: int) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    steps = cfg["steps"]
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg["num_key_value_heads"],
        max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
        tie_word_embeddings=False, torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(seed)
    t0, loss = time.time(), None
    for _ in range(steps):
        idx = torch.randint(0, data.numel() - SEQ_LEN - 1, (BATCH,), generator=gen)
        batch = torch.stack([data[i : i + SEQ_LEN] for i in idx.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    # SGLang reads generation defaults from here; keep greedy-friendly defaults.
    return {"final_loss": round(float(loss), 4), "steps": steps,
            "train_seconds": round(time.time() - t0, 1)}


def build(out: Path) -> dict:
    """Train both models into ``out``; returns a summary (also written as fixture.json)."""
    import torch

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    data = torch.tensor(encode(corpus_text()), dtype=torch.long)
    summary = {
        "vocab_size": VOCAB_SIZE,
        "target": _train(TARGET, data, out / "target", SEED),
        "draft": _train(DRAFT, data, out / "draft", SEED + 1),
    }
    (out / "fixture.json").write_text(json.dumps(summary, indent=2))
    return summary


def ensure(out: Path) -> Path:
    """Build the pair once; reuse it when ``out/fixture.json`` exists."""
    if not (out / "fixture.json").exists():
        build(out)
    return out


def write_eagle3_head(target: Path, out: Path) -> Path:
    """An EAGLE3 draft head for the tiny target, config only (run it with
    ``speculative_draft_load_format="dummy"``): one layer of the target's width reading
    the target's layer-0 output. Its random weights accept almost nothing; the EAGLE3
    worker, its tree and the verify path it drives are what a test exercises."""
    cfg = json.loads((target / "config.json").read_text())
    cfg.update(architectures=["LlamaForCausalLMEagle3"], num_hidden_layers=1,
               draft_vocab_size=cfg["vocab_size"],
               eagle_config={"eagle_aux_hidden_state_layer_ids": [0], "use_aux_hidden_state": True})
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg))
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    print(json.dumps(build(ap.parse_args().out), indent=2))
