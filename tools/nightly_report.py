"""Build the nightly GPU page (report.md + *.png + report.json) from one results folder.

Why: a nightly run leaves a dozen JSON/XML files; the claims we make (NWOR writes fewer DRAM
bytes per verify step, SCV launches fewer kernels, neither costs latency, the invariants
hold) should be readable on one page, and every comparison on that page must use a baseline
measured in the same folder (same card, same run). Any input may be missing: its section
then says "not measured in this run" and shows no numbers.

    python tools/nightly_report.py RESULTS_DIR [--out RESULTS_DIR]

Inputs (all optional): card.txt, command.txt, sweep.json, profile.json, ncu_whole_step.json,
bench.json (pytest-benchmark), *.xml (junit). Shapes: see the section readers.
Units: MB = 1e6 bytes, us = microseconds, % change = (x - baseline) / baseline.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

NOT_MEASURED = "not measured in this run"
NA = "–"
# display order of modes; unknown modes sort after these, by name
MODE_ORDER = [  # tools/measure_engine.MODES, then the aliases stored runs carry
    "plugin-off",
    "plugin-off-native-move",
    "upstream",
    "upstream-native-move",
    "move",
    "nwor",
    "scv",
    "ngram-mask",
    "default-no-mask",
    "default-no-verify-metadata",
    "default",
    "default-verify-metadata",
    "default-ngram-draft",
    "default-no-ngram-draft",
    "default-no-prompt-tail",
    "default-no-batch-snapshot",
    "off",
    "nwor+scv",
    "nwor_off_scv_off",
    "nwor_stage_scv_off",
    "nwor_off_scv_graph",
    "nwor_stage_scv_graph",
]
NCU_BASELINES = ("upstream", "nwor_off_scv_off")  # first one present in the same run wins
PROFILE_BASELINES = ("plugin-off", "upstream", "off", "nwor_off_scv_off")  # likewise
SWEEP_BASELINES = ("plugin-off", "upstream", "off")  # likewise
PLUGIN_MODES = ("default", "default-no-mask", "default-no-verify-metadata", "default-verify-metadata",
                "default-ngram-draft", "default-no-ngram-draft", "default-no-prompt-tail",
                "default-no-batch-snapshot", "move", "nwor", "ngram-mask", "nwor+scv", "nwor_stage_scv_off",
                "nwor_stage_scv_graph")
PROFILE_FIELDS = ("kernels", "launch_calls", "graph_launches", "api_calls", "gpu_us", "step_us", "kv_kernels",
                  "kv_gpu_us")
SWEEP_FIELDS = ("spec", "sampling", "bs", "mode", "requests", "tokens", "wall_s", "throughput_tok_s",
                "latency_ms_per_token", "accept_length", "gpm")


# ---- small helpers ------------------------------------------------------------------------------
def mode_key(mode: str):
    return (MODE_ORDER.index(mode), "") if mode in MODE_ORDER else (len(MODE_ORDER), mode)


def pct_change(x, base):
    """(x - base) / base in percent; None when either is missing or base is 0."""
    if x is None or base is None or base == 0:
        return None
    return (x - base) / base * 100.0


def f_num(v, nd=1) -> str:
    return NA if v is None else f"{v:,.{nd}f}"


def f_mb(nbytes) -> str:
    if nbytes is None:
        return NA
    mb = nbytes / 1e6
    return f"{mb:,.1f}" if abs(mb) >= 10 else f"{mb:.2f}" if abs(mb) >= 1 else f"{mb:.3f}"


def f_pct(p, signed=True) -> str:
    if p is None:
        return NA
    p = 0.0 if abs(p) < 0.05 else p  # no "-0.0%"
    return f"{p:+.1f}%" if signed else f"{p:.1f}%"


def f_x(ratio) -> str:
    return NA if ratio is None else f"{ratio:.1f}x"


def md_table(rows: list[dict], columns: list[tuple[str, Callable[[dict], object]]]) -> list[str]:
    """Markdown table; each column is (header, row -> cell)."""
    out = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        out.append("| " + " | ".join(str(NA if (c := cell(r)) is None else c) for _, cell in columns) + " |")
    return out + [""]


def slug(*parts) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", "-".join(str(p) for p in parts)).strip("-").lower()


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


class Page:
    """Collects Markdown lines, the JSON twin of every section, and the plots."""

    def __init__(self, results: Path, out: Path, command: str | None = None):
        self.results, self.out, self.command = results, out, command
        self.md: list[str] = []
        self.data: dict = {}
        self.plt = _pyplot()

    def load(self, name: str):
        """(parsed JSON, None) or (None, why there are no numbers)."""
        path = self.results / name
        if not path.exists() or path.stat().st_size == 0:
            return None, f"{NOT_MEASURED} (no {name})"
        try:
            return json.loads(path.read_text()), None
        except (OSError, ValueError) as exc:
            return None, f"{NOT_MEASURED}: {name} could not be read ({exc})"

    def entries(self, name: str, key: str):
        """(parsed JSON or {}, measured entries, failed entries, why there are none) of a
        results list (``sweep.json`` points, ``profile.json`` runs); failed ones carry
        ``"error"``."""
        data, why = self.load(name)
        rows = (data or {}).get(key) or []
        return (data or {}, [r for r in rows if "error" not in r], [r for r in rows if "error" in r],
                why)

    def section(self, title: str, *lines: str) -> None:
        self.md += [f"## {title}", "", *lines, ""]

    def failures(self, key: str, failed: list[dict]) -> None:
        """Entries the measuring tool recorded as failed ({"spec", "mode", "error"}): listed, no numbers."""
        if failed:
            self.data.setdefault(key, {})["failed"] = failed
            self.md += [f"Failed in this run ({len(failed)}):", ""]
            self.md += [f"- {f.get('spec')} `{f.get('mode')}`"
                        + (f" bs {f['bs']}" if f.get("bs") is not None else "")
                        + f": {str(f.get('error'))[:300]}" for f in failed]
            self.md.append("")

    def missing(self, key: str, title: str, reason: str) -> None:
        self.section(title, f"_{reason}_")
        self.data[key] = {"status": NOT_MEASURED, "reason": reason}

    def plot(self, fig, name: str, alt: str) -> None:
        fig.tight_layout()
        fig.savefig(self.out / name, dpi=110)
        self.plt.close(fig)
        self.data.setdefault("plots", []).append(name)
        self.md += [f"![{alt}]({name})", ""]

    def bars(self, rows: list[dict], panels: list[tuple[str, str, float]], name: str, alt: str) -> None:
        """One grouped bar chart per panel (key, y label, scale): x = (spec, bs), one bar per mode."""
        if self.plt is None:
            self.md += ["_(plot skipped: matplotlib is not installed)_", ""]
            return
        groups = sorted({(r["spec"], r["bs"]) for r in rows})
        modes = sorted({r["mode"] for r in rows}, key=mode_key)
        by = {(r["spec"], r["bs"], r["mode"]): r for r in rows}
        fig, axes = self.plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
        width = 0.8 / len(modes)
        for ax, (key, ylabel, scale) in zip(axes[0], panels, strict=True):
            for i, mode in enumerate(modes):
                vals = [by.get((s, b, mode), {}).get(key) for s, b in groups]
                xs = [g + (i - (len(modes) - 1) / 2) * width for g in range(len(groups))]
                ax.bar(xs, [math.nan if v is None else v * scale for v in vals], width, label=mode)
            ax.set_xticks(range(len(groups)), [f"{s} bs{b}" for s, b in groups], rotation=20, ha="right")
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=7)
        self.plot(fig, name, alt)


def by_mode_order(rows: list[dict], *keys: str) -> list[dict]:
    return sorted(rows, key=lambda r: (*(r[k] for k in keys), mode_key(r["mode"])))


# ---- sections -----------------------------------------------------------------------------------
def header(page: Page) -> None:
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    info: dict = {"results_dir": str(page.results), "built_utc": now, "report_command": page.command}
    card_txt = page.results / "card.txt"
    if card_txt.exists():  # "name, driver, memory" per GPU, then "sglang X torch Y triton Z"
        lines = card_txt.read_text().splitlines() + ["", ""]
        name, driver, memory = ([p.strip() for p in lines[0].split(",")] + [None, None, None])[:3]
        gpus = sum(1 for ln in lines if ln.strip() and not ln.startswith("sglang"))
        versions = next((ln.strip() for ln in lines if ln.startswith("sglang")), None)
        info.update(card=name if gpus <= 1 else f"{gpus} x {name}", driver=driver, memory=memory,
                    versions=versions)
    cmd = page.results / "command.txt"
    info["command"] = cmd.read_text().strip() if cmd.exists() else None
    bench, _ = page.load("bench.json")
    info["benchmarks_datetime"] = (bench or {}).get("datetime")
    page.data["header"] = info
    card = info.get("card")
    page.md += [
        f"# Nightly GPU report: {card or 'card not recorded'}",
        "",
        f"- card: {card}, driver {info['driver']}, {info['memory']}" if card else "- card: not recorded",
        f"- versions: {info.get('versions') or 'not recorded'}",
        f"- report built {now} from `{page.results}`"
        + (f"; benchmarks ran {info['benchmarks_datetime']}" if info["benchmarks_datetime"] else ""),
        *_command_lines(info["command"]),
        *([f"- report command: `{page.command}`"] if page.command else []),
        "- every comparison on this page uses a baseline from this results folder only",
        "",
    ]


def _command_lines(command: str | None) -> list[str]:
    if not command:
        return ["- run command: not recorded"]
    if "\n" not in command:
        return [f"- run command: `{command}`"]
    return ["- run command (command.txt):", "", "```", command, "```", ""]


def junit_cases(path: Path) -> list[tuple[str, str]]:
    """(test name, pass / fail / error / skip) per test case of a JUnit XML file: the one
    reader of the suite's results (ci/gpu/summarize.py prints the same)."""
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        kind = "pass"
        for tag, k in (("failure", "fail"), ("error", "error"), ("skipped", "skip")):
            if case.find(tag) is not None:
                kind = k
        cases.append((case.get("name"), kind))
    return cases


