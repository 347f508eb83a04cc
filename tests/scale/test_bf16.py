"""bf16 is a first-class path: a bf16 fit learns the synthetic task through DeepSpeed (bf16 section) and through
DDP (autocast), and bf16 logits of ADePT agree with fp32 logits on the same inputs within a stated tolerance."""

import json

import pytest
import torch
from fit_helpers import checkpoints, fit_args
from tiny import tiny_llama, tiny_tokenizer

from adept import AdeptConfig, get_adept_model
from jobs.train_adept import main

pytestmark = pytest.mark.scale


def test_bf16_logits_agree_with_fp32():
    """Autocast bf16 (what DDP bf16 runs) and bf16 weights (what DeepSpeed bf16 runs) against fp32: the logits
    differ by bf16 rounding only (tolerance 3% of the logits' range), the predicted token is mostly the same."""
    tok = tiny_tokenizer()
    model = get_adept_model(tiny_llama(hidden_size=64), AdeptConfig(num_virtual_tokens=4, ffn_hidden_size=8), tok)
    with torch.no_grad():
        model.ffn.w2.normal_(0, 0.2)
    model.eval()
    batch = tok(["good movie great plot", "awful bad film acting the"], return_tensors="pt", padding=True)
    with torch.no_grad():
        fp32 = model(**batch).logits.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = model(**batch).logits.float()
        weights = model.to(torch.bfloat16)(**batch).logits.float()
    scale = (fp32.max() - fp32.min()).item()
    for bf16 in (autocast, weights):
        assert (bf16 - fp32).abs().max().item() <= 0.03 * scale
        assert (bf16.argmax(-1) == fp32.argmax(-1)).float().mean().item() >= 0.9


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["deepspeed", "ddp"])
def test_a_bf16_fit_learns(engine, synthetic_task, tiny_backbone, tmp_path):
    name = f"bf16-{engine}"
    extra = ["--num-workers", "1", "--precision", "bf16", "--max-steps", "60", "--eval-steps", "20"]
    if engine == "ddp":
        extra.append("--no-deepspeed")
    args = fit_args(synthetic_task, tiny_backbone, tmp_path / "runs", f"sqlite:///{tmp_path / 'm.db'}", name, *extra)
    assert main(args) == 0
    state = json.loads((checkpoints(tmp_path / "runs", name)[-1] / "trainer_state.json").read_text())
    assert state["best_score"] >= 80.0  # chance is 50%
    adapter = checkpoints(tmp_path / "runs", name)[-1] / "best_adapter"
    meta = json.loads((adapter / "adept_config.json").read_text())
    assert meta["dtype"] == "float32"  # the adapter's master weights stay fp32
