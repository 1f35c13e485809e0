"""The patch series (patches/sglang-<V>/) and tools/apply.sh, against real upstream trees.

The trees come from ci/fetch_upstream_sources.sh (release wheels, checkout layout,
cached in .cache/upstream/). Every test works on a copy in tmp_path and checks the
tree byte for byte where apply.sh must change nothing.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import os
import py_compile
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from sglang_nwor_scv import hooks, state, versions

REPO = Path(__file__).resolve().parents[1]
APPLY = REPO / "tools" / "apply.sh"
PATCHES = REPO / "patches"
VERSIONS = ["0.5.23", "0.5.17"]  # the upstream fixture (conftest.py) fetches both
DEP3_REQUIRED = ("Description", "Author", "Origin", "Forwarded", "Last-Update")

# exit codes of tools/apply.sh (see its header)
RC_NO_TREE, RC_VERSION, RC_CONFLICT, RC_PARTIAL = 3, 4, 5, 6




@pytest.fixture(params=VERSIONS)
def version(request) -> str:
    return request.param


@pytest.fixture
def tree(upstream, version, tmp_path) -> Path:
    """A private copy of the upstream checkout for ``version``."""
    dst = tmp_path / f"sglang-{version}"
    subprocess.run(["cp", "-a", str(upstream[version]), str(dst)], check=True)
    return dst


def apply(tree: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(APPLY), str(tree), *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})})


def tree_hash(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def series(version: str) -> list[str]:
    lines = (PATCHES / f"sglang-{version}" / "series").read_text().splitlines()
    return [s.split("#")[0].strip() for s in lines if s.split("#")[0].strip()]


def touched_files(patch: Path) -> list[str]:
    """Paths relative to the checkout root (``-p1``)."""
    lines = patch.read_text().splitlines()
    return [b[4:].split("\t")[0].split("/", 1)[1]
            for a, b in zip(lines, lines[1:], strict=False)
            if a.startswith("--- ") and b.startswith("+++ ")]


# ------------------------------------------------------------------ the series itself
def test_series_lists_exactly_the_patch_files(version):
    d = PATCHES / f"sglang-{version}"
    names = series(version)
    assert names, "empty series"
    assert len(names) == len(set(names)), "a patch is listed twice"
    for n in names:
        assert (d / n).is_file(), f"{d}/series names {n}, which does not exist"
    on_disk = {p.name for p in d.glob("*.patch")}
    assert on_disk == set(names), f"patch files not in series: {sorted(on_disk - set(names))}"


def _dep3(patch: Path) -> dict[str, str]:
    """DEP-3 fields (RFC 822 style, continuation lines start with a space)."""
    fields: dict[str, str] = {}
    key = None
    for line in patch.read_text().splitlines():
        if line == "---" or line.startswith(("--- ", "diff ", "Index: ")):
            break
        if line.startswith(" ") and key:
            fields[key] += "\n" + line[1:]
        elif m := re.match(r"^([A-Za-z][A-Za-z0-9-]*):\s*(.*)$", line):
            key = m.group(1)
            fields[key] = m.group(2)
        elif line.strip():
            raise AssertionError(f"{patch.name}: not a DEP-3 header line: {line!r}")
    return fields


def test_dep3_headers(version):
    for name in series(version):
        patch = PATCHES / f"sglang-{version}" / name
        h = _dep3(patch)
        missing = [k for k in DEP3_REQUIRED if not h.get(k, "").strip()]
        assert not missing, f"{name}: DEP-3 fields missing: {missing}"
        assert h["Origin"].split(",")[0].strip() == "vendor"
        assert h["Forwarded"] == "no"
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", h["Last-Update"]), h["Last-Update"]
        for part in ("What:", "Why:", "How:", "Future:"):
            assert part in h["Description"], f"{name}: Description lacks {part}"


def _new_lines(patch_text):
    """Added lines that are not an upstream line of the same hunk re-indented (moved under
    a new ``if``); each removed line excuses one added line, so a common line such as ``)``
    counts as new unless the hunk removed it too."""
    new = []
    for hunk in re.split(r"^@@.*$", patch_text, flags=re.M)[1:]:
        lines = hunk.splitlines()
        removed = Counter(ln[1:].strip() for ln in lines
                          if ln.startswith("-") and not ln.startswith("---"))
        for ln in lines:
            if not ln.startswith("+") or ln.startswith("+++"):
                continue
            if ln[1:].strip() and removed[ln[1:].strip()] > 0:
                removed[ln[1:].strip()] -= 1
            else:
                new.append(ln[1:])
    return new


def test_new_lines_excuse_only_reindented_lines_of_the_same_hunk():
    patch = ("--- a/x.py\n+++ b/x.py\n@@ -1,3 +1,4 @@\n-    f(a,\n-    )\n+    if g():\n"
             "+        f(a,\n+        )\n+    )\n@@ -9,1 +10,1 @@\n+    f(a,\n")
    assert _new_lines(patch) == ["    if g():", "    )", "    f(a,"]


def test_patches_wire_every_hook_site_and_only_call_sites(version):
    """Both ways in wire the same sites; patches hold call sites, not logic."""
    declared = set()
    for name in series(version):
        text = (PATCHES / f"sglang-{version}" / name).read_text()
        for m in re.finditer(r"declare_wired\(([^)]*)\)", text):
            declared |= set(re.findall(r'"([a-z_]+)"', m.group(1)))
        added = [ln[1:] for ln in text.splitlines()
                 if ln.startswith("+") and not ln.startswith("+++")]
        new = _new_lines(text)
        assert len(new) <= 30, f"{name}: {len(new)} added lines; keep call sites thin"
        assert not any(re.match(r"\s*import torch|\s*from sglang_nwor_scv\.(?!.*sites)", ln)
                       for ln in added), name
    adapter = importlib.import_module(f"sglang_nwor_scv.adapters.{versions.SUPPORTED[version]}")
    assert declared == set(adapter.TARGETS), declared  # the series carries every site the plugin hooks
    assert state.REQUIRED_SITES <= declared


# ------------------------------------------------------------------ apply.sh on a clean tree
def test_apply_status_idempotent_compile_reverse(tree, version, tmp_path):
    before = tree_hash(tree)
    r = apply(tree, "--check")
    assert r.returncode == 0 and "apply cleanly" in r.stdout, r.stdout + r.stderr
    assert tree_hash(tree) == before, "--check changed the tree"

    r = apply(tree)
    assert r.returncode == 0 and f"applied {len(series(version))} patches" in r.stdout, r.stderr
    patched = tree_hash(tree)
    changed = {k for k in before if patched[k] != before[k]}
    expected = {f for n in series(version)
                for f in touched_files(PATCHES / f"sglang-{version}" / n)}
    assert changed == expected
    assert set(patched) == set(before), "apply.sh left files behind (.orig/.rej/tmp)"

    r = apply(tree, "--status")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    for name in series(version):
        assert f"applied      {name}" in lines, r.stdout
    assert lines[-1].startswith("state: applied"), r.stdout

    r = apply(tree)
    assert r.returncode == 0 and "already applied" in r.stdout, r.stdout + r.stderr
    assert tree_hash(tree) == patched, "applying twice changed the tree"
    r = apply(tree, "--check")
    assert r.returncode == 0 and "already applied" in r.stdout

    for rel in sorted(expected):  # compiled outside the tree: no __pycache__ left there
        py_compile.compile(str(tree / rel), cfile=str(tmp_path / "c.pyc"), doraise=True)
        src = (tree / rel).read_text()
        assert "from sglang_nwor_scv import sites as _nwor_sites" in src

    r = apply(tree, "--reverse")
    assert r.returncode == 0 and "reversed" in r.stdout, r.stderr
    assert tree_hash(tree) == before, "--reverse did not restore the tree byte for byte"
    r = apply(tree, "--reverse")
    assert r.returncode == 0 and "nothing to reverse" in r.stdout
    assert apply(tree, "--status").stdout.splitlines()[-1].startswith("state: not-applied")


@pytest.mark.parametrize("vfile", ["version.py", "_version.py"])
def test_tree_claiming_another_version_is_refused(tree, vfile):
    f = tree / "python" / "sglang" / vfile
    if vfile == "version.py":  # a literal there wins (what `sglang.__version__` reads)
        f.write_text('__version__ = "0.5.99"\n')
    else:
        f.write_text(re.sub(r"(?m)^__version__ = version = .*$",
                            "__version__ = version = '0.5.99'", f.read_text()))
    before = tree_hash(tree)
    for args in ((), ("--check",), ("--reverse",), ("--status",)):
        r = apply(tree, *args)
        assert r.returncode == RC_VERSION, (args, r.stdout, r.stderr)
        assert "0.5.99" in r.stderr and "not supported" in r.stderr
        assert all(v in r.stderr for v in VERSIONS), "the message must list the supported versions"
    assert tree_hash(tree) == before


def test_force_version_env_selects_series(tree, version):
    other = next(v for v in VERSIONS if v != version)
    r = apply(tree, "--check", env={"SGLANG_NWOR_SCV_FORCE_VERSION": other})
    # another release's patches do not fit this tree: refused, never fuzzed in
    assert r.returncode == RC_CONFLICT, r.stdout + r.stderr
    assert f"sglang {other}" in r.stderr


def test_modified_tree_is_a_conflict_naming_patch_and_file(tree, version):
    """Change a context line of each patch in turn: refused, named, tree untouched."""
    for name in series(version):
        patch = PATCHES / f"sglang-{version}" / name
        rel = touched_files(patch)[0]
        lineno = _first_context_line(patch)
        f = tree / rel
        original = f.read_bytes()
        lines = original.decode().splitlines(keepends=True)
        lines[lineno - 1] = lines[lineno - 1].rstrip("\n") + "  # local edit\n"
        f.write_text("".join(lines))
        before = tree_hash(tree)
        for args in ((), ("--check",)):
            r = apply(tree, *args)
            assert r.returncode == RC_CONFLICT, (name, r.stdout, r.stderr)
            assert f"{name}: does not apply to {rel}" in r.stderr, r.stderr
            assert "nothing was changed" in r.stderr
        st = apply(tree, "--status")
        assert st.returncode == RC_CONFLICT and f"conflict     {name}" in st.stdout, st.stdout
        assert tree_hash(tree) == before, f"{name}: a refused apply changed the tree"
        f.write_bytes(original)
    assert apply(tree, "--check").returncode == 0


def _first_context_line(patch: Path) -> int:
    """Line number (old file) of the first non-blank context line of the first hunk."""
    old = None
    for line in patch.read_text().splitlines():
        if m := re.match(r"^@@ -(\d+)", line):
            old = int(m.group(1))
            continue
        if old is None:
            continue
        if line.startswith(" ") and line.strip():
            return old
        if not line.startswith("+"):
            old += 1
    raise AssertionError(f"{patch.name}: no context line")


def test_partially_applied_tree_is_refused(tree, version):
    first = series(version)[1]
    subprocess.run(["patch", "-s", "-p1", "-d", str(tree), "-i",
                    str(PATCHES / f"sglang-{version}" / first)], check=True)
    before = tree_hash(tree)
    for args in ((), ("--check",), ("--reverse",)):
        r = apply(tree, *args)
        assert r.returncode == RC_PARTIAL, (args, r.stdout, r.stderr)
        assert "partially applied" in r.stderr and f"{first}: applied" in r.stderr
    st = apply(tree, "--status")
    assert st.returncode == RC_PARTIAL and st.stdout.splitlines()[-1].startswith("state: partial")
    assert f"applied      {first}" in st.stdout
    assert tree_hash(tree) == before


def test_installed_layouts(tree, version):
    """site-packages dir or the sglang/ dir; version from the dist-info when no _version.py."""
    site = tree / "python"
    for target in (site, site / "sglang"):
        r = apply(target, "--check")
        assert r.returncode == 0 and "site-packages" in r.stdout, r.stdout + r.stderr
    (site / "sglang" / "_version.py").unlink()
    r = apply(site, "--check")
    assert r.returncode == RC_VERSION and "cannot tell which SGLang version" in r.stderr
    meta = site / f"sglang-{version}.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text(f"Metadata-Version: 2.1\nName: sglang\nVersion: {version}\n")
    r = apply(site / "sglang")
    assert r.returncode == 0 and "dist-info" in r.stdout, r.stdout + r.stderr
    assert apply(site, "--reverse").returncode == 0


def test_missing_tree_or_package(tmp_path):
    r = apply(tmp_path / "nope")
    assert r.returncode == RC_NO_TREE and "does not exist" in r.stderr
    r = apply(tmp_path)
    assert r.returncode == RC_NO_TREE and "no sglang package" in r.stderr
    r = subprocess.run(["bash", str(APPLY)], capture_output=True, text=True)
    assert r.returncode == 2 and "Usage" in r.stderr


def test_help_exits_zero_on_stdout():
    r = subprocess.run(["bash", str(APPLY), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "Usage" in r.stdout and not r.stderr


@pytest.mark.parametrize("flags", [("--check", "--reverse"), ("--reverse", "--status"),
                                   ("--status", "--check")])
def test_contradictory_flags_are_refused_and_change_nothing(tree, flags):
    assert apply(tree).returncode == 0  # an applied tree: --reverse would change it
    before = tree_hash(tree)
    r = apply(tree, *flags)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"{flags[0]} and {flags[1]} cannot be combined" in r.stderr
    assert tree_hash(tree) == before


# ------------------------------------------------------------------ adapters vs sources
def _defined(path: Path, qualname: list[str]) -> bool:
    body = ast.parse(path.read_text()).body
    for i, name in enumerate(qualname):
        found = None
        for node in body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) \
                    and node.name == name:
                found = node
        if found is None or (i < len(qualname) - 1 and not isinstance(found, ast.ClassDef)):
            return False
        body = found.body
    return True


def _locate(pkg_root: Path, target: str) -> tuple[Path, list[str]]:
    """``sglang.a.b.Class.meth`` -> (python/sglang/a/b.py, [Class, meth]) (longest module)."""
    parts = target.split(".")
    for i in range(len(parts) - 1, 0, -1):
        base = pkg_root.joinpath(*parts[:i])
        for cand in (base.with_suffix(".py"), base / "__init__.py"):
            if cand.is_file():
                return cand, parts[i:]
    raise AssertionError(f"{target}: no module file under {pkg_root}")


def test_adapter_targets_exist_in_source(upstream, version):
    adapter = importlib.import_module(f"sglang_nwor_scv.adapters.{versions.SUPPORTED[version]}")
    assert adapter.VERSION == version
    targets = dict(adapter.TARGETS)
    own = {k: v for k, v in adapter.PHASES.items() if v.startswith("sglang_nwor_scv.")}
    targets.update({f"phase {k}": v for k, v in adapter.PHASES.items() if k not in own})
    targets.update({k: v for k, v in vars(adapter).items()
                    if k.isupper() and isinstance(v, str) and v.startswith("sglang.")})
    assert targets
    for name, target in own.items():  # phase clocks on the plugin's own sites
        assert callable(hooks.resolve(target)), f"phase {name}: {target}"
    pkg_root = upstream[version] / "python"
    for name, target in targets.items():
        path, qual = _locate(pkg_root, target)
        assert qual, f"{name}: {target} names a module, not a class or function"
        assert _defined(path, qual), f"{name}: {'.'.join(qual)} is not defined in {path}"
    assert set(adapter.TARGETS) <= set(hooks.HOOKS)


def test_fetch_is_idempotent_and_fast(upstream):
    stamps = {v: (p / ".fetched").stat().st_mtime_ns for v, p in upstream.items()}
    cache = next(iter(upstream.values())).parent
    r = subprocess.run(["bash", str(REPO / "ci" / "fetch_upstream_sources.sh"), *VERSIONS],
                       capture_output=True, text=True, timeout=30,
                       env={**os.environ, "NWOR_SCV_UPSTREAM_CACHE": str(cache)})
    assert r.returncode == 0 and r.stdout.count("(cached)") == len(VERSIONS), r.stdout + r.stderr
    assert stamps == {v: (p / ".fetched").stat().st_mtime_ns for v, p in upstream.items()}


def test_no_repo_droppings():
    assert not list(PATCHES.rglob("*.orig")) and not list(PATCHES.rglob("*.rej"))
    assert shutil.which("patch"), "GNU patch is needed by tools/apply.sh"
