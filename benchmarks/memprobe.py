"""Peak memory of training steps for one configuration, in a fresh process (run by bench_train.py).

    python benchmarks/memprobe.py '{"backbone": "tiny", "method": "adept", "length": 64, "batch": 4,
                                    "device": "cpu", "dtype": "float32", "threads": 2, "steps": 2}'

Prints one JSON line: the peak memory added by the steps over what the process held just before them
(backbone, adapter, batch and optimiser built; gradients and AdamW state not yet allocated).
CPU: peak resident set size, reset through /proc/self/clear_refs (Linux >= 4.0) and read from VmHWM;
where that is unavailable, ru_maxrss (lifetime peak, so loading spikes can hide the delta).
CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats (allocated tensors, not the cache).
"""

from __future__ import annotations

import gc
import json
import resource
import sys

MIB = 1024 * 1024


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_cpu_peak() -> str:
    try:  # give freed heap back first, so the steps' allocations show up as new resident memory
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return "VmHWM after clear_refs"
    except OSError:
        return "ru_maxrss (lifetime peak)"


def main(spec: dict) -> dict:
    import bench_common as bc
    import torch

    torch.set_num_threads(spec["threads"])
    device = spec["device"]
    backbone = bc.load_backbone(spec["backbone"], device, spec["dtype"])
    m_spec = bc.method_spec(spec["method"], backbone.config.hidden_size)
    model = bc.build_adapter(backbone, m_spec).train()
    pad_to = m_spec.s if m_spec.method == "dept" else None
    batch = bc.make_batch(spec["batch"], spec["length"], backbone.config.vocab_size, seed=1, device=device,
                          pad_to=pad_to, pad_id=backbone.config.pad_token_id or 0)
    optimizer = bc.make_optimizer(model)
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        for _ in range(spec["steps"]):
            bc.train_step(model, optimizer, batch)
        torch.cuda.synchronize()
        peak, how = torch.cuda.max_memory_allocated(), "torch.cuda.max_memory_allocated"
    else:
        how = _reset_cpu_peak()
        before = (_status_kib("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
        for _ in range(spec["steps"]):
            bc.train_step(model, optimizer, batch)
        hwm = _status_kib("VmHWM") if how.startswith("VmHWM") else None
        peak = (hwm or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    return {"peak_delta_mib": (peak - before) / MIB, "before_mib": before / MIB, "peak_mib": peak / MIB,
            "how": how, "trainable_params": model.num_trainable_parameters()}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
