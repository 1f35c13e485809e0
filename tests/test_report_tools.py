"""CPU tests of the nightly measurement tools: tools/nightly_report.py, tools/gpm_sampler.py and
ci/gpu/check_budgets.py.

Every input built here is SYNTHETIC: round numbers picked so the expected arithmetic is obvious
(e.g. 100 MB off/off vs 60 MB NWOR = 40.0% reduction). None of them is a measurement. The
only real file read is reports/gpu/2026-11-27-h100-run2/bench.json, to check that the
parsers accept pytest-benchmark's real shape.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest

from tools import nightly_report
from tools.gpm_sampler import GpmSampler

REPO = Path(__file__).resolve().parents[1]
RUN2 = REPO / "reports/gpu/2026-11-27-h100-run2"
RUN4 = REPO / "reports/gpu/2026-11-27-h100-run4-suite"
CHECK_BUDGETS = REPO / "ci/gpu/check_budgets.py"
CARD = "SYNTHETIC GPU 80GB"


# ---- synthetic inputs ---------------------------------------------------------------------------
def _ncu_mode(mode, write, kv_write, spec="ngram-tree", bs=32):
    return {"mode": mode, "spec": spec, "bs": bs, "steps": 2, "kernels_per_step": 100.0,
            "ncu_metrics": {"dram__bytes_write.sum": write, "dram__bytes_read.sum": 2 * write,
                            "lts__t_sectors_op_write.sum": write / 32,
                            "dram__throughput.avg.pct_of_peak_sustained_elapsed": 50.0},
            "kv_write_kernels": {"dram__bytes_write.sum": kv_write, "dram__bytes_read.sum": kv_write,
                                 "lts__t_sectors_op_write.sum": kv_write / 32,
                                 "dram__throughput.avg.pct_of_peak_sustained_elapsed": 40.0,
                                 "kernels": 8.0}}  # fmt: skip


def _point(mode, bs, tput, lat, inv=None, sampling="greedy", spec="ngram-tree"):
    return {"spec": spec, "mode": mode, "sampling": sampling, "bs": bs, "requests": bs, "tokens": 64 * bs,
            "wall_s": 1.0, "throughput_tok_s": tput, "latency_ms_per_token": lat, "accept_length": 2.5,
            "gpm": {"dram_bw_util_pct": {"mean": 30.0, "max": 40.0, "n": 5}}, "invariants": inv}  # fmt: skip


def _bench(name, provider, median_s, device_us, group="commit_kv bf16 bs=1 N=4"):
    stats = {"median": median_s, "mean": median_s, "min": median_s, "max": median_s, "stddev": 0.0,
             "iqr": 0.0, "rounds": 20, "ops": 1 / median_s}  # fmt: skip
    return {"group": group, "name": name, "fullname": f"tests/gpu/bench_commit_kv.py::{name}",
            "params": {"kv_name": "bf16", "bs": 1, "n": 4, "provider": provider}, "param": name,
            "extra_info": {"device_us": device_us, "pool_bytes_written": 262144, "launches_formula": 1},
            "stats": stats}  # fmt: skip


def _bench_run(scale=1.0, drop=()):
    benches = [_bench("test_bench_commit_kv[bf16-1-4-ours]", "ours", 50e-6 * scale, 25.0),
               _bench("test_bench_commit_kv[bf16-1-4-upstream]", "upstream", 1000e-6 * scale, 900.0)]
    machine = {"system": "Linux", "python_implementation": "CPython", "python_version": "3.12.3",
               "cpu": {"bits": 64}}
    return {"machine_info": machine,
            "benchmarks": [b for b in benches if b["name"] not in drop], "datetime": "2026-01-01T00:00:00",
            "version": "5.2.3"}  # fmt: skip


def write_results(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "card.txt").write_text(f"{CARD}, 999.99, 81559 MiB\nsglang 0.0.0 torch 0.0 triton 0.0\n")
    (d / "ncu_whole_step.json").write_text(json.dumps({"summary": {"per_mode": [
        _ncu_mode("nwor_stage_scv_off", 60e6, 20e6), _ncu_mode("nwor_off_scv_off", 100e6, 50e6),
        _ncu_mode("nwor_off_scv_graph", 100e6, 50e6), _ncu_mode("nwor_stage_scv_graph", 55e6, 20e6)]}}))
    (d / "profile.json").write_text(json.dumps({"runs": [
        {"spec": "ngram-tree", "mode": "plugin-off", "bs": 32, "steps": 0, "verify_steps": 10,
         "window": {"kernels": 300.0, "launch_calls": 290.0, "graph_launches": 0.0, "api_calls": 400.0,
                    "gpu_us": 1500.0, "step_us": 2000.0}, "ranges": {}, "trace": "traces/off.json.gz"},
        {"spec": "ngram-tree", "mode": "scv", "bs": 32, "steps": 10, "verify_steps": 10,
         "window": {"kernels": 290.0, "launch_calls": 280.0, "graph_launches": 0.0, "api_calls": 380.0,
                    "gpu_us": 1490.0, "step_us": 1800.0},
         "ranges": {"scv_compute_mask": {"host_us": 20.0, "kernels": 1.0}}, "trace": None},
        {"spec": "ngram-tree", "mode": "nwor", "bs": 32, "steps": 10, "per_step": {}, "trace": None}]}))
    inv = {"steps": 10, "staged": 400, "committed": 250, "accepted": 250, "violations": 0}
    (d / "sweep.json").write_text(json.dumps({"card": CARD, "model": "synthetic", "graphs": True, "points": [
        _point("plugin-off", 1, 1000.0, 10.0), _point("nwor", 1, 1100.0, 9.0, inv),
        _point("plugin-off", 8, 4000.0, 20.0),
        dict(_point("nwor", 8, 3000.0, 25.0, inv), wall_s_runs=[0.9, 1.0, 1.2]),
        _point("off", 8, 4000.0, 20.0, {**inv, "staged": 0, "committed": 0, "accepted": 0})]}))
    (d / "bench.json").write_text(json.dumps(_bench_run()))
    (d / "kernels.xml").write_text(
        '<testsuites><testsuite name="pytest"><testcase classname="t" name="a"/><testcase classname="t" '
        'name="b"><failure message="x"/></testcase><testcase classname="t" name="c"><skipped/></testcase>'
        "</testsuite></testsuites>")
    return d


def _rows(data, key):
    return data[key]["rows"]


# ---- the report ---------------------------------------------------------------------------------
def test_report_arithmetic(tmp_path):
    data = nightly_report.build(write_results(tmp_path / "res"), tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == json.loads(json.dumps(data))

    dram = {r["mode"]: r for r in _rows(data, "dram_writes")}
    assert dram["nwor_off_scv_off"]["reduction_vs_off_pct"] is None  # the baseline itself
    assert dram["nwor_stage_scv_off"]["reduction_vs_off_pct"] == pytest.approx(40.0)  # (100 - 60) / 100
    assert dram["nwor_stage_scv_off"]["kv_reduction_vs_off_pct"] == pytest.approx(60.0)  # (50 - 20) / 50
    assert dram["nwor_stage_scv_graph"]["reduction_vs_off_pct"] == pytest.approx(45.0)
    assert dram["nwor_off_scv_graph"]["reduction_vs_off_pct"] == pytest.approx(0.0)
    assert dram["nwor_off_scv_off"]["l2_write_bytes"] == pytest.approx(100e6)  # sectors x 32 B
    assert "60.0 MB written per step, 40.0% fewer bytes than `nwor_off_scv_off`" in md
    assert [r["mode"] for r in _rows(data, "dram_writes")][0] == "nwor_off_scv_off"  # display order

    prof = {r["mode"]: r for r in _rows(data, "launches")}
    assert prof["scv"]["kernels_delta"] == pytest.approx(-10.0)
    assert prof["scv"]["step_us_change_pct"] == pytest.approx(-10.0)
    assert prof["scv"]["baseline_mode"] == "plugin-off" and prof["plugin-off"]["baseline_mode"] is None
    assert "nwor" not in prof  # a run without a whole-window count is left out, not guessed
    assert "`scv` vs `plugin-off`: kernels -10.0/step, launch calls -10.0/step" in md

    lat = {(r["mode"], r["bs"]): r for r in _rows(data, "latency")}
    assert lat[("nwor", 1)]["throughput_change_pct"] == pytest.approx(10.0)
    assert lat[("nwor", 1)]["latency_change_pct"] == pytest.approx(-10.0)
    assert lat[("nwor", 8)]["throughput_change_pct"] == pytest.approx(-25.0)  # a regression is shown as one
    assert lat[("nwor", 8)]["spread_pct"] == pytest.approx(30.0) and lat[("nwor", 8)]["runs"] == 3
    assert lat[("nwor", 1)]["spread_pct"] is None and lat[("nwor", 1)]["runs"] == 1
    assert lat[("plugin-off", 8)]["throughput_change_pct"] is None
    assert "| +10.0% |" in md and "| -25.0% |" in md and "30.0 / 40.0" in md

    inv = _rows(data, "invariants")
    assert [r["rejected_not_written"] for r in inv if r["mode"] == "nwor"] == [150, 150]
    assert data["invariants"]["all_ok"] and data["invariants"]["nwor_runs_staging_nothing"] == 0
    assert next(r for r in inv if r["mode"] == "off")["committed_equals_accepted"] is None  # nothing staged

    bench = {r["provider"]: r for r in _rows(data, "microbenchmarks")}
    assert bench["ours"]["host_speedup"] == pytest.approx(20.0)  # 1000 us / 50 us
    assert bench["ours"]["device_speedup"] == pytest.approx(36.0)  # 900 / 25
    assert bench["upstream"]["host_speedup"] is None

    kernels = data["tests"]["suites"]["kernels"]
    assert kernels == {"pass": 1, "fail": 1, "error": 0, "skip": 1, "failed": ["b"]}
    assert data["header"]["card"] == CARD and "not measured" not in md


def test_missing_inputs_say_not_measured(tmp_path):
    (tmp_path / "res").mkdir()
    data = nightly_report.build(tmp_path / "res", tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    for key in ("tests", "dram_writes", "launches", "latency", "invariants", "microbenchmarks"):
        assert data[key]["status"] == nightly_report.NOT_MEASURED, key
    assert md.count("not measured in this run") == 6
    assert "| " not in md and "MB" not in md and not list((tmp_path / "out").glob("*.png"))  # no numbers
    assert data["header"].get("card") is None and "card not recorded" in md


def test_unreadable_and_failed_inputs(tmp_path):
    res = write_results(tmp_path / "res")
    (res / "profile.json").write_text("{not json")
    sweep = json.loads((res / "sweep.json").read_text())
    sweep["points"].append({"spec": "ngram-chain", "mode": "nwor+scv", "error": "RuntimeError('boom')"})
    (res / "sweep.json").write_text(json.dumps(sweep))
    data = nightly_report.build(res, tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert data["launches"]["status"] == nightly_report.NOT_MEASURED
    assert "profile.json could not be read" in md
    assert data["latency"]["failed"][0]["error"] == "RuntimeError('boom')"
    assert "- ngram-chain `nwor+scv`: RuntimeError('boom')" in md


def test_no_baseline_means_no_comparison(tmp_path):
    res = write_results(tmp_path / "res")
    (res / "ncu_whole_step.json").write_text(json.dumps({"summary": {"per_mode": [
        _ncu_mode("nwor_stage_scv_off", 60e6, 20e6)]}}))
    sweep = json.loads((res / "sweep.json").read_text())
    sweep["points"] = [p for p in sweep["points"] if p["mode"] not in ("plugin-off", "off")]
    (res / "sweep.json").write_text(json.dumps(sweep))
    data = nightly_report.build(res, tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert _rows(data, "dram_writes")[0]["reduction_vs_off_pct"] is None
    assert "no `upstream` in this run, so no reduction computed" in md
    assert all(r["throughput_change_pct"] is None for r in _rows(data, "latency"))
    assert "No `plugin-off` points in this sweep" in md


def test_broken_invariants_are_flagged(tmp_path):
    res = write_results(tmp_path / "res")
    bad = {"steps": 10, "staged": 400, "committed": 249, "accepted": 250, "violations": 0}
    idle = {"steps": 10, "staged": 0, "committed": 0, "accepted": 0, "violations": 0}
    (res / "sweep.json").write_text(json.dumps({"points": [_point("nwor", 1, 1.0, 1.0, bad),
                                                           _point("nwor+scv", 1, 1.0, 1.0, idle)]}))
    data = nightly_report.build(res, tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert not data["invariants"]["all_ok"] and data["invariants"]["broken"] == 1
    assert "**1 of 2 runs break an invariant**" in md and "**NO**" in md
    assert "**1 runs in an NWOR mode staged nothing**" in md


def test_plots_written(tmp_path):
    pytest.importorskip("matplotlib")
    data = nightly_report.build(write_results(tmp_path / "res"), tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert data["plots"] == ["dram_writes.png", "launches_host.png", "latency_ngram-tree-greedy.png"]
    for name in data["plots"]:
        png = tmp_path / "out" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({name})" in md


def test_plots_skipped_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setattr(nightly_report, "_pyplot", lambda: None)
    data = nightly_report.build(write_results(tmp_path / "res"), tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "plots" not in data and not list((tmp_path / "out").glob("*.png"))
    assert md.count("skipped: matplotlib is not installed") == 3


def test_real_pytest_benchmark_shape(tmp_path):
    """The GPU suite's real bench.json (H100, run 2) parses; its numbers are those in docs/status.md."""
    data = nightly_report.build(RUN2, tmp_path / "out")
    rows = {(r["shape"], r["provider"]): r for r in _rows(data, "microbenchmarks")}
    assert len(rows) == 24
    ours = rows[("commit_kv bf16 bs=1 N=4", "ours")]
    assert ours["median_us"] == pytest.approx(41.1, abs=0.05)
    assert ours["device_us"] == pytest.approx(27.2, abs=0.05)
    assert data["tests"]["suites"]["kernels"]["fail"] == 81


