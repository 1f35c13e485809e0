"""Decode latency/throughput sweep and per-step launch counts of the real engine, per mode.

One engine per (speculative config, mode). In it, for every sampling kind and batch
size: one warm-up batch, then a timed batch (``ignore_eos``, fixed output length)
with the NVML GPM sampler running; then, optionally, one batch under SGLang's own
torch profiler, whose Chrome trace tools/trace_stats.py reduces to launches, CUDA
API calls, host and GPU time per verify step.

Modes (one vocabulary for every tool; plugin on/off via SGLang's ``SGLANG_PLUGINS``,
features via the plugin's switches; each name runs different code):

| mode                   | plugin | switches                                               |
|------------------------|--------|--------------------------------------------------------|
| plugin-off             | no     |                                                        |
| plugin-off-native-move | no     | SGLANG_NATIVE_MOVE_KV_CACHE=1 (upstream's best move)   |
| upstream               | yes    | NWOR, SCV, move off: upstream code + the plugin ranges |
| upstream-native-move   | yes    | as upstream, SGLANG_NATIVE_MOVE_KV_CACHE=1             |
| default                | yes    | none: the plugin as installed                          |
| move                   | yes    | NWOR and SCV off: the one-launch move alone            |
| nwor                   | yes    | SCV off                                                |
| scv                    | yes    | NWOR and the move off                                  |
| no-spec                | no     | plain decoding (speculative arguments dropped)         |

``off`` and ``nwor+scv`` (and measure_ncu's ``nwor_*_scv_*``) are read as aliases of
``upstream`` and ``default`` in stored runs. Results are appended to OUT/sweep.json and
OUT/profile.json.

    python tools/measure_engine.py --out OUT --model llama3-8b --specs ngram-tree-n8 \\
        --modes plugin-off,nwor+scv --bs 1,8,32,64,128 --profile-bs 32
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.engine_run import REPO, SPEC_CONFIGS, engine_kwargs, has_cuda  # noqa: E402
from tools.engine_run import prepare_process_env, restore_env  # noqa: E402

_NO_VERIFY_METADATA = {"SGLANG_SCV_VERIFY_METADATA": "off"}
_NO_MASK = {"SGLANG_SCV_NGRAM_MASK": "off", **_NO_VERIFY_METADATA}  # the replay-glue kernels
# 0.5.17 NGRAM's prompt-tail methods are plugin code too: off in every "upstream" mode
_NO_PROMPT_TAIL = {"SGLANG_SCV_NGRAM_PROMPT_TAIL": "off"}
# the scheduler's batch snapshot with field names read once: plugin code in every release
_NO_BATCH_SNAPSHOT = {"SGLANG_SCV_BATCH_SNAPSHOT": "off"}
# 0.5.17 NGRAM's lookup reading the scheduler's pinned copies of the accepted tokens
_NO_ACCEPT_READBACK = {"SGLANG_SCV_ACCEPT_READBACK": "off"}
_NO_EXTRAS = {**_NO_MASK, **_NO_PROMPT_TAIL, **_NO_BATCH_SNAPSHOT,
              **_NO_ACCEPT_READBACK}  # what the one-feature modes leave off too
_OFF = {"SGLANG_NWOR_MODE": "off", "SGLANG_SCV_MODE": "off", "SGLANG_NWOR_MOVE": "off", **_NO_EXTRAS}
_NATIVE = {"SGLANG_NATIVE_MOVE_KV_CACHE": "1"}
MODES = {  # name -> (plugin loaded, environment); the one-feature modes leave the rest off
    "plugin-off": (False, {}),
    "plugin-off-native-move": (False, _NATIVE),
    "upstream": (True, _OFF),
    "upstream-native-move": (True, {**_OFF, **_NATIVE}),
    "default": (True, {}),
    # the default before 2026-12-06: upstream's ops fill a replayed verify graph's metadata
    "default-no-verify-metadata": (True, _NO_VERIFY_METADATA),
    "default-no-mask": (True, _NO_MASK),
    # the default before the thirteenth session: NGRAM's verify inputs from upstream's ops
    "default-no-ngram-draft": (True, {"SGLANG_SCV_NGRAM_DRAFT": "off"}),
    # the default before the nineteenth session on 0.5.17 NGRAM: whole prompts copied, int64 mask
    "default-no-prompt-tail": (True, _NO_PROMPT_TAIL),
    # the default before the twenty-second session: upstream's batch snapshot and sampling copy
    "default-no-batch-snapshot": (True, _NO_BATCH_SNAPSHOT),
    # the default before the twenty-third session: the lookup's two .cpu() copies
    "default-no-accept-readback": (True, _NO_ACCEPT_READBACK),
    "move": (True, {"SGLANG_NWOR_MODE": "off", "SGLANG_SCV_MODE": "off", **_NO_EXTRAS}),
    "nwor": (True, {"SGLANG_SCV_MODE": "off", **_NO_EXTRAS}),
    "scv": (True, {"SGLANG_NWOR_MODE": "off", "SGLANG_NWOR_MOVE": "off", **_NO_EXTRAS}),
    "ngram-mask": (True, {**_OFF, "SGLANG_SCV_NGRAM_MASK": "on"}),
    "no-spec": (False, {}),  # plain decoding: no speculative algorithm, no plugin
}
PLAIN_DECODING = frozenset({"no-spec"})
ATTENTION_BACKENDS = ("triton", "fa3", "flashinfer")  # SGLang's names; fa3: its default for Llama on Hopper
ALIASES = {"off": "upstream", "nwor+scv": "default", "nwor_off_scv_off": "upstream",
           "nwor_stage_scv_off": "nwor", "nwor_off_scv_graph": "scv", "nwor_stage_scv_graph": "default",
           "default-verify-metadata": "default", "default-ngram-draft": "default"}


def mode_name(mode: str) -> str:
    """The vocabulary's name for ``mode`` (aliases of stored runs resolved)."""
    name = ALIASES.get(mode, mode)
    if name not in MODES:
        raise ValueError(f"unknown mode {mode!r} (known: {', '.join(MODES)})")
    return name


