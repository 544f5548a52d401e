"""The training loop: ESRGAN's PSNR stage and GAN stage, with EMA, validation, metrics and checkpoints.

``train(cfg)`` runs ``cfg.train.steps`` optimiser steps in ``cfg.checkpoint.dir`` (the run folder):

* psnr stage: L1 (plus a VGG perceptual term if ``loss.perceptual`` > 0), Adam, a multi-step or
  cosine-with-restarts schedule, an exponential moving average (EMA) of the generator.
* gan stage: the generator starts from ``model.pretrained`` (a PSNR run, a checkpoint or a named
  model); each step updates the generator with pixel L1 + VGG perceptual + relativistic average
  GAN losses, then the discriminator with the RaGAN loss (ESRGAN, Wang et al. 2018).

The run folder holds ``config.json`` (the resolved config), ``metrics.jsonl`` (one JSON object per
log line and per validation), ``step_NNNNNN.pt`` checkpoints, and ``metrics.png`` when matplotlib is
installed. ``resume=True`` continues from the newest complete checkpoint; on the CPU the result is
bit-identical to a run that was never interrupted (the data order and augmentations are a function
of (seed, step), see :mod:`vsr.train.data`, and every other piece of state is in the checkpoint).

On CUDA: bf16/fp16 autocast (a GradScaler for fp16), channels_last, cudnn autotuning. Launched with
``torchrun`` (``WORLD_SIZE`` > 1) it trains with DistributedDataParallel, one process per GPU, each
drawing its own samples; rank 0 validates, logs and writes checkpoints.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import files
from ..device import PRECISIONS
from .config import Config, config_to_dict, config_to_json
from ..errors import ConfigError, InputMissing, OutputError
from . import checkpoint as ckpt
from .data import build_dataset, make_loader
from .losses import PerceptualLoss, check_perceptual_source, l1, perceptual_features, ragan_d_fake, ragan_d_real, ragan_g_loss

log = logging.getLogger(__name__)

ARCH_NAMES = {"rrdbnet": "RRDBNet", "srvgg": "SRVGGNetCompact"}
# Perceptual metrics validation takes when their files are there: LPIPS (what a GAN stage should
# lower) and NIQE (no reference); DISTS runs VGG16 at full size, too slow to repeat during training.
VALIDATION_METRICS = ("lpips", "niqe")
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
PLOT_FILE = "metrics.png"
Record = dict[str, Any]


@dataclass
class RunSummary:
    """What a training run did."""

    run_dir: Path
    start_step: int  # 0, or the step resumed from
    step: int  # the last completed step
    checkpoint: Path | None  # the newest checkpoint written
    losses: dict[str, float]  # last logged training losses
    val: dict[str, float] | None  # last validation (psnr, ssim, bicubic_psnr, bicubic_ssim; psnr_raw, ssim_raw with an EMA)
    seconds: float
    plot: Path | None
    resumed_from: Path | None = None


# --------------------------------------------------------------------------- models


def build_generator(cfg: Config) -> nn.Module:
    """A fresh generator for ``[model]``: random weights, ESRGAN's 0.1-scaled init in RRDB dense blocks,
    He init for SRVGGNetCompact's PReLU body."""
    from ..models import registry

    m = cfg.model
    if m.arch == "rrdbnet":
        model = registry.build("RRDBNet", scale=m.scale, num_feat=m.num_feat, num_block=m.num_block, num_grow_ch=m.num_grow_ch)
        # ESRGAN/BasicSR: Kaiming-normal init scaled by 0.1 inside the residual dense blocks keeps the
        # deep residual trunk close to identity at the start (stabilises training without BN).
        for name, module in model.named_modules():
            if ".rdb" in name and isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)
                module.weight.data.mul_(0.1)
                nn.init.zeros_(module.bias)
        return model
    model = registry.build("SRVGGNetCompact", upscale=m.scale, num_feat=m.num_feat, num_conv=m.num_conv, act_type="prelu")
    # He (MSRA) initialisation for the PReLU slope 0.25 it starts with: PyTorch's default conv init
    # shrinks the signal at every layer, and a 16-conv body trained from it stayed stuck at a zero
    # residual (nearest-neighbour output) for 1,800 steps. The last conv is scaled by 0.1 so the
    # network starts close to its nearest-neighbour skip, as ESRGAN's 0.1-scaled init does for RRDB.
    convs = [module for module in model.body if isinstance(module, nn.Conv2d)]
    for conv in convs:
        nn.init.kaiming_normal_(conv.weight, a=0.25, nonlinearity="leaky_relu")
        nn.init.zeros_(conv.bias)
    convs[-1].weight.data.mul_(0.1)
    return model


