"""Bad input on the reading side: every case is refused with its code (or read with a note), never scored as is.

Each test writes the bad file itself (DICOM through ``dicom_factory``, NIfTI through nibabel, .npy through
NumPy) and compares with values chosen here: error codes, file names, numbers planted in the files.
"""

import gzip
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pydicom
import pytest

import dicom_factory as factory
from agatax import CheckpointError, InputError, ReadError, Volume, compute_scores, read_mask, read_volume
from agatax.ensemble import load_ensemble, save_ensemble, stack_members
from agatax.model import UNet, UNetConfig
from agatax.volume import check_exam

SHAPE = (8, 64, 64)  # the smallest exam check_exam accepts


def chest(seed=0, shape=SHAPE) -> np.ndarray:
    """Integer HU: air (-1000) around a disc of soft tissue (20..60 HU) with a 300 HU spot; exact in int16."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    y, x = np.ogrid[:ny, :nx]
    disc = (y - ny / 2) ** 2 + (x - nx / 2) ** 2 < (0.35 * min(ny, nx)) ** 2
    hu = np.where(disc, rng.integers(20, 60, shape), -1000).astype(np.float64)
    hu[:, ny // 2 : ny // 2 + 3, nx // 2 : nx // 2 + 3] = 300.0
    return hu


def error(call, *args, kind=ReadError, **kw):
    with pytest.raises(kind) as info:
        call(*args, **kw)
    return info.value


def edit(path, **tags):
    """Rewrite DICOM tags of ``path``: value None deletes the tag; a str with letters is written as LO
    (garbage where numbers belong)."""
    ds = pydicom.dcmread(path)
    for name, value in tags.items():
        if value is None:
            delattr(ds, name)
        elif isinstance(value, str) and any(c.isalpha() for c in value):
            ds.add_new(name, "LO", value)
        else:
            setattr(ds, name, value)
    ds.save_as(path)


# --- 1. rescale ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("slope, intercept, shown", [(100.0, -1024.0, "100"), (1.0, 5000.0, "5000"),
                                                     (0.05, -1024.0, "0.05")])
def test_absurd_rescale_refused(tmp_path, slope, intercept, shown):
    paths = factory.write_series(tmp_path, chest(), slopes=[slope] * 8, intercepts=[intercept] * 8)
    err = error(read_volume, tmp_path)
    assert err.code == "BAD_RESCALE" and shown in err.message and Path(paths[0]).name in err.message


def test_zero_slope_is_not_taken_as_one(tmp_path):
    paths = factory.write_series(tmp_path, chest())
    edit(paths[4], RescaleSlope="0")
    err = error(read_volume, tmp_path)
    assert err.code == "BAD_RESCALE" and Path(paths[4]).name in err.message


def test_rescale_missing_on_some_slices_refused(tmp_path):
    paths = factory.write_series(tmp_path, chest())
    for k in (2, 5):
        edit(paths[k], RescaleSlope=None, RescaleIntercept=None)
    err = error(read_volume, tmp_path)
    assert err.code == "BAD_RESCALE" and "missing on 2" in err.message
    assert Path(paths[2]).name in err.message and Path(paths[5]).name in err.message


def test_rescale_missing_everywhere_read_only_when_values_are_hu(tmp_path):
    hu = chest(1)
    paths = factory.write_series(tmp_path / "hu", hu, intercepts=[0.0] * 8)  # stored values are HU
    for path in paths:
        edit(path, RescaleSlope=None, RescaleIntercept=None)
    volume = read_volume(tmp_path / "hu")
    np.testing.assert_array_equal(volume.hu, hu.astype(np.float32))
    assert any("missing on every slice" in w for w in volume.warnings)
    paths = factory.write_series(tmp_path / "raw", hu)  # stored = HU + 1024: air at 24, no negative value
    for path in paths:
        edit(path, RescaleSlope=None, RescaleIntercept=None)
    err = error(read_volume, tmp_path / "raw")
    assert err.code == "BAD_RESCALE" and "from 24 to 1324" in err.message


# --- 2. image size against pixel data -------------------------------------------------------------------


@pytest.mark.parametrize("columns", [65, 63])
def test_pixel_data_longer_or_shorter_than_rows_x_columns(tmp_path, columns):
    paths = factory.write_series(tmp_path, chest(2))
    edit(paths[3], PixelData=np.zeros((64, columns), "<i2").tobytes())
    err = error(read_volume, tmp_path)
    assert err.code == "PIXEL_SIZE_MISMATCH" and Path(paths[3]).name in err.message
    assert f"holds {64 * columns * 2} bytes" in err.message and "make 8192 bytes" in err.message


# --- 3. slice order and positions ------------------------------------------------------------------------


def test_instance_numbers_scrambled_against_positions_are_noted(tmp_path):
    hu = chest(3)
    factory.write_series(tmp_path / "down", hu, instance_numbers=range(8, 0, -1))  # a vendor's order: fine
    volume = read_volume(tmp_path / "down")
    np.testing.assert_array_equal(volume.hu, hu.astype(np.float32))
    assert not any("SLICE_ORDER" in w for w in volume.warnings)
    factory.write_series(tmp_path / "mixed", hu, instance_numbers=[1, 2, 3, 5, 4, 6, 7, 8])
    volume = read_volume(tmp_path / "mixed")
    np.testing.assert_array_equal(volume.hu, hu.astype(np.float32))  # placed by position
    note = [w for w in volume.warnings if w.startswith("SLICE_ORDER")]
    assert len(note) == 1 and "IM0003 #5 then" in note[0] and "IM0004 #4" in note[0]


@pytest.mark.parametrize("position", [None, "a\\b\\c", "1\\2"])
def test_missing_or_garbage_position_named(tmp_path, position):
    paths = factory.write_series(tmp_path, chest(4))
    edit(paths[3], ImagePositionPatient=position)
    err = error(read_volume, tmp_path)
    assert err.code == "BAD_POSITION" and paths[3] in err.message and err.paths == (paths[3],)


# --- 4. truncated files, files without preamble ---------------------------------------------------------


@pytest.mark.parametrize("keep", [100, 132, 140, 200])
def test_last_slice_cut_inside_its_header_fails_the_read(tmp_path, keep):
    paths = factory.write_series(tmp_path, chest(5))
    Path(paths[-1]).write_bytes(Path(paths[-1]).read_bytes()[:keep])
    err = error(read_volume, tmp_path)
    assert err.code == "TRUNCATED_FILE" and Path(paths[-1]).name in err.message


def test_every_cut_of_the_last_slice_fails_the_read(tmp_path):
    paths = factory.write_series(tmp_path, chest(5, (3, 4, 4)))
    whole = Path(paths[-1]).read_bytes()
    for keep in list(range(0, len(whole), 11)) + [129, 131, len(whole) - 1]:
        Path(paths[-1]).write_bytes(whole[:keep])
        err = error(read_volume, tmp_path, allow_small=True)
        assert err.code == "TRUNCATED_FILE" and err.paths == (paths[-1],), keep


def test_files_without_preamble_are_read_with_a_note(tmp_path):
    hu = chest(6)
    paths = factory.write_series(tmp_path, hu)
    for path in paths[:3]:
        ds = pydicom.dcmread(path)
        del ds.file_meta
        ds.preamble = None
        pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True)
        assert Path(path).read_bytes()[128:132] != b"DICM"
    volume = read_volume(tmp_path)
    np.testing.assert_array_equal(volume.hu, hu.astype(np.float32))
    assert any("3 files" in w and "no DICOM preamble" in w for w in volume.warnings)


# --- 5. too small ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 64, 64), (7, 64, 64), (8, 63, 64), (8, 64, 48)])
def test_too_small_dicom_refused_with_what_an_exam_is(tmp_path, shape):
    factory.write_series(tmp_path, chest(7, shape))
    err = error(read_volume, tmp_path)
    assert err.code == "TOO_SMALL" and f"{shape[0]} x {shape[1]} x {shape[2]}" in err.message
    assert "40-80 slices of 512 x 512" in err.message and "allow_small=True" in err.hint
    assert read_volume(tmp_path, allow_small=True).shape == shape


def test_too_small_nifti_and_check_exam(tmp_path):
    nib.save(nib.Nifti1Image(np.full((2, 2, 2), -1000, np.int16), np.eye(4)), tmp_path / "t.nii")
    assert error(read_volume, tmp_path / "t.nii").code == "TOO_SMALL"
    assert error(check_exam, Volume(chest(8, (7, 64, 64)), (3.0, 0.5, 0.5)), kind=InputError).code == "TOO_SMALL"
    assert check_exam(Volume(chest(8), (3.0, 0.5, 0.5))) is None
    assert check_exam(Volume(np.zeros((2, 2, 2)), (1.0, 1.0, 1.0)), allow_small=True, allow_not_hu=True) is None


# --- 6. not HU ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["normalised", "mask", "no_air"])
def test_values_that_are_not_hu_refused(tmp_path, kind):
    hu = chest(9)
    data = {"normalised": (hu + 1000) / 1300, "mask": (hu > 200) * 3.0, "no_air": np.maximum(hu, -100.0)}[kind]
    nib.save(nib.Nifti1Image(data.transpose(2, 1, 0).astype(np.float32), np.diag([-0.5, -0.5, 3.0, 1.0])),
             tmp_path / "x.nii.gz")
    err = error(read_volume, tmp_path / "x.nii.gz")
    low, high = data.min(), data.max()
    assert err.code == "NOT_HU" and f"from {low:g} to {high:g}" in err.message and "allow_not_hu=True" in err.hint
    assert error(check_exam, Volume(data, (3.0, 0.5, 0.5)), kind=InputError).code == "NOT_HU"


def test_synthetic_exams_pass_the_exam_check():
    from agatax.synthetic import generate_exam

    for seed, protocol in ((0, "cardiac"), (1, "chest")):
        check_exam(generate_exam(seed, matrix=96, n_slices=24, protocol=protocol).volume)


# --- 7. mixed geometry ----------------------------------------------------------------------------------


def test_one_series_uid_with_two_pixel_spacings(tmp_path):
    uid = "1.2.3.9"
    factory.write_series(tmp_path / "a", chest(10), spacing=(3.0, 0.5, 0.5), series_uid=uid)
    factory.write_series(tmp_path / "b", chest(11, (3, 64, 64)), spacing=(3.0, 0.7, 0.7), series_uid=uid,
                         origin=(-10.0, -20.0, 200.0), names=["X0", "X1", "X2"])
    for choice in (None, uid):
        err = error(read_volume, tmp_path, series=choice)
        assert err.code == "MIXED_GEOMETRY" and uid in err.message
        assert "8 slices of 64x64 at 0.5 x 0.5 mm" in err.message and "3 slices of 64x64 at 0.7 x 0.7 mm" in err.message
        assert "one group" in err.hint


# --- 8. transfer syntax, 9. empty path --------------------------------------------------------------------


def test_unknown_transfer_syntax_named(tmp_path):
    paths = factory.write_series(tmp_path, chest(12))
    ds = pydicom.dcmread(paths[2])
    ds.file_meta.TransferSyntaxUID = "1.2.3.4"
    ds.save_as(paths[2])
    err = error(read_volume, tmp_path)
    assert err.code == "UNSUPPORTED_TRANSFER_SYNTAX" and "1.2.3.4" in err.message and paths[2] in err.message


@pytest.mark.parametrize("path", ["", "   "])
def test_empty_path_refused(path):
    assert error(read_volume, path).code == "BAD_PATH"


# --- 10. padding ----------------------------------------------------------------------------------------


def test_padding_outside_the_circle_is_counted_not_warned(tmp_path):
    hu = chest(13)
    y, x = np.ogrid[:64, :64]
    corners = (y - 31.5) ** 2 + (x - 31.5) ** 2 > 32**2
    hu[:, corners] = -3024.0
    factory.write_series(tmp_path / "corners", hu, intercepts=[-4096.0] * 8)
    volume = read_volume(tmp_path / "corners")
    assert volume.metadata["padding_voxels"] == 8 * int(corners.sum())
    assert not any("padding" in w for w in volume.warnings)
    hu[:, 16:48, 16:48] = -3024.0  # padding across the body
    factory.write_series(tmp_path / "body", hu, intercepts=[-4096.0] * 8)
    volume = read_volume(tmp_path / "body")
    assert volume.metadata["padding_voxels"] == 8 * (int(corners.sum()) + 32 * 32)
    assert any("padding" in w and "central disc" in w for w in volume.warnings)


# --- 11-12. NIfTI: cut, too large ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nii"])
@pytest.mark.parametrize("keep", [0.05, 0.5, 0.99])
def test_truncated_nifti(tmp_path, name, keep):
    path = tmp_path / name
    nib.save(nib.Nifti1Image(chest(14).transpose(2, 1, 0).astype(np.int16), np.eye(4)), path)
    path.write_bytes(path.read_bytes()[: int(keep * path.stat().st_size)])
    err = error(read_volume, path)
    assert err.code == "TRUNCATED_FILE" and str(path) in err.message


def test_corrupt_gzip_nifti(tmp_path):
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(chest(15).transpose(2, 1, 0).astype(np.int16), np.eye(4)), path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # damage the deflate stream, keep the length
    path.write_bytes(bytes(data))
    assert error(read_volume, path).code == "CORRUPT_FILE"


def _header_only(path, shape, dtype=np.int16):
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header["vox_offset"] = 352
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header.binaryblock + bytes(4) + bytes(1000))


@pytest.mark.parametrize("name", ["big.nii", "big.nii.gz"])
def test_huge_header_refused_before_reading(tmp_path, name):
    _header_only(tmp_path / name, (4000, 4000, 4000))
    err = error(read_volume, tmp_path / name)
    assert err.code == "TOO_LARGE" and "4000 x 4000 x 4000" in err.message


def test_header_longer_than_the_file(tmp_path):
    _header_only(tmp_path / "short.nii", (512, 512, 100))
    err = error(read_volume, tmp_path / "short.nii")
    assert err.code == "TRUNCATED_FILE" and f"needs {352 + 512 * 512 * 100 * 2}" in err.message


# --- 13-14. masks ---------------------------------------------------------------------------------------


def test_npy_mask_object_array_and_truncated(tmp_path):
    like = Volume(chest(16), (3.0, 0.5, 0.5))
    objects = np.empty(SHAPE, dtype=object)
    objects[...] = 0
    np.save(tmp_path / "o.npy", objects, allow_pickle=True)
    assert error(read_mask, tmp_path / "o.npy", like=like).code == "BAD_MASK"
    np.save(tmp_path / "t.npy", np.zeros(SHAPE, np.uint8))
    factory.truncate(tmp_path / "t.npy", 1000)
    err = error(read_mask, tmp_path / "t.npy", like=like)
    assert err.code == "TRUNCATED_FILE" and "t.npy" in err.message


@pytest.mark.parametrize("value, dtype", [(255, np.uint8), (300, np.int32), (1, np.uint8)])
def test_binary_mask_is_calcium_of_unknown_artery(tmp_path, value, dtype):
    hu = chest(17)
    like = Volume(hu, (3.0, 0.5, 0.5))
    calcium = hu >= 130
    np.save(tmp_path / "m.npy", (calcium * value).astype(dtype))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mask = read_mask(tmp_path / "m.npy", like=like)
    assert mask.dtype == np.uint8 and set(np.unique(mask).tolist()) == {0, 1}
    np.testing.assert_array_equal(mask, calcium)
    assert any(str(value) in str(w.message) for w in caught) == (value != 1)
    expected = compute_scores(hu, calcium, like.spacing).agatston  # a boolean mask: no artery labels
    assert expected > 0 and compute_scores(hu, mask, like.spacing).agatston == pytest.approx(expected)


def test_mask_labels_outside_the_contract_refused(tmp_path):
    like = Volume(chest(18), (3.0, 0.5, 0.5))
    mask = np.zeros(SHAPE, np.int32)
    mask[1, 10:12, 10:12], mask[2, 20:22, 20:22], mask[3, 30:32, 30:32] = 2, 7, 4
    np.save(tmp_path / "m.npy", mask)
    err = error(read_mask, tmp_path / "m.npy", like=like)
    assert err.code == "BAD_MASK" and "0, 2, 4, 7" in err.message
    mask[2, 20:22, 20:22] = 3
    np.save(tmp_path / "ok.npy", mask)
    got = read_mask(tmp_path / "ok.npy", like=like)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, mask)


# --- 15. ensemble weights -------------------------------------------------------------------------------


def test_ensemble_with_nan_weights_refused(tmp_path):
    config = UNetConfig.tiny()
    m = config.multiple
    shapes = jax.eval_shape(lambda: UNet(config).init(jax.random.key(0), jnp.zeros((1, m, m, m, 1))))
    members = [jax.tree.map(lambda s: np.full(s.shape, 0.5, np.float32), dict(shapes)) for _ in range(3)]
    keys = [k.key for k in jax.tree_util.tree_leaves_with_path(members[2]["params"])[-1][0]]  # the last parameter
    node = members[2]["params"]
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]].reshape(-1)[-1] = np.nan
    path = save_ensemble(tmp_path / "nan.msgpack", stack_members(members, config))
    err = error(load_ensemble, path, kind=CheckpointError)
    assert err.code == "NON_FINITE_WEIGHTS" and "member 2 " in err.message
    assert "['params']" + "".join(f"['{k}']" for k in keys) in err.message


@pytest.mark.parametrize("call,code", [
    (lambda: read_volume(123), "BAD_PATH"),
    (lambda: read_volume(None), "BAD_PATH"),
    (lambda: Volume(np.zeros((2, 2, 2)), "abc"), "BAD_SPACING"),
    (lambda: Volume(np.zeros((2, 2, 2)), (1.0, None, 1.0)), "BAD_SPACING"),
])
def test_library_calls_with_wrong_types_raise_typed_errors(call, code):
    with pytest.raises(InputError) as err:
        call()
    assert err.value.code == code
