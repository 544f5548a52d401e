"""Training: metrics against known values, degradations, data, the PSNR and GAN stages, exact resume,
crash-safe checkpoints, export round trip, evaluation, and the configuration errors of a run.

Tiny networks (RRDBNet nf=8, nb=1, gc=4), 32 px HR patches, batches of 2, on real photographs
(scikit-image's astronaut, coffee, chelsea for training; rocket held out).
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import photo, write_training_photos

from vsr import models
from vsr.train.config import load_config
from vsr.errors import ConfigError, InputError, InputMissing, OutputError
from vsr.media.image import write_image
from vsr.train import checkpoint as ckpt
from vsr.train.data import TrainSet, collect_sources, make_loader, pair_folders, sample_video_frames
from vsr.train.degrade import (
    RealESRGANDegradation,
    bicubic_downsample,
    gaussian_kernel,
    jpeg,
    plateau_kernel,
    sinc_kernel,
)
from vsr.train.discriminator import PatchDiscriminator, VGGStyleDiscriminator
from vsr.train.export import export_run
from vsr.train.loop import EMA, build_generator, train
from vsr.perceptual.nets import vgg_features, vgg_from_file, vgg_layer_names
from vsr.train.losses import check_perceptual_source, perceptual_features, ragan_d_loss, ragan_g_loss
from vsr.train.metrics import evaluate, psnr_y, ssim_y

SEED_ARGS = ["model.num_feat=8", "model.num_block=1", "model.num_grow_ch=4", "data.patch_size=32", "data.batch_size=2"]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks run fastest on one thread, and far faster than on two busy cores."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def photo_data(tmp_path_factory) -> Path:
    """hr/: three 160x160 crops (training); val/: a 96x96 rocket crop (held out)."""
    crops = {f"{name}.png": (name, y, x) for name, y, x in (("astronaut", 40, 150), ("coffee", 120, 200), ("chelsea", 60, 140))}
    return write_training_photos(tmp_path_factory.mktemp("photos"), crops, 160, ("rocket", 192, 256, 96))


def tiny(tmp: Path, photo_data: Path, *extra: str):
    """A tiny, fast config; ``extra`` are more ``section.key=value`` overrides."""
    return load_config(None, [
        *SEED_ARGS, f"data.train=['{photo_data / 'hr'}']", "data.workers=0", "train.log_every=1",
        f"checkpoint.dir='{tmp}'", "val.every=0", *extra,
    ])


@pytest.fixture(scope="module")
def psnr_run(tmp_path_factory, photo_data) -> Path:
    """A short PSNR-stage run with validation (shared by the tests that need a trained model)."""
    run_dir = tmp_path_factory.mktemp("psnr_run")
    cfg = tiny(run_dir, photo_data, "train.steps=30", "train.lr=2e-3", "train.ema=0.9", "train.ema_warmup=false", f"data.val='{photo_data / 'val'}'",
               "val.every=15", "checkpoint.every=15", "train.log_every=5")
    summary = train(cfg, progress="none")
    assert summary.step == 30 and summary.checkpoint == run_dir / "step_000030.pt"
    return run_dir


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory) -> Path:
    """Random VGG19 weights in torchvision's layout, truncated after conv3_4 (9 MB, not 548 MB)."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("vgg") / "vgg19_to_conv3_4.pth"
    torch.save(vgg_features("vgg19", layers=["conv3_4"]).state_dict(), path)
    return path


def heldout_l1(model: torch.nn.Module) -> float:
    """L1 of the model on 32x32 HR crops of the held-out photograph (rocket), LR by bicubic."""
    img = torch.from_numpy(photo("rocket")).permute(2, 0, 1).float() / 255
    hr = torch.stack([img[:, y : y + 32, x : x + 32] for y, x in ((150, 0), (250, 20), (200, 260), (300, 280))])
    with torch.no_grad():
        return float((model.eval()(bicubic_downsample(hr, 4)) - hr).abs().mean())


