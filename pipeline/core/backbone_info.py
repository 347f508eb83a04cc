"""What the driver learns about a backbone before Ray starts: sizes from its config, and cheap proofs that the
workers will load it (the tokenizer loads; every weight file is present and its safetensors header parses).

A corrupt or missing weight file or tokenizer is then an `error:` in seconds, not a worker traceback a
minute later.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.backbones import BackboneError


@dataclass(frozen=True)
class BackboneInfo:
    kind: str  # "causal" | "seq2seq"
    hidden_size: int
    num_layers: int
    num_heads: int
    max_positions: int | None  # None: relative positions (T5), no fixed limit
    vocab_size: int


def inspect_backbone(path_or_id: str, trust_remote_code: bool = False, check_files: bool = True) -> BackboneInfo:
    """Read the backbone's config (and, for a local folder, check its tokenizer and weight files)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path_or_id, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise BackboneError(f"backbone: the config of {path_or_id!r} cannot be read ({err}).") from err
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    kind = "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"
    info = BackboneInfo(
        kind=kind,
        hidden_size=_first(text, "hidden_size", "d_model", "n_embd"),
        num_layers=_first(text, "num_hidden_layers", "num_layers", "n_layer") * (2 if kind == "seq2seq" else 1),
        num_heads=_first(text, "num_attention_heads", "num_heads", "n_head"),
        max_positions=getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None),
        vocab_size=text.vocab_size,
    )
    folder = Path(path_or_id)
    if check_files and folder.is_dir():
        _check_tokenizer(folder, trust_remote_code)
        _check_weights(folder)
    return info


def _first(config, *names: str) -> int:
    for name in names:
        value = getattr(config, name, None)
        if value:
            return int(value)
    raise BackboneError(f"backbone: its config has none of {names}; give a backbone with a standard transformers config.")


def _check_tokenizer(folder: Path, trust_remote_code: bool) -> None:
    from transformers import AutoTokenizer

    from pipeline.core.backbones import BackboneError

    try:
        AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except Exception as err:  # noqa: BLE001 - missing files, bad JSON, unknown classes: all "no tokenizer"
        raise BackboneError(f"backbone: the tokenizer in {str(folder)!r} does not load "
                            f"({type(err).__name__}: {str(err)[:200]}); save it with tokenizer.save_pretrained "
                            "into the backbone folder.") from err


def weights_expected(folder: Path) -> bool:
    """False for folders that build their weights from the config (the random-init aliases)."""
    from pipeline.core.backbones import random_init

    return random_init(folder) is None


def _check_weights(folder: Path) -> None:
    from safetensors import safe_open

    from pipeline.core.backbones import BackboneError

    if not weights_expected(folder):
        return
    index = next((folder / n for n in ("model.safetensors.index.json", "pytorch_model.bin.index.json")
                  if (folder / n).is_file()), None)
    if index is not None:
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError) as err:
            raise BackboneError(f"backbone: {str(index)!r} is not a valid weight index ({err}).") from err
    else:
        files = [p.name for p in folder.glob("*.safetensors")] or [p.name for p in folder.glob("pytorch_model*.bin")]
    if not files:
        raise BackboneError(f"backbone: {str(folder)!r} holds no weight files (model.safetensors or "
                            "pytorch_model.bin); save the model with save_pretrained into it.")
    for name in files:
        path = folder / name
        if not path.is_file() or path.stat().st_size == 0:
            raise BackboneError(f"backbone: weight file {str(path)!r} is missing or empty.")
        if name.endswith(".safetensors"):
            try:
                with safe_open(str(path), framework="pt") as fh:
                    fh.keys()
            except Exception as err:  # noqa: BLE001 - SafetensorError and friends
                raise BackboneError(f"backbone: weight file {str(path)!r} is corrupt ({err}); restore or "
                                    "re-download it.") from err


# ---------------------------------------------------------------------------------------- fingerprints
VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version", "_commit_hash")


def fingerprint(resolved: str, trust_remote_code: bool = False) -> dict:
    """What identifies a backbone wherever it lies: architecture, sizes, a hash of its config, a hash of its
    weight files' headers (names, shapes, dtypes) and one of a sample of their bytes (64 slices of 16 KiB
    spread over each file: 1 MiB read per file, not gigabytes; other weights of the same shapes differ in
    them), and the hub commit when it came from the hub. `resolved` is what `resolve_backbone` returned.

    A random alias's folder has no weight files: its weights are whatever `build_random_model` draws from the
    config, the seed in its marker and the draw code (`INIT_SCHEME`), so those are what it records -
    `random_seed` and `random_init_scheme` (readable in a refusal) and `weights_sha256` over config hash +
    seed + scheme. Two copies with other seeds then differ like two real folders with other weights."""
    import hashlib

    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(resolved, trust_remote_code=trust_remote_code)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    data = {k: v for k, v in config.to_dict().items() if k not in VOLATILE_CONFIG_KEYS}
    out = {"architecture": (config.architectures or [config.model_type])[0], "model_type": config.model_type,
           "hidden_size": _first(text, "hidden_size", "d_model", "n_embd"), "vocab_size": text.vocab_size,
           "config_sha256": hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()}
    folder = Path(resolved)
    if folder.is_dir() and not weights_expected(folder):
        out.update(_random_weights_id(folder, out["config_sha256"]))
    elif folder.is_dir():
        out["weights_sha256"] = _weights_header_hash(folder)
        out["weights_sample_sha256"] = _weights_sample_hash(folder)
    elif getattr(config, "_commit_hash", None):
        out["revision"] = config._commit_hash
    return out


