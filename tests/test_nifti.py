"""NIfTI reading and writing: axes, RAS -> LPS, scaling, qform/sform agreement, masks lining up."""

import nibabel as nib
import numpy as np
import pytest

from agatax import InputError, ReadError, Volume, read_mask, read_volume, write_nifti

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def oblique_volume(seed=0, shape=(5, 7, 9)):
    """A volume on a rotated grid whose z axis runs along x direction cross y direction, float HU."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    if np.linalg.det(q) > 0:
        q[:, 0] *= -1
    spacing = (2.5, 0.7, 0.6)
    affine = np.eye(4)
    affine[:3, :3] = q * np.asarray(spacing)
    affine[:3, 3] = (-30.0, 12.0, 150.0)
    hu = rng.uniform(-1024, 1500, shape).astype(np.float32)
    return Volume(hu=hu, spacing=spacing, slice_thickness=3.0, affine=affine)


def read(path, **kw):
    """read_volume for the tiny test grids here (the exam checks, size and HU, are tested apart)."""
    return read_volume(path, allow_small=True, allow_not_hu=True, **kw)


def lps_of(affine_ras, ijk):
    return (LPS_FROM_RAS @ affine_ras @ np.append(ijk, 1.0))[:3]


def test_round_trip_keeps_hu_spacing_and_orientation(tmp_path):
    volume = oblique_volume()
    path = write_nifti(tmp_path / "ct.nii.gz", volume.hu, like=volume)
    back = read(path)
    np.testing.assert_array_equal(back.hu, volume.hu)
    np.testing.assert_allclose(back.spacing, volume.spacing, rtol=1e-6)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-4)
    assert back.warnings == ()


def test_axes_and_ras_to_lps_against_nibabel(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(-1000, 1000, (6, 5, 4)).astype(np.int16)  # (i, j, k)
    affine = np.array([[-0.8, 0, 0, 90.0], [0, -0.9, 0, -120.0], [0, 0, 3.0, -40.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "a.nii")
    volume = read(tmp_path / "a.nii")
    assert volume.shape == (4, 5, 6)
    for ijk in [(0, 0, 0), (5, 4, 3), (2, 1, 3)]:
        zyx = ijk[::-1]
        assert volume.hu[zyx] == data[ijk]
        np.testing.assert_allclose(volume.affine @ np.append(zyx, 1.0), np.append(lps_of(affine, ijk), 1.0))
    assert volume.spacing == pytest.approx((3.0, 0.9, 0.8))


def test_slice_axis_flipped_to_run_along_the_normal(tmp_path):
    data = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    affine = np.diag([-1.0, -1.0, -2.0, 1.0])  # LPS x, y columns with z running toward the feet
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "f.nii")
    volume = read(tmp_path / "f.nii")
    x_dir, y_dir = volume.affine[:3, 2], volume.affine[:3, 1]
    assert float(volume.affine[:3, 0] @ np.cross(x_dir, y_dir)) > 0
    for ijk in [(0, 0, 0), (1, 2, 3), (1, 0, 2)]:  # every voxel keeps its physical position
        zyx = np.argwhere(volume.hu == data[ijk])[0]
        np.testing.assert_allclose(volume.affine[:3] @ np.append(zyx, 1.0), lps_of(affine, ijk))


def test_scaling_applied(tmp_path):
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_slope_inter(2.0, -1024.0)
    nib.save(img, tmp_path / "s.nii")
    volume = read(tmp_path / "s.nii")
    np.testing.assert_array_equal(volume.hu, (data.astype(np.float64) * 2.0 - 1024.0).transpose(2, 1, 0))


def test_qform_sform_disagreement(tmp_path):
    img = nib.Nifti1Image(np.zeros((4, 4, 3), np.float32), None)
    sform = np.diag([0.5, 0.5, 3.0, 1.0])
    qform = sform.copy()
    qform[:3, 3] = (10.0, 0.0, 0.0)
    img.set_sform(sform, code=1)
    img.set_qform(qform, code=1)
    nib.save(img, tmp_path / "m.nii")
    with pytest.raises(ReadError) as info:
        read(tmp_path / "m.nii")
    assert info.value.code == "QFORM_SFORM_MISMATCH" and "10.000 mm" in info.value.message
    assert "allow_qform_mismatch=True" in info.value.hint
    volume = read(tmp_path / "m.nii", allow_qform_mismatch=True)
    np.testing.assert_allclose(volume.affine[:3, 3], (0.0, 0.0, 0.0))  # the sform, as nibabel chooses
    assert any("sform was used" in w for w in volume.warnings)


def test_masks_written_and_read_on_the_volume_grid(tmp_path):
    volume = oblique_volume(2)
    mask = np.zeros(volume.shape, np.uint8)
    mask[2, 3:5, 4:7] = 3
    mask[0, 0, 0] = 1
    write_nifti(tmp_path / "m.nii.gz", mask, like=volume)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.nii.gz", like=volume), mask)
    np.save(tmp_path / "m.npy", mask.astype(bool))
    np.testing.assert_array_equal(read_mask(tmp_path / "m.npy", like=volume), mask > 0)


def test_mask_on_same_grid_with_other_axis_order_is_realigned(tmp_path):
    volume = oblique_volume(3)
    mask = (np.random.default_rng(3).random(volume.shape) > 0.7).astype(np.uint8)
    # the same voxels stored as (k, i, j) with the j axis reversed: build its affine from ours
    ras = LPS_FROM_RAS @ volume.affine  # index (z, y, x) -> RAS
    stored = np.flip(mask, axis=2).transpose(0, 2, 1)  # axes (z, x reversed, y)
    nz, ny, nx = volume.shape
    index_of = np.zeros((4, 4))  # stored index (a, b, c) -> volume index (z, y, x)
    index_of[0, 0] = 1
    index_of[2, 1], index_of[2, 3] = -1, nx - 1
    index_of[1, 2] = 1
    index_of[3, 3] = 1
    nib.save(nib.Nifti1Image(stored, ras @ index_of), tmp_path / "other.nii")
    np.testing.assert_array_equal(read_mask(tmp_path / "other.nii", like=volume), mask)


def test_mask_mismatch(tmp_path):
    volume = oblique_volume(4)
    np.save(tmp_path / "small.npy", np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(ReadError) as info:
        read_mask(tmp_path / "small.npy", like=volume)
    assert info.value.code == "MASK_MISMATCH" and "(2, 2, 2)" in info.value.message
    shifted_affine = volume.affine.copy()
    shifted_affine[:3, 3] += (5.0, 0.0, 0.0)
    write_nifti(tmp_path / "shift.nii", np.zeros(volume.shape, np.uint8), like=volume.replace(affine=shifted_affine))
    with pytest.raises(ReadError) as info:
        read_mask(tmp_path / "shift.nii", like=volume)
    assert info.value.code == "MASK_MISMATCH" and "5.00 mm apart" in info.value.message
    np.save(tmp_path / "frac.npy", np.full(volume.shape, 0.5))
    with pytest.raises(ReadError) as info:
        read_mask(tmp_path / "frac.npy", like=volume)
    assert info.value.code == "BAD_MASK"


def test_write_nifti_checks_shape(tmp_path):
    with pytest.raises(InputError) as info:
        write_nifti(tmp_path / "x.nii", np.zeros((1, 2, 3)), like=oblique_volume())
    assert info.value.code == "SHAPE_MISMATCH"


def test_non_finite_refused(tmp_path):
    data = np.zeros((2, 2, 2), np.float32)
    data[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "n.nii")
    with pytest.raises(ReadError) as info:
        read(tmp_path / "n.nii")
    assert info.value.code == "NON_FINITE" and "1 NaN" in info.value.message
