"""vsr: video and image super-resolution with ESRGAN-family networks.

Start with ``vsr.models.load`` (named pretrained models or any RRDB/SRVGG checkpoint),
``vsr.engines.TorchEngine`` and ``vsr.upscale.Upscaler``; the CLI lives in ``vsr.cli``.
"""

__version__ = "0.1.0"
