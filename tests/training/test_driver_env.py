"""Workers take exactly the driver's ADEPT_* settings: a reused worker process keeps no stale setting."""

import os

from pipeline.core.config import apply_driver_env, driver_env


def test_stale_settings_are_removed_and_new_ones_applied(monkeypatch):
    monkeypatch.setenv("ADEPT_LOG_LEVEL", "debug")  # left by an earlier job in this process
    monkeypatch.setenv("ADEPT_CACHE_DIR", "/old")
    monkeypatch.setenv("OTHER_SETTING", "kept")
    apply_driver_env({"ADEPT_CACHE_DIR": "/new"})
    assert driver_env() == {"ADEPT_CACHE_DIR": "/new"}
    assert os.environ["OTHER_SETTING"] == "kept"
