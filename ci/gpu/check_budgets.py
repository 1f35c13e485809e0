"""Latency budgets: fail when a fresh pytest-benchmark run is slower than this card's stored baseline.

Why: kernel timings only mean something against the same card, so each card has its own
baseline under ci/gpu/baselines/<card-slug>/, stored in pytest-benchmark's own layout
(<machine_id>/<NNNN>_<label>.json, written by its FileStorage: what --benchmark-storage and
--benchmark-compare read). The verdict uses pytest-benchmark's own --benchmark-compare-fail
machinery (parse_compare_fail -> PercentageRegressionCheck / DifferenceRegressionCheck, matched
by fullname as in --benchmark-compare) on the JSON the GPU suite already wrote with
--benchmark-json, so the benchmarks do not run twice.

    python ci/gpu/check_budgets.py check OUT/bench.json --card-file OUT/card.txt [--fail median:25%]
    python ci/gpu/check_budgets.py promote OUT/bench.json --card-file OUT/card.txt --label <run name>

check exits 0 when every baseline benchmark was compared and is within budget; 1 on a
regression or when a baseline benchmark is missing from the fresh run (unless
--allow-missing); 2 when nothing could be compared (no baseline for this card, or no
benchmarks in the fresh JSON). With no baseline the fresh run is saved as a candidate under
OUT/baseline-candidate/ (never reported as compared); `promote` adopts a run as the baseline.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

from pytest_benchmark.storage.file import FileStorage
from pytest_benchmark.utils import parse_compare_fail

BASELINES = Path(__file__).resolve().parent / "baselines"


class _Log:  # the logger FileStorage wants
    def info(self, text, **_):
        print(text, file=sys.stderr)

    warning = info


def card_slug(card: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", card.lower()).strip("-")


def card_name(args) -> str:
    if args.card:
        return args.card
    first = Path(args.card_file).read_text().splitlines()[0]  # nvidia-smi: "name, driver, memory"
    return first.split(",")[0].strip()


def machine_id(run: dict) -> str:
    """pytest_benchmark.utils.get_machine_id(), computed from the run's machine_info."""
    mi = run.get("machine_info") or {}
    py = ".".join(str(mi.get("python_version", "0.0")).split(".")[:2])
    bits = (mi.get("cpu") or {}).get("bits", 64)
    return f"{mi.get('system', 'Linux')}-{mi.get('python_implementation', 'CPython')}-{py}-{bits}bit"


def storable(run: dict) -> dict:
    """The run as pytest-benchmark saves it without --benchmark-save-data (no per-round samples)."""
    run = json.loads(json.dumps(run))
    for b in run.get("benchmarks", []):
        b.get("stats", {}).pop("data", None)
    return run


def save(run: dict, root: Path, label: str) -> Path:
    """Store the run as --benchmark-save would: <root>/<machine_id>/<next NNNN>_<label>.json."""
    storage = FileStorage(root, _Log(), default_machine_id=machine_id(run))
    storage.save(storable(run), label)
    return max(storage.get("").glob(f"[0-9][0-9][0-9][0-9]_{label}.json"))


def latest_baseline(root: Path, mid: str):
    """(path, run) of the newest stored run: this machine id's, else any (as --benchmark-compare)."""
    if not root.is_dir():
        return None, None
    for default in (mid, None):
        if default is not None and not (root / default).is_dir():
            continue
        found = list(FileStorage(root, _Log(), default_machine_id=default).load())[-1:]
        if found:
            path, run = found[0]
            return root / path, run
    return None, None