def load_pretrained(cfg: Config) -> nn.Module:
    """``model.pretrained`` (named model, checkpoint file, training step_*.pt or run folder), checked
    against ``[model]``."""
    from .. import models
    from ..models import zoo

    ref = cfg.model.pretrained
    if ref not in zoo.ZOO:
        path = Path(ref).expanduser()
        if not path.exists():
            raise InputMissing(f"model.pretrained {ref!r} is neither a named model ({', '.join(zoo.ZOO)}) nor an existing file or run folder")
        if path.is_dir():
            ref = str(ckpt.resolve_checkpoint(path))
    model = copy.deepcopy(models.load(str(ref)))
    want = build_generator(cfg).spec
    have = model.spec
    if (have.arch, have.params) != (want.arch, want.params):
        hint = _model_hint(have)
        raise ConfigError(
            f"model.pretrained {cfg.model.pretrained!r} is {have.describe()}, but [model] describes {want.describe()};"
            f" set {hint} in [model]"
        )
    for p in model.parameters():
        p.requires_grad_(True)
    return model.train()


def _model_hint(spec) -> str:
    k = spec.kwargs
    if spec.arch == "RRDBNet":
        return f"arch = \"rrdbnet\", scale = {k['scale']}, num_feat = {k['num_feat']}, num_block = {k['num_block']}, num_grow_ch = {k['num_grow_ch']}"
    return f"arch = \"srvgg\", scale = {k['upscale']}, num_feat = {k['num_feat']}, num_conv = {k['num_conv']}"


class EMA:
    """Exponential moving average of a model's weights: ``ema = d * ema + (1 - d) * w`` after every
    step, with ``d = decay`` or, with ``warmup``, ``d = min(decay, (1 + n) / (10 + n))`` after step
    ``n`` (the warm-up of TensorFlow's ExponentialMovingAverage with ``num_updates``). Without it, a
    0.999 average of a network trained from random weights is still mostly the random network after
    1,000 steps. Buffers are copied. The update is one fused ``torch._foreach_lerp_`` over all
    parameters, not a Python loop of two kernels per tensor."""

    def __init__(self, model: nn.Module, decay: float, *, warmup: bool = False):
        self.decay = decay
        self.warmup = warmup
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def decay_at(self, step: int) -> float:
        """The decay used by the update after ``step`` completed steps (1 for the first update)."""
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Average in ``model``'s weights after ``step`` completed steps."""
        ema_params = list(self.module.parameters())
        params = [p.detach() for p in model.parameters()]
        if len(ema_params) != len(params):
            raise ValueError(f"EMA holds {len(ema_params)} parameters, the model {len(params)}")
        torch._foreach_lerp_(ema_params, params, 1.0 - self.decay_at(step))
        ema_buffers, buffers = list(self.module.buffers()), list(model.buffers())
        if ema_buffers:
            torch._foreach_copy_(ema_buffers, buffers)


def lr_factor(cfg: Config, step: int) -> float:
    """Multiplier of the base learning rate for the update made after ``step`` completed steps."""
    t = cfg.train
    if t.schedule == "multistep":
        return t.lr_gamma ** sum(1 for m in t.lr_milestones if step >= m)
    if t.schedule == "cosine":
        # Cosine annealing with restarts every ``cosine_period`` steps (BasicSR CosineAnnealingRestartLR
        # with equal periods and restart weights 1), down to eta_min.
        period = t.cosine_period or t.steps
        phase = (step % period) / period
        floor = t.eta_min / t.lr if t.lr else 0.0
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * phase))
    return 1.0


