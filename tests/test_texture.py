"""The generator's stress options: tissue texture (agatax.synthetic.texture: structure in fat and soft tissue
that never makes calcium), the heart's axis spread, its tilt apart and its roll."""

import numpy as np
import pytest
from scipy import ndimage

from agatax import InputError
from agatax.synthetic import DISTRACTOR_CODES, generate_exam
from agatax.synthetic.texture import DRIFT_HU, tissue_texture


def _slab():
    """(12, 96, 96) noise-free HU at (3, 0.5, 0.5) mm: columns of air, lung, fat, soft tissue and bone."""
    vol = np.empty((12, 96, 96), np.float32)
    for x0, hu in zip(range(0, 96, 16), (-1000.0, -860.0, -100.0, -100.0, 45.0, 700.0)):
        vol[:, :, x0:x0 + 16] = hu
    return vol


def test_texture_lies_in_fat_and_soft_tissue_only_and_never_reaches_calcium():
    vol = _slab()
    add = tissue_texture(vol, (3.0, 0.5, 0.5), 1.0, np.random.default_rng(3))
    assert add.dtype == np.float32 and add.shape == vol.shape
    inner = (slice(None), slice(None), slice(2, -2))
    for x0 in (0, 16, 80):  # air, lung, bone: untouched
        assert not add[:, :, x0:x0 + 16][inner].any()
    assert (vol + add)[:, :, :80].max() <= 100.0  # nothing reaches the 130 HU calcium threshold
    soft = add[:, :, 66:78]  # soft tissue: the drift alone, clipped at 3 SD
    assert soft.std() > 0.5 and np.abs(soft).max() <= 3.0 * DRIFT_HU + 1e-3
    fat = add[:, :, 34:62]
    # septa and small vessels: bright thin structures over a sparse share of the fat, not a general lift
    bright = fat > 40.0
    assert 0.002 < bright.mean() < 0.25
    assert np.median(fat) < 10.0
    # thin: a bright structure is at most ~2 mm across in-plane (4 pixels of 0.5 mm) almost everywhere
    core = ndimage.binary_erosion(bright, structure=np.ones((1, 5, 5), bool))
    assert core.sum() <= 0.05 * bright.sum()


def test_no_texture_at_zero_and_every_amplitude_scales_with_the_strength():
    vol = _slab()
    assert not tissue_texture(vol, (3.0, 0.5, 0.5), 0.0, np.random.default_rng(3)).any()
    half = tissue_texture(vol, (3.0, 0.5, 0.5), 0.5, np.random.default_rng(3))
    full = tissue_texture(vol, (3.0, 0.5, 0.5), 1.0, np.random.default_rng(3))
    np.testing.assert_allclose(half[:, :, 40:60], 0.5 * full[:, :, 40:60], atol=1e-3)


def test_a_textured_exam_keeps_its_bone_and_its_truth_exact():
    """The texture is added to the noise-free anatomy before bone is marked: the bone (>= 130 HU before
    noise) is the same voxels; the exam's true score is the Agatston score of its mask recomputed."""
    from agatax.scoring import compute_scores

    kw = dict(target_category="C", matrix=128, n_slices=30)
    plain = generate_exam(4, **kw)
    tex = generate_exam(4, tissue_texture=1.0, **kw)
    bone = DISTRACTOR_CODES["bone"]
    np.testing.assert_array_equal(plain.distractor_mask == bone, tex.distractor_mask == bone)
    assert not np.array_equal(plain.volume.hu, tex.volume.hu)
    assert tex.params["scanner"]["tissue_texture"] == 1.0 and plain.params["scanner"]["tissue_texture"] == 0.0
    assert compute_scores(tex.volume.hu, tex.mask, tex.volume.spacing).agatston == pytest.approx(tex.agatston)
    assert tex.category == "C"