def check(args) -> int:
    fresh_path = Path(args.fresh)
    out = Path(args.out or fresh_path.parent)
    try:
        card = card_name(args)
    except (OSError, IndexError) as exc:
        print(f"NOT COMPARED: no card name ({exc})")
        return _finish(out, {"status": "not compared", "reason": f"no card name: {exc}"}, 2)
    slug = card_slug(card)
    fresh = json.loads(fresh_path.read_text()) if fresh_path.exists() and fresh_path.stat().st_size else {}
    benches = {b["fullname"]: b for b in fresh.get("benchmarks", [])}
    result: dict = {"card": card, "slug": slug, "fresh": str(fresh_path), "checks": args.fail}
    if not benches:
        print(f"NOT COMPARED: {fresh_path} has no benchmarks (did the kernel step run?)")
        return _finish(out, result | {"status": "not compared", "reason": "no benchmarks in fresh run"}, 2)
    base_path, base = latest_baseline(Path(args.baselines) / slug, machine_id(fresh))
    if base is None:
        cand = out / "baseline-candidate"
        if cand.exists():
            shutil.rmtree(cand)
        saved = save(fresh, cand / slug, args.label or "candidate")
        print(f"NOT COMPARED: no latency baseline for card {card!r} in {Path(args.baselines) / slug}.\n"
              f"This run was saved as a baseline candidate: {saved}\n"
              f"To adopt it: python ci/gpu/check_budgets.py promote {fresh_path} --card {card!r} --label RUN")
        result |= {"status": "not compared", "reason": "no baseline", "candidate": str(saved)}
        return _finish(out, result, 2)

    checks = [parse_compare_fail(spec) for spec in args.fail]
    baseline = {b["fullname"]: b for b in base["benchmarks"]}
    rows, regressions, missing = [], [], []
    for name, old in sorted(baseline.items()):
        new = benches.get(name)
        if new is None:
            missing.append(name)
            continue
        fails = [msg for c in checks if (msg := c.fails(new["stats"], old["stats"]))]
        now, then = new["stats"]["median"], old["stats"]["median"]
        rows.append(dict(name=name, baseline_median_us=then * 1e6, median_us=now * 1e6,
                         median_change_pct=(now / then - 1) * 100 if then else None, fails=fails))
        regressions += [(name, msg) for msg in fails]
    new_only = sorted(set(benches) - set(baseline))

    print(f"Latency budgets for {card} ({', '.join(args.fail)}), baseline {base_path}")
    if base_path.parent.name != machine_id(fresh):
        print(f"note: the baseline ran under {base_path.parent.name}, this run under {machine_id(fresh)}")
    print(f"{'median us':>12} {'baseline':>10} {'change':>8}  benchmark")
    for r in rows:
        flag = "  REGRESSED" if r["fails"] else ""
        pct = "n/a" if r["median_change_pct"] is None else f"{r['median_change_pct']:+.1f}%"
        print(f"{r['median_us']:12.1f} {r['baseline_median_us']:10.1f} {pct:>8}  {r['name']}{flag}")
    for name in missing:
        print(f"MISSING from this run (in the baseline): {name}")
    if new_only:
        print(f"{len(new_only)} benchmarks have no baseline yet (not compared), e.g. {new_only[0]}")
    for name, msg in regressions:
        print(f"REGRESSION {name}: {msg}")
    status = 1 if regressions or (missing and not args.allow_missing) else 0
    verdict = "FAIL" if status else "OK"
    print(f"{verdict}: {len(rows)} compared, {len(regressions)} regressions, {len(missing)} missing, "
          f"{len(new_only)} without baseline")
    result |= dict(status="compared", verdict=verdict, baseline=str(base_path), rows=rows,
                   missing=missing, without_baseline=new_only)
    return _finish(out, result, status)


def _finish(out: Path, result: dict, status: int) -> int:
    out.mkdir(parents=True, exist_ok=True)
    (out / "budgets.json").write_text(json.dumps(result | {"exit_status": status}, indent=1) + "\n")
    return status


def promote(args) -> int:
    run = json.loads(Path(args.fresh).read_text())
    if not run.get("benchmarks"):
        print(f"{args.fresh} has no benchmarks: nothing to promote")
        return 2
    card = card_name(args)
    path = save(run, Path(args.baselines) / card_slug(card), args.label or "baseline")
    print(f"baseline for {card}: {path}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for name in ("check", "promote"):
        p = sub.add_parser(name)
        p.add_argument("fresh", help="pytest-benchmark JSON (--benchmark-json) of the run")
        who = p.add_mutually_exclusive_group(required=True)
        who.add_argument("--card", help="card name as nvidia-smi prints it")
        who.add_argument("--card-file", help="card.txt of the GPU suite (first field of the first line)")
        p.add_argument("--baselines", default=str(BASELINES), help="default: ci/gpu/baselines")
        p.add_argument("--label", default=None, help="name part of the stored file")
        if name == "check":
            p.add_argument("--fail", action="append", default=None,
                           help="a --benchmark-compare-fail spec, repeatable (default median:25%%)")
            p.add_argument("--out", default=None, help="where budgets.json (and a candidate) go; default: "
                           "the fresh JSON's folder")
            p.add_argument("--allow-missing", action="store_true",
                           help="do not fail when a baseline benchmark is absent from the fresh run")
    args = ap.parse_args()
    if args.command == "check":
        args.fail = args.fail or ["median:25%"]
        return check(args)
    return promote(args)


if __name__ == "__main__":
    sys.exit(main())