def test_shape_of_unnamed_group():
    b = {"name": "test_bench_verify_accept[upstream-graph-chain-N4-8]", "group": None}
    assert nightly_report._shape(b, "upstream-graph") == "verify_accept chain-N4-8"


# ---- the GPM sampler ----------------------------------------------------------------------------
def fake_nvml(supported=1, mig=0, init_error=None):
    """A stand-in pynvml: GPM says DRAM BW 76%, SM util 50%, graphics active 35%, occupancy not supported."""
    nv = types.ModuleType("pynvml")
    nv.calls = collections.Counter()
    nv.NVML_SUCCESS, nv.NVML_DEVICE_MIG_ENABLE, nv.NVML_GPM_METRICS_GET_VERSION = 0, 1, 1

    def init():
        if init_error:
            raise init_error

    class MetricsGet:
        def __init__(self):
            self.metrics = [SimpleNamespace(metricId=0, nvmlReturn=0, value=0.0) for _ in range(8)]

    def metrics_get(get):
        nv.calls["metrics"] += 1
        for m in get.metrics[: get.numMetrics]:
            if m.metricId == 3:
                m.nvmlReturn = 3  # NVML_ERROR_NOT_SUPPORTED
            else:
                m.value = {10: 76.0, 2: 50.0, 1: 35.0}[m.metricId]

    nv.nvmlInit = init
    nv.nvmlShutdown = lambda: nv.calls.update(["shutdown"])
    nv.nvmlDeviceGetCount = lambda: 1
    nv.nvmlDeviceGetHandleByIndex = lambda i: "handle"
    nv.nvmlDeviceGetName = lambda h: b"Fake GPU"
    nv.nvmlDeviceGetMigMode = lambda h: [mig, mig]
    nv.nvmlGpmQueryDeviceSupport = lambda h: SimpleNamespace(isSupportedDevice=supported)
    nv.nvmlGpmSampleAlloc = object
    nv.nvmlGpmSampleGet = lambda h, s: nv.calls.update(["sample"])
    nv.nvmlGpmSampleFree = lambda s: nv.calls.update(["free"])
    nv.c_nvmlGpmMetricsGet_t = MetricsGet
    nv.nvmlGpmMetricsGet = metrics_get
    return nv