def records(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


# --------------------------------------------------------------------------- metrics


def test_psnr_y_known_values():
    a = np.zeros((16, 16, 3), np.uint8)
    b = a.copy()
    b[..., 0] = 1  # one code value of red moves Y by 65.481 / 255
    assert psnr_y(a, b) == pytest.approx(20 * np.log10(255 / (65.481 / 255)), abs=1e-9)  # 59.90 dB
    assert psnr_y(a, a) == float("inf")

    img = photo("astronaut")[:64, :64]
    noisy = np.clip(img + np.random.default_rng(0).normal(0, 8, img.shape), 0, 255).astype(np.uint8)

    def y(x):  # by hand: MATLAB rgb2ycbcr luma for RGB in [0, 1]
        x = x.astype(np.float64) / 255
        return 16 + 65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]

    mse = np.mean((y(img)[4:-4, 4:-4] - y(noisy)[4:-4, 4:-4]) ** 2)
    assert psnr_y(img, noisy, crop=4) == pytest.approx(10 * np.log10(255**2 / mse), abs=1e-9)
    # tensors in [0, 1] give the same number
    def t(x):
        return torch.from_numpy(x).permute(2, 0, 1).float() / 255

    assert psnr_y(t(img), t(noisy), crop=4) == pytest.approx(psnr_y(img, noisy, crop=4), abs=1e-4)


def test_ssim_y_matches_skimage():
    from skimage.filters import gaussian
    from skimage.metrics import structural_similarity

    img = photo("chelsea")[50:178, 100:260]
    blurred = (gaussian(img, sigma=1.2, channel_axis=-1) * 255).round().astype(np.uint8)
    def y(x):
        return 16 + (x.astype(np.float64) / 255) @ np.array([65.481, 128.553, 24.966])

    for crop in (0, 4):
        ya, yb = (y(v)[crop : -crop or None, crop : -crop or None] for v in (img, blurred))
        ref = structural_similarity(ya, yb, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
        assert ssim_y(img, blurred, crop=crop) == pytest.approx(ref, abs=1e-9)
    assert 0.5 < ssim_y(img, blurred) < 0.95
    assert ssim_y(img, img) == pytest.approx(1.0)


# --------------------------------------------------------------------------- degradations


def test_jpeg_simulation_matches_libjpeg():
    Image = pytest.importorskip("PIL.Image")  # libjpeg, via Pillow (installed with scikit-image)
    img = photo("astronaut")[100:228, 100:228]
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    for quality in (30, 60, 95):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=quality, subsampling=2)
        ref = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        ours = (jpeg(x, quality)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        # Same tables and steps; only libjpeg's "fancy" chroma upsampling differs.
        assert psnr_y(ours, ref) > 40
        assert abs(psnr_y(ours, img) - psnr_y(ref, img)) < 1.0


def test_blur_kernels():
    for k in (gaussian_kernel(21, 2.0, 0.5, 0.7), gaussian_kernel(7, 1.0, 1.0, 0, beta=0.6),
              plateau_kernel(15, 1.5, 1.0, 0.3, 1.5), sinc_kernel(13, np.pi / 3)):
        assert k.sum() == pytest.approx(1.0)
        assert np.allclose(k, k[::-1, ::-1])  # point-symmetric: convolution == correlation
    iso = gaussian_kernel(9, 1.3, 1.3, 0.0)
    ax = np.arange(-4, 5)
    ref = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * 1.3**2))
    assert np.allclose(iso, ref / ref.sum())
    aniso = gaussian_kernel(21, 3.0, 0.5, 0.0)
    assert aniso[10, :].sum() > 3 * aniso[:, 10].sum()  # wide along x, narrow along y


