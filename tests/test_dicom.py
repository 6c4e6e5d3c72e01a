"""DICOM reading: bundled and real CT, generated series for every bad case, and the series writer."""

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import JPEGLossless, RLELossless

import dicom_factory as factory
from agatax import InputError, ReadError, read_volume, write_dicom_series
from agatax.io import axial_affine
from agatax.volume import Volume

SHAPE = (6, 10, 12)  # rows != cols catches transposed planes


def planted(seed=0, shape=SHAPE):
    """Integer HU in [-1000, 1500) so that every stored value is exact."""
    return np.random.default_rng(seed).integers(-1000, 1500, shape).astype(np.float64)


def expected_affine(origin, orientation, spacing):
    """Index (z, y, x) -> LPS from first principles: x along the row direction, y along the column one."""
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    normal = np.cross(row, col)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = normal * spacing[0], col * spacing[1], row * spacing[2]
    affine[:3, 3] = origin
    return affine


def read(path, **kw):
    """read_volume for the small synthetic series of these tests (the exam size check is tested apart)."""
    return read_volume(path, allow_small=True, **kw)


def read_error(path, **kw) -> ReadError:
    with pytest.raises(ReadError) as info:
        read(path, **kw)
    return info.value


# --- good series ---------------------------------------------------------------------------------------


def test_bundled_ct_small_hu_matches_pixel_array_rescaled():
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    reference = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    volume = read(path)
    assert volume.shape == (1, ds.Rows, ds.Columns)
    np.testing.assert_array_equal(volume.hu[0], reference.astype(np.float32))
    assert volume.spacing[1:] == pytest.approx([float(v) for v in ds.PixelSpacing])
    np.testing.assert_allclose(volume.affine[:3, 3], [float(v) for v in ds.ImagePositionPatient])
    assert volume.metadata["series_uid"] == ds.SeriesInstanceUID
    assert volume.metadata["patient_id"] == ds.PatientID


def test_series_values_geometry_and_metadata(tmp_path):
    hu = planted()
    origin = (-10.0, -20.0, 100.0)
    factory.write_series(tmp_path, hu, spacing=(3.0, 0.5, 0.7), origin=origin, description="Ca score")
    volume = read(tmp_path)
    np.testing.assert_array_equal(volume.hu, hu.astype(np.float32))
    assert volume.hu.dtype == np.float32
    assert volume.spacing == pytest.approx((3.0, 0.5, 0.7))
    assert volume.slice_thickness == 3.0 and not volume.overlapping
    np.testing.assert_allclose(volume.affine, expected_affine(origin, factory.AXIAL, (3.0, 0.5, 0.7)), atol=1e-6)
    meta = volume.metadata
    assert meta["series_description"] == "Ca score" and meta["kvp"] == 120.0 and meta["kernel"] == "FC12"
    assert meta["patient_id"] == "FACTORY" and meta["manufacturer"] == "Factory" and meta["study_date"] == "20261128"
    assert meta["skipped"] == [] and volume.warnings == ()


def test_sorted_by_position_not_by_names_or_instance_numbers(tmp_path):
    hu = planted(1)
    perm = np.random.default_rng(2).permutation(SHAPE[0])
    factory.write_series(tmp_path, hu, names=[f"f{p}" for p in perm], instance_numbers=[int(p) + 1 for p in perm[::-1]])
    np.testing.assert_array_equal(read(tmp_path).hu, hu.astype(np.float32))


def test_oblique_orientation_normal_and_descending_positions(tmp_path):
    hu = planted(3)
    c, s = np.cos(0.3), np.sin(0.3)
    orientation = (c, s, 0.0, 0.0, 0.0, -1.0)  # coronal-oblique: normal is in the axial plane
    normal = np.cross(orientation[:3], orientation[3:])
    origin = np.array([5.0, -3.0, 40.0])
    positions = [origin + k * 2.0 * normal for k in range(SHAPE[0])][::-1]  # written top slice first
    factory.write_series(tmp_path, hu[::-1], positions=positions, orientation=orientation, spacing=(2.0, 0.5, 0.5))
    volume = read(tmp_path)
    np.testing.assert_array_equal(volume.hu, hu.astype(np.float32))
    np.testing.assert_allclose(volume.affine, expected_affine(origin, orientation, (2.0, 0.5, 0.5)), atol=1e-4)


