"""COCA gated-release reader: plist parsing, outline rasterisation, z matching, HU filter, artery labels."""

import plistlib

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.path import Path as MplPath
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from agatax import ReadError, Volume
from agatax.datasets import CocaDataset, coca_mask, parse_calcium_xml, polygon_pixels

# Geometry shared by the fixtures: 4 axial slices of 12 x 14 pixels, 0.5 mm pixels, 3 mm increment.
NZ, NY, NX = 4, 12, 14
Z0, DZ, DXY = -50.0, 3.0, 0.5
ORIGIN_X, ORIGIN_Y = -4.0, 10.0


def _affine():
    affine = np.zeros((4, 4))
    affine[3, 3] = 1.0
    affine[0, 2] = DXY  # column -> +x
    affine[1, 1] = DXY  # row -> +y
    affine[2, 0] = DZ  # slice -> +z
    affine[:3, 3] = [ORIGIN_X, ORIGIN_Y, Z0]
    return affine


def _hu():
    """Slice 1 and 2 hold dense tissue (300 HU) everywhere but a few soft pixels."""
    hu = np.zeros((NZ, NY, NX), np.float32)
    hu[1] = 300.0  # the slice a trusted ImageIndex would wrongly pick
    hu[2] = 300.0
    hu[2, 4, 5] = 100.0  # inside the LAD outline, below 130 HU: not calcium
    hu[0, 1:5, 1:5] = 450.0
    hu[0, 2, 2] = 129.0  # inside the RCA outline, just below the threshold
    return hu


def _mm(x_px, y_px, k):
    return f"({ORIGIN_X + x_px * DXY:.4f}, {ORIGIN_Y + y_px * DXY:.4f}, {Z0 + k * DZ:.4f})"


def _roi(name, points_xy, k, *, center=True):
    roi = {
        "Name": name,
        "Point_px": [f"({x:.4f}, {y:.4f})" for x, y in points_xy],
        "Point_mm": [_mm(x, y, k) for x, y in points_xy],
        "Area": 1.5,
        "Mean": 300.0,
        "Max": 450.0,
    }
    if center:
        cx, cy = np.mean(points_xy, axis=0)
        roi["Center"] = _mm(cx, cy, k)
    return roi


# LAD: rectangle, columns 2..6 and rows 3..5, on slice 2 (z = -44), filed under a wrong ImageIndex (1).
LAD_OUTLINE = [(2, 3), (6, 3), (6, 5), (2, 5)]
# RCA: right triangle with legs along x = 1 and y = 1 and hypotenuse x + y = 5, on slice 0 (z = -50).
RCA_OUTLINE = [(1, 1), (4, 1), (1, 4)]


def _plist(images):
    return plistlib.dumps({"Images": images})


def _xml_images():
    return [
        {"ImageIndex": 1, "NumberOfROIs": 1, "ROIs": [_roi("Left Anterior Descending Artery", LAD_OUTLINE, 2)]},
        {"ImageIndex": 3, "NumberOfROIs": 1, "ROIs": [_roi("Right Coronary Artery", RCA_OUTLINE, 0, center=False)]},
    ]


def _expected_mask():
    """Hand-computed: LAD rectangle minus the soft pixel; RCA triangle x, y >= 1, x + y <= 5 minus (2, 2)."""
    mask = np.zeros((NZ, NY, NX), np.uint8)
    mask[2, 3:6, 2:7] = 2
    mask[2, 4, 5] = 0
    for y in range(1, 5):
        for x in range(1, 5):
            if x + y <= 5:
                mask[0, y, x] = 4
    mask[0, 2, 2] = 0
    return mask


