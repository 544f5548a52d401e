#!/usr/bin/env python3
"""Write samples/sample.mp4, the clip the README's first command upscales.

96x64 pixels, 48 frames at 12 fps (4 s): a camera pan across scikit-image's ``astronaut``
photograph (NASA, public domain) from her face to the shuttle model, then a cut to a slow zoom
into the cup of ``coffee`` (CC0).  H.264 High, yuv420p, CRF 16, tagged BT.601 (SMPTE 170M
matrix, primaries and transfer) limited range; AAC-LC stereo 48 kHz, exactly 4 s long (a plucked
arpeggio, a different chord per channel).

Everything is made in-process with PyAV and scikit-image, single-threaded and with x264's C code
path and swscale in bit-exact mode, so the file is the same byte for byte on every run::

    python scripts/make_sample.py [--output samples/sample.mp4]
"""

from __future__ import annotations

import argparse
import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import Interpolation
from skimage import data
from skimage.filters import gaussian
from skimage.transform import AffineTransform, warp

WIDTH, HEIGHT = 96, 64
FPS = Fraction(12)
SAMPLE_RATE = 48000
# Shots: (photograph, frames, start window, end window); a window is (centre x, centre y, width)
# as fractions of the photograph's width/height, with the output's 3:2 aspect ratio.
SHOTS = [
    ("astronaut", 24, (0.40, 0.24, 0.42), (0.78, 0.22, 0.42)),  # her face -> the shuttle model
    ("coffee", 24, (0.50, 0.50, 0.95), (0.50, 0.33, 0.40)),  # the table -> into the cup
]
BT601 = {"colorspace": 6, "color_primaries": 6, "color_trc": 6, "color_range": 1}  # smpte170m, tv


def render(img: np.ndarray, cx: float, cy: float, wfrac: float) -> np.ndarray:
    """The window centred at (cx, cy), wfrac of the photo wide, resampled to WIDTHxHEIGHT:
    Gaussian pre-filter against aliasing, then a cubic-spline warp with sub-pixel position."""
    ph, pw = img.shape[:2]
    w = wfrac * pw
    h = w * HEIGHT / WIDTH
    x0 = min(max(cx * pw - w / 2, 0.0), pw - w)
    y0 = min(max(cy * ph - h / 2, 0.0), ph - h)
    s = w / WIDTH
    sigma = max(0.0, (s - 1.0) / 2.0)
    m = int(math.ceil(4 * sigma)) + 3
    bx0, by0 = max(int(x0) - m, 0), max(int(y0) - m, 0)
    sub = img[by0 : min(int(math.ceil(y0 + h)) + m, ph), bx0 : min(int(math.ceil(x0 + w)) + m, pw)]
    if sigma > 0:
        sub = gaussian(sub, sigma=sigma, channel_axis=-1, mode="nearest", preserve_range=True)
    matrix = [[s, 0, x0 - bx0 + 0.5 * s - 0.5], [0, s, y0 - by0 + 0.5 * s - 0.5], [0, 0, 1]]
    out = warp(sub, AffineTransform(matrix=np.array(matrix, dtype=np.float64)),
               output_shape=(HEIGHT, WIDTH), order=3, mode="edge", preserve_range=True)
    return np.clip(out, 0.0, 1.0)


def frames_rgb() -> list[np.ndarray]:
    """uint8 RGB frames of all shots: smoothstep easing, zoom even in log scale."""
    out = []
    for name, n, (ax, ay, aw), (bx, by, bw) in SHOTS:
        img = getattr(data, name)().astype(np.float64) / 255.0
        for j in range(n):
            t = j / (n - 1)
            t = t * t * (3 - 2 * t)
            wf = math.exp(math.log(aw) + (math.log(bw) - math.log(aw)) * t)
            rgb = render(img, ax + (bx - ax) * t, ay + (by - ay) * t, wf)
            out.append(np.round(rgb * 255).astype(np.uint8))
    return out


def audio(seconds: float) -> np.ndarray:
    """Float32 planar stereo: a note every 0.25 s, four harmonics under a 5 ms attack and
    0.15 s decay; A major on the left, a fifth higher on the right; 10 ms fades at both ends."""
    n = int(round(seconds * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    idx = np.floor(t / 0.25).astype(np.int64)
    local = t - idx * 0.25
    env = (1 - np.exp(-local / 0.005)) * np.exp(-local / 0.15)
    fade = np.minimum(1.0, np.minimum(t, (n - 1) / SAMPLE_RATE - t) / 0.01).clip(0, 1)
    chord = np.array([220.0, 277.18, 329.63, 440.0])
    pcm = np.empty((2, n), dtype=np.float32)
    for c in range(2):
        f = (chord * 2 ** (7 * c / 12))[(idx + c) % 4]
        sig = sum(np.sin(2 * np.pi * k * f * local + 0.3 * k) / k for k in range(1, 5))
        pcm[c] = 0.3 * env * fade * sig
    return pcm


def write(path: Path) -> None:
    rgb = frames_rgb()
    seconds = len(rgb) / FPS
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with av.open(str(tmp), "w", format="mp4", container_options={"fflags": "+bitexact"}) as out:
        out.metadata["title"] = "vsr sample: astronaut and coffee"
        out.metadata["comment"] = ("scikit-image photographs: astronaut (NASA, public domain), "
                                   "coffee (Rachel Michetti, CC0)")
        v = out.add_stream("libx264", rate=FPS, options={
            "crf": "16", "preset": "slow", "profile": "high",
            # asm=0: x264's SIMD lookahead reads uninitialised memory at this size, which made
            # the output vary from run to run; the C path is deterministic on every CPU.
            "x264-params": "asm=0:keyint=24",
        })
        cc = v.codec_context
        cc.width, cc.height, cc.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        cc.time_base, cc.framerate, cc.thread_count = 1 / FPS, FPS, 1
        for key, value in BT601.items():
            setattr(cc, key, value)
        a = out.add_stream("aac", rate=SAMPLE_RATE)
        a.codec_context.layout = "stereo"
        a.codec_context.bit_rate = 128000
        a.codec_context.thread_count = 1
        out.start_encoding()

        flags = Interpolation.BICUBIC | Interpolation.ACCURATE_RND | Interpolation.BITEXACT
        for i, img in enumerate(rgb):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(
                format="yuv420p", dst_colorspace="ITU601", dst_color_range="MPEG",
                interpolation=flags, threads=1)
            for key, value in BT601.items():
                setattr(frame, key, value)
            frame.pts, frame.time_base = i, 1 / FPS
            out.mux(v.encode(frame))
        out.mux(v.encode(None))

        pcm = audio(float(seconds))
        for start in range(0, pcm.shape[1], 1024):
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm[:, start : start + 1024]),
                                            format="fltp", layout="stereo")
            af.sample_rate = SAMPLE_RATE
            af.pts, af.time_base = start, Fraction(1, SAMPLE_RATE)
            out.mux(a.encode(af))
        out.mux(a.encode(None))
    tmp.replace(path)


def main() -> None:
    here = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=here / "samples" / "sample.mp4")
    args = parser.parse_args()
    write(args.output)
    with av.open(str(args.output)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        print(f"{args.output}: {args.output.stat().st_size} bytes, {v.codec_context.name} "
              f"{v.codec_context.pix_fmt} {v.codec_context.width}x{v.codec_context.height} "
              f"{v.frames} frames @ {v.average_rate} fps, {a.codec_context.name} "
              f"{a.codec_context.layout.name} {a.codec_context.sample_rate} Hz, "
              f"{float(c.duration / av.time_base):.3f} s")


if __name__ == "__main__":
    main()
