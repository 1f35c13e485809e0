"""Steady-state latency per verify step, interleaved across modes, with 95% CIs and
host time per phase.

Every mode's engine is started once, in a child process of its own (SGLang keeps one
configuration per process), and stays resident; then, for each repeat and batch size,
the modes take turns (the order rotates each repeat) running one timed batch of
``--tokens`` output tokens (``ignore_eos``, hundreds of verify steps). Modes come from
tools/measure_engine.py's vocabulary, plus ``no-spec`` (plain decoding, the plugin not
loaded). Every engine, upstream ones included, loads the phase-clock plugin
(sglang_nwor_scv.phases), so host time per scheduler-step phase is measured the same
way in every mode; NVML GPM samples graphics-engine activity over each timed batch.

Per point (mode, bs): median ms per verify step (decode step for ``no-spec``) and per
output token, a bootstrap 95% CI of the median, and for each baseline the paired
relative difference (same repeat round) with its bootstrap 95% CI; a difference is
called only when its CI excludes 0.

    python tools/measure_latency.py --out OUT --layers 32 --spec ngram-tree-n8 \\
        --modes no-spec,plugin-off,plugin-off-native-move,default --bs 1,32,128 --repeats 5

``--spec eagle3-chain`` runs a dummy-weight EAGLE3 head on the same target: SGLang's
EAGLE v2 worker, whose draft forwards sit between the verify steps (NGRAM's draft is host
work); both run SGLang's overlap loop on a GPU.

Writes OUT/latency.json and OUT/latency.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.engine_run import REPO, has_cuda  # noqa: E402
from tools.realistic_model import SHAPE_NAMES, SHAPES, write_model  # noqa: E402
from tools.measure_engine import (  # noqa: E402
    ATTENTION_BACKENDS,
    PLAIN_DECODING,
    build_engine_kwargs,
    card,
    mode_env,
    mode_name,
    needs_eagle3_head,
    prompts_for,
)

PHASE_PLUGIN = "nwor_scv_phases"
BASELINES = ("plugin-off", "plugin-off-native-move")
MIN_ROUNDS = 5  # the project's method: fewer paired rounds than this and no difference is called


# ---------------------------------------------------------------- statistics
def bootstrap_ci(values: list[float], stat=statistics.median, n: int = 4000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95% CI of ``stat`` over ``values``."""
    if len(values) < 2:
        return (values[0], values[0]) if values else (float("nan"), float("nan"))
    rng = random.Random(seed)
    k = len(values)
    draws = sorted(stat([values[rng.randrange(k)] for _ in range(k)]) for _ in range(n))
    return draws[int(0.025 * n)], draws[int(0.975 * n) - 1]


def paired_difference(mode_runs: dict[int, float], base_runs: dict[int, float]) -> dict | None:
    """Relative difference (mode - base) / base per repeat round, its median and CI."""
    rounds = sorted(set(mode_runs) & set(base_runs))
    diffs = [(mode_runs[r] - base_runs[r]) / base_runs[r] for r in rounds]
    if not diffs:
        return None
    lo, hi = bootstrap_ci(diffs)
    return {"median": statistics.median(diffs), "ci95": [lo, hi], "n": len(diffs),
            "called": len(diffs) >= MIN_ROUNDS and (lo > 0 or hi < 0)}


def open_batch_sizes(runs: list[dict], modes: list[str], bs_list: list[int],
                     target_points: float) -> list[int]:
    """Batch sizes that still need rounds: a paired difference the report compares (each
    plugin mode against each upstream baseline in the run, or the baselines against each
    other when no plugin mode runs) has fewer than MIN_ROUNDS rounds or a 95% CI wider than
    ``target_points`` percentage points. Issue 15 asks for 2 points at every batch size; bs 1
    needs many more rounds than bs 128 (run 34: CI widths 4.6 against 2.3 points after 6), so
    the rounds left go where the interval is still wide. It stops on precision, never on the
    sign of a difference."""
    bases = [m for m in BASELINES if m in modes]
    plugin = [m for m in modes if m not in BASELINES and m not in PLAIN_DECODING]
    pairs = [(m, b) for m in plugin for b in bases] or list(zip(bases, bases[1:], strict=False))
    still = []
    for bs in bs_list:
        per_mode = {m: {r["repeat"]: r["ms_per_step"] for r in runs if r["mode"] == m and r["bs"] == bs}
                    for m in modes}
        for mode, base in pairs:
            d = paired_difference(per_mode[mode], per_mode[base])
            if d is None or d["n"] < MIN_ROUNDS or 100 * (d["ci95"][1] - d["ci95"][0]) > target_points:
                still.append(bs)
                break
    return still


def round_fits(elapsed_s: float, longest_round_s: float, deadline_s: float) -> bool:
    """A repeat round starts only if, as long as the longest so far, it ends by the
    deadline (0: none), so a call's hard timeout never cuts a round (run 29)."""
    return not deadline_s or elapsed_s + longest_round_s <= deadline_s


