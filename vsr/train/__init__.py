"""Training: datasets and degradations, losses (L1, VGG perceptual, RaGAN), the loop with EMA,
checkpoints that resume exactly, validation metrics, and export to a model file.

Entry points for the command line (heavy modules are imported on first use):

* :func:`vsr.train.loop.train` ``(cfg, *, resume=False, progress="bar") -> RunSummary``
* :func:`vsr.train.export.export_run` ``(run_dir, output, *, use_ema=True, overwrite=False) -> Path``
* :func:`vsr.train.metrics.evaluate` ``(model, hr_dir, lr_dir=None, *, scale=None, device="auto") -> EvalResult``
"""

from __future__ import annotations

from typing import Any

__all__ = ["EvalResult", "RunSummary", "evaluate", "export_run", "train"]

_LAZY = {
    "train": "loop",
    "RunSummary": "loop",
    "export_run": "export",
    "evaluate": "metrics",
    "EvalResult": "metrics",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
