"""What travels to the GPU machine fits and is complete (issue 20): the working tree plus carried folders against
the device call's 64 MiB, and the carried wheels' needs (each carried or on the image), without the network:
`benchmarks/gpu_wheels.sh` builds the real wheels where PyPI is reachable and runs the same two checks."""

import subprocess
import sys
import zipfile
from pathlib import Path

import gpu_carry
import pytest

pytestmark = pytest.mark.gpu_ready
ROOT = Path(__file__).resolve().parents[2]


def _git_repo(path: Path) -> Path:
    path.mkdir()
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    (path / ".gitignore").write_text("/.whl/\n")
    (path / "tracked.bin").write_bytes(b"x" * 1000)
    subprocess.run(["git", "-C", str(path), "add", "tracked.bin", ".gitignore"], check=True)
    (path / "untracked.txt").write_bytes(b"y" * 500)  # travels: untracked but not ignored
    (path / ".whl" / "gpu").mkdir(parents=True)  # ignored: travels only when carried
    (path / ".whl" / "gpu" / "a.whl").write_bytes(b"z" * 3000)
    (path / ".whl" / "other.bin").write_bytes(b"w" * 7000)
    return path


def test_call_size_counts_the_tree_and_what_is_carried(tmp_path):
    repo = _git_repo(tmp_path / "repo")
    tree = 1000 + 500 + len("/.whl/\n")
    report = gpu_carry.call_size(repo, [Path(".whl/gpu")], limit=10_000)
    assert report["tree"] == tree and report["carry"] == {".whl/gpu": 3000}
    assert report["total"] == tree + 3000 and report["fits"]
    over = gpu_carry.call_size(repo, [Path(".whl/gpu")], limit=tree + 2999)
    assert not over["fits"]


def test_size_command_fails_over_the_limit():
    ok = subprocess.run([sys.executable, "benchmarks/gpu_carry.py", "size"], cwd=ROOT, capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0 and "of 64.00 MiB: fits" in ok.stdout, ok.stderr
    over = subprocess.run([sys.executable, "benchmarks/gpu_carry.py", "size", "--limit-mib", "0.01"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert over.returncode == 1 and "TOO LARGE" in over.stdout


def _wheel(folder: Path, name: str, version: str, requires: list[str], tag: str = "py3-none-any") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    dist = name.replace("-", "_")
    path = folder / f"{dist}-{version}-{tag}.whl"
    meta = "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{dist}-{version}.dist-info/METADATA",
                    f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{meta}")
    return path


def test_requires_accepts_a_closed_set(tmp_path):
    _wheel(tmp_path, "deepspeed", "0.19.8", ["torch>=2", "pydantic>=2", "hjson", 'wandb; extra == "dev"',
                                              'pywin32; sys_platform == "win32"'])
    _wheel(tmp_path, "pydantic", "2.14.4", ["pydantic-core==2.50.5", "typing-extensions>=4.16"])
    _wheel(tmp_path, "pydantic-core", "2.50.5", [], tag="cp312-cp312-manylinux_2_17_x86_64")
    _wheel(tmp_path, "hjson", "3.1.0", [])
    assert gpu_carry.check_requires(tmp_path) == []


def test_requires_names_each_problem(tmp_path):
    _wheel(tmp_path, "deepspeed", "0.19.8", ["pydantic>=2", "hjson"])  # hjson missing
    _wheel(tmp_path, "pydantic", "2.14.4", [])
    _wheel(tmp_path, "pydantic", "2.13.0", [])  # two versions
    _wheel(tmp_path, "numpy", "2.5.0", [])  # the image has it
    _wheel(tmp_path, "fastthing", "1.0", [], tag="cp311-cp311-manylinux_2_17_x86_64")  # not for 3.12
    problems = "\n".join(gpu_carry.check_requires(tmp_path))
    assert "needs hjson: neither carried nor on the image" in problems
    assert "two wheels of pydantic" in problems
    assert "the image already has numpy" in problems
    assert "fastthing-1.0-cp311-cp311-manylinux_2_17_x86_64.whl: does not install on CPython 3.12" in problems
    assert gpu_carry.check_requires(tmp_path / "empty") == [f"{tmp_path / 'empty'}: no wheels (run: bash benchmarks/gpu_wheels.sh)"]


def test_needs_of_deepspeed_are_what_the_image_lacks():
    needs = dict(spec.split("==") for spec in gpu_carry.needs("deepspeed"))
    assert next(iter(needs)) == "deepspeed"
    assert {"hjson", "pydantic", "pydantic-core"} <= set(needs)
    assert not set(needs) & {"torch", "numpy", "packaging", "psutil", "tqdm", "msgpack", "ninja", "py-cpuinfo",
                             "einops", "typing-extensions"}
