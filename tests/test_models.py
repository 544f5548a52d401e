"""Architectures, specs, and loading every checkpoint layout and wrapper back to the same network."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from helpers import WRAPPERS, tiny_rrdb, tiny_srvgg, to_new_arch, to_old_arch, wrap
from vsr.errors import InputError, InputMissing
from vsr.models import RRDBNet, SRVGGNetCompact, build, checkpoint, load

# Odd hyper-parameters on purpose (issue 2): num_feat 16, num_block 2, num_grow_ch 8.
ODD = dict(num_feat=16, num_block=2, num_grow_ch=8)


def _save(sd: dict, path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, path)
    return path


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module, size: tuple[int, int] = (12, 16)) -> None:
    x = torch.rand(2, a.spec.in_channels, *size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert ya.shape == yb.shape
    assert torch.equal(ya, yb)


@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_rrdbnet_shapes_and_spec(scale):
    model = RRDBNet(scale=scale, **ODD)
    y = model(torch.rand(1, 3, 8, 12))
    assert y.shape == (1, 3, 8 * scale, 12 * scale)
    assert model.spec.scale == scale
    assert model.spec.multiple_of == {1: 4, 2: 2, 4: 1, 8: 1}[scale]
    assert model.conv_first.in_channels == 3 * model.spec.multiple_of**2


def test_rrdbnet_x4plus_parameter_count():
    # Real-ESRGAN x4plus: 16,697,987 parameters (DESIGN.md section 9).
    assert sum(p.numel() for p in RRDBNet().parameters()) == 16_697_987
    assert sum(p.numel() for p in SRVGGNetCompact().parameters()) == 621_424


def test_constructors_are_keyword_only():
    with pytest.raises(TypeError):
        RRDBNet(3, 3)  # type: ignore[misc]
    with pytest.raises(TypeError):
        SRVGGNetCompact(3, 3)  # type: ignore[misc]


def test_bad_hyper_parameters_are_refused():
    with pytest.raises(ValueError):
        RRDBNet(scale=3)
    with pytest.raises(ValueError):
        SRVGGNetCompact(act_type="gelu")
    with pytest.raises(ValueError):
        build("NoSuchNet")


def test_srvgg_adds_the_nearest_upsampled_input():
    model = tiny_srvgg(upscale=3)
    with torch.no_grad():
        for p in model.body[-1].parameters():
            p.zero_()  # the learned residual is now zero
    x = torch.rand(1, 3, 5, 7)
    assert torch.equal(model(x), torch.nn.functional.interpolate(x, scale_factor=3, mode="nearest"))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("layout", ["basicsr", "old", "new"])
@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_rrdb_layouts_round_trip(tmp_path, scale, layout, suffix):
    model = tiny_rrdb(scale=scale, **ODD)
    sd = model.state_dict()
    sd = {"basicsr": sd, "old": to_old_arch(sd, model.num_upsample), "new": to_new_arch(sd)}[layout]
    loaded = load(str(_save(sd, tmp_path / f"m{suffix}")))
    assert loaded.spec == model.spec
    _same_outputs(model, loaded, size=(8, 12))


@pytest.mark.parametrize("how", WRAPPERS)
@pytest.mark.parametrize("layout", ["basicsr", "old", "new"])
def test_rrdb_wrappers_round_trip(tmp_path, layout, how):
    model = tiny_rrdb(scale=4, **ODD)
    sd = model.state_dict()
    sd = {"basicsr": sd, "old": to_old_arch(sd, 2), "new": to_new_arch(sd)}[layout]
    loaded = load(str(_save(wrap(sd, how), tmp_path / "m.pth")))
    assert loaded.spec == model.spec
    _same_outputs(model, loaded)


@pytest.mark.parametrize("num_upsample,scale", [(0, 1), (1, 2), (3, 8)])
def test_old_arch_without_pixel_unshuffle(tmp_path, num_upsample, scale):
    # Community "1x"/"2x" ESRGAN files upsample 0 or 1 times and never unshuffle.
    model = tiny_rrdb(scale=scale, num_upsample=num_upsample, **ODD)
    assert model.spec.multiple_of == 1
    path = _save(to_old_arch(model.state_dict(), num_upsample), tmp_path / "m.pth")
    loaded = load(str(path))
    assert (loaded.spec.scale, loaded.num_upsample, loaded.unshuffle) == (scale, num_upsample, 1)
    _same_outputs(model, loaded)


def test_hyper_parameters_are_read_from_tensors(tmp_path):
    model = tiny_rrdb(scale=2, num_in_ch=1, num_out_ch=1, num_feat=24, num_block=3, num_grow_ch=12)
    loaded = load(str(_save(model.state_dict(), tmp_path / "gray_x2.pth")))
    assert loaded.spec.kwargs == model.spec.kwargs
    assert loaded.spec.kwargs["num_grow_ch"] == 12


@pytest.mark.parametrize("how", WRAPPERS)
@pytest.mark.parametrize("upscale", [2, 3, 4])
def test_srvgg_round_trip(tmp_path, upscale, how):
    model = tiny_srvgg(upscale=upscale, num_feat=16, num_conv=3)
    # safetensors holds a flat dict: only prefixes, no nesting.
    for suffix in (".pth", ".safetensors") if how in ("plain", "module") else (".pth",):
        loaded = load(str(_save(wrap(model.state_dict(), how), tmp_path / f"c{suffix}")))
        assert loaded.spec == model.spec
        _same_outputs(model, loaded)


def test_vsr_safetensors_carry_their_spec(tmp_path):
    # vsr's own files name the architecture, which also covers SRVGG without PReLU weights.
    model = tiny_srvgg(act_type="relu")
    path = tmp_path / "relu.safetensors"
    checkpoint.save_safetensors(path, model.spec, model.state_dict())
    loaded = load(str(path))
    assert loaded.spec == model.spec
    _same_outputs(model, loaded)
    assert checkpoint.read_metadata(path)["arch"] == "SRVGGNetCompact"


def test_spec_dict_round_trip_through_json():
    # The one stored form of a spec (ONNX metadata, TensorRT sidecars): written with sorted keys.
    import json

    from vsr.models.spec import FIELDS, ModelSpec

    odd = ModelSpec(arch="X", params=(("z", (1, (2, 3))), ("a", None)), scale=2, in_channels=1, out_channels=3, multiple_of=4,
                    min_size=8, dtypes=("fp32",), tileable=False, activation_per_pixel=12.5)
    for spec in (tiny_rrdb(scale=2).spec, tiny_srvgg().spec, odd):
        record = spec.to_dict()
        assert tuple(record) == FIELDS
        back = ModelSpec.from_dict(json.loads(json.dumps(record, sort_keys=True)))
        assert back == spec and back.params == spec.params  # params order and tuples survive
        assert back.activation_per_pixel == spec.activation_per_pixel
        hash(back)
    record = odd.to_dict()
    # Other keys are left to the caller; fields with a default may be missing (older files).
    assert ModelSpec.from_dict({**record, "precision": "fp16"}) == odd
    required = {k: record[k] for k in ("arch", "params", "scale", "in_channels", "out_channels")}
    assert ModelSpec.from_dict(required) == ModelSpec(arch="X", params=odd.params, scale=2, in_channels=1, out_channels=3)
    assert ModelSpec.from_dict({**required, "params": {"z": [1, [2, 3]], "a": None}}).params == odd.params
    for bad in ([1], {"arch": "X"}, {**required, "scale": "four"}, {**required, "params": [1, 2]}, {**required, "dtypes": 3}):
        with pytest.raises(ValueError):
            ModelSpec.from_dict(bad)


def test_safetensors_bytes_are_deterministic(tmp_path):
    model = tiny_rrdb()
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    checkpoint.save_safetensors(a, model.spec, model.state_dict(), {"z": 1, "a": 2, "m": [3]})
    checkpoint.save_safetensors(b, model.spec, model.state_dict(), {"m": [3], "a": 2, "z": 1})
    assert a.read_bytes() == b.read_bytes()


# --------------------------------------------------------------------------- bad files


class Payload:
    """A pickled object that weights_only loading must refuse to construct."""


def _error(path) -> InputError:
    with pytest.raises((InputError, InputMissing)) as info:
        load(str(path))
    text = str(info.value)
    assert "\n" not in text
    return info.value


def test_missing_and_folder(tmp_path):
    assert isinstance(_error(tmp_path / "nope.pth"), InputMissing)
    (tmp_path / "dir.pth").mkdir()
    assert "folder" in str(_error(tmp_path / "dir.pth"))


def test_damaged_files_get_one_line(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    assert "empty" in str(_error(tmp_path / "empty.pth"))
    (tmp_path / "text.pth").write_text("this is not a checkpoint\n")
    assert "not a readable" in str(_error(tmp_path / "text.pth"))

    good = tmp_path / "good.pth"
    torch.save(tiny_rrdb().state_dict(), good)
    (tmp_path / "cut.pth").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert "cut.pth" in str(_error(tmp_path / "cut.pth"))

    st = tmp_path / "good.safetensors"
    save_file(tiny_rrdb().state_dict(), str(st))
    (tmp_path / "cut.safetensors").write_bytes(st.read_bytes()[: st.stat().st_size - 100])
    assert "damaged safetensors" in str(_error(tmp_path / "cut.safetensors"))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"params": {"x": Payload()}}, fh)
    torch.save({"params": tiny_rrdb().state_dict(), "extra": Payload()}, tmp_path / "obj.pth")
    for name in ("evil.pth", "obj.pth"):
        assert "weights_only=True" in str(_error(tmp_path / name))
    assert "Payload" in str(_error(tmp_path / "obj.pth"))


def test_unknown_layout_names_what_was_found(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"encoder.0.weight": torch.zeros(8, 3, 3, 3), "encoder.0.bias": torch.zeros(8)}, path)
    err = _error(path)
    assert "2 tensors" in str(err) and "encoder.0.weight" in str(err)
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "notensors.pth")
    assert "no tensors" in str(_error(tmp_path / "notensors.pth"))


def test_incomplete_rrdb_names_the_missing_tensor(tmp_path):
    sd = tiny_rrdb().state_dict()
    del sd["conv_hr.bias"]
    torch.save(sd, tmp_path / "m.pth")
    assert "conv_hr.bias" in str(_error(tmp_path / "m.pth"))
    sd = to_old_arch(tiny_rrdb().state_dict(), 2)
    sd["model.5.weight"] = sd.pop("model.6.weight")
    torch.save(sd, tmp_path / "old.pth")
    assert "model.5" in str(_error(tmp_path / "old.pth"))
