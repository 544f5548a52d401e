"""Y'CbCr planes <-> RGB float, batched, for any bit depth and 4:2:0 / 4:2:2 / 4:4:0 / 4:4:4.

Code values follow ITU-R BT.601/709/2020 (limited range) and JPEG/JFIF (full range) scaled to
``bits``; the matrix is the non-constant-luminance one built from (Kr, Kb), so BT.601, BT.709,
BT.2020 NCL, SMPTE 240M and FCC are the same code with different constants.

Chroma siting is treated as *centre* for every axis: a chroma sample sits midway between the two
luma samples it covers. MPEG-2/H.264 "left" siting differs horizontally by a quarter of a chroma
sample, which is below what an upscaler's output can show; what matters here is that the
upsampler (:func:`yuv_to_rgb`) and the downsampler (:func:`rgb_to_yuv`) agree: the box average of
the upsampled chroma is the original chroma, so a frame that goes through both unchanged comes back
to within rounding (except where :func:`rgb_to_yuv` clamps RGB that lies outside the cube).
"""

from __future__ import annotations

import torch

from .convert import max_value

__all__ = ["rgb_to_yuv", "yuv_to_rgb"]


def _code_scale(bits: int, full_range: bool) -> tuple[float, float, float, float]:
    """(luma offset, luma scale, chroma offset, chroma scale): ``code = offset + scale * value``.

    Limited range: black 16, white 235, chroma 128 +- 112, all times 2^(bits-8) (so 10-bit black
    is 64). Full range: 0 .. 2^bits-1 for luma and ``2^(bits-1) + (2^bits-1) * C'`` for chroma,
    as JPEG and FFmpeg's "pc" range define it.
    """
    if not 8 <= bits <= 16:
        raise ValueError(f"bits must be 8..16, got {bits}")
    if full_range:
        top = float(max_value(bits))
        return 0.0, top, float(1 << (bits - 1)), top
    step = float(1 << (bits - 8))
    return 16.0 * step, 219.0 * step, 128.0 * step, 224.0 * step


def _subsampling(full: int, reduced: int, axis: str) -> int:
    """2 when ``reduced`` is the chroma size of a halved axis of length ``full``, 1 when equal."""
    if reduced == full:
        return 1
    if reduced == (full + 1) // 2:
        return 2
    raise ValueError(f"chroma {axis} {reduced} fits neither {full} nor {(full + 1) // 2}")


def _upsample2(c: torch.Tensor, dim: int, length: int) -> torch.Tensor:
    """Double ``c`` along ``dim`` (negative index) and crop to ``length``; mass preserving.

    Sample ``c[i]`` becomes ``c[i] -+ (c[i+1] - c[i-1]) / 8`` at positions 2i, 2i+1: linear
    interpolation for centre-sited chroma, and the pair averages back to ``c[i]`` exactly, so a box
    downsample undoes it. Borders replicate the edge sample. An odd ``length`` leaves the last
    sample alone on its position; its slope is zeroed so that position carries ``c[-1]`` itself.
    """
    assert dim in (-1, -2)
    n = c.shape[dim]
    if n == 1:
        d = torch.zeros_like(c)
    else:
        # Central difference inside, one-sided (edge replicated) at both ends.
        d = torch.empty_like(c)
        torch.sub(c.narrow(dim, 2, n - 2), c.narrow(dim, 0, n - 2), out=d.narrow(dim, 1, n - 2))
        torch.sub(c.narrow(dim, 1, 1), c.narrow(dim, 0, 1), out=d.narrow(dim, 0, 1))
        torch.sub(c.narrow(dim, n - 1, 1), c.narrow(dim, n - 2, 1), out=d.narrow(dim, n - 1, 1))
        if length % 2:
            d.narrow(dim, n - 1, 1).zero_()
    # One fused op writes both phases: out[..., i, k, ...] = c[i] + d[i] * (-1/8, +1/8)[k].
    sign = torch.full((2,), 0.125, dtype=c.dtype, device=c.device)  # no host-to-device copy
    sign[0] = -0.125
    if dim == -2:
        sign = sign.view(2, 1)
    pairs = torch.addcmul(c.unsqueeze(dim), d.unsqueeze(dim), sign)
    shape = list(c.shape)
    shape[dim] = 2 * n
    return pairs.view(shape).narrow(dim, 0, length)