# --------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class _Dist:
    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _dist_from_env() -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return _Dist()
    return _Dist(world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")))


def _device_for(cfg: Config, dist: _Dist) -> torch.device:
    from ..device import resolve_device

    if dist.world > 1 and cfg.train.device != "cpu" and torch.cuda.is_available():
        return torch.device("cuda", dist.local_rank)  # torchrun: one GPU per process
    try:
        return resolve_device(cfg.train.device)
    except Exception as err:
        if type(err).__name__ == "UsageError":
            raise ConfigError(f"train.device: {err}") from err
        raise


def _autocast_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    precision = cfg.train.precision
    if precision == "fp32":
        return None
    if precision == "fp16" and device.type != "cuda":
        log.warning("train.precision = fp16 needs CUDA; training in fp32 on %s", device)
        return None
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        log.warning("this GPU has no bf16; training in fp32 (try train.precision = fp16)")
        return None
    return PRECISIONS[precision]


# --------------------------------------------------------------------------- progress


class _Reporter:
    """Progress: tqdm bar with the latest losses, JSON lines, a callback, or nothing."""

    def __init__(self, kind: str | Callable[[Record], None] | None, total: int, initial: int, enabled: bool):
        self.kind = kind if enabled else None
        self.bar = None
        if self.kind == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", file=sys.stderr, dynamic_ncols=True, disable=None, smoothing=0.05)

    def step(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def record(self, rec: Record) -> None:
        if self.kind == "bar" and self.bar is not None and rec.get("kind") in ("train", "val"):
            shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in rec.items() if k.startswith(("l_", "psnr", "ssim", "lpips", "niqe"))}
            self.bar.set_postfix(shown, refresh=False)
        elif self.kind == "json":
            sys.stderr.write(json.dumps(rec) + "\n")
            sys.stderr.flush()
        elif callable(self.kind):
            self.kind(rec)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# --------------------------------------------------------------------------- run folder


def _prepare_run_dir(cfg: Config, run_dir: Path, resume: bool) -> tuple[Path, dict] | None:
    """Check the run folder against ``resume``; returns the checkpoint to resume from, if any."""
    existing = ckpt.list_checkpoints(run_dir)
    if not resume:
        if existing:
            raise OutputError(
                f"run folder {run_dir} already holds checkpoints (newest {existing[-1][1].name}); pass --resume to continue it,"
                " or set checkpoint.dir to a new folder"
            )
        return None
    found = ckpt.latest_checkpoint(run_dir)
    if found is None:
        log.warning("--resume: no checkpoint in %s yet; starting from step 0", run_dir)
        return None
    path, state = found
    saved = json.loads(state.get("config", "{}") or "{}")
    now = config_to_dict(cfg)
    # The weights come from the checkpoint, so only the network's shape must stay the same.
    def shape(model: dict | None) -> dict:
        return {k: v for k, v in (model or {}).items() if k != "pretrained"}

    if saved and shape(saved.get("model")) != shape(now["model"]):
        raise ConfigError(
            f"--resume: [model] differs from the run's ({path.name} was trained with {shape(saved.get('model'))});"
            " resume with the same [model]"
        )
    changed = [f"{s}.{k}" for s in now for k in now[s] if saved.get(s, {}).get(k, now[s][k]) != now[s][k]]
    if changed:
        log.warning("--resume with changed settings (%s): the continued run is not identical to an uninterrupted one", ", ".join(changed))
    return path, state


def _rewrite_metrics(path: Path, upto: int) -> None:
    """On resume, drop records of steps after the checkpoint (they will be produced again)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        if rec.get("step", 0) <= upto:
            kept.append(line)
    files.write_text(path, "".join(line + "\n" for line in kept))


def plot_metrics(run_dir: Path) -> Path | None:
    """``metrics.png``: training losses and validation PSNR against the step (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed, so no %s (pip install 'vsr[plot]')", PLOT_FILE)
        return None
    records = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines() if line.strip()]
    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    if not train and not val:
        return None
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    for key in sorted({k for r in train for k in r if k.startswith("l_")}):
        pts = [(r["step"], r[key]) for r in train if isinstance(r.get(key), (int, float)) and r[key] > 0]
        if pts:
            ax_loss.plot(*zip(*pts), label=key)
    ax_loss.set_xlabel("step")
    ax_loss.set_yscale("log")
    ax_loss.set_title("training losses")
    ax_loss.legend(fontsize="small")
    if val:
        steps = [r["step"] for r in val]
        has_raw = any("psnr_raw" in r for r in val)
        ax_val.plot(steps, [r["psnr"] for r in val], marker="o", label="EMA (exported)" if has_raw else "model")
        if has_raw:
            ax_val.plot(steps, [r.get("psnr_raw", math.nan) for r in val], marker=".", linestyle=":", label="raw generator")
        ax_val.plot(steps, [r["bicubic_psnr"] for r in val], linestyle="--", label="bicubic")
        ax_val.legend(fontsize="small")
    ax_val.set_xlabel("step")
    ax_val.set_ylabel("PSNR (Y) dB")
    ax_val.set_title("validation")
    fig.tight_layout()
    out = run_dir / PLOT_FILE
    with files.publish(out, overwrite=True, claim_output=False) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return out


# --------------------------------------------------------------------------- the loop


def _check_inputs(cfg: Config) -> None:
    """Fail before any work on what can be checked up front."""
    d = cfg.data
    if not d.train:
        raise ConfigError('data.train is empty; list HR image folders and/or video files, e.g. train = ["data/hr"]')
    for entry in d.train:
        if not Path(entry).expanduser().exists():
            raise InputMissing(f"data.train entry {entry} does not exist; check the path (relative paths start from the current directory)")
    for key in ("train_lr", "val_lr"):
        value = getattr(d, key)
        if value and not Path(value).expanduser().is_dir():
            raise InputMissing(f"data.{key} folder {value} does not exist; check the path (relative paths start from the current directory)")
    if d.val and not Path(d.val).expanduser().exists():
        raise InputMissing(f"data.val {d.val} does not exist; give a folder of HR pictures, an image or a video (relative paths start from the current directory)")
    if d.val_lr and not d.val:
        raise ConfigError("data.val_lr is set without data.val; give the HR validation folder too")
    if d.val_lr and not Path(d.val).expanduser().is_dir():
        raise ConfigError(f"data.val_lr pairs folders, but data.val {d.val} is a file; make data.val a folder or leave data.val_lr empty")
    if cfg.loss.perceptual > 0:
        check_perceptual_source(cfg.loss.vgg, cfg.loss.vgg_weights)


def train(
    cfg: Config,
    *,
    resume: bool = False,
    progress: str | Callable[[Record], None] | None = "bar",
) -> RunSummary:
    """Train as ``cfg`` says; returns a :class:`RunSummary`.

    ``progress``: ``"bar"`` (tqdm on stderr with the latest losses; off without a terminal),
    ``"json"`` (one JSON object per log line on stderr), ``"none"``/None, or a callable that gets
    every metrics record (the same dicts written to ``metrics.jsonl``).
    """
    t0 = time.monotonic()
    _check_inputs(cfg)
    dist = _dist_from_env()
    device = _device_for(cfg, dist)
    if dist.world > 1:
        import torch.distributed as tdist

        if not tdist.is_initialized():
            tdist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    try:
        return _train(cfg, resume=resume, progress=progress, dist=dist, device=device, t0=t0)
    finally:
        if dist.world > 1:
            import torch.distributed as tdist

            if tdist.is_initialized():
                tdist.destroy_process_group()


def _train(cfg: Config, *, resume: bool, progress, dist: _Dist, device: torch.device, t0: float) -> RunSummary:
    t, data = cfg.train, cfg.data
    run_dir = Path(cfg.checkpoint.dir).expanduser()
    found = _prepare_run_dir(cfg, run_dir, resume)
    resumed_from = found[0] if found else None
    state = found[1] if found else None
    start_step = int(state["step"]) if state else 0
    if start_step >= t.steps:
        log.warning("run %s is already at step %d of %d; nothing to do (raise train.steps to continue)", run_dir, start_step, t.steps)

    # The data first: unreadable or mismatched pictures fail before anything is written.
    dataset = build_dataset(data, scale=cfg.model.scale, seed=t.seed, degradation=cfg.degradation)

    gan = t.stage == "gan"
    amp_dtype = _autocast_dtype(cfg, device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True

    # Models: seeded so a fresh run starts from the same weights on every process.
    _seed_everything(t.seed)
    if cfg.model.pretrained and state is None:
        generator = load_pretrained(cfg)
        log.info("generator initialised from %s", cfg.model.pretrained)
    else:
        if gan and state is None:
            log.warning("train.stage = gan without model.pretrained: ESRGAN starts the GAN stage from a PSNR-stage model")
        generator = build_generator(cfg)
    generator.train()
    ema = EMA(generator, t.ema, warmup=t.ema_warmup) if t.ema > 0 else None
    disc = None
    if gan:
        from .discriminator import build_discriminator

        disc = build_discriminator(cfg.discriminator.arch, num_feat=cfg.discriminator.num_feat, patch_size=data.patch_size).train()
    perceptual = None
    if cfg.loss.perceptual > 0:
        perceptual = PerceptualLoss(perceptual_features(cfg.loss.vgg, cfg.loss.vgg_weights, cfg.loss.vgg_layers), cfg.loss.vgg_layer_weights or None)

    opt_g = torch.optim.Adam(generator.parameters(), lr=t.lr, betas=tuple(t.betas))
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.discriminator.lr or t.lr, betas=tuple(t.betas)) if disc is not None else None
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and amp_dtype == torch.float16)

    if state is not None:
        _restore(state, generator=generator, ema=ema, disc=disc, opt_g=opt_g, opt_d=opt_d, scaler=scaler)
        log.info("resuming %s from step %d (%s)", run_dir, start_step, resumed_from.name)

    memory_format = torch.channels_last if cuda else torch.contiguous_format
    for module in (generator, ema.module if ema else None, disc, perceptual):
        if module is not None:
            module.to(device=device, memory_format=memory_format)
    _move_optimizer(opt_g, device)
    if opt_d is not None:
        _move_optimizer(opt_d, device)

    g_train, d_train = generator, disc
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if cuda else None
        g_train = DDP(generator, device_ids=ids)
        if disc is not None:
            d_train = DDP(disc, device_ids=ids)

    # Run folder bookkeeping (rank 0 only).
    metrics_path = run_dir / METRICS_FILE
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        files.write_text(run_dir / CONFIG_FILE, config_to_json(cfg) + "\n")
        _rewrite_metrics(metrics_path, start_step)
    loader = make_loader(dataset, batch_size=data.batch_size, workers=data.workers, start_step=start_step, steps=t.steps,
                         rank=dist.rank, world=dist.world, pin_memory=cuda)

    reporter = _Reporter(progress, t.steps, start_step, dist.main)
    last_losses: dict[str, float] = {}
    last_val: dict[str, float] | None = None
    last_ckpt: Path | None = resumed_from
    step = start_step
    w = cfg.loss
    sums: dict[str, torch.Tensor] = {}
    count = 0
    tick = time.monotonic()

    def emit(rec: Record) -> None:
        if dist.main:
            with open(metrics_path, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
            reporter.record(rec)

    if dist.main:
        emit({"kind": "start", "step": start_step, "steps": t.steps, "stage": t.stage, "device": str(device),
              "world_size": dist.world, "samples": len(dataset), "resumed_from": resumed_from.name if resumed_from else None,
              "cwd": os.getcwd(), "torch": torch.__version__})
    if data.val and cfg.val.every and start_step == 0 and t.steps > 0 and dist.main:
        # Where the curve starts: the network before any step (random, or model.pretrained).
        emit({"kind": "val", "step": 0, **_validate(cfg, generator, ema.module if ema else None, device)})
    batches = iter(loader)
    try:
        for lr_batch, hr_batch in batches:
            lr_img = lr_batch.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            hr_img = hr_batch.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            factor = lr_factor(cfg, step)
            for group in opt_g.param_groups:
                group["lr"] = t.lr * factor
            if opt_d is not None:
                for group in opt_d.param_groups:
                    group["lr"] = (cfg.discriminator.lr or t.lr) * factor

            losses = _step(
                g_train, generator, d_train, disc, perceptual, opt_g, opt_d, scaler,
                lr_img, hr_img, w, device, amp_dtype,
            )
            step += 1
            if ema is not None:
                ema.update(generator, step)
            reporter.step()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0) + v
            count += 1

            if step % t.log_every == 0 or step == t.steps:
                now = time.monotonic()
                last_losses = {k: float(v) / count for k, v in sums.items()}
                emit({"kind": "train", "step": step, "lr": t.lr * factor, **last_losses,
                      "sec_per_step": (now - tick) / count, "elapsed": now - t0})
                sums, count, tick = {}, 0, now
            val_due = data.val and (step == t.steps or (cfg.val.every and step % cfg.val.every == 0))
            if val_due and dist.main:
                last_val = _validate(cfg, generator, ema.module if ema else None, device)
                emit({"kind": "val", "step": step, **last_val})
            if (step % cfg.checkpoint.every == 0 or step == t.steps) and dist.main:
                last_ckpt = ckpt.save_checkpoint(
                    run_dir, step,
                    _state(cfg, step, generator=generator, ema=ema, disc=disc, opt_g=opt_g, opt_d=opt_d, scaler=scaler, dist=dist),
                    keep=cfg.checkpoint.keep,
                )
    finally:
        reporter.close()
        # Stop the worker processes now, also when an exception is on its way out (its traceback
        # would otherwise keep the iterator, and the workers, alive).
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        del batches, loader

    plot = plot_metrics(run_dir) if dist.main and metrics_path.exists() else None
    return RunSummary(run_dir=run_dir, start_step=start_step, step=step, checkpoint=last_ckpt, losses=last_losses,
                      val=last_val, seconds=time.monotonic() - t0, plot=plot, resumed_from=resumed_from)


