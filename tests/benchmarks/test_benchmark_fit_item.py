"""`benchmarks/run.py --items fit` reads tokens/s and samples/s from a real job's own metrics (Ray Train,
DeepSpeed ZeRO-2). A file of its own: a parallel test run puts it beside the quick run, not after it."""

import pytest
from test_benchmark_smoke import _positive, _run


@pytest.mark.slow
def test_fit_item_reads_the_jobs_throughput(tmp_path, synthetic_task, tiny_backbone):
    import yaml

    config = tmp_path / "fit.yaml"
    config.write_text(yaml.safe_dump({"task": str(synthetic_task), "backbone": str(tiny_backbone), "r": 8,
                                      "num_virtual_tokens": 4, "batch_size": 8, "max_source_length": 32,
                                      "max_target_length": 4, "deepspeed": True, "zero_stage": 2}))
    result, stdout = _run(tmp_path, "--quick", "--items", "fit", "--fit-config", str(config), "--fit-steps", "6")
    (row,) = result["rows"]
    assert row["item"] == "fit" and row["steps"] == 6 and row["engine"] == "DeepSpeed ZeRO-2"
    assert _positive(row["tokens_per_s"]) and _positive(row["samples_per_s"]) and row["wall_s"] > 0
    # tokens per sample: between one token and the longest possible input (source + target)
    per_sample = row["tokens_per_s"]["median"] / row["samples_per_s"]["median"]
    assert 1 <= per_sample <= 32 + 4
    assert "### 4. Tokens per second of a fit" in stdout