def yuv_to_rgb(
    y: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    *,
    kr: float,
    kb: float,
    bits: int,
    full_range: bool,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Integer Y, Cb (``u``), Cr (``v``) planes to RGB float (N, 3, H, W), *not* clamped.

    ``y`` is (N, H, W); ``u`` and ``v`` are (N, Hc, Wc) with Hc in {H, ceil(H/2)} and Wc in
    {W, ceil(W/2)}, which tells the subsampling. Values a little outside [0, 1] (legal Y'CbCr
    outside the RGB cube, chroma interpolation overshoot) are kept: clamping here would make the
    round trip through :func:`rgb_to_yuv` lossy before the model ever sees the frame. Computed in
    float32, cast to ``dtype`` at the end.
    """
    if y.dim() != 3 or u.shape != v.shape or u.dim() != 3 or u.shape[0] != y.shape[0]:
        raise ValueError(f"expected y (N,H,W) and u, v (N,Hc,Wc), got {y.shape}, {u.shape}, {v.shape}")
    n, h, w = y.shape
    sub_y = _subsampling(h, u.shape[1], "height")
    sub_x = _subsampling(w, u.shape[2], "width")
    y_off, y_scale, c_off, c_scale = _code_scale(bits, full_range)
    kg = 1.0 - kr - kb

    luma = y.to(torch.float32)
    if luma is y:  # float32 input: do not scale the caller's tensor in place
        luma = luma.clone()
    luma.sub_(y_off).mul_(1.0 / y_scale)

    # Cb', Cr' at chroma resolution in one (N, 2, Hc, Wc) tensor: one upsample pass for both.
    chroma = torch.stack((u, v), dim=1).to(torch.float32)
    chroma.sub_(c_off).mul_(1.0 / c_scale)
    if sub_y == 2:
        chroma = _upsample2(chroma, -2, h)
    if sub_x == 2:
        chroma = _upsample2(chroma, -1, w)
    cb, cr = chroma.unbind(1)

    # R = Y' + 2(1-Kr) Cr', B = Y' + 2(1-Kb) Cb', G = (Y' - Kr R - Kb B) / Kg expanded in Cb', Cr'.
    out = torch.empty((n, 3, h, w), dtype=torch.float32, device=y.device)
    torch.add(luma, cr, alpha=2.0 * (1.0 - kr), out=out[:, 0])
    torch.add(luma, cr, alpha=-2.0 * kr * (1.0 - kr) / kg, out=out[:, 1])
    out[:, 1].add_(cb, alpha=-2.0 * kb * (1.0 - kb) / kg)
    torch.add(luma, cb, alpha=2.0 * (1.0 - kb), out=out[:, 2])
    return out.to(dtype)


def _box_average(x: torch.Tensor, sub_y: int, sub_x: int) -> torch.Tensor:
    """Mean over each ``sub_y`` x ``sub_x`` block; a block cut by an odd edge averages what exists.

    Even sides (every output frame but a rare odd one): sums of the strided halves, about 7x
    faster than ``avg_pool2d`` on one CPU thread (0.06 vs 0.39 ms for a 384x256 RGB frame), which
    is what a CPU run's compute threads use. Odd sides: ``avg_pool2d`` with ``ceil_mode`` and no
    padding, which divides the edge windows by the number of samples they really hold.
    """
    if sub_y == 1 and sub_x == 1:
        return x
    height, width = x.shape[-2:]
    if height % sub_y or width % sub_x:
        return torch.nn.functional.avg_pool2d(x, (sub_y, sub_x), ceil_mode=True)
    if sub_y == 2:
        x = x[..., 0::2, :] + x[..., 1::2, :]
    if sub_x == 2:
        x = x[..., 0::2] + x[..., 1::2]
    return x.mul_(1.0 / (sub_y * sub_x))  # a new tensor by now, never the caller's


def rgb_to_yuv(
    rgb: torch.Tensor,
    *,
    kr: float,
    kb: float,
    bits: int,
    full_range: bool,
    chroma: tuple[int, int],
    clamp: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RGB float (N, 3, H, W) to integer Y, Cb, Cr planes; ``chroma`` = (sub_y, sub_x), each 1 or 2.

    RGB is clamped to [0, 1] first (network outputs overshoot) unless ``clamp`` is False. For a
    frame that never left YUV the clamp is the one lossy step: subsampled chroma interpolated back
    to full resolution puts saturated edges a little outside the RGB cube, and clamping moves those
    pixels by a few codes; with ``clamp=False``, :func:`yuv_to_rgb` followed by this function is
    exact to rounding. Chroma is box-averaged over each 2 (or 2x2) block, the inverse of
    :func:`yuv_to_rgb`'s upsampler; a block cut by an odd edge averages the samples it has. Codes
    are ``clamp(floor(v + 0.5), 0, 2^bits - 1)``; uint8 for 8 bits, int32 for more (as
    :func:`vsr.kernels.convert.quantize`).
    """
    sub_y, sub_x = chroma
    if sub_y not in (1, 2) or sub_x not in (1, 2):
        raise ValueError(f"chroma subsampling must be 1 or 2 per axis, got {chroma}")
    if rgb.dim() != 4 or rgb.shape[1] != 3:
        raise ValueError(f"expected rgb (N,3,H,W), got {tuple(rgb.shape)}")
    y_off, y_scale, c_off, c_scale = _code_scale(bits, full_range)
    kg = 1.0 - kr - kb
    top = max_value(bits)
    out_dtype = torch.uint8 if bits <= 8 else torch.int32

    x = rgb.to(torch.float32)
    if clamp:
        x = x.clamp_(0.0, 1.0) if x is not rgb else x.clamp(0.0, 1.0)  # never the caller's tensor
    r, g, b = x.unbind(1)
    luma = r * kr
    luma.add_(g, alpha=kg).add_(b, alpha=kb)  # Y' in [0, 1]

    # Chroma is linear in RGB, so averaging RGB and converting at chroma resolution equals
    # averaging full-resolution Cb/Cr, with less work at full resolution.
    if sub_y == 1 and sub_x == 1:
        rs, bs, ys = r, b, luma
    else:
        rs, gs, bs = _box_average(x, sub_y, sub_x).unbind(1)
        ys = rs * kr
        ys.add_(gs, alpha=kg).add_(bs, alpha=kb)
    # The + 0.5 of floor(v + 0.5) is folded into the offsets.
    cb = torch.sub(bs, ys).mul_(c_scale / (2.0 * (1.0 - kb))).add_(c_off + 0.5)
    cr = torch.sub(rs, ys).mul_(c_scale / (2.0 * (1.0 - kr))).add_(c_off + 0.5)
    luma.mul_(y_scale).add_(y_off + 0.5)

    return tuple(p.floor_().clamp_(0, top).to(out_dtype) for p in (luma, cb, cr))  # type: ignore[return-value]
