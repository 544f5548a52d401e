"""Training checkpoints: ``<run>/step_000123.pt``, written atomically, the newest K kept.

One file holds everything a run needs to continue exactly: the generator (``params``) and its EMA
(``params_ema``, BasicSR's names, so ``vsr.models.load("step_000123.pt")`` loads the EMA weights
directly), the discriminator, both optimisers, the learning-rate schedule position, the AMP grad
scaler, the step, the random-generator states (torch, CUDA, numpy, Python) and the data sampler
state. Everything is plain tensors, numbers, strings, lists and dicts, so the file loads with
``torch.load(weights_only=True)``.

A file is written under a private temporary name, flushed to disk and published with a sidecar
``step_N.pt.json`` holding its size and SHA-256 (:func:`vsr.files.publish_artifact`), so a crash
or a full disk mid-write never leaves a damaged ``step_N.pt`` and never touches the previous good
one; resuming checks the digest and skips a checkpoint damaged since. Old checkpoints are deleted
only after the new one is in place.
"""

from __future__ import annotations

import logging
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import files
from ..errors import InputError, InputMissing, OutputError

log = logging.getLogger(__name__)

FORMAT = "vsr-train-checkpoint"
VERSION = 1
_NAME = re.compile(r"step_(\d+)\.pt")


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / f"step_{step:06d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``run_dir`` as (step, path), oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m[1]), p) for p in run_dir.iterdir() if (m := _NAME.fullmatch(p.name)) and p.is_file()]
    return sorted(found)


def save_checkpoint(run_dir: str | Path, step: int, state: dict[str, Any], *, keep: int = 0) -> Path:
    """Write ``state`` as ``step_{step}.pt`` (with its digest sidecar), then keep only the newest
    ``keep`` (0 = all)."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create run folder {run_dir} ({err.strerror}); check checkpoint.dir") from err
    final = checkpoint_path(run_dir, step)
    payload = {"format": FORMAT, "version": VERSION, "step": step, **state}
    try:
        files.publish_artifact(final, lambda tmp: _torch_save(payload, tmp), key=f"{FORMAT}:{step}")
    except OSError as err:
        raise OutputError(f"cannot write checkpoint {final} ({err.strerror or err}); check free space in {run_dir}") from err
    if keep > 0:
        for _, old in list_checkpoints(run_dir)[:-keep]:
            files.remove_artifact(old)
    return final


def _torch_save(payload: dict[str, Any], path: Path) -> None:
    with open(path, "wb") as fh:
        torch.save(payload, fh)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read one training checkpoint (``weights_only``: a checkpoint cannot run code). Where vsr
    wrote a digest sidecar beside it, the file must still match it."""
    path = Path(path)
    if not path.exists():
        raise InputMissing(f"checkpoint {path} does not exist")
    if files.sidecar_path(path).exists():
        ok, reason = files.check_artifact(path)
        if not ok:
            raise InputError(f"checkpoint {path} is damaged ({reason}); use an earlier step_*.pt")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated or foreign files raise many different types
        raise InputError(f"checkpoint {path} is damaged or not a vsr training checkpoint ({str(err).splitlines()[0][:160]})") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(f"{path} is not a vsr training checkpoint (no '{FORMAT}' marker); pass a step_*.pt from a vsr run folder")
    if state.get("version", 0) > VERSION:
        raise InputError(f"checkpoint {path} was written by a newer vsr (format {state.get('version')}); upgrade vsr")
    return state


def latest_checkpoint(run_dir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads, skipping damaged ones with a warning; None if there is none."""
    for step, path in reversed(list_checkpoints(run_dir)):
        try:
            return path, load_checkpoint(path)
        except InputError as err:
            log.warning("skipping checkpoint %s: %s", path, err)
    return None


def resolve_checkpoint(ref: str | Path) -> Path:
    """A ``step_*.pt`` file, or a run folder (its newest complete checkpoint)."""
    ref = Path(ref).expanduser()
    if ref.is_dir():
        found = list_checkpoints(ref)
        if not found:
            raise InputMissing(f"run folder {ref} holds no step_*.pt checkpoint yet")
        return found[-1][1]
    if not ref.exists():
        raise InputMissing(f"{ref} does not exist; give a run folder or a step_*.pt checkpoint")
    return ref


# --------------------------------------------------------------------------- random state


def rng_state() -> dict[str, Any]:
    """The global generators as weights_only-friendly values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            log.warning("checkpoint has CUDA generator states for %d devices, this machine has %d; not restored", len(cuda), torch.cuda.device_count())
