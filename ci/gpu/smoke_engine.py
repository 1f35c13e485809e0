"""Smoke test of the REAL SGLang 0.5.17 engine on the GPU machine (or any CUDA box).

    eval "$(ci/gpu/install_device_env.sh)"
    PYTHONUNBUFFERED=1 python3 ci/gpu/smoke_engine.py --out /tmp/smoke.json

Prints the versions that were imported (and from where), imports the engine modules, builds
a tiny random Llama with transformers (hidden 256, 2 layers, vocab 512) and runs
``sglang.Engine(... speculative_algorithm="NGRAM", attention_backend="triton", CUDA graphs on)``
with greedy generation. Exit code 0 only if the engine generated the requested tokens.
The nwor_scv plugin is switched OFF for the engine run (SGLANG_PLUGINS) unless --with-plugin:
this checks the wheelhouse, not the plugin; its entry point is still looked up and imported.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as md
import json
import os
import platform
import sys
import time
import traceback

ENGINE_MODULES = [
    "sglang.srt.entrypoints.engine",
    "sglang.srt.managers.scheduler",
    "sglang.srt.managers.detokenizer_manager",
    "sglang.srt.managers.tokenizer_manager",
    "sglang.srt.speculative.ngram_worker",
    "sglang.srt.speculative.standalone_worker_v2",
    "sglang.srt.speculative.eagle_worker_v2",
    "sglang.srt.model_executor.model_runner",
    "sglang.srt.model_executor.runner.decode_cuda_graph_runner",
    "sglang.srt.layers.attention.triton_backend",
    "sglang.srt.models.llama",
]
DISTS = ["sglang", "sglang-kernel", "torch", "triton", "transformers", "tokenizers", "xgrammar",
         "apache-tvm-ffi", "pydantic", "fastapi", "openai", "huggingface-hub", "numpy",
         "typing-extensions", "sglang-nwor-scv"]


def log(msg: str) -> None:
    print(f"[smoke {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def versions() -> dict:
    out = {"python": platform.python_version()}
    for d in DISTS:
        try:
            dist = md.distribution(d)
            out[d] = f"{dist.version} ({dist.locate_file('')})"
        except md.PackageNotFoundError:
            out[d] = None
    try:
        import torch

        out["torch.version.cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            cap = "".join(map(str, torch.cuda.get_device_capability(0)))
            out["gpu"] = f"{torch.cuda.get_device_name(0)} sm{cap}"
    except Exception as e:  # noqa: BLE001
        out["torch_error"] = repr(e)
    return out


def import_checks() -> dict:
    res = {}
    for m in ENGINE_MODULES:
        t0 = time.time()
        try:
            importlib.import_module(m)
            res[m] = f"ok {time.time() - t0:.1f}s"
        except BaseException as e:  # noqa: BLE001
            res[m] = f"FAIL {type(e).__name__}: {e}"
            traceback.print_exc()
    try:
        import sgl_kernel

        res["sgl_kernel.common_ops"] = str(getattr(sgl_kernel, "common_ops", None))
    except BaseException as e:  # noqa: BLE001
        res["sgl_kernel.common_ops"] = f"FAIL {type(e).__name__}: {e}"
    eps = [f"{ep.name} = {ep.value}" for ep in md.entry_points(group="sglang.srt.plugins")]
    res["plugin_entry_points"] = eps
    try:
        import sglang_nwor_scv.kernels  # noqa: F401
        import sglang_nwor_scv.plugin

        res["plugin_import"] = f"ok {sglang_nwor_scv.plugin.__file__}"
    except BaseException as e:  # noqa: BLE001
        res["plugin_import"] = f"FAIL {type(e).__name__}: {e}"
    return res


def make_model(path: str, seed: int = 0) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=2048, rms_norm_eps=1e-5,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(path)
    with open(os.path.join(path, "config.json")) as f:
        c = json.load(f)
    c["torch_dtype"] = c.get("torch_dtype") or "bfloat16"
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(c, f, indent=1)


def hf_greedy(path: str, prompts: list[list[int]], n: int, device: str = "cuda") -> list[list[int]]:
    """Greedy continuation by Hugging Face (plain argmax loop, no EOS stop): the reference."""
    import torch
    from transformers import LlamaForCausalLM

    m = LlamaForCausalLM.from_pretrained(path, dtype=torch.bfloat16).to(device).eval()
    outs = []
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([p], device=device)
            for _ in range(n):
                nxt = m(ids).logits[0, -1].float().argmax()
                ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
            outs.append(ids[0, len(p):].tolist())
    del m
    if device == "cuda":
        torch.cuda.empty_cache()
    return outs


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", default="/tmp/m")
    ap.add_argument("--out", default=None, help="write the result JSON here")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--draft-tokens", type=int, default=4)
    ap.add_argument("--no-spec", action="store_true", help="plain decoding (no NGRAM)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--with-plugin", action="store_true")
    ap.add_argument("--prefill-graph-off", action="store_true",
                    help="fallback: no prefill CUDA graph (decode/verify graphs stay on)")
    ap.add_argument("--skip-hf", action="store_true", help="skip the HF greedy reference")
    ap.add_argument("--image-versions", action="store_true",
                    help="only print the versions of packages the wheelhouse may shadow, then exit")
    a = ap.parse_args()
    if a.image_versions:
        names = ["torch", "triton", "transformers", "tokenizers", "huggingface-hub", "numpy",
                 "typing-extensions", "anyio", "pydantic", "starlette", "fastapi", "sniffio",
                 "safetensors", "regex", "numba", "nvidia-ml-py", "cuda-bindings", "torchvision",
                 "torchaudio", "psutil", "uvloop", "sglang", "flashinfer-python"]
        found = {}
        for n in names:
            try:
                found[n] = md.version(n)
            except md.PackageNotFoundError:
                found[n] = None
        log("image packages: " + json.dumps(found))
        return 0
    if not a.with_plugin and "SGLANG_PLUGINS" not in os.environ:
        os.environ["SGLANG_PLUGINS"] = "none"  # allow-list that matches no plugin

    result: dict = {"argv": sys.argv, "ok": False}

    def dump() -> None:
        if a.out:
            with open(a.out, "w") as f:
                json.dump(result, f, indent=1, default=str)

    result["versions"] = versions()
    log("versions: " + json.dumps(result["versions"], indent=1))
    result["imports"] = import_checks()
    log("imports: " + json.dumps(result["imports"], indent=1))
    dump()

    t0 = time.time()
    make_model(a.model_dir)
    log(f"tiny Llama written to {a.model_dir} in {time.time() - t0:.1f}s")

    prompts = [[1, 2, 3, 4], [5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6, 7]]
    if not a.skip_hf:
        try:
            result["hf_greedy"] = hf_greedy(a.model_dir, prompts, a.max_new_tokens, a.device)
            log(f"HF greedy reference: {result['hf_greedy']}")
        except Exception as e:  # noqa: BLE001
            result["hf_greedy_error"] = repr(e)
            traceback.print_exc()

    import sglang

    kw = dict(model_path=a.model_dir, attention_backend="triton", skip_tokenizer_init=True,
              grammar_backend="none", sampling_backend="pytorch", mem_fraction_static=0.5,
              cuda_graph_max_bs_decode=8,
              max_running_requests=8, context_length=1024, device=a.device,
              log_level="info", random_seed=0)
    if a.device == "cpu":  # only for checking this script off the GPU (TRITON_INTERPRET=1)
        kw.update(dtype="float32", disable_cuda_graph=True, max_total_tokens=4096,
                  mem_fraction_static=0.3)
    if a.prefill_graph_off:
        kw.update(cuda_graph_backend_prefill="disabled")
    if not a.no_spec:
        kw.update(speculative_algorithm="NGRAM", speculative_num_draft_tokens=a.draft_tokens)
    result["engine_kwargs"] = kw
    dump()
    t0 = time.time()
    engine = sglang.Engine(**kw)
    result["engine_start_s"] = round(time.time() - t0, 1)
    log(f"engine up in {result['engine_start_s']}s")
    try:
        sp = {"temperature": 0, "max_new_tokens": a.max_new_tokens, "ignore_eos": True}
        outs = []
        for rep in range(2):  # second pass: warm (NGRAM corpus has seen the first)
            t0 = time.time()
            o = engine.generate(input_ids=prompts, sampling_params=sp)
            dt = time.time() - t0
            outs.append({"seconds": round(dt, 3),
                         "output_ids": [x["output_ids"] for x in o],
                         "meta": [{k: v for k, v in x["meta_info"].items()
                                   if k.startswith("spec_") or k in (
                                       "completion_tokens", "prompt_tokens", "finish_reason")}
                                  for x in o]})
            log(f"generate pass {rep}: {json.dumps(outs[-1])}")
        result["generate"] = outs
        got = outs[-1]["output_ids"]
        result["ok"] = all(len(g) == a.max_new_tokens for g in got)
        if "hf_greedy" in result:
            result["match_hf_prefix"] = [
                next((i for i, (x, y) in enumerate(zip(g, h, strict=False)) if x != y), len(g))
                for g, h in zip(got, result["hf_greedy"], strict=False)]
            log(f"tokens matching the HF greedy reference (prefix length): {result['match_hf_prefix']}")
        result["accept_length"] = [m.get("spec_accept_length") for m in outs[-1]["meta"]]
        log(f"accept length per prompt: {result['accept_length']}")
    except Exception as e:  # noqa: BLE001
        result["error"] = repr(e)
        traceback.print_exc()
    finally:
        dump()
        engine.shutdown()
    log("RESULT " + ("OK" if result["ok"] else "FAILED"))
    dump()
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