def _junit_counts(path: Path) -> dict:
    counts = {"pass": 0, "fail": 0, "error": 0, "skip": 0, "failed": []}
    for name, kind in junit_cases(path):
        counts[kind] += 1
        if kind in ("fail", "error"):
            counts["failed"].append(name)
    return counts


def tests(page: Page) -> None:
    title = "Tests: pass / fail"
    suites = {p.stem: _junit_counts(p) for p in sorted(page.results.glob("*.xml"))}
    source = "junit xml"
    if not suites:
        return page.missing("tests", title, f"{NOT_MEASURED} (no junit *.xml)")
    bad = sum(c["fail"] + c["error"] for c in suites.values())
    page.data["tests"] = {"source": source, "suites": suites, "failed_or_errored": bad}
    page.section(title, f"From {source}. " + (f"**{bad} failed or errored.**" if bad else "No failures."))
    cols = ("suite", "pass", "fail", "error", "skip", "total")
    rows = [dict(c, suite=n, total=c["pass"] + c["fail"] + c["error"] + c["skip"]) for n, c in suites.items()]
    page.md += md_table(rows, [(h, lambda r, h=h: r[h]) for h in cols])
    for name, c in suites.items():
        if c["failed"]:
            more = f" (+{len(c['failed']) - 15} more)" if len(c["failed"]) > 15 else ""
            page.md += [f"Failed in {name}: " + ", ".join(f"`{n}`" for n in c["failed"][:15]) + more, ""]


