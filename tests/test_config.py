"""Training config: TOML sections into frozen dataclasses, overrides, and one-line errors (exit 78)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from vsr.train.config import (
    Config,
    ConfigError,
    config_from_dict,
    config_to_dict,
    config_to_json,
    load_config,
    parse_override,
)
from vsr.errors import InputMissing

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def error_of(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg  # the CLI prints it as one `vsr: error:` line
    return msg


def test_defaults_are_esrgan_psnr_stage():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert (cfg.model.arch, cfg.model.num_feat, cfg.model.num_block, cfg.model.num_grow_ch, cfg.model.scale) == ("rrdbnet", 64, 23, 32, 4)
    assert (cfg.train.stage, cfg.train.lr, cfg.train.betas, cfg.train.ema) == ("psnr", 2e-4, (0.9, 0.99), 0.999)
    # psnr stage: L1 only
    assert (cfg.loss.pixel, cfg.loss.perceptual, cfg.loss.gan) == (1.0, 0.0, 0.0)
    # The perceptual network: VGG16 from the offline files, ESRGAN's place in it (conv5_3, before ReLU).
    assert (cfg.loss.vgg, cfg.loss.vgg_weights, cfg.loss.vgg_layers) == ("vgg16", "", ("conv5_3",))
    assert load_config(None, ["loss.vgg='vgg19'"]).loss.vgg_layers == ("conv5_4",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.lr = 1.0  # type: ignore[misc]


def test_gan_stage_takes_esrgan_weights_unless_set(tmp_path):
    cfg = load_config(None, ["train.stage=gan"])
    assert (cfg.loss.pixel, cfg.loss.perceptual, cfg.loss.gan) == (1e-2, 1.0, 5e-3)
    assert cfg.train.lr == 1e-4
    cfg = load_config(write(tmp_path, "[train]\nstage = 'gan'\n[loss]\ngan = 0.1\n"))
    assert (cfg.loss.pixel, cfg.loss.perceptual, cfg.loss.gan) == (1e-2, 1.0, 0.1)


@pytest.mark.parametrize("name", ["train_psnr.toml", "train_gan.toml", "finetune_x4plus.toml", "train_cpu.toml", "train_gan_cpu.toml"])
def test_examples_load(name):
    cfg = load_config(EXAMPLES / name)
    demo = (("data/demo/hr",), "data/demo/val")
    paths = {"finetune_x4plus.toml": (("data/footage",), "data/demo/val"), "train_cpu.toml": demo, "train_gan_cpu.toml": demo}
    assert (cfg.data.train, cfg.data.val) == paths.get(name, (("data/hr",), "data/val"))
    assert cfg.data.patch_size % cfg.model.scale == 0
    if name == "train_cpu.toml":  # the from-scratch CPU recipe: compact network, L1, EMA with warm-up
        assert (cfg.model.arch, cfg.model.pretrained, cfg.train.stage, cfg.loss.gan) == ("srvgg", "", "psnr", 0)
        assert cfg.train.ema > 0 and cfg.train.ema_warmup and cfg.checkpoint.dir == "runs/train_cpu"
    elif name == "train_psnr.toml":
        assert cfg.train.stage == "psnr" and cfg.loss.gan == 0
    else:
        # The offline VGG16 (ESRGAN's VGG19 is a commented alternative): they run without a file.
        assert cfg.train.stage == "gan" and cfg.loss.perceptual > 0 and (cfg.loss.vgg, cfg.loss.vgg_weights) == ("vgg16", "")
    if name == "train_gan_cpu.toml":  # the GAN stage of train_cpu.toml's model, same network
        cpu = load_config(EXAMPLES / "train_cpu.toml")
        assert cfg.model == dataclasses.replace(cpu.model, pretrained=cpu.checkpoint.dir) and cfg.data.val == cpu.data.val
    if name == "finetune_x4plus.toml":
        assert cfg.model.pretrained == "realesrgan-x4plus" and cfg.data.degradation == "realesrgan"
        assert len(cfg.loss.vgg_layers) == len(cfg.loss.vgg_layer_weights) == 5


def test_unknown_key_lists_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, "[train]\nlearning_rate = 1e-4\n"))
    msg = error_of(exc)
    assert exc.value.exit_code == 78
    assert "'learning_rate'" in msg and "[train]" in msg
    for key in ("stage", "steps", "lr", "lr_milestones", "ema", "seed", "device", "precision", "log_every"):
        assert key in msg


def test_unknown_section(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, "[optim]\nlr = 1\n"))
    msg = error_of(exc)
    assert "[optim]" in msg and "model, data, train, loss" in msg


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        ("[train]\nsteps = '100'\n", "train.steps", "integer"),
        ("[train]\nsteps = 1.5\n", "train.steps", "integer"),
        ("[data]\nflip = 1\n", "data.flip", "boolean"),
        ("[data]\nworkers = true\n", "data.workers", "integer"),
        ("[train]\nlr = 'fast'\n", "train.lr", "number"),
        ("[data]\ntrain = [1, 2]\n", "data.train[0]", "string"),
        ("[loss]\nvgg_layers = 'conv5_3'\n", None, None),  # a single string is fine for string lists
        ("[model]\nscale = [4]\n", "model.scale", "integer"),
        ("model = 3\n", "[model]", "table"),
    ],
)
def test_wrong_types(tmp_path, text, where, what):
    if where is None:
        assert load_config(write(tmp_path, text)).loss.vgg_layers == ("conv5_3",)
        return
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text))
    msg = error_of(exc)
    assert where in msg and what in msg and str(tmp_path / "c.toml") in msg


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("train.stage=adversarial", "valid values: psnr, gan"),
        ("train.precision=fp8", "fp32, bf16, fp16"),
        ("data.batch_size=0", ">= 1"),
        ("data.patch_size=30", "multiple of model.scale"),
        ("train.device=gpu", "auto, cpu, cuda"),
        ("loss.vgg_layers=['conv6_1']", "conv5_3"),
        ("loss.vgg_layers=['conv5_4']", "conv5_4 is VGG19's: set loss.vgg = 'vgg19'"),
        ("train.lr_milestones=[20, 10]", "increasing"),
        ("train.ema=1.0", "[0, 1)"),
        ("loss.gan=0.01", "train.stage = 'gan'"),
        ("degradation.kernel_list=['box']", "valid kernel names"),
        ("degradation.noise_range=[30.0, 1.0]", "low <= high"),
    ],
)
def test_bad_values(override, needle):
    with pytest.raises(ConfigError) as exc:
        load_config(None, [override])
    assert needle in error_of(exc)


def test_vgg_discriminator_needs_power_of_two_patch():
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["train.stage=gan", "data.patch_size=96"])
    assert "discriminator.arch = 'patch'" in error_of(exc)
    assert load_config(None, ["train.stage=gan", "data.patch_size=96", "discriminator.arch=patch"]).data.patch_size == 96


def test_overrides_are_toml_literals_or_bare_words(tmp_path):
    path = write(tmp_path, "[train]\nlr = 2e-4\nsteps = 10\n[data]\ntrain = ['a']\n")
    cfg = load_config(path, [
        "train.lr=1e-4", "train.steps=20", "train.device=cuda:1", "data.train=['x', 'y']", "data.flip=false",
        "model.pretrained=runs/psnr/step_000100.pt", "train.lr_milestones=[5, 10]", 'checkpoint.dir="with space"',
    ])
    assert cfg.train.lr == 1e-4 and cfg.train.steps == 20 and cfg.train.device == "cuda:1"
    assert cfg.data.train == ("x", "y") and cfg.data.flip is False
    assert cfg.model.pretrained == "runs/psnr/step_000100.pt"
    assert cfg.train.lr_milestones == (5, 10)
    assert cfg.checkpoint.dir == "with space"
    assert parse_override("data.workers = 3") == ("data", "workers", 3)
    assert parse_override("train.lr=1") == ("train", "lr", 1)
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0  # ints are fine for floats
    assert parse_override("model.pretrained=realesrgan-x4plus")[2] == "realesrgan-x4plus"


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("train.lr", "section.key=value"),
        ("lr=1e-4", "section.key=value"),
        ("a.b.c=1", "section.key=value"),
        ("optim.lr=1", "unknown section [optim]"),
        ("train.rate=1", "valid keys: stage, steps, lr"),
        ("data.train=[1,", "neither a TOML value nor a bare word"),
        ("data.val=two words", "neither a TOML value nor a bare word"),
        ("train.steps=ten", "must be an integer"),
    ],
)
def test_bad_overrides(override, needle):
    with pytest.raises(ConfigError) as exc:
        load_config(None, [override])
    assert needle in error_of(exc)
    assert exc.value.exit_code == 78


def test_file_errors(tmp_path):
    with pytest.raises(InputMissing) as exc:
        load_config(tmp_path / "nope.toml")
    assert exc.value.exit_code == 66
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, "[train\nlr = 1\n"))
    assert "not valid TOML" in error_of(exc)
    with pytest.raises(ConfigError):
        load_config(tmp_path)  # a folder


def test_json_round_trip():
    cfg = load_config(None, ["train.stage=gan", "data.train=['a', 'b']", "loss.vgg='vgg19'", "loss.vgg_layers=['conv2_2', 'conv5_4']"])
    text = config_to_json(cfg)
    data = json.loads(text)
    assert list(data) == ["model", "data", "train", "loss", "discriminator", "checkpoint", "val", "degradation"]
    assert data["data"]["train"] == ["a", "b"] and data["loss"]["gan"] == 5e-3
    assert config_from_dict(data) == cfg
    assert config_to_dict(cfg)["train"]["betas"] == [0.9, 0.99]
