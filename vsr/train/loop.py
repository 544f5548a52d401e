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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
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
from .data import TrainSet, build_dataset, make_loader
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


@dataclass(frozen=True)
class _Nets:
    """The networks of a run and what updates them. The objects stay the same for the whole run
    (their weights and optimiser state change in place); ``g_train``/``d_train`` are what a step
    calls: the networks themselves, or their DistributedDataParallel wrappers."""

    generator: nn.Module
    ema: EMA | None
    disc: nn.Module | None  # the gan stage's discriminator
    perceptual: PerceptualLoss | None
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer | None
    scaler: torch.amp.GradScaler
    g_train: nn.Module
    d_train: nn.Module | None

    @property
    def ema_module(self) -> nn.Module | None:
        """The averaged generator (what export writes and validation scores), None without an EMA."""
        return self.ema.module if self.ema is not None else None


@dataclass(frozen=True)
class _Run:
    """What stays fixed for a run once it is set up: the config, where it runs and writes, where it
    starts, and the networks."""

    cfg: Config
    dist: _Dist
    device: torch.device
    amp_dtype: torch.dtype | None  # the autocast dtype, None for fp32
    run_dir: Path
    start_step: int  # 0, or the step resumed from
    resumed_from: Path | None
    t0: float  # time.monotonic() when train() was called
    nets: _Nets

    @property
    def metrics_path(self) -> Path:
        """``metrics.jsonl`` in the run folder."""
        return self.run_dir / METRICS_FILE

    def autocast(self) -> torch.autocast:
        """The autocast context of a step (a disabled one in fp32); it can be entered repeatedly."""
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None)

    def on_device(self, batch: torch.Tensor) -> torch.Tensor:
        """A batch from the loader on the run's device, in the networks' memory format."""
        return batch.to(self.device, non_blocking=True).contiguous(memory_format=_memory_format(self.device))


@dataclass
class _Tally:
    """What changes from step to step: the completed steps, the learning rate of the latest one, the
    losses summed since the last log line (kept as tensors, so logging is the only device sync), and
    the latest logged losses, validation and checkpoint, which the summary reports."""

    step: int
    checkpoint: Path | None
    tick: float  # time.monotonic() when the steps in ``sums`` began
    lr: float = 0.0
    losses: dict[str, float] = field(default_factory=dict)
    val: dict[str, float] | None = None
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    count: int = 0

    def add(self, losses: dict[str, torch.Tensor]) -> None:
        """Count a step and add its losses to the sums of the next log line."""
        for k, v in losses.items():
            self.sums[k] = self.sums.get(k, 0) + v
        self.count += 1


@dataclass(frozen=True)
class _Journal:
    """Where the records go: ``metrics.jsonl`` and the progress reporter, on rank 0 only."""

    path: Path
    reporter: _Reporter
    enabled: bool

    def emit(self, rec: Record) -> None:
        """Append ``rec`` to ``metrics.jsonl`` and show it (rank 0; a no-op on the other ranks)."""
        if self.enabled:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
            self.reporter.record(rec)


def _train(cfg: Config, *, resume: bool, progress, dist: _Dist, device: torch.device, t0: float) -> RunSummary:
    """One process's run: set up, the first records, the steps, the summary."""
    run, dataset = _set_up(cfg, resume=resume, dist=dist, device=device, t0=t0)
    loader = make_loader(dataset, batch_size=cfg.data.batch_size, workers=cfg.data.workers, start_step=run.start_step, steps=cfg.train.steps,
                         rank=dist.rank, world=dist.world, pin_memory=device.type == "cuda")
    journal = _Journal(run.metrics_path, _Reporter(progress, cfg.train.steps, run.start_step, dist.main), dist.main)
    tally = _Tally(step=run.start_step, checkpoint=run.resumed_from, tick=time.monotonic())
    _begin(run, journal, samples=len(dataset))
    _step_loop(run, loader, journal, tally)
    return _finish(run, tally)


