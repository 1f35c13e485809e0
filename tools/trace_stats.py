"""Per-verify-step launch and time counts from a torch.profiler Chrome trace.

Reads the trace SGLang's own profiler writes (``Engine.start_profile``), in which the
plugin's ``verify_step``, ``scv_compute_mask`` and ``nwor_commit`` ranges
(sglang_nwor_scv.profiling) appear as ``user_annotation`` events. For each complete
range it counts, on the range's own thread and inside its time span:

- CUDA API calls: kernel launches (``cudaLaunchKernel``, ``cuLaunchKernel``, ...) and
  graph launches (``cudaGraphLaunch``), and all runtime/driver calls;
- the GPU kernels those calls started (matched by CUPTI correlation id), and their
  summed device time;
- the range's host time.

Ranges exist only with the plugin loaded, so for a comparison with upstream (plugin
off) ``window_stats`` also counts the whole profiled window, divided by its verify
steps: every mode then gets the same method, prefill included in each alike.

    python tools/trace_stats.py TRACE.json[.gz]
    python tools/trace_stats.py --kernels REGEX TRACE.json[.gz]
        (GPU µs per verify step by kernel name; steps = launches of the kernel matching REGEX)
    python tools/trace_stats.py --update-profile OUT/profile.json --steps-kernel REGEX
        ((re)computes ``window`` from each run's trace; steps = launches of a kernel that
        runs once per verify step, e.g. 'VerifyTreeGreedy|_verify_accept_greedy_kernel')
"""

from __future__ import annotations

import bisect
import gzip
import json
import re
import statistics
import sys
from pathlib import Path

RANGES = ("verify_step", "scv_compute_mask", "nwor_commit")
# KV-pool writers: upstream's per-layer stores and tree move, our commit (measure_ncu uses it too)
KV_WRITE = re.compile(r"store_kvcache|set_kv_buffer|commit_accepted_kv|store_cache|copy_all_layer_kv_cache")
API_CATS = ("cuda_runtime", "cuda_driver")


def load(path: Path) -> list[dict]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def _is_launch(name: str) -> bool:
    return "LaunchKernel" in name or name in ("cuLaunchKernelEx", "cudaLaunchCooperativeKernel")


def range_stats(events: list[dict], name: str) -> list[dict]:
    """One dict per complete ``name`` range: host_us, api_calls, launch_calls,
    graph_launches, kernels, gpu_us."""
    kernels_by_corr: dict = {}
    for e in events:
        if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and e.get("ph") == "X":
            kernels_by_corr.setdefault(e.get("args", {}).get("correlation"), []).append(e)
    api = sorted((e for e in events if e.get("cat") in API_CATS and e.get("ph") == "X"),
                 key=lambda e: e["ts"])
    api_ts = [e["ts"] for e in api]
    out = []
    for r in events:
        if r.get("cat") != "user_annotation" or r.get("name") != name or r.get("ph") != "X":
            continue
        t0, t1 = r["ts"], r["ts"] + r.get("dur", 0)
        window = api[bisect.bisect_left(api_ts, t0):bisect.bisect_right(api_ts, t1)]
        calls = [e for e in window if e.get("tid") == r.get("tid") and e.get("pid") == r.get("pid")]
        launched = [k for c in calls for k in kernels_by_corr.get(c.get("args", {}).get("correlation"), [])
                    if k.get("cat") == "kernel"]
        out.append({
            "host_us": float(r.get("dur", 0)),
            "api_calls": len(calls),
            "launch_calls": sum(1 for c in calls if _is_launch(c["name"])),
            "graph_launches": sum(1 for c in calls if c["name"].startswith("cudaGraphLaunch")),
            "kernels": len(launched),
            "gpu_us": float(sum(k.get("dur", 0) for k in launched)),
        })
    return out


def summarize(events: list[dict]) -> dict:
    """Mean per range instance, for each range name present; ``steps`` = count."""
    result = {}
    for name in RANGES:
        rows = range_stats(events, name)
        if rows:
            result[name] = {"count": len(rows),
                            **{k: statistics.fmean(r[k] for r in rows) for k in rows[0]}}
    return result


def _kernel_events(events: list[dict]) -> list[dict]:
    """The trace's complete GPU kernel events (graph nodes included)."""
    return [e for e in events if e.get("cat") == "kernel" and e.get("ph") == "X"]