def test_rescale_applied_per_slice(tmp_path):
    hu = 4.0 * np.round(planted(4) / 4.0)  # multiples of 4: exact for every slope below
    slopes = [1.0, 2.0, 0.5, 4.0, 1.0, 2.0]
    intercepts = [-1024.0, 0.0, -2048.0, -1000.0, 12.0, -1024.0]
    factory.write_series(tmp_path, hu, slopes=slopes, intercepts=intercepts)
    np.testing.assert_array_equal(read(tmp_path).hu, hu.astype(np.float32))


def test_padding_value_and_out_of_field_values_become_air(tmp_path):
    hu = planted(5)
    hu[:, 0, :] = -1500.0  # stored as the padding value below (intercept 0)
    hu[:, -1, :3] = -3024.0  # outside the reconstruction circle, no padding tag needed
    factory.write_series(tmp_path, hu, intercepts=[0.0] * SHAPE[0], padding=-1500)
    volume = read(tmp_path)
    expected = hu.copy()
    expected[:, 0, :] = -1024.0
    expected[:, -1, :3] = -1024.0
    np.testing.assert_array_equal(volume.hu, expected.astype(np.float32))
    assert volume.metadata["padding_voxels"] == SHAPE[0] * (SHAPE[2] + 3)


def test_overlapping_reconstruction_loads_and_says_so(tmp_path):
    factory.write_series(tmp_path, planted(6), spacing=(1.5, 0.5, 0.5), thickness=3.0)
    volume = read(tmp_path)
    assert volume.spacing[0] == pytest.approx(1.5) and volume.slice_thickness == 3.0
    assert volume.overlapping
    assert any("overlapping" in w and "1.5" in w for w in volume.warnings)


def test_enhanced_multiframe_frames_out_of_order_with_per_frame_rescale(tmp_path):
    hu = planted(7)
    factory.write_enhanced(tmp_path / "enh.dcm", hu, spacing=(2.0, 0.5, 0.5), order=[3, 1, 0, 5, 4, 2],
                           intercepts=[-1024, -1000, 0, -1024, -500, -1024])
    volume = read(tmp_path)
    np.testing.assert_array_equal(volume.hu, hu.astype(np.float32))
    assert volume.spacing == pytest.approx((2.0, 0.5, 0.5))


def test_rle_compressed_series_decodes(tmp_path):
    hu = planted(8)
    for path in factory.write_series(tmp_path, hu):
        ds = pydicom.dcmread(path)
        ds.compress(RLELossless, encoding_plugin="pydicom")
        ds.save_as(path)
    np.testing.assert_array_equal(read(tmp_path).hu, hu.astype(np.float32))


def test_non_images_are_skipped_with_reasons(tmp_path):
    hu = planted(9)
    factory.write_series(tmp_path / "ct", hu)
    factory.write_scout(tmp_path / "scout_tagged")
    factory.write_scout(tmp_path / "scout_untagged", localizer_tag=False)
    factory.write_dose_report(tmp_path / "dose")
    factory.write_dicomdir(tmp_path / "DICOMDIR")
    (tmp_path / "notes.txt").write_text("not dicom")
    volume = read(tmp_path)
    np.testing.assert_array_equal(volume.hu, hu.astype(np.float32))
    reasons = {Path(p).name: r for p, r in volume.metadata["skipped"]}
    assert set(reasons) == {"scout_tagged", "scout_untagged", "dose", "DICOMDIR", "notes.txt"}
    assert "LOCALIZER" in reasons["scout_tagged"] and "orientation" in reasons["scout_untagged"]
    assert "Dose" in reasons["dose"] and "DICOMDIR" in reasons["DICOMDIR"] and "not a DICOM" in reasons["notes.txt"]
    assert any("skipped 5 files" in w for w in volume.warnings)


# --- refusals -------------------------------------------------------------------------------------------


