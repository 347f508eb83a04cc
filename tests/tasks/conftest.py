"""Pipeline tests run offline: no hub, no network; caches go to tmp folders."""

import os

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A private ADEPT_CACHE_DIR for the test."""
    path = tmp_path / "adept-cache"
    monkeypatch.setenv("ADEPT_CACHE_DIR", str(path))
    return path
