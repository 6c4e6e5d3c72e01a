"""DICOM outputs (--dicom): the Segmentation and the Comprehensive 3D SR read back with highdicom and pydicom."""

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from agatax import Volume, read_mask, read_volume, write_dicom_series, write_nifti
from agatax.cli import main

hd = pytest.importorskip("highdicom")


def _planted(nz: int, dz: float, lesions):
    """A small exam (soft tissue in air) with planted lesions [(z slices, y, x, label, hu)]; (hu, mask)."""
    hu = np.full((nz, 64, 64), -1000.0, np.float32)
    hu[:, 2:30, 2:40] = -50.0
    mask = np.zeros(hu.shape, np.uint8)
    for zs, ys, xs, label, value in lesions:
        hu[zs, ys, xs] = value
        mask[zs, ys, xs] = label
    return hu, mask


@pytest.fixture(scope="module")
def exam(tmp_path_factory):
    """8 slices of 2.5 mm, lesions in LM (slice 1), LAD (slice 3, peak 450 HU) and RCA (slices 5-6); labelled mask."""
    root = tmp_path_factory.mktemp("dicom-exam")
    hu, mask = _planted(8, 2.5, [(1, slice(4, 8), slice(5, 9), 1, 250.0), (3, slice(10, 13), slice(12, 15), 2, 300.0),
                                 (slice(5, 7), slice(20, 24), slice(30, 34), 4, 420.0)])
    hu[3, 11, 13] = 450.0
    write_dicom_series(root / "dicom", Volume(hu, (2.5, 0.5, 0.5), slice_thickness=2.5), patient_id="PAT^ONE")
    np.save(root / "mask.npy", mask)
    return root


def _sources(folder):
    """Source slices in the reader's z order: (volume, [datasets])."""
    volume = read_volume(folder, allow_small=True)
    return volume, [pydicom.dcmread(f, stop_before_pixels=True) for f in volume.metadata["files"]]