def test_realesrgan_degradation_is_seeded_and_sized():
    hr = torch.from_numpy(photo("coffee")[100:164, 200:264]).permute(2, 0, 1).float() / 255
    degrade = RealESRGANDegradation(load_config().degradation, 4)
    a = degrade(hr, np.random.default_rng(7))
    b = degrade(hr, np.random.default_rng(7))
    c = degrade(hr, np.random.default_rng(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (3, 16, 16) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, (a * 255).round() / 255)  # 8-bit levels
    tiny_patch = hr[:, :32, :32]
    for seed in range(40):  # tiny intermediate sizes (down to 2 px) must not break the filters
        assert degrade(tiny_patch, np.random.default_rng(seed)).shape == (3, 8, 8)
    lr = bicubic_downsample(hr, 4)
    assert lr.shape == (3, 16, 16) and torch.equal(lr, (lr * 255).round() / 255)


# --------------------------------------------------------------------------- data


def test_paired_folders_report_missing_partners_and_sizes(tmp_path):
    img = photo("astronaut")[:64, :64]
    for name in ("a", "b", "c", "d"):
        write_image(tmp_path / "hr" / f"{name}.png", img)
    write_image(tmp_path / "lr" / "a.png", img[:16, :16])
    write_image(tmp_path / "lr" / "c.jpg", img[:16, :16])  # any extension pairs
    with pytest.raises(InputError) as exc:
        pair_folders(tmp_path / "hr", tmp_path / "lr", 4)
    msg = str(exc.value)
    assert exc.value.exit_code == 65 and "\n" not in msg
    assert "2 of 4 HR images" in msg and "b.png" in msg and "d.png" in msg and "same names" in msg

    write_image(tmp_path / "lr" / "b.png", img[:16, :16])
    write_image(tmp_path / "lr" / "d.png", img[:15, :16])  # wrong size
    with pytest.raises(InputError) as exc:
        pair_folders(tmp_path / "hr", tmp_path / "lr", 4)
    assert "d.png 64x64 vs LR 16x15" in str(exc.value) and "x4" in str(exc.value)
    write_image(tmp_path / "lr" / "d.png", img[:16, :16], overwrite=True)
    assert [(h.name, l.name) for h, l in pair_folders(tmp_path / "hr", tmp_path / "lr", 4)] == [
        ("a.png", "a.png"), ("b.png", "b.png"), ("c.png", "c.jpg"), ("d.png", "d.png")]


def test_paired_crops_are_aligned(tmp_path, photo_data):
    img = torch.from_numpy(photo("coffee")[:160, :240]).permute(2, 0, 1).float() / 255
    lr = bicubic_downsample(img, 4)
    write_image(tmp_path / "hr" / "coffee.png", (img.permute(1, 2, 0) * 255).round().byte().numpy())
    write_image(tmp_path / "lr" / "coffee.png", (lr.permute(1, 2, 0) * 255).round().byte().numpy())
    cfg = tiny(tmp_path / "run", photo_data, f"data.train=['{tmp_path / 'hr'}']", f"data.train_lr='{tmp_path / 'lr'}'")
    sources, frames = collect_sources(cfg.data, 4)
    ds = TrainSet(sources, frames, scale=4, patch_size=32, seed=3)
    for i in range(6):
        lr_patch, hr_patch = ds[i]
        assert lr_patch.shape == (3, 8, 8) and hr_patch.shape == (3, 32, 32)
        # The LR crop is the bicubic image of the HR crop (same place, same flips/rotation).
        assert psnr_y(bicubic_downsample(hr_patch, 4)[:, 2:-2, 2:-2], lr_patch[:, 2:-2, 2:-2]) > 35


def test_video_frames_as_training_source(tmp_path, photo_data):
    import media

    clip = media.make_clip(tmp_path / "clip.mp4", size=(96, 64), frames=8, photo="chelsea", options={"crf": "12"})
    frames = sample_video_frames(clip, 3)
    assert len(frames) == 3 and all(f.shape == (64, 96, 3) and f.dtype == np.uint8 for f in frames)
    decoded = [f.to_ndarray(format="rgb24") for f in media.decode_frames(clip)]
    for frame, index in zip(frames, (1, 4, 6)):  # the middles of three equal spans of 8 frames
        assert psnr_y(frame, decoded[index]) > 35
    assert psnr_y(frames[0], frames[2]) < 30  # really different moments of the pan
    cfg = tiny(tmp_path / "run", photo_data, f"data.train=['{photo_data / 'hr'}', '{clip}']", "data.frames_per_video=3")
    sources, frames = collect_sources(cfg.data, 4)
    assert len(sources) == 6 and len(frames) == 3
    ds = TrainSet(sources, frames, scale=4, patch_size=32, seed=0)
    index = next(i for i in range(len(ds)) if ds.source_for(i).frame is not None)  # a sample cut from a frame
    lr_patch, hr_patch = ds[index]
    assert lr_patch.shape == (3, 8, 8) and hr_patch.shape == (3, 32, 32)

    # A folder of footage: its videos (and images) are used, other files skipped with a warning.
    footage = tmp_path / "footage"
    footage.mkdir()
    (footage / "notes.txt").write_text("shot list: chelsea, slow pan\n")
    with pytest.raises(InputError) as exc:
        collect_sources(tiny(tmp_path / "run", photo_data, f"data.train=['{footage}']").data, 4)
    assert "no images" in str(exc.value) and "no videos" in str(exc.value)
    (footage / "clip.mp4").write_bytes(clip.read_bytes())
    cfg = tiny(tmp_path / "run", photo_data, f"data.train=['{footage}']", "data.frames_per_video=3")
    sources, from_folder = collect_sources(cfg.data, 4)
    assert [s.name for s in sources] == [f"{(footage / 'clip.mp4').as_posix()}#{k}" for k in range(3)]
    assert all(np.array_equal(a, b) for a, b in zip(from_folder, frames, strict=True))

    # A video as data.val: validation on frames spread across it (all 8 of this short clip).
    summary = train(tiny(tmp_path / "run", photo_data, "train.steps=1", "checkpoint.every=1", f"data.val='{clip}'"), progress="none")
    assert summary.val["images"] == 8 and summary.val["bicubic_psnr"] > 20


def test_batches_depend_on_seed_and_step_not_on_workers(tmp_path, photo_data):
    cfg = tiny(tmp_path, photo_data, "data.degradation=realesrgan")
    sources, frames = collect_sources(cfg.data, 4)

    def batches(workers: int, start: int, seed: int = 5) -> list[tuple[torch.Tensor, torch.Tensor]]:
        ds = TrainSet(sources, frames, scale=4, patch_size=32, seed=seed, degradation="realesrgan")
        return list(make_loader(ds, batch_size=2, workers=workers, start_step=start, steps=6))

    two = batches(2, 0)
    assert len(two) == 6 and two[0][0].shape == (2, 3, 8, 8)
    again = batches(2, 0)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(two, again))
    inline = batches(0, 0)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(two, inline))  # HR crops exactly
    assert all(torch.allclose(a[0], b[0], atol=1.5 / 255) for a, b in zip(two, inline))  # LR up to float rounding
    resumed = batches(2, 4)  # a loader started at step 4 gives steps 4 and 5
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(two[4:], resumed))
    other = batches(0, 0, seed=6)
    assert not torch.equal(other[0][1], inline[0][1])


