"""The FA3 library carried to the GPU machine in parts (ci/gpu/build_fa3_carry.sh, then
ci/gpu/fa3_receive.sh once per device call): it is assembled only when every part has come,
byte for byte, and a bad or foreign part never leaves a library behind.

The real library is 1,070 MiB; these tests build a wheel holding a 3 MiB random stand-in at
the same path and split it into 1 MiB parts, so the same scripts run in seconds."""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "ci/gpu/build_fa3_carry.sh"
RECEIVE = REPO / "ci/gpu/fa3_receive.sh"

pytestmark = pytest.mark.skipif(shutil.which("xz") is None or shutil.which("split") is None,
                                reason="needs xz and split")


def _wheel(path: Path, payload: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("sgl_kernel/__init__.py", "")
        z.writestr("sgl_kernel/flash_ops.abi3.so", payload)
    return path


def _build(tmp: Path, payload: bytes, dest: Path) -> list[Path]:
    env = dict(os.environ, FA3_WHEEL=str(_wheel(tmp / f"{dest.name}.whl", payload)),
               FA3_DEST=str(dest), FA3_PART_MIB="1")
    subprocess.run(["bash", str(BUILD)], check=True, env=env, capture_output=True)
    return sorted(dest.glob("p*"), key=lambda p: int(p.name[1:]))


def _receive(carried: Path, site: Path, keep: Path) -> subprocess.CompletedProcess:
    """One device call: only ``carried`` (a folder holding one pK) came with it."""
    env = dict(os.environ, FA3_CARRIED=str(carried), DEVICE_SITE=str(site), FA3_PARTS=str(keep))
    return subprocess.run(["bash", str(RECEIVE)], env=env, capture_output=True, text=True)


def _carry(part: Path, call_dir: Path) -> Path:
    if call_dir.exists():
        shutil.rmtree(call_dir)
    shutil.copytree(part, call_dir / part.name)
    return call_dir


@pytest.fixture
def site(tmp_path):
    (tmp_path / "site/sgl_kernel").mkdir(parents=True)
    return tmp_path / "site"


def test_parts_one_call_each_assemble_the_library(tmp_path, site):
    payload = os.urandom(3 << 20)
    parts = _build(tmp_path, payload, tmp_path / "fa3")
    assert len(parts) >= 3  # random bytes do not compress: 3 MiB in 1 MiB parts
    keep, target = tmp_path / "keep", site / "sgl_kernel/flash_ops.abi3.so"
    for i, part in enumerate(parts):
        out = _receive(_carry(part, tmp_path / "call"), site, keep)
        if i < len(parts) - 1:
            assert out.returncode == 3, out.stderr
            assert not target.exists()
        else:
            assert out.returncode == 0, out.stderr
    assert target.read_bytes() == payload
    again = _receive(tmp_path / "nothing", site, keep)  # a later call: already there
    assert again.returncode == 0 and "already in place" in again.stderr


def test_a_corrupt_part_is_refused_and_leaves_no_library(tmp_path, site):
    parts = _build(tmp_path, os.urandom(2 << 20), tmp_path / "fa3")
    keep = tmp_path / "keep"
    for part in parts[:-1]:
        assert _receive(_carry(part, tmp_path / "call"), site, keep).returncode == 3
    call = _carry(parts[-1], tmp_path / "call")
    data = next((call / parts[-1].name).glob("flash_ops.xz.*"))
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    out = _receive(call, site, keep)
    assert out.returncode == 1 and "sha256" in out.stderr
    assert not list((site / "sgl_kernel").glob("flash_ops*"))


def test_a_part_of_another_build_starts_over(tmp_path, site):
    old = _build(tmp_path, os.urandom(2 << 20), tmp_path / "old")
    new_payload = os.urandom(2 << 20)
    new = _build(tmp_path, new_payload, tmp_path / "new")
    keep = tmp_path / "keep"
    assert _receive(_carry(old[0], tmp_path / "call"), site, keep).returncode == 3
    out = _receive(_carry(new[-1], tmp_path / "call"), site, keep)
    assert out.returncode == 3 and "another build" in out.stderr
    for part in new[:-1]:
        out = _receive(_carry(part, tmp_path / "call"), site, keep)
    assert out.returncode == 0, out.stderr
    assert (site / "sgl_kernel/flash_ops.abi3.so").read_bytes() == new_payload


def test_the_working_tree_leaves_room_for_the_wheelhouse():
    """Every device call carries the working tree beside what it names, 64 MiB in all; the
    wheelhouse is 52.7 MiB (tools/build_device_wheelhouse.sh), so the tree must stay under
    10 MiB. It reached 10.7 MiB in the twenty-first session and the calls were refused;
    reports keep large files gzipped since. Counted as the device tool counts it, by the
    same shell function the carry builders use."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["bash", "-c", f'. "{REPO}/ci/gpu/device_wheel.sh"; working_tree_bytes "{REPO}"'],
                         capture_output=True, text=True, check=True).stdout
    tree_mib = int(out) / 2**20
    assert 1 < tree_mib <= 10, f"working tree {tree_mib:.2f} MiB: gzip or drop large report files"