def test_texture_out_of_range_is_refused_by_name():
    with pytest.raises(InputError, match="tissue_texture") as e:
        generate_exam(0, tissue_texture=1.5, matrix=64)
    assert e.value.code == "BAD_PARAMETER"


def test_heart_axis_spread_turns_the_long_axis_further_from_its_mean():
    from agatax.synthetic.anatomy import sample_heart

    mean = np.array([-0.68, -0.45, 0.55]) / np.linalg.norm([-0.68, -0.45, 0.55])
    for seed in range(6):
        hearts = [sample_heart(np.random.default_rng(seed), 110.0, axis_spread=k) for k in (0.0, 1.0, 2.5)]
        angles = [np.degrees(np.arccos(np.clip(h.u @ mean, -1, 1))) for h in hearts]
        assert angles[0] < 1e-4 and angles[0] < angles[1] < angles[2]
        assert 1.5 < angles[2] / angles[1] < 3.5  # about 2.5 x as far (the unit vector bends it a little)
    with pytest.raises(InputError, match="heart_axis_spread"):
        generate_exam(0, heart_axis_spread=5.0, matrix=64)


def test_heart_tilt_spread_draws_the_tilt_apart_from_the_turn_within_the_axial_plane():
    """sample_heart(..., tilt_spread=t): the long axis' angle below the axial plane is the one drawn at
    axis_spread=t, its angle within the plane the one drawn at axis_spread (each from its own plain draw)."""
    from agatax.synthetic.anatomy import sample_heart

    def angles(u):  # (within the axial plane, left of anterior; below the axial plane), degrees
        return np.degrees(np.arctan2(u[2], -u[1])), np.degrees(np.arcsin(-u[0]))

    for seed in range(6):
        for k, t in ((2.5, 1.0), (1.0, 2.5)):
            split = angles(sample_heart(np.random.default_rng(seed), 110.0, axis_spread=k, tilt_spread=t).u)
            turn = angles(sample_heart(np.random.default_rng(seed), 110.0, axis_spread=k).u)
            tilt = angles(sample_heart(np.random.default_rng(seed), 110.0, axis_spread=t).u)
            assert abs(split[0] - turn[0]) < 1e-9 and abs(split[1] - tilt[1]) < 1e-9, (seed, k, t)
            assert abs(turn[1] - tilt[1]) > 1e-3  # the two spreads do tilt this draw differently
    with pytest.raises(InputError, match="heart_tilt_spread"):
        generate_exam(0, heart_tilt_spread=5.0, matrix=64)


def test_heart_roll_turns_every_artery_about_the_long_axis_by_the_angle():
    """coronary_tree(..., roll): the LAD, LCX and RCA lie ``roll`` further round the heart (phi, from
    ``surface_coords``, the inverse of the surface the arteries are drawn on), the same draw otherwise; the
    generate_exam option is 0 unless given and refused out of range."""
    from agatax.synthetic.anatomy import sample_heart
    from agatax.synthetic.calcium import coronary_tree, surface_coords

    for seed in range(4):
        heart = sample_heart(np.random.default_rng(seed), 110.0)
        plain = coronary_tree(heart, np.random.default_rng(100 + seed))
        rolled = coronary_tree(heart, np.random.default_rng(100 + seed), 0.4)
        for name in ("LAD", "LCX", "RCA"):
            # the last half, aligned from the end (the LM and the RCA's first stretch leave the aortic root, which
            # stays, so the rolled vessels' lengths differ there)
            a = np.unwrap(surface_coords(heart, plain[name].points)[1])
            b = np.unwrap(surface_coords(heart, rolled[name].points)[1])
            n = min(len(a), len(b)) // 2
            shift = np.median(b[-n:] - a[-n:])
            assert abs((shift + np.pi) % (2 * np.pi) - np.pi - 0.4) < 0.06, (seed, name, shift)
    with pytest.raises(InputError, match="heart_roll_deg"):
        generate_exam(0, heart_roll_deg=60.0, matrix=64)