def _seg_labels(seg, sources, shape):
    """The Segmentation as labels on the source grid: each frame placed on the slice its referenced SOP
    instance is, valued by its segment's number."""
    index = {str(ds.SOPInstanceUID): k for k, ds in enumerate(sources)}
    out = np.zeros(shape, np.uint8)
    pixels = seg.pixel_array.reshape(-1, *shape[1:])
    shared = seg.SharedFunctionalGroupsSequence[0]
    for frame, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        where = item if "SegmentIdentificationSequence" in item else shared
        number = int(where.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        assert uid in index  # every reference resolves to a source slice
        out[index[uid]][pixels[frame] > 0] = number
    return out


def _text(group, meaning):
    return [str(item.TextValue) for item in group[0].ContentSequence
            if item.ConceptNameCodeSequence[0].CodeMeaning == meaning]


def _measure(group, meaning):
    values = [m.value for m in group.get_measurements() if m.name.meaning == meaning]
    assert len(values) == 1, (meaning, [m.name.meaning for m in group.get_measurements()])
    return float(values[0])


def _score_mask(exam_dir, mask_path, out, capsys):
    """``agatax score EXAM --mask MASK --report OUT --dicom``: the report's JSON."""
    assert main(["score", str(exam_dir), "--mask", str(mask_path), "--report", str(out), "--dicom", "--no-png",
                 "--allow-small"]) == 0
    capsys.readouterr()
    return json.loads((out / f"{Path(exam_dir).name}.json").read_text())


def test_labelled_mask_gives_a_segment_per_artery_and_an_sr_with_the_json_numbers(exam, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["score", str(exam / "dicom"), "--mask", str(exam / "mask.npy"), "--report", str(out), "--dicom",
                 "--no-png", "--calibration", "0.001", "--allow-small"]) == 0
    assert f"report:    {out / 'dicom.json'}" in capsys.readouterr().out
    result = json.loads((out / "dicom.json").read_text())
    seg_path, sr_path = out / "dicom_seg.dcm", out / "dicom_sr.dcm"
    assert seg_path.stat().st_mtime_ns <= sr_path.stat().st_mtime_ns <= (out / "dicom.json").stat().st_mtime_ns
    volume, sources = _sources(exam / "dicom")
    mask = read_mask(out / "dicom_mask.nii.gz", like=volume)

    seg = hd.seg.segread(seg_path)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    for name in ("PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID"):
        assert str(seg[name].value) == str(sources[0][name].value), name
    assert seg.SeriesInstanceUID != sources[0].SeriesInstanceUID
    labels = [item.SegmentLabel for item in seg.SegmentSequence]
    assert labels == ["coronary calcium LM", "coronary calcium LAD", "coronary calcium RCA"]
    regions = [item.AnatomicRegionSequence[0].CodeValue for item in seg.SegmentSequence]
    assert regions == ["3227004", "59438005", "13647002"]  # SNOMED CT: LM, LAD, RCA
    assert all(item.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT" for item in seg.SegmentSequence)
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "MANUAL"  # a given mask: agatax did not segment it
    # pixels: segment numbers map back to the mask's artery labels 1, 2, 4 on the very source slices
    got = _seg_labels(seg, sources, mask.shape)
    assert np.array_equal(np.array([0, 1, 2, 4])[got], mask)
    assert {str(u[2]) for u in seg.get_source_image_uids()} <= {str(ds.SOPInstanceUID) for ds in sources}

    sr = hd.sr.srread(sr_path)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    for name in ("PatientID", "PatientName", "StudyInstanceUID"):
        assert str(sr[name].value) == str(sources[0][name].value), name
    evidence = {str(ref.ReferencedSOPInstanceUID) for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}
    assert evidence == {str(ds.SOPInstanceUID) for ds in sources} | {str(seg.SOPInstanceUID)}
    (total,) = sr.content.get_image_measurement_groups()
    assert _measure(total, "Calcium score") == pytest.approx(result["agatston"], rel=1e-12)
    assert _measure(total, "Calcium Volume") == pytest.approx(result["volume_mm3"], rel=1e-12)
    assert _measure(total, "Calcium Mass") == pytest.approx(result["mass_mg"], rel=1e-12)
    (category,) = total.get_qualitative_evaluations()
    assert category.value.meaning.startswith(f"Agatston category {result['category']} ")
    method = [m.method for m in total.get_measurements() if m.name.meaning == "Calcium score"][0]
    assert method.meaning == "Agatston scoring method"
    assert _text(total, "Algorithm Name") == ["agatax"] and _text(total, "Algorithm Parameters") == ["weights=given mask"]

    arteries = sr.content.get_volumetric_roi_measurement_groups()
    assert len(arteries) == 3
    for group, (number, artery) in zip(arteries, [(1, "LM"), (2, "LAD"), (3, "RCA")]):
        ref = group.roi if hasattr(group, "roi") and group.roi is not None else None
        seg_ref = group.referenced_segment
        assert seg_ref.referenced_sop_instance_uid == seg.SOPInstanceUID and seg_ref.referenced_segment_numbers == [number], ref
        assert _measure(group, "Calcium score") == pytest.approx(result["per_artery"][artery]["agatston"], rel=1e-12)
    planar = sr.content.get_planar_roi_measurement_groups()
    assert len(planar) == len(result["lesions"]) == 4
    uids = [str(ds.SOPInstanceUID) for ds in sources]
    for group, lesion in zip(planar, result["lesions"]):
        frame_ref = group.referenced_segmentation_frame
        assert frame_ref.referenced_sop_instance_uid == seg.SOPInstanceUID
        source = frame_ref.source_image_for_segmentation  # the slice of the lesion, by its SOP instance
        assert source.referenced_sop_instance_uid == uids[lesion["slice"]]
        frame = int(frame_ref.referenced_frame_numbers[0])
        item = seg.PerFrameFunctionalGroupsSequence[frame - 1]
        assert str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID) == uids[lesion["slice"]]
        assert _measure(group, "Calcium score") == pytest.approx(lesion["agatston"], rel=1e-12)
        assert _measure(group, "Area") == pytest.approx(lesion["area_mm2"], rel=1e-12)
        assert _measure(group, "Maximum Attenuation Coefficient") == pytest.approx(lesion["peak_hu"])


def test_thin_slices_scored_on_slabs_show_each_slab_on_its_source_slices(tmp_path, capsys):
    # 20 slices of 1 mm: 6 slabs of 3 slices (slices 1..18), one end slice on each side left out
    hu, mask = _planted(20, 1.0, [(slice(4, 7), slice(4, 8), slice(5, 9), 0, 0.0)])
    hu[5, 4:8, 5:9] = 400.0   # calcium on one thin slice: its slab (slices 4-6) averages it to ~100 HU ...
    hu[4:7, 10:14, 12:16] = 500.0  # ... this lesion stays above 130 HU in the slab
    mask[4:7, 10:14, 12:16] = 1
    write_dicom_series(tmp_path / "thin", Volume(hu, (1.0, 0.5, 0.5), slice_thickness=1.0), patient_id="THIN")
    np.save(tmp_path / "mask.npy", mask)
    out = tmp_path / "report"
    result = _score_mask(tmp_path / "thin", tmp_path / "mask.npy", out, capsys)
    assert result["shape"][0] == 6 and len(result["lesions"]) == 1  # the slab grid
    volume, sources = _sources(tmp_path / "thin")
    seg = hd.seg.segread(out / "thin_seg.dcm")
    got = _seg_labels(seg, sources, volume.shape)
    expected = np.zeros(volume.shape, np.uint8)
    expected[4:7, 10:14, 12:16] = 1  # the slab holding the lesion is slices 4, 5, 6
    assert np.array_equal(got, expected)
    assert "slabs" in seg.ContentDescription
    (lesion_group,) = hd.sr.srread(out / "thin_sr.dcm").content.get_planar_roi_measurement_groups()
    source = lesion_group.referenced_segmentation_frame.source_image_for_segmentation
    assert source.referenced_sop_instance_uid == sources[5].SOPInstanceUID  # the slab's middle slice
    assert int(sources[5].InstanceNumber) == result["lesions"][0]["instance_number"]


def test_nifti_input_is_refused_before_any_work(exam, tmp_path, capsys):
    volume = read_volume(exam / "dicom", allow_small=True)
    write_nifti(tmp_path / "ct.nii.gz", volume)
    out = tmp_path / "report"
    # weights that do not exist: were they loaded, the error would be NOT_FOUND
    code = main(["score", str(tmp_path / "ct.nii.gz"), "--weights", str(tmp_path / "absent.msgpack"),
                 "--report", str(out), "--dicom", "--no-png"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error [NOT_DICOM_INPUT]: ") and "ct.nii.gz" in err
    assert not [p for p in out.iterdir() if p.name != ".agatax.lock"]
    assert main(["score", str(exam / "dicom"), "--mask", str(exam / "mask.npy"), "--dicom"]) == 2
    assert "error [BAD_ARGUMENT]: --dicom writes into the report folder" in capsys.readouterr().err


def test_dicom_outputs_follow_reruns(exam, tmp_path, capsys):
    out = tmp_path / "report"
    args = ["score", str(exam / "dicom"), "--mask", str(exam / "mask.npy"), "--report", str(out), "--no-png",
            "--allow-small"]
    assert main(args) == 0
    assert not (out / "dicom_seg.dcm").exists()
    assert main(args + ["--dicom"]) == 0  # the earlier report lacks the DICOM files: scored again
    assert "re-scored: report files missing" in capsys.readouterr().out
    assert (out / "dicom_seg.dcm").is_file() and (out / "dicom_sr.dcm").is_file()
    assert main(args + ["--dicom"]) == 0
    assert "results kept from an earlier run" in capsys.readouterr().out
    assert main(args + ["--overwrite"]) == 0  # scored again without --dicom: no stale DICOM objects beside it
    assert not (out / "dicom_seg.dcm").exists() and not (out / "dicom_sr.dcm").exists()


def test_ensemble_calcium_is_one_automatic_segment_identifying_the_algorithm(tmp_path, capsys):
    import jax

    from agatax import UNetConfig, init_ensemble, save_ensemble
    from agatax.synthetic import generate_exam

    exam = generate_exam(0, matrix=96, n_slices=24, slice_increment_mm=3.0, slice_thickness_mm=3.0, fov_mm=200.0)
    write_dicom_series(tmp_path / "case0", exam.volume, patient_id="case0")
    save_ensemble(tmp_path / "tiny.msgpack", init_ensemble(jax.random.key(0), UNetConfig.tiny(), members=3))
    out = tmp_path / "report"
    # --no-localise: the untrained networks' calcium lies on bone, which the chest region would discard
    assert main(["score", str(tmp_path / "case0"), "--weights", str(tmp_path / "tiny.msgpack"), "--report", str(out),
                 "--dicom", "--no-png", "--no-localise"]) == 0
    capsys.readouterr()
    result = json.loads((out / "case0.json").read_text())
    assert result["lesions"] and result["weights"].startswith("tiny.msgpack sha256:")
    volume, sources = _sources(tmp_path / "case0")
    mask = read_mask(out / "case0_mask.nii.gz", like=volume)
    seg = hd.seg.segread(out / "case0_seg.dcm")
    (segment,) = seg.SegmentSequence
    assert segment.SegmentLabel == "coronary calcium" and segment.SegmentAlgorithmType == "AUTOMATIC"
    (algorithm,) = segment.SegmentationAlgorithmIdentificationSequence
    assert algorithm.AlgorithmName == "agatax" and algorithm.AlgorithmVersion == result["agatax_version"]
    assert result["weights"] in algorithm.AlgorithmParameters
    assert np.array_equal(_seg_labels(seg, sources, mask.shape), (mask > 0).astype(np.uint8))
    sr = hd.sr.srread(out / "case0_sr.dcm")
    (total,) = sr.content.get_image_measurement_groups()
    assert _measure(total, "Calcium score") == pytest.approx(result["agatston"], rel=1e-12)
    assert _text(total, "Algorithm Parameters") == [f"weights={result['weights']}", "members=3"]
    category, spread = [e for e in total.get_qualitative_evaluations() if e.name.value != "AGATAX-WARNING"]
    assert category.value.meaning.startswith(f"Agatston category {result['category']} ")
    doubt = result["category_range"]
    want = f"{doubt['low']['category']} to {doubt['high']['category']}"
    assert spread.value.meaning == want + (" (uncertain category)" if doubt["uncertain"] else "")
    (whole,) = sr.content.get_volumetric_roi_measurement_groups()
    assert whole.referenced_segment.referenced_segment_numbers == [1]
    assert len(sr.content.get_planar_roi_measurement_groups()) == len(result["lesions"])


def test_the_sr_carries_every_warning_of_the_report_as_a_coded_evaluation(tmp_path, capsys):
    # 5 mm slices every 2.5 mm at 100 kVp: an overlapping reconstruction, a thickness outside the Agatston
    # protocol and an unusual tube voltage, three warnings a PACS reader of the SR alone would not see
    hu, mask = _planted(8, 2.5, [(3, slice(10, 13), slice(12, 15), 2, 300.0)])
    files = write_dicom_series(tmp_path / "thick", Volume(hu, (2.5, 0.5, 0.5), slice_thickness=5.0), patient_id="P2")
    for f in files:
        ds = pydicom.dcmread(f)
        ds.KVP = 100
        ds.save_as(f)
    np.save(tmp_path / "mask.npy", mask)
    out = tmp_path / "report"
    result = _score_mask(tmp_path / "thick", tmp_path / "mask.npy", out, capsys)
    kinds = [w.split(" ")[0] for w in result["warnings"]]
    assert sorted(kinds) == ["overlapping", "slices", "unusual"], result["warnings"]
    (total,) = hd.sr.srread(out / "thick_sr.dcm").content.get_image_measurement_groups()
    category, *warned = total.get_qualitative_evaluations()
    assert category.name.value == "AGATSTON-CATEGORY"
    assert all(e.name.value == "AGATAX-WARNING" and e.name.scheme_designator == "99AGATAX" for e in warned)
    want = {"overlapping": "WARNING-OVERLAP", "slices": "WARNING-THICKNESS", "unusual": "WARNING-KVP"}
    assert [e.value.value for e in warned] == [want[k] for k in kinds]
    assert all(0 < len(e.value.meaning) <= 64 for e in warned)  # LO: what a viewer shows


def test_every_warning_the_pipeline_writes_has_its_own_sr_code():
    from agatax.cli import _exam_warnings
    from agatax.dicom_report import warning_code
    from agatax.pipeline import (beside_metal_note, dense_note, exclude_in_air, exclude_metal, exclude_noise_level,
                                 scan_cut_note)
    from agatax.quality import coverage_note, kernel_note, noise_note, thickness_note
    from agatax.scoring import compute_scores

    hu = np.full((6, 40, 40), 40.0, np.float32)
    hu[2:4, 10:14, 10:14] = 2600.0  # a stent-dense object
    mask = hu > 130
    spacing = (3.0, 0.5, 0.5)
    _, _, metal = exclude_metal(hu, mask, mask.astype(np.float32) * 5, spacing, metal_hu=2000.0)
    dense = dense_note(hu, mask, spacing, compute_scores(hu, mask, spacing), metal_hu=None)
    streak = hu.copy()
    streak[3, 20:24, 20:24] = 200.0  # 5 mm from the metal: 4 mm^2 x 2 = 8 (B); without it, A
    beside = streak == 200.0
    beside = beside_metal_note(streak, beside, spacing, compute_scores(streak, beside, spacing))
    lung = np.full(hu.shape, -850.0, np.float32)
    lung[2:4, 20:22, 20:22] = 400.0  # a calcified granuloma
    _, _, in_air = exclude_in_air(lung, lung > 130, np.zeros(hu.shape, np.int32), spacing)
    edge = np.full(hu.shape, 40.0, np.float32)
    edge[0, 5:8, 5:8] = 300.0  # calcium in the scan's first slice
    speck = np.full(hu.shape, 40.0, np.float32)
    speck[3, 20, 20:22] = 150.0  # 110 HU above its surroundings at 30 HU of noise: under 5 SDs
    _, _, specks = exclude_noise_level(speck, speck > 130, np.zeros(hu.shape, np.int32), spacing, 30.0)
    notes = {"WARNING-METAL": metal, "WARNING-IN-AIR": in_air, "WARNING-NOISE-LEVEL": specks, "WARNING-DENSE": dense,
             "WARNING-BESIDE-METAL": beside, "WARNING-NOISE": noise_note(55.0, (10.0, 40.0)),
             "WARNING-THICKNESS": thickness_note(1.0, 1.0),
             "WARNING-SCAN-CUT": scan_cut_note(edge, edge > 130, spacing, compute_scores(edge, edge > 130, spacing)),
             "WARNING-SHORT-SCAN": coverage_note(20, 3.0)}
    chosen = Volume(hu, spacing, metadata={"series_uid": "1.2.3", "kvp": 80.0,
                                           "skipped": [("a.dcm", "another series (1.2.4), not selected")]})
    kvp, series = _exam_warnings(chosen, None)
    assert "1 other series in the folder not scored" in series
    notes.update({"WARNING-KVP": (kvp,), "WARNING-SERIES": (series,)})
    notes["WARNING-SHARP-KERNEL"] = kernel_note("LUNG", "GE")  # scored past the refusal on request
    notes["WARNING-KERNEL"] = kernel_note("DETAIL", "GE")  # warned
    for code, produced in notes.items():
        assert len(produced) == 1, code
        assert warning_code(produced[0])[0] == code
    assert warning_code("something new")[0] == "WARNING-OTHER"


def test_an_exam_without_calcium_gives_an_empty_segment_and_a_zero_score(exam, tmp_path, capsys):
    np.save(tmp_path / "none.npy", np.zeros((8, 64, 64), np.uint8))
    out = tmp_path / "report"
    assert main(["score", str(exam / "dicom"), "--mask", str(tmp_path / "none.npy"), "--report", str(out), "--dicom",
                 "--no-png", "--allow-small"]) == 0
    capsys.readouterr()
    volume, sources = _sources(exam / "dicom")
    seg = hd.seg.segread(out / "dicom_seg.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["coronary calcium"]
    assert not _seg_labels(seg, sources, volume.shape).any() and int(seg.NumberOfFrames) == len(sources)
    sr = hd.sr.srread(out / "dicom_sr.dcm")
    (total,) = sr.content.get_image_measurement_groups()
    assert _measure(total, "Calcium score") == 0.0 and sr.content.get_planar_roi_measurement_groups() == []
    assert total.get_qualitative_evaluations()[0].value.meaning.startswith("Agatston category A ")


def test_every_sr_warning_meaning_fits_a_dicom_code_meaning():
    """DICOM (and highdicom) allow at most 64 characters in a code meaning: a longer one makes every SR of an
    exam with that warning fail."""
    from agatax.dicom_report import WARNING_CODES, _OTHER_WARNING

    for _, value, meaning in (*WARNING_CODES, ("", *_OTHER_WARNING)):
        assert 0 < len(meaning) <= 64, (value, len(meaning))
