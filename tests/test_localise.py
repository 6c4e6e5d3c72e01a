"""Chest localisation: every true coronary calcification kept, bone left out, on cardiac and chest fields
of view, mirrored and rotated bodies, emphysema and effusion; no region (and nothing discarded) without
lungs; in the pipeline, an ensemble that calls everything calcium keeps nothing on bone."""

import numpy as np
import pytest

from agatax import Volume, localise_chest, run_pipeline
from agatax.synthetic import DISTRACTOR_CODES, TISSUES, generate_exam
from ensembles import all_calcium_ensemble

MID = {"matrix": 192, "n_slices": 48, "slice_increment_mm": 3.0}
_cache = {}


def exam(seed, cat="E", **kw):
    key = (seed, cat, tuple(sorted(kw.items())))
    if key not in _cache:
        _cache[key] = generate_exam(seed, target_category=cat, **{k: v for k, v in {**MID, **kw}.items() if v is not None})
    return _cache[key]


def bone_voxels(ex):
    """Oracle of bone: the generator's own map of noise-free anatomy >= 130 HU, at >= 130 HU in the image."""
    return (ex.distractor_mask == DISTRACTOR_CODES["bone"]) & (ex.volume.hu >= 130)


def check_region(ex, region):
    calcium = ex.mask > 0
    bone = bone_voxels(ex)
    assert calcium.any() and bone.sum() > 1000
    assert (calcium & region).sum() == calcium.sum()  # 100 % of the true coronary calcium
    assert (bone & region).sum() <= 0.05 * bone.sum()  # >= 95 % of the bone left out


@pytest.mark.parametrize("seed,kw", [
    (1, {"protocol": "cardiac", "padding_hu": -2048.0}),  # 170-240 mm: bone cut at the border, padding
    (2, {"protocol": "cardiac", "padding_hu": None, "fov_mm": 165.0}),
    (3, {"protocol": "chest"}),  # 320-420 mm: whole rib cage, scapulae
    (4, {"protocol": "chest", "slice_increment_mm": 5.0, "n_slices": 30}),
])
def test_region_keeps_all_coronary_calcium_and_leaves_out_bone(seed, kw):
    ex = exam(seed, **kw)
    r = localise_chest(ex.volume.hu, ex.volume.spacing)
    assert r.found, r.note
    check_region(ex, r.region)
    # the box holds the region, and the region is a fraction of the volume
    boxed = np.zeros_like(r.region)
    boxed[r.box] = True
    assert not (r.region & ~boxed).any()
    assert r.region.mean() < 0.6


@pytest.mark.parametrize("seed", [30, 31])
def test_sternum_and_ribs_cut_by_the_image_border_are_left_out(seed):
    """Cardiac fields of 173 and 184 mm whose top border cuts the sternum into a crescent too thin to hold a
    bone core: the bone oracle (the generator's) must still be >= 99 % outside the region (5.5 % and 1.8 % of
    it lay inside before dense objects at the field's edge counted as bone), all true calcium inside."""
    ex = exam(seed, "C", matrix=256, n_slices=None, slice_increment_mm=None, protocol="cardiac")
    r = localise_chest(ex.volume.hu, ex.volume.spacing)
    bone = bone_voxels(ex)
    top = np.zeros(bone.shape, bool)
    top[:, :12] = True
    assert (bone & top).sum() > 1000  # not vacuous: bone is cut by the top border
    assert (bone & r.region).sum() <= 0.01 * bone.sum()
    calcium = ex.mask > 0
    assert calcium.any() and (calcium & r.region).sum() == calcium.sum()


def test_arms_in_the_field_are_left_out():
    for seed in range(40):  # the first chest exam whose patient has the arms down
        ex = generate_exam(seed, target_category="D", protocol="chest", matrix=160, n_slices=40, keep_tissue=True)
        if ex.params["body"]["arms"]:
            break
    else:
        pytest.fail("no chest exam with arms in 40 seeds")
    r = localise_chest(ex.volume.hu, ex.volume.spacing)
    check_region(ex, r.region)
    body_half_width = ex.params["body"]["a"]
    x_mm = ex.volume.affine[0, 2] * np.arange(ex.volume.shape[2]) + ex.volume.affine[0, 3]
    beside = np.abs(x_mm) > body_half_width + 2.0  # columns beside the chest: the arms
    assert (ex.tissue[:, :, beside] == TISSUES["cortical_bone"]).any()  # the humeri are in the image
    assert not r.region[:, :, beside].any()


@pytest.mark.parametrize("flip", [(2,), (1, 2)], ids=["mirrored", "rotated-180"])
def test_mirrored_or_rotated_body_gives_the_same_region(flip):
    ex = exam(1, protocol="cardiac", padding_hu=-2048.0)
    hu = np.flip(ex.volume.hu, flip)
    r = localise_chest(hu, ex.volume.spacing)
    ref = localise_chest(ex.volume.hu, ex.volume.spacing)
    calcium = np.flip(ex.mask > 0, flip)
    bone = np.flip(bone_voxels(ex), flip)
    assert (calcium & r.region).sum() == calcium.sum()
    assert (bone & r.region).sum() <= 0.05 * bone.sum()
    # the rule is symmetric up to the coarse grid's block boundaries: nearly the same region
    agree = (np.flip(r.region, flip) == ref.region).mean()
    assert agree > 0.97


