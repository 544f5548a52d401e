"""Degradations that make a training LR patch from an HR patch.

* :func:`bicubic_downsample`: antialiased bicubic (torch ``interpolate(antialias=True)``, close to
  MATLAB ``imresize``), the classic bicubic x4 benchmark degradation of ESRGAN's PSNR and GAN stages.
* :class:`RealESRGANDegradation`: Real-ESRGAN's "high-order" pipeline (Wang et al., ICCVW 2021,
  arXiv:2107.10833, section 3), applied twice: blur (isotropic/anisotropic/generalized/plateau
  Gaussian or 2-D sinc kernels) -> random resize (up/down/keep, area/bilinear/bicubic) -> Gaussian
  or Poisson noise (colour or gray) -> JPEG; then the second order, ending with a resize to the LR
  size, a sinc filter (ringing/overshoot) and JPEG in random order. The parameter ranges are the
  published ones (BasicSR options/train_realesrgan_x4plus.yml, see :class:`vsr.train.config.DegradationConfig`).

Every random choice is drawn from the ``numpy.random.Generator`` passed in, so a degradation is a
pure function of (image, generator state): the data pipeline seeds one generator per sample and the
result does not depend on which worker process ran it. Output is quantised to 8 bits, as a stored
LR picture would be.

JPEG is simulated here in torch rather than through an encoder: baseline JPEG's lossy steps exactly
(8-bit RGB -> full-range BT.601 YCbCr, 4:2:0 chroma averaging, 8x8 DCT, quantisation with the
ITU-T T.81 Annex K tables scaled by quality as libjpeg does, and back), which is what the quality
number means and needs no OpenCV/PIL (PyAV's mjpeg encoder has no libjpeg-style quality scale).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from .config import DegradationConfig

# --------------------------------------------------------------------------- helpers


def quantize8(x: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] and round to the 256 levels of an 8-bit picture."""
    return torch.clamp(x, 0, 1).mul(255).round().div(255)


