"""Nsight Compute over whole verify steps of the real engine, per NWOR/SCV mode.

For each (speculative config, mode) one engine runs under
``ncu --profile-from-start off --target-processes all --cache-control none``; the
plugin's profiler window (sglang_nwor_scv.profiling) opens the CUDA profiler around
verify steps a..b-1 of each requested batch size, and marks each step's start with a
``spin_kernel``. Per step, every kernel's metrics are summed, then averaged over the
profiled steps of a batch size; the KV-write kernels (upstream's ``store_kvcache`` /
``set_kv_buffer`` writes, our ``commit_accepted_kv_kernel``) are also summed alone.

``--cache-control none`` keeps L2 as the engine leaves it between kernels, so lines
one kernel leaves dirty are written back (and counted) during a later kernel of the
same step, not flushed unseen by ncu between kernels.

Output, in the seed's shape (``summary.per_mode[i].ncu_metrics``): OUT/ncu_whole_step.json
with every mode, plus one file per mode and batch size,
OUT/ncu_analysis/<spec>_bs<bs>_<mode>.json, whose ``per_mode[0]`` is that mode.

    python tools/measure_ncu.py --out OUT --specs ngram-tree --bs 32,128 --layers 8
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METRICS = ("dram__bytes_write.sum", "dram__bytes_read.sum", "lts__t_sectors_op_write.sum",
           "dram__throughput.avg.pct_of_peak_sustained_elapsed", "gpu__time_duration.sum")
SUMMED = METRICS[:3] + ("gpu__time_duration.sum",)
KV_WRITE = re.compile(r"store_kvcache|set_kv_buffer|commit_accepted_kv|store_cache")
MARKER = "spin_kernel"
# The four modes of the seed's table; env for tools/measure_engine.MODES names.
NCU_MODES = {"nwor_off_scv_off": "off", "nwor_stage_scv_off": "nwor",
             "nwor_off_scv_graph": "scv", "nwor_stage_scv_graph": "nwor+scv"}
UNITS = {"byte": 1, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9, "nsecond": 1, "usecond": 1e3,
         "msecond": 1e6, "sector": 1, "Ksector": 1e3, "Msector": 1e6, "%": 1}


def child(args) -> int:
    """The engine under ncu: one batch per batch size, greedy, fixed length."""
    import sglang as sgl

    from tools.measure_engine import build_engine_kwargs, prompts_for
    from tools.realistic_model import write_llama3_8b

    model_dir = write_llama3_8b(Path(tempfile.mkdtemp(prefix="llama3-8b-")), args.layers)
    engine = sgl.Engine(**build_engine_kwargs(args, args.specs, model_dir))
    try:
        for bs in args.bs:
            engine.generate(input_ids=prompts_for(bs, 32, 128256, bs),
                            sampling_params={"temperature": 0.0, "max_new_tokens": args.tokens,
                                             "ignore_eos": True})
    finally:
        engine.shutdown()
    return 0


def parse_csv(text: str) -> list[dict]:
    """ncu --csv rows -> one dict per kernel launch, in launch order."""
    rows = csv.DictReader(io.StringIO("\n".join(ln for ln in text.splitlines() if ln.startswith('"'))))
    kernels: dict = {}
    for r in rows:
        key = (r.get("Process ID"), int(r.get("ID", "0")))
        k = kernels.setdefault(key, {"name": r.get("Kernel Name", ""), "metrics": {}})
        name, value = r.get("Metric Name"), (r.get("Metric Value") or "0").replace(",", "")
        if name in METRICS:
            try:
                k["metrics"][name] = float(value) * UNITS.get(r.get("Metric Unit", ""), 1)
            except ValueError:
                k["metrics"][name] = float("nan")
    return [kernels[k] for k in sorted(kernels, key=lambda x: (x[0] or "", x[1]))]


def split_steps(kernels: list[dict]) -> list[list[dict]]:
    steps: list[list[dict]] = []
    for k in kernels:
        if MARKER in k["name"]:
            steps.append([])
        elif steps:
            steps[-1].append(k)
    return steps


def step_metrics(kernels: list[dict]) -> dict:
    sums = {m: sum(k["metrics"].get(m, 0.0) for k in kernels) for m in SUMMED}
    t = sums["gpu__time_duration.sum"]
    pct = "dram__throughput.avg.pct_of_peak_sustained_elapsed"
    sums[pct] = (sum(k["metrics"].get(pct, 0.0) * k["metrics"].get("gpu__time_duration.sum", 0.0)
                     for k in kernels) / t) if t else 0.0  # time-weighted over the step
    return sums


def mean_dicts(rows: list[dict]) -> dict:
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]} if rows else {}


def run_mode(args, spec: str, ncu_mode: str, workdir: Path) -> list[dict]:
    from tools.engine_run import prepare_process_env, restore_env
    from tools.measure_engine import mode_env

    log = workdir / f"{spec}_{ncu_mode}.steps.jsonl"
    csv_path = workdir / f"{spec}_{ncu_mode}.csv"
    plugin_on, env = mode_env(NCU_MODES[ncu_mode], False, workdir / "totals.json")
    env.update(SGLANG_NWOR_SCV_PROFILE_STEPS=f"{args.skip}:{args.skip + args.steps}",
               SGLANG_NWOR_SCV_PROFILE_BS=",".join(map(str, args.bs)),
               SGLANG_NWOR_SCV_PROFILE_LOG=str(log), SGLANG_SIMULATE_ACC_LEN=str(args.acc_len))
    cmd = [args.ncu, "--target-processes", "all", "--profile-from-start", "off",
           "--cache-control", "none", "--clock-control", "none", "--csv", "--log-file", str(csv_path),
           "--metrics", ",".join(METRICS), sys.executable, __file__, "--child", "--specs", spec,
           "--bs", ",".join(map(str, args.bs)), "--layers", str(args.layers),
           "--tokens", str(args.tokens)]
    old = prepare_process_env(plugin_on, env)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    finally:
        restore_env(old)
    (workdir / f"{spec}_{ncu_mode}.console.txt").write_text(proc.stdout[-20000:] + proc.stderr[-20000:])
    if proc.returncode != 0 or not csv_path.exists():
        raise RuntimeError(f"ncu run failed ({proc.returncode}): {proc.stderr[-1500:]}")
    steps = split_steps(parse_csv(csv_path.read_text()))
    sizes = [json.loads(x)["bs"] for x in log.read_text().splitlines()] if log.exists() else []
    if len(sizes) != len(steps):
        raise RuntimeError(f"{len(steps)} marked steps in the ncu output, {len(sizes)} in the step log")
    out = []
    for bs in args.bs:
        mine = [s for s, b in zip(steps, sizes, strict=True) if b == bs]
        if not mine:
            continue
        kv = [[k for k in s if KV_WRITE.search(k["name"])] for s in mine]
        out.append({
            "mode": ncu_mode, "spec": spec, "bs": bs, "steps": len(mine),
            "layers": args.layers, "kernels_per_step": sum(map(len, mine)) / len(mine),
            "ncu_metrics": mean_dicts([step_metrics(s) for s in mine]),
            "kv_write_kernels": dict(mean_dicts([step_metrics(s) for s in kv]),
                                     kernels=sum(map(len, kv)) / len(kv),
                                     names=sorted({k["name"][:80] for s in kv for k in s})),
        })
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out")))
    ap.add_argument("--specs", default="ngram-chain,ngram-tree")
    ap.add_argument("--modes", default=",".join(NCU_MODES))
    ap.add_argument("--bs", default="8,32,128")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=40)
    ap.add_argument("--skip", type=int, default=2, help="verify steps of each size before the window")
    ap.add_argument("--steps", type=int, default=2, help="profiled verify steps per batch size")
    ap.add_argument("--acc-len", type=float, default=2.5)
    ap.add_argument("--timeout", type=int, default=400)
    ap.add_argument("--ncu", default=shutil.which("ncu") or "/usr/local/cuda/bin/ncu")
    args = ap.parse_args()
    args.bs = [int(x) for x in args.bs.split(",")]
    # the engine-kwargs builder of measure_engine expects these
    args.model, args.graphs, args.tp, args.profile_bs = "llama3-8b", False, 1, 0
    if args.child:
        return child(args)
    workdir = args.out / "ncu_analysis"
    workdir.mkdir(parents=True, exist_ok=True)
    per_mode, errors = [], []
    for spec in args.specs.split(","):
        for ncu_mode in args.modes.split(","):
            print(f"=== ncu {spec} {ncu_mode}", flush=True)
            try:
                rows = run_mode(args, spec, ncu_mode, workdir)
            except Exception as exc:  # keep the other modes' numbers
                errors.append({"spec": spec, "mode": ncu_mode, "error": repr(exc)[:1500]})
                print("FAILED", errors[-1], flush=True)
                continue
            for row in rows:
                (workdir / f"{spec}_bs{row['bs']}_{ncu_mode}.json").write_text(
                    json.dumps({"summary": {"per_mode": [row]}}, indent=1))
                print(json.dumps({k: row[k] for k in ("mode", "spec", "bs", "steps", "kernels_per_step")}),
                      {k: f"{v:.4g}" for k, v in row["ncu_metrics"].items()}, flush=True)
            per_mode.extend(rows)
            save(args.out / "ncu_whole_step.json", per_mode, errors)
    save(args.out / "ncu_whole_step.json", per_mode, errors)
    return 0 if per_mode and not errors else 1


def save(path: Path, per_mode: list, errors: list) -> None:
    """Rewritten after every mode: a timeout keeps what was measured; earlier runs'
    rows for other (spec, mode, bs) stay (several device calls fill one report)."""
    old = json.loads(path.read_text()) if path.exists() else {"summary": {"per_mode": []}}
    keys = {(r["spec"], r["mode"], r["bs"]) for r in per_mode}
    rows = [r for r in old["summary"]["per_mode"] if (r["spec"], r["mode"], r["bs"]) not in keys]
    failed = {(e["spec"], e["mode"]) for e in errors}
    old_errors = [e for e in old.get("errors", []) if (e["spec"], e["mode"]) not in failed]
    path.write_text(json.dumps(
        {"summary": {"per_mode": rows + per_mode}, "errors": old_errors + errors,
         "method": "ncu kernel replay, --cache-control none, sums over whole verify steps"}, indent=1))


if __name__ == "__main__":
    raise SystemExit(main())
