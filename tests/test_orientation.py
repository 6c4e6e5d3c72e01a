"""Canonical orientation: mirrored, rotated, head-first and NIfTI RAS storage of one exam read back to the
same voxels; sagittal and coronal series refused; the pipeline's mask comes back on the stored grid and
matches the canonical exam's mask voxel for voxel."""

import nibabel as nib
import numpy as np
import pytest

import agatax
from agatax import InputError, Volume
from agatax.io import write_dicom_series
from agatax.orientation import canonical_orientation, to_canonical
from agatax.pipeline import segment

SPACING = (3.0, 0.7, 0.6)
SHAPE = (5, 12, 10)


def _exam(seed=0):
    rng = np.random.default_rng(seed)
    hu = rng.integers(-1000, 1200, size=SHAPE).astype(np.float32)
    origin = np.array([-30.0, -40.0, 100.0])
    return hu, origin


def _affine(columns_lps, origin):
    """(z, y, x) index -> LPS mm from the three index-axis direction vectors (mm per voxel) and the origin."""
    a = np.eye(4)
    for i, c in enumerate(columns_lps):
        a[:3, i] = c
    a[:3, 3] = origin
    return a


def _canonical_volume(hu, origin):
    dz, dy, dx = SPACING
    return Volume(hu, SPACING, affine=_affine([(0, 0, dz), (0, dy, 0), (dx, 0, 0)], origin))


def _stored_variants(hu, origin):
    """The same voxels stored in other layouts, each with its own (hand-written) affine."""
    dz, dy, dx = SPACING
    nz, ny, nx = SHAPE
    top = origin + np.array([0, 0, dz * (nz - 1)])
    right = origin + np.array([dx * (nx - 1), 0, 0])
    back = origin + np.array([0, dy * (ny - 1), 0])
    return {
        # rows reversed (ImageOrientationPatient -1,0,0,0,1,0): the slice normal points to the feet
        "row_reversed": Volume(hu[::-1, :, ::-1], SPACING,
                               affine=_affine([(0, 0, -dz), (0, dy, 0), (-dx, 0, 0)], top + right - origin)),
        # rotated by 180 degrees in-plane (-1,0,0,0,-1,0)
        "rotated_180": Volume(hu[:, ::-1, ::-1], SPACING,
                              affine=_affine([(0, 0, dz), (0, -dy, 0), (-dx, 0, 0)], back + right - origin)),
        # rows and columns swapped (0,1,0,1,0,0), slices head to feet
        "transposed": Volume(np.transpose(hu, (0, 2, 1))[::-1], (dz, dx, dy),
                             affine=_affine([(0, 0, -dz), (dx, 0, 0), (0, dy, 0)], top)),
    }


@pytest.mark.parametrize("name", ["row_reversed", "rotated_180", "transposed"])
def test_stored_layouts_come_back_to_the_canonical_voxels(name):
    hu, origin = _exam()
    stored = _stored_variants(hu, origin)[name]
    canon, how = to_canonical(stored)
    assert not how.identity
    np.testing.assert_array_equal(canon.hu, hu)
    np.testing.assert_allclose(canon.spacing, SPACING)
    np.testing.assert_allclose(canon.affine, _canonical_volume(hu, origin).affine, atol=1e-9)
    np.testing.assert_array_equal(how.undo(canon.hu), stored.hu)


def test_canonical_exam_is_left_alone():
    hu, origin = _exam()
    volume = _canonical_volume(hu, origin)
    canon, how = to_canonical(volume)
    assert how.identity and canon is volume


def test_dicom_with_reversed_rows_reads_back_to_the_same_canonical_voxels(tmp_path):
    hu, origin = _exam(1)
    stored = _stored_variants(hu, origin)["row_reversed"]
    write_dicom_series(tmp_path / "mirrored", stored)
    read = agatax.read_volume(tmp_path / "mirrored", allow_small=True)  # a tiny grid
    np.testing.assert_array_equal(to_canonical(read)[0].hu, hu)


def test_nifti_in_ras_and_las_reads_back_to_the_same_canonical_voxels(tmp_path):
    hu, origin = _exam(2)
    dz, dy, dx = SPACING
    ijk = np.ascontiguousarray(hu.transpose(2, 1, 0))  # (x, y, z) voxels: i = patient left, j = back, k = head
    # RAS+ world: L in LPS = -R, P = -A; i runs to the patient's left (towards -R), j to the back (-A)
    las = np.diag([-dx, -dy, dz, 1.0])
    las[:3, 3] = (-origin[0], -origin[1], origin[2])
    nib.save(nib.Nifti1Image(ijk, las), tmp_path / "las.nii.gz")
    # the same voxels stored RAS (i towards the patient's right): i reversed
    ras = las.copy()
    ras[0, 0] = dx
    ras[0, 3] = -origin[0] - dx * (SHAPE[2] - 1)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(ijk[::-1]), ras), tmp_path / "ras.nii.gz")
    for name in ("las", "ras"):
        read = agatax.read_volume(tmp_path / f"{name}.nii.gz", allow_small=True)
        np.testing.assert_array_equal(to_canonical(read)[0].hu, hu, err_msg=name)