def _set_up(cfg: Config, *, resume: bool, dist: _Dist, device: torch.device, t0: float) -> tuple[_Run, TrainSet]:
    """Everything before the first step: the resume point, the data set, the networks (restored from
    the checkpoint when resuming) on ``device``, and on rank 0 the run folder's config and metrics."""
    run_dir = Path(cfg.checkpoint.dir).expanduser()
    resumed_from, state = _prepare_run_dir(cfg, run_dir, resume) or (None, None)
    start_step = int(state["step"]) if state else 0
    if start_step >= cfg.train.steps:
        log.warning("run %s is already at step %d of %d; nothing to do (raise train.steps to continue)", run_dir, start_step, cfg.train.steps)

    # The data first: unreadable or mismatched pictures fail before anything is written.
    dataset = build_dataset(cfg.data, scale=cfg.model.scale, seed=cfg.train.seed, degradation=cfg.degradation)

    amp_dtype = _autocast_dtype(cfg, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    nets = _build_nets(cfg, device, amp_dtype, fresh=state is None)
    if state is not None:
        _restore(state, nets)
        log.info("resuming %s from step %d (%s)", run_dir, start_step, resumed_from.name)
    run = _Run(cfg, dist, device, amp_dtype, run_dir, start_step, resumed_from, t0, nets=_place(nets, device, dist))

    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        files.write_text(run_dir / CONFIG_FILE, config_to_json(cfg) + "\n")
        _rewrite_metrics(run.metrics_path, start_step)
    return run, dataset


def _build_nets(cfg: Config, device: torch.device, amp_dtype: torch.dtype | None, *, fresh: bool) -> _Nets:
    """The networks on the CPU: the generator (``model.pretrained`` for a ``fresh`` run that names
    one, else new weights; a resumed run loads its checkpoint over them), its EMA, the gan stage's
    discriminator, the perceptual loss, the Adam optimisers and the fp16 gradient scaler."""
    t = cfg.train
    gan = t.stage == "gan"
    # Seeded so a fresh run starts from the same weights on every process.
    _seed_everything(t.seed)
    if cfg.model.pretrained and fresh:
        generator = load_pretrained(cfg)
        log.info("generator initialised from %s", cfg.model.pretrained)
    else:
        if gan and fresh:
            log.warning("train.stage = gan without model.pretrained: ESRGAN starts the GAN stage from a PSNR-stage model")
        generator = build_generator(cfg)
    generator.train()
    ema = EMA(generator, t.ema, warmup=t.ema_warmup) if t.ema > 0 else None
    disc = None
    if gan:
        from .discriminator import build_discriminator

        disc = build_discriminator(cfg.discriminator.arch, num_feat=cfg.discriminator.num_feat, patch_size=cfg.data.patch_size).train()
    perceptual = None
    if cfg.loss.perceptual > 0:
        perceptual = PerceptualLoss(perceptual_features(cfg.loss.vgg, cfg.loss.vgg_weights, cfg.loss.vgg_layers), cfg.loss.vgg_layer_weights or None)

    opt_g = torch.optim.Adam(generator.parameters(), lr=t.lr, betas=tuple(t.betas))
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.discriminator.lr or t.lr, betas=tuple(t.betas)) if disc is not None else None
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and amp_dtype == torch.float16)
    return _Nets(generator, ema, disc, perceptual, opt_g, opt_d, scaler, g_train=generator, d_train=disc)


def _memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on CUDA, where cuDNN's convolutions are fastest in it."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def _place(nets: _Nets, device: torch.device, dist: _Dist) -> _Nets:
    """``nets`` moved to ``device`` (optimiser state too), and with several processes the networks
    the step trains wrapped in DistributedDataParallel."""
    for module in (nets.generator, nets.ema_module, nets.disc, nets.perceptual):
        if module is not None:
            module.to(device=device, memory_format=_memory_format(device))
    for opt in (nets.opt_g, nets.opt_d):
        if opt is not None:
            _move_optimizer(opt, device)
    if dist.world <= 1:
        return nets
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return replace(nets, g_train=DDP(nets.generator, device_ids=ids), d_train=DDP(nets.disc, device_ids=ids) if nets.disc is not None else None)


def _begin(run: _Run, journal: _Journal, *, samples: int) -> None:
    """The run's first records on rank 0: the start line, and for a new run with validation the
    network before any step (random, or model.pretrained), where the curve starts."""
    cfg, dist = run.cfg, run.dist
    if dist.main:
        journal.emit({"kind": "start", "step": run.start_step, "steps": cfg.train.steps, "stage": cfg.train.stage, "device": str(run.device),
                      "world_size": dist.world, "samples": samples, "resumed_from": run.resumed_from.name if run.resumed_from else None,
                      "cwd": os.getcwd(), "torch": torch.__version__})
    if cfg.data.val and cfg.val.every and run.start_step == 0 and cfg.train.steps > 0 and dist.main:
        journal.emit({"kind": "val", "step": 0, **_validate(run)})


