"""Nsight Compute over whole verify steps of the real engine, per NWOR/SCV mode.

For each (speculative config, mode) one engine runs under
``ncu --target-processes all --cache-control none``; the plugin's profiler window
(sglang_nwor_scv.profiling) opens the CUDA profiler around verify steps a..b-1 of each
requested batch size. The metrics of each profiled step are summed, then averaged over
the profiled steps of a batch size.

Two ways to collect (``--replay``):

- ``app-range`` (default): ncu's application range replay. Each profiler window (one
  verify step) is one result: the counters run from ``cudaProfilerStart`` to ``Stop``
  over every kernel and graph of the step, with no per-kernel serialization or replay.
  With one pass (the default metrics need one on H100/H200, run 13) the application
  runs once. Per-kernel columns (the KV-write kernels alone) are not available.
- ``kernel``: every workload of the window is profiled on its own (kernel replay), with
  CUDA graphs as one workload each (``--graph-profiling graph``) or, with ``--eager``,
  every kernel; a ``spin_kernel`` marker starts each step. This also sums the KV-write
  kernels alone (upstream's ``store_kvcache`` / ``set_kv_buffer`` writes and its tree
  ``copy_all_layer_kv_cache`` move, our ``commit_accepted_kv_kernel``; inside a graph
  they count in the graph's row), but a step of 8 layers costs tens of seconds under ncu
  (runs 8, 10, 13), so a mode does not fit a short call.

CUDA graphs are on by default, as in production.

``--cache-control none`` keeps L2 as the engine leaves it between kernels, so lines
one kernel leaves dirty are written back (and counted) during a later kernel of the
same step, not flushed unseen by ncu between kernels.

Output, in the seed's shape (``summary.per_mode[i].ncu_metrics``): OUT/ncu_whole_step.json
with every mode, plus one file per mode and batch size,
OUT/ncu_analysis/<spec>_bs<bs>_<mode>.json, whose ``per_mode[0]`` is that mode.

    python tools/measure_ncu.py --out OUT --specs ngram-tree-n8 --bs 32,128 --layers 8
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.trace_stats import KV_WRITE  # noqa: E402  (the KV-pool writers, one definition)

METRICS = ("dram__bytes_write.sum", "dram__bytes_read.sum", "lts__t_sectors_op_write.sum",
           "dram__throughput.avg.pct_of_peak_sustained_elapsed", "gpu__time_duration.sum")
SUMMED = METRICS[:3] + ("gpu__time_duration.sum",)
MARKER = "spin_kernel"
# Modes are tools/measure_engine.MODES names with the plugin loaded (its ranges open the
# profiler window): upstream's default move, upstream's native move, the plugin's defaults.
NCU_MODES = ("upstream", "upstream-native-move", "default")
UNITS = {"byte": 1, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9, "nsecond": 1, "usecond": 1e3,
         "register/thread": 1, "msecond": 1e6, "sector": 1, "Ksector": 1e3, "Msector": 1e6, "%": 1}


def child(args) -> int:
    """The engine under ncu: one batch per batch size, greedy, fixed length."""
    import sglang as sgl

    from tools.measure_engine import build_engine_kwargs, prompts_for
    from tools.realistic_model import write_llama3_8b

    t0 = time.perf_counter()
    model_dir = write_llama3_8b(Path(tempfile.mkdtemp(prefix="llama3-8b-")), args.layers)
    kw = build_engine_kwargs("llama3-8b", args.specs, model_dir, graphs=args.graphs, max_bs=max(args.bs))
    kw["mem_fraction_static"] = args.mem_fraction  # ncu saves/restores written memory per replay pass
    if args.graphs:  # capture only the profiled sizes: each capture is slow under ncu
        kw["cuda_graph_bs_decode"] = sorted(set(args.bs))
    engine = sgl.Engine(**kw)
    print(f"[ncu child] engine up in {time.perf_counter() - t0:.0f} s", flush=True)
    try:
        for bs in args.bs:
            t1 = time.perf_counter()
            engine.generate(input_ids=prompts_for(bs, 32, 128256, bs),
                            sampling_params={"temperature": 0.0, "max_new_tokens": args.tokens,
                                             "ignore_eos": True})
            print(f"[ncu child] bs {bs} done in {time.perf_counter() - t1:.0f} s", flush=True)
    finally:
        engine.shutdown()
    print(f"[ncu child] done in {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


def parse_csv(text: str, metrics=METRICS) -> list[dict]:
    """ncu --csv rows -> one dict per kernel launch (its ``metrics`` among ``metrics``), in
    launch order."""
    rows = csv.DictReader(io.StringIO("\n".join(ln for ln in text.splitlines() if ln.startswith('"'))))
    kernels: dict = {}
    for r in rows:
        key = (r.get("Process ID"), int(r.get("ID", "0")))
        k = kernels.setdefault(key, {"name": r.get("Kernel Name", ""), "metrics": {}})
        name, value = r.get("Metric Name"), (r.get("Metric Value") or "0").replace(",", "")
        if name in metrics:
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


_ENV_LOCK = threading.Lock()


def child_env(plugin_on: bool, env: dict, gpu: str | None) -> dict:
    """The environment one mode's ncu session runs in, built without leaving it in
    ``os.environ`` (modes may run concurrently, one per GPU)."""
    from tools.engine_run import prepare_process_env, restore_env

    with _ENV_LOCK:
        old = prepare_process_env(plugin_on, env)
        try:
            snapshot = dict(os.environ)
        finally:
            restore_env(old)
    if gpu is not None:
        snapshot["CUDA_VISIBLE_DEVICES"] = gpu
    return snapshot


def run_mode(args, spec: str, ncu_mode: str, workdir: Path, gpu: str | None = None) -> list[dict]:
    from tools.measure_engine import mode_env

    log = workdir / f"{spec}_{ncu_mode}.steps.jsonl"
    csv_path = workdir / f"{spec}_{ncu_mode}.csv"
    totals = workdir / f"{spec}_{ncu_mode}.totals.json"
    plugin_on, env = mode_env(ncu_mode, args.graphs, totals)
    if not plugin_on:
        raise ValueError(f"mode {ncu_mode}: ncu needs the plugin loaded (its ranges open the window)")
    env.update(SGLANG_NWOR_SCV_PROFILE_STEPS=f"{args.skip}:{args.skip + args.steps}",
               SGLANG_NWOR_SCV_PROFILE_BS=",".join(map(str, args.bs)),
               SGLANG_NWOR_SCV_PROFILE_LOG=str(log), SGLANG_SIMULATE_ACC_LEN=str(args.acc_len),
               SGLANG_NWOR_SCV_LOG_INTERVAL="4")  # a short run still writes its invariant totals
    replay = (["--replay-mode", "app-range"] if args.replay == "app-range"  # ranges: profiler start/stop
              else ["--profile-from-start", "off", "--graph-profiling", "node" if args.eager else "graph"])
    cmd = [args.ncu, "--target-processes", "all",
           "--cache-control", "none", "--clock-control", "none", "--csv", "--log-file", str(csv_path),
           *replay, "--metrics", args.metrics, sys.executable, __file__, "--child", "--specs", spec,
           "--bs", ",".join(map(str, args.bs)), "--layers", str(args.layers),
           "--tokens", str(args.tokens), "--mem-fraction", str(args.mem_fraction)]
    cmd += ["--eager"] if args.eager else []
    console = workdir / f"{spec}_{ncu_mode}.console.txt"
    rc = run_in_own_session(cmd, console, args.timeout, child_env(plugin_on, env, gpu))
    rows = reduce_run(csv_path, log, totals, args, spec, ncu_mode)  # a run cut short keeps its steps
    if rc != 0 and not rows:
        raise RuntimeError(f"ncu run failed (rc {rc}); see {console.name}: {tail(console)}")
    return rows


def reduce_run(csv_path: Path, log: Path, totals: Path, args, spec: str, ncu_mode: str) -> list[dict]:
    """One mode's ncu CSV + the plugin's step log -> one row per batch size."""
    results = parse_csv(csv_path.read_text()) if csv_path.exists() else []
    per_kernel = args.replay == "kernel"
    steps = split_steps(results) if per_kernel else [[r] for r in results]  # a range is a step
    sizes = [json.loads(x)["bs"] for x in log.read_text().splitlines()] if log.exists() else []
    if len(sizes) < len(steps):
        raise RuntimeError(f"{len(steps)} marked steps in the ncu output, {len(sizes)} in the step log")
    sizes = sizes[:len(steps)]  # a run cut short keeps the steps ncu had reported
    out = []
    for bs in args.bs:
        mine = [s for s, b in zip(steps, sizes, strict=True) if b == bs]
        if not mine:
            continue
        out.append({
            "mode": ncu_mode, "spec": spec, "bs": bs, "steps": len(mine),
            "layers": args.layers, "cuda_graphs": args.graphs, "replay": args.replay,
            "kernels_per_step": sum(map(len, mine)) / len(mine) if per_kernel else None,
            "ncu_metrics": mean_dicts([step_metrics(s) for s in mine]),
            "kv_write_kernels": kv_write_kernels(mine) if per_kernel else None,
            "invariants": json.loads(totals.read_text()) if totals.exists() else None,
        })
    return out


def kv_write_kernels(steps: list[list[dict]]) -> dict:
    """Kernel replay only: the KV-pool writers of each step, summed alone."""
    kv = [[k for k in s if KV_WRITE.search(k["name"])] for s in steps]
    return dict(mean_dicts([step_metrics(s) for s in kv]), kernels=sum(map(len, kv)) / len(kv),
                names=sorted({k["name"][:80] for s in kv for k in s}))


def run_in_own_session(cmd: list[str], console: Path, timeout: float, env: dict | None = None) -> int:
    """ncu and every process under it in a session of their own, output live in
    ``console`` with each line stamped by its second since start (where a slow mode
    spends its time); on timeout the whole session is killed (ncu's launcher alone
    would leave its front-end and the engine running into the next mode)."""
    t0 = time.monotonic()
    with open(console, "w") as out:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)

        def copy() -> None:
            for line in proc.stdout:
                out.write(f"[{time.monotonic() - t0:7.1f}s] {line.decode(errors='replace')}")
                out.flush()

        reader = threading.Thread(target=copy, daemon=True)
        reader.start()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            _wait_until_gone(proc.pid)  # the next mode's engine must not meet a dying one
            rc = -signal.SIGKILL
        reader.join(timeout=10)
        if rc == -signal.SIGKILL:
            out.write(f"\n[measure_ncu] timed out after {timeout} s: killed the session\n")
        return rc


def _live_members(pgid: int) -> list[int]:
    """Processes of process group ``pgid`` that are not yet zombies (Linux ``/proc``)."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)"
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[2]) == pgid and fields[0] != "Z":
            live.append(int(stat.parent.name))
    return live