def dram_writes(page: Page) -> None:
    title = "DRAM writes per verify step by mode"
    ncu, why = page.load("ncu_whole_step.json")
    per_mode = (ncu or {}).get("summary", {}).get("per_mode") or []
    if not per_mode:
        page.missing("dram_writes", title, why or f"{NOT_MEASURED} (ncu_whole_step.json: no per_mode)")
        return page.failures("dram_writes", (ncu or {}).get("errors") or [])
    present = {m["mode"] for m in per_mode}
    baseline = next((m for m in NCU_BASELINES if m in present), NCU_BASELINES[0])
    base = {(m["spec"], m["bs"]): m for m in per_mode if m["mode"] == baseline}
    rows = []
    for m in by_mode_order(per_mode, "spec", "bs"):
        b = base.get((m["spec"], m["bs"]))
        met, kv = m.get("ncu_metrics") or {}, m.get("kv_write_kernels") or {}
        row = dict(spec=m["spec"], bs=m["bs"], mode=m["mode"], steps=m.get("steps"), replay=m.get("replay"),
                   kernels_per_step=m.get("kernels_per_step"), has_baseline=b is not None,
                   dram_write_bytes=met.get("dram__bytes_write.sum"),
                   dram_read_bytes=met.get("dram__bytes_read.sum"),
                   l2_write_bytes=None if met.get("lts__t_sectors_op_write.sum") is None
                   else met["lts__t_sectors_op_write.sum"] * 32,
                   dram_throughput_pct=met.get("dram__throughput.avg.pct_of_peak_sustained_elapsed"),
                   gpu_time_ns=met.get("gpu__time_duration.sum"),
                   kv_dram_write_bytes=kv.get("dram__bytes_write.sum"), kv_kernels_per_step=kv.get("kernels"),
                   reduction_vs_off_pct=None, kv_reduction_vs_off_pct=None)
        if b is not None and b is not m:  # reduction = (baseline - mode) / baseline
            bmet, bkv = b.get("ncu_metrics") or {}, b.get("kv_write_kernels") or {}
            for key, now, then in (("reduction_vs_off_pct", met, bmet), ("kv_reduction_vs_off_pct", kv, bkv)):
                change = pct_change(now.get("dram__bytes_write.sum"), then.get("dram__bytes_write.sum"))
                row[key] = None if change is None else -change
        rows.append(row)
    page.data["dram_writes"] = {"baseline_mode": baseline, "method": ncu.get("method"), "rows": rows}
    page.section(title, "Nsight Compute over whole verify steps, bytes per verify step. Reduction = "
                 f"(baseline - mode) / baseline, baseline `{baseline}` of the same spec and bs "
                 "(positive = fewer bytes). L2 write = lts__t_sectors_op_write x 32 B.")
    ranges = any(r["replay"] == "app-range" for r in rows)
    if ranges:
        page.md.append("Application range replay: one ncu result per verify step, from the profiler "
                       "window's start to its end. Its time is the window's, host gaps included, so "
                       "DRAM % of peak is diluted; kernels and the KV-write kernels alone are not "
                       "separated (run `tools/measure_ncu.py --replay kernel` for those).\n")
    for r in rows:
        if r["mode"] in PLUGIN_MODES and r["reduction_vs_off_pct"] is not None:
            kv = ("" if r["kv_reduction_vs_off_pct"] is None
                  else f" (KV-write kernels: {f_pct(r['kv_reduction_vs_off_pct'], False)} fewer)")
            page.md.append(f"- {r['spec']} bs {r['bs']}, `{r['mode']}`: {f_mb(r['dram_write_bytes'])} MB "
                           f"written per step, {f_pct(r['reduction_vs_off_pct'], False)} fewer bytes than "
                           f"`{baseline}`{kv}")
    for spec, bs in sorted({(r["spec"], r["bs"]) for r in rows if not r["has_baseline"]}):
        page.md.append(f"- {spec} bs {bs}: no `{baseline}` in this run, so no reduction computed")
    page.md.append("")
    page.failures("dram_writes", ncu.get("errors") or [])
    page.md += md_table(rows, [
        ("spec", lambda r: r["spec"]), ("bs", lambda r: r["bs"]), ("mode", lambda r: f"`{r['mode']}`"),
        ("steps", lambda r: r["steps"]), ("kernels/step", lambda r: f_num(r["kernels_per_step"])),
        ("DRAM write MB", lambda r: f_mb(r["dram_write_bytes"])),
        ("reduction", lambda r: f_pct(r["reduction_vs_off_pct"], False)),
        ("DRAM read MB", lambda r: f_mb(r["dram_read_bytes"])),
        ("L2 write MB", lambda r: f_mb(r["l2_write_bytes"])),
        ("DRAM % of peak", lambda r: f_num(r["dram_throughput_pct"])),
        ("window time us" if ranges else "kernel time us",
         lambda r: None if r["gpu_time_ns"] is None else f_num(r["gpu_time_ns"] / 1e3)),
        ("KV-write kernels/step", lambda r: f_num(r["kv_kernels_per_step"])),
        ("KV-write kernels: DRAM write MB", lambda r: f_mb(r["kv_dram_write_bytes"])),
        ("KV reduction", lambda r: f_pct(r["kv_reduction_vs_off_pct"], False)),
    ])
    page.bars(rows, [("dram_write_bytes", "DRAM write / verify step, whole step (MB)", 1e-6),
                     ("kv_dram_write_bytes", "DRAM write / verify step, KV-write kernels (MB)", 1e-6)],
              "dram_writes.png", "DRAM writes per verify step")


