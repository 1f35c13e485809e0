"""Host µs of one kernel launch right after a CUDA-graph replay, against the same launch
on an idle GPU (issue 14).

Why: the engine's phase clocks read 55-85 µs for each of the plugin's launches (runs 56,
61, 69), a loop on the same card 11 µs (run 58). If a launch queued behind a replayed graph
costs that much host time, the plugin's post-verify launches belong inside the verify
graph (issue 14 item 2) rather than in faster launchers. This measures it without SGLang:
a graph of ``--layers`` GEMMs at a decode shape (the verify forward's stand-in), then one
launch (the plugin's launcher on a small Triton kernel, or a torch op), timed on the host
with ``perf_counter_ns``; every iteration ends with a synchronize outside the timed part.
A second hypothesis is the host itself: in the engine, a launch runs between thousands of
lines of other Python, with cold instruction and data caches. The ``after other host work``
cases put a few hundred microseconds of unrelated host work (JSON, regex, small CPU tensor ops)
before the timed launch.

    python tools/launch_probe.py --out OUT_DIR   (GPU only)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from time import perf_counter_ns

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@triton.jit
def _add_one(x_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=m) + 1, mask=m)


_OTHER: dict = {}  # the other host work's inputs, built on its first call


def _other_host_work() -> None:
    """A few hundred microseconds of host work unrelated to the launch: what a scheduler runs
    between two of the plugin's launches, in kind if not in detail."""
    import re

    state = _OTHER
    if not state:
        state["doc"] = {f"req{i}": {"ids": list(range(i, i + 40)), "text": "tok " * 20} for i in range(40)}
        state["rx"] = re.compile(r"(\w+) (\d+)")
        state["t"] = torch.arange(256, dtype=torch.int64)
    blob = json.dumps(state["doc"])
    state["rx"].findall(blob[:4000])
    t = state["t"]
    for _ in range(8):
        t = (t + 1)[:256].clone()
    sorted(json.loads(blob).items())


def _timed(fn) -> int:
    t0 = perf_counter_ns()
    fn()
    return perf_counter_ns() - t0


def probe(layers: int, iters: int, tokens: int, hidden: int, inter: int) -> dict:
    from sglang_nwor_scv.kernels.launcher import launch

    dev = torch.device("cuda")
    x = torch.randn(tokens, hidden, device=dev, dtype=torch.bfloat16)
    w = torch.randn(hidden, inter, device=dev, dtype=torch.bfloat16) / hidden**0.5
    w2 = torch.randn(inter, hidden, device=dev, dtype=torch.bfloat16) / inter**0.5
    small = torch.zeros(1024, device=dev, dtype=torch.int32)

    def forward():
        h = x
        for _ in range(layers):
            h = (h @ w) @ w2
        return h

    def triton_launch():
        launch(_add_one, (1,), (small, small.numel()), {"BLOCK": 1024})

    def torch_launch():
        small.add_(1)

    for _ in range(3):  # compile, keep the launcher's kernel, warm cuBLAS
        forward()
        triton_launch()
        torch_launch()
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        forward()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        forward()
    torch.cuda.synchronize()
    t0 = perf_counter_ns()
    graph.replay()
    torch.cuda.synchronize()
    graph_us = (perf_counter_ns() - t0) / 1e3

    cases = {
        "triton, idle GPU": (None, triton_launch),
        "triton, after graph replay": (graph.replay, triton_launch),
        "triton, after eager forward": (forward, triton_launch),
        "triton, after other host work": (_other_host_work, triton_launch),
        "triton, after graph replay and other host work": (lambda: (graph.replay(), _other_host_work()),
                                                            triton_launch),
        "torch add_, idle GPU": (None, torch_launch),
        "torch add_, after graph replay": (graph.replay, torch_launch),
    }
    out = {}
    for _ in range(2):  # two passes, cases interleaved; the second is kept
        samples = {k: [] for k in cases}
        for _ in range(iters):
            for name, (before, fn) in cases.items():
                if before is not None:
                    before()
                samples[name].append(_timed(fn))
                torch.cuda.synchronize()
        # four launches in a row after a replay: is only the first one slow?
        chain = [[] for _ in range(4)]
        for _ in range(iters):
            graph.replay()
            for i in range(4):
                chain[i].append(_timed(triton_launch))
            torch.cuda.synchronize()
    for name, s in samples.items():
        out[name] = {"median_us": statistics.median(s) / 1e3,
                     "p10_us": sorted(s)[len(s) // 10] / 1e3, "p90_us": sorted(s)[9 * len(s) // 10] / 1e3}
    for i, s in enumerate(chain):
        out[f"triton, launch {i + 1} of 4 after graph replay"] = {"median_us": statistics.median(s) / 1e3}
    return {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "graph_gpu_us": graph_us, "layers": layers, "iters": iters, "cases": out}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--inter", type=int, default=14336)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("launch_probe: needs a GPU", file=sys.stderr)
        return 2
    res = probe(args.layers, args.iters, args.tokens, args.hidden, args.inter)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "launch_probe.json").write_text(json.dumps(res, indent=1))
    print(f"{res['card']}: graph of {res['layers']} x 2 GEMMs, {res['graph_gpu_us']:.0f} µs on the GPU")
    for name, c in res["cases"].items():
        print(f"  {name}: {c['median_us']:.1f} µs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