# ---------------------------------------------------------------- phase clocks
def read_phases(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {"flushes": 0, "phases": {}}


def wait_flush(path: Path, after: int, timeout: float = 5.0) -> dict:
    """The phase totals once the scheduler has written them after the last batch."""
    deadline = time.monotonic() + timeout
    while True:
        data = read_phases(path)
        if data.get("flushes", 0) > after or time.monotonic() > deadline:
            return data
        time.sleep(0.02)


def phase_delta(before: dict, after: dict) -> dict:
    """Per busy scheduler iteration: µs inclusive / self and calls per iteration."""
    b, a = before.get("phases", {}), after.get("phases", {})
    iters = a.get("loop.iteration", {}).get("calls", 0) - b.get("loop.iteration", {}).get("calls", 0)
    if iters <= 0:
        return {}
    out = {"iterations": iters}
    for name, row in a.items():
        old = b.get(name, {"calls": 0, "ns": 0, "self_ns": 0})
        calls = row["calls"] - old["calls"]
        if calls:
            out[name] = {"us": (row["ns"] - old["ns"]) / iters / 1e3,
                         "self_us": (row["self_ns"] - old["self_ns"]) / iters / 1e3,
                         "calls": calls / iters}
    return out


# ---------------------------------------------------------------- engines
def _serve(conn, plugin_on: bool, env: dict, kw: dict) -> None:
    """Child process: one resident engine answering ("generate", prompts, params) messages."""
    from tools.engine_run import prepare_process_env

    prepare_process_env(plugin_on, env, extra_plugins=(PHASE_PLUGIN,))
    import sglang as sgl

    try:
        engine = sgl.Engine(**kw)
    except Exception as e:  # reported to the parent, which measures the other modes
        conn.send(("error", repr(e)))
        return
    conn.send(("ready", None))
    try:
        while True:
            msg = conn.recv()
            if msg[0] == "stop":
                break
            if msg[0] == "flush":  # radix cache, KV pool, NGRAM corpus: a fresh start
                conn.send(("out", engine.flush_cache()))
                continue
            conn.send(("out", engine.generate(input_ids=msg[1], sampling_params=msg[2])))
    finally:
        engine.shutdown()


class Resident:
    """One mode's engine in a child process of its own (SGLang keeps one configuration per
    process), started once and kept resident; its phase file and environment recorded."""

    def __init__(self, args, mode: str, model_dir: Path):
        import multiprocessing as mp

        self.mode = mode
        self.phases = args.out / f"phases_{mode}.json"
        self.phases.unlink(missing_ok=True)
        totals = args.out / f"totals_{mode}.json"
        plugin_on, env = mode_env(mode, True, totals)
        env.pop("SGLANG_NWOR_SCV_PROFILE", None)  # NVTX ranges: not in a latency run
        env.pop("SGLANG_NWOR_SCV_LOG_INTERVAL", None)  # flush at the default interval, as served
        if args.log_interval:
            env["SGLANG_NWOR_SCV_LOG_INTERVAL"] = str(args.log_interval)
        if plugin_on and args.staging_mb is not None:
            env["SGLANG_NWOR_GRAPH_MAX_MB"] = str(args.staging_mb)
        env["SGLANG_NWOR_SCV_PHASES"] = str(self.phases)
        if args.acc_len and args.model != "tiny" and mode not in PLAIN_DECODING:
            env["SGLANG_SIMULATE_ACC_LEN"] = str(args.acc_len)
        kw = build_engine_kwargs(args.model, args.spec, model_dir, mode=mode, max_bs=max(args.bs),
                                 attention_backend=args.attention_backend)
        kw.update(log_level="warning")
        if has_cuda() and len(args.modes) > 1:  # several engines share the card
            kw.update(mem_fraction_static=0.9, max_total_tokens=pool_tokens(args))
        self.t0 = time.perf_counter()
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, plugin_on, env, kw), daemon=False)
        self.proc.start()
        self.start_s = None
        self.env = env

    def wait_ready(self, timeout: float) -> None:
        if not self.conn.poll(timeout):
            raise RuntimeError(f"{self.mode}: engine not ready after {timeout:.0f} s")
        kind, detail = self._recv("before it was ready")
        if kind != "ready":
            raise RuntimeError(f"{self.mode}: {detail}")
        self.start_s = time.perf_counter() - self.t0

    def _recv(self, when: str):
        """The child's next message; a child that died (killed for memory, an exception in
        its scheduler) is named by mode and exit code instead of a bare ``EOFError``."""
        try:
            return self.conn.recv()
        except EOFError:
            self.proc.join(5)
            raise RuntimeError(f"{self.mode}: engine process exited with code "
                               f"{self.proc.exitcode} {when}") from None

    def generate(self, prompts, params):
        self.conn.send(("generate", prompts, params))
        kind, out = self._recv(f"while generating for {len(prompts)} prompts")
        return out

    def flush(self):
        """SGLang's ``flush_cache``: empties the radix cache and resets NGRAM's corpus."""
        self.conn.send(("flush",))
        self._recv("while flushing its cache")

    def shutdown(self):
        try:
            if self.proc.is_alive():
                self.conn.send(("stop",))
            self.proc.join(timeout=60)
        finally:
            if self.proc.is_alive():
                self.proc.kill()