def launches(page: Page) -> None:
    """Per verify step from the whole profiled window (every mode, plugin off included,
    counted alike; tools/trace_stats.window_stats), beside the plugin's own ranges."""
    title = "Launches and host time per verify step"
    _, runs, failed, why = page.entries("profile.json", "runs")
    runs = [r for r in runs if r.get("window")]
    if not runs:
        page.missing("launches", title, why or f"{NOT_MEASURED} (profile.json has no run with a window)")
        return page.failures("launches", failed)
    rows = []
    for r in by_mode_order(runs, "spec", "bs"):
        same = {x["mode"]: x for x in runs if (x["spec"], x["bs"]) == (r["spec"], r["bs"])}
        bmode = next((m for m in PROFILE_BASELINES if m in same), None)
        b = same[bmode]["window"] if bmode not in (None, r["mode"]) else None
        w = r["window"]
        row = dict(spec=r["spec"], bs=r["bs"], mode=r["mode"], verify_steps=r.get("verify_steps"),
                   baseline_mode=bmode if b is not None else None, ranges=r.get("ranges") or {},
                   range_step_host_us=(r.get("per_step") or {}).get("host_us"),
                   trace=r.get("trace"), kernels_delta=None, launch_calls_delta=None,
                   step_us_change_pct=None, gpu_us_change_pct=None,
                   baseline_kv_gpu_us=b.get("kv_gpu_us") if b is not None else None)
        row.update({k: w.get(k) for k in PROFILE_FIELDS})
        if b is not None:
            row["kernels_delta"] = w["kernels"] - b["kernels"]
            row["launch_calls_delta"] = w["launch_calls"] - b["launch_calls"]
            row["step_us_change_pct"] = pct_change(w.get("step_us"), b.get("step_us"))
            row["gpu_us_change_pct"] = pct_change(w.get("gpu_us"), b.get("gpu_us"))
        rows.append(row)
    page.data["launches"] = {"baseline_modes": list(PROFILE_BASELINES), "rows": rows}
    firsts = ", ".join(f"`{m}`" for m in PROFILE_BASELINES)
    page.section(title, "torch.profiler (SGLang's `start_profile`) over one greedy batch: the whole window "
                 "divided by its verify steps, the same for every mode (prefill included alike). "
                 f"Baseline: the first of {firsts} present for the same spec and bs. Kernels include "
                 "CUDA-graph nodes; `step us` is the window's wall time per step; KV write = the KV-pool "
                 "writers (upstream's `store_kvcache` and tree move `copy_all_layer_kv_cache_tiled`, "
                 "our `commit_accepted_kv_kernel`). The last columns are the plugin's own ranges "
                 "(host us, kernels per step).")
    for r in rows:
        if r["baseline_mode"] and r["kernels_delta"] is not None:
            page.md.append(f"- {r['spec']} bs {r['bs']}, `{r['mode']}` vs `{r['baseline_mode']}`: "
                           f"kernels {r['kernels_delta']:+.1f}/step, launch calls "
                           f"{r['launch_calls_delta']:+.1f}/step, GPU time {f_pct(r['gpu_us_change_pct'])}, "
                           f"wall time {f_pct(r['step_us_change_pct'])}; KV-pool writers "
                           f"{f_num(r['kv_gpu_us'])} us/step on the GPU (baseline "
                           f"{f_num(r['baseline_kv_gpu_us'])})")
    page.md.append("")
    page.failures("launches", failed)

    def rng(name):  # one record_function range: host us, kernels
        def cell(r):
            x = r["ranges"].get(name)
            return f"{f_num(x.get('host_us'))} us, {f_num(x.get('kernels'))} kernels" if x else NA

        return cell

    page.md += md_table(rows, [
        ("spec", lambda r: r["spec"]), ("bs", lambda r: r["bs"]), ("mode", lambda r: f"`{r['mode']}`"),
        ("verify steps", lambda r: r["verify_steps"]), ("kernels", lambda r: f_num(r["kernels"])),
        ("launch calls", lambda r: f_num(r["launch_calls"])),
        ("graph launches", lambda r: f_num(r["graph_launches"])),
        ("CUDA API calls", lambda r: f_num(r["api_calls"])),
        ("gpu us", lambda r: f_num(r["gpu_us"])), ("step us", lambda r: f_num(r["step_us"])),
        ("KV write kernels", lambda r: f_num(r["kv_kernels"])),
        ("KV write gpu us", lambda r: f_num(r["kv_gpu_us"])),
        ("kernels vs base", lambda r: NA if r["kernels_delta"] is None else f"{r['kernels_delta']:+.1f}"),
        ("gpu us vs base", lambda r: f_pct(r["gpu_us_change_pct"])),
        ("step us vs base", lambda r: f_pct(r["step_us_change_pct"])),
        ("scv_compute_mask", rng("scv_compute_mask")), ("nwor_commit", rng("nwor_commit")),
        ("trace", lambda r: f"[trace]({os.path.relpath(page.results / r['trace'], page.out)})"
         if r["trace"] else NA),
    ])
    page.bars(rows, [("kernels", "kernels per verify step", 1.0),
                     ("step_us", "wall us per verify step", 1.0)],
              "launches_host.png", "launches and wall time per verify step")


