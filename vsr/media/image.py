"""Still images through PyAV (FFmpeg's codecs): PNG, JPEG, WebP and TIFF, 8 and 16 bit.

Pixels travel as numpy arrays ``(H, W, C)`` of uint8 or uint16 with C = 1 (gray), 2 (gray +
alpha), 3 (RGB) or 4 (RGBA). One library for stills and video keeps the colour handling in one
place, and FFmpeg reads and writes 16-bit RGB PNG/TIFF, which Pillow cannot.

Writing picks the encoder from the file extension. JPEG and WebP hold 8 bits only: 16-bit data is
rounded to 8 bits with a warning. JPEG cannot hold alpha, so RGBA to ``.jpg`` is refused rather
than silently flattened. WebP is written lossless.
"""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ..errors import InputError, InputMissing, UsageError
from .. import files

log = logging.getLogger(__name__)

IMAGE_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp", ".tif": "tiff", ".tiff": "tiff"}
# Formats numpy arrays convert to directly with VideoFrame.from_ndarray / to_ndarray.
_NDARRAY_FORMATS = {"gray", "gray16le", "rgb24", "rgba", "rgb48le", "rgba64le"}
_PACKED = {  # (channels, bits) -> little-endian packed pixel format
    (1, 8): "gray",
    (1, 16): "gray16le",
    (2, 8): "ya8",
    (2, 16): "ya16le",
    (3, 8): "rgb24",
    (3, 16): "rgb48le",
    (4, 8): "rgba",
    (4, 16): "rgba64le",
}
# Per-format encoder settings: codec, pixel format for (channels, bits), codec options.
_PNG_PIX = {(1, 8): "gray", (1, 16): "gray16be", (2, 8): "ya8", (2, 16): "ya16be", (3, 8): "rgb24", (3, 16): "rgb48be", (4, 8): "rgba", (4, 16): "rgba64be"}
JPEG_OPTIONS = {"qmin": "1", "qmax": "2"}  # near-lossless quantiser range; 4:4:4 chroma
TIFF_OPTIONS = {"compression_algo": "deflate"}
WEBP_OPTIONS = {"lossless": "1"}


def image_format(path: str | Path) -> str | None:
    """``png``/``jpeg``/``webp``/``tiff`` from the extension, or None for anything else."""
    return IMAGE_FORMATS.get(Path(path).suffix.lower())


def read_image(path: str | Path) -> np.ndarray:
    """Decode the first picture of an image file into ``(H, W, C)`` uint8/uint16."""
    path = Path(path)
    if not path.exists():
        raise InputMissing(f"input {path} does not exist")
    if path.stat().st_size == 0:
        raise InputError(f"input {path} is an empty file")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"input {path} holds no picture")
            stream = container.streams.video[0]
            frame = next(container.decode(stream), None)
            codec = stream.codec_context.name
    except av.FFmpegError as err:
        raise InputError(f"input {path} is not a readable image ({err.strerror or err}); is it damaged?") from err
    if frame is None:
        raise InputError(f"input {path} has no decodable picture; is it truncated?")
    pixels = frame_to_array(frame)
    if codec == "webp" and pixels.shape[2] in (2, 4) and np.all(pixels[..., -1] == np.iinfo(pixels.dtype).max):
        # FFmpeg reports lossless WebP as ARGB whether or not it has alpha: drop an opaque one.
        pixels = pixels[..., :-1]
    return pixels


def frame_to_array(frame: av.VideoFrame) -> np.ndarray:
    """Convert any decoded picture to ``(H, W, C)`` uint8/uint16 keeping gray/alpha/bit depth."""
    fmt = frame.format
    colour = [c for c in fmt.components if not c.is_alpha]
    has_alpha = any(c.is_alpha for c in fmt.components) or bool(getattr(fmt, "has_palette", False))
    gray = len(colour) == 1 and not getattr(fmt, "has_palette", False)
    bits = 16 if max(c.bits for c in fmt.components) > 8 else 8
    channels = (1 if gray else 3) + (1 if has_alpha else 0)
    target = _PACKED[(channels, bits)]
    if fmt.name != target:
        frame = frame.reformat(format=target, threads=1)  # threaded swscale corrupts >8-bit rows here
    if target in _NDARRAY_FORMATS:
        arr = frame.to_ndarray()
    else:  # gray+alpha: read the packed plane directly
        plane = frame.planes[0]
        dtype = np.dtype("<u2") if bits == 16 else np.dtype(np.uint8)
        rows = np.frombuffer(plane, dtype=np.uint8).reshape(frame.height, plane.line_size)
        arr = rows[:, : frame.width * channels * dtype.itemsize].copy().view(dtype)
    arr = arr.reshape(frame.height, frame.width, channels)
    return np.ascontiguousarray(arr.astype(np.uint16 if bits == 16 else np.uint8, copy=False))


