"""Repro: SGLang's post-verify KV move at 32-1,024 rows, three ways, on one real pool.

Builds SGLang's ``MHATokenToKVPool`` at a named shape (default Llama-3-8B: 32 layers,
8 KV heads, head dim 128, bf16) and moves the accepted tree paths of ``rows / 4``
requests (8-token windows, each accepting nodes 0, 2, 4, 6: ``rows`` entries, of which
the root's is already in place), as ``move_accept_tokens_to_target_kvcache`` does
after a tree verify:

- ``upstream``: ``MHATokenToKVPool.move_kv_cache`` (SGLang's default:
  ``copy_all_layer_kv_cache_tiled``, chunks of up to 256 rows per launch);
- ``native``: the same pool with ``SGLANG_NATIVE_MOVE_KV_CACHE=1``'s path
  (``move_kv_cache_native``: two index copies per layer);
- ``plugin``: sglang-nwor-scv's one-launch move (``kernels/move_kv.py``), which builds
  its list from the acceptance outputs and skips rows already in place.

Per (provider, rows): in how many fresh trials the provider's bytes equal the move's spec
(torch gather-then-scatter), device us per call (CUDA events over back-to-back calls,
median of repeats), host us per call, kernel launches per call, and the bytes the move
must copy (formula). With ``--ncu`` it reruns itself under Nsight Compute (kernel
replay, caches flushed before each kernel) and adds, summed over each call's kernels:
DRAM bytes written and read, local-memory (spill) bytes, and the largest
registers-per-thread; Triton's own register/spill report of each compiled kernel is
recorded too.

    python tools/move_kv_repro.py --out OUT [--rows 32,64,128,256,1024] [--ncu]

Writes OUT/move_kv_repro.json and OUT/move_kv_repro.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {"llama3-8b": dict(layers=32, heads=8, head_dim=128),
          "llama3-70b-tp8": dict(layers=80, heads=1, head_dim=128)}
PATH = (0, 2, 4, 6)  # accepted nodes of each 8-token window
WINDOW = 8
PROVIDERS = ("upstream", "native", "plugin")
NCU_METRICS = ("dram__bytes_write.sum", "dram__bytes_read.sum", "gpu__time_duration.sum",
               "l1tex__t_bytes_pipe_lsu_mem_local_op_st.sum", "l1tex__t_bytes_pipe_lsu_mem_local_op_ld.sum",
               "launch__registers_per_thread")
MARKER = "spin_kernel"


def make_pool(shape: dict, dtype, slots: int, native: bool):
    import torch
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool

    pool = MHATokenToKVPool(size=slots, page_size=1, dtype=dtype, head_num=shape["heads"],
                            head_dim=shape["head_dim"], layer_num=shape["layers"], device="cuda",
                            enable_memory_saver=False, enable_kv_cache_copy=True)
    pool.use_native_move_kv_cache = native  # what SGLANG_NATIVE_MOVE_KV_CACHE=1 sets
    g = torch.Generator(device="cuda").manual_seed(0)
    for buf in [*pool.k_buffer, *pool.v_buffer]:
        b = buf.view(torch.uint8)
        b.copy_(torch.randint(0, 256, b.shape, generator=g, device="cuda", dtype=torch.uint8))
    return pool


def move_inputs(rows: int):
    """Acceptance outputs and upstream's (tgt, src) lists for ``rows`` entries."""
    import torch

    bs = rows // len(PATH)
    loc = torch.arange(1, bs * WINDOW + 1, device="cuda", dtype=torch.int64)
    accept_index = torch.full((bs, WINDOW), -1, dtype=torch.int32, device="cuda")
    path = torch.tensor(PATH, device="cuda", dtype=torch.int32)
    accept_index[:, : len(PATH)] = torch.arange(bs, device="cuda", dtype=torch.int32)[:, None] * WINDOW + path
    num_correct = torch.full((bs,), len(PATH) - 1, dtype=torch.int32, device="cuda")
    valid = accept_index[:, : len(PATH)].long()
    tgt = loc.view(bs, WINDOW)[:, : len(PATH)].reshape(-1).contiguous()
    src = loc[valid].reshape(-1).contiguous()
    return accept_index, num_correct, loc, tgt, src


def providers(shape: dict, dtype, rows: int) -> dict:
    """name -> (pool, zero-argument call doing one move)."""
    from sglang_nwor_scv.kernels.move_kv import KVMovePlan

    accept_index, num_correct, loc, tgt, src = move_inputs(rows)
    slots = loc.numel() + 8
    up, native, ours = (make_pool(shape, dtype, slots, n) for n in (False, True, False))
    plan = KVMovePlan.for_pool(ours)
    return {"upstream": (up, lambda: up.move_kv_cache(tgt, src)),
            "native": (native, lambda: native.move_kv_cache(tgt, src)),
            "plugin": (ours, lambda: plan.launch(accept_index, num_correct, loc))}


