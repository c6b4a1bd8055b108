import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory) -> Path:
    from vlmcompress.models.tiny import save_tiny, tiny_llava

    return save_tiny(*tiny_llava(), tmp_path_factory.mktemp("models") / "tiny-llava")


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory) -> Path:
    from vlmcompress.models.tiny import save_tiny, tiny_qwen2_vl

    return save_tiny(*tiny_qwen2_vl(), tmp_path_factory.mktemp("models") / "tiny-qwen2-vl")


@pytest.fixture
def offline_datasets(tmp_path_factory, monkeypatch):
    """``datasets`` offline, caching under a temporary folder (its config is read at import
    time, so the module attributes are patched, not only the environment)."""
    import datasets

    cache = tmp_path_factory.getbasetemp() / "hf-cache"
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_HOME", str(cache))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache / "datasets"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache / "datasets")
    monkeypatch.setattr(datasets.config, "DOWNLOADED_DATASETS_PATH", cache / "datasets" / "downloads")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    yield
    if bars:
        datasets.enable_progress_bars()