def _gpm_cell(gpm) -> str:
    if not gpm:
        return NA
    if "unsupported" in gpm:
        return "unsupported"
    d = gpm.get("dram_bw_util_pct") or {}
    return NA if d.get("mean") is None else f"{d['mean']:.1f} / {d['max']:.1f}"


def latency(page: Page) -> None:
    title = "Latency and throughput vs batch size"
    sweep, points, failed, why = page.entries("sweep.json", "points")
    if not points:
        page.missing("latency", title, why or f"{NOT_MEASURED} (sweep.json has no measured points)")
        return page.failures("latency", failed)
    base: dict = {}
    present = {p["mode"] for p in points}
    baseline = next((m for m in SWEEP_BASELINES if m in present), SWEEP_BASELINES[0])
    for p in points:
        if p["mode"] == baseline:
            base.setdefault((p["spec"], p["sampling"], p["bs"]), p)
    rows = []
    for p in by_mode_order(points, "spec", "sampling", "bs"):
        b = base.get((p["spec"], p["sampling"], p["bs"]))
        b = {} if b is None or b is p else b
        row = {k: p.get(k) for k in SWEEP_FIELDS}
        row["throughput_change_pct"] = pct_change(p.get("throughput_tok_s"), b.get("throughput_tok_s"))
        row["latency_change_pct"] = pct_change(p.get("latency_ms_per_token"), b.get("latency_ms_per_token"))
        runs = p.get("wall_s_runs") or []
        row["runs"] = len(runs) or 1
        row["spread_pct"] = (100.0 * (max(runs) - min(runs)) / p["wall_s"]) if len(runs) > 1 else None
        rows.append(row)
    setup = {k: sweep.get(k) for k in ("card", "model", "graphs", "tp", "acc_len")}
    page.data["latency"] = dict(setup, baseline_mode=baseline, rows=rows)
    graphs = {True: "on", False: "off", None: "not recorded"}[setup["graphs"]]
    acc = f"; simulated accept length {setup['acc_len']}" if setup["acc_len"] else ""
    page.section(title, f"Model: {setup['model'] or 'not recorded'}; CUDA graphs {graphs}; tp "
                 f"{setup['tp'] or 1}{acc}. % change against `{baseline}` of the same spec, sampling "
                 "and bs in this sweep (throughput: higher is better; latency: lower is better), from the "
                 "median of each point's timed runs; a change smaller than the spread is noise. GPM DRAM "
                 "BW: DRAM bandwidth utilisation mean / max (% of peak), over the first run.")
    card_txt = page.data.get("header", {}).get("card")
    if sweep.get("card") and card_txt and sweep["card"] != card_txt:
        page.md += [f"**sweep.json names card `{sweep['card']}`, card.txt `{card_txt}`.**", ""]
    if not base:
        page.md += [f"_No `{baseline}` points in this sweep: no % change computed._", ""]
    page.failures("latency", failed)
    page.md += md_table(rows, [
        ("spec", lambda r: r["spec"]), ("sampling", lambda r: r["sampling"]), ("bs", lambda r: r["bs"]),
        ("mode", lambda r: f"`{r['mode']}`"), ("requests", lambda r: r["requests"]),
        ("tokens", lambda r: r["tokens"]), ("tok/s", lambda r: f_num(r["throughput_tok_s"])),
        (f"tok/s vs {baseline}", lambda r: f_pct(r["throughput_change_pct"])),
        ("ms/token", lambda r: f_num(r["latency_ms_per_token"], 2)),
        (f"ms/token vs {baseline}", lambda r: f_pct(r["latency_change_pct"])),
        ("runs", lambda r: r["runs"]),
        ("spread (max-min)/median", lambda r: f_pct(r["spread_pct"], signed=False)),
        ("accept len", lambda r: f_num(r["accept_length"], 2)),
        ("GPM DRAM BW %", lambda r: _gpm_cell(r["gpm"])),
    ])
    if page.plt is None:
        page.md += ["_(plots skipped: matplotlib is not installed)_", ""]
        return
    for spec, sampling in sorted({(r["spec"], r["sampling"]) for r in rows}):
        sel = [r for r in rows if (r["spec"], r["sampling"]) == (spec, sampling)]
        fig, axes = page.plt.subplots(1, 2, figsize=(10, 3.6))
        for mode in sorted({r["mode"] for r in sel}, key=mode_key):
            pts = sorted((r["bs"], r) for r in sel if r["mode"] == mode)
            style = dict(color="black", linestyle="--") if mode == baseline else {}
            for ax, key in ((axes[0], "throughput_tok_s"), (axes[1], "latency_ms_per_token")):
                ys = [math.nan if r[key] is None else r[key] for _, r in pts]
                ax.plot([bs for bs, _ in pts], ys, marker="o", label=mode, **style)
        sizes = sorted({r["bs"] for r in sel})
        for ax, label in ((axes[0], "throughput (tok/s)"), (axes[1], "latency (ms/token)")):
            ax.set_xscale("log", base=2)
            ax.set_xticks(sizes, [str(bs) for bs in sizes], minor=False)
            ax.minorticks_off()
            ax.set(xlabel="batch size", ylabel=label)
            ax.legend(fontsize=7)
        fig.suptitle(f"{spec}, {sampling}")
        page.plot(fig, f"latency_{slug(spec, sampling)}.png", f"latency and throughput, {spec} {sampling}")