def _summary_with(monkeypatch, module, seconds=0.0):
    monkeypatch.setitem(sys.modules, "pynvml", module)
    with GpmSampler(interval_s=0.11) as gpm:
        if seconds:
            import time

            time.sleep(seconds)
    return gpm.summary()


def test_gpm_unsupported_reasons(monkeypatch):
    assert "not installed" in _summary_with(monkeypatch, None)["unsupported"]
    s = _summary_with(monkeypatch, fake_nvml(init_error=RuntimeError("NVML Shared Library Not Found")))
    assert s == {"unsupported": "NVML did not initialise (no NVIDIA driver or GPU?): "
                                "NVML Shared Library Not Found"}
    s = _summary_with(monkeypatch, fake_nvml(supported=0))
    assert "GPM not supported on Fake GPU" in s["unsupported"]
    assert "MIG is enabled on Fake GPU" in _summary_with(monkeypatch, fake_nvml(mig=1))["unsupported"]


def test_gpm_without_gpu_on_this_machine():
    pytest.importorskip("pynvml")
    with GpmSampler() as gpm:
        pass
    s = gpm.summary()
    if "unsupported" not in s:
        pytest.skip("this machine has a GPU with GPM")
    assert isinstance(s["unsupported"], str) and s["unsupported"]


def test_gpm_sampling(monkeypatch):
    nv = fake_nvml()
    s = _summary_with(monkeypatch, nv, seconds=0.5)
    n = s["dram_bw_util_pct"]["n"]
    assert n >= 2 and nv.calls["metrics"] == n and nv.calls["sample"] == n + 1  # one pair per interval
    assert s["dram_bw_util_pct"] == {"mean": 76.0, "max": 76.0, "n": n}
    assert s["sm_util_pct"] == {"mean": 50.0, "max": 50.0, "n": n}
    assert s["graphics_active_pct"] == {"mean": 35.0, "max": 35.0, "n": n}
    assert s["sm_occupancy_pct"]["n"] == 0 and "sm_occupancy_pct" in s["metric_errors"]
    assert nv.calls["free"] == 2 and nv.calls["shutdown"] == 1


