"""NIQE (vsr.perceptual.niqe) against MATLAB's published values and BasicSR's code.

The parameters (LIVE's pristine model) come out of the basicsr 1.4.2 sdist through the real
``vsr models fetch perceptual`` (the ``perceptual_home`` fixture), the TID2013 pictures out of the
pyiqa 0.1.16 wheel (the ``tid2013`` fixture; both fetched with pip and checked by sha256).  NIQE is ill-conditioned on pictures with
flat areas (see the docstring of vsr/perceptual/niqe.py): the tolerances below are the measured
differences, per picture, with a margin.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from vsr.perceptual import niqe as niqe_module
from vsr.perceptual.matlab import imresize, rgb2gray, rgb2y
from vsr.perceptual.niqe import NiqeParams, default_params, niqe

@pytest.fixture(scope="module")
def params(perceptual_home) -> NiqeParams:
    """LIVE's pristine model: basicsr 1.4.2's niqe_pris_params.npz, as `vsr models fetch
    perceptual` converts it (the real fetch, once per session)."""
    return default_params()


# MATLAB (LIVE's computequality.m after rgb2gray), chaofengc/IQA-PyTorch
# ResultsCalibra/results_official.csv, row "niqe" (on the distorted pictures; the reference
# pictures have no published NIQE).  Tolerance: the measured difference with a margin.
# I04 has no flat 7x7 window: float64 gives MATLAB's value to 4e-14.  The others have flat areas,
# where MATLAB's value depends on the rounding residues of its imfilter (module docstring); ours
# (the exact-arithmetic value) differs by: I03 -0.0077, I06 -0.0011, I08 +0.0180, I19 +0.0303.
# For comparison, BasicSR's float32 code gives I03 15.6612, I06 3.2343, I08 3.1988, I19 8.6691
# (with OpenCV's grey weights) and its float64 path 9.02 on I19.
TID2013_MATLAB = {
    "I03": (15.7536293917814, 0.02),
    "I04": (3.65492152353770, 1e-9),
    "I06": (3.23547743716998, 3e-3),
    "I08": (3.18403333858339, 0.03),
    "I19": (8.63519663862637, 0.05),
}


@pytest.mark.parametrize("name", sorted(TID2013_MATLAB))
def test_tid2013_matlab_values(params, tid2013, name):
    value, tolerance = TID2013_MATLAB[name]
    assert niqe(tid2013["dist_dir"][name], params, convert="gray") == pytest.approx(value, abs=tolerance)


def test_pristine_pictures_score_better_where_the_distortion_is_strong(params, tid2013):
    scores = {name: (niqe(tid2013["dist_dir"][name], params, convert="gray"), niqe(pic, params, convert="gray"))
              for name, pic in tid2013["ref_dir"].items()}
    for name in ("I03", "I19"):  # the two heavy distortions (15.7 and 8.6 against 5.1 and 2.8)
        distorted, pristine = scores[name]
        assert distorted > pristine + 3


# BasicSR 1.4.2's own calculate_niqe(img, crop_border, input_order='HWC', convert_to='y') on BGR
# uint8 (camera: input_order='HW' on the grey plane), run once from the unpacked sdist
# (basicsr/metrics/niqe.py with a stub package __init__ so only the metric loads) with Python
# 3.11.7, numpy 2.4.6, scipy 1.17.1, torch 2.13.0+cpu, opencv-python 5.1.0, scikit-image 0.26.0.
# Its float32 filtering differs from our float64 by up to 6.4e-4 (astronaut), its Y rounding in
# one pixel of astronaut; everywhere else we agree to 2e-5.
BASICSR_Y = [
    ("astronaut", 0, 3.0649476661849033, 2e-3),
    ("coffee", 0, 4.115241615372864, 1e-4),
    ("chelsea", 0, 2.625524381291432, 1e-4),
    ("chelsea", 4, 2.6893133463073955, 1e-4),
    ("rocket", 0, 6.9691549749810555, 1e-4),
    ("camera", 0, 3.0962066193457405, 1e-4),
]


@pytest.mark.parametrize(("photo", "crop_border", "value", "tolerance"), BASICSR_Y)
def test_basicsr_code_on_photographs(params, photo, crop_border, value, tolerance):
    from skimage import data

    picture = getattr(data, photo)()
    assert niqe(picture, params, crop_border=crop_border) == pytest.approx(value, abs=tolerance)


def test_flat_areas_do_not_depend_on_the_filters_rounding(params, tid2013):
    # The same Gaussian window built another way (outer product of the normalised 1-D kernel)
    # differs from the npz's in the last bit of many taps.  Without zeroing flat-window residues
    # the two windows give I19 9.087 and 9.045 (and other windows 8.81 to 9.13); with it, 8.665
    # for both.
    g = np.exp(-np.arange(-3, 4) ** 2 / (2 * (7 / 6) ** 2))
    g /= g.sum()
    other = NiqeParams(mu=params.mu, cov=params.cov, window=np.outer(g, g))
    assert not np.array_equal(other.window, params.window)
    picture = tid2013["dist_dir"]["I19"]
    assert niqe(picture, other, convert="gray") == pytest.approx(niqe(picture, params, convert="gray"), abs=1e-9)


def test_input_forms_agree(params):
    from skimage import data

    rgb = data.chelsea()
    expected = niqe(rgb, params)
    assert niqe(rgb.astype(np.float32) / 255, params) == pytest.approx(expected, abs=1e-12)
    y = rgb2y(rgb).astype(np.uint8)
    assert niqe(y, params) == expected
    assert niqe(y[..., None], params) == expected
    assert niqe(rgb2gray(rgb).astype(np.uint8), params) == niqe(rgb, params, convert="gray")


def test_crop_border_and_block_grid(params):
    from skimage import data

    rgb = data.coffee()  # 400x600: 4x6 blocks
    assert niqe(rgb, params, crop_border=4) == niqe(rgb[4:-4, 4:-4], params)
    # Only whole blocks from the top left count: rows and columns beyond them change nothing.
    assert niqe(rgb[:384, :576], params) == niqe(rgb, params)


def test_bad_input(params):
    rgb = np.zeros((192, 96, 3), np.uint8)
    with pytest.raises(ValueError, match="at least two 96x96 blocks"):
        niqe(rgb[:96], params)
    with pytest.raises(ValueError, match="at least two 96x96 blocks"):
        niqe(rgb, params, crop_border=1)
    with pytest.raises(ValueError, match='convert must be "y" or "gray"'):
        niqe(rgb, params, convert="luma")
    with pytest.raises(ValueError, match="uint8 or float"):
        niqe(rgb.astype(np.int32), params)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        niqe(np.zeros((192, 96, 4), np.uint8), params)


def test_a_flat_picture_has_no_score(params, caplog):
    assert np.isnan(niqe(np.full((192, 192, 3), 128, np.uint8), params))
    assert "NIQE is undefined" in caplog.text


def test_float32_parameters_change_little(params, tid2013):
    # What a float32 copy of the parameters would do (the window is renormalised to sum 1, as
    # computequality.m does; without that, flat areas move I19 by 0.4).  Measured: 6e-6.
    p32 = NiqeParams(mu=params.mu.astype(np.float32), cov=params.cov.astype(np.float32), window=params.window.astype(np.float32))
    picture = tid2013["dist_dir"]["I19"]
    assert niqe(picture, p32, convert="gray") == pytest.approx(niqe(picture, params, convert="gray"), abs=1e-4)


def test_params_from_arrays(params):
    import torch

    arrays = {"mu_pris_param": params.mu[None], "cov_pris_param": params.cov, "gaussian_window": params.window}
    again = NiqeParams.from_arrays({k: torch.from_numpy(v.copy()) for k, v in arrays.items()})
    for got, want in ((again.mu, params.mu), (again.cov, params.cov), (again.window, params.window)):
        assert got.dtype == np.float64 and not got.flags.writeable
        np.testing.assert_allclose(got, want, rtol=1e-15, atol=0)
    with pytest.raises(KeyError, match="gaussian_window"):
        NiqeParams.from_arrays({k: v for k, v in arrays.items() if k != "gaussian_window"})
    with pytest.raises(ValueError, match="shape"):
        NiqeParams.from_arrays({**arrays, "cov_pris_param": params.cov[:35]})


def test_default_params_come_from_fetch(params, monkeypatch):
    calls = []

    def load(name):
        calls.append(name)
        return {"mu_pris_param": params.mu[None], "cov_pris_param": params.cov, "gaussian_window": params.window}

    fake = types.ModuleType("vsr.perceptual.fetch")
    fake.load = load
    monkeypatch.setitem(sys.modules, "vsr.perceptual.fetch", fake)
    got = default_params()
    assert calls == ["niqe"] and np.array_equal(got.cov, params.cov)


# BasicSR 1.4.2's basicsr/utils/matlab_functions.py imresize(x, scale, antialiasing=True)
# (float32, torch 2.13.0+cpu) on x = sin(0.7 * arange(63)).reshape(9, 7), run once as above.
IMRESIZE_HALF = [
    [-0.2455256, 0.5829238, 0.4181189, -0.2111391],
    [-0.0096701, -0.5975353, -0.1783428, 0.4135956],
    [0.2332103, 0.5745515, -0.0429249, -0.5666074],
    [-0.4422693, -0.4304673, 0.2883466, 0.626351],
    [0.8502989, -0.3111028, -0.9118806, -0.4299327],
]
IMRESIZE_DOUBLE_TOP_LEFT = [
    [0.0291341, 0.2212184, 0.6053872, 0.8790321],
    [-0.2707121, -0.1009852, 0.2384687, 0.5181077],
    [-0.8704045, -0.7453924, -0.4953684, -0.2037415],
    [-0.9694191, -0.9356566, -0.8681315, -0.6956261],
    [-0.5677564, -0.6717778, -0.8798207, -0.9575464],
]


def test_imresize_matches_basicsr():
    x = np.sin(0.7 * np.arange(63, dtype=np.float64).reshape(9, 7))
    half = imresize(x, 0.5)
    assert half.shape == (5, 4)
    np.testing.assert_allclose(half, IMRESIZE_HALF, atol=2e-7)
    double = imresize(x, 2)
    assert double.shape == (18, 14)
    np.testing.assert_allclose(double[:5, :4], IMRESIZE_DOUBLE_TOP_LEFT, atol=2e-7)
    # Channels are resized alike; a constant stays constant (the weights sum to 1).
    rgb = np.stack([x, 2 * x, np.ones_like(x)], axis=-1)
    out = imresize(rgb, 0.5)
    np.testing.assert_allclose(out[..., 1], 2 * half, atol=1e-12)
    np.testing.assert_allclose(out[..., 2], 1.0, atol=1e-12)


def test_matlab_colour_conversions():
    rgb = np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0], [10, 200, 30], [0, 42, 253]]], np.uint8)
    np.testing.assert_array_equal(rgb2y(rgb), [[235, 16, 81, 122, 62]])
    # rgb2gray's weights are 0.298936, 0.587043, 0.114021, not OpenCV's 0.299, 0.587, 0.114:
    # (0, 42, 253) is 53.503 -> 54 in MATLAB, 53.496 -> 53 in OpenCV.
    np.testing.assert_array_equal(rgb2gray(rgb), [[255, 0, 76, 124, 54]])
    assert niqe_module.BLOCK == 96