def timed(args, res: Resident, bs: int, seed: int, vocab: int) -> dict:
    from tools.gpm_sampler import GpmSampler

    params = {"temperature": 0.0, "max_new_tokens": args.tokens, "ignore_eos": True}
    prompts = prompts_for(bs, args.prompt_len, vocab, seed)
    if args.flush:  # every timed batch starts from the same engine state (off the clock)
        res.flush()  # it also empties torch's allocator cache: refill it with a short batch
        mark = read_phases(res.phases).get("flushes", 0)
        res.generate(prompts_for(bs, args.prompt_len, vocab, 1000 + seed),
                     {"temperature": 0.0, "max_new_tokens": 4, "ignore_eos": True})
        wait_flush(res.phases, mark)  # its phase clocks are written before the timed batch's
    before = read_phases(res.phases)
    sampler = GpmSampler() if args.gpm and has_cuda() else None
    t0 = time.perf_counter()
    if sampler is not None:
        with sampler:
            out = res.generate(prompts, params)
    else:
        out = res.generate(prompts, params)
    wall = time.perf_counter() - t0
    after = wait_flush(res.phases, before.get("flushes", 0))
    tokens = max(o["meta_info"]["completion_tokens"] for o in out)
    verify = max(o["meta_info"].get("spec_verify_ct", 0) for o in out)
    steps = verify if res.mode not in PLAIN_DECODING else tokens
    gpm = sampler.summary() if sampler is not None else None
    return {"mode": res.mode, "bs": bs, "wall_s": wall, "tokens_per_request": tokens,
            "steps": steps, "ms_per_step": 1e3 * wall / max(steps, 1),
            "ms_per_token": 1e3 * wall / max(tokens, 1),
            "accept_length": tokens / verify if verify else None,
            "gpu_active": _gpm_mean(gpm, "graphics_active"), "gpm": gpm,
            "phases": phase_delta(before, after)}


def _gpm_mean(gpm: dict | None, key: str) -> float | None:
    if not gpm:
        return None
    for name, stats in gpm.items():
        if key in name and isinstance(stats, dict) and "mean" in stats:
            return stats["mean"]
    return None


# ---------------------------------------------------------------- summary
def summarize(runs: list[dict], modes: list[str], bs_list: list[int]) -> list[dict]:
    points = []
    for bs in bs_list:
        by_mode = {m: {r["repeat"]: r for r in runs if r["mode"] == m and r["bs"] == bs}
                   for m in modes}
        for m in modes:
            mine = by_mode[m]
            if not mine:
                continue
            step = [r["ms_per_step"] for r in mine.values()]
            tok = [r["ms_per_token"] for r in mine.values()]
            p = {"mode": m, "bs": bs, "n": len(step),
                 "ms_per_step": statistics.median(step), "ms_per_step_ci95": bootstrap_ci(step),
                 "ms_per_token": statistics.median(tok), "ms_per_token_ci95": bootstrap_ci(tok),
                 "tokens_per_s": bs * 1e3 / statistics.median(tok),
                 "gpu_active": _median([r["gpu_active"] for r in mine.values()]),
                 "phases_us": _median_phases([r["phases"] for r in mine.values()])}
            lo, hi = p["ms_per_step_ci95"]
            p["ci_width_pct"] = 100 * (hi - lo) / p["ms_per_step"]
            # a plugin mode that turns one feature of the default off (or on) is compared with
            # the default itself too: what that feature alone does, paired per round
            against_default = ("default",) if m not in (*BASELINES, *PLAIN_DECODING) else ()
            for base in (*BASELINES, "no-spec", *against_default):
                if base == m or not by_mode.get(base):
                    continue
                key = "ms_per_token" if "no-spec" in (m, base) else "ms_per_step"
                p[f"vs_{base}"] = paired_difference({k: r[key] for k, r in mine.items()},
                                                    {k: r[key] for k, r in by_mode[base].items()})
                p[f"vs_{base}"]["metric"] = key
            points.append(p)
    return points


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _median_phases(rows: list[dict]) -> dict:
    names = sorted({k for r in rows for k in r if k != "iterations"})
    return {n: {"us": _median([r[n]["us"] for r in rows if n in r]),
                "self_us": _median([r[n]["self_us"] for r in rows if n in r])} for n in names}