def test_emphysema_and_pleural_effusion():
    ex = exam(5, protocol="cardiac", padding_hu=None, keep_tissue=True)
    hu = ex.volume.hu.copy()
    lung = ex.tissue == TISSUES["lung"]
    rng = np.random.default_rng(0)
    # emphysema: a third of the lung voxels at -990..-960 HU (bullae), in blocks
    blocks = rng.random((hu.shape[0], hu.shape[1] // 16 + 1, hu.shape[2] // 16 + 1)) < 0.35
    bullae = np.repeat(np.repeat(blocks, 16, 1), 16, 2)[:, : hu.shape[1], : hu.shape[2]] & lung
    hu[bullae] = rng.uniform(-990, -960, int(bullae.sum()))
    # effusion: water in the posterior (dependent) lung of the right side (patient right = low x)
    y_mm = ex.volume.affine[1, 1] * np.arange(hu.shape[1]) + ex.volume.affine[1, 3]
    x_mm = ex.volume.affine[0, 2] * np.arange(hu.shape[2]) + ex.volume.affine[0, 3]
    effusion = lung & (y_mm[None, :, None] > 40.0) & (x_mm[None, None, :] < 0.0)
    hu[effusion] = 10.0
    r = localise_chest(hu, ex.volume.spacing)
    assert r.found, r.note
    calcium = ex.mask > 0
    assert (calcium & r.region).sum() == calcium.sum()


def _cylinder_phantom():
    """A water cylinder with a bone rod and a small dense insert, in air: no lungs anywhere."""
    z, y, x = np.mgrid[0:20, 0:96, 0:96]
    r = np.hypot(y - 48, x - 48)
    hu = np.where(r < 40, 20.0, -1000.0).astype(np.float32)
    hu[np.hypot(y - 70, x - 48) < 6] = 700.0
    hu[8:11, 30:33, 40:43] = 450.0
    return hu


def test_no_lungs_no_region_and_nothing_discarded():
    hu = _cylinder_phantom()
    r = localise_chest(hu, (3.0, 1.0, 1.0))
    assert not r.found and r.region is None and r.box is None
    assert "no lungs" in r.note
    assert r.to_dict()["found"] is False


# ------------------------------------------------------------------------------------------ phantoms
def _bars(bar_cols: int):
    """16 slices of 4 mm (4 mm pixels: the localisation's own grid): a 30 x 30 body of 60 HU in air; slices
    0-7 hold a 400 HU bar of 3 x ``bar_cols`` at rows 10-12, slices 8-15 the same bar at rows 25-27."""
    hu = np.full((16, 40, 40), -1000.0, np.float32)
    hu[:, 5:35, 5:35] = 60.0
    hu[:8, 10:13, 10:10 + bar_cols] = 400.0
    hu[8:, 25:28, 10:10 + bar_cols] = 400.0
    return hu


def test_z_change_is_the_share_of_the_body_that_changes_over_30_mm():
    """Every pair of slices 32 mm apart (8 x 4 mm, the first step >= 30 mm) has one slice from each half: both
    bars' blocks change by 340 HU, the rest of the 900-block body not at all: z_change = 2 * 3 * n / 900."""
    for cols, phantom in ((10, False), (5, True)):
        r = localise_chest(_bars(cols), (4.0, 4.0, 4.0))
        assert r.z_change == pytest.approx(2 * 3 * cols / 900)
        assert r.phantom_like is phantom
        assert r.to_dict()["z_change"] == pytest.approx(round(2 * 3 * cols / 900, 3))


def test_short_or_empty_volumes_are_never_phantom_like():
    short = _bars(5)[:8]  # 32 mm: no two slices 30 mm apart inside it
    air = np.full((16, 40, 40), -1000.0, np.float32)
    for hu in (short, air):
        r = localise_chest(hu, (4.0, 4.0, 4.0))
        assert np.isnan(r.z_change) and not r.phantom_like and r.to_dict()["z_change"] is None


@pytest.mark.parametrize("seed,kw", [
    (1, {}), (2, {"fov_mm": 160.0}), (3, {"protocol": "chest"}), (4, {"target_category": "A"}),
    (5, {"slice_increment_mm": 0.5, "slice_thickness_mm": 0.6, "n_slices": 160}),
])
def test_synthetic_patients_are_not_phantom_like_and_their_repeated_slice_is(seed, kw):
    """A patient's anatomy changes along z; one of its slices repeated (fresh noise on each copy, as a
    scanner gives) is a phantom's repeating section."""
    ex = generate_exam(seed, matrix=128, **kw)
    r = localise_chest(ex.volume.hu, ex.volume.spacing)
    assert r.z_change >= 0.08 and not r.phantom_like, r.z_change
    rng = np.random.default_rng(seed)
    hu = ex.volume.hu
    extruded = np.repeat(hu[hu.shape[0] // 2][None], hu.shape[0], axis=0)
    extruded = extruded + rng.normal(0.0, 30.0, extruded.shape).astype(np.float32)
    r = localise_chest(extruded, ex.volume.spacing)
    assert r.z_change < 0.01 and r.phantom_like, r.z_change


def test_real_phantom_is_phantom_like(phantom_dir):
    from agatax import read_volume

    vol = read_volume(phantom_dir / "dicom")
    r = localise_chest(vol.hu, vol.spacing)
    assert r.phantom_like and r.z_change < 0.02, r.z_change


def test_tiny_volume_is_not_localised():
    r = localise_chest(np.zeros((2, 2, 2), np.float32), (3.0, 0.5, 0.5))
    assert not r.found and "too small" in r.note


# ------------------------------------------------------------------------------------------ pipeline
def test_pipeline_keeps_no_calcium_on_bone_at_the_border_or_in_a_chest_field():
    ens = all_calcium_ensemble()
    for ex in (exam(1, protocol="cardiac", padding_hu=-2048.0), exam(3, protocol="chest")):
        bone = bone_voxels(ex)
        alone = dict(air_share=None, noise_snr=None)  # the localisation alone: no object rule after it
        everything = run_pipeline(ens, ex.volume, localise=False, **alone)
        assert (everything.mask & bone).sum() == bone.sum()  # without localisation: all bone scored
        assert everything.chest is None
        res = run_pipeline(ens, ex.volume, **alone)
        assert res.chest.found
        assert not (res.mask & ~res.chest.region).any()
        assert (res.mask & bone).sum() <= 0.05 * bone.sum()
        calcium = ex.mask > 0
        assert (res.mask & calcium).sum() == calcium.sum()
        assert res.to_dict()["chest"]["found"] is True


def test_pipeline_without_lungs_discards_nothing():
    ens = all_calcium_ensemble()
    vol = Volume(_cylinder_phantom(), (3.0, 1.0, 1.0))
    with_loc = run_pipeline(ens, vol, allow_phantom=True)
    without = run_pipeline(ens, vol, localise=False)
    assert not with_loc.chest.found
    np.testing.assert_array_equal(with_loc.mask, without.mask)
    assert with_loc.mask.sum() == (vol.hu >= 130).sum()


def test_a_patient_exam_without_lungs_is_refused_unless_localisation_is_off():
    """A chest exam whose lungs are filled with soft tissue (30 HU: no aerated lung; not a phantom, its body
    changes along z) has no chest region: without it every object the networks mark would be scored, bone
    included. run_pipeline and segment refuse it (NO_LUNGS, the way out named); localise=False scores it."""
    from scipy import ndimage

    from agatax import segment
    from agatax.errors import InputError

    ens = all_calcium_ensemble()
    ex = exam(1, protocol="chest")
    hu = np.asarray(ex.volume.hu).copy()
    body = np.stack([ndimage.binary_fill_holes(s > -300) for s in hu])
    hu[(hu < -300) & body] = 30.0
    vol = Volume(hu, ex.volume.spacing)
    found = localise_chest(hu, vol.spacing)
    assert not found.found and not found.phantom_like
    for call in (lambda **k: run_pipeline(ens, vol, **k), lambda **k: segment(ens, vol, **k)):
        with pytest.raises(InputError) as err:
            call()
        assert err.value.code == "NO_LUNGS" and "no lungs" in str(err.value)
        assert "--no-localise" in err.value.hint
    res = run_pipeline(ens, vol, localise=False)
    assert res.mask.sum() == (hu >= 130).sum()  # the all-calcium networks: every voxel >= 130 HU, bone included


def test_lungs_without_a_region_between_them_are_refused_with_their_own_code(monkeypatch):
    """Where the localisation finds lungs but no mediastinum between them (found False, lungs >= 150 cm^3:
    here a real localisation of a synthetic chest with its region taken away), the refusal says so (NO_REGION),
    not that there are no lungs."""
    import dataclasses

    from agatax import localise
    from agatax.errors import InputError

    ex = exam(1, protocol="chest")
    real = localise.localise_chest(ex.volume.hu, ex.volume.spacing)
    assert real.found and real.lung_cm3 >= localise.MIN_LUNGS_CM3
    monkeypatch.setattr(localise, "localise_chest", lambda hu, spacing: dataclasses.replace(
        real, found=False, region=None, box=None, note="lungs found but no mediastinum between them"))
    with pytest.raises(InputError) as err:
        run_pipeline(all_calcium_ensemble(), ex.volume)
    assert err.value.code == "NO_REGION" and f"lungs were found ({real.lung_cm3:.0f} cm^3)" in str(err.value)
    assert "--no-localise" in err.value.hint


def test_pipeline_refuses_a_phantom_unless_allowed():
    """A water cylinder (its section repeats along z) is refused with PHANTOM by every entry point; allowed,
    it is scored with a note that says why the score may be far too low."""
    from agatax import segment
    from agatax.errors import InputError

    ens = all_calcium_ensemble()
    vol = Volume(_cylinder_phantom(), (3.0, 1.0, 1.0))
    for call in (lambda **k: run_pipeline(ens, vol, **k), lambda **k: segment(ens, vol, **k)):
        with pytest.raises(InputError) as err:
            call()
        assert err.value.code == "PHANTOM" and "--allow-phantom" in err.value.hint
    res = run_pipeline(ens, vol, allow_phantom=True)
    assert res.scores.agatston > 0 and any(n.startswith("phantom:") for n in res.notes)
    patient = run_pipeline(ens, exam(1, protocol="cardiac").volume)
    assert not any(n.startswith("phantom:") for n in patient.notes)


def test_real_phantom_spine_insert_and_rod_are_left_out(phantom_dir):
    """The QRM phantom's lung-equivalent foam (~-790 HU) is taken for lungs; its spine insert and the
    calibration rod (located by hand on this series: rows 320-470 x columns 200-310, and slices 29-38 x
    rows 190-245 x columns 225-290, >= 200 HU) are cut out as bone, the calcium inserts stay inside."""
    from agatax import read_volume

    vol = read_volume(phantom_dir / "dicom")
    hu = vol.hu
    r = localise_chest(hu, vol.spacing)
    assert r.found, r.note
    spine = np.zeros(hu.shape, bool)
    spine[:, 320:470, 200:310] = True
    spine &= hu >= 200
    rod = np.zeros(hu.shape, bool)
    rod[29:39, 190:245, 225:290] = True
    rod &= hu >= 200
    assert spine.sum() > 5000 and rod.sum() > 3000
    assert (r.region & spine).sum() <= 0.01 * spine.sum()
    assert not (r.region & rod).any()
    for rows, cols in (((214, 229), (172, 190)), ((144, 158), (284, 299)), ((275, 290), (293, 305))):
        insert = np.zeros(hu.shape, bool)
        insert[20:25, slice(*rows), slice(*cols)] = True
        insert &= hu >= 130
        assert insert.any() and (r.region & insert).sum() == insert.sum()


def test_contrast_enhanced_exam_is_refused():
    """Blood at +250 HU and myocardium at +80 HU (a contrast scan): the mediastinum's 70th percentile rises
    far above a non-contrast exam's, and the pipeline refuses with CONTRAST_ENHANCED instead of scoring
    (before, enhanced blood would have been taken for calcium, or for bone)."""
    from agatax import InputError

    ex = exam(5, protocol="cardiac", padding_hu=None, keep_tissue=True)
    plain = localise_chest(ex.volume.hu, ex.volume.spacing)
    assert 30.0 < plain.mediastinum_hu70 < 100.0 and not plain.contrast_enhanced
    hu = ex.volume.hu.copy()
    hu[ex.tissue == TISSUES["blood"]] += 250.0
    hu[ex.tissue == TISSUES["myocardium"]] += 80.0
    enhanced = localise_chest(hu, ex.volume.spacing)
    assert enhanced.contrast_enhanced and enhanced.mediastinum_hu70 > 130.0
    with pytest.raises(InputError) as err:
        run_pipeline(all_calcium_ensemble(), Volume(hu, ex.volume.spacing))
    assert err.value.code == "CONTRAST_ENHANCED"
    assert "--assume-non-contrast" in err.value.hint and "covers only" not in err.value.message
    # a scan shorter than a heart: the refusal says so, as such a scan can read dense without contrast too
    dz = ex.volume.spacing[0]
    k = int(70.0 // dz)
    mid = int(np.nonzero((ex.tissue == TISSUES["blood"]).any(axis=(1, 2)))[0].mean())
    with pytest.raises(InputError) as err:
        run_pipeline(all_calcium_ensemble(), Volume(hu[mid - k // 2: mid - k // 2 + k], ex.volume.spacing))
    assert err.value.code == "CONTRAST_ENHANCED" and f"covers only {k * dz:.0f} mm along z" in err.value.message
    res = run_pipeline(all_calcium_ensemble(), Volume(hu, ex.volume.spacing), localise=False)
    assert res.chest is None
    # asserted non-contrast: scored with the chest region kept, and a note that says what was assumed
    res = run_pipeline(all_calcium_ensemble(), Volume(hu, ex.volume.spacing), assume_non_contrast=True)
    assert res.chest.found and res.chest.contrast_enhanced
    assert not (res.mask & ~res.chest.region).any() and res.mask.any()
    assert any(n.startswith("contrast: the mediastinum reads") for n in res.notes)
    plain_res = run_pipeline(all_calcium_ensemble(), ex.volume, assume_non_contrast=True)
    assert not any(n.startswith("contrast:") for n in plain_res.notes)  # a plain exam gets no such note


def test_the_padding_value_is_read_from_the_corners():
    """The value outside the reconstruction circle, where the first slice's corners hold one value below
    -1000 HU; none where they differ (noisy air) or lie above it (a field without a circle)."""
    from agatax.localise import _padding_value

    hu = np.full((2, 8, 8), 40.0, np.float32)
    hu[0, [0, 0, -1, -1], [0, -1, 0, -1]] = -2048.0
    assert _padding_value(hu) == -2048.0
    hu[0, 0, 0] = -2047.0
    assert _padding_value(hu) is None
    hu[0, [0, 0, -1, -1], [0, -1, 0, -1]] = -1000.0  # air at its nominal value is not padding
    assert _padding_value(hu) is None


def test_the_padding_share_of_each_cell():
    """Each coarse cell's share of padding voxels, from the first and last slices, in every slice: the oracle
    counted by hand on a circle-like corner."""
    from agatax.localise import _padding_share

    hu = np.full((5, 8, 8), 40.0, np.float32)
    hu[:, :3, :3] = -3024.0  # the corner outside the circle
    hu[:, 0, -1] = hu[:, -1, 0] = hu[:, -1, -1] = -3024.0
    share = _padding_share(hu, (2, 4, 4), (3, 2, 2))
    expected = np.array([[9 / 16, 1 / 16], [1 / 16, 1 / 16]], np.float32)
    np.testing.assert_allclose(share, np.broadcast_to(expected, (3, 2, 2)))
    assert not _padding_share(np.full((5, 8, 8), -1000.0, np.float32), (2, 4, 4), (3, 2, 2)).any()


def test_block_mean_in_chunks_equals_the_whole_volume_mean():
    from agatax.localise import _block_mean

    rng = np.random.default_rng(0)
    hu = rng.uniform(-3000, 2000, size=(23, 17, 19)).astype(np.float32)
    f = (3, 4, 5)
    # oracle: edge-pad the clipped volume to whole blocks, mean per block in float64
    a = np.pad(np.maximum(hu, -1000.0).astype(np.float64), [(0, (-n) % k) for n, k in zip(hu.shape, f)], mode="edge")
    expected = a.reshape(8, 3, 5, 4, 4, 5).mean(axis=(1, 3, 5))
    for chunk in (1, 500, 1 << 24):
        np.testing.assert_allclose(_block_mean(hu, f, chunk_voxels=chunk), expected, rtol=1e-5, atol=1e-3)


# ------------------------------------------------------------------------------------------ the carina
def full_chest(seed=11):
    """A chest CT from the lung apices to below the diaphragm (n_slices not given): trachea, carina, arch.
    Seeds drawn until the arch carries calcified plaques above the carina."""
    key = ("full", seed)
    if key not in _cache:
        for s in range(seed, seed + 40):
            ex = generate_exam(s, target_category="D", protocol="chest", matrix=160, calcium_burden=1.0,
                               keep_tissue=True)
            if arch_plaques_above_carina(ex).any():
                _cache[key] = ex
                break
        else:
            pytest.fail("no chest exam with arch plaques above the carina in 40 seeds")
    return _cache[key]


def true_carina_slice(ex):
    """Oracle: the generator's carina (patient mm, after its deformation) as a fractional slice index."""
    z, y, x = ex.params["carina_mm"]
    return float(np.linalg.solve(ex.volume.affine, np.array([x, y, z, 1.0]))[0])


def arch_plaques_above_carina(ex):
    """Voxels of aortic-wall calcification more than 20 mm above the generator's carina (the arch's)."""
    k = np.arange(ex.volume.shape[0])[:, None, None]
    above = k > true_carina_slice(ex) + 20.0 / ex.volume.spacing[0]
    return (ex.distractor_mask == DISTRACTOR_CODES["aortic_wall"]) & above & (ex.volume.hu >= 130)


def test_carina_is_found_and_the_region_ends_above_it():
    """On a chest CT the trachea is traced to its division; the region keeps every coronary calcification and
    ends CARINA_MARGIN_MM above the carina, so the arch's calcified plaques (and the great vessels, the
    trachea, the lung apices) are left out."""
    from agatax.localise import CARINA_MARGIN_MM

    ex = full_chest()
    r = localise_chest(ex.volume.hu, ex.volume.spacing)
    assert r.found, r.note
    dz = ex.volume.spacing[0]
    truth = true_carina_slice(ex)
    assert truth - 20.0 / dz <= r.carina_slice <= truth + 15.0 / dz, (r.carina_slice, truth)
    assert "carina at slice" in r.note and r.to_dict()["carina_slice"] == round(r.carina_slice, 1)
    k = np.arange(ex.volume.shape[0])
    assert not r.region[k > r.carina_slice + CARINA_MARGIN_MM / dz].any()
    assert r.region[k < r.carina_slice].any()
    check_region(ex, r.region)
    arch = arch_plaques_above_carina(ex)
    assert arch.sum() > 0 and not (arch & r.region).any()
    # the box (the networks' crop) ends there too
    assert r.box[0].stop <= r.carina_slice + CARINA_MARGIN_MM / dz + 1


def test_carina_of_a_head_first_stack_cuts_the_other_side():
    """The rule reads the anatomy, not the slice order: the same exam stored feet-last (z reversed) gives
    the mirrored carina index and the mirrored region."""
    ex = full_chest()
    ref = localise_chest(ex.volume.hu, ex.volume.spacing)
    r = localise_chest(ex.volume.hu[::-1], ex.volume.spacing)
    n = ex.volume.shape[0]
    assert abs(r.carina_slice - (n - 1 - ref.carina_slice)) <= 1.0
    assert (r.region[::-1] == ref.region).mean() > 0.97
    assert not (r.region[::-1] & arch_plaques_above_carina(ex)).any()


def test_an_airway_that_does_not_divide_cuts_nothing():
    """With the main bronchi filled in (soft tissue below the carina), the tube's lower end shows no division:
    no carina is given and the region is not cut along z."""
    ex = full_chest()
    hu = ex.volume.hu.copy()
    k = np.arange(hu.shape[0])[:, None, None]
    bronchi = (ex.tissue == TISSUES["airway"]) & (k < true_carina_slice(ex) + 3.0)
    hu[bronchi] = 40.0
    r = localise_chest(hu, ex.volume.spacing)
    assert r.found and np.isnan(r.carina_slice) and r.to_dict()["carina_slice"] is None
    assert "not cut along z" in r.note
    assert r.region[k[:, 0, 0] > true_carina_slice(ex) + 40.0 / ex.volume.spacing[0]].any()


def test_pipeline_scores_nothing_above_the_carina_of_a_feet_last_volume():
    """run_pipeline on a Volume whose slices run head to feet (affine with a negative z step): the carina
    comes back on the stored grid and an ensemble that calls everything calcium keeps nothing above it."""
    from agatax.localise import CARINA_MARGIN_MM

    ex = full_chest()
    n = ex.volume.shape[0]
    aff = np.array(ex.volume.affine, dtype=np.float64)
    aff[:3, 3] += aff[:3, 0] * (n - 1)
    aff[:3, 0] *= -1.0
    vol = Volume(np.ascontiguousarray(ex.volume.hu[::-1]), ex.volume.spacing, affine=aff)
    res = run_pipeline(all_calcium_ensemble(), vol)
    stored_truth = n - 1 - true_carina_slice(ex)
    assert abs(res.chest.carina_slice - stored_truth) <= 20.0 / ex.volume.spacing[0]
    k = np.arange(n)
    assert res.mask.any()
    assert not res.mask[k < res.chest.carina_slice - CARINA_MARGIN_MM / ex.volume.spacing[0]].any()
    assert not (res.mask & arch_plaques_above_carina(ex)[::-1]).any()
    calcium = (ex.mask > 0)[::-1]
    assert (res.mask & calcium).sum() == calcium.sum()


@pytest.mark.parametrize("seed", [3, 5])
def test_the_pad_and_table_under_the_back_are_not_taken_for_lung(seed):
    """A chest exam drawn with its support (foam pad and table top under the back): the lungs, the region
    and the bone left out are what they are without it (before, the pad counted as lung and the region
    reached the back muscles and ribs: 37 % more lung, twice the region); the note names what was set aside;
    the table's skins lie outside the region."""
    plain = exam(seed, "D", protocol="chest", matrix=256)
    table = exam(seed, "D", protocol="chest", matrix=256, table=True)
    ref = localise_chest(plain.volume.hu, plain.volume.spacing)
    r = localise_chest(table.volume.hu, table.volume.spacing)
    assert r.found and r.lung_cm3 == pytest.approx(ref.lung_cm3, rel=0.01)
    assert (r.region == ref.region).mean() > 0.995
    check_region(table, r.region)
    assert "outside the patient" in r.note and "outside the patient" not in ref.note
    skins = table.distractor_mask == DISTRACTOR_CODES["table"]
    assert skins.any() and not (skins & r.region).any()
    # the same exam upside down (the pad in front of the patient, as under a prone patient): the same again
    flipped = localise_chest(table.volume.hu[:, ::-1], table.volume.spacing)
    ref_flipped = localise_chest(plain.volume.hu[:, ::-1], plain.volume.spacing)
    assert flipped.lung_cm3 == pytest.approx(ref_flipped.lung_cm3, rel=0.01)
    assert (flipped.region == ref_flipped.region).mean() > 0.995
    assert not (skins[:, ::-1] & flipped.region).any()


@pytest.mark.parametrize("padding", [-1024.0, None])
def test_a_small_field_in_front_of_the_spine_keeps_its_lungs(padding):
    """A 170 mm cardiac field centred well in front (the spine outside it): the ribs it cuts at its edge are
    not a spine, so no lung is set aside as lying outside the patient; every true calcification stays in the
    region (before the vertebra check, the lungs of such exams were set aside and the region lost them all)."""
    ex = exam(4, "C", protocol="cardiac", fov_mm=170.0, fov_center_mm=(15.0, -50.0), padding_hu=padding,
              matrix=160, n_slices=40)
    r = localise_chest(ex.volume.hu, ex.volume.spacing)
    assert r.found and "outside the patient" not in r.note
    calcium = ex.mask > 0
    assert calcium.any() and (calcium & r.region).sum() == calcium.sum()


@pytest.mark.parametrize("seed", [9001, 3])
def test_the_stomachs_and_colons_gas_is_not_taken_for_lung(seed):
    """A chest exam reaching into the upper abdomen: the gas of the stomach and colon is not lung. The oracle
    is the same exam with that gas (the generator's tissue map) filled with fluid: the same lungs and region.
    Before, the gas formed lung components of its own or joined the left lung's across the diaphragm, and the
    lungs' hull took the region 100-150 mm below the heart."""
    ex = exam(seed, "D", protocol="chest", matrix=128, n_slices=None, slice_increment_mm=None, abdomen=True,
              keep_tissue=True)
    gas = ex.tissue == TISSUES["bowel_gas"]
    assert gas.sum() * np.prod(ex.volume.spacing) / 1000.0 > 20.0  # not vacuous: the field holds bowel gas
    filled = ex.volume.hu.copy()
    filled[gas] = 20.0
    ref = localise_chest(filled, ex.volume.spacing)
    r = localise_chest(ex.volume.hu, ex.volume.spacing)
    assert r.found and r.lung_cm3 == pytest.approx(ref.lung_cm3, rel=0.02)
    assert (r.region == ref.region).mean() > 0.995
    calcium = ex.mask > 0
    assert calcium.any() and (calcium & r.region).sum() == calcium.sum()


def test_a_gas_pocket_is_bowel_only_under_the_lungs_in_soft_tissue_and_small():
    """Hand-made coarse cells, lungs (-860 HU) filling the upper slices: a 12 mm pocket of gas in soft tissue
    under them (a bowel's) goes, with its rim; the same pocket in lung, under the lungs (a basal bulla), stays;
    the pocket in soft tissue at the lungs' widest (a pneumothorax's place) stays; a large one under them stays;
    with two cells of soft tissue between the lungs and its top (a diaphragm and a stomach wall), it goes."""
    from agatax.localise import _soft_walled_gas

    def volume(pocket_hu_around, z0, size=3):
        m = np.full((24, 16, 16), 40.0, np.float32)
        m[12:, 1:15, 1:15] = -860.0  # the lungs
        m[z0 - 2:z0 + size + 2, 4 - 2:4 + size + 2, 4 - 2:4 + size + 2] = pocket_hu_around
        m[z0:z0 + size, 4:4 + size, 4:4 + size] = -1000.0
        return m

    m = volume(40.0, 3)
    out = _soft_walled_gas(m <= -960.0, m)
    assert out[3:6, 4:7, 4:7].all() and out.sum() == 5 ** 3  # the pocket and its rim, nothing else
    m = volume(-860.0, 3)  # in lung under the lungs' bulk
    assert not _soft_walled_gas(m <= -960.0, m).any()
    m = volume(40.0, 16)  # in soft tissue where the lungs are widest
    assert not _soft_walled_gas(m <= -960.0, m).any()
    m = volume(40.0, 1, size=8)  # 512 cells: over a tenth of the lungs and gas
    assert not _soft_walled_gas(m <= -960.0, m).any()
    m = volume(40.0, 8)  # two soft-tissue cells between its top and the lungs
    assert _soft_walled_gas(m <= -960.0, m)[9, 5, 5]


def _air_in_lung(ex, where, hu_range, seed=0):
    """The exam's HU with its lung cells (the generator's tissue map) inside ``where`` set to air."""
    hu = ex.volume.hu.copy()
    cells = (ex.tissue == TISSUES["lung"]) & where
    hu[cells] = np.random.default_rng(seed).uniform(*hu_range, int(cells.sum()))
    return hu, cells


@pytest.mark.parametrize("both_sides", [False, True])
def test_a_pneumothorax_in_front_of_the_heart_stays_lung(both_sides):
    """Air in front of the lungs beside the heart (a pneumothorax: gas between the chest wall and the lung,
    60-200 cm^3 a side) is gas that soft tissue half surrounds, but it lies where the lungs are widest, not
    under them: it stays lung, and every true calcification stays in the region (taken for bowel gas, it had
    cut the heart's front out of the region: 71 % and 46 % of the calcium kept here)."""
    ex = exam(5, protocol="cardiac", padding_hu=None, keep_tissue=True)
    y = ex.volume.affine[1, 1] * np.arange(ex.volume.shape[1]) + ex.volume.affine[1, 3]
    x = ex.volume.affine[0, 2] * np.arange(ex.volume.shape[2]) + ex.volume.affine[0, 3]
    lung_y = y[np.nonzero((ex.tissue == TISSUES["lung"]).any(axis=(0, 2)))[0]]
    front = (y < np.percentile(lung_y, 15))[None, :, None]
    side = (x > 0)[None, None, :] if not both_sides else np.ones((1, 1, len(x)), bool)
    hu, cells = _air_in_lung(ex, front & side, (-1000.0, -990.0))
    assert 60.0 <= cells.sum() * np.prod(ex.volume.spacing) / 1000.0 / (2 if both_sides else 1) <= 200.0  # a side
    r = localise_chest(hu, ex.volume.spacing)
    assert r.found, r.note
    calcium = ex.mask > 0
    assert (calcium & r.region).sum() == calcium.sum()


@pytest.mark.parametrize("sides", ["left", "both"])
def test_severe_emphysema_at_the_lung_bases_stays_lung(sides):
    """Lung bases destroyed by emphysema (every lung cell below the heart's middle at -975 to -965 HU, as in
    panlobular emphysema) are gas under the lungs' bulk, but large: they stay lung, and every true
    calcification stays in the region."""
    ex = exam(3, protocol="chest", keep_tissue=True)
    myo = np.nonzero((ex.tissue == TISSUES["myocardium"]).any(axis=(1, 2)))[0]
    x = ex.volume.affine[0, 2] * np.arange(ex.volume.shape[2]) + ex.volume.affine[0, 3]
    below = (np.arange(ex.volume.shape[0]) < myo.mean())[:, None, None]
    side = (x > 0)[None, None, :] if sides == "left" else np.ones((1, 1, len(x)), bool)
    hu, cells = _air_in_lung(ex, below & side, (-975.0, -965.0))
    assert cells.any()
    r = localise_chest(hu, ex.volume.spacing)
    assert r.found, r.note
    calcium = ex.mask > 0
    assert (calcium & r.region).sum() == calcium.sum()


@pytest.mark.parametrize("seed", [3, 5])
def test_the_splenic_arterys_calcium_lies_outside_the_region(seed):
    """A chest exam into the upper abdomen with calcium on the splenic artery (a look-alike the networks were
    never trained on, 45-80 mm below the heart): it lies outside the region, the coronary calcium inside (before
    the bowel gas stopped counting as lung, the region held all of it)."""
    ex = generate_exam(seed, target_category="D", protocol="chest", matrix=128, abdomen=True,
                       lookalike_rates={"splenic_artery": 1.0})
    r = localise_chest(ex.volume.hu, ex.volume.spacing)
    splenic = (ex.distractor_mask == DISTRACTOR_CODES["splenic_artery"]) & (ex.volume.hu >= 130)
    assert splenic.any() and not (splenic & r.region).any()
    calcium = ex.mask > 0
    assert calcium.any() and (calcium & r.region).sum() == calcium.sum()


@pytest.mark.parametrize("seed", [3, 9001])
def test_the_region_ends_far_below_the_carina_in_a_tall_chest(seed, monkeypatch):
    """A chest exam into the upper abdomen, stretched along z (slices 1.6 x further apart: a tall chest, the
    carina 240-270 mm above the region's lower end): the region ends HEART_BELOW_CARINA_MM below the traced
    carina, and every coronary calcification stays in it. The oracle: the same call with no lower bound, cut
    by hand at that level (before the bound, the region reached the upper abdomen beyond it)."""
    from agatax import localise as loc

    ex = exam(seed, "D", protocol="chest", matrix=160, n_slices=None, slice_increment_mm=None, abdomen=True)
    spacing = (ex.volume.spacing[0] * 1.6, *ex.volume.spacing[1:])
    r = localise_chest(ex.volume.hu, spacing)
    assert r.found and np.isfinite(r.carina_slice), r.note
    monkeypatch.setattr(loc, "HEART_BELOW_CARINA_MM", 1e6)
    ref = localise_chest(ex.volume.hu, spacing)
    k = np.arange(ex.volume.shape[0])
    beyond = k < r.carina_slice - 200.0 / spacing[0]  # slice index grows towards the head here
    assert ref.region[beyond].any()  # not vacuous: without the bound the region reaches beyond 200 mm
    expected = ref.region & ~beyond[:, None, None]
    assert (r.region == expected).all()
    assert "200 mm from it on the heart's side" in r.note
    assert r.box[0].start >= np.flatnonzero(~beyond)[0]
    calcium = ex.mask > 0
    assert calcium.any() and (calcium & r.region).sum() == calcium.sum()
    # the same exam stored the other way along z: the bound falls on the mirrored side
    monkeypatch.undo()
    flipped = localise_chest(ex.volume.hu[::-1], spacing)
    n = ex.volume.shape[0]
    assert abs(flipped.carina_slice - (n - 1 - r.carina_slice)) <= 1.0
    assert not flipped.region[::-1][k < (n - 1 - flipped.carina_slice) - 200.0 / spacing[0]].any()
    assert (calcium & flipped.region[::-1]).sum() == calcium.sum()


def test_the_lower_bound_is_not_applied_when_most_of_the_region_lies_beyond_it(monkeypatch):
    """A carina found far too high would put most of the region beyond the lower bound: then nothing is cut
    there and the note says so (here the bound is set to 30 mm to make the carina read so)."""
    from agatax import localise as loc

    ex = full_chest()
    monkeypatch.setattr(loc, "HEART_BELOW_CARINA_MM", 1e6)
    ref = localise_chest(ex.volume.hu, ex.volume.spacing)
    monkeypatch.setattr(loc, "HEART_BELOW_CARINA_MM", 30.0)
    r = localise_chest(ex.volume.hu, ex.volume.spacing)
    assert np.isfinite(r.carina_slice) and (r.region == ref.region).all()
    assert "not cut there" in r.note


def _airless(ex, side, below_slice=None):
    """The exam's HU with one lung's cells (the generator's tissue map; patient left is +x) at 30 HU: a lung
    collapsed, filled by an effusion or removed; only below ``below_slice`` when given."""
    x = ex.volume.affine[0, 2] * np.arange(ex.volume.shape[2]) + ex.volume.affine[0, 3]
    sel = (x > 0) if side == "left" else (x < 0)
    cells = (ex.tissue == TISSUES["lung"]) & sel[None, None, :]
    if below_slice is not None:
        cells &= (np.arange(ex.volume.shape[0]) <= below_slice)[:, None, None]
    hu = ex.volume.hu.copy()
    hu[cells] = 30.0
    return hu


@pytest.mark.parametrize("seed,protocol", [(5, "cardiac"), (3, "chest")])
@pytest.mark.parametrize("side", ["left", "right"])
def test_one_lung_airless_keeps_the_heart_in_the_region(seed, protocol, side):
    """One lung airless (collapsed, filled by an effusion, removed): the region still holds every coronary
    calcification and leaves out the bone, and the note says the lungs were mirrored (or, where no vertebra is
    traced, that the region spans the field in the one-sided slices). From the other lung
    alone the hull stopped at its medial surface: these exams kept 0-26 % of their calcium. As drawn, the
    region holds them too."""
    ex = exam(seed, "D", protocol=protocol, padding_hu=None, keep_tissue=True)
    check_region(ex, localise_chest(ex.volume.hu, ex.volume.spacing).region)  # as drawn
    r = localise_chest(_airless(ex, side), ex.volume.spacing)
    assert r.found, r.note
    check_region(ex, r.region)
    # mirrored about the spine in the chest exam; this cardiac field shows no whole vertebra (the field's
    # edge cuts the spine's band), so its one-sided slices span the field
    expected = "spans the whole field" if protocol == "cardiac" else "mirrored there about the spine"
    assert expected in r.note, r.note


@pytest.mark.parametrize("seed,protocol,share,matrix", [(11, "cardiac", 0.8, 256), (3, "chest", 0.5, 160)])
def test_a_lung_airless_over_part_of_the_heart_keeps_the_heart_in_the_region(seed, protocol, share, matrix):
    """One lung airless up to a share of the heart's height (a lower-lobe collapse, an effusion): every
    coronary calcification stays in the region. Before the one-lung rule the cardiac exam kept 80 %; with the
    rule's first form (mirroring only when a third of all lung slices were one-sided) the chest exam, whose
    lungs reach far above the heart, kept 85 %."""
    ex = exam(seed, "D", protocol=protocol, padding_hu=None, keep_tissue=True, matrix=matrix, n_slices=None,
              slice_increment_mm=None)
    myo = np.nonzero((ex.tissue == TISSUES["myocardium"]).any(axis=(1, 2)))[0]
    top = myo[0] + share * (myo[-1] - myo[0])
    r = localise_chest(_airless(ex, "left", top), ex.volume.spacing)
    assert r.found, r.note
    check_region(ex, r.region)
    assert "mirrored" in r.note, r.note


def test_a_region_too_small_for_a_heart_is_refused(monkeypatch):
    """A region that cannot hold a heart (here: one lung airless with the one-lung rule switched off, the
    region a sliver along the other lung) is refused with REGION_TOO_SMALL instead of a score too low;
    localise=False, the way out the hint names, scores the exam. As drawn, the same exam is scored."""
    from agatax import localise as loc
    from agatax.errors import AgataxError
    from agatax.pipeline import MIN_REGION_SECTION_CM2

    ex = exam(5, "D", protocol="cardiac", padding_hu=None, keep_tissue=True)
    spacing = ex.volume.spacing
    assert run_pipeline(all_calcium_ensemble(), ex.volume).chest.found
    monkeypatch.setattr(loc, "_SIDE_EMPTY", 0.0)
    hu = _airless(ex, "left")
    region = localise_chest(hu, spacing).region
    section = region.sum(axis=(1, 2)).max() * spacing[1] * spacing[2] / 100.0
    assert section < MIN_REGION_SECTION_CM2  # the oracle: the sliver's widest section, measured here
    vol = Volume(hu, spacing, affine=ex.volume.affine)
    with pytest.raises(AgataxError) as err:
        run_pipeline(all_calcium_ensemble(), vol)
    assert err.value.code == "REGION_TOO_SMALL" and "localise=False" in err.value.hint
    res = run_pipeline(all_calcium_ensemble(), vol, localise=False)
    calcium = (ex.mask > 0) & (hu >= 130.0)  # (the airless lung may paint over a voxel at its edge)
    assert (res.mask & calcium).sum() == calcium.sum()


@pytest.mark.parametrize("seed", [9313, 9314, 9328])
def test_a_small_field_keeps_the_front_of_the_heart(seed, monkeypatch):
    """A 160 mm cardiac field cuts the lungs in front of the heart (and here the heart itself): the hull of
    the lungs it shows passes behind the heart's front. The lungs at the field's edge are taken to go on
    beyond it, and every coronary calcification stays in the region, with >= 95 % of the bone left out. The
    oracle: the generator's true calcium; without the rule (SMALL_FIELD_MM 0) these exams lose 9-32 %."""
    from agatax import localise as loc

    ex = generate_exam(seed, target_category="D", protocol="cardiac", matrix=128, fov_mm=160.0)
    r = localise_chest(ex.volume.hu, ex.volume.spacing)
    assert r.found and "160 mm field cuts the lungs" in r.note
    check_region(ex, r.region)
    monkeypatch.setattr(loc, "SMALL_FIELD_MM", 0.0)
    seen_only = localise_chest(ex.volume.hu, ex.volume.spacing)
    calcium = ex.mask > 0
    assert (calcium & seen_only.region).sum() < calcium.sum()  # not vacuous: the rule is what keeps it


def test_a_field_of_170_mm_or_more_is_left_as_it_was(monkeypatch):
    """In fields as wide as the generator's (170-240 mm) the lungs at the edge are not carried beyond it:
    the region is voxel for voxel the one built without the rule (carried at every field it brings the
    anterior chest wall's ribs and costal cartilage into cardiac regions)."""
    from agatax import localise as loc

    ex = generate_exam(9313, target_category="D", protocol="cardiac", matrix=128, fov_mm=172.0)
    r = localise_chest(ex.volume.hu, ex.volume.spacing)
    assert r.found and "cuts the lungs" not in r.note
    monkeypatch.setattr(loc, "SMALL_FIELD_MM", 0.0)
    assert (localise_chest(ex.volume.hu, ex.volume.spacing).region == r.region).all()
    monkeypatch.setattr(loc, "SMALL_FIELD_MM", 1000.0)  # the rule at this field: it would change the region
    assert not (localise_chest(ex.volume.hu, ex.volume.spacing).region == r.region).all()


@pytest.mark.parametrize("seed", [9391, 9395])
def test_bone_cut_by_the_reconstruction_circle_is_left_out(seed):
    """A 150 mm field centred 40 mm left of the generator's draw: the reconstruction circle cuts the vertebral
    body, and the padding outside it (-1024 and -3024 HU here) is the field's edge, not air. The cut bone is
    left out (>= 95 %; before the padding was seen, 79 % and 83 %), and every calcification kept."""
    ex = generate_exam(seed, target_category="D", protocol="cardiac", matrix=128, fov_mm=150.0,
                       fov_center_mm=(55.0, -5.0))
    assert ex.params["scanner"]["padding_hu"] is not None  # the circle is there
    r = localise_chest(ex.volume.hu, ex.volume.spacing)
    assert r.found
    check_region(ex, r.region)


def test_a_field_showing_one_lung_and_no_spine_spans_the_field():
    """A 180 mm field moved 40 mm left and 20 mm forward shows the left lung only and no vertebra: the hull of
    that lung alone was a sliver along its medial surface that kept 29 % of the calcium, and was too large to
    be refused. The region now spans those slices whole (less lungs and bone): every calcification kept,
    >= 95 % of the bone left out, and the note says why."""
    ex = generate_exam(9392, target_category="D", protocol="cardiac", matrix=128, fov_mm=180.0,
                       fov_center_mm=(55.0, -25.0))
    r = localise_chest(ex.volume.hu, ex.volume.spacing)
    assert r.found and "spans the whole field" in r.note
    check_region(ex, r.region)


def test_a_field_narrower_than_the_checked_ones_is_warned():
    """A 140 mm cardiac field (the chest region was checked down to 150 mm) gets a "small field:" warning that
    names the way to compare, coded in the DICOM SR; a 160 mm field does not. The oracle of the width:
    matrix x pixel size."""
    from agatax.dicom_report import warning_code
    from agatax.pipeline import CHECKED_FIELD_MM

    small = generate_exam(9313, target_category="D", protocol="cardiac", matrix=128, n_slices=30, fov_mm=140.0)
    width = small.volume.shape[2] * small.volume.spacing[2]
    assert width == pytest.approx(140.0) and width < CHECKED_FIELD_MM
    res = run_pipeline(all_calcium_ensemble(), small.volume)
    warned = [n for n in res.notes if n.startswith("small field:")]
    assert len(warned) == 1 and "--no-localise" in warned[0] and "140 mm" in warned[0]
    assert warning_code(warned[0])[0] == "WARNING-SMALL-FIELD"
    checked = generate_exam(9313, target_category="D", protocol="cardiac", matrix=128, n_slices=30, fov_mm=160.0)
    assert not any(n.startswith("small field:") for n in run_pipeline(all_calcium_ensemble(), checked.volume).notes)


@pytest.mark.parametrize("seed", [2, 4])
def test_a_scan_ending_at_the_lowest_calcification_keeps_it(seed):
    """A tight scan: cut so that its first slice holds the lowest coronary calcification (the distal RCA or the
    crux lie in a calcium-scoring scan's lowest centimetre when it ends close under the heart). The hull's 10 mm
    inset was taken from the scan's ends too, so these exams lost 5 % and 39 % of their calcium; every voxel
    is kept, and the bone still left out."""
    ex = generate_exam(seed, target_category="E", protocol="cardiac", matrix=128, n_slices=48, slice_increment_mm=3.0)
    calcium, bone = ex.mask > 0, bone_voxels(ex)
    low = int(np.nonzero(calcium.any(axis=(1, 2)))[0][0])
    assert low > 0  # the cut removes slices
    r = localise_chest(ex.volume.hu[low:], ex.volume.spacing)
    assert r.found, r.note
    assert (calcium[low:] & r.region).sum() == calcium[low:].sum()
    assert (bone[low:] & r.region).sum() <= 0.05 * bone[low:].sum()


def _end_case(z, x, voxels=4):
    """A 30-slice exam (3 mm) with a region block in slices 2-27 and one dense object of ``voxels`` voxels in
    slice ``z``, starting at column ``x`` of row 20 (the region's columns: 10-29)."""
    hu = np.zeros((30, 40, 60), np.float32)
    region = np.zeros(hu.shape, bool)
    region[2:28, 10:30, 10:30] = True
    outside = np.zeros(hu.shape, bool)
    outside[z, 20, x: x + voxels] = True
    hu[outside] = 400.0
    return hu, outside, region


def test_the_scan_end_note_counts_calcium_just_outside_the_region_at_an_end():
    """Hand-built cases (spacing 3 x 1 x 1 mm): an object 2 mm beside the region in the first slice is named
    with its voxels and peak; in the middle slice, 30 mm from the region, or smaller than min_voxels, none."""
    from agatax.pipeline import scan_end_note

    sp = (3.0, 1.0, 1.0)
    hu, outside, region = _end_case(0, 31)  # slice 0: 6 mm under the region's first slice, 2 mm beside it
    (note,), objects = scan_end_note(hu, outside, region, sp)
    np.testing.assert_array_equal(objects, outside)  # the object, for the report's "not scored" outline
    assert note.startswith("scan's end:") and "4 calcium voxels (1 object, slice 0, peak 400 HU)" in note
    assert "--no-localise" in note
    assert scan_end_note(*_end_case(15, 31), sp) == ((), None)  # the middle slice: not an end
    assert scan_end_note(*_end_case(29, 55, 4), sp) == ((), None)  # 26 mm beside the region: not near it
    assert scan_end_note(*_end_case(0, 31, 2), sp) == ((), None)  # 2 voxels: under min_voxels (3)
    hu2, out2, _ = _end_case(29, 31)  # the last slice too
    assert "8 calcium voxels (2 objects, slices 0, 29, peak 400 HU)" in scan_end_note(hu2 + hu, out2 | outside, region, sp)[0][0]


def test_a_scan_cut_inside_the_heart_warns_of_calcium_left_outside_the_region():
    """Exam 20 (generator version 9) cut at its lowest calcification: the hull narrows toward that end and 19 %
    of the calcium lies just outside the region. With every voxel >= 130 HU voted calcium, the pipeline's note
    counts at least those true calcium voxels (the generator's mask: the oracle) and is coded in the SR; with
    localise=False there is no region and no note."""
    from agatax.dicom_report import warning_code

    ex = generate_exam(20, target_category="E", protocol="cardiac", matrix=128, n_slices=48, slice_increment_mm=3.0)
    calcium = ex.mask > 0
    low = int(np.nonzero(calcium.any(axis=(1, 2)))[0][0])
    hu, calcium = ex.volume.hu[low:], calcium[low:]
    res = run_pipeline(all_calcium_ensemble(), hu, ex.volume.spacing)
    lost = calcium & ~res.chest.region
    assert lost[:7].sum() > 0.1 * calcium.sum()  # 20 mm: 7 slices of 3 mm
    (note,) = [n for n in res.notes if n.startswith("scan's end:")]
    assert int(note.split("marked ")[1].split(" ")[0]) >= lost[:7].sum()
    assert warning_code(note)[0] == "WARNING-SCAN-END"
    assert res.dropped is not None and (res.dropped & lost).sum() == lost[:7].sum()  # outlined as not scored
    assert not any(n.startswith("scan's end:") for n in run_pipeline(all_calcium_ensemble(), hu, ex.volume.spacing,
                                                                        localise=False).notes)
