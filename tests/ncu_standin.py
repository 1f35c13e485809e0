#!/usr/bin/env python3
"""Test stand-in for the Nsight Compute CLI (``ncu`` needs a GPU), for the CPU test of
tools/measure_ncu.py's orchestration: it does not start the engine; it waits
NCU_STANDIN_SLEEP seconds, then writes what ncu and the plugin's profiler window would
leave (per batch size one range, or with kernel replay one marked step, in the CSV; one
line per step in the step log) and
appends to NCU_STANDIN_RECORD the GPU and plugin mode it was started with."""

import json
import os
import sys
import time

args = sys.argv[1:]
csv_path = args[args.index("--log-file") + 1]
t0 = time.time()
time.sleep(float(os.environ.get("NCU_STANDIN_SLEEP", "1")))
sizes = [int(b) for b in os.environ["SGLANG_NWOR_SCV_PROFILE_BS"].split(",")]
head = '"ID","Process ID","Kernel Name","Metric Name","Metric Unit","Metric Value"'
# app-range replay: one result per profiler range (step); kernel replay: one per kernel
per_step = ([("range", 1000 * bs)] if "app-range" in args
            else [("spin_kernel(long)", 0), ("store_kvcache<2048>", 1000 * bs)] for bs in sizes)
lines, kid = [head], 0
for results in per_step:
    for name, written in results:
        lines.append(f'"{kid}","7","{name}","dram__bytes_write.sum","byte","{written}"')
        kid += 1
with open(os.environ["SGLANG_NWOR_SCV_PROFILE_LOG"], "a") as f:
    f.writelines(json.dumps({"bs": bs, "index": 2}) + "\n" for bs in sizes)
with open(csv_path, "w") as f:
    f.write("==PROF== Disconnected\n" + "\n".join(lines) + "\n")
with open(os.environ["NCU_STANDIN_RECORD"], "a") as f:
    f.write(json.dumps({"gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "t0": t0, "t1": time.time(),
                        "nwor": os.environ.get("SGLANG_NWOR_MODE"),
                        "plugins": os.environ.get("SGLANG_PLUGINS")}) + "\n")
