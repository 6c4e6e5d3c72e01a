"""Agatston, volume and mass scores: hand-computed cases, a float64 per-slice oracle, invariances, errors."""

import json
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from agatax import (
    InputError,
    Lesion,
    Scores,
    agatston_score,
    compute_scores,
    density_weight,
    mass_score,
    risk_category,
    scores_jax,
    volume_score,
)

FIXED = (6, 12, 12)  # every scores_jax call uses this shape: one compile per option set


def oracle(hu, mask, spacing, *, min_pixels=3, min_area_mm2=None, connectivity=8, threshold=130.0):
    """Straightforward float64 reference: slice by slice, component by component, Python loops."""
    dz, dy, dx = spacing
    structure = np.ones((3, 3)) if connectivity == 8 else ndimage.generate_binary_structure(2, 1)
    agatston = volume = hu_sum = 0.0
    count = 0
    for z in range(hu.shape[0]):
        labels, n = ndimage.label((mask[z] != 0) & (hu[z] >= threshold), structure)
        for k in range(1, n + 1):
            values = hu[z][labels == k].astype(np.float64)
            area = values.size * dy * dx
            if (values.size < min_pixels) if min_area_mm2 is None else (area < min_area_mm2):
                continue
            peak = values.max()
            weight = 0 if peak < 130 else 1 if peak < 200 else 2 if peak < 300 else 3 if peak < 400 else 4
            agatston += area * weight * dz / 3
            volume += values.size * dz * dy * dx
            hu_sum += values.sum()
            count += 1
    return {"agatston": agatston, "volume_mm3": volume, "hu_sum": hu_sum, "lesions": count}