def invariants(page: Page) -> None:
    title = "Invariant counters"
    _, points, _, why = page.entries("sweep.json", "points")
    pts = [p for p in points if p.get("invariants")]
    if not pts:
        why = why or f"{NOT_MEASURED} (no invariant counters in sweep.json)"
        return page.missing("invariants", title, why)
    rows = []
    for p in by_mode_order(pts, "spec", "sampling", "bs"):
        inv = p["invariants"]
        row = {k: p[k] for k in ("spec", "sampling", "bs", "mode")}
        row.update({k: inv.get(k) for k in ("steps", "staged", "committed", "accepted", "violations")})
        row["rejected_not_written"] = (None if row["staged"] is None or row["committed"] is None
                                       else row["staged"] - row["committed"])
        # NWOR's claim: it writes exactly the accepted rows. Only meaningful where rows were staged.
        row["committed_equals_accepted"] = None if not row["staged"] else row["committed"] == row["accepted"]
        rows.append(row)
    broken = [r for r in rows if r["committed_equals_accepted"] is False or r["violations"] not in (0, None)]
    idle = [r for r in rows if "nwor" in r["mode"] and not r["staged"]]
    checked = [r for r in rows if r["committed_equals_accepted"] is not None]
    page.data["invariants"] = {"rows": rows, "all_ok": not broken, "broken": len(broken),
                               "nwor_runs_staging_nothing": len(idle)}
    if broken:
        verdict = (f"**{len(broken)} of {len(rows)} runs break an invariant** (committed != accepted or "
                   "violations != 0).")
    else:
        verdict = (f"No broken invariant: committed == accepted in all {len(checked)} runs that staged rows; "
                   f"no violations recorded in any of the {len(rows)} runs.")
    if idle:
        verdict += f" **{len(idle)} runs in an NWOR mode staged nothing** (NWOR did not run there)."
    page.section(title, verdict + " Rejected = staged - committed: rows never written to the KV pool.")
    page.md += md_table(rows, [
        *[(k, lambda r, k=k: r[k]) for k in ("spec", "sampling", "bs")], ("mode", lambda r: f"`{r['mode']}`"),
        *[(k, lambda r, k=k: r[k]) for k in ("steps", "staged", "committed", "accepted")],
        ("rejected (not written)", lambda r: r["rejected_not_written"]),
        ("committed == accepted", lambda r: {True: "yes", False: "**NO**", None: "n/a (nothing staged)"}[
            r["committed_equals_accepted"]]),
        ("violations", lambda r: r["violations"]),
    ])


