"""Test-wide settings: no hub access, loopback-only Ray, CPU DeepSpeed (see shared cpu-stack notes)."""

import os
import sys
from pathlib import Path

for key, value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # Ray binds 127.0.0.1 only; never set on real clusters
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
    "DS_ACCELERATOR": "cpu",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(key, value)

# `tests/tiny.py` is imported as `tiny` by every test package.
sys.path.insert(0, str(Path(__file__).parent))