def row_bytes(shape: dict, dtype) -> int:
    """Bytes of one slot across every K and V buffer."""
    import torch

    item = 1 if dtype in (torch.float8_e4m3fn, torch.float8_e5m2) else dtype.itemsize
    return 2 * shape["layers"] * shape["heads"] * shape["head_dim"] * item


def spec_agreement(shape: dict, dtype, rows: int, trials: int) -> dict:
    """name -> in how many of ``trials`` fresh moves the provider left exactly the bytes of
    the move's spec (gather every accepted row, then scatter: ``move_accepted_kv_ref``).
    The paths overlap (node 2 is read by entry 1 and written by entry 2), so a copy that
    does not finish its reads before its writes can disagree, and only sometimes."""
    import torch

    from sglang_nwor_scv.kernels.move_kv import move_accepted_kv_ref

    agree = dict.fromkeys(PROVIDERS, 0)
    for _ in range(trials):
        calls = providers(shape, dtype, rows)
        accept_index, num_correct, loc, _, _ = move_inputs(rows)
        spec = make_pool(shape, dtype, loc.numel() + 8, False)
        move_accepted_kv_ref([*spec.k_buffer, *spec.v_buffer], accept_index, num_correct, loc)
        for name, (pool, call) in calls.items():
            call()
            torch.cuda.synchronize()
            agree[name] += all(torch.equal(a.view(torch.uint8), b.view(torch.uint8)) for a, b in
                               zip([*pool.k_buffer, *pool.v_buffer], [*spec.k_buffer, *spec.v_buffer],
                                   strict=True))
        del calls, spec
    return agree


def measure(args, shape: dict, dtype) -> list[dict]:
    import torch

    from tools.cuda_timing import launches_per_call

    out = []
    for rows in args.rows:
        agree = spec_agreement(shape, dtype, rows, args.trials)
        calls = providers(shape, dtype, rows)
        moved = rows - rows // len(PATH)  # the root of each path is already in place
        for name, (_, call) in calls.items():
            device = []
            for _ in range(args.repeats):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                start.record()
                for _ in range(args.iters):
                    call()
                end.record()
                torch.cuda.synchronize()
                device.append(start.elapsed_time(end) * 1e3 / args.iters)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(args.iters):
                call()
            host = (time.perf_counter() - t0) * 1e6 / args.iters
            torch.cuda.synchronize()
            out.append({"provider": name, "rows": rows, "rows_moved": moved,
                        "equals_spec": f"{agree[name]}/{args.trials}",
                        "device_us": statistics.median(device), "device_us_runs": device,
                        "host_us": host, "launches": launches_per_call(call),
                        "formula_bytes_moved": moved * row_bytes(shape, dtype)})
            print(json.dumps({k: out[-1][k] for k in ("provider", "rows", "device_us", "host_us",
                                                        "launches", "equals_spec")}), flush=True)
    return out


def triton_report() -> list[dict]:
    """Registers and spills Triton reports for each compiled variant of both kernels."""
    from sglang.kernels.ops.kvcache.cache_move import copy_all_layer_kv_cache_tiled

    from sglang_nwor_scv.kernels.move_kv import _move_accepted_kv_kernel

    rows = []
    for name, fn in (("copy_all_layer_kv_cache_tiled", copy_all_layer_kv_cache_tiled),
                     ("_move_accepted_kv_kernel", _move_accepted_kv_kernel)):
        for per_device in getattr(fn, "device_caches", {}).values():
            cache = per_device[0] if isinstance(per_device, tuple) else per_device
            for key, kernel in cache.items():
                rows.append({"kernel": name, "variant": str(key)[-160:],
                             "n_regs": getattr(kernel, "n_regs", None),
                             "n_spills": getattr(kernel, "n_spills", None)})
    return rows


def ncu_child(args, shape: dict, dtype) -> int:
    """Under ncu: each (rows, provider) once, after a marker kernel."""
    import torch

    for rows in args.rows:
        calls = providers(shape, dtype, rows)
        for _, call in calls.values():
            call()  # compile and warm outside the measured calls
        torch.cuda.synchronize()
        for name, (_, call) in calls.items():
            torch.cuda._sleep(1)  # marker: spin_kernel
            call()
            torch.cuda.synchronize()
            print(f"[ncu child] rows {rows} {name}", flush=True)
    return 0


