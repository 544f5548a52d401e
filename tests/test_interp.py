"""``vsr interp``: ESRGAN network interpolation maths, refusals, and that the result runs."""

from __future__ import annotations

import pytest
import torch

from helpers import tiny_rrdb, tiny_srvgg
from vsr.cli import main
from vsr.models import checkpoint, load
from vsr.models.interp import interpolate


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


@pytest.fixture
def pair(tmp_path):
    a, b = tiny_rrdb(seed=1), tiny_rrdb(seed=2)
    torch.save({"params_ema": a.state_dict()}, tmp_path / "a.pth")
    checkpoint.save_safetensors(tmp_path / "b.safetensors", b.spec, b.state_dict())
    return a, b, tmp_path / "a.pth", tmp_path / "b.safetensors"


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.8, 1.0])
def test_interpolation_is_tensor_by_tensor(tmp_path, capsys, pair, alpha):
    a, b, pa, pb = pair
    out = tmp_path / f"c{alpha}.safetensors"
    code, err = _run(capsys, "interp", pa, pb, "--alpha", alpha, "--output", out)
    assert code == 0, err
    got, meta = checkpoint.read_tensors(out)
    assert meta["interpolation"]["alpha"] == alpha and meta["arch"] == "RRDBNet"
    sa, sb = a.state_dict(), b.state_dict()
    assert got.keys() == sa.keys()
    for key in sa:
        expected = (1 - alpha) * sa[key].double() + alpha * sb[key].double()
        assert torch.allclose(got[key].double(), expected, atol=1e-7), key
    if alpha in (0.0, 1.0):
        assert all(torch.equal(got[k], (sa if alpha == 0 else sb)[k]) for k in sa)
    # The result is a model like any other.
    blended = load(str(out))
    x = torch.rand(1, 3, 8, 8)
    assert blended(x).shape == (1, 3, 32, 32)


def test_interpolate_function_refuses_mismatched_tensors():
    a, b = tiny_rrdb().state_dict(), tiny_rrdb(num_block=2).state_dict()
    with pytest.raises(Exception, match="different tensors"):
        interpolate(a, b, 0.5)


def test_different_architectures_are_refused(tmp_path, capsys, pair):
    _, _, pa, _ = pair
    torch.save(tiny_srvgg().state_dict(), tmp_path / "srvgg.pth")
    torch.save(tiny_rrdb(num_block=2).state_dict(), tmp_path / "deeper.pth")
    torch.save(tiny_rrdb(num_grow_ch=6).state_dict(), tmp_path / "wider.pth")
    for other in ("srvgg.pth", "deeper.pth", "wider.pth"):
        code, err = _run(capsys, "interp", pa, tmp_path / other, "--alpha", "0.5", "--output", tmp_path / "x.safetensors")
        assert code == 65 and "architectures differ" in err and err.count("\n") == 1
    assert not (tmp_path / "x.safetensors").exists()


def test_named_models_interpolate(tmp_path, capsys):
    out = tmp_path / "self.safetensors"
    code, err = _run(capsys, "interp", "realesr-animevideov3", "realesr-animevideov3", "--alpha", "0.5", "--output", out)
    assert code == 0, err
    assert load(str(out)).spec == load("realesr-animevideov3").spec


@pytest.mark.parametrize(
    "extra,code,needle",
    [
        (["--alpha", "1.5", "--output", "{d}/o.safetensors"], 2, "[0, 1]"),
        (["--alpha", "0.5", "--output", "{d}/o.pth"], 2, ".safetensors"),
        (["--alpha", "0.5"], 2, "--output"),
        (["--alpha", "0.5", "--output", "{d}/b.safetensors"], 73, "is the input"),
        (["--alpha", "0.5", "--output", "{d}/exists.safetensors"], 73, "--overwrite"),
    ],
)
def test_bad_arguments(tmp_path, capsys, pair, extra, code, needle):
    _, _, pa, pb = pair
    (tmp_path / "exists.safetensors").write_bytes(b"keep me")
    got, err = _run(capsys, "interp", pa, pb, *[e.format(d=tmp_path) for e in extra])
    assert got == code and needle in err and err.count("\n") == 1
    assert (tmp_path / "exists.safetensors").read_bytes() == b"keep me"


def test_missing_model(tmp_path, capsys, pair):
    _, _, pa, _ = pair
    code, err = _run(capsys, "interp", pa, tmp_path / "nope.pth", "--alpha", "0.5", "--output", tmp_path / "o.safetensors")
    assert code == 66
