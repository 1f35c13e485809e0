"""Nsight Compute check: the NWOR commit kernel writes exactly committed rows x row bytes.

Three phases, each profiled by ncu under its own NVTX range:
  nwor_commit      our one-launch commit of the accepted rows (all layers)
  upstream_write   SGLang's per-layer set_kv_buffer of every verify row (the baseline)
  commit_evict     the commit, then a read of a buffer larger than L2 (under
                   ``--cache-control none``): the read evicts the lines the commit left
                   dirty in L2, so the two kernels' DRAM writes are all the commit wrote
                   plus the read's own;
  evict_only       the same read once more, after an eviction: its own DRAM writes, which
                   are subtracted (run 5 measured commit_evict at 1.035 x the formula).

    python tools/ncu_commit_kv.py --out OUT_DIR [--bs 128 --n 8 --kv bf16]

runs ncu itself (``ncu --nvtx --nvtx-include <range>/``) on this same script in
``--child`` mode, sums ``dram__bytes_write.sum``, ``dram__bytes_read.sum`` and
``lts__t_sectors_op_write.sum`` over each phase's kernels, compares with the
byte formula and writes OUT_DIR/ncu_commit_kv.json. Shapes are chosen so the
written bytes exceed L2 (so DRAM sees them during the kernel).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METRICS = ["dram__bytes_write.sum", "dram__bytes_read.sum", "lts__t_sectors_op_write.sum",
           "gpu__time_duration.sum"]


def child(args) -> None:
    import torch

    sys.path.insert(0, str(REPO))
    from tests.gpu.bench_commit_kv import KV_DTYPES, Setup

    s = Setup(KV_DTYPES[args.kv], args.bs, args.n)
    s.check()
    # Reading 4x L2 evicts whatever is dirty in it (output: one float per block).
    big = torch.ones(4 * torch.cuda.get_device_properties(0).L2_cache_size // 4, device="cuda")
    partial = torch.empty((), device="cuda")

    def evict():
        torch.sum(big, dim=0, out=partial)

    torch.cuda.synchronize()
    with torch.cuda.nvtx.range("nwor_commit"):
        s.ours()
    torch.cuda.synchronize()
    with torch.cuda.nvtx.range("upstream_write"):
        s.upstream()
    torch.cuda.synchronize()
    evict()
    torch.cuda.synchronize()
    with torch.cuda.nvtx.range("commit_evict"):
        s.ours()
        evict()
    torch.cuda.synchronize()
    evict()
    torch.cuda.synchronize()
    with torch.cuda.nvtx.range("evict_only"):
        evict()
    torch.cuda.synchronize()
    print(json.dumps({"committed_rows": s.committed_rows, "verify_rows": args.bs * args.n}))


def _ncu(args, nvtx_range: str, cache_control: str = "all", metrics=METRICS) -> dict:
    cmd = ["ncu", "--csv", "--metrics", ",".join(metrics), "--nvtx",
           "--nvtx-include", f"{nvtx_range}/", "--cache-control", cache_control,
           "--clock-control", "none", sys.executable, __file__, "--child",
           "--bs", str(args.bs), "--n", str(args.n), "--kv", args.kv]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"ncu failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    from tools.measure_ncu import parse_csv  # the one ncu CSV reader

    kernels = parse_csv(out.stdout, metrics)
    sums = {m: sum(k["metrics"].get(m, 0.0) for k in kernels) for m in metrics}
    child_json = json.loads([ln for ln in out.stdout.splitlines() if ln.startswith("{")][-1])
    return {"ncu_metrics": sums, "kernels": len(kernels), **child_json,
            "kernel_names": sorted({k["name"] for k in kernels})[:8]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--bs", type=int, default=128)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--kv", default="bf16")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out")))
    args = ap.parse_args()
    if args.child:
        child(args)
        return 0
    sys.path.insert(0, str(REPO))
    from tests.gpu.bench_commit_kv import KV_DTYPES, traffic

    ours, upstream = _ncu(args, "nwor_commit"), _ncu(args, "upstream_write")
    # one replay pass only (DRAM counters), so the eviction sees the commit's dirty lines
    evicted = _ncu(args, "commit_evict", "none", ["dram__bytes_write.sum", "dram__bytes_read.sum"])
    evict_alone = _ncu(args, "evict_only", "none", ["dram__bytes_write.sum", "dram__bytes_read.sum"])
    expect_ours, _ = traffic(ours["committed_rows"], KV_DTYPES[args.kv])
    expect_up, _ = traffic(ours["verify_rows"], KV_DTYPES[args.kv])
    w = ours["ncu_metrics"]["dram__bytes_write.sum"]
    l2 = ours["ncu_metrics"]["lts__t_sectors_op_write.sum"] * 32
    ew = (evicted["ncu_metrics"]["dram__bytes_write.sum"]
          - evict_alone["ncu_metrics"]["dram__bytes_write.sum"])
    report = {
        "shape": {"layers": 32, "kv_heads": 8, "head_dim": 128, "bs": args.bs, "n": args.n,
                  "kv": args.kv},
        "expected_bytes": {"nwor_commit": expect_ours, "upstream_write": expect_up},
        "per_mode": [{"mode": "nwor_commit", **ours}, {"mode": "upstream_write", **upstream},
                     {"mode": "commit_then_evict_l2", **evicted},
                     {"mode": "evict_l2_only", **evict_alone}],
        "dram_write_vs_formula": w / expect_ours,
        "dram_write_with_eviction_vs_formula": ew / expect_ours,  # minus the read's own writes
        "l2_write_vs_formula": l2 / expect_ours,
        "within_2pct": abs(ew / expect_ours - 1) <= 0.02,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"ncu_commit_kv_{args.kv}_bs{args.bs}_n{args.n}.json").write_text(
        json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("expected_bytes", "dram_write_vs_formula",
                                              "dram_write_with_eviction_vs_formula",
                                              "l2_write_vs_formula", "within_2pct")}, indent=2))
    for m in report["per_mode"]:
        print(m["mode"], m["kernels"], "kernels", {k: f"{v:.4g}" for k, v in m["ncu_metrics"].items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