def run_ncu(args) -> list[dict]:
    from tools.measure_ncu import parse_csv, split_steps

    csv_path = args.out / "move_kv_repro.ncu.csv"
    cmd = [args.ncu_bin, "--csv", "--log-file", str(csv_path), "--cache-control", "all",
           "--clock-control", "none", "--metrics", ",".join(NCU_METRICS), sys.executable, __file__,
           "--child", "--shape", args.shape, "--dtype", args.dtype, "--rows", ",".join(map(str, args.rows))]
    subprocess.run(cmd, check=True, timeout=args.timeout)
    kernels = parse_csv(csv_path.read_text(), NCU_METRICS)
    steps = split_steps(kernels)
    labels = [(rows, name) for rows in args.rows for name in PROVIDERS]
    if len(steps) != len(labels):
        raise RuntimeError(f"{len(steps)} marked calls in the ncu output, expected {len(labels)}")
    out = []
    for (rows, name), ks in zip(labels, steps, strict=True):
        def total(metric, ks=ks):
            return sum(k["metrics"].get(metric, 0.0) for k in ks)

        out.append({"provider": name, "rows": rows, "kernels": len(ks),
                    "kernel_names": sorted({k["name"][:60] for k in ks}),
                    "dram_write_bytes": total("dram__bytes_write.sum"),
                    "dram_read_bytes": total("dram__bytes_read.sum"),
                    "kernel_time_us": total("gpu__time_duration.sum") / 1e3,
                    "local_store_bytes": total("l1tex__t_bytes_pipe_lsu_mem_local_op_st.sum"),
                    "local_load_bytes": total("l1tex__t_bytes_pipe_lsu_mem_local_op_ld.sum"),
                    "max_registers_per_thread": max((k["metrics"].get("launch__registers_per_thread", 0)
                                                     for k in ks), default=0)})
    return out


def markdown(meta: dict, timing: list[dict], ncu: list[dict] | None, triton: list[dict]) -> str:
    lines = [f"# Post-verify KV move: upstream vs native vs one-launch ({meta['card']})", "",
             f"Pool: {meta['shape']} ({meta['layers']} layers, {meta['heads']} KV heads, head dim "
             f"{meta['head_dim']}, {meta['dtype']}); rows = entries moved per call ({len(PATH)} per "
             f"request, the root's already in place). sglang {meta['sglang']}, torch {meta['torch']}, "
             f"triton {meta['triton']}. Command: `{meta['command']}`.", "",
             "| rows | provider | device us (median) | host us | launches | bytes to move (MB) "
             "| equals the spec (trials) |", "|---|---|---|---|---|---|---|"]
    for r in timing:
        lines.append(f"| {r['rows']} | {r['provider']} | {r['device_us']:.1f} | {r['host_us']:.1f} | "
                     f"{r['launches']} | {r['formula_bytes_moved'] / 1e6:.2f} | {r['equals_spec']} |")
    if ncu:
        lines += ["", "Nsight Compute (kernel replay, caches flushed before each kernel), summed over the "
                  "call's kernels:", "",
                  "| rows | provider | kernels | DRAM write MB | DRAM read MB | local st MB | local ld MB "
                  "| max regs/thread | kernel us |", "|---|---|---|---|---|---|---|---|---|"]
        for r in ncu:
            lines.append(f"| {r['rows']} | {r['provider']} | {r['kernels']} | "
                         f"{r['dram_write_bytes'] / 1e6:.2f} | {r['dram_read_bytes'] / 1e6:.2f} | "
                         f"{r['local_store_bytes'] / 1e6:.2f} | "
                         f"{r['local_load_bytes'] / 1e6:.2f} | {r['max_registers_per_thread']:.0f} | "
                         f"{r['kernel_time_us']:.1f} |")
    if triton:
        lines += ["", "Triton's report per compiled variant:", "", "| kernel | regs | spills | variant |",
                  "|---|---|---|---|"]
        lines += [f"| {t['kernel']} | {t['n_regs']} | {t['n_spills']} | `{t['variant'][-70:]}` |"
                  for t in triton]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out")))
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama3-8b")
    ap.add_argument("--dtype", choices=("bfloat16", "float16", "float8_e4m3fn"), default="bfloat16")
    ap.add_argument("--rows", default="32,64,128,256,1024")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--trials", type=int, default=5, help="fresh moves checked against the spec")
    ap.add_argument("--ncu", action="store_true", help="also profile under Nsight Compute")
    ap.add_argument("--ncu-bin", default=shutil.which("ncu") or "/usr/local/cuda/bin/ncu")
    ap.add_argument("--timeout", type=int, default=300)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.rows = [int(x) for x in args.rows.split(",")]
    if any(r % len(PATH) for r in args.rows):
        ap.error(f"--rows must be multiples of {len(PATH)}")
    import sglang
    import torch
    import triton

    shape, dtype = SHAPES[args.shape], getattr(torch, args.dtype)
    if args.child:
        return ncu_child(args, shape, dtype)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = dict(card=torch.cuda.get_device_name(0), shape=args.shape, dtype=args.dtype, **shape,
                sglang=sglang.__version__, torch=torch.__version__, triton=triton.__version__,
                command="python tools/move_kv_repro.py " + " ".join(sys.argv[1:]))
    timing = measure(args, shape, dtype)
    triton_rows = triton_report()
    ncu = run_ncu(args) if args.ncu else None
    (args.out / "move_kv_repro.json").write_text(json.dumps(
        {"meta": meta, "timing": timing, "ncu": ncu, "triton": triton_rows}, indent=1))
    text = markdown(meta, timing, ncu, triton_rows)
    (args.out / "move_kv_repro.md").write_text(text)
    print(text)
    ours = [r for r in timing if r["provider"] == "plugin"]
    return 0 if all(r["equals_spec"] == f"{args.trials}/{args.trials}" for r in ours) else 1


if __name__ == "__main__":
    raise SystemExit(main())