def _seed_everything(seed: int) -> None:
    """Seed the global generators (torch incl. CUDA, numpy, Python)."""
    import random

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _step(g_train, generator, d_train, disc, perceptual, opt_g, opt_d, scaler, lr_img, hr_img, w, device, amp_dtype) -> dict[str, torch.Tensor]:
    """One optimiser step of the generator (and of the discriminator in the gan stage)."""
    out: dict[str, torch.Tensor] = {}
    autocast = torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)
    if disc is not None:
        for p in disc.parameters():
            p.requires_grad_(False)
    with autocast:
        sr = g_train(lr_img)
        loss = lr_img.new_zeros((), dtype=torch.float32)
        if w.pixel > 0:
            l_pix = l1(sr, hr_img)
            out["l_pix"] = l_pix.detach()
            loss = loss + w.pixel * l_pix
        if perceptual is not None:
            l_percep = perceptual(sr, hr_img)
            out["l_percep"] = l_percep.detach()
            loss = loss + w.perceptual * l_percep
        if disc is not None:
            # The plain module, not the DDP wrapper: the discriminator gets no gradients here.
            real_logits = disc(hr_img).detach()
            fake_logits = disc(sr)
            l_gan = ragan_g_loss(real_logits, fake_logits)
            out["l_gan"] = l_gan.detach()
            loss = loss + w.gan * l_gan
    opt_g.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt_g)
    if len(out) > 1:
        out["l_g_total"] = loss.detach()  # the weighted sum the generator minimises

    if disc is not None:
        for p in disc.parameters():
            p.requires_grad_(True)
        fake = sr.detach()
        opt_d.zero_grad(set_to_none=True)
        # Two backward passes, one per forward with gradients (BasicSR's order, DDP-safe); each
        # relativistic term uses the other side's mean as a constant.
        with autocast:
            with torch.no_grad():
                fake_ref = d_train(fake)
            real_logits = d_train(hr_img)
            l_d_real = ragan_d_real(real_logits, fake_ref)
        scaler.scale(l_d_real).backward()
        with autocast:
            fake_logits = d_train(fake)
            l_d_fake = ragan_d_fake(fake_logits, real_logits.detach())
        scaler.scale(l_d_fake).backward()
        scaler.step(opt_d)
        out["l_d_real"] = l_d_real.detach()
        out["l_d_fake"] = l_d_fake.detach()
        out["d_real"] = real_logits.detach().float().mean()
        out["d_fake"] = fake_logits.detach().float().mean()
    scaler.update()
    return out