SAMPLING = {"greedy": {"temperature": 0.0}, "sampling": {"temperature": 0.7, "top_p": 0.9}}


def mode_env(mode: str, graphs: bool, totals: Path) -> tuple[bool, dict]:
    """(plugin loaded, environment) of ``mode``; plugin modes also write their counters
    to ``totals`` and open the plugin's profiler ranges. ``graphs`` is kept for callers:
    graph staging is the plugin's default now, so it changes nothing here."""
    plugin_on, features = MODES[mode_name(mode)]
    env = dict(features)
    if plugin_on:
        env.update(SGLANG_NWOR_SCV_TOTALS=str(totals), SGLANG_NWOR_SCV_LOG_INTERVAL="16",
                   SGLANG_NWOR_SCV_PROFILE="1")
    return plugin_on, env


def needs_eagle3_head(spec: str) -> bool:
    """Does ``spec`` (tools/engine_run.SPEC_CONFIGS) draft with an EAGLE head?"""
    return SPEC_CONFIGS[spec]["speculative_algorithm"] in ("EAGLE", "EAGLE3")


def eagle3_head_for(model_dir: Path) -> Path:
    """A dummy EAGLE3 head beside ``model_dir``'s Llama-3-8B-shaped target, reading the
    target layers EAGLE3 reads in Llama models (early, middle, late)."""
    from tools.realistic_model import write_eagle3_draft

    layers = json.loads((model_dir / "config.json").read_text())["num_hidden_layers"]
    if layers < 4:  # SGLang captures the input of layer id + 1: three distinct ids <= L - 2
        raise ValueError(f"an EAGLE3 head reads three target layers: needs >= 4 layers, got {layers}")
    aux = (2, layers // 2, layers - 3) if layers >= 8 else (0, 1, 2)
    return write_eagle3_draft(model_dir.parent / (model_dir.name + "-eagle3-head"), aux)


def build_engine_kwargs(model: str, spec: str, model_dir: Path, *, max_bs: int, mode: str | None = None,
                        graphs: bool = True, tp: int = 1, attention_backend: str = "triton") -> dict:
    """Engine arguments for ``spec`` (tools/engine_run.SPEC_CONFIGS) on the ``tiny`` trained
    pair or the ``llama3-8b``-shaped dummy model in ``model_dir``; ``no-spec`` drops the
    speculative arguments. ``attention_backend``: SGLang's name (``triton``, the backend
    NWOR stages on; ``fa3``, SGLang's default for Llama on Hopper; ``flashinfer``)."""
    if model == "tiny":
        kw = engine_kwargs(spec, model_dir)
        if has_cuda():
            kw.update(dtype="bfloat16", mem_fraction_static=0.3)
    else:  # NGRAM needs no draft model; acceptance comes from SGLANG_SIMULATE_ACC_LEN
        kw = engine_kwargs(spec, model_dir, model_path=str(model_dir), load_format="dummy",
                           dtype="bfloat16", mem_fraction_static=0.8)
        if needs_eagle3_head(spec):  # a dummy head beside the target
            kw.update(speculative_draft_model_path=str(eagle3_head_for(model_dir)),
                      speculative_draft_load_format="dummy")
    if mode in PLAIN_DECODING:
        kw = {k: v for k, v in kw.items() if not k.startswith("speculative_")}
    kw.update(max_running_requests=max_bs, log_level="error", attention_backend=attention_backend)
    if has_cuda():
        kw["disable_cuda_graph"] = not graphs
        if graphs:
            kw["cuda_graph_max_bs_decode"] = max_bs
    if tp > 1:
        kw["tp_size"] = tp
    return kw


def prompts_for(bs: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    return [[(seed * 7919 + i * 104729 + j * 31) % (vocab - 300) + 256 for j in range(length)]
            for i in range(bs)]


def timed_batch(engine, prompts, params, gpm: bool) -> tuple[float, list, dict | None]:
    """Wall time of one generate call, with NVML GPM sampled over it when asked."""
    from tools.gpm_sampler import GpmSampler

    sampler = GpmSampler() if gpm else None
    t0 = time.perf_counter()
    with sampler if sampler is not None else contextlib.nullcontext():
        out = engine.generate(input_ids=prompts, sampling_params=params)
    wall = time.perf_counter() - t0
    return wall, out, (sampler.summary() if sampler is not None else None)


def read_totals(path: Path) -> dict | None:
    """The plugin's cumulative counters for this engine (steps, staged, committed,
    accepted, violations, ...), as of its last flush (every 16 verify steps)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_config(args, spec: str, mode: str, model_dir: Path) -> tuple[list, list]:
    import sglang as sgl

    totals = Path(tempfile.mkstemp(prefix="nwor-scv-totals-", suffix=".json")[1])
    totals.unlink()
    plugin_on, env = mode_env(mode, args.graphs, totals)
    if args.acc_len and args.model != "tiny":
        env["SGLANG_SIMULATE_ACC_LEN"] = str(args.acc_len)
    old = prepare_process_env(plugin_on, env)
    points, profiles = [], []
    t_start = time.perf_counter()
    try:
        engine = sgl.Engine(**build_engine_kwargs(args.model, spec, model_dir, mode=mode, graphs=args.graphs,
                                                  tp=args.tp, max_bs=max(args.bs + [args.profile_bs]),
                                                  attention_backend=args.attention_backend))
        start_s = time.perf_counter() - t_start
        vocab = 260 if args.model == "tiny" else 128256
        try:
            for i, kind in enumerate(args.sampling):
                if i == 1 and args.profile_bs:  # greedy first, then the profile: a crash in a
                    profiles.append(profile_batch(args, engine, spec, mode, vocab))  # later
                    _stream(args, "runs", profiles[-1])  # sampling path keeps both
                for bs in args.bs:
                    points.append(timed_point(args, engine, spec, mode, kind, bs, vocab, totals, start_s))
                    print(json.dumps(points[-1]), flush=True)
                    _stream(args, "points", points[-1])
            if args.profile_bs and not profiles:
                profiles.append(profile_batch(args, engine, spec, mode, vocab))
                _stream(args, "runs", profiles[-1])
        finally:
            engine.shutdown()
    finally:
        restore_env(old)
        totals.unlink(missing_ok=True)
    return points, profiles


def timed_point(args, engine, spec, mode, kind, bs, vocab, totals: Path, start_s: float) -> dict:
    """A warm-up batch, then ``--repeats`` timed ones (fixed output length, GPM sampled
    over the first); the point reports the median wall time and keeps every run's."""
    params = dict(SAMPLING[kind], max_new_tokens=args.tokens, ignore_eos=True)
    engine.generate(input_ids=prompts_for(bs, args.prompt_len, vocab, 1),
                    sampling_params=dict(params, max_new_tokens=8))
    walls, tokens, verify, gpm = [], 0, 0, None
    for r in range(max(1, args.repeats)):
        wall, out, sampled = timed_batch(engine, prompts_for(bs, args.prompt_len, vocab, 2 + r), params,
                                         args.gpm and r == 0)
        walls.append(wall)
        gpm = gpm or sampled
        tokens = sum(o["meta_info"]["completion_tokens"] for o in out)  # the same every run
        verify += sum(o["meta_info"].get("spec_verify_ct", 0) for o in out)
    wall = statistics.median(walls)
    return {"spec": spec, "mode": mode, "sampling": kind, "bs": bs, "requests": bs, "tokens": tokens,
            "wall_s": wall, "wall_s_runs": walls, "throughput_tok_s": tokens / wall,
            "latency_ms_per_token": 1e3 * wall / args.tokens,
            "accept_length": tokens * len(walls) / verify if verify else None, "engine_start_s": start_s,
            "gpm": gpm, "invariants": read_totals(totals)}


def profile_batch(args, engine, spec: str, mode: str, vocab: int) -> dict:
    from tools.trace_stats import kernel_table, load, summarize, window_stats

    trace_dir = args.out / "traces" / f"{spec}_{mode.replace('+', '_')}"
    trace_dir.mkdir(parents=True, exist_ok=True)
    params = dict(SAMPLING["greedy"], max_new_tokens=args.profile_tokens, ignore_eos=True)
    prompts = prompts_for(args.profile_bs, args.prompt_len, vocab, 3)
    engine.generate(input_ids=prompts, sampling_params=dict(params, max_new_tokens=4))
    activities = ["CPU", "GPU"] if has_cuda() else ["CPU"]
    engine.start_profile(output_dir=str(trace_dir), activities=activities, with_stack=False,
                         record_shapes=False)
    out = engine.generate(input_ids=prompts, sampling_params=params)
    engine.stop_profile()
    verify_steps = max(o["meta_info"].get("spec_verify_ct", 0) for o in out)
    traces = sorted(trace_dir.rglob("*.trace.json*"), key=lambda p: p.stat().st_mtime)
    if not traces:
        return {"spec": spec, "mode": mode, "bs": args.profile_bs, "error": "no trace written"}
    events = load(traces[-1])
    ranges = summarize(events)
    step = ranges.pop("verify_step", None)
    return {"spec": spec, "mode": mode, "bs": args.profile_bs,
            "steps": step["count"] if step else 0, "verify_steps": verify_steps,
            "verify_steps_from": "max meta_info spec_verify_ct",
            "window": window_stats(events, verify_steps),
            "kernels": kernel_table(events, verify_steps),
            "per_step": {k: v for k, v in (step or {}).items() if k != "count"},
            "ranges": ranges, "trace": str(traces[-1].relative_to(args.out))}


def _stream(args, key: str, row: dict) -> None:
    """Each result is on disk as soon as it exists: an engine crash keeps the earlier ones."""
    with open(args.out / f".{key}.partial.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def _take_stream(out: Path, key: str) -> list:
    path = out / f".{key}.partial.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    path.unlink(missing_ok=True)
    return rows


def run_config_isolated(args, spec: str, mode: str) -> tuple[list, list, str | None]:
    """One (spec, mode) engine in a child process: SGLang answers a scheduler crash by
    killing its parent, which must not take the other configs' results with it."""
    import subprocess

    cmd = [sys.executable, __file__, *args.argv, "--specs", spec, "--modes", mode, "--in-process"]
    try:
        proc = subprocess.run(cmd, timeout=args.config_timeout, capture_output=True, text=True)
        error = None if proc.returncode == 0 else f"rc {proc.returncode}: {proc.stderr[-800:]}"
        sys.stdout.write(proc.stdout[-4000:])
    except subprocess.TimeoutExpired:
        error = f"timed out after {args.config_timeout} s"
    return _take_stream(args.out, "points"), _take_stream(args.out, "runs"), error


def append_json(path: Path, key: str, rows: list, meta: dict) -> None:
    data = json.loads(path.read_text()) if path.exists() else dict(meta, **{key: []})
    data[key].extend(rows)
    path.write_text(json.dumps(data, indent=1))


def card() -> str:
    if not has_cuda():
        return "cpu"
    import torch

    return torch.cuda.get_device_name(0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out")))
    ap.add_argument("--model", choices=["tiny", "llama3-8b"], default="llama3-8b")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--specs", default="ngram-chain,ngram-tree-n8")
    ap.add_argument("--attention-backend", choices=ATTENTION_BACKENDS, default="triton")
    ap.add_argument("--modes", default="plugin-off,plugin-off-native-move,default")
    ap.add_argument("--bs", default="1,8,32,64,128")
    ap.add_argument("--sampling", default="greedy,sampling")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="timed batches per point (median reported)")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--acc-len", type=float, default=2.5, help="SGLANG_SIMULATE_ACC_LEN (dummy model)")
    ap.add_argument("--profile-bs", type=int, default=32, help="0: no profiler run")
    ap.add_argument("--profile-tokens", type=int, default=24)
    ap.add_argument("--graphs", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--gpm", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--config-timeout", type=int, default=300, help="seconds per (spec, mode) engine")
    ap.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    skip = {"--specs", "--modes"}
    raw = sys.argv[1:]
    args.argv = [a for i, a in enumerate(raw) if a not in skip and (i == 0 or raw[i - 1] not in skip)]
    args.bs = [int(x) for x in args.bs.split(",")]
    args.sampling = args.sampling.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.model == "tiny":
        from tools.make_tiny_models import ensure

        model_dir = ensure(REPO / ".fixtures" / "tiny")
        model_name = "tiny trained Llama pair (tools/make_tiny_models.py)"
    else:
        from tools.realistic_model import write_llama3_8b

        model_dir = write_llama3_8b(Path(tempfile.mkdtemp(prefix="llama3-8b-")), args.layers)
        model_name = f"Llama-3-8B shape, {args.layers} layers, dummy weights"
    meta = {"card": card(), "model": model_name, "graphs": args.graphs, "tp": args.tp,
            "attention_backend": args.attention_backend,
            "acc_len": args.acc_len if args.model != "tiny" else None}
    if args.in_process:
        run_config(args, args.specs, args.modes, model_dir)
        return 0
    for spec in args.specs.split(","):
        for mode in args.modes.split(","):
            print(f"=== {spec} {mode}", flush=True)
            points, profiles, error = run_config_isolated(args, spec, mode)
            if error:  # record and go on: one bad config must not hide the rest
                print(f"FAILED {spec} {mode}: {error[-300:]}", flush=True)
                points.append({"spec": spec, "mode": mode, "error": error})
            append_json(args.out / "sweep.json", "points", points, meta)
            if profiles:
                append_json(args.out / "profile.json", "runs", profiles, meta)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