# --------------------------------------------------------------------------- losses and discriminators


def test_vgg19_extractor_uses_torchvision_names(vgg_file, tmp_path):
    with torch.device("meta"):
        full = vgg_features("vgg19", layers=["conv5_4"])
    conv = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]  # torchvision vgg19 "features" convs
    chans = [64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512]
    expected = {}
    cin = 3
    for i, c in zip(conv, chans):
        expected[f"features.{i}.weight"] = (c, cin, 3, 3)
        expected[f"features.{i}.bias"] = (c,)
        cin = c
    assert {k: tuple(v.shape) for k, v in full.state_dict().items()} == expected
    assert vgg_layer_names("vgg19")["conv5_4"] == 34 and vgg_layer_names("vgg19")["conv1_2"] == 2

    # The file may also hold the classifier and deeper layers (torchvision's full file): ignored.
    sd = torch.load(vgg_file, weights_only=True)
    extra = dict(sd, **{"classifier.0.weight": torch.zeros(4, 4), "features.19.weight": torch.zeros(512, 256, 3, 3)})
    torch.save(extra, tmp_path / "with_classifier.pth")
    vgg = perceptual_features("vgg19", str(tmp_path / "with_classifier.pth"), ["conv2_2", "conv3_4"])
    assert all(torch.equal(vgg.state_dict()[k], sd[k]) for k in vgg.state_dict())
    feats = vgg(torch.rand(1, 3, 32, 32))
    assert feats["conv3_4"].shape == (1, 256, 8, 8)
    assert feats["conv3_4"].min() < 0  # taken before the ReLU

    with pytest.raises(InputError) as exc:  # the truncated file cannot serve conv5_4
        vgg_from_file(vgg_file, "vgg19", layers=["conv5_4"])
    assert "features.19.weight" in str(exc.value)
    for bad in ("", str(tmp_path / "missing.pth")):
        with pytest.raises(ConfigError) as exc:
            check_perceptual_source("vgg19", bad)
        assert "vgg19" in str(exc.value) and "download" in str(exc.value) or "does not exist" in str(exc.value)


def test_ragan_losses():
    real, fake = torch.tensor([[2.0], [1.0]]), torch.tensor([[-1.0], [0.0]])
    def sp(x):  # BCE with logits: -log(sigmoid(z)) = softplus(-z)
        return float(torch.nn.functional.softplus(torch.tensor(x)))

    # D: real - mean(fake) = [2.5, 1.5] -> target 1; fake - mean(real) = [-2.5, -1.5] -> target 0
    d = 0.5 * ((sp(-2.5) + sp(-1.5)) / 2 + (sp(-2.5) + sp(-1.5)) / 2)
    assert float(ragan_d_loss(real, fake)) == pytest.approx(d)
    g = 0.5 * ((sp(2.5) + sp(1.5)) / 2 + (sp(2.5) + sp(1.5)) / 2)
    assert float(ragan_g_loss(real, fake)) == pytest.approx(g)
    fake.requires_grad_(True)
    ragan_g_loss(real, fake).backward()
    assert fake.grad is not None and (fake.grad < 0).all()  # the generator pushes its logits up


