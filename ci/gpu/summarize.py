"""Print the GPU suite's pass/fail table and headline numbers from its artifacts."""

from __future__ import annotations

import glob
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tools.nightly_report import junit_cases  # noqa: E402  (the one JUnit reader)


def junit(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return [(path.stem, "not run")]
    return [(name, {"fail": "FAIL", "error": "FAIL"}.get(kind, kind)) for name, kind in junit_cases(path)]


def step_cases(out: Path, name: str) -> list[tuple[str, str]]:
    """A step's test cases: its ``<name>.xml``, or one ``<name>-<test>.xml`` per test
    where the step runs each test in a process of its own (faults; the suite writes an
    error case for a test whose process was cut before pytest wrote its file)."""
    parts = sorted(out.glob(f"{name}-*.xml"))
    if not parts:
        return junit(out / f"{name}.xml")
    return [row for part in parts for row in junit(part)]


_SUMMARY = re.compile(r"ERROR SUMMARY: (\d+) error|RACECHECK SUMMARY: \d+ hazards? displayed \((\d+) error")


def sanitizer_rows(out: Path) -> list[tuple[str, str, str]]:
    """(tool, errors, tests) per compute-sanitizer log of the suite's sanitizer step. The
    error count is the sanitizer's own summary (its last, whole-process one): ``ERROR
    SUMMARY: N errors``, or racecheck's ``RACECHECK SUMMARY: H hazards displayed (N errors,
    W warnings)`` (run 44: racecheck prints no ERROR SUMMARY); a log without one was cut."""
    rows = []
    for log in sorted((out / "sanitizer").glob("*.log")):
        found = [a or b for a, b in _SUMMARY.findall(log.read_text(errors="replace"))]
        cases = junit(log.with_suffix(".xml"))
        counts = {s: sum(1 for _, st in cases if st == s) for s in ("pass", "FAIL", "skip")}
        rows.append((log.stem, found[-1] if found else "no summary (cut?)", str(counts)))
    return rows


def main(out: Path) -> None:
    card = (out / "card.txt").read_text().strip() if (out / "card.txt").exists() else "?"
    print(f"# GPU suite\n\n```\n{card}\n```\n")
    for name in ("kernels", "engine", "faults", "flashinfer"):
        rows = step_cases(out, name)
        counts = {s: sum(1 for _, st in rows if st == s) for s in ("pass", "FAIL", "skip")}
        print(f"## {name}: {counts}\n")
        for n, st in rows:
            if st != "pass" or name != "kernels":
                print(f"- {st}: {n}")
        print()
    san = sanitizer_rows(out)
    if san:
        print("## compute-sanitizer\n\n| tool | errors | tests |\n|---|---|---|")
        for tool, errors, tests in san:
            print(f"| {tool} | {errors} | {tests} |")
        print()
    bench = out / "bench.json"
    if bench.exists() and bench.stat().st_size:
        print("## benchmarks (median, us)\n\n| benchmark | median us | extra |\n|---|---|---|")
        for b in json.loads(bench.read_text())["benchmarks"]:
            extra = {k: v for k, v in b.get("extra_info", {}).items() if not isinstance(v, (list, dict))}
            print(f"| {b['name']} | {b['stats']['median'] * 1e6:.1f} | {extra} |")
        print()
    for f in sorted(glob.glob(str(out / "ncu_commit_kv_*.json"))):
        r = json.loads(Path(f).read_text())
        print(f"## ncu {Path(f).name}\n")
        print(f"expected bytes {r['expected_bytes']}; DRAM write / formula "
              f"{r['dram_write_vs_formula']:.4f}; L2 write / formula {r['l2_write_vs_formula']:.4f}\n")
        for m in r["per_mode"]:
            print(f"- {m['mode']}: {m['kernels']} kernels, " + ", ".join(
                f"{k}={v:.4g}" for k, v in m["ncu_metrics"].items()))
        print()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