def _as4d(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    return (x, False) if x.dim() == 4 else (x.unsqueeze(0), True)


def bicubic_downsample(x: torch.Tensor, scale: int, *, quantize: bool = True) -> torch.Tensor:
    """``(C, H, W)`` or ``(N, C, H, W)`` in [0, 1] -> ``H // scale`` x ``W // scale``, antialiased bicubic."""
    x4, squeeze = _as4d(x)
    h, w = x4.shape[-2:]
    out = F.interpolate(x4, size=(h // scale, w // scale), mode="bicubic", antialias=True, align_corners=False)
    out = quantize8(out) if quantize else out.clamp(0, 1)
    return out[0] if squeeze else out


def bicubic_upsample(x: torch.Tensor, scale: int) -> torch.Tensor:
    """The bicubic baseline: ``(N, C, h, w)`` -> ``h * scale`` x ``w * scale``, clamped to [0, 1]."""
    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)


def _pad_mode(h: int, w: int, pad: int) -> str:
    # Reflect padding needs the image to be larger than the pad; tiny intermediate images replicate.
    return "reflect" if pad < h and pad < w else "replicate"


def filter2d(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve each channel of ``(N, C, H, W)`` with one odd-sized 2-D kernel (reflect padding).

    Through the FFT: blur kernels here are up to 21x21, where a direct depthwise convolution on the
    CPU is several times slower; the difference is ~1e-6, far below one 8-bit level.
    """
    k = kernel.shape[-1]
    pad = k // 2
    h, w = x.shape[-2:]
    xp = F.pad(x, (pad, pad, pad, pad), mode=_pad_mode(h, w, pad))
    size = xp.shape[-2:]
    spectrum = torch.fft.rfft2(xp) * torch.fft.rfft2(torch.flip(kernel, (0, 1)).to(x.dtype), s=size)
    # Circular convolution of the padded picture; the last h x w samples are the linear ones.
    return torch.fft.irfft2(spectrum, s=size)[..., k - 1 :, k - 1 :]


# --------------------------------------------------------------------------- kernels


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ax = np.arange(-(size // 2), size // 2 + 1, dtype=np.float64)
    return np.meshgrid(ax, ax)


def _quadratic(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """x^T Sigma^-1 x on the kernel grid, Sigma = R diag(sx^2, sy^2) R^T (R rotates by theta)."""
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    cov = rot @ np.diag([sigma_x**2, sigma_y**2]) @ rot.T
    inv = np.linalg.inv(cov)
    xx, yy = _grid(size)
    return inv[0, 0] * xx * xx + (inv[0, 1] + inv[1, 0]) * xx * yy + inv[1, 1] * yy * yy


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float, theta: float, beta: float = 1.0) -> np.ndarray:
    """Bivariate (generalized, shape ``beta``) Gaussian kernel, normalised to sum 1. beta = 1 is Gaussian."""
    k = np.exp(-0.5 * np.power(_quadratic(size, sigma_x, sigma_y, theta), beta))
    return k / k.sum()


def plateau_kernel(size: int, sigma_x: float, sigma_y: float, theta: float, beta: float) -> np.ndarray:
    """Bivariate plateau-shaped kernel 1 / (1 + q^beta), normalised to sum 1."""
    k = 1.0 / (np.power(_quadratic(size, sigma_x, sigma_y, theta), beta) + 1.0)
    return k / k.sum()


def sinc_kernel(size: int, omega_c: float) -> np.ndarray:
    """2-D circular low-pass (sinc) kernel with cut-off ``omega_c`` (rad/sample), normalised to sum 1:
    omega_c * J1(omega_c r) / (2 pi r), and omega_c^2 / (4 pi) at the centre."""
    xx, yy = _grid(size)
    r = np.sqrt(xx * xx + yy * yy)
    j1 = torch.special.bessel_j1(torch.from_numpy(omega_c * r)).numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        k = omega_c * j1 / (2 * np.pi * r)
    k[size // 2, size // 2] = omega_c**2 / (4 * np.pi)
    return k / k.sum()


def random_kernel(
    rng: np.random.Generator,
    *,
    max_size: int,
    kernel_list: Sequence[str],
    kernel_prob: Sequence[float],
    sinc_prob: float,
    sigma_range: Sequence[float],
    betag_range: Sequence[float],
    betap_range: Sequence[float],
) -> np.ndarray:
    """One random blur kernel as in Real-ESRGAN: odd size 7..max_size; with ``sinc_prob`` a sinc
    kernel, else a kernel type drawn from ``kernel_list`` with ``kernel_prob``."""
    size = int(rng.choice(np.arange(7, max_size + 1, 2)))
    if rng.uniform() < sinc_prob:
        # Real-ESRGAN: wider cut-off range for larger kernels.
        omega_c = rng.uniform(np.pi / 3, np.pi) if size < 13 else rng.uniform(np.pi / 5, np.pi)
        return sinc_kernel(size, omega_c)
    probs = np.asarray(kernel_prob, dtype=np.float64)
    kind = kernel_list[int(rng.choice(len(kernel_list), p=probs / probs.sum()))]
    sigma_x = rng.uniform(*sigma_range)
    if kind.endswith("iso") and not kind.endswith("aniso"):
        sigma_y, theta = sigma_x, 0.0
    else:
        sigma_y, theta = rng.uniform(*sigma_range), rng.uniform(-np.pi, np.pi)
    if kind.startswith("generalized"):
        beta = rng.uniform(betag_range[0], 1) if rng.uniform() < 0.5 else rng.uniform(1, betag_range[1])
        return gaussian_kernel(size, sigma_x, sigma_y, theta, beta)
    if kind.startswith("plateau"):
        beta = rng.uniform(betap_range[0], 1) if rng.uniform() < 0.5 else rng.uniform(1, betap_range[1])
        return plateau_kernel(size, sigma_x, sigma_y, theta, beta)
    return gaussian_kernel(size, sigma_x, sigma_y, theta)


# --------------------------------------------------------------------------- noise


def add_gaussian_noise(x: torch.Tensor, rng: np.random.Generator, sigma_range: Sequence[float], gray_prob: float) -> torch.Tensor:
    """Gaussian noise, sigma drawn on the 0..255 scale; gray noise (same in all channels) with ``gray_prob``."""
    n, c, h, w = x.shape
    sigma = rng.uniform(*sigma_range) / 255.0
    gray = rng.uniform() < gray_prob
    noise = rng.standard_normal((n, 1 if gray else c, h, w), dtype=np.float32) * np.float32(sigma)
    return x + torch.from_numpy(noise).to(x.dtype)


def add_poisson_noise(x: torch.Tensor, rng: np.random.Generator, scale_range: Sequence[float], gray_prob: float) -> torch.Tensor:
    """Poisson (shot) noise: counts ~ Poisson(x * vals) / vals, vals = the next power of two above the
    number of distinct 8-bit levels in the picture; the noise is scaled by a draw from ``scale_range``."""
    scale = rng.uniform(*scale_range)
    gray = rng.uniform() < gray_prob
    src = x.clamp(0, 1)
    if gray:
        src = (0.299 * src[:, 0:1] + 0.587 * src[:, 1:2] + 0.114 * src[:, 2:3]).clamp(0, 1)
    src8 = src.mul(255).round().div(255)
    levels = max(2, int(torch.unique(src8).numel()))
    vals = 2 ** math.ceil(math.log2(levels))
    counts = rng.poisson(src8.double().numpy() * vals)
    noise = torch.from_numpy(counts / vals).to(x.dtype) - src8
    return x + noise * scale


def add_random_noise(
    x: torch.Tensor,
    rng: np.random.Generator,
    *,
    gaussian_prob: float,
    sigma_range: Sequence[float],
    poisson_range: Sequence[float],
    gray_prob: float,
) -> torch.Tensor:
    if rng.uniform() < gaussian_prob:
        out = add_gaussian_noise(x, rng, sigma_range, gray_prob)
    else:
        out = add_poisson_noise(x, rng, poisson_range, gray_prob)
    return out.clamp(0, 1)


# --------------------------------------------------------------------------- JPEG

# ITU-T T.81 Annex K, tables K.1 (luminance) and K.2 (chrominance).
_JPEG_LUMA = torch.tensor([
    [16, 11, 10, 16, 24, 40, 51, 61],
    [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77],
    [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101],
    [72, 92, 95, 98, 112, 100, 103, 99],
], dtype=torch.float64)
_JPEG_CHROMA = torch.full((8, 8), 99.0, dtype=torch.float64)
_JPEG_CHROMA[:4, :4] = torch.tensor([
    [17, 18, 24, 47],
    [18, 21, 26, 66],
    [24, 26, 56, 99],
    [47, 66, 99, 99],
], dtype=torch.float64)


def jpeg_tables(quality: int) -> tuple[torch.Tensor, torch.Tensor]:
    """libjpeg's quality scaling of the standard tables (jcparam.c): 5000/q below 50, 200 - 2q above."""
    q = min(100, max(1, int(quality)))
    factor = 5000 // q if q < 50 else 200 - 2 * q
    return tuple(torch.clamp(torch.floor((t * factor + 50) / 100), 1, 255) for t in (_JPEG_LUMA, _JPEG_CHROMA))


def _dct_matrix() -> torch.Tensor:
    n = torch.arange(8, dtype=torch.float64)
    d = torch.cos((2 * n[None, :] + 1) * n[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    d[0] /= math.sqrt(2)
    return d  # orthonormal DCT-II; JPEG's FDCT has exactly this scaling


_DCT = _dct_matrix()


def _blocks(plane: torch.Tensor) -> torch.Tensor:
    n, h, w = plane.shape
    return plane.view(n, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)


def _unblocks(blocks: torch.Tensor) -> torch.Tensor:
    n, bh, bw = blocks.shape[:3]
    return blocks.permute(0, 1, 3, 2, 4).reshape(n, bh * 8, bw * 8)


def _code_plane(plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    d = _DCT.to(plane.device, plane.dtype)
    coeffs = d @ _blocks(plane - 128) @ d.T
    q = table.to(plane.device, plane.dtype)
    coeffs = torch.round(coeffs / q) * q
    return _unblocks(d.T @ coeffs @ d) + 128


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Baseline JPEG (4:2:0) compression and decompression of ``(N, 3, H, W)`` in [0, 1]."""
    h, w = x.shape[-2:]
    luma_q, chroma_q = jpeg_tables(quality)
    rgb = x.double().clamp(0, 1).mul(255).round()
    # Edge replication to whole 16x16 MCUs, as encoders do.
    ph, pw = -h % 16, -w % 16
    if ph or pw:
        rgb = F.pad(rgb, (0, pw, 0, ph), mode="replicate")
    r, g, b = rgb.unbind(1)
    y = (0.299 * r + 0.587 * g + 0.114 * b).round()
    cb = (-0.168736 * r - 0.331264 * g + 0.5 * b + 128).round()
    cr = (0.5 * r - 0.418688 * g - 0.081312 * b + 128).round()
    chroma = F.avg_pool2d(torch.stack((cb, cr), 1), 2).round()
    y = _code_plane(y, luma_q).clamp(0, 255).round()
    cb, cr = (_code_plane(chroma[:, i], chroma_q).clamp(0, 255).round() for i in range(2))
    cb = cb.repeat_interleave(2, -2).repeat_interleave(2, -1) - 128
    cr = cr.repeat_interleave(2, -2).repeat_interleave(2, -1) - 128
    out = torch.stack((y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb), 1)
    out = out.round().clamp(0, 255)[..., :h, :w] / 255
    return out.to(x.dtype)


# --------------------------------------------------------------------------- Real-ESRGAN


_RESIZE_MODES = ("area", "bilinear", "bicubic")


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    size = (max(1, size[0]), max(1, size[1]))
    if mode == "area":
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


class RealESRGANDegradation:
    """Real-ESRGAN's second-order degradation of one HR patch ``(3, H, W)`` -> ``(3, H/scale, W/scale)``."""

    def __init__(self, params: DegradationConfig, scale: int):
        self.p = params
        self.scale = scale

    def _kernel(self, rng: np.random.Generator, second: bool) -> np.ndarray:
        p = self.p
        if second:
            return random_kernel(
                rng, max_size=p.blur_kernel_size, kernel_list=p.kernel_list2, kernel_prob=p.kernel_prob2,
                sinc_prob=p.sinc_prob2, sigma_range=p.blur_sigma2, betag_range=p.betag_range2, betap_range=p.betap_range2,
            )
        return random_kernel(
            rng, max_size=p.blur_kernel_size, kernel_list=p.kernel_list, kernel_prob=p.kernel_prob,
            sinc_prob=p.sinc_prob, sigma_range=p.blur_sigma, betag_range=p.betag_range, betap_range=p.betap_range,
        )

    @staticmethod
    def _resize_factor(rng: np.random.Generator, probs: Sequence[float], lo_hi: Sequence[float]) -> float:
        p = np.asarray(probs, dtype=np.float64)
        kind = int(rng.choice(3, p=p / p.sum()))  # up, down, keep
        if kind == 0:
            return rng.uniform(1, lo_hi[1])
        if kind == 1:
            return rng.uniform(lo_hi[0], 1)
        return 1.0

    def _final_sinc(self, rng: np.random.Generator, x: torch.Tensor) -> torch.Tensor:
        size = int(rng.choice(np.arange(7, self.p.blur_kernel_size + 1, 2)))
        if rng.uniform() < self.p.final_sinc_prob:
            return filter2d(x, torch.from_numpy(sinc_kernel(size, rng.uniform(np.pi / 3, np.pi))))
        return x  # a pulse kernel: no filtering

    def __call__(self, hr: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        p, s = self.p, self.scale
        x, squeeze = _as4d(hr.float())
        ori_h, ori_w = x.shape[-2:]
        out_size = (ori_h // s, ori_w // s)

        # ---- first order
        x = filter2d(x, torch.from_numpy(self._kernel(rng, second=False)))
        f = self._resize_factor(rng, p.resize_prob, p.resize_range)
        mode = _RESIZE_MODES[int(rng.integers(3))]
        x = _resize(x, (int(x.shape[-2] * f), int(x.shape[-1] * f)), mode)
        x = add_random_noise(x, rng, gaussian_prob=p.gaussian_noise_prob, sigma_range=p.noise_range,
                             poisson_range=p.poisson_scale_range, gray_prob=p.gray_noise_prob)
        x = jpeg(x, round(rng.uniform(*p.jpeg_range)))

        # ---- second order
        if rng.uniform() < p.second_blur_prob:
            x = filter2d(x, torch.from_numpy(self._kernel(rng, second=True)))
        f = self._resize_factor(rng, p.resize_prob2, p.resize_range2)
        mode = _RESIZE_MODES[int(rng.integers(3))]
        x = _resize(x, (int(ori_h / s * f), int(ori_w / s * f)), mode)
        x = add_random_noise(x, rng, gaussian_prob=p.gaussian_noise_prob2, sigma_range=p.noise_range2,
                             poisson_range=p.poisson_scale_range2, gray_prob=p.gray_noise_prob2)
        # Resize back + sinc, and JPEG, in random order (both orders occur in real pictures).
        quality = round(rng.uniform(*p.jpeg_range2))
        if rng.uniform() < 0.5:
            x = _resize(x, out_size, _RESIZE_MODES[int(rng.integers(3))])
            x = self._final_sinc(rng, x)
            x = jpeg(x.clamp(0, 1), quality)
        else:
            x = jpeg(x.clamp(0, 1), quality)
            x = _resize(x, out_size, _RESIZE_MODES[int(rng.integers(3))])
            x = self._final_sinc(rng, x)
        x = quantize8(x)
        return x[0] if squeeze else x


class BicubicDegradation:
    """Antialiased bicubic downscaling (no randomness)."""

    def __init__(self, scale: int):
        self.scale = scale

    def __call__(self, hr: torch.Tensor, rng: np.random.Generator | None = None) -> torch.Tensor:
        return bicubic_downsample(hr, self.scale)


def make_degradation(kind: str, scale: int, params: DegradationConfig | None = None):
    """``bicubic`` or ``realesrgan``: a callable ``(hr (3, H, W), rng) -> lr (3, H/scale, W/scale)``."""
    if kind == "bicubic":
        return BicubicDegradation(scale)
    if kind == "realesrgan":
        return RealESRGANDegradation(params or DegradationConfig(), scale)
    raise ValueError(f"unknown degradation {kind!r}; known: bicubic, realesrgan")