def _write_series(folder, hu, *, ascending=False, same_z=False):
    """CT Image Storage files, one per slice; file names and instance numbers run against position
    (``ascending``: with position); ``same_z``: every slice at one position (zero z-spacing)."""
    folder.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    for k in range(hu.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "CT"
        ds.PatientID = "COCA-TEST"
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1 if ascending else hu.shape[0] - k
        ds.ImagePositionPatient = [ORIGIN_X, ORIGIN_Y, Z0 + (0 if same_z else k) * DZ]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [DXY, DXY]
        ds.SliceThickness = DZ
        ds.KVP = 120
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[2]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleSlope = 1
        ds.RescaleIntercept = -1024
        ds.PixelData = (hu[k] + 1024).astype("<i2").tobytes()
        ds.save_as(folder / f"IM{ds.InstanceNumber:04d}.dcm", enforce_file_format=True)


@pytest.fixture
def volume():
    return Volume(_hu(), (DZ, DXY, DXY), slice_thickness=DZ, affine=_affine())


def _release(tmp_path, volume_ids=("1", "2", "10"), xml_ids=("1",)):
    root = tmp_path / "download" / "Gated_release_final"
    for exam_id in volume_ids:
        (root / "patient" / exam_id / "series_a").mkdir(parents=True)
    (root / "calcium_xml").mkdir(parents=True)
    for exam_id in xml_ids:
        (root / "calcium_xml" / f"{exam_id}.xml").write_bytes(_plist(_xml_images()))
    return root


# ----------------------------------------------------------------------------------------- parsing


def test_parse_calcium_xml_reads_rois_in_file_order(tmp_path):
    path = tmp_path / "1.xml"
    path.write_bytes(_plist(_xml_images()))
    rois = parse_calcium_xml(path)
    assert [r.artery for r in rois] == ["LAD", "RCA"]
    assert [r.label for r in rois] == [2, 4]
    assert [r.image_index for r in rois] == [1, 3]
    np.testing.assert_array_equal(rois[0].points_px, np.array(LAD_OUTLINE, float))
    # LAD has a Center; RCA falls back on the mean of Point_mm; both z in patient mm.
    assert rois[0].position_mm[2] == pytest.approx(Z0 + 2 * DZ)
    assert rois[1].center_mm is None and rois[1].position_mm[2] == pytest.approx(Z0)
    assert rois[0].area_mm2 == 1.5 and rois[0].max_hu == 450.0
    assert rois[0].slice is None


def test_binary_plist_is_read_too(tmp_path):
    path = tmp_path / "1.xml"
    path.write_bytes(plistlib.dumps({"Images": _xml_images()}, fmt=plistlib.FMT_BINARY))
    assert len(parse_calcium_xml(path)) == 2


def test_unknown_artery_names_are_listed_and_can_be_mapped(tmp_path):
    images = _xml_images()
    images[0]["ROIs"].append(_roi("Ramus Intermedius", LAD_OUTLINE, 2))
    path = tmp_path / "1.xml"
    path.write_bytes(_plist(images))
    with pytest.raises(ReadError) as info:
        parse_calcium_xml(path)
    assert info.value.code == "UNKNOWN_ARTERY"
    assert "Ramus Intermedius" in str(info.value) and "artery_map" in str(info.value)
    rois = parse_calcium_xml(path, artery_map={"ramus intermedius": "LAD"})
    assert [r.artery for r in rois] == ["LAD", "LAD", "RCA"]


def test_malformed_annotation_is_refused(tmp_path):
    path = tmp_path / "1.xml"
    path.write_text("<html>not a plist</html>")
    with pytest.raises(ReadError) as info:
        parse_calcium_xml(path)
    assert info.value.code == "BAD_ANNOTATION" and str(path) in str(info.value)
    path.write_bytes(plistlib.dumps({"Slices": []}))
    with pytest.raises(ReadError, match="Images"):
        parse_calcium_xml(path)


# ------------------------------------------------------------------------------------- rasterising


def test_square_outline_gives_the_closed_square():
    got = polygon_pixels(np.array([(2, 2), (5, 2), (5, 5), (2, 5)], float), (8, 9))
    expected = np.zeros((8, 9), bool)
    expected[2:6, 2:6] = True  # rows and columns 2..5, edges included
    np.testing.assert_array_equal(got, expected)


def test_off_grid_outline_and_degenerate_outlines():
    # Vertices between centres: interior centres columns 2..4, rows 3..4; the outline rounds to rows 2 and 4,
    # columns 1 and 5.
    got = polygon_pixels(np.array([(1.4, 2.3), (4.6, 2.3), (4.6, 4.4), (1.4, 4.4)]), (7, 7))
    expected = np.zeros((7, 7), bool)
    expected[2:5, 1:6] = True
    np.testing.assert_array_equal(got, expected)
    one = polygon_pixels(np.array([(3.2, 1.7)]), (4, 5))
    assert np.argwhere(one).tolist() == [[2, 3]]
    line = polygon_pixels(np.array([(0, 0), (3, 0)]), (2, 5))
    assert np.argwhere(line).tolist() == [[0, 0], [0, 1], [0, 2], [0, 3]]
    # Outline partly off the image: clipped, no error.
    assert polygon_pixels(np.array([(-3, -3), (2, -3), (2, 2), (-3, 2)]), (4, 4)).sum() == 9


def _segment_distance(points, a, b):
    ab = b - a
    t = np.clip(((points - a) @ ab) / max(ab @ ab, 1e-12), 0.0, 1.0)
    return np.linalg.norm(points - (a + t[:, None] * ab), axis=1)


@settings(max_examples=20)
@given(
    st.integers(3, 9).flatmap(
        lambda n: st.tuples(
            st.lists(st.floats(0.0, 2 * np.pi, allow_nan=False), min_size=n, max_size=n, unique=True),
            st.lists(st.floats(1.0, 7.0), min_size=n, max_size=n),
            st.tuples(st.floats(6.0, 10.0), st.floats(6.0, 10.0)),
        )
    )
)
def test_rasterised_polygon_agrees_with_matplotlib_away_from_the_outline(params):
    angles, radii, (cx, cy) = params
    order = np.argsort(angles)  # star-shaped around the centre: a simple polygon
    a, r = np.asarray(angles)[order], np.asarray(radii)[order]
    verts = np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], axis=1)
    got = polygon_pixels(verts, (18, 17))
    yy, xx = np.mgrid[0:18, 0:17]
    centres = np.stack([xx.ravel(), yy.ravel()], axis=1).astype(float)
    inside = MplPath(verts).contains_points(centres).reshape(18, 17)
    closed = np.vstack([verts, verts[:1]])
    dist = np.min([_segment_distance(centres, p, q) for p, q in zip(closed[:-1], closed[1:])], axis=0).reshape(18, 17)
    far = dist > 1e-6
    # Every centre strictly inside is kept; anything kept is inside or within half a pixel diagonal of the outline.
    assert np.all(got[inside & far])
    assert np.all(inside[got] | (dist[got] <= np.sqrt(0.5) + 1e-9))
    # Each vertex's own pixel is on the outline.
    vr, vc = np.floor(verts[:, 1] + 0.5).astype(int), np.floor(verts[:, 0] + 0.5).astype(int)
    ok = (vr >= 0) & (vr < 18) & (vc >= 0) & (vc < 17)
    assert np.all(got[vr[ok], vc[ok]])


