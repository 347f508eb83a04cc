"""Run by test_random_backbones.py in its own process: random:llama-tiny built under a live ZeRO-3
HfDeepSpeedConfig (1 rank, gloo, CPU) must be partitioned at construction and hold the same weights as the
plain build. Prints one JSON line with what the test checks. Needs ADEPT_CACHE_DIR set by the caller."""

import importlib
import json
import os

os.environ.update(DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
os.environ.setdefault("MASTER_PORT", "29533")

import deepspeed  # noqa: E402
import torch  # noqa: E402
from transformers.integrations import HfDeepSpeedConfig, is_deepspeed_zero3_enabled  # noqa: E402

from pipeline.core.backbones import load_backbone  # noqa: E402

importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None  # skip the shm JIT build
deepspeed.init_distributed(dist_backend="gloo")

plain, _, _ = load_backbone("random:llama-tiny")
reference = {n: p.detach().clone() for n, p in plain.named_parameters()}
result = {"zero3_before": is_deepspeed_zero3_enabled()}

for precision in ("fp32", "bf16"):
    ds_config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3},
                 "bf16": {"enabled": precision == "bf16"}}
    keep = HfDeepSpeedConfig(ds_config)  # held by a weak reference inside transformers: keep it alive
    result[f"{precision}_zero3_enabled"] = is_deepspeed_zero3_enabled()
    rng = torch.get_rng_state()
    model, tok, kind = load_backbone("random:llama-tiny")  # dtype float32: DeepSpeed's dtype wins
    result[f"{precision}_rng_untouched"] = torch.equal(rng, torch.get_rng_state())
    params = dict(model.named_parameters())
    result[f"{precision}_partitioned"] = all(hasattr(p, "ds_id") and p.numel() == 0 for p in params.values())
    result[f"{precision}_dtypes"] = sorted({str(p.ds_tensor.dtype) for p in params.values()})
    with deepspeed.zero.GatheredParameters(list(params.values())):
        result[f"{precision}_same_weights"] = all(
            torch.equal(reference[n].to(p.dtype), p.detach()) for n, p in params.items())
        result[f"{precision}_gathered_numel"] = sum(p.numel() for p in params.values())
    del model, params, keep

result["zero3_after"] = is_deepspeed_zero3_enabled()
print("RESULT " + json.dumps(result))