@pytest.mark.parametrize("columns,plane", [
    ([(0.6, 0, 0), (0, 0, -0.7), (0, 0.6, 0)], "sagittal"),  # slices step left-right
    ([(0, 0.6, 0), (0, 0, -0.7), (0.6, 0, 0)], "coronal"),  # slices step front-back
])
def test_sagittal_and_coronal_series_are_refused(columns, plane):
    with pytest.raises(InputError, match=plane) as err:
        canonical_orientation(_affine(columns, (0, 0, 0)))
    assert err.value.code == "NOT_AXIAL"


def test_oblique_grid_is_refused():
    c, s = np.cos(np.pi / 4), np.sin(np.pi / 4)
    with pytest.raises(InputError) as err:
        canonical_orientation(_affine([(0, 0, 3.0), (0, c, s), (0, -s, c)], (0, 0, 0)))
    assert err.value.code == "NOT_AXIAL"


def test_tilted_axial_grid_is_accepted():
    t = np.deg2rad(20)  # a 20 degree gantry tilt: still axial
    how = canonical_orientation(_affine([(0, np.sin(t) * 3, np.cos(t) * 3), (0, 0.7, 0), (0.6, 0, 0)], (0, 0, 0)))
    assert how.identity


def test_pipeline_mask_of_a_stored_layout_is_the_canonical_mask_in_that_layout():
    from tests.test_pipeline import TINY, _variables
    from agatax.ensemble import stack_members

    ensemble = stack_members([_variables(s) for s in range(5)], TINY)
    rng = np.random.default_rng(4)
    hu = rng.uniform(-200, 100, size=(4, 16, 14)).astype(np.float32)
    hu[1:3, 3:9, 2:7] = rng.uniform(150, 700, size=(2, 6, 5))  # asymmetric, so a mirror would show
    volume = Volume(hu, (3.0, 1.5, 1.5))
    mask, votes = (np.asarray(a) for a in segment(ensemble, volume, localise=False))
    assert (votes >= 3).any() and not (votes >= 3).all()  # voxels a majority voted for, and others
    dz, dy, dx = volume.spacing
    stored = Volume(hu[::-1, :, ::-1], volume.spacing, affine=_affine([(0, 0, -dz), (0, dy, 0), (-dx, 0, 0)],
                                                                      (dx * 13, 0, dz * 3)))
    mask_s, votes_s = (np.asarray(a) for a in segment(ensemble, stored, localise=False))
    np.testing.assert_array_equal(mask_s, mask[::-1, :, ::-1])
    np.testing.assert_array_equal(votes_s, votes[::-1, :, ::-1])
    # without the affine the same stored voxels are a mirrored body: the networks see something else
    votes_m = np.asarray(segment(ensemble, Volume(hu[::-1, :, ::-1], volume.spacing), localise=False)[1])
    assert not np.array_equal(votes_m, votes[::-1, :, ::-1])


def test_chest_region_is_returned_on_the_stored_grid():
    from agatax.synthetic import generate_exam
    from agatax.localise import localise_chest
    from agatax.orientation import restore_chest

    ex = generate_exam(3, target_category="A", matrix=128)
    v = ex.volume
    chest = localise_chest(v.hu, v.spacing)
    dz, dy, dx = v.spacing
    nz, ny, nx = v.shape
    stored = Volume(v.hu[::-1, ::-1, :], v.spacing,
                    affine=_affine([(0, 0, -dz), (0, -dy, 0), (dx, 0, 0)], (0, dy * (ny - 1), dz * (nz - 1))))
    canon, how = to_canonical(stored)
    np.testing.assert_array_equal(canon.hu, v.hu)
    back = restore_chest(localise_chest(canon.hu, canon.spacing), how, stored.shape)
    np.testing.assert_array_equal(back.region, chest.region[::-1, ::-1, :])
    expected_box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(back.region))
    assert back.box == expected_box


def test_training_pairs_of_a_stored_layout_equal_the_canonical_pairs():
    from agatax.train import prepare_pairs

    hu, origin = _exam(3)
    mask = (hu > 900).astype(np.uint8)
    canonical = prepare_pairs([(_canonical_volume(hu, origin), mask)], multiple=1)
    stored = _stored_variants(hu, origin)["rotated_180"]
    flipped = prepare_pairs([(stored, mask[:, ::-1, ::-1])], multiple=1)
    assert canonical.targets[0].any()
    np.testing.assert_array_equal(flipped.images[0], canonical.images[0])
    np.testing.assert_array_equal(flipped.targets[0], canonical.targets[0])