# ---------------------------------------------------------------------------------- placing and HU


def test_mask_places_rois_by_z_not_image_index_and_filters_hu(tmp_path, volume):
    path = tmp_path / "1.xml"
    path.write_bytes(_plist(_xml_images()))
    mask, placed, warnings = coca_mask(volume, parse_calcium_xml(path))
    np.testing.assert_array_equal(mask, _expected_mask())
    assert mask.dtype == np.uint8
    assert [r.slice for r in placed] == [2, 0]
    assert not mask[1].any()  # the slice ImageIndex 1 would have meant
    assert warnings == ()


def test_z_within_tolerance_matches_and_beyond_is_an_error(tmp_path, volume):
    images = _xml_images()
    near = _roi("Left Circumflex Artery", [(8, 8), (9, 8), (9, 9)], 1)
    near["Center"] = f"(0.0, 0.0, {Z0 + DZ + 0.5:.3f})"  # 0.5 mm off slice 1: within 0.25 * 3 mm
    images[0]["ROIs"].append(near)
    path = tmp_path / "1.xml"
    path.write_bytes(_plist(images))
    mask, placed, _ = coca_mask(volume, parse_calcium_xml(path))
    assert placed[1].slice == 1 and placed[1].artery == "LCX"
    assert set(np.unique(mask[1])) == {0, 3}

    near["Center"] = f"(0.0, 0.0, {Z0 + DZ + 1.5:.3f})"  # between slices 1 and 2
    path.write_bytes(_plist(images))
    with pytest.raises(ReadError) as info:
        coca_mask(volume, parse_calcium_xml(path), exam_id="P17")
    assert info.value.code == "ROI_SLICE_NOT_FOUND"
    assert "P17" in str(info.value) and "-45.500" in str(info.value)


def test_two_arteries_on_one_pixel_first_outline_keeps_it(tmp_path, volume):
    rois = [
        _roi("Left Anterior Descending Artery", [(1, 1), (3, 1), (3, 3), (1, 3)], 2),
        _roi("Left Circumflex Artery", [(3, 3), (5, 3), (5, 5), (3, 5)], 2),
    ]
    path = tmp_path / "x.xml"
    path.write_bytes(_plist([{"ImageIndex": 0, "ROIs": rois}]))
    mask, _, warnings = coca_mask(volume, parse_calcium_xml(path))
    assert mask[2, 3, 3] == 2 and mask[2, 4, 4] == 3
    assert len(warnings) == 1 and "1 calcium pixels" in warnings[0]


# ----------------------------------------------------------------------------------------- dataset