@st.composite
def exams(draw, shape=FIXED):
    """Random blobs of calcium-like HU (integers 0..600) with a random mask over part of them."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    density = draw(st.sampled_from([0.05, 0.2, 0.4, 0.7]))
    hu = np.where(rng.random(shape) < density, rng.integers(100, 600, shape), rng.integers(-100, 129, shape))
    mask = (rng.random(shape) < draw(st.sampled_from([0.5, 0.8, 1.0]))).astype(np.uint8)
    mask *= rng.integers(1, 5, shape).astype(np.uint8)
    return hu.astype(np.float32), mask


SPACINGS = st.tuples(
    st.sampled_from([0.5, 1.0, 2.5, 3.0]), st.sampled_from([0.3, 0.488, 0.5]), st.sampled_from([0.3, 0.488, 0.5])
)


# ---------------------------------------------------------------------------------- hand-computed
def test_hand_computed_two_lesions_with_arteries_and_mass():
    hu = np.zeros((2, 6, 6), np.float32)
    mask = np.zeros((2, 6, 6), np.uint8)
    # slice 0: a 2x2 lesion in the LAD, HU 150, 250, 180, 130 -> peak 250 -> weight 2
    hu[0, 1:3, 1:3] = [[150, 250], [180, 130]]
    mask[0, 1:3, 1:3] = 2
    # slice 1: a 1x3 lesion, voxels 2x LCX + 1x RCA -> majority LCX; HU 400, 400, 500 -> weight 4
    hu[1, 4, 0:3] = [400, 400, 500]
    mask[1, 4, 0:3] = [3, 3, 4]
    # slice 1: a 2-pixel component (dropped by min_pixels=3)
    hu[1, 0, 4:6] = 900
    mask[1, 0, 4:6] = 1
    spacing = (3.0, 0.5, 0.5)  # pixel area 0.25 mm^2, voxel 0.75 mm^3
    s = compute_scores(hu, mask, spacing, calibration=0.002)
    # lesion 1: area 4 * 0.25 = 1.0 mm^2, 1.0 * 2 * 3/3 = 2.0; lesion 2: 0.75 mm^2 * 4 * 1 = 3.0
    assert s.agatston == pytest.approx(5.0, abs=1e-12)
    # volume: 7 voxels * 0.75 = 5.25 mm^3
    assert s.volume_mm3 == pytest.approx(5.25, abs=1e-12)
    # mass: 0.002 * (150 + 250 + 180 + 130 + 400 + 400 + 500) * 0.75 = 0.002 * 2010 * 0.75 = 3.015 mg
    assert s.mass_mg == pytest.approx(3.015, abs=1e-12)
    assert s.category == "B"
    assert [lesion.artery for lesion in s.lesions] == ["LAD", "LCX"]
    first, second = s.lesions
    assert (first.slice, first.pixels, first.weight, first.peak_hu) == (0, 4, 2, 250.0)
    assert first.mean_hu == pytest.approx(177.5)  # 710 / 4
    assert first.centroid_zyx == (0.0, 1.5, 1.5)
    assert second.centroid_zyx == (1.0, 4.0, 1.0)
    assert second.mass_mg == pytest.approx(0.002 * 1300 * 0.75)
    assert s.per_artery["LAD"] == {"agatston": 2.0, "volume_mm3": 3.0, "mass_mg": pytest.approx(0.002 * 710 * 0.75),
                                   "lesions": 1}
    assert s.per_artery["LCX"]["agatston"] == pytest.approx(3.0)
    assert s.per_artery["LM"]["lesions"] == 0 and s.per_artery["RCA"]["lesions"] == 0
    json.dumps(s.to_dict())  # JSON-safe
    assert isinstance(s, Scores) and isinstance(first, Lesion)
    # the stand-alone scores agree with the table
    assert agatston_score(hu, mask, spacing) == pytest.approx(5.0)
    assert volume_score(hu, mask, spacing) == pytest.approx(5.25)
    assert mass_score(hu, mask, spacing, calibration=0.002) == pytest.approx(3.015)
    # with min_pixels=2 the 900 HU pair joins: area 0.5 mm^2 * 4 * 1 = 2.0 -> 7.0
    assert agatston_score(hu, mask, spacing, min_pixels=2) == pytest.approx(7.0)


def test_min_area_rule_replaces_pixel_rule():
    hu = np.zeros((1, 8, 8), np.float32)
    hu[0, 0, 0:2] = 300  # 2 pixels of 1 mm^2 -> 2 mm^2
    hu[0, 5, 0:3] = 300  # 3 pixels -> 3 mm^2
    mask = np.ones_like(hu, bool)
    # pixel rule (3): only the 3-pixel lesion: 3 mm^2 * 3 * 3 / 3 = 9
    assert agatston_score(hu, mask, (3.0, 1.0, 1.0)) == pytest.approx(9.0)
    # area rule 1.0 mm^2: both: (2 + 3) * 3 = 15
    assert agatston_score(hu, mask, (3.0, 1.0, 1.0), min_area_mm2=1.0) == pytest.approx(15.0)
    # area rule at 0.5 mm pixels: areas 0.5 and 0.75 mm^2, both under 1.0 -> 0
    assert agatston_score(hu, mask, (3.0, 0.5, 0.5), min_area_mm2=1.0) == 0.0
    # exactly at the limit is kept: 4 pixels of 0.25 mm^2 = 1.0 mm^2
    hu2 = np.zeros((1, 4, 4), np.float32)
    hu2[0, 0, :] = 130
    assert agatston_score(hu2, np.ones_like(hu2, bool), (3.0, 0.5, 0.5), min_area_mm2=1.0) == pytest.approx(1.0)


def test_connectivity_4_splits_diagonal_pixels():
    hu = np.zeros((1, 5, 5), np.float32)
    for i in range(3):
        hu[0, i, i] = 200  # a diagonal of 3 pixels
    mask = np.ones_like(hu, bool)
    assert agatston_score(hu, mask, (3.0, 1.0, 1.0)) == pytest.approx(6.0)  # one lesion: 3 mm^2 * 2
    assert agatston_score(hu, mask, (3.0, 1.0, 1.0), connectivity=4) == 0.0  # three 1-pixel lesions


def test_no_calcium_is_zero_and_category_a():
    s = compute_scores(np.full((2, 4, 4), 50.0), np.ones((2, 4, 4), bool), (3, 0.5, 0.5))
    assert (s.agatston, s.volume_mm3, s.mass_mg, s.category, s.lesions, s.per_artery) == (0.0, 0.0, None, "A", (), {})


def test_binary_integer_mask_has_no_artery_table_unless_asked():
    hu = np.full((1, 4, 4), 300.0)
    mask = np.ones((1, 4, 4), np.uint8)
    assert compute_scores(hu, mask, (3, 1, 1)).per_artery == {}
    s = compute_scores(hu, mask, (3, 1, 1), arteries=True)
    assert s.per_artery["LM"]["lesions"] == 1 and s.lesions[0].artery == "LM"
    assert compute_scores(hu, mask * 2, (3, 1, 1), arteries=False).per_artery == {}
    with pytest.raises(InputError):
        compute_scores(hu, mask * 7, (3, 1, 1), arteries=True)


# ------------------------------------------------------------------------- weights and categories
@pytest.mark.parametrize(
    "peak, weight",
    [(129.999, 0), (130, 1), (199, 1), (199.999, 1), (200, 2), (299, 2), (299.999, 2), (300, 3), (399, 3),
     (399.999, 3), (400, 4), (1500, 4)],
)
def test_density_weight_boundaries(peak, weight):
    assert density_weight(peak) == weight
    assert int(density_weight(jnp.float32(peak))) == weight  # float32 rounding keeps these on their side
    # through the whole scorer: one 3-pixel lesion whose peak is `peak` (others at 130), area 3 mm^2, dz 3:
    # 3 * weight * 3 / 3 (below 130 HU the middle pixel leaves and the 2-pixel rest is dropped: 0)
    hu = np.zeros((1, 3, 3), np.float64)
    hu[0, 1, :] = [130.0, peak, 130.0]
    expected = 3.0 * weight
    assert agatston_score(hu, np.ones_like(hu, bool), (3.0, 1.0, 1.0)) == pytest.approx(expected, abs=1e-12)


def test_density_weight_arrays():
    np.testing.assert_array_equal(density_weight(np.array([0.0, 130, 200, 300, 400])), [0, 1, 2, 3, 4])


@pytest.mark.parametrize(
    "score, letter",
    [(0, "A"), (0.0, "A"), (1e-9, "B"), (10, "B"), (10.000001, "C"), (100, "C"), (100.000001, "D"), (400, "D"),
     (400.000001, "E"), (1e6, "E"), (math.inf, "E")],
)
def test_risk_category_boundaries(score, letter):
    assert risk_category(score) == letter


@pytest.mark.parametrize("bad", [-1e-9, -5, math.nan, "ten", None])
def test_risk_category_rejects_bad_scores(bad):
    with pytest.raises(InputError) as err:
        risk_category(bad)
    assert err.value.code == "BAD_SCORE"


# ---------------------------------------------------------------------------------------- oracle
@pytest.mark.parametrize("connectivity", [4, 8])
@given(exam=exams(shape=(4, 10, 10)), spacing=SPACINGS, min_area=st.sampled_from([None, 0.5, 1.0]))
def test_matches_float64_oracle(connectivity, exam, spacing, min_area):
    hu, mask = exam
    ref = oracle(hu, mask, spacing, connectivity=connectivity, min_area_mm2=min_area)
    s = compute_scores(hu, mask, spacing, calibration=0.5, connectivity=connectivity, min_area_mm2=min_area)
    voxel = spacing[0] * spacing[1] * spacing[2]
    assert s.agatston == pytest.approx(ref["agatston"], rel=1e-12, abs=1e-12)
    assert s.volume_mm3 == pytest.approx(ref["volume_mm3"], rel=1e-12, abs=1e-12)
    assert s.mass_mg == pytest.approx(0.5 * ref["hu_sum"] * voxel, rel=1e-12, abs=1e-12)
    assert len(s.lesions) == ref["lesions"]
    assert s.category == risk_category(ref["agatston"])
    assert sum(v["agatston"] for v in s.per_artery.values()) == pytest.approx(s.agatston, rel=1e-12, abs=1e-12)


# ------------------------------------------------------------------------------------ invariances
@given(exam=exams(shape=(3, 8, 8)), shift=st.tuples(st.integers(0, 6), st.integers(0, 6)), spacing=SPACINGS)
def test_invariant_to_in_slice_translation(exam, shift, spacing):
    hu, mask = exam
    big_hu = np.full((3, 14, 14), -50.0, np.float32)
    big_mask = np.zeros((3, 14, 14), np.uint8)
    big_hu[:, shift[0] : shift[0] + 8, shift[1] : shift[1] + 8] = hu
    big_mask[:, shift[0] : shift[0] + 8, shift[1] : shift[1] + 8] = mask
    assert agatston_score(big_hu, big_mask, spacing) == pytest.approx(agatston_score(hu, mask, spacing), rel=1e-12)


@given(a=exams(shape=(3, 8, 8)), b=exams(shape=(3, 8, 8)), spacing=SPACINGS)
def test_additive_over_separated_lesions(a, b, spacing):
    # side by side with a one-pixel background column between them: no component spans both halves
    hu = np.concatenate([a[0], np.zeros((3, 8, 1), np.float32), b[0]], axis=2)
    mask = np.concatenate([a[1], np.zeros((3, 8, 1), np.uint8), b[1]], axis=2)
    whole = compute_scores(hu, mask, spacing, calibration=1.0)
    parts = [compute_scores(h, m, spacing, calibration=1.0) for h, m in (a, b)]
    for key in ("agatston", "volume_mm3", "mass_mg"):
        assert getattr(whole, key) == pytest.approx(sum(getattr(p, key) for p in parts), rel=1e-12, abs=1e-12)
    assert len(whole.lesions) == sum(len(p.lesions) for p in parts)


@given(exam=exams(shape=(3, 8, 8)), seed=st.integers(0, 1000))
def test_unchanged_when_voxels_below_threshold_join_the_mask(exam, seed):
    hu, mask = exam
    extra = (np.random.default_rng(seed).random(hu.shape) < 0.5) & (hu < 130)
    grown = np.where(extra, 1, mask).astype(np.uint8)
    spacing = (3.0, 0.5, 0.5)
    # the whole result (lesion table, per-artery totals) is the same, not only the total
    before = compute_scores(hu, mask, spacing, calibration=1.0, arteries=True).to_dict()
    assert compute_scores(hu, grown, spacing, calibration=1.0, arteries=True).to_dict() == before


@given(exam=exams(shape=(3, 8, 8)), k=st.sampled_from([0.5, 2.0, 3.0, 1.7]), a=st.sampled_from([0.25, 2.0, 1.3]))
def test_linear_in_increment_and_pixel_area(exam, k, a):
    hu, mask = exam
    base = agatston_score(hu, mask, (2.5, 0.5, 0.4))
    assert agatston_score(hu, mask, (2.5 * k, 0.5, 0.4)) == pytest.approx(k * base, rel=1e-12, abs=1e-12)
    # pixel area scaled by a (dy * a, dx unchanged) and by a * a (both)
    assert agatston_score(hu, mask, (2.5, 0.5 * a, 0.4)) == pytest.approx(a * base, rel=1e-12, abs=1e-12)
    assert agatston_score(hu, mask, (2.5, 0.5 * a, 0.4 * a)) == pytest.approx(a * a * base, rel=1e-12, abs=1e-12)


# ------------------------------------------------------------------------------------- JAX twin
@pytest.mark.parametrize("connectivity, min_area", [(8, None), (4, 1.0)])
@settings(max_examples=15)
@given(exam=exams(), spacing=SPACINGS)
def test_scores_jax_equals_host(connectivity, min_area, exam, spacing):
    hu, mask = exam
    host = compute_scores(hu, mask, spacing, connectivity=connectivity, min_area_mm2=min_area)
    dev = scores_jax(jnp.asarray(hu), jnp.asarray(mask), jnp.asarray(spacing, jnp.float32),
                     connectivity=connectivity, min_area_mm2=min_area)
    assert float(dev["agatston"]) == pytest.approx(host.agatston, rel=2e-5, abs=1e-4)
    assert float(dev["volume_mm3"]) == pytest.approx(host.volume_mm3, rel=2e-5, abs=1e-4)
    assert int(dev["lesions"]) == len(host.lesions)


def test_scores_jax_under_outer_jit_with_traced_options():
    # the labelling kernel's eager-vs-jit agreement is tested in test_components (jax.disable_jit)
    rng = np.random.default_rng(7)
    hu = np.where(rng.random(FIXED) < 0.4, rng.integers(100, 600, FIXED), 0).astype(np.float32)
    mask = (rng.random(FIXED) < 0.8).astype(np.uint8)
    spacing = np.array([3.0, 0.5, 0.5], np.float32)
    fn = jax.jit(partial(scores_jax, connectivity=8))
    direct = scores_jax(hu, mask, spacing)
    for threshold in (130.0, 300.0):  # a traced threshold: one compile, two different results
        jitted = fn(hu, mask, spacing, min_pixels=jnp.int32(3), threshold_hu=jnp.float32(threshold))
        host = compute_scores(hu, mask, spacing, threshold_hu=threshold)
        assert float(jitted["agatston"]) == pytest.approx(host.agatston, rel=2e-5)
        assert int(jitted["lesions"]) == len(host.lesions)
    assert float(direct["agatston"]) == pytest.approx(compute_scores(hu, mask, spacing).agatston, rel=2e-5)


# ----------------------------------------------------------------------------------------- errors
def _err(fn, *args, **kw):
    with pytest.raises(InputError) as err:
        fn(*args, **kw)
    return err.value


def test_bad_input_gets_typed_errors():
    hu = np.zeros((2, 4, 4), np.float32)
    mask = np.zeros((2, 4, 4), bool)
    sp = (3.0, 0.5, 0.5)
    e = _err(compute_scores, hu, mask[:, :, :3], sp)
    assert e.code == "SHAPE_MISMATCH" and "(2, 4, 3)" in e.message and isinstance(e, ValueError)
    assert _err(compute_scores, hu[0], mask[0], sp).code == "BAD_RANK"
    for bad in (np.nan, np.inf, -np.inf):
        h = hu.copy()
        h[1, 2, 3] = bad
        assert _err(agatston_score, h, mask, sp).code == "NON_FINITE"
    for bad in ((0, 0.5, 0.5), (3, -0.5, 0.5), (3, 0.5), (3, np.nan, 0.5), "3mm"):
        assert _err(agatston_score, hu, mask, bad).code == "BAD_SPACING"
    for bad in (6, 26, 0, True):
        assert _err(agatston_score, hu, mask, sp, connectivity=bad).code == "BAD_CONNECTIVITY"
    assert _err(compute_scores, hu, mask, sp, calibration=-0.1).code == "BAD_CALIBRATION"
    assert _err(mass_score, hu, mask, sp, calibration=-1.0).code == "BAD_CALIBRATION"
    assert _err(agatston_score, hu, np.full((2, 4, 4), 0.5), sp).code == "BAD_MASK"
    assert _err(agatston_score, hu, mask, sp, min_pixels=0).code == "BAD_MIN_SIZE"
    assert _err(scores_jax, jnp.zeros((2, 4, 4)), jnp.zeros((2, 4, 3)), sp).code == "SHAPE_MISMATCH"
    assert _err(scores_jax, jnp.zeros((4, 4)), jnp.zeros((4, 4)), sp).code == "BAD_RANK"
    assert _err(scores_jax, jnp.zeros((2, 4, 4)), jnp.zeros((2, 4, 4)), sp, connectivity=6).code == "BAD_CONNECTIVITY"
    assert _err(scores_jax, jnp.zeros((2, 4, 4)), jnp.zeros((2, 4, 4)), (0, 1, 1)).code == "BAD_SPACING"