def test_multiple_series_listed_then_chosen(tmp_path):
    a, b = planted(10), planted(11, (4, 10, 12))
    factory.write_series(tmp_path / "a", a, series_uid="1.2.3.100", description="Ca score 3mm", series_number=3)
    factory.write_series(tmp_path / "b", b, series_uid="1.2.3.200", description="Lung 1mm", series_number=7,
                         kernel="B70f", manufacturer="SIEMENS")
    err = read_error(tmp_path)
    assert err.code == "MULTIPLE_SERIES"
    for text in ("1.2.3.100", "1.2.3.200", "Ca score 3mm", "Lung 1mm", "6 slices", "4 slices", "kernel FC12)",
                 "kernel B70f (bone or lung kernel)"):
        assert text in err.message
    assert "series=" in err.hint
    for choice, expected in (("1.2.3.200", b), ("1.2.3.1", a), (7, b), ("ca score 3mm", a)):
        np.testing.assert_array_equal(read(tmp_path, series=choice).hu, expected.astype(np.float32))
    assert read_error(tmp_path, series="1.2.3").code == "MULTIPLE_SERIES"
    assert read_error(tmp_path, series="9.9").code == "SERIES_NOT_FOUND"


def test_missing_slice_by_position(tmp_path):
    paths = factory.write_series(tmp_path, planted(12))
    Path(paths[3]).unlink()
    err = read_error(tmp_path)
    assert err.code == "MISSING_SLICES"
    assert "6.00 mm" in err.message and Path(paths[2]).name in err.message and Path(paths[4]).name in err.message
    assert "InstanceNumber missing: 4" in err.message and "allow_gaps=True" in err.hint
    volume = read(tmp_path, allow_gaps=True)
    assert volume.shape[0] == 5 and any("missing slices" in w for w in volume.warnings)


def test_missing_slice_by_instance_number(tmp_path):
    factory.write_series(tmp_path, planted(13), instance_numbers=[1, 2, 3, 5, 6, 7])
    err = read_error(tmp_path)
    assert err.code == "MISSING_SLICES" and "InstanceNumber missing: 4" in err.message


def test_uneven_spacing(tmp_path):
    z = [0.0, 3.0, 6.0, 9.6, 12.6, 15.6]
    factory.write_series(tmp_path, planted(14), positions=[(0.0, 0.0, v) for v in z])
    err = read_error(tmp_path)
    assert err.code == "UNEVEN_SPACING" and "3.600" in err.message and "allow_uneven=True" in err.hint
    assert read(tmp_path, allow_uneven=True).spacing[0] == pytest.approx(3.0)


def test_duplicate_positions_from_two_cardiac_phases(tmp_path):
    hu = planted(15)
    uid, study = "1.2.3.77", "1.2.3.78"
    factory.write_series(tmp_path, hu, series_uid=uid, study_uid=study, names=[f"a{k}" for k in range(6)],
                         trigger_time=0.0)
    factory.write_series(tmp_path, hu, series_uid=uid, study_uid=study, names=[f"b{k}" for k in range(6)],
                         instance_numbers=range(7, 13), trigger_time=400.0)
    err = read_error(tmp_path)
    assert err.code == "DUPLICATE_POSITION"
    assert "cardiac phases" in err.message and "400" in err.message and "a0" in err.message


def test_gantry_tilt(tmp_path):
    shift = 3.0 * np.tan(np.radians(10.0))
    positions = [(0.0, k * shift, 3.0 * k) for k in range(SHAPE[0])]
    factory.write_series(tmp_path, planted(16), positions=positions)
    err = read_error(tmp_path)
    assert err.code == "GANTRY_TILT" and "10.00 deg" in err.message and "allow_tilt=True" in err.hint
    volume = read(tmp_path, allow_tilt=True)
    np.testing.assert_allclose(volume.affine[:3, 0], [0.0, shift, 3.0], atol=1e-4)  # sheared z step
    assert volume.spacing[0] == pytest.approx(3.0)


def test_not_ct_refused_alone_and_skipped_beside_ct(tmp_path):
    factory.write_mr_series(tmp_path / "mr")
    err = read_error(tmp_path)
    assert err.code == "NOT_CT" and "MR" in err.message and "allow_not_ct" in err.hint
    assert read(tmp_path, allow_not_ct=True, allow_not_hu=True).metadata["modality"] == "MR"
    factory.write_series(tmp_path / "ct", planted(17))
    volume = read(tmp_path)
    assert volume.metadata["modality"] == "CT"
    assert sum("modality MR" in r for _, r in volume.metadata["skipped"]) == 3