def _step_loop(run: _Run, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], journal: _Journal, tally: _Tally) -> None:
    """The optimiser steps from ``tally.step`` to ``train.steps``, each followed by the EMA update and
    the log, validation and checkpoint cadence. Closes the progress bar and stops the loader's
    workers when it ends, also on an exception or Ctrl-C."""
    nets = run.nets
    batches = iter(loader)
    try:
        for lr_batch, hr_batch in batches:
            lr_img, hr_img = run.on_device(lr_batch), run.on_device(hr_batch)
            tally.lr = _set_lr(run, tally.step)
            losses = _step(run, lr_img, hr_img)
            tally.step += 1
            if nets.ema is not None:
                nets.ema.update(nets.generator, tally.step)
            journal.reporter.step()
            tally.add(losses)
            _log_validate_save(run, journal, tally)
    finally:
        journal.reporter.close()
        # Stop the worker processes now, also when an exception is on its way out (its traceback
        # would otherwise keep the iterator, and the workers, alive).
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        del batches


def _set_lr(run: _Run, step: int) -> float:
    """Set the scheduled learning rates for the update after ``step`` completed steps; returns the
    generator's (the one the log lines report)."""
    cfg, nets = run.cfg, run.nets
    factor = lr_factor(cfg, step)
    lr = cfg.train.lr * factor
    for group in nets.opt_g.param_groups:
        group["lr"] = lr
    if nets.opt_d is not None:
        for group in nets.opt_d.param_groups:
            group["lr"] = (cfg.discriminator.lr or cfg.train.lr) * factor
    return lr


def _log_validate_save(run: _Run, journal: _Journal, tally: _Tally) -> None:
    """After a step: the mean losses every ``train.log_every`` steps, validation every ``val.every``
    steps (rank 0) and a checkpoint every ``checkpoint.every`` steps (rank 0), all three after the
    last step too."""
    cfg, step = run.cfg, tally.step
    last = step == cfg.train.steps
    if step % cfg.train.log_every == 0 or last:
        now = time.monotonic()
        tally.losses = {k: float(v) / tally.count for k, v in tally.sums.items()}
        journal.emit({"kind": "train", "step": step, "lr": tally.lr, **tally.losses,
                      "sec_per_step": (now - tally.tick) / tally.count, "elapsed": now - run.t0})
        tally.sums, tally.count, tally.tick = {}, 0, now
    val_due = cfg.data.val and (last or (cfg.val.every and step % cfg.val.every == 0))
    if val_due and run.dist.main:
        tally.val = _validate(run)
        journal.emit({"kind": "val", "step": step, **tally.val})
    if (step % cfg.checkpoint.every == 0 or last) and run.dist.main:
        tally.checkpoint = ckpt.save_checkpoint(run.run_dir, step, _state(run, step), keep=cfg.checkpoint.keep)


def _finish(run: _Run, tally: _Tally) -> RunSummary:
    """The metrics plot (rank 0) and the run's summary."""
    plot = plot_metrics(run.run_dir) if run.dist.main and run.metrics_path.exists() else None
    return RunSummary(run_dir=run.run_dir, start_step=run.start_step, step=tally.step, checkpoint=tally.checkpoint, losses=tally.losses,
                      val=tally.val, seconds=time.monotonic() - run.t0, plot=plot, resumed_from=run.resumed_from)


def _seed_everything(seed: int) -> None:
    """Seed the global generators (torch incl. CUDA, numpy, Python)."""
    import random

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _step(run: _Run, lr_img: torch.Tensor, hr_img: torch.Tensor) -> dict[str, torch.Tensor]:
    """One optimiser step of the generator (and of the discriminator in the gan stage)."""
    n, w = run.nets, run.cfg.loss
    out: dict[str, torch.Tensor] = {}
    autocast = run.autocast()
    if n.disc is not None:
        for p in n.disc.parameters():
            p.requires_grad_(False)
    with autocast:
        sr = n.g_train(lr_img)
        loss = lr_img.new_zeros((), dtype=torch.float32)
        if w.pixel > 0:
            l_pix = l1(sr, hr_img)
            out["l_pix"] = l_pix.detach()
            loss = loss + w.pixel * l_pix
        if n.perceptual is not None:
            l_percep = n.perceptual(sr, hr_img)
            out["l_percep"] = l_percep.detach()
            loss = loss + w.perceptual * l_percep
        if n.disc is not None:
            # The plain module, not the DDP wrapper: the discriminator gets no gradients here.
            real_logits = n.disc(hr_img).detach()
            fake_logits = n.disc(sr)
            l_gan = ragan_g_loss(real_logits, fake_logits)
            out["l_gan"] = l_gan.detach()
            loss = loss + w.gan * l_gan
    n.opt_g.zero_grad(set_to_none=True)
    n.scaler.scale(loss).backward()
    n.scaler.step(n.opt_g)
    if len(out) > 1:
        out["l_g_total"] = loss.detach()  # the weighted sum the generator minimises

    if n.disc is not None:
        for p in n.disc.parameters():
            p.requires_grad_(True)
        fake = sr.detach()
        n.opt_d.zero_grad(set_to_none=True)
        # Two backward passes, one per forward with gradients (BasicSR's order, DDP-safe); each
        # relativistic term uses the other side's mean as a constant.
        with autocast:
            with torch.no_grad():
                fake_ref = n.d_train(fake)
            real_logits = n.d_train(hr_img)
            l_d_real = ragan_d_real(real_logits, fake_ref)
        n.scaler.scale(l_d_real).backward()
        with autocast:
            fake_logits = n.d_train(fake)
            l_d_fake = ragan_d_fake(fake_logits, real_logits.detach())
        n.scaler.scale(l_d_fake).backward()
        n.scaler.step(n.opt_d)
        out["l_d_real"] = l_d_real.detach()
        out["l_d_fake"] = l_d_fake.detach()
        out["d_real"] = real_logits.detach().float().mean()
        out["d_fake"] = fake_logits.detach().float().mean()
    n.scaler.update()
    return out