def window_stats(events: list[dict], steps: int) -> dict:
    """The whole trace per verify step: kernels (graph nodes included), launch and graph
    launch calls, CUDA API calls, summed kernel time, and the window's wall time
    (first to last CUDA event) as ``step_us``."""
    kernels = _kernel_events(events)
    api = [e for e in events if e.get("cat") in API_CATS and e.get("ph") == "X"]
    timed = kernels + api
    span = (max(e["ts"] + e.get("dur", 0) for e in timed) - min(e["ts"] for e in timed)) if timed else 0.0
    totals = {"kernels": len(kernels), "launch_calls": sum(1 for e in api if _is_launch(e["name"])),
              "graph_launches": sum(1 for e in api if e["name"].startswith("cudaGraphLaunch")),
              "api_calls": len(api), "gpu_us": float(sum(e.get("dur", 0) for e in kernels)),
              "step_us": float(span)}
    kv = [e for e in kernels if KV_WRITE.search(e.get("name", ""))]
    totals.update(kv_kernels=len(kv), kv_gpu_us=float(sum(e.get("dur", 0) for e in kv)))
    return {k: v / steps for k, v in totals.items()} if steps else {}


def kernel_family(name: str) -> str:
    """A demangled kernel name without its return type, ``(anonymous namespace)::`` and its
    template and call arguments: ``void (anonymous namespace)::k<4>(int)`` is ``k``. Cutting
    at the first ``(`` alone would merge every anonymous-namespace kernel into one ``void``."""
    name = name.strip().removeprefix("void ").replace("(anonymous namespace)::", "")
    return re.split(r"[(<]", name, maxsplit=1)[0].strip() or "?"


def kernel_table(events: list[dict], steps: int, top: int = 20) -> list[dict]:
    """GPU µs per verify step by kernel name (graph nodes included), largest first: where
    the device time of a step goes, beside the host phases of tools/measure_latency.py.
    Template instances of one kernel add up (see ``kernel_family``)."""
    if not steps:
        return []
    by_name: dict[str, list[float]] = {}
    for e in _kernel_events(events):
        name = kernel_family(e.get("name", ""))
        by_name.setdefault(name, []).append(float(e.get("dur", 0)))
    rows = [{"kernel": k, "us_per_step": sum(v) / steps, "launches_per_step": len(v) / steps,
             "us_per_launch": sum(v) / len(v)} for k, v in by_name.items()]
    return sorted(rows, key=lambda r: -r["us_per_step"])[:top]


def steps_by_kernel(events: list[dict], pattern: str) -> int:
    rx = re.compile(pattern)
    return sum(1 for e in events if e.get("cat") == "kernel" and rx.search(e.get("name", "")))


def update_profile(profile: Path, steps_kernel: str) -> None:
    """(Re)compute ``window`` and ``verify_steps`` for the runs of a profile.json whose trace is there."""
    data = json.loads(profile.read_text())
    for run in data.get("runs", []):
        if not run.get("trace") or not (profile.parent / run["trace"]).exists():
            continue
        events = load(profile.parent / run["trace"])
        run["verify_steps"] = steps_by_kernel(events, steps_kernel)
        run["verify_steps_from"] = f"kernel /{steps_kernel}/"
        run["window"] = window_stats(events, run["verify_steps"])
    profile.write_text(json.dumps(data, indent=1))


def main() -> int:
    args = sys.argv[1:]
    if args[:1] == ["--update-profile"]:
        update_profile(Path(args[1]), args[args.index("--steps-kernel") + 1])
        return 0
    if args[:1] == ["--kernels"]:
        for path in args[2:]:
            events = load(Path(path))
            steps = steps_by_kernel(events, args[1])
            print(f"{path}: {steps} verify steps (kernel /{args[1]}/)")
            print("| kernel | GPU µs/step | launches/step | µs/launch |\n|---|---|---|---|")
            for r in kernel_table(events, steps):
                print(f"| `{r['kernel'][:80]}` | {r['us_per_step']:.1f} | {r['launches_per_step']:.2f} "
                      f"| {r['us_per_launch']:.1f} |")
        return 0
    for path in args:
        print(path, json.dumps(summarize(load(Path(path))), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