def test_discriminators():
    d = VGGStyleDiscriminator(input_size=128)
    names = [k for k in d.state_dict() if k.endswith("weight")]
    assert names[:4] == ["conv0_0.weight", "conv0_1.weight", "bn0_1.weight", "conv1_0.weight"]
    assert "conv4_1.weight" in names and "conv5_0.weight" not in names  # ESRGAN: five stages at 128
    assert d.linear1.in_features == 512 * 4 * 4 and d.linear2.out_features == 1
    assert VGGStyleDiscriminator(num_feat=8, input_size=32)(torch.rand(2, 3, 32, 32)).shape == (2, 1)
    with pytest.raises(ValueError):
        VGGStyleDiscriminator(input_size=96)
    assert PatchDiscriminator(num_feat=8)(torch.rand(2, 3, 40, 56)).shape == (2, 5 * 7)


# --------------------------------------------------------------------------- training


def test_psnr_stage_lowers_heldout_l1(psnr_run, photo_data):
    torch.manual_seed(0)  # train() builds its starting model after seeding with train.seed = 0
    before = heldout_l1(build_generator(tiny(psnr_run, photo_data)))
    after = heldout_l1(models.load(str(psnr_run / "step_000030.pt")))  # EMA weights, as exported
    assert after < 0.6 * before, (before, after)
    train_recs, val = records(psnr_run, "train"), records(psnr_run, "val")
    assert [r["step"] for r in train_recs] == list(range(5, 31, 5))
    assert train_recs[-1]["l_pix"] < train_recs[0]["l_pix"]
    assert [r["step"] for r in val] == [0, 15, 30] and val[-1]["psnr"] > val[0]["psnr"]  # step 0: the random start
    assert {"psnr", "ssim", "bicubic_psnr", "bicubic_ssim", "images", "psnr_raw", "ssim_raw"} <= set(val[0])
    assert val[-1]["psnr_raw"] != val[-1]["psnr"]  # the EMA (what export writes) and the raw generator, both measured
    saved = json.loads((psnr_run / "config.json").read_text())
    assert saved["model"]["num_feat"] == 8 and saved["train"]["steps"] == 30
    assert sorted(p.name for p in psnr_run.glob("step_*.pt")) == ["step_000015.pt", "step_000030.pt"]


def test_ema_is_one_fused_update_with_warmup(monkeypatch):
    torch.manual_seed(0)
    model = build_generator(load_config(None, SEED_ARGS))
    ema = EMA(model, 0.999, warmup=True)
    assert ema.decay_at(1) == pytest.approx(2 / 11) and ema.decay_at(100) == pytest.approx(101 / 110)
    assert ema.decay_at(20_000) == 0.999 and EMA(model, 0.999).decay_at(1) == 0.999
    before = [p.detach().clone() for p in ema.module.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    calls = []
    real_lerp = torch._foreach_lerp_
    monkeypatch.setattr(torch, "_foreach_lerp_", lambda *a: calls.append(len(a[0])) or real_lerp(*a))
    ema.update(model, 100)
    assert calls == [len(before)]  # every parameter in one fused call
    d = 101 / 110
    for old, new, avg in zip(before, model.parameters(), ema.module.parameters(), strict=True):
        assert torch.allclose(avg, d * old + (1 - d) * new.detach(), atol=1e-6)
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_plot_or_log_line(tmp_path, photo_data, caplog):
    caplog.set_level(logging.INFO, logger="vsr.train.loop")
    train(tiny(tmp_path, photo_data, "train.steps=2", "checkpoint.every=2"), progress="none")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in caplog.text and not (tmp_path / "metrics.png").exists()
    else:
        assert (tmp_path / "metrics.png").stat().st_size > 1000


def gan_cfg(run_dir: Path, photo_data: Path, pretrained: Path, vgg: Path, *extra: str):
    return tiny(run_dir, photo_data, "train.stage=gan", f"model.pretrained='{pretrained}'", "loss.vgg='vgg19'", f"loss.vgg_weights='{vgg}'",
                "loss.vgg_layers=['conv2_2', 'conv3_4']", "discriminator.num_feat=8", "train.steps=6",
                "checkpoint.every=3", "checkpoint.keep=0", "train.ema=0.9", "train.lr_milestones=[4]", *extra)


def test_gan_stage_resumes_bit_identically(tmp_path, photo_data, psnr_run, vgg_file):
    ref = train(gan_cfg(tmp_path / "ref", photo_data, psnr_run, vgg_file), progress="none")
    recs = records(tmp_path / "ref", "train")
    for key in ("l_pix", "l_percep", "l_gan", "l_d_real", "l_d_fake"):
        assert all(np.isfinite(r[key]) and r[key] > 0 for r in recs), key
    assert recs[0]["lr"] == 1e-4 and recs[-1]["lr"] == 5e-5  # halved after step 4

    def stop_at_4(rec):
        if rec["kind"] == "train" and rec["step"] == 4:
            raise KeyboardInterrupt  # as Ctrl-C would, after the step-3 checkpoint

    cfg = gan_cfg(tmp_path / "cut", photo_data, psnr_run, vgg_file)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=stop_at_4)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "cut")] == [3]
    resumed = train(cfg, resume=True, progress="none")
    assert resumed.start_step == 3 and resumed.step == 6 and resumed.resumed_from.name == "step_000003.pt"

    a, b = ckpt.load_checkpoint(ref.checkpoint), ckpt.load_checkpoint(resumed.checkpoint)
    for part in ("params", "params_ema", "net_d"):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    for opt in ("optim_g", "optim_d"):
        sa, sb = a[opt]["state"], b[opt]["state"]
        assert all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i]), opt
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    # metrics.jsonl holds each step once: the records after the checkpoint were dropped and redone
    assert [r["step"] for r in records(tmp_path / "cut", "train")] == [1, 2, 3, 4, 5, 6]
    assert [r["l_pix"] for r in records(tmp_path / "cut", "train")] == [r["l_pix"] for r in recs]


