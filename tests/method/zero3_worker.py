"""Run by test_zero3.py in its own process: ADePT inside a DeepSpeed ZeRO-3 engine (1 rank, gloo, CPU).

Prints one JSON line of raw values (shapes, tensors as lists, losses, messages); test_zero3.py compares them.
"""

import importlib
import json
import os
import tempfile
from pathlib import Path

os.environ.update(DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
os.environ.setdefault("MASTER_PORT", "29531")

import deepspeed  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from tiny import tiny_llama, tiny_tokenizer  # noqa: E402

import adept  # noqa: E402
from adept import AdeptConfig, AdeptModel, get_adept_model  # noqa: E402
from adept.fold import folded_embedding_table  # noqa: E402
from adept.io import WEIGHTS_NAME  # noqa: E402
from pipeline.core.data import TokenizeConfig  # noqa: E402
from pipeline.core.evaluation import EvalConfig, score_candidates  # noqa: E402

importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None  # skip the shm JIT build
deepspeed.init_distributed(dist_backend="gloo")

tok = tiny_tokenizer()
config = dict(num_virtual_tokens=4, ffn_hidden_size=3)
reference = get_adept_model(tiny_llama(), AdeptConfig(**config), tok)
ds_config = {"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 3},
             "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}}}
base = tiny_llama()
deepspeed.zero.Init(module=base, config_dict_or_path=ds_config)  # partition the backbone: shapes become [0]
result = {"embedding_shape": list(base.get_input_embeddings().weight.shape)}
model = get_adept_model(base, AdeptConfig(**config), tok)  # text init reads the partitioned vocabulary
result["prompt_init"] = model.prompt.weight.tolist()
result["prompt_init_unsharded"] = reference.prompt.weight.tolist()
engine, *_ = deepspeed.initialize(model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
                                  config=ds_config)
batch = tok(["good movie", "bad film"], return_tensors="pt", padding=True)
result["adept_file"] = str(Path(adept.__file__).resolve())
engine.module.eval()
with torch.no_grad():
    labelled = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    result["loss_full"] = engine(**batch, labels=labelled).loss.item()
    result["loss_only"] = engine(**batch, labels=labelled, loss_only=True).loss.item()
engine.module.train()
losses = []
for _ in range(4):
    loss = engine(**batch, labels=batch["input_ids"]).loss
    engine.backward(loss)
    engine.step()
    losses.append(loss.item())
result["losses"] = losses
out = Path(tempfile.mkdtemp())
engine.module.save_pretrained(out)
saved = load_file(str(out / WEIGHTS_NAME))
result["saved_shapes"] = {k: list(v.shape) for k, v in saved.items()}
result["folded_table_shape"] = list(folded_embedding_table(engine.module).shape)
try:
    engine.module.fold()
    result["fold_error"] = None
except ValueError as err:
    result["fold_error"] = str(err)
engine.module.eval()
rank_config = EvalConfig(TokenizeConfig(backbone="causal", max_source_length=16, max_target_length=6, separator=":"),
                         eval_mode="rank", batch_size=2)
rank_args = (engine.module, tok, ["good movie", "the plot is bad , the acting awful", "great"], ["positive", "no true"],
             rank_config)
result["scores_one_pass"] = score_candidates(*rank_args, one_pass=True).tolist()
result["scores_reference"] = score_candidates(*rank_args, one_pass=False).tolist()
plain = AdeptModel.from_pretrained(tiny_llama(), out)
result["saved"] = {k: v.tolist() for k, v in saved.items()}
result["reloaded"] = {n: p.tolist() for n, p in plain.adapter_named_parameters()}
print("RESULT " + json.dumps(result))
