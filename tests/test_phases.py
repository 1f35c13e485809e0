"""Host-time attribution: the phase clock's bookkeeping, the latency tool's statistics,
and both end to end on real SGLang servers (CPU: tiny model pair, Triton interpreter).

The end-to-end test runs tools/measure_latency.py with resident ``launch_server``
children, plugin off and on, each loading the phase-clock plugin: every speculative
phase must be seen once per busy iteration, the clocks must wrap the NWOR/SCV hooks
(outermost), and the paired statistics must come out for both modes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from sglang_nwor_scv.phases import PhaseClock
from tools.engine_run import REPO
from tools.measure_latency import (MIN_ROUNDS, _diff, bootstrap_ci, critical_path, paired_difference,
                                   phase_delta, post_verify, round_fits)


def _spin(ns: int) -> None:
    end = time.perf_counter_ns() + ns
    while time.perf_counter_ns() < end:
        pass


def _phase(clock: PhaseClock, name: str, ns: int = 0, inner=None) -> None:
    frame = clock.enter()
    _spin(ns)
    if inner:
        inner()
    clock.leave(name, frame)


def test_nested_phase_is_subtracted_from_its_parent_self_time(tmp_path):
    clock = PhaseClock(str(tmp_path / "p.json"))
    clock.new_iteration()
    _phase(clock, "loop.run_batch", 200_000, inner=lambda: _phase(clock, "spec.accept", 2_000_000))
    clock.new_iteration()  # the iteration worked: kept
    run, acc = clock.totals["loop.run_batch"], clock.totals["spec.accept"]
    assert run[0] == acc[0] == 1
    assert run[1] >= acc[1] >= 2_000_000
    assert run[2] == run[1] - acc[1]  # self = inclusive - nested
    assert acc[2] == acc[1]
    assert clock.totals["loop.iteration"][1] >= run[1]


def test_idle_iterations_are_dropped_and_totals_written_after_two(tmp_path):
    path = tmp_path / "p.json"
    clock = PhaseClock(str(path))
    clock.new_iteration()
    _phase(clock, "loop.schedule")
    clock.new_iteration()  # idle: nothing ran a batch -> dropped, nothing to write
    assert clock.totals == {} and not path.exists()
    _phase(clock, "loop.output")
    clock.new_iteration()  # busy: kept, not yet written (the overlap loop may owe output)
    assert "loop.output" in clock.totals and not path.exists()
    clock.new_iteration()
    assert not path.exists()
    clock.new_iteration()  # second idle iteration after work: written once
    data = json.loads(path.read_text())
    assert data["flushes"] == 1 and data["phases"]["loop.output"]["calls"] == 1
    clock.new_iteration()
    assert json.loads(path.read_text())["flushes"] == 1  # nothing new, no rewrite


def test_phase_delta_is_per_busy_iteration():
    before = {"phases": {"loop.iteration": {"calls": 2, "ns": 10, "self_ns": 10}}}
    after = {"phases": {"loop.iteration": {"calls": 6, "ns": 4010, "self_ns": 4010},
                        "spec.commit": {"calls": 4, "ns": 8000, "self_ns": 6000}}}
    d = phase_delta(before, after)
    assert d["iterations"] == 4
    assert d["spec.commit"] == {"us": 2.0, "self_us": 1.5, "calls": 1.0}


def test_paired_difference_is_called_only_when_its_ci_excludes_zero():
    base = {r: 10.0 + 0.1 * r for r in range(6)}
    faster = {r: v * 0.9 for r, v in base.items()}
    d = paired_difference(faster, base)
    assert d["called"] and d["ci95"][1] < 0 and abs(d["median"] + 0.1) < 1e-9
    noisy = {r: v * (1.05 if r % 2 else 0.95) for r, v in base.items()}
    d = paired_difference(noisy, base)
    assert not d["called"] and d["ci95"][0] < 0 < d["ci95"][1]
    lo, hi = bootstrap_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert 1.0 <= lo <= 3.0 <= hi <= 5.0


def test_a_round_starts_only_if_it_ends_by_the_deadline():
    assert round_fits(100.0, 61.0, 480.0) and round_fits(419.0, 61.0, 480.0)
    assert not round_fits(420.0, 61.0, 480.0)
    assert round_fits(10_000.0, 61.0, 0.0)  # no deadline


def test_too_few_rounds_call_nothing_and_the_report_says_so():
    """Three rounds of the same sign exclude 0 in a bootstrap (it only resamples them), which
    is no evidence: under MIN_ROUNDS paired rounds no difference is called (H200 run 29 had 3)."""
    base = {r: 10.0 + 0.1 * r for r in range(MIN_ROUNDS - 2)}
    d = paired_difference({r: v * 0.9 for r, v in base.items()}, base)
    assert d["ci95"][1] < 0 and not d["called"]
    assert "no claim" in _diff(d) and "**" not in _diff(d)


@pytest.mark.engine
def test_latency_tool_attributes_every_phase_plugin_off_and_on(tmp_path, tiny_models):
    cmd = [sys.executable, str(REPO / "tools" / "measure_latency.py"), "--out", str(tmp_path),
           "--model", "tiny", "--spec", "ngram-tree", "--modes", "plugin-off,default",
           "--bs", "2", "--tokens", "10", "--repeats", "2", "--no-gpm", "--log-interval", "1",
           "--target-ci-points", "50"]  # under MIN_ROUNDS: both rounds run
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "latency.json").read_text())
    assert [r["mode"] for r in data["runs"]] == ["plugin-off", "default", "default", "plugin-off"]
    points = {p["mode"]: p for p in data["points"]}
    assert points["default"]["n"] == 2 and points["default"]["vs_plugin-off"]["n"] == 2
    assert data["meta"]["target_ci_points"] == 50
    for outer in data["meta"]["outermost"].values():
        assert outer and all(outer.values()), data["meta"]["outermost"]
    for mode in ("plugin-off", "default"):
        for run in (r for r in data["runs"] if r["mode"] == mode):
            ph = run["phases"]
            assert run["steps"] >= 3 and ph["iterations"] >= run["steps"], run
            # by default the NGRAM draft kernel hands upstream the cache locations, so
            # upstream's cache-location launch (spec.cache_locs) runs only without the plugin
            cache_locs = "spec.cache_locs" if mode == "plugin-off" else "kernel.ngram_draft"
            for name in ("loop.run_batch", "spec.ngram.worker", "spec.ngram.draft", "forward.model",
                         "spec.accept", "spec.commit", "spec.kv_move", "spec.ngram.lookup",
                         cache_locs, "forward.batch_init", "spec.ngram.corpus_get",
                         "spec.ngram.corpus_sync", "loop.sampling_copy", "loop.copy_to_cpu"):
                assert ph[name]["calls"] > 0.5, (mode, name, ph)
            # the tiny pair accepts for real (no SGLANG_SIMULATE_ACC_LEN), so the simulated
            # acceptance's clock never runs; the GPU's dummy-weight runs clock it
            assert "spec.simulate" not in ph, ph
            if mode == "default":
                assert ph.get("spec.cache_locs", {}).get("calls", 0) == 0, ph
                assert ph["kernel.ngram_draft"]["us"] >= ph["kernel.ngram_draft.launch"]["us"] > 0, ph
                # the drafts and mask in one upload, inside the draft phase
                assert ph["kernel.ngram_upload"]["calls"] == ph["kernel.ngram_draft"]["calls"], ph
                assert ph["spec.ngram.draft"]["us"] > ph["kernel.ngram_upload"]["us"] > 0, ph
            # nested, so a parent's self time excludes them (graph.* run on a GPU only)
            assert ph["spec.ngram.draft"]["us"] >= ph["spec.ngram.lookup"]["us"] > 0
            assert ph["spec.ngram.lookup"]["us"] >= ph["spec.ngram.corpus_get"]["us"] > 0
            assert ph["forward.worker"]["us"] >= ph["forward.batch_init"]["us"] > 0
            assert ph["loop.iteration"]["us"] >= ph["loop.run_batch"]["us"] > 0
            own = ("nwor.verify_begin", "nwor.verify_end", "nwor.commit", "scv.verify",
                   "kernel.verify_accept", "kernel.commit")
            if mode == "default":  # the plugin's own sites, nested in upstream's phases
                for name in own:
                    assert ph[name]["calls"] > 0.5, (name, ph)
                assert ph["spec.commit"]["us"] >= ph["nwor.commit"]["us"] >= ph["kernel.commit"]["us"]
                assert ph["scv.verify"]["us"] >= ph["kernel.verify_accept"]["us"]
            else:
                assert not any(ph.get(name, {}).get("calls") for name in own), ph
    totals = json.loads((tmp_path / "totals_default.json").read_text())
    assert totals["committed"] == totals["accepted"] > 0 and totals["violations"] == 0
    # every plugin launch is counted by its path (at least acceptance and commit a step);
    # the interpreter (the CPU) always takes Triton's
    kept, triton = totals["launches_kept"], totals["launches_triton"]
    assert kept + triton >= 2 * totals["verify_steps"] > 0, totals
    if os.environ.get("TRITON_INTERPRET") == "1":
        assert kept == 0, totals
    report = (tmp_path / "latency.md").read_text()
    assert "| 2 | `default` |" in report and "## Post-verify host time (issue 14)" in report


def test_critical_path_sums_the_phases_around_the_verify_launch():
    ph = {n: {"us": v} for n, v in {"loop.iteration": 10_000, "loop.recv": 50, "loop.input": 5,
                                    "loop.schedule": 200, "loop.output": 100,
                                    "spec.ngram.draft": 2_000, "forward.worker": 500,
                                    "forward.model": 400, "spec.accept": 300, "spec.commit": 30,
                                    "spec.kv_move": 150, "spec.ngram.corpus": 40}.items()}
    c = critical_path({"phases_us": ph, "gpu_active": 75.0})
    # forward.model is inside forward.worker: not counted twice; the loop's own phases run
    # while the GPU computes (SGLang's overlap loop)
    assert c == {"iteration": 10_000, "gpu_idle": 2_500, "before_launch": 2_500, "draft": 2_000,
                 "overlapped": 355, "after_launch": 520}
    assert critical_path({"phases_us": ph, "gpu_active": None})["gpu_idle"] is None


def test_post_verify_leaves_out_the_simulated_acceptance_and_compares_at_the_same_bs():
    def point(bs, mode, accept, simulate, commit, move):
        return {"bs": bs, "mode": mode, "phases_us": {
            "spec.accept": {"us": accept}, "spec.simulate": {"us": simulate},
            "spec.commit": {"us": commit}, "spec.kv_move": {"us": move}}}

    rows = post_verify([point(1, "plugin-off", 300, 100, 30, 170),
                        point(1, "plugin-off-native-move", 300, 100, 30, 1_270),
                        point(1, "default", 350, 100, 100, 0),
                        {"bs": 32, "mode": "default", "phases_us": {  # not simulated, no baseline
                            "spec.accept": {"us": 400}, "spec.commit": {"us": 100}}},
                        {"bs": 1, "mode": "no-spec", "phases_us": {"loop.output": {"us": 5}}}])
    by = {(r["bs"], r["mode"]): r for r in rows}
    assert (1, "no-spec") not in by  # plain decoding has no verify
    assert by[(1, "plugin-off")]["post_verify"] == 500 and by[(1, "plugin-off")]["simulation"] == 100
    d = by[(1, "default")]
    assert d["without_simulation"] == 350
    assert d["x_lower_than_plugin-off"] == 400 / 350
    assert d["x_lower_than_plugin-off-native-move"] == 1_500 / 350
    assert by[(32, "default")]["x_lower_than_plugin-off"] is None
    assert by[(32, "default")]["simulation"] is None and by[(32, "default")]["without_simulation"] == 500


def test_merged_runs_keep_rounds_paired_and_refuse_other_setups():
    """Two calls' runs of one setup make one report with more rounds; a run from another
    card (or model, spec, versions) is refused, not averaged in."""
    import pytest

    from tools.measure_latency import merge_runs, summarize

    def report(card, offsets, **setup):
        meta = {"card": card, "model": "m", "spec": "s", "tokens": 8, "acceptance": "a",
                "versions": "v", "flush_before_batch": True, "modes": ["plugin-off", "default"],
                "bs": [1], "command": "c", **setup}
        runs = [{"mode": m, "bs": 1, "repeat": r, "ms_per_step": base + d, "ms_per_token": 1.0,
                 "gpu_active": None, "phases": {}}
                for r, base in enumerate(offsets) for m, d in (("plugin-off", 1.0), ("default", 0.0))]
        return {"meta": meta, "runs": runs}

    meta, runs = merge_runs([report("H100", [10, 20]), report("H100", [30, 40, 50])])
    assert meta["repeats"] == 5 and meta["merged_from"] == 2
    assert sorted({r["repeat"] for r in runs}) == [0, 1, 2, 3, 4]
    point = next(p for p in summarize(runs, meta["modes"], meta["bs"]) if p["mode"] == "default")
    # every round pairs default with its own plugin-off run: default is 1 ms faster in each,
    # although the rounds themselves span 10-50 ms
    assert point["n"] == 5 and point["vs_plugin-off"]["called"] and point["vs_plugin-off"]["ci95"][1] < 0
    with pytest.raises(SystemExit, match="card"):
        merge_runs([report("H100", [10]), report("H200", [10])])
    # runs stored before the backend was recorded ran triton: they merge with triton runs only
    assert merge_runs([report("H100", [10]), report("H100", [20], attention_backend="triton")])
    with pytest.raises(SystemExit, match="attention_backend"):
        merge_runs([report("H100", [10]), report("H100", [20], attention_backend="fa3")])


def test_committed_gzipped_runs_read_back_and_summarize_as_reported(tmp_path):
    """Reports keep latency.json gzipped; --merge reads it back, and its summary gives the
    medians the committed latency.md shows (run 68, default at bs 32)."""
    import gzip

    from tools.measure_latency import read_run, summarize

    run = REPO / "reports/gpu/2026-12-07-h100-run68-69-8b-eagle3/run68/a"
    data = read_run(run)
    point = next(p for p in summarize(data["runs"], data["meta"]["modes"], data["meta"]["bs"])
                 if p["mode"] == "default" and p["bs"] == 32)
    row = f"| 32 | `default` | {point['n']} | {point['ms_per_step']:.2f} "
    assert row in (run / "latency.md").read_text()
    (tmp_path / "latency.json").write_text(json.dumps({"meta": {}, "runs": [1]}))
    with gzip.open(tmp_path / "latency.json.gz", "wt") as f:
        json.dump({"meta": {}, "runs": [2]}, f)
    assert read_run(tmp_path)["runs"] == [1]  # a fresh run's plain file first


def test_feature_modes_are_paired_against_the_default():
    """A mode that turns one feature of the default off is compared with the default too
    (what that feature alone does), paired per round; baselines and plain decoding are not."""
    from tools.measure_latency import markdown, summarize

    modes = ["plugin-off", "default-no-verify-metadata", "default"]
    # rounds drift from 10 to 50 ms; within each round the kernel-off default is 2% slower
    runs = [{"mode": m, "bs": 1, "repeat": r, "ms_per_step": base * f, "ms_per_token": base * f / 2,
             "gpu_active": None, "phases": {}}
            for r, base in enumerate([10, 20, 30, 40, 50])
            for m, f in (("plugin-off", 1.05), ("default-no-verify-metadata", 1.02), ("default", 1.0))]
    points = {p["mode"]: p for p in summarize(runs, modes, [1])}
    d = points["default-no-verify-metadata"]["vs_default"]
    assert d["called"] and abs(d["median"] - 0.02) < 1e-9 and d["n"] == 5
    assert "vs_default" not in points["plugin-off"] and "vs_default" not in points["default"]
    meta = {"card": "c", "model": "m", "spec": "s", "repeats": 5, "tokens": 8, "acceptance": "a",
            "versions": "v", "command": "x"}
    text = markdown(meta, list(points.values()))
    assert "## Plugin modes against the default" in text
    assert "| 1 | `default-no-verify-metadata` | **+2.0%" in text


def test_staging_budget_alone_is_what_one_engine_gets_and_stages_bs_128():
    """Resident engines share the card and get small pools, so the latency tool gives plugin
    modes the staging budget an engine gets with the card to itself. On H100 run 20's card
    (one engine, 8 layers) that reproduces the budget the plugin really took, and at 32
    layers it holds the 8B shape's bs-128 NGRAM N 8 bucket (12 KiB of fused qkv per row and
    layer), which the resident runs never staged."""
    from tools.measure_latency import staging_budget_alone

    run20 = REPO / "reports" / "gpu" / "2026-11-29-h100-run20-ncu-memory"
    total_mib = int((run20 / "card.txt").read_text().split(",")[2].split()[0])
    taken = json.loads((run20 / "graph_memory.json").read_text())["rows"][0]["budget_bytes"] / 2**20
    assert abs(staging_budget_alone(total_mib << 20, 8) - taken) / taken < 0.02
    h100_32 = staging_budget_alone(total_mib << 20, 32)
    assert 128 * 8 * 32 * 12 * 1024 / 2**20 < h100_32 < taken
    assert staging_budget_alone(400 << 30, 32) == 1024  # the plugin's 1 GiB cap
    assert staging_budget_alone(16 << 30, 32) == 0  # no pool left beside the weights


def test_where_the_step_goes_names_only_the_phases_the_run_has():
    """An EAGLE run has no spec.ngram.* phases: the report's note names what it summed."""
    from tools.measure_latency import markdown

    phases = {"loop.iteration": 1000, "spec.eagle.draft": 100, "forward.worker": 200,
              "spec.accept": 50, "loop.output": 10}
    point = {"bs": 1, "mode": "default", "n": 5, "ms_per_step": 1.0, "ms_per_step_ci95": [0.9, 1.1],
             "ci_width_pct": 20.0, "ms_per_token": 0.5, "tokens_per_s": 2.0, "gpu_active": 80.0,
             "phases_us": {k: {"us": v, "self_us": v} for k, v in phases.items()}}
    meta = {"card": "card", "model": "model", "spec": "eagle3-chain", "repeats": 5, "tokens": 8,
            "acceptance": "a", "versions": "v", "command": "c", "modes": ["default"], "bs": [1]}
    md = markdown(meta, [point])
    note = md[md.index("*Before launch*"):md.index("| bs | mode | iteration")]
    assert "`forward.worker`" in note and "spec.ngram" not in note and "`spec.accept`" in note


