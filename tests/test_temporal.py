"""tOF and the flow-warping error (vsr.perceptual.temporal) on clips panned over a photograph.

The clips are crops of scikit-image's astronaut moved by whole pixels per frame (the ground
truth), and the same with per-frame noise or a flickering gain (outputs that flicker): exact,
deterministic numpy arrays, no codec in between.
"""

from __future__ import annotations

import itertools
import math
import sys

import numpy as np
import pytest

from vsr.errors import BackendUnavailable
from vsr.perceptual.temporal import occluded, tof, tof_crop, warp_error, warp_error_pair

cv2 = pytest.importorskip("cv2", reason='needs OpenCV: pip install "vsr[metrics]"')


def pan(frames: int = 10, size: tuple[int, int] = (96, 128), step: tuple[int, int] = (1, 3),
        origin: tuple[int, int] = (180, 150)) -> list[np.ndarray]:
    """(h, w) crops of the astronaut, the window moving ``step`` (rows, columns) per frame."""
    from skimage import data

    img = data.astronaut()
    h, w = size
    return [np.ascontiguousarray(img[origin[0] + t * step[0]: origin[0] + t * step[0] + h,
                                     origin[1] + t * step[1]: origin[1] + t * step[1] + w]) for t in range(frames)]


def noisy(frames: list[np.ndarray], amplitude: int, seed: int) -> list[np.ndarray]:
    """Independent uniform integer noise in [-amplitude, amplitude] on every frame."""
    rng = np.random.default_rng(seed)
    return [np.clip(f.astype(np.int16) + rng.integers(-amplitude, amplitude + 1, f.shape), 0, 255).astype(np.uint8)
            for f in frames]


def gain_flicker(frames: list[np.ndarray]) -> list[np.ndarray]:
    """Brightness alternating 0.9x / 1.1x."""
    return [np.clip(f.astype(np.float64) * (1.1 if t % 2 else 0.9), 0, 255).round().astype(np.uint8)
            for t, f in enumerate(frames)]


CLIPS = {
    "identical": lambda: pan(),
    "noise4": lambda: noisy(pan(), 4, 1),
    "noise12": lambda: noisy(pan(), 12, 1),
    "gain": lambda: gain_flicker(pan()),
}

# TecoGAN's own metrics.py (thunil/TecoGAN at bc747a4651c1e08bd0a73bed08c4cb9fac99b4d5), run once
# with runpy on PNGs of these clips (cv2.imwrite; outputs = the clip named, targets = pan()), its
# LPIPSmodels stubbed (LPIPS plays no part in tOF) and skimage.measure.compare_ssim aliased to
# skimage.metrics.structural_similarity (removed from scikit-image; SSIM plays no part either);
# the value is its sum_dict["FrameAvg_tOF"].  Python 3.11.7, opencv-python 5.1.0, numpy 2.4.6,
# pandas 3.1.2, absl-py 2.5.1, scikit-image 0.26.0.  Ours agreed to 6e-9 (its per-frame means
# are float32); the tolerance leaves room for other OpenCV builds' Farneback.
TECOGAN_TOF = {"identical": 0.0, "noise4": 0.052236538380384445, "noise12": 0.1798062026500702, "gain": 0.13148267567157745}


@pytest.mark.parametrize("clip", sorted(TECOGAN_TOF))
def test_tof_matches_tecogan(clip):
    assert tof(CLIPS[clip](), pan()) == pytest.approx(TECOGAN_TOF[clip], rel=1e-3, abs=1e-9)


def test_tof_is_zero_for_identical_clips_and_grows_with_flicker():
    truth = pan()
    assert tof(truth, truth) == 0.0
    assert 0 < tof(noisy(truth, 4, 1), truth) < tof(noisy(truth, 12, 1), truth)


def test_tof_reads_iterators_once():
    truth, out = pan(), noisy(pan(), 12, 1)
    assert tof(iter(out), (f for f in truth)) == tof(out, truth)


def test_tof_frame_count_and_shapes():
    truth, out = pan(6), noisy(pan(6), 12, 1)
    assert tof(out, truth) > 0  # 6 frames: the one pair (2, 3) after cutting 2 at each end
    with pytest.raises(ValueError, match="at least 6 frames, got 5"):
        tof(out[:5], truth[:5])
    with pytest.raises(ValueError):
        tof(out, truth[:5])  # zip(strict=True): different lengths
    with pytest.raises(ValueError, match="one size"):
        tof(out, [f[:, :120] for f in truth])
    with pytest.raises(ValueError, match="uint8 RGB"):
        tof([f.astype(np.float32) for f in out], truth)
    with pytest.raises(ValueError, match="at least 48x48"):
        tof([f[:40] for f in out], [f[:40] for f in truth])


def test_tof_crop_is_tecogans():
    # crop_8x8: multiples of 32, at least 16 short of the frame, centred.
    assert tof_crop(96, 128) == (slice(16, 80), slice(16, 112))
    assert tof_crop(576, 720) == (slice(16, 560), slice(8, 712))  # 544 x 704
    assert tof_crop(48, 48) == (slice(8, 40), slice(8, 40))


def test_warp_error_of_a_pan():
    truth = pan()
    still = warp_error(truth)
    light, heavy = warp_error(noisy(truth, 4, 1), truth), warp_error(noisy(truth, 12, 1), truth)
    unwarped = np.mean([np.mean(((b.astype(np.float64) - a) / 255) ** 2) for a, b in itertools.pairwise(truth)])
    # The clip itself under a pure translation: only the flow's own error (measured 8.4e-6);
    # per-frame noise adds its variance (4 levels: 1.8e-4, 12 levels: 1.2e-3).
    assert still < 2e-5
    assert still * 10 < light < heavy
    # Warping takes the motion out: the frame difference without it is 1.5e-2.
    assert still < unwarped / 1000 and heavy < unwarped / 10
    # Without references the flow comes from the outputs themselves.
    assert warp_error(truth, truth) == still
    assert warp_error(gain_flicker(truth), truth) > heavy


