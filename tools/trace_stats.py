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

    python tools/trace_stats.py TRACE.json[.gz]
"""

from __future__ import annotations

import bisect
import gzip
import json
import statistics
import sys
from pathlib import Path

RANGES = ("verify_step", "scv_compute_mask", "nwor_commit")
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


def main() -> int:
    for path in sys.argv[1:]:
        print(path, json.dumps(summarize(load(Path(path))), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
