"""Main job: the real SGLang engine with speculative decoding, plugin off then on.

For each speculative config it prints the generated text, SGLang's accept length,
the plugin's staged/committed token counts and whether the outputs equal the
plugin-off run token for token. Runs on the CPU by default (tiny trained model
pair, Triton interpreter); on a CUDA host it uses the GPU.

    python tools/demo.py [--specs ngram-tree,standalone-chain] [--tokens 32]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.engine_run import REPO, SPEC_CONFIGS, run_engine  # noqa: E402
from tools.make_tiny_models import encode, ensure  # noqa: E402

PROMPTS = ["The old miller watched", "A quiet river crossed the long road. The grey fox"]


def _text(ids: list[int]) -> str:
    return bytes(i for i in ids if i < 256).decode("utf-8", "replace")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--specs", default="ngram-tree,standalone-chain")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--models", type=Path, default=REPO / ".fixtures" / "tiny")
    args = ap.parse_args()
    os.environ.setdefault("NWOR_SCV_ENGINE_LOG_LEVEL", "error")  # upstream's warnings stay out
    models = ensure(args.models)
    prompts = [encode(p) for p in PROMPTS]
    ok, report = True, []
    for spec in args.specs.split(","):
        if spec not in SPEC_CONFIGS:
            ap.error(f"unknown spec {spec!r}; choose from {sorted(SPEC_CONFIGS)}")
        runs = {}
        for on in (False, True):
            print(f"-- {spec}: starting the engine, plugin {'on' if on else 'off'} ...", flush=True)
            t0 = time.time()
            runs[on] = run_engine(spec, models, prompts, plugin_on=on,
                                  max_new_tokens=args.tokens)
            runs[on].seconds = time.time() - t0
            print(f"   done in {runs[on].seconds:.0f} s (start-up included)", flush=True)
        off, on = runs[False], runs[True]
        same = off.outputs == on.outputs
        staged = sum(s.get("staged", 0) for s in on.steps)
        committed = sum(s.get("committed", 0) for s in on.steps)
        accepted = sum(s.get("accepted", 0) for s in on.steps)
        report.append(f"\n== {spec}: {SPEC_CONFIGS[spec]}")
        for p, o in zip(PROMPTS, on.outputs, strict=True):
            report.append(f"   {p!r} -> {_text(o)!r}  ({len(o)} tokens)")
        report.append(f"   accept length (tokens per verify step): plugin off {off.accept_length:.2f}, "
                      f"plugin on {on.accept_length:.2f}")
        report.append(f"   {len(on.steps)} verify steps: K/V rows staged {staged}, written to the pool "
                      f"{committed}, accepted {accepted} (per request and step: the window's root, last "
                      f"step's bonus token, plus the accepted drafts); rejected rows never written "
                      f"{staged - committed}")
        report.append(f"   outputs identical with plugin on and off: {same}")
        ok &= same and committed == accepted
    print("\n".join(report))
    print("\nRESULT:", "OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
