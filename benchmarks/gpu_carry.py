"""What travels to the GPU machine for the GPU check, and whether it fits: the wheels its image lacks, 64 MiB.

    python benchmarks/gpu_carry.py needs deepspeed        # name==version of each need the image lacks (this venv's)
    python benchmarks/gpu_carry.py requires .whl/gpu      # every carried wheel's needs: carried, or on the image
    python benchmarks/gpu_carry.py size .whl/gpu          # working tree + carried folders against 64 MiB

The GPU machine (one H200; /work/.library/device/KINDS.md where this project's sessions run) has no network and
receives, per call, the working tree (tracked files and untracked files git does not ignore, plus `shared/`)
and at most 8 carried ignored paths, 64 MiB in all. Its image holds torch, transformers, peft, numpy, ... (IMAGE
below: the package list read on such a machine on 2026-11-17) but not DeepSpeed, Ray, MLflow or `datasets`.
`benchmarks/gpu_wheels.sh` builds the missing wheels into `.whl/gpu/` and runs `requires` and `size`.
Standard library + `packaging` only (imported by DeepSpeed too), so it runs here and there alike.
"""

from __future__ import annotations

import argparse
import email.parser
import re
import subprocess
import sys
import zipfile
from pathlib import Path

LIMIT_BYTES = 64 * 2**20  # the device tool's limit on what one call sends: working tree + carried paths
ROOT = Path(__file__).resolve().parents[1]
# The target machine: CPython 3.12 on x86-64 Linux (KINDS.md: python3 is Python 3.12.3).
TARGET_ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
              "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
              "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
# The image's packages (KINDS.md, "Python packages already there", read on 2026-11-17), names normalised.
IMAGE = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
zipp
""".split())


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ------------------------------------------------------------------ what the image lacks
def needs(root: str, image: frozenset[str] = IMAGE) -> list[str]:
    """`name==version` (this environment's versions) of every package `root` needs, transitively, that the image
    lacks; `root` itself first. Markers are evaluated for the target (CPython 3.12, Linux x86-64), extras off."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    out, seen, todo = [], set(), [root]
    while todo:
        name = normalise(todo.pop(0))
        if name in seen or (name in image and name != normalise(root)):
            continue
        seen.add(name)
        dist = md.distribution(name)
        out.append(f"{name}=={dist.version}")
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate(TARGET_ENV):
                todo.append(req.name)
    return out


# ------------------------------------------------------------------ the carried wheels
def wheel_metadata(path: Path):
    with zipfile.ZipFile(path) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        return email.parser.Parser().parsestr(zf.read(name).decode())


def wheel_fits_target(path: Path) -> bool:
    """Whether a wheel installs on CPython 3.12, manylinux x86-64 (pure Python, abi3 or cp312 builds)."""
    from packaging.utils import parse_wheel_filename

    _, _, _, tags = parse_wheel_filename(path.name)
    return any(t.interpreter in ("py3", "py312", "cp312") or (t.abi == "abi3" and t.interpreter.startswith("cp3"))
               for t in tags) and any(t.abi in ("none", "abi3", "cp312") for t in tags) and any(
        t.platform == "any" or (t.platform.startswith(("manylinux", "linux")) and t.platform.endswith("x86_64"))
        for t in tags)


def check_requires(folder: Path, image: frozenset[str] = IMAGE) -> list[str]:
    """Problems with the wheels in `folder` as the one set installed there with `pip install --no-deps`:
    a need neither carried nor on the image, two versions of one package, a package the image already has,
    a wheel that does not install on CPython 3.12 x86-64. Empty when the set is good."""
    from packaging.requirements import Requirement

    wheels = sorted(folder.glob("*.whl"))
    problems, carried = [], {}
    if not wheels:
        return [f"{folder}: no wheels (run: bash benchmarks/gpu_wheels.sh)"]
    for path in wheels:
        name = normalise(wheel_metadata(path)["Name"])
        if name in carried:
            problems.append(f"two wheels of {name}: {carried[name].name} and {path.name} (pip stops on both)")
        carried[name] = path
        if name in image:
            problems.append(f"{path.name}: the image already has {name}; carrying it would shadow the image's")
        if not wheel_fits_target(path):
            problems.append(f"{path.name}: does not install on CPython 3.12 manylinux x86-64")
    for path in wheels:
        for line in wheel_metadata(path).get_all("Requires-Dist") or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate(TARGET_ENV):
                continue
            name = normalise(req.name)
            if name not in carried and name not in image:
                problems.append(f"{path.name} needs {req}: neither carried nor on the image")
    return problems


# ------------------------------------------------------------------ the size of one call
def tree_files(root: Path) -> list[Path]:
    """What travels of the checkout: tracked files and untracked files that git does not ignore, plus shared/."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, check=True).stdout.decode().split("\0")
    files = {root / p for p in listed if p}
    shared = root / "shared"
    if shared.is_dir():
        files |= {p for p in shared.rglob("*") if not p.is_dir()}
    return sorted(files)


def path_bytes(path: Path) -> int:
    """Bytes of a file, or of every file under a folder (links count as links: they travel as links)."""
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    if path.is_dir():
        return sum(p.lstat().st_size for p in path.rglob("*") if p.is_symlink() or p.is_file())
    return 0


def call_size(root: Path, carry: list[Path], limit: int = LIMIT_BYTES) -> dict:
    """{"tree": bytes, "carry": {path: bytes}, "total": bytes, "limit": bytes, "fits": bool} for one device call."""
    tree = sum(path_bytes(p) for p in tree_files(root) if p.exists() or p.is_symlink())
    carried = {str(p): path_bytes(p if p.is_absolute() else root / p) for p in carry}
    total = tree + sum(carried.values())
    return {"tree": tree, "carry": carried, "total": total, "limit": limit, "fits": total <= limit}


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("needs", help="name==version of what a package needs that the image lacks").add_argument("root")
    sub.add_parser("requires", help="check a wheel folder's needs").add_argument("folder", type=Path)
    size = sub.add_parser("size", help="working tree + carried paths against the 64 MiB limit")
    size.add_argument("carry", nargs="*", type=Path)
    size.add_argument("--limit-mib", type=float, default=LIMIT_BYTES / 2**20)
    args = p.parse_args(argv)
    if args.cmd == "needs":
        print(" ".join(needs(args.root)))
        return 0
    if args.cmd == "requires":
        problems = check_requires(args.folder)
        for line in problems:
            print(f"problem: {line}", file=sys.stderr)
        if not problems:
            names = ", ".join(sorted(normalise(wheel_metadata(w)["Name"]) for w in args.folder.glob("*.whl")))
            print(f"{args.folder}: every need is carried ({names}) or on the image")
        return 1 if problems else 0
    report = call_size(ROOT, args.carry, int(args.limit_mib * 2**20))
    for path, n in report["carry"].items():
        wheels = sorted(Path(ROOT, path).glob("*.whl")) if Path(ROOT, path).is_dir() else []
        for w in wheels:
            print(f"  {w.name:60s} {_mib(w.stat().st_size)}")
        print(f"carried {path}: {_mib(n)}")
    print(f"working tree: {_mib(report['tree'])}")
    verdict = "fits" if report["fits"] else "TOO LARGE"
    print(f"one call: {_mib(report['total'])} of {_mib(report['limit'])}: {verdict}")
    return 0 if report["fits"] else 1


if __name__ == "__main__":
    sys.exit(main())
