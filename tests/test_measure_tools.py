"""The measurement tools on the real engine (CPU: tiny model pair, Triton interpreter).

tools/measure_engine.py runs SGLang's own profiler; the plugin's ``verify_step``,
``scv_compute_mask`` and ``nwor_commit`` ranges must appear in the Chrome trace once
per verify step, and tools/trace_stats.py must reduce them. tools/measure_ncu.py's
CSV reduction is checked on a hand-written ncu CSV (ncu needs a GPU).
"""

from __future__ import annotations

import json
from pathlib import Path
import subprocess
import sys

import pytest

from tools.engine_run import REPO
from tools.measure_ncu import parse_csv, split_steps, step_metrics
from tools.trace_stats import kernel_family, kernel_table, steps_by_kernel, window_stats


@pytest.mark.engine
def test_profile_ranges_once_per_verify_step(tmp_path, tiny_models):
    cmd = [sys.executable, str(REPO / "tools" / "measure_engine.py"), "--out", str(tmp_path),
           "--model", "tiny", "--specs", "ngram-tree", "--modes", "plugin-off,off,nwor+scv",
           "--bs", "2", "--sampling", "greedy", "--tokens", "24", "--profile-bs", "2",
           "--profile-tokens", "10", "--no-gpm", "--repeats", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    points = json.loads((tmp_path / "sweep.json").read_text())["points"]
    assert [p["mode"] for p in points] == ["plugin-off", "off", "nwor+scv"]
    assert all(p["tokens"] == 48 and p["throughput_tok_s"] > 0 for p in points), points
    assert all(len(p["wall_s_runs"]) == 2 and min(p["wall_s_runs"]) <= p["wall_s"] for p in points)
    on = points[-1]["invariants"]
    assert on is not None and on["staged"] > on["committed"] == on["accepted"] > 0, on
    assert on["violations"] == 0
    runs = {r["mode"]: r for r in json.loads((tmp_path / "profile.json").read_text())["runs"]}
    assert runs["plugin-off"]["steps"] == 0  # no plugin, no ranges
    # the whole-window count serves every mode alike, plugin off included
    assert all(r["verify_steps"] >= 3 and r["window"] is not None for r in runs.values()), runs
    for mode in ("off", "nwor+scv"):
        r = runs[mode]
        assert r["steps"] >= 3, r
        assert r["ranges"]["scv_compute_mask"]["count"] >= r["steps"] - 1, r
        assert r["ranges"]["nwor_commit"]["count"] >= r["steps"] - 1, r
        assert r["per_step"]["host_us"] > r["ranges"]["scv_compute_mask"]["host_us"] > 0
        assert (tmp_path / r["trace"]).exists()


def _csv(rows):
    head = '"ID","Process ID","Kernel Name","Metric Name","Metric Unit","Metric Value"'
    lines = [head] + [f'"{i}","7","{k}","{m}","{u}","{v}"' for i, k, m, u, v in rows]
    return "==PROF== Connected\n" + "\n".join(lines) + "\n"


def test_ncu_csv_reduced_per_marked_step():
    w, r, t, p = ("dram__bytes_write.sum", "dram__bytes_read.sum", "gpu__time_duration.sum",
                  "dram__throughput.avg.pct_of_peak_sustained_elapsed")
    text = _csv([
        (0, "spin_kernel(long)", w, "byte", "0"), (0, "spin_kernel(long)", t, "nsecond", "1"),
        (1, "gemm", w, "Kbyte", "2"), (1, "gemm", r, "Mbyte", "1,000"), (1, "gemm", t, "usecond", "3"),
        (1, "gemm", p, "%", "50"),
        (2, "store_kvcache<2048>", w, "byte", "500"), (2, "store_kvcache<2048>", t, "usecond", "1"),
        (2, "store_kvcache<2048>", p, "%", "10"),
        (3, "spin_kernel(long)", w, "byte", "0"),
        (4, "gemm", w, "byte", "7"),
    ])
    steps = split_steps(parse_csv(text))
    assert [len(s) for s in steps] == [2, 1]
    m = step_metrics(steps[0])
    assert m[w] == 2000 + 500 and m[r] == 1e9 and m[t] == 4000
    assert m[p] == pytest.approx((50 * 3000 + 10 * 1000) / 4000)  # time-weighted
    assert step_metrics(steps[1])[w] == 7


def test_window_stats_divide_the_whole_trace_by_verify_steps():
    def ev(cat, name, ts, dur):
        return {"cat": cat, "name": name, "ph": "X", "ts": ts, "dur": dur, "pid": 1, "tid": 1}

    events = [ev("cuda_runtime", "cudaLaunchKernel", 0, 5), ev("kernel", "verify_tree", 10, 20),
              ev("cuda_runtime", "cudaGraphLaunch", 40, 5), ev("kernel", "gemm", 50, 100),
              ev("kernel", "gemm", 150, 50), ev("cuda_runtime", "cudaLaunchKernel", 300, 5),
              ev("kernel", "verify_tree", 310, 90), ev("user_annotation", "verify_step", 0, 500)]
    assert steps_by_kernel(events, "verify_tree") == 2
    events.append(ev("kernel", "commit_accepted_kv_kernel", 400, 10))
    w = window_stats(events, 2)
    assert w == {"kernels": 2.5, "launch_calls": 1.0, "graph_launches": 0.5, "api_calls": 1.5,
                 "gpu_us": 135.0, "step_us": 205.0, "kv_kernels": 0.5, "kv_gpu_us": 5.0}
    assert window_stats(events, 0) == {}
    table = kernel_table(events + [ev("kernel", "gemm<128, 64>(float)", 500, 30)], 2)
    assert [r["kernel"] for r in table] == ["gemm", "verify_tree", "commit_accepted_kv_kernel"]
    assert table[0] == {"kernel": "gemm", "us_per_step": 90.0, "launches_per_step": 1.5,
                        "us_per_launch": 60.0}
    assert kernel_table(events, 0) == []
    assert kernel_family("void (anonymous namespace)::elementwise_kernel<4, 1>(int, float)") \
        == "elementwise_kernel"
    assert kernel_family("void at::native::reduce_kernel<512, 1>(R)") == "at::native::reduce_kernel"
    assert kernel_family("void (anonymous namespace)::softmax_warp_forward<float>(float*)") \
        != kernel_family("void (anonymous namespace)::elementwise_kernel<4, 1>(int, float)")


def test_ncu_modes_run_concurrently_one_per_gpu_each_with_its_own_env(tmp_path):
    """measure_ncu --gpus: two modes at once on two GPUs, each child with its own plugin
    env (built without touching the parent's os.environ), rows reduced per mode. ncu is
    replaced by tests/ncu_standin.py (the real one needs a GPU)."""
    import os

    record = tmp_path / "record.jsonl"
    # 5 s: long enough that the two children overlap even when one starts late on a loaded
    # 2-core machine (2 s failed once beside a CI run)
    env = dict(os.environ, NCU_STANDIN_SLEEP="5", NCU_STANDIN_RECORD=str(record))
    cmd = [sys.executable, str(REPO / "tools" / "measure_ncu.py"), "--out", str(tmp_path),
           "--specs", "ngram-tree", "--modes", "upstream,default", "--bs", "8,32",
           "--gpus", "0,1", "--ncu", str(REPO / "tests" / "ncu_standin.py"), "--timeout", "120"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    runs = [json.loads(x) for x in record.read_text().splitlines()]
    assert sorted(r["gpu"] for r in runs) == ["0", "1"]
    assert sorted(str(r["nwor"]) for r in runs) == ["None", "off"]  # default: no plugin variable
    assert all("nwor_scv" in r["plugins"] for r in runs)  # plugin modes load the plugin
    assert max(r["t0"] for r in runs) < min(r["t1"] for r in runs)  # they overlapped
    rows = json.loads((tmp_path / "ncu_whole_step.json").read_text())["summary"]["per_mode"]
    got = {(r["mode"], r["bs"]): r["ncu_metrics"]["dram__bytes_write.sum"] for r in rows}
    assert got == {(m, bs): 1000.0 * bs for m in ("upstream", "default")
                   for bs in (8, 32)}
    assert all(r["replay"] == "app-range" and r["kv_write_kernels"] is None for r in rows)
    # --reduce rebuilds the same rows from the stored CSVs and step logs
    again = subprocess.run([*cmd[:2], "--out", str(tmp_path / "again"), "--specs", "ngram-tree",
                            "--modes", "upstream,default", "--bs", "8,32",
                            "--reduce", str(tmp_path / "ncu_analysis")], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    rows_again = json.loads((tmp_path / "again" / "ncu_whole_step.json").read_text())["summary"]["per_mode"]
    assert {(r["mode"], r["bs"]): r["ncu_metrics"]["dram__bytes_write.sum"] for r in rows_again} == got


def test_ncu_session_console_is_stamped_and_a_timeout_kills_every_process(tmp_path):
    """A mode cut at its timeout leaves no engine behind (a grandchild in the same
    session, as SGLang's scheduler is under ncu), and its console says when each line
    came and that it was cut."""
    import os

    from tools.measure_ncu import run_in_own_session

    pid_file = tmp_path / "grandchild.pid"
    script = ("import subprocess, sys, time\n"
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
              "print('engine up', flush=True)\n"
              "time.sleep(60)\n")
    console = tmp_path / "console.txt"
    # 10 s: the child's interpreter start, its own child and the pid file must fit inside
    # the timeout on a loaded 2-core CI machine (3 s failed once beside a CI run)
    rc = run_in_own_session([sys.executable, "-c", script], console, timeout=10)
    text = console.read_text()
    assert rc < 0 and "timed out after 10 s" in text
    assert any(line.startswith("[") and line.endswith("s] engine up") for line in text.splitlines())
    grandchild = int(pid_file.read_text())
    try:
        os.kill(grandchild, 0)
        alive = open(f"/proc/{grandchild}/stat").read().split()[2] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        alive = False
    assert not alive


def test_resident_engines_refused_when_they_cannot_fit_together():
    """Run 26's first call started four 8B-shaped engines on an H100 and lost one to memory
    after a minute of capture; the pre-flight check says so before anything starts."""
    from tools.measure_latency import resident_fit
    from tools.realistic_model import kv_row_bytes, weight_bytes

    gib = 1 << 30
    assert 15.9e9 < weight_bytes(32) < 16.2e9  # Llama-3-8B in bf16: 8.03 B parameters
    pool = 128 * (32 + 512 + 64)
    assert pool * kv_row_bytes(32) > 10e9
    assert resident_fit(4, 32, pool, 139 * gib) is None  # an H200 holds run 23's four
    why = resident_fit(4, 32, pool, 79 * gib)  # an H100 does not
    assert why and "room for 2" in why and "--modes" in why
    assert resident_fit(3, 32, 32 * (32 + 512 + 64), 79 * gib) is None  # bs <= 32: three fit


def test_small_shape_is_llama_3_2_1b(tmp_path):
    """Issue 14's host-bound shape (16 layers, hidden 2048): the config SGLang loads has
    Llama-3.2-1B's head dim and tied embeddings, and the memory model counts its 1.24 B
    parameters, so resident_fit lets more of its engines share a card than 8B ones."""
    from transformers import AutoConfig

    from tools.measure_latency import resident_fit, staging_budget_alone
    from tools.realistic_model import SHAPE_NAMES, SHAPES, kv_row_bytes, weight_bytes, write_model

    assert SHAPE_NAMES.keys() == SHAPES.keys()  # every shape has its report name
    cfg = AutoConfig.from_pretrained(write_model(tmp_path / "m", "llama3.2-1b"))
    shape = (cfg.num_hidden_layers, cfg.hidden_size, cfg.head_dim, cfg.num_key_value_heads)
    assert shape == (16, 2048, 64, 8)
    assert cfg.tie_word_embeddings
    assert abs(weight_bytes(16, shape="llama3.2-1b") / 2 - 1.2358e9) < 1e6  # Llama-3.2-1B's count
    assert kv_row_bytes(16, shape="llama3.2-1b") == 2 * 16 * 8 * 64 * 2
    gib, pool = 1 << 30, 128 * (32 + 512 + 64)
    assert resident_fit(4, 16, pool, 79 * gib, shape="llama3.2-1b") is None  # 8B: room for 2
    assert staging_budget_alone(80 * gib, 16, "llama3.2-1b") > staging_budget_alone(80 * gib, 32)


def test_eagle3_latency_spec_gets_a_dummy_head_reading_existing_layers(tmp_path):
    """``--spec eagle3-chain`` on the Llama-3-8B shape: the engine arguments name a dummy
    EAGLE3 head whose auxiliary layers exist in the target, and plain decoding drops it.
    SGLang captures the input of layer ``id + 1`` (llama.py ``set_eagle3_layers_to_capture``),
    so every id is at most L - 2; a 3-layer target left one capture out and the head's
    ``fc`` failed on the first draft (found by a CPU run of measure_latency)."""
    from tools.measure_engine import build_engine_kwargs
    from tools.realistic_model import write_llama3_8b

    with pytest.raises(ValueError, match="needs >= 4 layers"):
        build_engine_kwargs("llama3-8b", "eagle3-chain", write_llama3_8b(tmp_path / "t3", 3), max_bs=8)
    for layers in (32, 8, 4):
        target = write_llama3_8b(tmp_path / f"t{layers}", layers)
        kw = build_engine_kwargs("llama3-8b", "eagle3-chain", target, max_bs=8)
        assert kw["speculative_algorithm"] == "EAGLE3" and kw["speculative_draft_load_format"] == "dummy"
        head = json.loads((Path(kw["speculative_draft_model_path"]) / "config.json").read_text())
        aux = head["eagle_config"]["eagle_aux_hidden_state_layer_ids"]
        assert len(set(aux)) == 3 and all(0 <= a and a + 1 < layers for a in aux)
        plain = build_engine_kwargs("llama3-8b", "eagle3-chain", target, max_bs=8, mode="no-spec")
        assert not any(k.startswith("speculative_") for k in plain)
        assert kw["attention_backend"] == plain["attention_backend"] == "triton"
    fa3 = build_engine_kwargs("llama3-8b", "ngram-tree-n8", target, max_bs=8, attention_backend="fa3")
    assert fa3["attention_backend"] == "fa3"