def test_no_images_and_not_found(tmp_path):
    factory.write_dose_report(tmp_path / "dose")
    (tmp_path / "readme.txt").write_text("hello")
    err = read_error(tmp_path)
    assert err.code == "NO_IMAGES" and "2 files" in err.message and "not an image" in err.message
    assert read_error(tmp_path / "absent").code == "NOT_FOUND"


def test_truncated_pixel_data_and_truncated_header(tmp_path):
    paths = factory.write_series(tmp_path, planted(18))
    factory.truncate(paths[2], 100)
    err = read_error(tmp_path)
    assert err.code == "TRUNCATED_FILE" and Path(paths[2]).name in err.message
    assert "140 bytes" in err.message and "expected 240" in err.message
    Path(paths[2]).write_bytes(Path(paths[3]).read_bytes()[:300])
    err = read_error(tmp_path)
    assert err.code == "TRUNCATED_FILE" and Path(paths[2]).name in err.message


def test_compressed_without_decoder_names_the_package(tmp_path, monkeypatch):
    from pydicom.pixels import get_decoder

    decoder = get_decoder(JPEGLossless)
    if decoder.is_available:  # make the result independent of what this machine has installed
        monkeypatch.setattr(type(decoder), "is_available", property(lambda self: False))
    factory.write_compressed_junk(tmp_path, 3, JPEGLossless)
    err = read_error(tmp_path)
    assert err.code == "DECODER_MISSING" and "JPEG Lossless" in err.message
    assert 'pip install "agatax[compressed]"' in err.hint


# --- writer ---------------------------------------------------------------------------------------------


def test_write_dicom_series_round_trip(tmp_path):
    rng = np.random.default_rng(19)
    hu = rng.uniform(-1024.0, 2000.0, SHAPE).astype(np.float32)
    c, s = np.cos(0.2), np.sin(0.2)
    affine = np.array([[0.0, 0.0, 0.6 * c, -50.0], [0.0, 0.6, 0.0, 20.0], [2.5, 0.0, -0.6 * s, 300.0],
                       [0.0, 0.0, 0.0, 1.0]])
    affine[:3, 0] = np.cross(affine[:3, 2] / 0.6, affine[:3, 1] / 0.6) * 2.5
    volume = Volume(hu=hu, spacing=(2.5, 0.6, 0.6), slice_thickness=3.0, affine=affine, metadata={"kvp": 120.0})
    paths = write_dicom_series(tmp_path, volume, series_description="written", patient_id="P1", instance_start=5)
    assert len(paths) == SHAPE[0]
    ds = pydicom.dcmread(paths[0])
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage and ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.pixel_array.dtype == np.int16 and float(ds.RescaleSlope) == 1.0 and ds.InstanceNumber == 5
    back = read(tmp_path)
    np.testing.assert_array_equal(back.hu, np.rint(hu))
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)
    assert back.spacing == pytest.approx((2.5, 0.6, 0.6)) and back.slice_thickness == 3.0 and back.overlapping
    assert back.metadata["patient_id"] == "P1" and back.metadata["series_description"] == "written"


def test_write_dicom_series_chooses_an_intercept_for_wide_ranges(tmp_path):
    hu = np.full((2, 4, 4), -40000.0, np.float32)
    hu[1] = 1000.0
    write_dicom_series(tmp_path, Volume(hu=hu, spacing=(1.0, 1.0, 1.0), affine=axial_affine((1.0, 1.0, 1.0))))
    np.testing.assert_array_equal(pydicom.dcmread(tmp_path / "CT00001.dcm").pixel_array, -32768)
    assert float(pydicom.dcmread(tmp_path / "CT00001.dcm").RescaleIntercept) == -40000.0 + 32768
    np.testing.assert_array_equal(read(tmp_path, allow_not_hu=True).hu[1], hu[1])