def test_dataset_layout_ids_and_exam_without_xml(tmp_path, volume):
    root = _release(tmp_path)
    calls = []

    def reader(path, **options):
        calls.append((path, options))
        return volume

    for given_root in (root, root.parent):  # the release folder or the folder holding it
        dataset = CocaDataset(given_root, reader=reader, series="X")
        assert dataset.ids() == ["1", "2", "10"] and len(dataset) == 3 and "10" in dataset
    exam = dataset.load("1")
    np.testing.assert_array_equal(exam.mask, _expected_mask())
    assert exam.xml_path.endswith("1.xml") and len(exam.rois) == 2
    assert calls[-1] == (root / "patient" / "1" / "series_a", {"series": "X"})
    empty = dataset.load("2")
    assert empty.mask.shape == volume.shape and not empty.mask.any() and empty.rois == ()
    assert [e.id for e in dataset] == ["1", "2", "10"]
    with pytest.raises(ReadError) as info:
        dataset.load("99")
    assert info.value.code == "UNKNOWN_EXAM"


def test_unknown_layout_names_the_expected_one(tmp_path):
    (tmp_path / "somewhere").mkdir()
    with pytest.raises(ReadError) as info:
        CocaDataset(tmp_path / "somewhere")
    assert info.value.code == "UNKNOWN_LAYOUT"
    assert "Gated_release_final/patient/<id>" in str(info.value)
    (tmp_path / "somewhere" / "patient").mkdir()
    with pytest.raises(ReadError, match="calcium_xml"):
        CocaDataset(tmp_path / "somewhere")
    assert len(CocaDataset(tmp_path / "somewhere", allow_missing_xml_folder=True)) == 0


def test_dicom_release_end_to_end(tmp_path):
    """Real files: DICOM slices written with pydicom, instance numbers against position, plist XML."""
    root = _release(tmp_path, volume_ids=(), xml_ids=("7",))
    _write_series(root / "patient" / "7" / "CT_calcium_3mm", _hu())
    exam = CocaDataset(root, allow_small=True, allow_not_hu=True).load("7")  # a tiny grid
    assert exam.volume.shape == (NZ, NY, NX)
    np.testing.assert_allclose(exam.volume.hu, _hu())
    np.testing.assert_array_equal(exam.mask, _expected_mask())
    assert [r.slice for r in exam.rois] == [2, 0]


def test_outline_pixels_disagreeing_with_patient_mm_are_flagged(tmp_path, volume):
    roi = _roi("Right Coronary Artery", RCA_OUTLINE, 0)
    roi["Point_px"] = [f"({x + 4}, {y + 3})" for x, y in RCA_OUTLINE]  # 5 pixels away from Point_mm
    path = tmp_path / "x.xml"
    path.write_bytes(_plist([{"ImageIndex": 0, "ROIs": [roi]}]))
    _, _, warnings = coca_mask(volume, parse_calcium_xml(path))
    assert len(warnings) == 1 and "5.0 pixels" in warnings[0]


# ----------------------------------------------------------------------- facts of the real release


def _empty_roi(name="Right Coronary Artery"):
    return {"Name": name, "NumberOfPoints": 0, "Point_px": [], "Point_mm": [], "Area": 0.0, "Mean": 0.0}


def test_empty_placeholder_rois_are_skipped_and_counted(tmp_path, volume):
    images = _xml_images()
    images[0]["ROIs"].insert(0, _empty_roi())
    images.append({"ImageIndex": 2, "NumberOfROIs": 2, "ROIs": [_empty_roi("Ramus Whatever"), _empty_roi("")]})
    root = _release(tmp_path, volume_ids=("1",), xml_ids=())
    (root / "calcium_xml" / "1.xml").write_bytes(_plist(images))
    (root / "patient" / "1" / "series_a" / "x.dcm").write_bytes(b"placeholder")
    rois = parse_calcium_xml(root / "calcium_xml" / "1.xml")  # no BAD_ANNOTATION, no UNKNOWN_ARTERY
    assert [r.artery for r in rois] == ["LAD", "RCA"]
    exam = CocaDataset(root, reader=lambda path, **o: volume).load("1")
    np.testing.assert_array_equal(exam.mask, _expected_mask())
    assert exam.empty_rois == 3 and "3 empty placeholder ROIs (no points) skipped" in exam.warnings[0]


def test_an_roi_with_points_but_no_outline_is_still_refused(tmp_path):
    images = _xml_images()
    images[0]["ROIs"][0]["Point_px"] = []
    images[0]["ROIs"][0]["NumberOfPoints"] = 4
    path = tmp_path / "1.xml"
    path.write_bytes(_plist(images))
    with pytest.raises(ReadError) as info:
        parse_calcium_xml(path)
    assert info.value.code == "BAD_ANNOTATION"


