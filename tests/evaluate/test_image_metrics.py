"""PSNR, SSIM (3DGS and valid conventions) and DyCheck's masked metrics against exact values, published fixture
values, scikit-image and slow float64 reference implementations."""

import csv
import math

import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from stages.evaluate.image_metrics import (masked_psnr, masked_ssim, moving_region_errors, psnr, quantize_8bit,
                                           ssim_3dgs, ssim_valid)
from tests.conftest import LPIPS_FIXTURES, requires

PAIRS = ("I03", "I04", "I06", "I08", "I19")


def fixture_pair(name):
    import imageio.v3 as iio

    ref = iio.imread(LPIPS_FIXTURES / "ref" / f"{name}.png") / 255.0
    dist = iio.imread(LPIPS_FIXTURES / "dist" / f"{name}.png") / 255.0
    return dist, ref


def ssim_slow(a, b, valid: bool):
    """Direct float64 definition: 2-D 11x11 Gaussian window (sigma 1.5), zero padding or valid region."""
    k = np.arange(11) - 5
    g = np.exp(-(k**2) / (2 * 1.5**2))
    window = np.outer(g, g) / np.outer(g, g).sum()
    values = []
    for c in range(a.shape[-1]):
        x, y = a[..., c], b[..., c]
        blur = lambda z: ndimage.correlate(z, window, mode="constant", cval=0.0)
        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
        s = ((2 * mx * my + 1e-4) * (2 * cxy + 9e-4)) / ((mx**2 + my**2 + 1e-4) * (vx + vy + 9e-4))
        values.append(s[5:-5, 5:-5] if valid else s)
    return float(np.mean(values))


def test_psnr_is_exact_on_constructed_images():
    a = np.zeros((8, 6, 3))
    assert psnr(a + 0.1, a) == pytest.approx(20.0, abs=1e-12)       # MSE 0.01
    b = a.copy()
    b[0, 0, 0] = 1.0                                                 # MSE 1 / 144
    assert psnr(b, a) == pytest.approx(10 * math.log10(144), abs=1e-12)
    assert psnr(a, a) == math.inf


def test_psnr_matches_skimage_on_8bit_images(rng):
    a = rng.integers(0, 256, (17, 23, 3)) / 255.0
    b = rng.integers(0, 256, (17, 23, 3)) / 255.0
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(b, a, data_range=1.0), abs=1e-10)


def test_quantize_8bit_rounds_to_the_png_grid():
    x = np.array([[[0.0, 0.6 / 255, 0.49 / 255], [1.2, -0.1, 100.6 / 255]]])
    assert np.allclose(quantize_8bit(x) * 255, [[[0, 1, 0], [255, 0, 101]]])


def test_masked_psnr_equals_psnr_of_the_selected_pixels(rng):
    a, b = rng.random((12, 10, 3)), rng.random((12, 10, 3))
    mask = np.zeros((12, 10), bool)
    mask[2:7, 3:9] = True
    assert masked_psnr(a, b, mask) == pytest.approx(psnr(a[2:7, 3:9], b[2:7, 3:9]), abs=1e-10)
    assert math.isnan(masked_psnr(a, b, np.zeros((12, 10))))


def test_moving_region_errors_split_the_squared_error_by_hand():
    # A 9 x 9 image, one moving pixel at (4, 4); errors placed by hand: 0.5 in one channel on the moving pixel, 0.1
    # in all three channels at (4, 6) (Chebyshev distance 2: the border of 2 px, outside that of 1 px) and 0.2 in
    # one channel at the corner (0, 0) (distance 4: neither).
    target = np.zeros((9, 9, 3))
    prediction = target.copy()
    prediction[4, 4, 0] = 0.5
    prediction[4, 6] = 0.1
    prediction[0, 0, 2] = 0.2
    moving = np.zeros((9, 9), bool)
    moving[4, 4] = True
    two = moving_region_errors(prediction, target, moving, border_px=2)
    assert two["sse_moving"] == pytest.approx(0.25) and two["sse_border"] == pytest.approx(0.03)
    assert two["sse_total"] == pytest.approx(0.25 + 0.03 + 0.04)
    assert two["moving_pixels"] == 1 and two["border_pixels"] == 5 * 5 - 1
    one = moving_region_errors(prediction, target, moving, border_px=1)
    assert one["sse_border"] == 0.0 and one["border_pixels"] == 3 * 3 - 1
    assert moving_region_errors(prediction, target, moving, border_px=0)["border_pixels"] == 0