def test_write_dicom_series_refuses_a_left_handed_grid(tmp_path):
    with pytest.raises(InputError) as info:
        # z index along the patient's x axis, x index along its z axis: slices cannot follow row x column.
        left_handed = np.diag([1.0, 1.0, 1.0, 1.0])
        write_dicom_series(tmp_path, Volume(hu=np.zeros((2, 3, 3), np.float32), spacing=(1.0, 1.0, 1.0),
                                            affine=left_handed))
    assert info.value.code == "LEFT_HANDED_GRID" and "axial_affine" in info.value.hint


# --- the real phantom -----------------------------------------------------------------------------------


def test_real_phantom_series(phantom_dir):
    volume = read_volume(phantom_dir / "dicom")
    assert volume.shape == (47, 512, 512)
    assert volume.spacing == pytest.approx((3.0, 0.488, 0.488))
    assert volume.slice_thickness == pytest.approx(3.0) and not volume.overlapping
    assert volume.metadata["kvp"] == 120.0 and volume.metadata["kernel"] == "FC12"
    hu = volume.hu
    assert -1100 < float(np.median(hu[:, :40, :40])) < -900  # air outside the phantom
    body = hu[(hu > -200) & (hu < 200)]
    assert 0 < float(np.median(body)) < 100  # the soft-tissue body ring
    # the spine insert: posterior (bottom of the image), on the midline, well above the calcium threshold
    spine = hu[10:35, 380:420, 235:270]
    assert float(np.median(spine)) > 250
    assert float(np.percentile(hu[:, 230:280, 230:280], 90)) < 130  # the middle holds no bone


def test_unused_high_bits_are_ignored(tmp_path):
    """BitsStored 12 of 16: bits above 12 (overlays, junk) are cleared; signed values are sign-extended."""
    rng = np.random.default_rng(20)
    values = rng.integers(0, 4096, (3, 6, 7))
    junk = rng.integers(0, 2, values.shape) << 13
    paths = factory.write_series(tmp_path / "u", np.zeros(values.shape), intercepts=[-1024.0] * 3)
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 0, 12, 11
        ds.PixelData = (values[k] | junk[k]).astype("<u2").tobytes()
        ds.save_as(path)
    np.testing.assert_array_equal(read(tmp_path / "u").hu, (values - 1024.0).astype(np.float32))
    signed = rng.integers(-2000, 2048, (3, 6, 7))  # below -2000 HU counts as padding
    paths = factory.write_series(tmp_path / "s", np.zeros(signed.shape), intercepts=[0.0] * 3)
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        ds.BitsStored, ds.HighBit = 12, 11
        ds.PixelData = ((signed[k] & 0x0FFF) | 0x6000).astype("<u2").tobytes()  # 12-bit two's complement + junk
        ds.save_as(path)
    np.testing.assert_array_equal(read(tmp_path / "s").hu, signed.astype(np.float32))


def test_real_phantom_matches_an_independent_pydicom_stack(phantom_dir):
    """Oracle: pydicom's pixel_array * slope + intercept, slices sorted by ImagePositionPatient z."""
    datasets = [pydicom.dcmread(p) for p in sorted((phantom_dir / "dicom").iterdir())]
    datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    reference = np.stack(
        [ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in datasets]
    )
    volume = read_volume(phantom_dir / "dicom")
    inside = reference >= -2000  # outside the reconstruction circle agatax writes air instead
    np.testing.assert_array_equal(volume.hu[inside], reference[inside].astype(np.float32))
    assert np.all(volume.hu[~inside] == -1024.0)
    z = [float(ds.ImagePositionPatient[2]) for ds in datasets]
    np.testing.assert_allclose(volume.affine[:3, 3], [float(v) for v in datasets[0].ImagePositionPatient])
    assert volume.spacing[0] == pytest.approx(float(np.median(np.diff(z))))


def test_default_volume_grid_round_trips_through_dicom(tmp_path):
    hu = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4) * 10.0
    volume = Volume(hu=hu, spacing=(2.5, 0.5, 0.4))
    write_dicom_series(tmp_path, volume)
    back = read(tmp_path, allow_not_hu=True)
    np.testing.assert_array_equal(back.hu, hu)
    np.testing.assert_allclose(back.spacing, (2.5, 0.5, 0.4), rtol=1e-6)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-5)