LEGACY_RANDOM = "random-init"  # what records made before `random_seed` held for a random alias's weights


def _random_weights_id(folder: Path, config_sha256: str) -> dict:
    """Exactly the inputs of `build_random_model`'s draws besides the dtype (which the serving config fixes):
    the config (by its hash), the marker's seed and the draw code's `INIT_SCHEME`. No sample hash: there are
    no bytes to sample, and leaving the key out keeps it from being compared. One input it cannot see: under
    ZeRO-3 on GPUs the draws run on the CUDA generator (other numbers than a CPU build, see
    `build_random_model`), so an adapter trained that way matches this record but not the served weights."""
    import hashlib

    from pipeline.core.backbones import random_init
    from pipeline.core.backbones.random_models import INIT_SCHEME

    spec = {"random_seed": random_init(folder)["seed"], "random_init_scheme": INIT_SCHEME}
    blob = json.dumps({"config_sha256": config_sha256, **spec}, sort_keys=True)
    return {**spec, "weights_sha256": hashlib.sha256(blob.encode()).hexdigest()}


def _weights_header_hash(folder: Path) -> str | None:
    import hashlib
    import struct

    digest = hashlib.sha256()
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        return None
    for path in files:
        digest.update(path.name.encode())
        if path.suffix == ".safetensors":
            with open(path, "rb") as fh:  # 8-byte little-endian header length, then the JSON header
                size = struct.unpack("<Q", fh.read(8))[0]
                digest.update(fh.read(min(size, 100 << 20)))
        else:
            digest.update(str(path.stat().st_size).encode())
    return digest.hexdigest()


SAMPLES, SAMPLE_BYTES = 64, 16 << 10


def _weights_sample_hash(folder: Path) -> str | None:
    """sha256 over each weight file's name, size and `SAMPLES` evenly spaced slices of `SAMPLE_BYTES` (the
    whole file when it is smaller): weights of equal shapes but other values (another seed, another fine-tune)
    differ here, while the header hash above cannot tell them apart."""
    import hashlib

    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with open(path, "rb") as fh:
            if size <= SAMPLES * SAMPLE_BYTES:
                digest.update(fh.read())
                continue
            for i in range(SAMPLES):
                fh.seek((size - SAMPLE_BYTES) * i // (SAMPLES - 1))
                digest.update(fh.read(SAMPLE_BYTES))
    return digest.hexdigest()


def check_fingerprint(recorded: dict | None, actual: dict, recorded_ref: str, actual_ref: str) -> None:
    """Refuse a backbone that is not the one the adapter was trained on, naming both sides."""
    from pipeline.core.backbones import BackboneError

    if not recorded:
        return
    # a key missing on one side (older records) is not compared
    keys = ("architecture", "hidden_size", "vocab_size", "config_sha256", "random_seed", "random_init_scheme",
            "weights_sha256", "weights_sample_sha256", "revision")
    # An older record of a random alias ("random-init") does not know its seed (every alias had seed 0 then):
    # nothing to compare against another random folder. Against real weights it still differs.
    differ = [k for k in keys if k in recorded and k in actual and recorded[k] != actual[k]
              and not (recorded[k] == LEGACY_RANDOM and "random_seed" in actual)]
    if differ:
        detail = "; ".join(f"{k}: recorded {_short(recorded[k])}, given {_short(actual[k])}" for k in differ)
        random = ""
        if any(k.startswith("random_") for k in differ):
            random = (" A random:* backbone's weights are drawn from its config.json, the seed in its "
                      "adept_backbone.json and the code's INIT_SCHEME (pipeline/core/backbones/random_models.py): "
                      "give a folder with the recorded seed, and code with the recorded scheme.")
        raise BackboneError(f"backbone: {actual_ref!r} is not the backbone this adapter was trained on "
                            f"(recorded: {recorded_ref!r}): {detail}. Fix: pass a copy of the recorded backbone "
                            "(mlflow.pyfunc.load_model(uri, model_config={'backbone': FOLDER}), jobs/predict.py "
                            f"--backbone FOLDER), or retrain on this one.{random}")


def _short(value) -> str:
    """A sha256 as its first 12 hex digits; anything else as repr."""
    return f"'{value[:12]}...'" if isinstance(value, str) and len(value) == 64 else repr(value)