def test_gpm_interval_rule():
    with pytest.raises(ValueError, match="100 ms|0.1"):
        GpmSampler(interval_s=0.05)


# ---- latency budgets ----------------------------------------------------------------------------
def _budgets(*args):
    p = subprocess.run([sys.executable, str(CHECK_BUDGETS), *map(str, args)], capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


def test_budgets(tmp_path):
    base = tmp_path / "baselines"
    (tmp_path / "base.json").write_text(json.dumps(_bench_run()))
    rc, out = _budgets("promote", tmp_path / "base.json", "--card", CARD, "--baselines", base,
                       "--label", "seed")
    stored = base / "synthetic-gpu-80gb" / "Linux-CPython-3.12-64bit" / "0001_seed.json"
    assert rc == 0 and stored.exists()
    assert "data" not in json.loads(stored.read_text())["benchmarks"][0]["stats"]  # as --benchmark-save

    def check(scale, *extra, drop=()):
        fresh = tmp_path / f"fresh_{scale}_{len(drop)}.json"
        fresh.write_text(json.dumps(_bench_run(scale, drop)))
        return _budgets("check", fresh, "--card", CARD, "--baselines", base, "--out", tmp_path / "o", *extra)

    rc, out = check(1.2)  # +20% < 25%
    assert rc == 0 and "OK: 2 compared, 0 regressions" in out
    rc, out = check(1.3)  # +30% > 25%
    assert rc == 1 and out.count("REGRESSION") == 2 and "+30.0%" in out
    rc, out = check(1.2, "--fail", "median:10%")
    assert rc == 1
    rc, out = check(1.0, drop=("test_bench_commit_kv[bf16-1-4-ours]",))
    assert rc == 1 and "MISSING from this run" in out
    rc, out = check(1.0, "--allow-missing", drop=("test_bench_commit_kv[bf16-1-4-ours]",))
    assert rc == 0
    result = json.loads((tmp_path / "o" / "budgets.json").read_text())
    assert result["status"] == "compared" and result["exit_status"] == 0


def test_budgets_without_baseline(tmp_path):
    (tmp_path / "fresh.json").write_text(json.dumps(_bench_run()))
    rc, out = _budgets("check", tmp_path / "fresh.json", "--card", "Other GPU", "--baselines",
                       tmp_path / "none", "--out", tmp_path / "o")  # fmt: skip
    assert rc == 2 and "NOT COMPARED: no latency baseline for card 'Other GPU'" in out
    assert list((tmp_path / "o" / "baseline-candidate" / "other-gpu").glob("*/0001_candidate.json"))
    assert json.loads((tmp_path / "o" / "budgets.json").read_text())["status"] == "not compared"
    assert not (tmp_path / "none").exists()  # looking did not create an empty baseline folder
    (tmp_path / "empty.json").write_text("")
    rc, out = _budgets("check", tmp_path / "empty.json", "--card", CARD, "--out", tmp_path / "o2")
    assert rc == 2 and "has no benchmarks" in out


def test_seeded_h100_baseline(tmp_path):
    """The committed H100 baselines are in pytest-benchmark's storage layout: run 2 (commit
    kernel) and run 4 (commit + acceptance kernels); the newest is the one checked against."""
    from pytest_benchmark.storage.file import FileStorage

    root = REPO / "ci/gpu/baselines/nvidia-h100-80gb-hbm3"
    storage = FileStorage(root, SimpleNamespace(info=print, warning=print),
                          default_machine_id="Linux-CPython-3.12-64bit")  # fmt: skip
    stored = {path.name[:4]: run for path, run in storage.load()}
    assert len(stored["0001"]["benchmarks"]) == 24 and len(stored["0002"]["benchmarks"]) == 128
    rc, out = _budgets("check", RUN4 / "bench.json", "--card-file", RUN4 / "card.txt", "--out", tmp_path)
    assert rc == 0 and "OK: 128 compared, 0 regressions, 0 missing" in out


def test_range_replay_rows_say_window_time_and_skip_kernel_columns(tmp_path):
    """Rows from ncu's application range replay (one result per verify step) carry no
    per-kernel numbers: the page must label the time as the window's and not claim a
    KV-write reduction it did not measure."""
    res = write_results(tmp_path / "res")
    rows = [dict(_ncu_mode(m, w, 0), replay="app-range", kernels_per_step=None, kv_write_kernels=None)
            for m, w in (("nwor_off_scv_off", 100e6), ("nwor_stage_scv_graph", 60e6))]
    (res / "ncu_whole_step.json").write_text(json.dumps({"summary": {"per_mode": rows}}))
    data = nightly_report.build(res, tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    got = {r["mode"]: r for r in _rows(data, "dram_writes")}
    assert got["nwor_stage_scv_graph"]["reduction_vs_off_pct"] == pytest.approx(40.0)
    assert got["nwor_stage_scv_graph"]["kv_reduction_vs_off_pct"] is None
    assert "window time us" in md and "kernel time us" not in md
    assert "Application range replay" in md
    assert "40.0% fewer bytes than `nwor_off_scv_off`\n" in md  # no "(KV-write kernels: – fewer)"


def _suite_summary():
    """ci/gpu/summarize.py, a script outside the packages, loaded as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "summarize", Path(__file__).resolve().parents[1] / "ci" / "gpu" / "summarize.py")
    summarize = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summarize)
    return summarize


def test_suite_summary_reads_the_sanitizer_logs(tmp_path):
    """ci/gpu/summarize.py: one row per compute-sanitizer tool, the error count of its own
    summary (the last one in the log; racecheck words it its own way), and a cut run (no
    summary) said as such."""
    summarize = _suite_summary()
    san = tmp_path / "sanitizer"
    san.mkdir()
    (san / "memcheck.log").write_text("========= COMPUTE-SANITIZER\n========= ERROR SUMMARY: 0 errors\n")
    (san / "memcheck.xml").write_text(
        '<testsuites><testsuite><testcase classname="t" name="a"/>'
        '<testcase classname="t" name="b"><failure message="x"/></testcase></testsuite></testsuites>')
    (san / "initcheck.log").write_text("========= ERROR SUMMARY: 2 errors\n"
                                       "========= ERROR SUMMARY: 3 errors\n")
    # racecheck's own summary line in run 44's (H100) wording, here with an error
    (san / "racecheck.log").write_text(
        "========= COMPUTE-SANITIZER\n"
        "========= RACECHECK SUMMARY: 4 hazards displayed (1 error, 3 warnings)\n")
    (san / "synccheck.log").write_text("========= COMPUTE-SANITIZER\n")
    rows = {tool: (errors, tests) for tool, errors, tests in summarize.sanitizer_rows(tmp_path)}
    assert rows["memcheck"] == ("0", str({"pass": 1, "FAIL": 1, "skip": 0}))
    assert rows["initcheck"][0] == "3"
    assert rows["racecheck"][0] == "1"
    assert rows["synccheck"][0].startswith("no summary")


def test_suite_summary_reads_one_result_file_per_fault_test(tmp_path):
    """ci/gpu/summarize.py: the faults step runs each test in its own process (one JUnit
    file each; the suite writes an error case for a cut one): the summary lists them all."""
    summarize = _suite_summary()
    case = '<testsuites><testsuite><testcase classname="t" name="{}">{}</testcase></testsuite></testsuites>'
    (tmp_path / "faults-a.xml").write_text(case.format("a", ""))
    (tmp_path / "faults-b.xml").write_text(case.format("b", '<error message="process cut (rc 124)"/>'))
    assert summarize.step_cases(tmp_path, "faults") == [("a", "pass"), ("b", "FAIL")]
    (tmp_path / "engine.xml").write_text(case.format("e", '<skipped/>'))
    assert summarize.step_cases(tmp_path, "engine") == [("e", "skip")]
    assert summarize.step_cases(tmp_path, "kernels") == [("kernels", "not run")]