def _wait_until_gone(pgid: int, limit_s: float = 30.0) -> None:
    """SIGKILL is delivered asynchronously: on a loaded machine a killed session's
    grandchildren were still running when ``run_in_own_session`` returned (a fresh-clone
    CI run saw it). Wait, bounded, until none is left."""
    deadline = time.monotonic() + limit_s
    while _live_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)


def tail(path: Path, n: int = 1500) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out")))
    ap.add_argument("--specs", default="ngram-chain,ngram-tree-n8")
    ap.add_argument("--modes", default=",".join(NCU_MODES))
    ap.add_argument("--bs", default="8,32,128")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--mem-fraction", type=float, default=0.15,
                    help="the engine's mem_fraction_static: a small KV pool keeps ncu's replay cheap")
    ap.add_argument("--gpus", default="", help="e.g. 1,2,3: run modes concurrently, one per GPU")
    ap.add_argument("--reduce", type=Path, help="reduce the CSVs of a stored run instead of running ncu")
    ap.add_argument("--replay", choices=("app-range", "kernel"), default="app-range",
                    help="app-range: one result per verify step; kernel: one per workload (slow)")
    ap.add_argument("--eager", action="store_true", help="no CUDA graphs (--replay kernel: each kernel)")
    ap.add_argument("--skip", type=int, default=2, help="verify steps of each size before the window")
    ap.add_argument("--steps", type=int, default=2, help="profiled verify steps per batch size")
    ap.add_argument("--acc-len", type=float, default=2.5)
    ap.add_argument("--timeout", type=int, default=400)
    ap.add_argument("--metrics", default=",".join(METRICS),
                    help="ncu metrics; each extra replay pass saves and restores the written memory")
    ap.add_argument("--ncu", default=shutil.which("ncu") or "/usr/local/cuda/bin/ncu")
    args = ap.parse_args()
    args.bs = [int(x) for x in args.bs.split(",")]
    args.graphs = not args.eager
    if args.child:
        return child(args)
    if args.reduce:  # re-reduce a stored run: --reduce DIR holding <spec>_<mode>.csv[.steps.jsonl]
        stem = args.reduce.joinpath
        args.out.mkdir(parents=True, exist_ok=True)
        rows = [row for spec in args.specs.split(",") for mode in args.modes.split(",")
                for row in reduce_run(stem(f"{spec}_{mode}.csv"), stem(f"{spec}_{mode}.steps.jsonl"),
                                      stem(f"{spec}_{mode}.totals.json"), args, spec, mode)]
        save(args.out / "ncu_whole_step.json", rows, [], METHODS[args.replay])
        return 0 if rows else 1
    workdir = args.out / "ncu_analysis"
    workdir.mkdir(parents=True, exist_ok=True)
    per_mode, errors = [], []
    jobs = [(spec, mode) for spec in args.specs.split(",") for mode in args.modes.split(",")]
    gpus: queue.Queue = queue.Queue()
    for gpu in (args.gpus.split(",") if args.gpus else [None]):
        gpus.put(gpu)

    def work(job):  # one mode on the next free GPU (one at a time without --gpus)
        gpu = gpus.get()
        print(f"=== ncu {job[0]} {job[1]}" + (f" (GPU {gpu})" if gpu is not None else ""), flush=True)
        try:
            return run_mode(args, *job, workdir, gpu)
        finally:
            gpus.put(gpu)

    with ThreadPoolExecutor(max_workers=gpus.qsize()) as pool:
        futures = {pool.submit(work, job): job for job in jobs}
        for fut in as_completed(futures):
            spec, ncu_mode = futures[fut]
            try:
                rows = fut.result()
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
            save(args.out / "ncu_whole_step.json", per_mode, errors, METHODS[args.replay])
    save(args.out / "ncu_whole_step.json", per_mode, errors, METHODS[args.replay])
    return 0 if per_mode and not errors else 1


METHODS = {"app-range": "ncu application range replay, one range per verify step (cudaProfilerStart/Stop), "
                        "--cache-control none",
           "kernel": "ncu kernel replay (CUDA graphs as one workload each), --cache-control none, "
                     "sums over whole verify steps"}


def save(path: Path, per_mode: list, errors: list, method: str) -> None:
    """Rewritten after every mode: a timeout keeps what was measured; earlier runs'
    rows for other (spec, mode, bs) stay (several device calls fill one report)."""
    old = json.loads(path.read_text()) if path.exists() else {"summary": {"per_mode": []}}
    keys = {(r["spec"], r["mode"], r["bs"]) for r in per_mode}
    rows = [r for r in old["summary"]["per_mode"] if (r["spec"], r["mode"], r["bs"]) not in keys]
    failed = {(e["spec"], e["mode"]) for e in errors}
    old_errors = [e for e in old.get("errors", []) if (e["spec"], e["mode"]) not in failed]
    path.write_text(json.dumps(
        {"summary": {"per_mode": rows + per_mode}, "errors": old_errors + errors,
         "method": method}, indent=1))


if __name__ == "__main__":
    raise SystemExit(main())