# SGLang's overlap loop (on by default on a GPU, NGRAM included) launches step k inside
# run_batch, then processes step k-1's output, then receives and schedules, all while the GPU
# computes step k. run_batch(k+1) starts by waiting for step k's accepted lengths
# (loop.wait_prev: FutureMap.resolve_seq_lens_cpu, a D2H NGRAM needs for its mask); from
# then until the next launch the GPU idles: the rest of run_batch before the worker (no
# clock), the draft and the forward's preparation. So the serial host work is the draft and
# forward.worker; the loop's own phases overlap the GPU.
BEFORE_LAUNCH = ("loop.sampling_copy", "loop.record_batch", "spec.ngram.draft", "forward.worker")
OVERLAPPED = ("loop.recv", "loop.input", "loop.schedule", "loop.output")
DRAFT = ("spec.ngram.draft", "spec.eagle.draft")  # EAGLE's draft forwards run on the GPU too
AFTER_LAUNCH = ("spec.accept", "spec.commit", "spec.kv_move", "spec.ngram.corpus", "loop.relay",
                "loop.copy_to_cpu")


def _phases_us(phases: dict, names) -> float:
    """Inclusive µs of ``names`` summed (a phase this run lacks counts 0)."""
    return sum(phases.get(n, {}).get("us") or 0 for n in names)


POST_VERIFY = ("spec.accept", "spec.commit", "spec.kv_move")  # issue 14: acceptance, commit, move
SIMULATION = "spec.simulate"  # inside spec.accept: SGLANG_SIMULATE_ACC_LEN's stand-in acceptance


def post_verify(points: list[dict]) -> list[dict]:
    """Issue 14's post-verify host µs per busy iteration (``POST_VERIFY``, inclusive) per point,
    the simulated acceptance inside it, and the total without it, with how many times lower
    each is than plugin-off's and the native move's at the same bs (baselines carry the
    simulation too; production runs none of it)."""
    rows = []
    for p in points:
        ph = p["phases_us"]
        if "spec.accept" not in ph:
            continue
        total = _phases_us(ph, POST_VERIFY)
        sim = _phases_us(ph, (SIMULATION,)) if SIMULATION in ph else None  # None: no clock ran
        rows.append({"bs": p["bs"], "mode": p["mode"], "post_verify": total, "simulation": sim,
                     "without_simulation": total - (sim or 0)})
    base = {(r["bs"], r["mode"]): r["without_simulation"] for r in rows}
    for r in rows:
        for b in ("plugin-off", "plugin-off-native-move"):
            theirs = base.get((r["bs"], b))
            r[f"x_lower_than_{b}"] = (theirs / r["without_simulation"]
                                      if theirs and r["without_simulation"] else None)
    return rows


def critical_path(point: dict) -> dict:
    """µs per busy iteration: the GPU's idle time beside the host phases before the verify
    launch (serial with the GPU), the loop's phases (overlapped with it) and the phases after
    the launch (run 23: NGRAM's draft, before the launch, was most of the idle time). NGRAM's
    step: with EAGLE/STANDALONE ``forward.worker`` also holds the draft forwards."""
    ph = point["phases_us"]

    def us(names):
        return _phases_us(ph, names)

    iteration = us(("loop.iteration",))
    active = point.get("gpu_active")
    return {"iteration": iteration,
            "gpu_idle": None if active is None else iteration * (1 - active / 100),
            "before_launch": us(BEFORE_LAUNCH), "draft": us(DRAFT),
            "overlapped": us(OVERLAPPED), "after_launch": us(AFTER_LAUNCH)}


