"""GPU memory that graph staging holds, per verify bucket, on SGLang's default bucket list.

One engine per mode (Llama-3-8B shape, dummy weights, NGRAM tree, CUDA graphs with
SGLang's default bucket list and memory fraction for the card), each in a child process:

- ``graph-staging-off``: the plugin loaded with ``SGLANG_NWOR_GRAPH=0``: buckets are
  captured as upstream captures them (the baseline of the capture's memory);
- ``default``: the plugin as installed (staging within the automatic budget);
- ``unbudgeted``: ``SGLANG_NWOR_GRAPH_MAX_MB`` huge: every bucket staged, so every
  bucket's staged K/V is measured (and the sum is what holding them all would cost).

The plugin measures, in its own capture hook, the device memory the verify captures
reserved (``torch.cuda.memory_reserved`` before the first and after the last), the
bytes each staged bucket's K/V hold, the estimate for buckets over budget and the KV
pool's size; the engine serves one short batch so the counters reach the totals file.

    python tools/graph_memory.py --out OUT [--modes graph-staging-off,default,unbudgeted]

Writes OUT/graph_memory.json and OUT/graph_memory.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = {"graph-staging-off": {"SGLANG_NWOR_GRAPH": "0"}, "default": {},
         "unbudgeted": {"SGLANG_NWOR_GRAPH_MAX_MB": "1000000"}}
MIB = 1 << 20


def child(args) -> int:
    import sglang as sgl

    from tools.engine_run import engine_kwargs, prepare_process_env, restore_env
    from tools.measure_engine import prompts_for
    from tools.realistic_model import write_llama3_8b

    model = write_llama3_8b(Path(tempfile.mkdtemp(prefix="llama3-8b-")), args.layers)
    env = dict(MODES[args.mode], SGLANG_NWOR_SCV_TOTALS=str(args.totals), SGLANG_NWOR_SCV_LOG_INTERVAL="1",
               SGLANG_SIMULATE_ACC_LEN="2.5")
    kw = engine_kwargs("ngram-tree-n8", model, model_path=str(model), load_format="dummy", dtype="bfloat16",
                       log_level="warning")
    for key in ("max_running_requests", "mem_fraction_static", "random_seed"):
        kw.pop(key, None)  # SGLang's own defaults for the card: bucket list, memory fraction
    old = prepare_process_env(True, env)
    t0 = time.perf_counter()
    try:
        engine = sgl.Engine(**kw)
        start_s = time.perf_counter() - t0
        try:
            engine.generate(input_ids=prompts_for(4, 32, 128256, 1),
                            sampling_params={"temperature": 0.0, "max_new_tokens": 16, "ignore_eos": True})
        finally:
            engine.shutdown()
    finally:
        restore_env(old)
    print(json.dumps({"mode": args.mode, "engine_start_s": round(start_s, 1)}), flush=True)
    return 0


def summarize(mode: str, totals: dict) -> dict:
    g = totals.get("graph") or {}
    held = {int(b): v for b, v in (g.get("staged_held_bytes") or {}).items()}
    skipped = {int(b): v for b, v in (g.get("skipped_estimated_bytes") or {}).items()}
    return {"mode": mode, "kv_pool_bytes": totals.get("kv_pool_bytes"), "budget_bytes": g.get("budget_bytes"),
            "capture_reserved_bytes": g.get("capture_reserved_bytes"), "buckets_staged": sorted(held),
            "buckets_over_budget": sorted(skipped), "held_bytes_per_bucket": held,
            "estimated_bytes_over_budget": skipped, "largest_held_bytes": max(held.values(), default=0),
            "sum_held_bytes": sum(held.values()), "committed_equals_accepted":
            totals.get("committed") == totals.get("accepted"), "violations": totals.get("violations")}


def markdown(meta: dict, rows: list[dict]) -> str:
    base = next((r for r in rows if r["mode"] == "graph-staging-off"), None)
    lines = [f"# Graph staging memory ({meta['card']})", "",
             f"{meta['model']}; NGRAM tree N 8; SGLang {meta['sglang']} defaults for this card (bucket list, "
             f"memory fraction). Command: `{meta['command']}`.", "",
             "| mode | KV pool GiB | budget MiB | buckets staged | over budget | largest bucket holds MiB "
             "| all staged buckets at once MiB | capture reserved MiB | vs staging off MiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        def mib(x):
            return "–" if x is None else f"{x / MIB:,.1f}"

        delta = (None if base is None or None in (r["capture_reserved_bytes"], base["capture_reserved_bytes"])
                 else r["capture_reserved_bytes"] - base["capture_reserved_bytes"])
        pool = "–" if not r["kv_pool_bytes"] else f"{r['kv_pool_bytes'] / (1 << 30):,.1f}"
        staged = f"{len(r['buckets_staged'])}" + (f" (bs {r['buckets_staged'][0]}-{r['buckets_staged'][-1]})"
                                                   if r["buckets_staged"] else "")
        lines.append(f"| {r['mode']} | {pool} | {mib(r['budget_bytes'])} | {staged} | "
                     f"{len(r['buckets_over_budget'])} | {mib(r['largest_held_bytes'])} | "
                     f"{mib(r['sum_held_bytes'])} | {mib(r['capture_reserved_bytes'])} | {mib(delta)} |")
    full = next((r for r in rows if r["mode"] == "unbudgeted"), None)
    if full and full["held_bytes_per_bucket"]:
        lines += ["", "Per bucket, staged K/V held during its capture (unbudgeted run):", "",
                  "| bucket bs | tokens (bs x 8) | MiB |", "|---|---|---|"]
        lines += [f"| {b} | {8 * b} | {v / MIB:,.1f} |"
                  for b, v in sorted(full["held_bytes_per_bucket"].items())]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out")))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--timeout", type=int, default=300)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--totals", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    import sglang
    import torch

    args.out.mkdir(parents=True, exist_ok=True)
    rows, errors = [], []
    for mode in args.modes.split(","):
        totals = args.out / f"graph_memory_{mode}.totals.json"
        totals.unlink(missing_ok=True)
        cmd = [sys.executable, __file__, "--child", "--mode", mode, "--totals", str(totals),
               "--layers", str(args.layers)]
        print(f"=== {mode}", flush=True)
        try:
            proc = subprocess.run(cmd, timeout=args.timeout, capture_output=True, text=True)
            (args.out / f"graph_memory_{mode}.log").write_text(proc.stdout + proc.stderr)
            if proc.returncode != 0 or not totals.exists():
                raise RuntimeError(f"rc {proc.returncode}: {proc.stderr[-600:]}")
            rows.append(summarize(mode, json.loads(totals.read_text())))
            print(json.dumps({k: rows[-1][k] for k in ("mode", "capture_reserved_bytes", "budget_bytes",
                                                        "largest_held_bytes", "sum_held_bytes")}), flush=True)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            errors.append({"mode": mode, "error": repr(e)[-800:]})
            print("FAILED", errors[-1], flush=True)
    meta = {"card": torch.cuda.get_device_name(0), "sglang": sglang.__version__,
            "model": f"Llama-3-8B shape, {args.layers} layers, dummy weights",
            "command": "python tools/graph_memory.py " + " ".join(sys.argv[1:])}
    (args.out / "graph_memory.json").write_text(json.dumps({"meta": meta, "rows": rows, "errors": errors},
                                                           indent=1))
    text = markdown(meta, rows)
    (args.out / "graph_memory.md").write_text(text)
    print(text)
    return 0 if rows and not errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