def test_warp_error_with_references_at_another_size():
    truth = pan()
    up = [cv2.resize(f, (256, 192), interpolation=cv2.INTER_CUBIC) for f in truth]
    # Flow on the 128x96 input, resized to the 256x192 output with its vectors doubled.
    still = warp_error(up, truth)
    assert still < 3e-5
    assert warp_error(noisy(up, 12, 1), truth) > 30 * still


def test_warp_error_is_the_mean_of_its_pairs():
    clip = noisy(pan(5), 6, 2)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    dis.setFinestScale(0)
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in clip]
    pairs = [warp_error_pair(clip[t - 1], clip[t], dis.calc(grey[t - 1], grey[t], None), dis.calc(grey[t], grey[t - 1], None))
             for t in range(1, len(clip))]
    assert warp_error(iter(clip)) == pytest.approx(np.mean(pairs), rel=1e-12)
    with pytest.raises(ValueError, match="at least 2 frames"):
        warp_error(clip[:1])


def _sample(img: np.ndarray, x: float, y: float) -> np.ndarray:
    """Bilinear sample at (x, y), edges replicated (FlowNet2's Resample2d clamps the same way)."""
    h, w = img.shape[:2]
    x0, y0 = math.floor(x), math.floor(y)
    ax, ay = x - x0, y - y0

    def px(yy: int, xx: int) -> np.ndarray:
        return img[min(max(yy, 0), h - 1), min(max(xx, 0), w - 1)].astype(np.float64)

    return (1 - ay) * ((1 - ax) * px(y0, x0) + ax * px(y0, x0 + 1)) + ay * ((1 - ax) * px(y0 + 1, x0) + ax * px(y0 + 1, x0 + 1))


def _slow_pair(prev: np.ndarray, cur: np.ndarray, fw: np.ndarray, bw: np.ndarray) -> float:
    """Lai et al.'s warping error of one pair, pixel by pixel, from the paper's formulas."""
    h, w = fw.shape[:2]
    prev = prev.astype(np.float64) / 255
    cur = cur.astype(np.float64) / 255
    total, count = 0.0, 0
    for y in range(h):
        for x in range(w):
            f = fw[y, x].astype(np.float64)
            tx, ty = x + f[0], y + f[1]
            b = _sample(bw, tx, ty)
            occ = ((f + b) ** 2).sum() > 0.01 * ((f**2).sum() + (b**2).sum()) + 0.5
            grad = 0.0
            if x + 1 < w:
                grad += ((f - fw[y, x + 1]) ** 2).sum()
            if y + 1 < h:
                grad += ((f - fw[y + 1, x]) ** 2).sum()
            occ = occ or grad > 0.01 * (f**2).sum() + 0.002
            occ = occ or not (0 <= tx <= w - 1 and 0 <= ty <= h - 1)
            if not occ:
                total += ((_sample(cur, tx, ty) - prev[y, x]) ** 2).sum()
                count += 3
    return total / count if count else 0.0


def test_warp_error_pair_against_a_slow_loop():
    clip = noisy(pan(4, size=(32, 48), step=(1, 2)), 6, 3)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    dis.setFinestScale(0)
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in clip]
    for t in range(1, len(clip)):
        # Flows on a 1/32-pixel grid: OpenCV 4's remap rounds sample positions to 1/32 pixel,
        # OpenCV 5's does not; on the grid both sample exactly where the loop does.
        fw = np.round(dis.calc(grey[t - 1], grey[t], None) * 32) / 32
        bw = np.round(dis.calc(grey[t], grey[t - 1], None) * 32) / 32
        assert occluded(fw, bw).mean() < 0.5  # most pixels take part
        assert warp_error_pair(clip[t - 1], clip[t], fw, bw) == pytest.approx(_slow_pair(clip[t - 1], clip[t], fw, bw), rel=1e-6)


def test_occlusion_mask():
    h, w = 20, 30
    fw = np.zeros((h, w, 2), np.float32)
    fw[...] = (-3, -1)
    bw = -fw
    occ = occluded(fw, bw)
    # A steady pan: only what leaves the frame (3 columns on the left, 1 row on top) is occluded.
    expected = np.zeros((h, w), bool)
    expected[:, :3] = expected[:1, :] = True
    np.testing.assert_array_equal(occ, expected)
    # A moving block: its edge is a motion boundary, and where the backward flow does not
    # bring a pixel back (the background it uncovers), it is occluded.
    fw2 = np.zeros((h, w, 2), np.float32)
    fw2[5:15, 10:20] = (4, 0)
    occ2 = occluded(fw2, np.zeros_like(fw2))
    assert occ2[5:15, 10:20].all()  # |F + B(x+F)|^2 = 16 > 0.01 * 16 + 0.5
    assert occ2[10, 9] and not occ2[10, 5]  # the boundary column just left of the block; far background clean


def test_missing_opencv_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # "import cv2" raises ImportError
    with pytest.raises(BackendUnavailable, match=r'pip install "vsr\[metrics\]"'):
        tof(pan(6), pan(6))
    with pytest.raises(BackendUnavailable, match=r'pip install "vsr\[metrics\]"'):
        warp_error(pan(2))
