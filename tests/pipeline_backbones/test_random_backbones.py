"""pipeline.core.backbones random:* aliases: weightless cached folders, seeded random init, the offline byte-level
tokenizer, shapes and parameter counts (1B and T5-large counted on the meta device, never allocated), the
driver's prepare(), and the ZeRO-3 construction path (in a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from pipeline.core import backbones as bb

pytestmark = pytest.mark.scale

REVIEWS = [
    "A gripping, beautifully shot film: the acting is superb and the plot never lets go.",
    "Two hours I will never get back. The dialogue was wooden and the ending made no sense at all!",
    "Déjà vu — «fantastique» cinematography, 10/10, would watch again 🎬",
]


@pytest.fixture
def cache(monkeypatch, tmp_path) -> Path:
    """A private cache per test, through $ADEPT_CACHE_DIR as workers and the driver read it."""
    monkeypatch.setenv("ADEPT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _meta_count(config) -> int:
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    cls = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    with torch.device("meta"):
        model = cls.from_config(config)
    return sum(p.numel() for p in model.parameters())


def _weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# --- the cached folder -----------------------------------------------------------------------------------

def test_random_alias_is_a_weightless_cached_folder(cache, capsys):
    from transformers import AutoConfig

    out = bb.resolve_backbone("random:llama-tiny")
    assert out == str(cache / "models" / "random-llama-tiny")
    assert sorted(p.name for p in Path(out).iterdir()) == sorted(
        ["config.json", "tokenizer.json", "tokenizer_config.json", bb.MARKER])
    meta = json.loads((Path(out) / bb.MARKER).read_text())
    assert meta["alias"] == "random:llama-tiny" and meta["random_init"] == {"seed": 0}
    assert meta["parameters"] == bb.RANDOM_ALIASES["random:llama-tiny"].parameters
    assert bb.random_init(out) == {"seed": 0}
    config = AutoConfig.from_pretrained(out)  # what the driver's prepare() reads
    assert (config.model_type, config.hidden_size, config.vocab_size) == ("llama", 64, 512)
    assert "cached random:llama-tiny" in capsys.readouterr().err
    assert bb.resolve_backbone("random:llama-tiny") == out  # reused, silently
    assert capsys.readouterr().err == ""
    assert not list((cache / "models").glob("*.tmp"))


def test_concurrent_resolves_make_one_folder(cache):
    results, errors = [], []

    def worker():
        try:
            results.append(bb.resolve_backbone("random:llama-tiny"))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 3 and len(set(results)) == 1
    assert not list((cache / "models").glob("*.tmp"))


def test_folder_of_another_version_is_not_trusted(cache):
    out = Path(bb.resolve_backbone("random:llama-tiny"))
    meta = json.loads((out / bb.MARKER).read_text())
    (out / bb.MARKER).write_text(json.dumps({**meta, "spec": "0000"}))
    with pytest.raises(bb.BackboneError, match="another version.*delete it"):
        bb.resolve_backbone("random:llama-tiny")


def test_unknown_random_alias_lists_the_known_ones(cache, capsys):
    for call in (bb.resolve_backbone, bb.load_backbone):
        with pytest.raises(bb.BackboneError) as ei:
            call("random:xyz")
        msg = str(ei.value)
        assert "unknown random backbone 'random:xyz'" in msg
        assert all(name in msg for name in bb.RANDOM_ALIASES)
    assert bb.main(["random:xyz"]) == 1
    assert "random:llama-1b" in capsys.readouterr().err
    assert not (cache / "models").exists()


def test_help_lists_every_alias_with_its_purpose(capsys):
    with pytest.raises(SystemExit) as ei:
        bb.main(["--help"])
    assert ei.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in bb.ALIASES)
    assert "scale tests and benchmarks" in out and "1,041,836,032 parameters" in out
    assert "random:llama-1b" in bb.__doc__ and "scale tests and benchmarks" in bb.__doc__


# --- load_backbone on random:llama-tiny ---------------------------------------------------------------------

def test_tiny_loads_deterministically_without_touching_the_callers_rng(cache):
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    model, tok, kind = bb.load_backbone("random:llama-tiny")
    assert torch.equal(rng, torch.get_rng_state())
    again, _, _ = bb.load_backbone("random:llama-tiny")
    first, second = _weights(model), _weights(again)
    assert first.keys() == second.keys() and all(torch.equal(first[n], second[n]) for n in first)
    assert kind == "causal" and model.dtype == torch.float32 and not model.training
    assert sum(p.numel() for p in model.parameters()) == bb.RANDOM_ALIASES["random:llama-tiny"].parameters
    # transformers' LLaMA init: normal(0, 0.02) (padding row 0 zero), norms 1, untied head
    emb = model.get_input_embeddings().weight
    assert abs(emb[1:].std().item() - 0.02) < 0.002 and torch.all(emb[0] == 0)
    assert torch.all(model.model.norm.weight == 1)
    assert emb.data_ptr() != model.get_output_embeddings().weight.data_ptr()


def test_tiny_bfloat16_is_the_same_draw_rounded(cache):
    model, _, _ = bb.load_backbone("random:llama-tiny", dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and all(p.dtype == torch.bfloat16 for p in model.parameters())
    fp32, _, _ = bb.load_backbone("random:llama-tiny", dtype="float32")
    ref = dict(fp32.named_parameters())
    assert all(torch.equal(ref[n].to(torch.bfloat16), p) for n, p in model.named_parameters())


def test_tiny_folder_given_as_a_path_is_recognised_by_its_marker(cache):
    """prepare() hands workers the absolute folder, not the alias: it has no weights and must load as random."""
    folder = bb.resolve_backbone("random:llama-tiny")
    by_path, _, kind = bb.load_backbone(folder)
    by_alias, _, _ = bb.load_backbone("random:llama-tiny")
    a, b = _weights(by_path), _weights(by_alias)
    assert kind == "causal" and all(torch.equal(a[n], b[n]) for n in a)


def test_tiny_tokenizer_round_trips_real_text(cache):
    from pipeline.core.data import special_token_layout

    model, tok, _ = bb.load_backbone("random:llama-tiny")
    vocab = model.config.vocab_size
    assert len(tok) == 260 <= vocab
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, tok.bos_token_id) == (0, 1, 2, 3)
    assert special_token_layout(tok) == ([3], [])  # LLaMA-like: <s> first
    for text in REVIEWS:
        ids = tok(text)["input_ids"]
        assert ids[0] == 3 and max(ids) < vocab and tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == text
        assert len(ids) == 1 + len(text.encode())  # one token per UTF-8 byte
    assert tok.decode(tok(REVIEWS[0], add_special_tokens=False)["input_ids"]) == REVIEWS[0]


def test_tiny_forward_and_generate(cache):
    model, tok, _ = bb.load_backbone("random:llama-tiny")
    batch = tok(REVIEWS[:2], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**batch, labels=batch["input_ids"])
        assert out.logits.shape == (2, batch["input_ids"].shape[1], 512) and torch.isfinite(out.loss)
        gen = model.generate(**tok(REVIEWS[:1], return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert gen.shape[1] == len(tok(REVIEWS[0])["input_ids"]) + 3


def test_driver_prepare_reads_the_random_config(cache, tmp_path, synthetic_task):
    from pipeline.core.config import TrainConfig
    from pipeline.driver.launch import prepare

    cfg = TrainConfig(task=str(synthetic_task), backbone="random:llama-tiny", num_virtual_tokens=4, r=8,
                      storage_path=str(tmp_path / "runs"), mlflow_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = prepare(cfg, check_mlflow=False)
    assert (run.kind, run.hidden_size, run.backbone_ref) == ("causal", 64, "random:llama-tiny")
    # an alias stays an alias in the config the workers get (every node resolves its own cache) ...
    assert run.config.backbone == "random:llama-tiny"
    # ... and the driver has already materialised it once
    assert (cache / "models" / "random-llama-tiny" / "config.json").is_file()


# --- the large shapes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(bb.RANDOM_ALIASES))
def test_declared_parameter_counts_are_exact(name):
    """Counted on the meta device: nothing is allocated, also for the 1B model."""
    assert _meta_count(bb.random_config(bb.RANDOM_ALIASES[name])) == bb.RANDOM_ALIASES[name].parameters


def test_llama_1b_has_at_least_a_billion_parameters(cache):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(bb.resolve_backbone("random:llama-1b"))
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (2048, 18, 5504)
    assert (config.num_attention_heads, config.num_key_value_heads, config.vocab_size) == (32, 32, 32000)
    assert not config.tie_word_embeddings and config.max_position_embeddings == 2048
    count = _meta_count(config)
    assert count == 1_041_836_032 >= 1e9


@pytest.mark.parametrize("name, shape", [
    ("random:t5-base", (768, 3072, 12, 12, 64)),
    ("random:t5-large", (1024, 4096, 24, 16, 64)),
])
def test_t5_configs_have_the_real_shapes(cache, name, shape):
    from transformers import AutoConfig, AutoTokenizer

    path = bb.resolve_backbone(name)
    config = AutoConfig.from_pretrained(path)
    assert config.model_type == "t5" and config.is_encoder_decoder and config.vocab_size == 32128
    assert (config.d_model, config.d_ff, config.num_layers, config.num_heads, config.d_kv) == shape
    assert config.num_decoder_layers == config.num_layers and config.feed_forward_proj == "relu"
    assert (config.pad_token_id, config.eos_token_id, config.decoder_start_token_id) == (0, 1, 0)
    tok = AutoTokenizer.from_pretrained(path)
    assert tok(REVIEWS[0])["input_ids"][-1] == 1 and tok.model_max_length == 512  # T5-like: </s> last


def test_t5_base_builds_once(cache):
    """The one real build of a large shape here: 223M parameters in bf16 (~0.45 GB), a few seconds."""
    model, tok, kind = bb.load_backbone("random:t5-base", dtype="bfloat16")
    assert kind == "seq2seq" and model.dtype == torch.bfloat16
    assert sum(p.numel() for p in model.parameters()) == 222_903_552  # ~2.2e8, embeddings tied
    shared = model.get_input_embeddings().weight
    assert shared.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    src = tok(REVIEWS[:2], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**src, labels=tok(["positive", "negative"], return_tensors="pt", padding=True)["input_ids"])
    assert torch.isfinite(out.loss)


# --- ZeRO-3 ---------------------------------------------------------------------------------------------

def test_zero3_partitions_at_construction_with_the_same_weights(cache):
    """Under a live HfDeepSpeedConfig (stage 3), from_config builds inside deepspeed.zero.Init."""
    worker = Path(__file__).with_name("random_zero3_worker.py")
    repo, tests = worker.parents[2], worker.parents[1]  # the worktree's pipeline first, as pytest has it
    path = os.pathsep.join(filter(None, [str(repo), str(tests), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, str(worker)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": path})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert not result["zero3_before"] and not result["zero3_after"]
    for precision, dtype in (("fp32", "torch.float32"), ("bf16", "torch.bfloat16")):
        assert result[f"{precision}_zero3_enabled"] and result[f"{precision}_partitioned"]
        assert result[f"{precision}_same_weights"] and result[f"{precision}_rng_untouched"]
        assert result[f"{precision}_dtypes"] == [dtype]  # DeepSpeed's dtype, from its config
        assert result[f"{precision}_gathered_numel"] == bb.RANDOM_ALIASES["random:llama-tiny"].parameters
