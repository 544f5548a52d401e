"""Where vsr keeps its own files (how files are written is :mod:`vsr.files`)."""

from __future__ import annotations

import os
from pathlib import Path


def vsr_home() -> Path:
    """The cache root: ``$VSR_HOME``, else ``$XDG_CACHE_HOME/vsr``, else ``~/.cache/vsr``."""
    if os.environ.get("VSR_HOME"):
        return Path(os.environ["VSR_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "vsr"