def _validate(run: _Run) -> dict[str, float]:
    """PSNR/SSIM on ``data.val`` of the network export writes (the EMA when there is one) as
    ``psnr``/``ssim``, with LPIPS and NIQE when the perceptual files are there (``vsr models fetch
    perceptual``), and, with an EMA, PSNR/SSIM of the raw generator too as ``psnr_raw``/``ssim_raw``."""
    from ..perceptual.scores import available
    from .metrics import evaluate

    cfg, generator, ema_module = run.cfg, run.nets.generator, run.nets.ema_module
    perceptual = available(VALIDATION_METRICS)  # only what validation takes is checked, not DISTS's VGG16

    def measure(model: nn.Module, metrics: tuple[str, ...]) -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:
            result = evaluate(model, cfg.data.val, cfg.data.val_lr or None, device=run.device, metrics=("psnr", "ssim", *metrics))
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


def _state(run: _Run, step: int) -> dict[str, Any]:
    """The checkpoint of ``run`` after ``step`` completed steps (the layout :func:`_restore` and
    ``vsr.train.checkpoint`` read; runs written by earlier versions resume, so keep it)."""
    cfg, n = run.cfg, run.nets
    return {
        "spec": {"arch": n.generator.spec.arch, "params": n.generator.spec.kwargs},
        "params": _cpu_state(n.generator),
        "params_ema": _cpu_state(n.ema.module) if n.ema is not None else None,
        "net_d": _cpu_state(n.disc) if n.disc is not None else None,
        "optim_g": n.opt_g.state_dict(),
        "optim_d": n.opt_d.state_dict() if n.opt_d is not None else None,
        # The schedule is a pure function of the step (lr_factor); recorded for reference.
        "schedule": {"kind": cfg.train.schedule, "step": step, "lr_factor": lr_factor(cfg, step)},
        "scaler": n.scaler.state_dict() if n.scaler.is_enabled() else None,
        "rng": ckpt.rng_state(),
        "data": {"next_step": step, "seed": cfg.train.seed, "batch_size": cfg.data.batch_size, "world_size": run.dist.world},
        "config": config_to_json(cfg, indent=None),
    }


def _restore(state: dict[str, Any], nets: _Nets) -> None:
    """Load a checkpoint's weights, optimiser and scaler state and random generators into ``nets``."""
    nets.generator.load_state_dict(state["params"], strict=True)
    if nets.ema is not None:
        nets.ema.module.load_state_dict(state["params_ema"] if state.get("params_ema") is not None else state["params"], strict=True)
    if nets.disc is not None:
        if state.get("net_d") is None:
            raise ConfigError("--resume: the checkpoint has no discriminator (a psnr-stage run); start the gan stage in a new folder with model.pretrained")
        nets.disc.load_state_dict(state["net_d"], strict=True)
    nets.opt_g.load_state_dict(state["optim_g"])
    if nets.opt_d is not None and state.get("optim_d") is not None:
        nets.opt_d.load_state_dict(state["optim_d"])
    if nets.scaler.is_enabled() and state.get("scaler"):
        nets.scaler.load_state_dict(state["scaler"])
    ckpt.set_rng_state(state["rng"])


__all__ = ["EMA", "RunSummary", "build_generator", "load_pretrained", "lr_factor", "plot_metrics", "train"]