def _provider(b: dict) -> str:
    params = b.get("params") or {}
    return str(params.get("provider") or params.get("variant") or b.get("param") or b["name"])


def _shape(b: dict, provider: str) -> str:
    """The benchmark's shape: its group, else its parametrize id without the provider part."""
    if b.get("group"):
        return b["group"]
    test, _, pid = b["name"].partition("[")
    pid = pid.rstrip("]")
    if pid.startswith(provider + "-"):
        pid = pid[len(provider) + 1 :]
    elif pid.endswith("-" + provider):
        pid = pid[: -len(provider) - 1]
    return f"{test.removeprefix('test_bench_')} {pid}".strip()


def microbenchmarks(page: Page) -> None:
    title = "Kernel microbenchmarks"
    bench, why = page.load("bench.json")
    benches = (bench or {}).get("benchmarks") or []
    if not benches:
        return page.missing("microbenchmarks", title, why or f"{NOT_MEASURED} (bench.json has no benchmarks)")
    by_shape: dict[str, dict[str, dict]] = {}
    for b in benches:
        prov, ex = _provider(b), b.get("extra_info") or {}
        by_shape.setdefault(_shape(b, prov), {})[prov] = dict(
            median_us=b["stats"]["median"] * 1e6, device_us=ex.get("device_us"),
            launches=ex.get("launches", ex.get("launches_formula")),
            pool_bytes_written=ex.get("pool_bytes_written"),
        )
    rows = []
    for shape, provs in by_shape.items():
        for prov, v in sorted(provs.items(), key=lambda kv: (not kv[0].startswith("ours"), kv[0])):
            up = None  # ours-X against upstream-X when that exists, else against upstream
            if prov.startswith("ours"):
                up = provs.get("upstream" + prov[len("ours"):]) or provs.get("upstream")
            row = dict(shape=shape, provider=prov, **v, host_speedup=None, device_speedup=None)
            if up and v["median_us"]:
                row["host_speedup"] = up["median_us"] / v["median_us"]
            if up and up.get("device_us") and v.get("device_us"):
                row["device_speedup"] = up["device_us"] / v["device_us"]
            rows.append(row)
    page.data["microbenchmarks"] = {"datetime": bench.get("datetime"), "rows": rows}
    page.section(title, "pytest-benchmark median host wall time per call (call + synchronize) and device "
                 "time from CUDA events (extra_info.device_us). Speedup = upstream / ours: ours-X against "
                 "upstream-X where that exists, else against upstream; same run.")
    page.md += md_table(rows, [
        ("shape", lambda r: r["shape"]), ("provider", lambda r: r["provider"]),
        ("median us", lambda r: f_num(r["median_us"])), ("device us", lambda r: f_num(r["device_us"])),
        ("launches", lambda r: r["launches"]), ("KV MB written", lambda r: f_mb(r["pool_bytes_written"])),
        ("speedup host", lambda r: f_x(r["host_speedup"])),
        ("speedup device", lambda r: f_x(r["device_speedup"])),
    ])


SECTIONS = [header, tests, dram_writes, launches, latency, invariants, microbenchmarks]


def build(results: Path, out: Path, command: str | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    page = Page(results, out, command)
    for section in SECTIONS:
        try:
            section(page)
        except Exception as exc:  # one bad input must not cost the rest of the page
            key = section.__name__
            print(f"[nightly_report] section {key} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            page.md += [f"## {key}", "", f"_section not built: {type(exc).__name__}: {exc}_", ""]
            page.data[key] = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}
    (out / "report.md").write_text("\n".join(page.md).rstrip() + "\n")
    (out / "report.json").write_text(json.dumps(page.data, indent=1) + "\n")
    return page.data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="default: RESULTS")
    args = ap.parse_args()
    build(args.results, args.out or args.results, " ".join(["python"] + sys.argv))
    print(f"wrote {(args.out or args.results) / 'report.md'}")


if __name__ == "__main__":
    main()