def test_reversed_image_index_of_the_release_is_placed_by_z(tmp_path):
    """The release's ImageIndex i is slice N-1-i in ascending InstanceNumber order. With instance numbers
    rising with z, that is z index N-1-i: the convention runs against the array, and matching by z (not by
    ImageIndex) puts every ROI on its own slice."""
    root = _release(tmp_path, volume_ids=(), xml_ids=())
    _write_series(root / "patient" / "7" / "CT", _hu(), ascending=True)
    images = [{"ImageIndex": NZ - 1 - 2, "ROIs": [_roi("Left Anterior Descending Artery", LAD_OUTLINE, 2)]},
              {"ImageIndex": NZ - 1 - 0, "ROIs": [_roi("Right Coronary Artery", RCA_OUTLINE, 0)]}]
    (root / "calcium_xml" / "7.xml").write_bytes(_plist(images))
    exam = CocaDataset(root, allow_small=True, allow_not_hu=True).load("7")
    files = exam.volume.metadata["files"]
    instance = [int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber) for f in files]
    assert instance == [1, 2, 3, 4]  # ascending InstanceNumber is ascending z here
    for roi in exam.rois:  # ImageIndex i <-> slice N-1-i in ascending InstanceNumber order
        ascending = sorted(range(NZ), key=lambda k: instance[k])
        assert roi.slice == ascending[NZ - 1 - roi.image_index]
        assert roi.slice != roi.image_index  # trusting ImageIndex would put the LAD on slice 1
    assert [r.slice for r in exam.rois] == [2, 0]
    np.testing.assert_array_equal(exam.mask, _expected_mask())


def test_left_coronary_artery_is_the_left_main(tmp_path, volume):
    path = tmp_path / "x.xml"
    path.write_bytes(_plist([{"ImageIndex": 0, "ROIs": [_roi("Left Coronary Artery", LAD_OUTLINE, 2)]}]))
    (roi,) = parse_calcium_xml(path)
    assert roi.artery == "LM" and roi.label == 1
    mask, _, _ = coca_mask(volume, [roi])
    assert set(np.unique(mask)) == {0, 1}


def test_unnamed_outlines_are_calcium_without_artery(tmp_path, volume):
    images = _xml_images()
    unnamed = _roi("", [(8, 7), (10, 7), (10, 9), (8, 9)], 2)
    del unnamed["Name"]
    images[0]["ROIs"].append(unnamed)
    path = tmp_path / "x.xml"
    path.write_bytes(_plist(images))
    rois = parse_calcium_xml(path)
    assert [r.artery for r in rois] == ["LAD", "unknown", "RCA"] and rois[1].label == 0
    mask, placed, warnings = coca_mask(volume, rois)
    expected = (_expected_mask() > 0).astype(np.uint8)
    expected[2, 7:10, 8:11] = 1
    np.testing.assert_array_equal(mask, expected)
    assert placed[1].slice == 2 and "1 outline carries no artery name" in warnings[0]
    named = parse_calcium_xml(path, artery_map={"": "RCA"})
    mask, _, warnings = coca_mask(volume, named)
    assert mask[2, 8, 9] == 4 and mask[2, 4, 4] == 2 and warnings == ()


def test_release_defects_are_per_exam_refusals_not_a_stopped_run(tmp_path):
    root = _release(tmp_path, volume_ids=("empty",), xml_ids=())
    _write_series(root / "patient" / "flat" / "CT", _hu(), same_z=True)  # zero z-spacing
    _write_series(root / "patient" / "good" / "CT", _hu())
    dataset = CocaDataset(root, allow_small=True, allow_not_hu=True)
    for exam_id, code in (("empty", "NO_IMAGES"), ("flat", "ZERO_SPACING")):
        with pytest.raises(ReadError) as info:
            dataset.load(exam_id)
        assert info.value.code == code and exam_id in str(info.value)
    exams = list(dataset.exams())
    assert [e.id for e in exams] == ["good"]
    assert [(i, c) for i, c, _ in dataset.refused] == [("empty", "NO_IMAGES"), ("flat", "ZERO_SPACING")]
    with pytest.raises(ReadError):  # other refusals still stop unless asked
        list(CocaDataset(root).exams())  # the tiny grid: TOO_SMALL
    assert len(list(CocaDataset(root).exams(skip=None))) == 0