def test_psnr_stage_resume_with_workers_and_cosine(tmp_path, photo_data):
    extra = ("data.workers=2", "train.steps=5", "checkpoint.every=2", "checkpoint.keep=1", "train.schedule=cosine",
             "data.degradation=realesrgan")
    ref = train(tiny(tmp_path / "ref", photo_data, *extra), progress="none")
    assert [p.name for p in (tmp_path / "ref").glob("step_*.pt")] == ["step_000005.pt"]  # keep = 1

    def stop_at_3(rec):
        if rec["kind"] == "train" and rec["step"] == 3:
            raise RuntimeError("node lost")

    cfg = tiny(tmp_path / "cut", photo_data, *extra)
    with pytest.raises(RuntimeError, match="node lost"):
        train(cfg, progress=stop_at_3)
    resumed = train(cfg, resume=True, progress="none")
    assert resumed.start_step == 2
    a, b = ckpt.load_checkpoint(ref.checkpoint), ckpt.load_checkpoint(resumed.checkpoint)
    for part in ("params", "params_ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part


def test_training_is_deterministic_with_workers(tmp_path, photo_data):
    finals = []
    for name in ("a", "b"):
        cfg = tiny(tmp_path / name, photo_data, "data.workers=2", "train.steps=3", "checkpoint.every=3")
        finals.append(ckpt.load_checkpoint(train(cfg, progress="none").checkpoint)["params"])
    assert all(torch.equal(finals[0][k], finals[1][k]) for k in finals[0])


def test_run_folder_and_input_errors(tmp_path, photo_data, psnr_run, vgg_file):
    with pytest.raises(OutputError) as exc:  # checkpoints there, no --resume
        train(tiny(psnr_run, photo_data, "train.steps=31"), progress="none")
    assert exc.value.exit_code == 73 and "--resume" in str(exc.value)
    with pytest.raises(InputMissing) as exc:
        train(tiny(tmp_path / "r1", photo_data, f"data.train=['{tmp_path / 'nowhere'}']"), progress="none")
    assert exc.value.exit_code == 66 and "nowhere" in str(exc.value)
    with pytest.raises(InputMissing):
        train(tiny(tmp_path / "r2", photo_data, f"data.val='{tmp_path / 'noval'}'"), progress="none")
    with pytest.raises(ConfigError) as exc:
        train(tiny(tmp_path / "r3", photo_data, "data.train=[]"), progress="none")
    assert exc.value.exit_code == 78
    with pytest.raises(ConfigError) as exc:  # no download, ever: a clear message instead
        train(gan_cfg(tmp_path / "r4", photo_data, psnr_run, tmp_path / "vgg19-dcbb9e9d.pth"), progress="none")
    assert exc.value.exit_code == 78 and "vgg19-dcbb9e9d.pth" in str(exc.value) and "loss.vgg_weights" in str(exc.value)
    with pytest.raises(ConfigError) as exc:  # the pretrained model does not match [model]
        train(gan_cfg(tmp_path / "r5", photo_data, psnr_run, vgg_file, "model.num_feat=16"), progress="none")
    assert "num_feat = 8" in str(exc.value)
    assert [n for n in ("r1", "r2", "r3", "r4", "r5") if (tmp_path / n).exists()] == []  # nothing created


def test_examples_run_as_is(tmp_path, photo_data, perceptual_home, monkeypatch):
    """examples/train_psnr.toml then train_gan.toml, from a folder laid out as examples/README.md says
    (data/hr, data/val; the offline VGG16 fetched), shortened with --set overrides."""
    examples = Path(__file__).resolve().parent.parent / "examples"
    import shutil

    shutil.copytree(photo_data / "hr", tmp_path / "data" / "hr")
    shutil.copytree(photo_data / "val", tmp_path / "data" / "val")
    monkeypatch.chdir(tmp_path)
    short = ["train.steps=2", "checkpoint.every=2", "val.every=2", "data.workers=0"]
    psnr = train(load_config(examples / "train_psnr.toml", short), progress="none")
    assert psnr.run_dir == Path("runs/psnr") and psnr.val is not None
    # With the perceptual files there, validation logs LPIPS and NIQE too (NIQE: n/a on a 96 px picture).
    assert psnr.val["lpips"] > 0 and psnr.val["bicubic_lpips"] > 0 and "niqe" in psnr.val and "dists" not in psnr.val
    gan = train(load_config(examples / "train_gan.toml", [*short, "loss.vgg_layers=['conv3_3']"]), progress="none")
    assert gan.checkpoint == Path("runs/gan/step_000002.pt") and gan.losses["l_gan"] > 0


def test_finetune_example_runs_on_a_footage_folder(tmp_path, perceptual_home, monkeypatch):
    """examples/finetune_x4plus.toml as its comments say: a data/footage folder holding a video,
    the demo's held-out photos in data/demo/val, Real-ESRGAN x4plus to start from; cut to one step."""
    import media

    examples = Path(__file__).resolve().parent.parent / "examples"
    (tmp_path / "data" / "footage").mkdir(parents=True)
    media.make_clip(tmp_path / "data" / "footage" / "episode1.mp4", size=(96, 64), frames=6, photo="chelsea")
    write_image(tmp_path / "data" / "demo" / "val" / "rocket.png", photo("rocket")[192:256, 256:320])
    monkeypatch.chdir(tmp_path)
    short = ["train.steps=1", "checkpoint.every=1", "data.patch_size=32", "data.batch_size=1", "data.workers=0",
             "data.frames_per_video=2", "loss.vgg_layers=['conv2_2', 'conv3_3']", "loss.vgg_layer_weights=[0.1, 1.0]"]
    summary = train(load_config(examples / "finetune_x4plus.toml", short), progress="none")
    assert summary.step == 1 and summary.losses["l_gan"] > 0 and summary.losses["l_percep"] > 0
    assert summary.val["images"] == 1 and {"psnr", "psnr_raw"} <= summary.val.keys()
    out = export_run("runs/finetune", tmp_path / "x4plus_finetuned.pth")
    assert list(torch.load(out, weights_only=True)) == ["params_ema"]
    assert models.load(str(out)).spec == models.load("realesrgan-x4plus").spec


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch, caplog):
    state = {"params": {"w": torch.arange(4.0)}}
    ckpt.save_checkpoint(tmp_path, 1, state)
    good = (tmp_path / "step_000001.pt").read_bytes()
    real_save = torch.save

    def dying_save(obj, fh, *a, **k):
        real_save(obj, fh)
        fh.truncate(20)  # half a file on disk ...
        raise OSError(28, "No space left on device")  # ... and the disk is full

    monkeypatch.setattr(ckpt.torch, "save", dying_save)
    with pytest.raises(OutputError):
        ckpt.save_checkpoint(tmp_path, 2, state)
    monkeypatch.setattr(ckpt.torch, "save", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 3, state)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000001.pt", "step_000001.pt.json"]  # no partial, no damaged file
    assert (tmp_path / "step_000001.pt").read_bytes() == good

    for step in (2, 3, 4):
        ckpt.save_checkpoint(tmp_path, step, state, keep=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [3, 4]
    (tmp_path / "step_000004.pt").write_bytes((tmp_path / "step_000004.pt").read_bytes()[:100])  # damaged by hand
    path, loaded = ckpt.latest_checkpoint(tmp_path)
    assert path.name == "step_000003.pt" and loaded["step"] == 3 and "skipping checkpoint" in caplog.text
    # Damaged in place (same size, bytes flipped inside a tensor): torch would load it; its digest does not match.
    ckpt.save_checkpoint(tmp_path, 5, state)
    data = bytearray((tmp_path / "step_000005.pt").read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(255 - b for b in data[len(data) // 2 : len(data) // 2 + 64])
    (tmp_path / "step_000005.pt").write_bytes(bytes(data))
    path, loaded = ckpt.latest_checkpoint(tmp_path)
    assert path.name == "step_000003.pt" and "sha256 differs" in caplog.text


# --------------------------------------------------------------------------- export and evaluation


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_export_round_trip(tmp_path, psnr_run, suffix):
    state = ckpt.load_checkpoint(psnr_run / "step_000030.pt")
    x = torch.from_numpy(photo("rocket")[200:240, 300:348]).permute(2, 0, 1)[None].float() / 255
    for use_ema, key in ((True, "params_ema"), (False, "params")):
        out = export_run(psnr_run, tmp_path / f"m_{key}{suffix}", use_ema=use_ema)
        trained = models.build(state["spec"]["arch"], **state["spec"]["params"])
        trained.load_state_dict(state[key])
        loaded = models.load(str(out))  # the ordinary loader, unchanged
        assert loaded.spec == trained.spec
        with torch.no_grad():
            assert torch.equal(loaded(x), trained.eval()(x))
        if suffix == ".pth":
            assert list(torch.load(out, weights_only=True)) == [key]  # Real-ESRGAN layout
    with pytest.raises(OutputError):
        export_run(psnr_run, out)  # exists, no overwrite
    assert not list(tmp_path.glob("*.partial"))


def test_evaluate_reports_model_and_bicubic(tmp_path, psnr_run, photo_data):
    model = models.load(str(psnr_run / "step_000030.pt"))
    result = evaluate(model, photo_data / "val", device="cpu")
    (row,) = result.rows
    assert row["name"] == "rocket.png" and (row["width"], row["height"]) == (96, 96)
    assert 15 < row["bicubic_psnr"] < 40 and 0 < row["bicubic_ssim"] < 1
    assert result.mean["psnr"] == row["psnr"] and result.scale == 4 and result.crop == 4
    assert json.loads(result.to_json())["mean"]["bicubic_psnr"] == pytest.approx(row["bicubic_psnr"])
    assert "mean" in result.format_table() and "rocket.png" in result.format_table()
    # The same LR given as a paired folder gives the same numbers.
    hr = torch.from_numpy(photo("rocket")[192:288, 256:352]).permute(2, 0, 1).float() / 255
    write_image(tmp_path / "lr" / "rocket.png", (bicubic_downsample(hr, 4).permute(1, 2, 0) * 255).round().byte().numpy())
    paired = evaluate(model, photo_data / "val", tmp_path / "lr", device="cpu")
    assert paired.rows[0]["psnr"] == pytest.approx(row["psnr"]) and paired.rows[0]["bicubic_ssim"] == pytest.approx(row["bicubic_ssim"])
    # One image file gives its row; a video gives rows for frames spread across it, as decoded.
    assert evaluate(model, photo_data / "val" / "rocket.png", device="cpu").rows == result.rows
    import media

    clip = media.make_clip(tmp_path / "clip.mp4", size=(96, 64), frames=6, photo="rocket", options={"crf": "12"})
    video = evaluate(model, clip, device="cpu", frames=3)
    assert [r["name"] for r in video.rows] == ["clip.mp4#1", "clip.mp4#3", "clip.mp4#5"]  # named by frame index
    frames = sample_video_frames(clip, 3)  # frames 1, 3, 5, decoded as vsr run decodes them
    decoded = [f.to_ndarray(format="rgb24") for f in media.decode_frames(clip)]  # PyAV's own conversion
    assert psnr_y(frames[0], decoded[1]) > 35 and psnr_y(frames[0], decoded[3]) < psnr_y(frames[0], decoded[1]) - 3
    for k, frame in zip((1, 3, 5), frames, strict=True):
        write_image(tmp_path / "frames" / f"clip.mp4#{k}.png", frame)
    as_images = evaluate(model, tmp_path / "frames", device="cpu").rows
    assert [{**r, "name": r["name"][:-4]} for r in as_images] == video.rows
    with pytest.raises(InputMissing):
        evaluate(model, tmp_path / "nothing.mp4", device="cpu")