def test_rounds_continue_only_where_the_interval_is_still_wide():
    """``--target-ci-points``: a batch size leaves the rotation once every plugin mode's
    paired difference against each baseline is resolved to the target, never before
    MIN_ROUNDS, and whatever the sign; a noisy point stays in."""
    from tools.measure_latency import open_batch_sizes

    modes = ["plugin-off", "plugin-off-native-move", "default", "no-spec"]

    def runs_for(n, noise_at_1):
        rows = []
        for r in range(n):
            wobble = (1 + noise_at_1 * (1 if r % 2 else -1))
            for bs, base in ((1, 8.0), (32, 19.0)):
                w = wobble if bs == 1 else 1 + 0.001 * (r % 2)
                for mode, ms in (("plugin-off", base), ("plugin-off-native-move", base * 1.02),
                                 ("default", base * 0.9 * w), ("no-spec", 99.0 * w)):
                    rows.append({"repeat": r, "bs": bs, "mode": mode, "ms_per_step": ms})
        return rows

    assert open_batch_sizes(runs_for(MIN_ROUNDS - 1, 0.0), modes, [1, 32], 2.0) == [1, 32]
    assert open_batch_sizes(runs_for(MIN_ROUNDS, 0.05), modes, [1, 32], 2.0) == [1]  # +-5%: wide
    assert open_batch_sizes(runs_for(MIN_ROUNDS, 0.0), modes, [1, 32], 2.0) == []
    # no-spec's own noise does not hold a point open: it is no upstream speculative baseline
    assert open_batch_sizes(runs_for(MIN_ROUNDS, 0.05), ["plugin-off", "default"], [32], 2.0) == []
    # baselines only: they are compared with each other
    only_bases = [r for r in runs_for(MIN_ROUNDS, 0.0) if r["mode"].startswith("plugin-off")]
    assert open_batch_sizes(only_bases, ["plugin-off", "plugin-off-native-move"], [1], 2.0) == []
