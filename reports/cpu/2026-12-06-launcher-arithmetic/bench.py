"""Host µs of the NGRAM draft wrapper (launch stubbed) before and after its size arithmetic
moved off Triton's ConstexprFunction helpers and torch reductions, interleaved.

    PYTHONPATH=. .venv/bin/python reports/cpu/2026-12-06-launcher-arithmetic/bench.py OLD_COMMIT OUT.json

OLD_COMMIT's kernels/ngram_draft.py is loaded beside today's as a module of its own; both
get the same stubbed ``_launch`` (no kernel runs: on the CPU the interpreter would), so
what is timed is the wrapper's own Python. SGLang is imported first, as in the engine (it
replaces ``triton.next_power_of_2`` by a plain function; ``triton.cdiv`` stays Triton's).
Rounds of 2,000 calls, order swapped every round, per-round means; bootstrap 95% CI of the
paired relative difference (tools/measure_latency.py's)."""

from __future__ import annotations

import functools
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import triton

import sglang.srt.utils.common  # noqa: F401  as in the engine: SGLang's own triton.next_power_of_2
from sglang_nwor_scv.kernels import host_math
from sglang_nwor_scv.kernels import ngram_draft as new
from tests.host_timing import interleaved_rounds, summarize


def load_old(commit: str):
    src = subprocess.run(["git", "show", f"{commit}:kernels/ngram_draft.py"], check=True,
                         capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "ngram_draft_old.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("ngram_draft_old", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def interleaved(variants: dict, rounds: int = 40, calls: int = 2000) -> dict:
    for f in variants.values():  # beyond the one warm-up call interleaved_rounds makes
        for _ in range(200):
            f()
    return summarize(interleaved_rounds(variants, rounds, calls))


def main(old_commit: str, out_path: str) -> None:
    old = load_old(old_commit)
    for mod in (old, new):
        mod._launch = lambda grid, args, consts: None
    results = {"old_commit": old_commit, "torch": torch.__version__, "triton": triton.__version__}
    n = 8
    for bs in (1, 32, 128):
        tree = torch.zeros(bs * n * n, dtype=torch.bool)
        seq = torch.randint(100, 2000, (bs,), dtype=torch.int64)
        seq_cpu = seq.clone()
        pools = torch.arange(bs, dtype=torch.int64)
        r2t = torch.zeros(bs, 4096, dtype=torch.int32)
        links = [torch.empty(bs * n, dtype=torch.int64) for _ in range(4)]
        args = (tree, seq, seq_cpu, pools, r2t, *links, bs, n)
        results[f"ngram_draft wrapper, bs {bs}"] = interleaved({
            "old": functools.partial(old.ngram_draft, *args),
            "new": functools.partial(new.ngram_draft, *args)})
    results["cdiv"] = interleaved({"triton.cdiv": lambda: triton.cdiv(1000, 512),
                                   "host_math.cdiv": lambda: host_math.cdiv(1000, 512)})
    Path(out_path).write_text(json.dumps(results, indent=1))
    for key, r in results.items():
        if isinstance(r, dict):
            meds = ", ".join(f"{k} {v['median_us']:.2f}" for k, v in r["per_variant"].items())
            print(f"{key}: {meds} µs; second vs first {r['second_vs_first']}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
