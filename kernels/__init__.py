"""Kernels for the work around the network (importable as ``vsr.kernels``).

Each function here is the plain-torch reference: it runs on the CPU and on CUDA tensors alike, and
it is what faster device kernels (Triton, added where they pay) are tested against.

* :mod:`vsr.kernels.convert`: integer pixels <-> float in [0, 1], rounding that matches the
  reference implementations (``floor(v * max + 0.5)`` then clamp).
* :mod:`vsr.kernels.blend`: padding frames bottom/right, cutting tiles out of a batch and adding
  weighted tile outputs into a frame.
* :mod:`vsr.kernels.yuv`: Y'CbCr planes (any depth, 4:2:0/4:2:2/4:4:0/4:4:4, limited or full
  range) <-> RGB float, with chroma up/downsampling that undo each other.
"""

from .blend import accumulate_tiles, extract_tiles, pad_bottom_right
from .convert import quantize, to_float
from .yuv import rgb_to_yuv, yuv_to_rgb

__all__ = ["accumulate_tiles", "extract_tiles", "pad_bottom_right", "quantize", "rgb_to_yuv", "to_float", "yuv_to_rgb"]
