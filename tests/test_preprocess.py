"""Pre-processing: resampling against NumPy oracles, the high-HU enhancement keeps a tiny calcification,
windowing, padding, traced spacing, and the inverse mapping."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agatax import InputError
from agatax.preprocess import grid_shape, preprocess, resample_hu, restore_grid


def test_grid_shape_realistic_exam():
    assert grid_shape((56, 512, 512), (3.0, 0.4, 0.4)) == (56, 72, 72)  # 204.8 mm / 3 -> 69 -> 72
    assert grid_shape((40, 512, 512), (2.5, 0.5, 0.5), multiple=16) == (48, 112, 112)
    assert grid_shape((10, 20, 20), (3.0, 0.5, 0.5), target_mm=2.5, multiple=2) == (12, 4, 4)


def test_block_mean_when_factors_are_integers():
    # 0.5 mm -> 2 mm in y and x (factor 4), z unchanged: plain block means (no voxel above 130 HU)
    rng = np.random.default_rng(0)
    hu = rng.uniform(-200, 120, size=(4, 16, 8)).astype(np.float32)
    out = np.asarray(resample_hu(hu, (2.0, 0.5, 0.5), 2.0, (4, 4, 2)))
    expected = hu.astype(np.float64).reshape(4, 4, 4, 2, 4).mean(axis=(2, 4))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-3)


def _box_oracle(hu, spacing, box_mm):
    """In-plane box average, float64: each pixel weighs the length of [-box/2, box/2] (in pixels) it
    covers; edges repeated."""
    from scipy import ndimage

    out = hu.astype(np.float64)
    for axis in (1, 2):
        w = box_mm / spacing[axis]
        j = np.arange(-6, 7)
        weights = np.clip(np.minimum(j + 0.5, w / 2) - np.maximum(j - 0.5, -w / 2), 0, None)
        out = ndimage.correlate1d(out, weights / weights.sum(), axis=axis, mode="nearest")
    return out


def _smooth_oracle(hu, spacing, sigma_mm, taps=12):
    """In-plane Gaussian of ``sigma_mm`` (cut at ``taps`` pixels each side), float64, on the input with its
    edges repeated (padded first, so that the Gaussian and a box after it both see the repeated edge)."""
    from scipy import ndimage

    pad = 20
    out = np.pad(hu.astype(np.float64), ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    for axis in (1, 2):
        s = sigma_mm / spacing[axis]
        out = ndimage.gaussian_filter1d(out, s, axis=axis, mode="nearest", truncate=taps / s)
    return out, pad


def _oracle(hu, spacing, t, out_shape, threshold=130.0, box_mm=0.0, smooth_mm=0.0):
    """Voxel-by-voxel float64 reference of the documented rule."""
    hu = hu.astype(np.float64)
    if smooth_mm:
        smooth, pad = _smooth_oracle(hu, spacing, smooth_mm)
        smooth = _box_oracle(smooth, spacing, box_mm) if box_mm else smooth
        boxed = smooth[:, pad:-pad, pad:-pad]
    else:
        boxed = _box_oracle(hu, spacing, box_mm) if box_mm else hu
    n = hu.shape
    out = np.empty(out_shape)
    cell = [np.minimum(np.floor((np.arange(n[a]) + 0.5) * spacing[a] / t).astype(int), out_shape[a] - 1) for a in range(3)]
    for q in np.ndindex(*out_shape):
        ws = []
        for a in range(3):
            i = np.arange(n[a])
            ws.append(np.clip(np.minimum((q[a] + 1) * t, (i + 1) * spacing[a]) - np.maximum(q[a] * t, i * spacing[a]), 0, None))
        w = ws[0][:, None, None] * ws[1][None, :, None] * ws[2][None, None, :]
        inside = (cell[0][:, None, None] == q[0]) & (cell[1][None, :, None] == q[1]) & (cell[2][None, None, :] == q[2])
        bright = boxed[inside & (boxed >= threshold)]
        if bright.size:
            out[q] = bright.max()
        elif w.sum() > 0:
            out[q] = (w * hu).sum() / w.sum()
        else:
            out[q] = -1000.0
    return out


@pytest.mark.parametrize("box_mm", [0.0, 1.0, 1.8])
@pytest.mark.parametrize(
    "shape,spacing,t,out_shape",
    [((5, 9, 7), (3.0, 0.7, 0.9), 3.0, (6, 4, 4)), ((6, 5, 5), (2.0, 1.1, 0.6), 2.5, (6, 4, 2)),
     ((3, 12, 10), (3.0, 0.3, 0.45), 3.0, (2, 2, 2))],
)
def test_resampling_matches_oracle(shape, spacing, t, out_shape, box_mm):
    rng = np.random.default_rng(1)
    hu = rng.uniform(-400, 500, size=shape).astype(np.float32)  # some voxels above 130 HU
    got = np.asarray(jax.jit(resample_hu, static_argnums=3, static_argnames="box_mm")(
        hu, jnp.asarray(spacing), t, out_shape, box_mm=box_mm))
    want = _oracle(hu, spacing, t, out_shape, box_mm=box_mm)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-2)
    if box_mm:  # the box changes the enhanced cells (else this test could pass without it)
        assert not np.allclose(want, _oracle(hu, spacing, t, out_shape), atol=1e-2)


@pytest.mark.parametrize("box_mm", [0.0, 1.0])
@pytest.mark.parametrize("smooth_mm", [0.3, 0.8])
def test_smoothed_enhancement_matches_oracle(smooth_mm, box_mm):
    """``smooth_mm``: the HU entering the enhancement's maximum go through an in-plane Gaussian (then the box);
    the mean path is unchanged; the sigma may be traced."""
    rng = np.random.default_rng(2)
    hu = rng.normal(60, 45, size=(4, 30, 26)).astype(np.float32)  # noise crossing 130 HU here and there
    hu[1:3, 10:13, 8:11] = 400.0  # a plaque the smoothing keeps above 130 HU
    spacing, t, out_shape = (3.0, 0.4, 0.5), 3.0, (4, 4, 5)
    fn = jax.jit(resample_hu, static_argnums=3, static_argnames="box_mm")
    got = np.asarray(fn(hu, jnp.asarray(spacing), t, out_shape, box_mm=box_mm, smooth_mm=jnp.float32(smooth_mm)))
    want = _oracle(hu, spacing, t, out_shape, box_mm=box_mm, smooth_mm=smooth_mm)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-2)
    unsmoothed = _oracle(hu, spacing, t, out_shape, box_mm=box_mm)
    assert not np.allclose(want, unsmoothed, atol=1e-2)  # the smoothing changes enhanced cells
    assert (unsmoothed >= 130).sum() >= (want >= 130).sum() + (box_mm == 0) > 0  # fewer noise crossings, plaque kept
    via_preprocess = np.asarray(preprocess(hu, spacing, out_shape=out_shape, multiple=1, box_mm=box_mm,
                                           smooth_mm=smooth_mm))
    np.testing.assert_allclose(via_preprocess, (np.clip(want, -300, 800) + 300) / 1100, atol=1e-4)


def test_smoothing_must_be_a_length():
    with pytest.raises(InputError) as e:
        preprocess(np.zeros((4, 8, 8), np.float32), (3.0, 0.5, 0.5), smooth_mm=-0.5)
    assert e.value.code == "BAD_CONFIG" and "smooth_mm" in str(e.value)


def test_box_weights_cover_the_box():
    from agatax.preprocess import box_weights

    np.testing.assert_allclose(np.asarray(box_weights(2.5)), np.array([0, 0, 0.75, 1, 0.75, 0, 0]) / 2.5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(box_weights(0.6)), np.eye(7)[3], atol=1e-7)  # under a pixel: identity
    np.testing.assert_allclose(np.asarray(box_weights(4.0)), np.array([0, 0.5, 1, 1, 1, 0.5, 0]) / 4, atol=1e-7)


def test_box_makes_noise_crossings_independent_of_the_pixel_size():
    """White noise of 45 HU on 40 HU tissue (a noise-free image fires in no cell): the share of 3 mm cells
    whose enhancement fires is 0.73 on 0.4 mm pixels and 0.22 on 0.9 mm ones when the pixels are taken as
    they are; through the 1 mm box both shares fall below 0.1 (0 and 0.08)."""
    rng = np.random.default_rng(3)
    shares = {}
    for px in (0.4, 0.9):
        n = int(round(96 / px))
        hu = (40 + 45 * rng.standard_normal((4, n, n))).astype(np.float32)
        shape = grid_shape(hu.shape, (3.0, px, px), multiple=1)
        for box in (0.0, 1.0):
            out = np.asarray(resample_hu(hu, jnp.asarray((3.0, px, px)), 3.0, shape, box_mm=box))
            shares[px, box] = float((out >= 130).mean())
    assert shares[0.4, 0.0] > 0.6 and shares[0.9, 0.0] < 0.3
    assert shares[0.4, 1.0] < 0.1 and shares[0.9, 1.0] < 0.1


def test_voxels_at_exactly_130_hu_are_enhanced_as_scoring_counts_them():
    hu = np.full((4, 8, 8), 0.0, np.float32)
    hu[1, 2, 2] = 130.0  # counts as calcium in scoring (>= 130 HU), so the enhancement keeps it
    hu[2, 5, 5] = 129.5  # below the threshold: averaged away
    got = np.asarray(resample_hu(hu, jnp.asarray((1.0, 1.0, 1.0)), 2.0, (2, 4, 4)))
    assert got[0, 1, 1] == 130.0
    assert got[1, 2, 2] == pytest.approx(129.5 / 8)


def test_three_pixel_calcification_survives_downsampling():
    hu = np.full((8, 64, 64), 40.0, np.float32)  # soft tissue
    hu[4, 30, 30:33] = 400.0  # 3 pixels of 0.4 mm: 3 of the 56.25 pixels of one 3 mm coarse voxel
    spacing = (3.0, 0.4, 0.4)
    shape = grid_shape(hu.shape, spacing)
    x = np.asarray(preprocess(hu, spacing, box_mm=0.0))
    assert x.shape == shape == (8, 16, 16)
    peak = np.unravel_index(np.argmax(x), x.shape)
    assert peak == (4, 30 * 0.4 // 3, 30 * 0.4 // 3)
    assert x[peak] == pytest.approx((400 + 300) / 1100, abs=1e-6)  # the full 400 HU is kept
    # through the 1 mm box (2.5 pixels: weights 0.75, 1, 0.75) the row's 400 HU meets 40 HU above and below
    boxed = np.asarray(preprocess(hu, spacing))
    assert boxed[peak] == pytest.approx(((0.75 * 40 + 400 + 0.75 * 40) / 2.5 + 300) / 1100, abs=1e-6)
    assert np.argmax(boxed) == np.argmax(x)
    # a plain mean would have drowned it below the calcium threshold: 40 + 3 * 360 / 56.25 = 59.2 HU
    mean_only = np.asarray(resample_hu(hu, spacing, 3.0, shape, threshold_hu=1e6))
    assert mean_only.max() == pytest.approx(40 + 3 * 360 / 56.25, abs=1e-3)
    back = np.asarray(restore_grid(x > 0.6, hu.shape, spacing))
    assert back[4, 30, 30:33].all()


def test_window_scaling_and_air_padding():
    hu = np.full((2, 6, 6), 1000.0, np.float32)
    hu[:, :, :3] = -1000.0
    x = np.asarray(preprocess(hu, (2.0, 2.0, 2.0), multiple=4))
    assert x.shape == (4, 8, 8)
    assert x.min() >= 0.0 and x.max() <= 1.0
    np.testing.assert_array_equal(x[:2, :6, :3], 0.0)
    np.testing.assert_array_equal(x[:2, :6, 3:6], 1.0)
    np.testing.assert_array_equal(x[2:], 0.0)  # padding is air
    np.testing.assert_array_equal(x[:, 6:], 0.0)


def test_traced_spacing_one_compilation():
    hu = np.random.default_rng(2).uniform(-100, 500, size=(4, 20, 20)).astype(np.float32)
    traces = []

    @jax.jit
    def run(hu, spacing):
        traces.append(1)
        return preprocess(hu, spacing, out_shape=(4, 8, 8), multiple=4)

    a = run(hu, jnp.asarray([3.0, 1.0, 1.0]))
    b = run(hu, jnp.asarray([3.0, 1.1, 1.1]))
    assert len(traces) == 1
    assert not np.allclose(a, b)
    np.testing.assert_allclose(a, preprocess(hu, (3.0, 1.0, 1.0), out_shape=(4, 8, 8), multiple=4), atol=1e-6)


def test_restore_grid_maps_back_to_the_right_place():
    coarse = np.zeros((4, 8, 8), np.int32)
    coarse[2, 5, 3] = 7
    fine = np.asarray(restore_grid(coarse, (8, 40, 40), (1.5, 0.6, 0.6), target_mm=3.0))
    assert fine.shape == (8, 40, 40)
    z, y, x = np.nonzero(fine)
    # coarse voxel (2, 5, 3) covers z in [6, 9) mm, y in [15, 18) mm, x in [9, 12) mm: fine centres inside
    np.testing.assert_array_equal(np.unique(z), [4, 5])
    np.testing.assert_array_equal(np.unique(y), np.arange(25, 30))
    np.testing.assert_array_equal(np.unique(x), np.arange(15, 20))
    assert fine.sum() == 7 * 2 * 5 * 5


def test_bad_inputs():
    with pytest.raises(InputError) as info:
        preprocess(np.zeros((4, 4)), (1.0, 1.0, 1.0))
    assert info.value.code == "BAD_RANK"
    with pytest.raises(InputError) as info:
        grid_shape((4, 4, 4), (1.0, -1.0, 1.0))
    assert info.value.code == "BAD_SPACING"
    with pytest.raises(InputError) as info:
        jax.jit(lambda h, s: preprocess(h, s))(jnp.zeros((4, 4, 4)), jnp.ones(3))
    assert info.value.code == "TRACED_SPACING"
    with pytest.raises(InputError) as info:
        preprocess(np.zeros((4, 4, 4)), (1.0, 1.0, 1.0), out_shape=(4, 4, 6))
    assert info.value.code == "BAD_SHAPE"


def test_thin_and_thick_slices_meet_the_networks_on_a_3_mm_grid():
    """0.625 mm and 5 mm slices: the default grid is 3 mm (hand count: 240 x 0.625 = 150 mm -> 50 cells -> 56
    as a multiple of 8; 128 x 0.8 = 102.4 mm -> 35 cells -> 40), and the default path equals target_mm=3."""
    from agatax.preprocess import network_grid_mm

    assert grid_shape((240, 128, 128), (0.625, 0.8, 0.8)) == (56, 40, 40)
    assert grid_shape((56, 128, 128), (2.5, 0.8, 0.8)) == (56, 48, 48)  # 2.5 mm slices keep their grid
    assert network_grid_mm(1.25) == 3.0 and network_grid_mm(2.0) == 2.0 and network_grid_mm(3.5) == 3.5
    assert network_grid_mm(5.0) == 3.0  # 5 mm chest CT: the 3 mm cells the networks were mostly trained on
    assert float(network_grid_mm(jnp.float32(5.0))) == 3.0 and float(network_grid_mm(jnp.float32(2.5))) == 2.5
    assert grid_shape((60, 128, 128), (5.0, 1.5, 1.5)) == (104, 64, 64)  # 300 mm / 3 -> 100 -> 104; 192 / 3 -> 64
    rng = np.random.default_rng(3)
    hu = rng.uniform(-200, 300, (40, 24, 24)).astype(np.float32)
    spacing = (0.625, 0.8, 0.8)
    np.testing.assert_array_equal(np.asarray(preprocess(hu, spacing)), np.asarray(preprocess(hu, spacing, target_mm=3.0)))
    coarse = jnp.arange(np.prod(grid_shape(hu.shape, spacing))).reshape(grid_shape(hu.shape, spacing))
    np.testing.assert_array_equal(np.asarray(restore_grid(coarse, hu.shape, spacing)),
                                  np.asarray(restore_grid(coarse, hu.shape, spacing, target_mm=3.0)))


@pytest.mark.parametrize("gain", [0.0, 0.5, 2.0])
def test_dense_gain_keeps_rising_above_the_window_up_to_2000_hu(gain):
    """Above 800 HU the input rises ``gain`` times as steeply, up to 2000 HU; below it nothing changes.
    Oracle: the piecewise-linear map written out by hand on 1 mm voxels of a 1 mm grid (no resampling)."""
    levels = np.array([-1000.0, -300.0, 40.0, 799.0, 800.0, 1000.0, 1400.0, 1999.0, 2000.0, 3071.0], np.float32)
    hu = np.tile(levels[:, None, None], (1, 8, 8))
    x = np.asarray(preprocess(hu, (1.0, 1.0, 1.0), target_mm=1.0, multiple=1, box_mm=0.0, dense_gain=gain))[:, 0, 0]
    base = (np.clip(levels, -300, 800) + 300) / 1100
    want = base + gain * (np.clip(levels, 800, 2000) - 800) / 1100
    np.testing.assert_allclose(x, want, atol=1e-6)
    if gain:
        assert x[6] == pytest.approx(1 + gain * 600 / 1100, abs=1e-6)  # 1400 HU calcium: not the window's top
        assert x[9] == x[8] > x[6]  # metal beyond 2000 HU stays at the cap
    with pytest.raises(InputError):
        preprocess(hu, (1.0, 1.0, 1.0), target_mm=1.0, multiple=1, dense_gain=-0.1)