def array_to_frame(pixels: np.ndarray) -> av.VideoFrame:
    """Inverse of :func:`frame_to_array` (gray, gray+alpha, RGB, RGBA; 8 or 16 bit)."""
    height, width, channels = pixels.shape
    bits = 16 if pixels.dtype == np.uint16 else 8
    fmt = _PACKED[(channels, bits)]
    if fmt in _NDARRAY_FORMATS:
        return av.VideoFrame.from_ndarray(pixels if channels > 1 else pixels[..., 0], format=fmt)
    frame = av.VideoFrame(width, height, fmt)
    plane = frame.planes[0]
    rows = np.zeros((height, plane.line_size), np.uint8)
    rows[:, : width * channels * pixels.itemsize] = pixels.astype(pixels.dtype.newbyteorder("<")).view(np.uint8).reshape(height, -1)
    plane.update(rows.tobytes())
    return frame


def encode_image(pixels: np.ndarray, fmt: str) -> bytes:
    """Encode ``(H, W, C)`` pixels as a complete PNG/JPEG/WebP/TIFF file in memory."""
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 2, 3, 4) or pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"pixels must be (H, W, 1..4) uint8/uint16, got {pixels.shape} {pixels.dtype}")
    channels = pixels.shape[2]
    if fmt == "jpeg" and channels in (2, 4):
        raise UsageError("JPEG cannot store the alpha channel of this image; write .png, .webp or .tif instead")
    if fmt in ("jpeg", "webp") and pixels.dtype == np.uint16:
        log.warning("%s holds 8 bits per sample; rounding the 16-bit result to 8 bits", fmt.upper())
        pixels = ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if fmt in ("jpeg", "webp") and channels in (1, 2):
        # Neither stores gray: replicate it to RGB (exact, the chroma stays neutral).
        pixels = np.concatenate([np.repeat(pixels[..., :1], 3, axis=2), pixels[..., 1:]], axis=2)
    if fmt == "webp" and pixels.shape[2] == 3:
        pixels = np.concatenate([pixels, np.full(pixels.shape[:2] + (1,), 255, np.uint8)], axis=2)
    key = (pixels.shape[2], 16 if pixels.dtype == np.uint16 else 8)
    if fmt == "png":
        codec, pix_fmt, options = "png", _PNG_PIX[key], {}
    elif fmt == "tiff":
        codec, pix_fmt, options = "tiff", _PACKED[key], TIFF_OPTIONS
    elif fmt == "jpeg":
        codec, pix_fmt, options = "mjpeg", "yuvj444p", JPEG_OPTIONS
    elif fmt == "webp":
        codec, pix_fmt, options = "libwebp", "bgra", WEBP_OPTIONS
    else:
        raise UsageError(f"unknown image format {fmt!r}; use png, jpeg, webp or tiff")
    frame = array_to_frame(pixels)
    ctx = av.CodecContext.create(codec, "w")
    ctx.width, ctx.height, ctx.pix_fmt = frame.width, frame.height, pix_fmt
    ctx.time_base = Fraction(1, 1)
    ctx.options = dict(options)
    if frame.format.name != pix_fmt:
        frame = frame.reformat(format=pix_fmt)
    frame.pts = 0
    return b"".join(bytes(p) for p in [*ctx.encode(frame), *ctx.encode(None)])


def write_image(path: str | Path, pixels: np.ndarray, *, overwrite: bool = False) -> None:
    """Encode by the extension of ``path`` and publish it (:func:`vsr.files.publish`)."""
    path = Path(path)
    fmt = image_format(path)
    if fmt is None:
        raise UsageError(f"output {path} has no image extension; use one of {', '.join(IMAGE_FORMATS)}")
    files.write_bytes(path, encode_image(pixels, fmt), overwrite=overwrite)