def _validate(cfg: Config, generator: nn.Module, ema_module: nn.Module | None, device: torch.device) -> dict[str, float]:
    """PSNR/SSIM on ``data.val`` of the network export writes (the EMA when there is one) as
    ``psnr``/``ssim``, with LPIPS and NIQE when the perceptual files are there (``vsr models fetch
    perceptual``), and, with an EMA, PSNR/SSIM of the raw generator too as ``psnr_raw``/``ssim_raw``."""
    from ..perceptual.scores import available
    from .metrics import evaluate

    perceptual = available(VALIDATION_METRICS)  # only what validation takes is checked, not DISTS's VGG16

    def measure(model: nn.Module, metrics: tuple[str, ...]) -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:
            result = evaluate(model, cfg.data.val, cfg.data.val_lr or None, device=device, metrics=("psnr", "ssim", *metrics))
        finally:
            model.train(was_training)
        return {**result.mean, "images": len(result.rows)}

    if ema_module is None:
        return measure(generator, perceptual)
    raw = measure(generator, ())
    return {**measure(ema_module, perceptual), "psnr_raw": raw["psnr"], "ssim_raw": raw["ssim"]}


def _move_optimizer(opt: torch.optim.Optimizer, device: torch.device) -> None:
    for per_param in opt.state.values():
        for k, v in per_param.items():
            if isinstance(v, torch.Tensor) and k != "step":
                per_param[k] = v.to(device)


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def _state(cfg: Config, step: int, *, generator, ema, disc, opt_g, opt_d, scaler, dist: _Dist) -> dict[str, Any]:
    return {
        "spec": {"arch": generator.spec.arch, "params": generator.spec.kwargs},
        "params": _cpu_state(generator),
        "params_ema": _cpu_state(ema.module) if ema is not None else None,
        "net_d": _cpu_state(disc) if disc is not None else None,
        "optim_g": opt_g.state_dict(),
        "optim_d": opt_d.state_dict() if opt_d is not None else None,
        # The schedule is a pure function of the step (lr_factor); recorded for reference.
        "schedule": {"kind": cfg.train.schedule, "step": step, "lr_factor": lr_factor(cfg, step)},
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "rng": ckpt.rng_state(),
        "data": {"next_step": step, "seed": cfg.train.seed, "batch_size": cfg.data.batch_size, "world_size": dist.world},
        "config": config_to_json(cfg, indent=None),
    }


def _restore(state: dict[str, Any], *, generator, ema, disc, opt_g, opt_d, scaler) -> None:
    generator.load_state_dict(state["params"], strict=True)
    if ema is not None:
        ema.module.load_state_dict(state["params_ema"] if state.get("params_ema") is not None else state["params"], strict=True)
    if disc is not None:
        if state.get("net_d") is None:
            raise ConfigError("--resume: the checkpoint has no discriminator (a psnr-stage run); start the gan stage in a new folder with model.pretrained")
        disc.load_state_dict(state["net_d"], strict=True)
    opt_g.load_state_dict(state["optim_g"])
    if opt_d is not None and state.get("optim_d") is not None:
        opt_d.load_state_dict(state["optim_d"])
    if scaler.is_enabled() and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    ckpt.set_rng_state(state["rng"])


__all__ = ["EMA", "RunSummary", "build_generator", "load_pretrained", "lr_factor", "plot_metrics", "train"]