def markdown(meta: dict, points: list[dict]) -> str:
    lines = [f"# Latency per verify step, interleaved ({meta['card']})", "",
             f"{meta['model']}; {meta['spec']}; attention backend "
             f"{_setup(meta, 'attention_backend')}; {meta['repeats']} repeats asked per point "
             f"(completed: column n"
             + (f"; a batch size stopped once every plugin mode's paired difference against "
                f"each baseline had a 95% CI of at most {meta['target_ci_points']:g} points"
                if meta.get("target_ci_points") else "")
             + "), modes "
             f"interleaved (rotating order), {meta['tokens']} output tokens per request, "
             f"greedy; acceptance: {meta['acceptance']}. Versions: {meta['versions']}."
             + (f" NWOR graph-staging budget of plugin modes: {meta['staging_budget']}."
                if meta.get("staging_budget") else ""),
             f"Command: `{meta['command']}`", "",
             *[f"- **{m} did not start**: `{e.splitlines()[-1][:200] if e else ''}`"
               for m, e in meta.get("errors", {}).items()],
             "Median ms per verify step (decode step for `no-spec`) with its bootstrap 95% CI; "
             "differences are paired per repeat round, median and 95% CI; **bold** when the CI "
             f"excludes 0 and at least {MIN_ROUNDS} rounds were paired. Host µs per busy scheduler "
             "iteration from the phase clocks.", "",
             "| bs | mode | n | ms/step [95% CI] | CI width | ms/token | tok/s | GPU active | "
             "vs plugin-off | vs native move | vs no-spec (per token) | host µs/iter | run_batch µs | "
             "output µs | schedule µs |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        ph = p["phases_us"]
        lo, hi = p["ms_per_step_ci95"]
        lines.append("| " + " | ".join([
            str(p["bs"]), f"`{p['mode']}`", str(p["n"]), f"{p['ms_per_step']:.2f} [{lo:.2f}, {hi:.2f}]",
            f"{p['ci_width_pct']:.1f}%", f"{p['ms_per_token']:.3f}", f"{p['tokens_per_s']:.0f}",
            "–" if p["gpu_active"] is None else f"{p['gpu_active']:.0f}%",
            _diff(p.get("vs_plugin-off")), _diff(p.get("vs_plugin-off-native-move")),
            _diff(p.get("vs_no-spec")),
            _us(ph, "loop.iteration"), _us(ph, "loop.run_batch"), _us(ph, "loop.output"),
            _us(ph, "loop.schedule")]) + " |")
    seen = {n for p in points for n in p["phases_us"]}

    def named(names):  # the phases this run has (an EAGLE run has no spec.ngram.*)
        return " + ".join(f"`{n}`" for n in names if n in seen) or "none"

    against = [p for p in points if p.get("vs_default")]
    if against:
        lines += ["", "## Plugin modes against the default", "",
                  "What one feature does: each plugin mode's ms per verify step against `default`'s, "
                  "paired per repeat round (negative: the mode is faster than the default).", "",
                  "| bs | mode | vs `default` |", "|---|---|---|"]
        lines += [f"| {p['bs']} | `{p['mode']}` | {_diff(p['vs_default'])} |" for p in against]
    lines += ["", "## Where the step goes: GPU idle against the host phases around the verify launch", "",
              "GPU idle = iteration x (1 - GPM graphics activity). SGLang's overlap loop "
              "launches a step, then processes the previous step's output and schedules while "
              "the GPU computes; the next `run_batch` starts by waiting for this step's accepted "
              "lengths (`loop.wait_prev`). *Before launch* (serial with the GPU after that wait): "
              + named(BEFORE_LAUNCH) + " (inclusive µs; the rest of `run_batch`'s "
              "own code before the worker, e.g. `_forward_isolation`'s field snapshot, has no "
              "clock). *Overlapped*: "
              + named(OVERLAPPED) + ". *After launch*: " + named(AFTER_LAUNCH)
              + " (launched while the verify forward runs). For plain decoding (`no-spec`) "
              "`loop.output` holds the wait for the GPU.", "",
              "| bs | mode | iteration µs | GPU idle µs | before launch µs | of which draft µs "
              "| overlapped µs | after launch µs |",
              "|---|---|---|---|---|---|---|---|"]
    for p in points:
        c = critical_path(p)
        lines.append(f"| {p['bs']} | `{p['mode']}` | {c['iteration']:.0f} | "
                     + ("–" if c["gpu_idle"] is None else f"{c['gpu_idle']:.0f}")
                     + f" | {c['before_launch']:.0f} | {c['draft']:.0f} | {c['overlapped']:.0f}"
                     f" | {c['after_launch']:.0f} |")
    pv = post_verify(points)
    if pv:
        def ratio(x):
            return "–" if x is None else f"{x:.2f}x"

        lines += ["", "## Post-verify host time (issue 14)", "",
                  "µs per busy iteration in " + " + ".join(f"`{n}`" for n in POST_VERIFY)
                  + f" (inclusive), the simulated acceptance inside it (`{SIMULATION}`, every mode "
                  "alike; production runs none; – where it did not run or was not clocked), and "
                  "the total without it; *x lower* compares totals without it against the "
                  "baseline's at the same bs.", "",
                  "| bs | mode | post-verify µs | of which simulated acceptance µs | without it µs "
                  "| x lower than plugin-off | x lower than native move |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['bs']} | `{r['mode']}` | {r['post_verify']:.0f} | "
                  + ("–" if r["simulation"] is None else f"{r['simulation']:.0f}")
                  + f" | {r['without_simulation']:.0f} | {ratio(r['x_lower_than_plugin-off'])} | "
                  f"{ratio(r['x_lower_than_plugin-off-native-move'])} |" for r in pv]
    lines += ["", "## Host time per busy scheduler iteration, by phase (µs, median over repeats)", ""]
    modes = list(dict.fromkeys(p["mode"] for p in points))
    for bs in sorted({p["bs"] for p in points}):
        rows = {p["mode"]: p["phases_us"] for p in points if p["bs"] == bs}
        names = sorted({n for r in rows.values() for n in r})
        lines += [f"### bs {bs}", "", "| phase | " + " | ".join(f"`{m}` incl / self" for m in modes) + " |",
                  "|---|" + "---|" * len(modes)]
        for n in names:
            lines.append(f"| {n} | " + " | ".join(
                f"{rows[m][n]['us']:.0f} / {rows[m][n]['self_us']:.0f}" if m in rows and n in rows[m]
                else "–" for m in modes) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def _diff(d):
    if not d:
        return "–"
    lo, hi = d["ci95"]
    text = f"{100 * d['median']:+.1f}% [{100 * lo:+.1f}, {100 * hi:+.1f}]"
    if d.get("n", MIN_ROUNDS) < MIN_ROUNDS:
        return f"{text} (n={d['n']}, no claim)"
    return f"**{text}**" if d["called"] else text


def _us(ph, name):
    v = ph.get(name, {}).get("us")
    return "–" if v is None else f"{v:.0f}"


# ---------------------------------------------------------------- main
def pool_tokens(args) -> int:
    """KV pool tokens each resident engine gets: the largest batch's prompts and outputs."""
    return max(args.bs) * (args.prompt_len + args.tokens + 64)


ENGINE_OVERHEAD_BYTES = 3 << 30  # CUDA context, graphs, logits and activations, measured loosely
# SGLang 0.5.17's default memory split for one engine alone on a card: H100 run 20 gave a
# 59.9 GiB KV pool beside 5.2 GiB of weights (8 layers) on 79.6 GiB, 0.82 of the card for both.
ALONE_STATIC_FRACTION = 0.82


def staging_budget_alone(total_bytes: int, layers: int, shape: str = "llama3-8b") -> int:
    """The NWOR graph-staging budget (MiB) one engine gets with the plugin's defaults when it
    has the card to itself: 1% of its KV pool, at most 1 GiB (overlay/graph_stage.py).
    Resident engines share the card and get small pools, so their automatic budget would
    stage fewer buckets than a user's engine does (the H100 runs 26+27 staged only bs 1-8);
    plugin modes are given this budget instead, the one users get."""
    from sglang_nwor_scv.graph_stage import auto_budget_bytes
    from tools.realistic_model import weight_bytes

    weights = weight_bytes(layers, shape=shape)
    return auto_budget_bytes(max(0, int(total_bytes * ALONE_STATIC_FRACTION) - weights)) >> 20


def resident_fit(n_engines: int, layers: int, pool_size: int, free_bytes: int,
                 draft_layers: int = 0, shape: str = "llama3-8b") -> str | None:
    """None when ``n_engines`` engines of ``shape`` fit in ``free_bytes`` together;
    else why not. Engines stay resident together so repeats interleave; on a card too
    small for all modes, run the modes in groups that fit (each group its own command)."""
    from tools.realistic_model import kv_row_bytes, weight_bytes

    each = (weight_bytes(layers, shape=shape) + pool_size * kv_row_bytes(layers, shape=shape)
            + ENGINE_OVERHEAD_BYTES)
    if draft_layers:  # an EAGLE3 head: its own embedding and LM head, its layer, its KV pool
        each += weight_bytes(draft_layers) + pool_size * kv_row_bytes(draft_layers)
    if n_engines * each <= free_bytes:
        return None
    fit = free_bytes // each
    return (f"{n_engines} resident engines need about {n_engines * each / 2**30:.0f} GiB "
            f"({each / 2**30:.1f} GiB each: weights, a {pool_size}-token KV pool, overhead); "
            f"the card has {free_bytes / 2**30:.0f} GiB free, room for {fit}. Pass fewer --modes "
            f"(or a smaller --bs / --tokens) and run the rest as a second command.")


def read_run(run_dir: Path) -> dict:
    """A run's ``latency.json``; committed reports keep it gzipped to stay inside a carry."""
    plain = run_dir / "latency.json"
    if plain.exists():
        return json.loads(plain.read_text())
    with gzip.open(run_dir / "latency.json.gz", "rt") as f:
        return json.load(f)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out")))
    ap.add_argument("--model", choices=["tiny", *SHAPES], default="llama3-8b",
                    help="llama3.2-1b: the host-bound small shape (16 layers, hidden 2048)")
    ap.add_argument("--layers", type=int, default=None, help="depth (default: the shape's own)")
    ap.add_argument("--spec", default="ngram-tree-n8")
    ap.add_argument("--attention-backend", choices=ATTENTION_BACKENDS, default="triton",
                    help="every mode's attention backend: triton (NWOR stages only there) or "
                         "SGLang's default on Hopper, fa3 (NWOR steps aside; the move, SCV and the "
                         "NGRAM kernels still run)")
    ap.add_argument("--modes", default="no-spec,plugin-off,plugin-off-native-move,default")
    ap.add_argument("--bs", default="1,32,128")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5,
                    help="rounds per batch size (the most, with --target-ci-points)")
    ap.add_argument("--target-ci-points", type=float, default=0,
                    help="after MIN_ROUNDS, keep running rounds only at batch sizes whose paired "
                         "differences' 95%% CI is wider than this many percentage points "
                         "(0: every batch size gets --repeats rounds)")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--acc-len", type=float, default=2.5, help="SGLANG_SIMULATE_ACC_LEN (dummy model)")
    ap.add_argument("--gpm", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--flush", action=argparse.BooleanOptionalAction, default=True,
                    help="flush_cache before each timed batch: run 23's repeats drifted slower as "
                         "the NGRAM corpus and radix cache grew (plain decoding did not)")
    ap.add_argument("--log-interval", type=int, default=0,
                    help="SGLANG_NWOR_SCV_LOG_INTERVAL (0: the plugin's default, as served)")
    ap.add_argument("--start-timeout", type=float, default=600, help="seconds for the servers to start")
    ap.add_argument("--deadline-s", type=float, default=0,
                    help="finish by this many seconds after start: no repeat starts that the "
                         "longest repeat so far says would end later")
    ap.add_argument("--graph-max-mb", default="alone",
                    help="plugin modes' staging budget: 'alone' (what one engine gets with the "
                         "card to itself; the 8B shape on a GPU), 'pool' (1%% of each resident "
                         "engine's own small pool) or MiB")
    ap.add_argument("--merge", type=Path, nargs="+", metavar="RUN_DIR",
                    help="no measurement: one report (in --out) from these runs' latency.json "
                         "(or latency.json.gz, as committed reports keep it)")
    args = ap.parse_args()
    if args.merge:
        meta, runs = merge_runs([read_run(d) for d in args.merge])
        args.out.mkdir(parents=True, exist_ok=True)
        write_report(args.out, meta, runs)
        return 0
    # A time limit (``timeout``) sends SIGTERM: shut the engines down through ``finally``,
    # else their processes keep the card's memory and the next group cannot start.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t_begin = time.monotonic()
    args.modes = [mode_name(m) for m in args.modes.split(",")]
    args.bs = [int(x) for x in args.bs.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    if args.model == "tiny":
        from tools.make_tiny_models import ensure

        model_dir = ensure(REPO / ".fixtures" / "tiny")
        model = "tiny trained Llama pair (tools/make_tiny_models.py)"
        vocab, acceptance = 260, "the tiny pair's own"
    else:
        if needs_eagle3_head(args.spec) and args.model != "llama3-8b":
            raise SystemExit(f"--spec {args.spec} needs an EAGLE3 head, written for llama3-8b only")
        args.layers = args.layers or SHAPES[args.model]["num_hidden_layers"]
        model_dir = write_model(Path(tempfile.mkdtemp(prefix=args.model + "-")), args.model, args.layers)
        model = f"{SHAPE_NAMES[args.model]} shape, {args.layers} layers, dummy weights"
        vocab, acceptance = SHAPES[args.model]["vocab_size"], f"SGLANG_SIMULATE_ACC_LEN={args.acc_len}"
    import sglang
    import torch

    meta = {"card": card(), "model": model, "spec": args.spec, "repeats": args.repeats,
            "attention_backend": args.attention_backend,
            "target_ci_points": args.target_ci_points,
            "tokens": args.tokens, "acceptance": acceptance, "modes": args.modes, "bs": args.bs,
            "flush_before_batch": args.flush,
            "versions": f"sglang {sglang.__version__}, torch {torch.__version__}",
            "command": "python tools/measure_latency.py " + " ".join(sys.argv[1:])}
    args.staging_mb = None  # None: the plugin's automatic budget of each engine's own pool
    if args.graph_max_mb == "alone":
        if has_cuda() and args.model != "tiny":
            args.staging_mb = staging_budget_alone(torch.cuda.mem_get_info()[1], args.layers,
                                                   args.model)
            meta["staging_budget"] = (f"{args.staging_mb} MiB: what one engine gets with the card "
                                      "to itself (1% of its KV pool, at most 1 GiB)")
    elif args.graph_max_mb != "pool":
        args.staging_mb = int(args.graph_max_mb)
        meta["staging_budget"] = f"{args.staging_mb} MiB (--graph-max-mb)"
    if has_cuda() and args.model != "tiny":
        why = resident_fit(len(args.modes), args.layers, pool_tokens(args),
                           torch.cuda.mem_get_info()[0],
                           draft_layers=1 if needs_eagle3_head(args.spec) else 0,
                           shape=args.model)
        if why:
            raise SystemExit(why)
    engines, runs = {}, []
    try:
        for mode in args.modes:  # all start at once; each is waited for in turn
            engines[mode] = Resident(args, mode, model_dir)
        for mode, res in list(engines.items()):
            try:
                res.wait_ready(args.start_timeout)
                print(f"{mode} up in {res.start_s:.0f} s", flush=True)
            except RuntimeError as e:  # measure the others; say which one did not start
                print(f"{mode} FAILED to start: {str(e)[-1500:]}", flush=True)
                meta.setdefault("errors", {})[mode] = str(e)[-1500:]
                res.shutdown()
                del engines[mode]
        meta["modes"] = args.modes = [m for m in args.modes if m in engines]
        if not engines:
            raise SystemExit("no engine started: " + json.dumps(meta.get("errors")))
        for res in engines.values():  # warm-up: every batch size once, short
            for bs in args.bs:
                res.generate(prompts_for(bs, args.prompt_len, vocab, 1),
                             {"temperature": 0.0, "max_new_tokens": 16, "ignore_eos": True})
        longest = 0.0
        round_bs = list(args.bs)  # with --target-ci-points: the batch sizes not yet resolved
        for r in range(args.repeats):
            if r and not round_fits(time.monotonic() - t_begin, longest, args.deadline_s):
                print(f"deadline: stopping after {r} repeats", flush=True)
                break
            t_round = time.monotonic()
            for bs in round_bs:
                order = args.modes[r % len(args.modes):] + args.modes[:r % len(args.modes)]
                for mode in order:
                    row = timed(args, engines[mode], bs, 2 + r, vocab)
                    row["repeat"] = r
                    runs.append(row)
                    print(json.dumps({k: row[k] for k in ("repeat", "mode", "bs", "ms_per_step",
                                                          "steps", "gpu_active")}), flush=True)
            _write(args.out, meta, runs, engines)
            longest = max(longest, time.monotonic() - t_round)
            if args.target_ci_points:
                round_bs = open_batch_sizes(runs, args.modes, args.bs, args.target_ci_points)
                if not round_bs:
                    print(f"every batch size resolved to {args.target_ci_points} points after "
                          f"{r + 1} rounds", flush=True)
                    break
    finally:
        for res in engines.values():
            try:
                res.shutdown()
            except Exception as e:  # one engine's shutdown must not lose the results
                print(f"shutdown {res.mode}: {e}", flush=True)
    _write(args.out, meta, runs, engines)
    print((args.out / "latency.md").read_text())
    return 0


SAME_SETUP = ("card", "model", "spec", "tokens", "acceptance", "versions", "flush_before_batch",
              "staging_budget", "attention_backend")


def _setup(meta: dict, key: str):
    """One setup field of a stored run (runs before the backend was recorded used triton)."""
    return meta.get(key, "triton" if key == "attention_backend" else None)


def merge_runs(reports: list[dict]) -> tuple[dict, list[dict]]:
    """One set of runs from several calls of the same setup (a device call holds about five
    repeats of the 8B shape; more repeats narrow the intervals). Repeat rounds are renumbered
    so paired differences still pair runs of one round. Refuses reports whose card, model,
    spec, tokens, acceptance, versions or attention backend differ: those are not repeats of
    one experiment."""
    first = reports[0]["meta"]
    for r in reports[1:]:
        diff = [k for k in SAME_SETUP if _setup(r["meta"], k) != _setup(first, k)]
        if diff:
            raise SystemExit(f"cannot merge: the runs differ in {', '.join(diff)}")
    runs, offset = [], 0
    for r in reports:
        rounds = sorted({row["repeat"] for row in r["runs"]})
        renumber = {old: offset + i for i, old in enumerate(rounds)}
        runs += [dict(row, repeat=renumber[row["repeat"]]) for row in r["runs"]]
        offset += len(rounds)
    modes = list(dict.fromkeys(m for r in reports for m in r["meta"]["modes"]))
    bs = sorted({b for r in reports for b in r["meta"]["bs"]})
    per_point = max(Counter((row["mode"], row["bs"]) for row in runs).values())
    meta = dict(first, modes=modes, bs=bs, repeats=per_point, merged_from=len(reports),
                engine_start_s=[r["meta"].get("engine_start_s") for r in reports],
                outermost=[r["meta"].get("outermost") for r in reports],
                command=f"merged from {len(reports)} runs: "
                        + " ; ".join(r["meta"]["command"] for r in reports))
    return meta, runs


def _write(out: Path, meta: dict, runs: list[dict], engines: dict) -> None:
    meta = dict(meta, engine_start_s={m: e.start_s and round(e.start_s, 1) for m, e in engines.items()},
                outermost={m: read_phases(e.phases).get("outermost") for m, e in engines.items()})
    write_report(out, meta, runs)


def write_report(out: Path, meta: dict, runs: list[dict]) -> None:
    """latency.json (meta, points, every run) and latency.md."""
    points = summarize(runs, meta["modes"], meta["bs"])
    (out / "latency.json").write_text(json.dumps({"meta": meta, "points": points, "runs": runs}, indent=1))
    (out / "latency.md").write_text(markdown(meta, points))


if __name__ == "__main__":
    raise SystemExit(main())