def test_ssim_matches_slow_reference(rng):
    a, b = rng.random((24, 31, 3)), rng.random((24, 31, 3))
    b = 0.6 * a + 0.4 * b  # correlated, so SSIM is far from 0
    assert ssim_3dgs(a, b) == pytest.approx(ssim_slow(a, b, valid=False), abs=1e-12)
    assert ssim_valid(a, b) == pytest.approx(ssim_slow(a, b, valid=True), abs=1e-12)
    kw = dict(data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert ssim_valid(a, b) == pytest.approx(structural_similarity(a, b, **kw), abs=1e-9)
    assert ssim_3dgs(a, a) == pytest.approx(1.0, abs=1e-12)


@requires(LPIPS_FIXTURES, "LPIPS/SSIM reference fixture")
def test_ssim_and_psnr_on_reference_pairs():
    # Columns: image, ssim_3dgs (zero pad, full mean), valid crop, skimage Gaussian, skimage defaults, PSNR. The
    # header's column names contain unquoted commas, so the rows are read by position.
    with open(LPIPS_FIXTURES / "ssim_values.csv") as f:
        rows = {r[0]: [float(v) for v in r[1:]] for r in list(csv.reader(f))[1:]}
    assert sorted(rows) == sorted(PAIRS)
    for name in PAIRS:
        dist, ref = fixture_pair(name)
        ssim_3dgs_ref, _, skimage_gaussian, _, psnr_ref = rows[name]
        # The published values carry 5 decimals and come from a float32 computation (~1e-5 off float64).
        assert ssim_3dgs(dist, ref) == pytest.approx(ssim_3dgs_ref, abs=2e-5), name
        assert ssim_valid(dist, ref) == pytest.approx(skimage_gaussian, abs=1e-5), name
        assert psnr(dist, ref) == pytest.approx(psnr_ref, abs=5e-4), name


def masked_ssim_slow(a, b, mask):
    """DyCheck's partial-convolution mSSIM written out with explicit loops over the valid windows."""
    k = np.arange(11) - 5
    g = np.exp(-(k**2) / (2 * 1.5**2))
    g /= g.sum()
    m = mask.astype(np.float64)

    def pass_x(z, valid):
        H, W = z.shape[:2]
        out, has = np.zeros((H, W - 10) + z.shape[2:]), np.zeros((H, W - 10))
        for i in range(H):
            for j in range(W - 10):
                count = valid[i, j:j + 11].sum()
                if count:
                    has[i, j] = 1
                    out[i, j] = np.tensordot(g, z[i, j:j + 11] * valid[i, j:j + 11, None], 1) * 11 / count
        return out, has

    def blur(z):
        z1, has = pass_x(z, m)
        z2, _ = pass_x(z1.transpose(1, 0, 2), has.T)
        return z2.transpose(1, 0, 2)

    mx, my = blur(a), blur(b)
    vx, vy = np.maximum(blur(a * a) - mx**2, 0), np.maximum(blur(b * b) - my**2, 0)
    cxy = blur(a * b) - mx * my
    cxy = np.sign(cxy) * np.minimum(np.sqrt(vx * vy), np.abs(cxy))
    s = ((2 * mx * my + 1e-4) * (2 * cxy + 9e-4)) / ((mx**2 + my**2 + 1e-4) * (vx + vy + 9e-4))
    return float(s.mean())


def test_masked_ssim_matches_slow_dycheck_reference(rng):
    a, b = rng.random((20, 26, 3)), rng.random((20, 26, 3))
    b = 0.7 * a + 0.3 * b
    mask = np.zeros((20, 26), bool)
    mask[3:15, 2:14] = True
    mask[16:, 20:] = True
    assert masked_ssim(a, b, mask) == pytest.approx(masked_ssim_slow(a, b, mask), abs=1e-12)
    # A full mask reduces to the valid-region SSIM.
    assert masked_ssim(a, b, np.ones((20, 26))) == pytest.approx(ssim_valid(a, b), abs=1e-12)
