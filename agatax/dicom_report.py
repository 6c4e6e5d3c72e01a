"""DICOM outputs of a scored exam: a Segmentation of the calcium and a Comprehensive 3D SR of the scores.

    paths = agatax.dicom_report.write_dicom_report("out/", "exam1", volume, mask, result)

For DICOM input only: both objects reference the exam's own CT slices (their SOP instances), copy its
patient and study identity (never invented) and join its study as two new series, so that a PACS files
them with the exam and a viewer (OHIF, 3D Slicer, Horos) overlays the calcium on it and lists the scores.
Written with highdicom (``pip install "agatax[dicom]"``):

- ``<id>_seg.dcm``: a DICOM Segmentation (binary) on the source slices, one segment per artery when the
  mask carries artery labels (1-4 = LM, LAD, LCX, RCA), else one "coronary calcium" segment; coded with
  SNOMED CT (category Morphologically abnormal structure, type Vascular calcification, anatomic region
  the artery or Coronary artery). Slices without calcium are left out (highdicom's default), except in an
  exam without any calcium, whose Segmentation keeps every (empty) frame.
- ``<id>_sr.dcm``: a Comprehensive 3D SR holding a TID 1500 Measurement Report (procedure: Cardiac CT for
  calcium scoring): the exam's totals (Agatston score by the Agatston method, calcium volume, calcium mass
  when calibrated, risk category and, with an ensemble, the category range of one vote: "B to D
  (uncertain category)" where the networks split on what decides it) and each of the report's warnings (metal,
  objects in the lung, specks at the noise level, a stent-dense object, noise, slice thickness, contrast assumed, ...) as a coded evaluation whose meaning
  says what it means for the score (``WARNING_CODES``; the JSON keeps the full text), one volumetric group
  per segment (per-artery totals) referencing its
  segment, and one planar group per slice lesion referencing the segmentation frame of its slice. The
  algorithm is identified in each group: name "agatax", its version, and the weights (file name and
  sha256 prefix) as a parameter. Numbers are those of the exam's JSON.

Thin-slice exams scored on 3 mm slabs (the default) are scored on a grid that has no DICOM instances of
its own: the Segmentation shows each slab's calcium on every source slice the slab averages (the slab's
footprint), and the few end slices no slab covers hold no calcium; the Segmentation's content description
says so. A lesion references the frame of its slab's middle slice (its ``instance_number``).
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from agatax._atomic import atomic_write_bytes, remove_file
from agatax.errors import AgataxError, InputError, ReadError
from agatax.pipeline import CHECKED_FIELD_MM

__all__ = ["dicom_report_paths", "require_highdicom", "check_dicom_input", "source_grid_mask",
           "write_dicom_report", "warning_code", "ARTERY_CODES", "WARNING_CODES"]

SEG_SUFFIX = "_seg.dcm"
SR_SUFFIX = "_sr.dcm"
#: Series numbers of the objects agatax adds to a study (high, so that they sort after the scanner's series).
SEG_SERIES_NUMBER = 9901
SR_SERIES_NUMBER = 9902
_NIFTI = (".nii", ".nii.gz")
#: Private coding scheme for what no standard code names (DICOM PS3.16: designators beginning with "99").
PRIVATE_SCHEME = "99AGATAX"
_CATEGORY_RANGES = {"A": "0", "B": "1-10", "C": "11-100", "D": "101-400", "E": "above 400"}
#: The report's warnings as the SR carries them: (how the warning starts, code value, code meaning of at most
#: 64 characters). The JSON keeps each warning's full text; a warning not listed is coded WARNING-OTHER.
WARNING_CODES = (
    ("metal:", "WARNING-METAL", "metal left out of the score; a stent makes it uninterpretable"),
    ("in air:", "WARNING-IN-AIR", "objects in the lung left out of the score: not coronary"),
    ("noise level:", "WARNING-NOISE-LEVEL", "specks at the image noise level left out of the score"),
    ("dense:", "WARNING-DENSE", "stent-dense objects scored: if a stent, score not interpretable"),
    ("beside metal:", "WARNING-BESIDE-METAL", "category rests on objects beside metal: streaks may score"),
    ("image noise:", "WARNING-NOISE", "noise above the networks' training range: check the mask"),
    ("too noisy:", "WARNING-TOO-NOISY", "scored past the noise refusal on request: may be far too low"),
    ("slices of ", "WARNING-THICKNESS", "slice thickness not 3 mm: score not comparable to 3 mm ones"),
    ("contrast:", "WARNING-CONTRAST", "scored as non-contrast on request: enhanced blood may score"),
    ("phantom:", "WARNING-PHANTOM", "phantom-like exam: inserts outside a heart are missed"),
    ("scan's end:", "WARNING-SCAN-END", "calcium marked outside the region at the scan's end: unscored"),
    ("cut by the scan:", "WARNING-SCAN-CUT", "scored calcium in the first or last slice: may go on beyond"),
    ("short scan:", "WARNING-SHORT-SCAN", "scan shorter than a heart: calcium may lie outside it"),
    ("small field:", "WARNING-SMALL-FIELD", f"field under {CHECKED_FIELD_MM:.0f} mm: the chest region unchecked there"),
    ("unusual tube voltage", "WARNING-KVP", "tube voltage not 120 kVp: the 130 HU threshold assumes 120"),
    ("sharp kernel, scored on request", "WARNING-SHARP-KERNEL", "scored past the sharp-kernel refusal: reads high"),
    ("sharp kernel:", "WARNING-KERNEL", "kernel sharper than calcium scoring's: the score reads high"),
    ("series chosen", "WARNING-SERIES", "one of several series was scored: check it is the right one"),
    ("overlapping", "WARNING-OVERLAP", "overlapping slices: scored with the slice increment"),
)
_OTHER_WARNING = ("WARNING-OTHER", "a reading or scoring warning: see the agatax JSON report")
_RANGE_WARNING = "uncertain category:"  # carried by the category range's own evaluation


def warning_code(text: str) -> tuple[str, str]:
    """(code value, code meaning) of one report warning in the SR (``WARNING_CODES``)."""
    for start, value, meaning in WARNING_CODES:
        if text.startswith(start):
            return value, meaning
    return _OTHER_WARNING


def _codes():
    from pydicom.sr.codedict import codes

    return codes


def artery_codes() -> dict[str, Any]:
    """SNOMED CT codes of the arteries named by mask labels 1-4."""
    codes = _codes()
    return {"LM": codes.SCT.LeftMainCoronaryArtery, "LAD": codes.SCT.AnteriorDescendingBranchOfLeftCoronaryArtery,
            "LCX": codes.SCT.CircumflexCoronaryArtery, "RCA": codes.SCT.RightCoronaryArtery}


ARTERY_CODES = ("LM", "LAD", "LCX", "RCA")  # mask labels 1..4, coded by artery_codes()


def dicom_report_paths(directory: str | os.PathLike, exam_id: str) -> dict[str, Path]:
    """{"seg": <id>_seg.dcm, "sr": <id>_sr.dcm} in ``directory`` (``exam_id`` already file-name-safe)."""
    directory = Path(directory)
    return {"seg": directory / f"{exam_id}{SEG_SUFFIX}", "sr": directory / f"{exam_id}{SR_SUFFIX}"}


def require_highdicom():
    """The highdicom module, or AgataxError MISSING_DEPENDENCY naming the extra to install."""
    try:
        import highdicom
    except ImportError:
        raise AgataxError("--dicom needs highdicom, which is not installed", code="MISSING_DEPENDENCY",
                          hint='pip install "agatax[dicom]"') from None
    return highdicom


def check_dicom_input(paths: Iterable[str | os.PathLike]) -> None:
    """Refuse DICOM outputs for exams that are not DICOM (NIfTI files): there are no instances to reference
    and no patient or study identity to copy. Checked before any exam is read.

    Raises:
        InputError NOT_DICOM_INPUT naming the NIfTI exams.
    """
    nifti = [os.fspath(p) for p in paths if os.fspath(p).lower().endswith(_NIFTI)]
    if nifti:
        listed = ", ".join(nifti[:3]) + (f" and {len(nifti) - 3} more" if len(nifti) > 3 else "")
        raise InputError(
            f"--dicom writes DICOM objects that reference the exam's DICOM slices; {listed} "
            f"{'is a NIfTI file' if len(nifti) == 1 else 'are NIfTI files'}",
            code="NOT_DICOM_INPUT",
            hint="score the exam's DICOM series, or drop --dicom (the NIfTI mask in the report overlays the exam)",
            paths=nifti,
        )


def source_grid_mask(volume, mask: np.ndarray) -> tuple[list[str], np.ndarray, int | None]:
    """The mask on the exam's source slices.

    Returns:
        (source files in z order, labels (slices, rows, columns) on them, slab size n or None): an exam
        scored on its own slices comes back as it is; a slab-scored thin-slice exam (``agatax.thick_slabs``)
        has each slab's labels repeated on the n source slices it averages, end slices no slab covers empty.
    Raises:
        InputError NOT_DICOM_INPUT when the exam was not read from single-frame DICOM files.
    """
    meta = volume.metadata or {}
    mask = np.asarray(mask)
    thin = meta.get("thin_slices")
    files = list(meta.get("source_files") if thin else meta.get("files") or [])
    if meta.get("format") != "dicom" or not files or any(" (frame " in str(f) for f in files):
        raise InputError("DICOM outputs need an exam read from single-frame DICOM files", code="NOT_DICOM_INPUT",
                         hint="drop --dicom for this exam", paths=[str(volume.source)])
    if not thin:
        if len(files) != mask.shape[0]:
            raise InputError(f"{len(files)} source files for {mask.shape[0]} mask slices", code="NOT_DICOM_INPUT")
        return files, mask, None
    n, first, m = int(thin["slab_slices"]), int(thin["first_slice"]), int(thin["slabs"])
    full = np.zeros((len(files), *mask.shape[1:]), dtype=mask.dtype)
    full[first: first + m * n] = np.repeat(mask, n, axis=0)
    return files, full, n


#: Patient and study attributes of type 2 that highdicom copies: absent in a source file, they are copied empty.
_TYPE2_IDENTITY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                   "AccessionNumber", "ReferringPhysicianName", "StudyID")


def _read_headers(files: list[str]) -> list[Any]:
    import pydicom

    headers = []
    for path in files:
        try:
            headers.append(pydicom.dcmread(path, stop_before_pixels=True))
        except Exception as err:
            raise ReadError(f"cannot read the source slice {path} again for the DICOM outputs: {err}",
                            code="READ_ERROR", paths=[path]) from None
    for ds in headers:  # type 2 (present, may be empty) attributes absent in the source: copied as unknown
        for name in _TYPE2_IDENTITY:
            if name not in ds:
                setattr(ds, name, "")
    missing = sorted({name for ds in headers for name in ("StudyInstanceUID", "SeriesInstanceUID",
                                                          "SOPInstanceUID", "FrameOfReferenceUID")
                      if not str(ds.get(name, "") or "")})
    if missing:
        raise ReadError(f"the source slices lack {', '.join(missing)}: a Segmentation cannot reference them",
                        code="DICOM_SOURCE_INCOMPLETE", hint="export the series again from the scanner or PACS, "
                        "or drop --dicom", paths=files[:1])
    return headers


def _algorithm(hd, result: Mapping[str, Any]):
    """(SEG algorithm identification, SR algorithm identification) of the run that made ``result``."""
    from agatax import __version__

    codes = _codes()
    weights = result.get("weights") or "given mask"
    params = {"weights": str(weights)}
    if result.get("members"):
        params["members"] = str(result["members"])
    seg = hd.AlgorithmIdentificationSequence(name="agatax", family=codes.cid7162.ArtificialIntelligence,
                                             version=__version__, parameters=params)
    sr = hd.sr.AlgorithmIdentification(name="agatax", version=__version__,
                                       parameters=[f"{k}={v}" for k, v in params.items()])
    return seg, sr


def _segments(mask: np.ndarray, result: Mapping[str, Any]) -> tuple[np.ndarray, list[tuple[int, str, str | None]]]:
    """(label map with segment numbers, [(segment number, label, artery or None)]) for the Segmentation."""
    labelled = bool(result.get("per_artery"))
    if not labelled:
        return (mask > 0).astype(np.uint8), [(1, "coronary calcium", None)]
    present = [k for k in range(1, len(ARTERY_CODES) + 1) if np.any(mask == k)] or [1]
    out = np.zeros(mask.shape, np.uint8)
    segments = []
    for number, label in enumerate(present, start=1):
        out[mask == label] = number
        artery = ARTERY_CODES[label - 1]
        segments.append((number, f"coronary calcium {artery}", artery))
    return out, segments


def _dataset_bytes(ds) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def build_segmentation(volume, mask: np.ndarray, result: Mapping[str, Any]):
    """(the Segmentation dataset, source headers in z order, segments, slab size) for a scored exam."""
    hd = require_highdicom()
    from agatax import __version__

    codes = _codes()
    files, labels, slab = source_grid_mask(volume, mask)
    headers = _read_headers(files)
    pixels, segments = _segments(labels, result)
    given = result.get("weights") is None
    seg_algorithm, _ = _algorithm(hd, result)
    descriptions = []
    for number, label, artery in segments:
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.VascularCalcification,
            algorithm_type=(hd.seg.SegmentAlgorithmTypeValues.MANUAL if given
                            else hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC),
            algorithm_identification=None if given else seg_algorithm,
            tracking_uid=hd.UID(),
            tracking_id=label,
            anatomic_regions=[artery_codes()[artery] if artery else codes.SCT.CoronaryArtery],
        ))
    description = "coronary calcium, agatax" if not given else "coronary calcium, given mask"
    if slab:  # at most 64 characters
        description += f"; {slab}-slice slabs shown on their slices"
    weights = str(result.get("weights") or "given mask")
    seg = hd.seg.Segmentation(
        source_images=headers,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="agatax",
        manufacturer_model_name="agatax",
        software_versions=__version__,
        device_serial_number=weights.split("sha256:")[-1][:64] or "none",
        content_label="CALCIUM",
        content_description=description[:64],
        series_description="agatax coronary calcium SEG",
        omit_empty_frames=bool(np.any(pixels)),
    )
    return seg, headers, segments, slab


def _frame_index(seg) -> dict[tuple[int, str], int]:
    """(segment number, source SOP instance UID) -> 1-based frame number of the Segmentation."""
    out = {}
    shared = seg.SharedFunctionalGroupsSequence[0]
    for i, item in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
        where = item if "SegmentIdentificationSequence" in item else shared  # one segment: shared by all frames
        number = int(where.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        out[(number, uid)] = i
    return out


def build_sr(seg, headers: list[Any], segments, slab: int | None, volume, result: Mapping[str, Any]):
    """The Comprehensive 3D SR (TID 1500) of ``result`` referencing ``seg`` and the source slices."""
    hd = require_highdicom()
    from pydicom.uid import generate_uid

    from agatax import __version__

    codes = _codes()
    sr = hd.sr
    _, algorithm = _algorithm(hd, result)
    ucum_one = sr.CodedConcept("1", "UCUM", "no units")
    mm3 = sr.CodedConcept("mm3", "UCUM", "cubic millimeter")
    mm2 = sr.CodedConcept("mm2", "UCUM", "square millimeter")
    mg = sr.CodedConcept("mg", "UCUM", "milligram")
    hu = sr.CodedConcept("[hnsf'U]", "UCUM", "Hounsfield unit")
    category_name = sr.CodedConcept("AGATSTON-CATEGORY", PRIVATE_SCHEME, "Agatston risk category")
    lesion_type = codes.SCT.VascularCalcification

    def amounts(values: Mapping[str, Any]) -> list:
        items = [sr.Measurement(name=codes.DCM.CalciumScore, value=float(values["agatston"]), unit=ucum_one,
                                method=codes.DCM.AgatstonScoringMethod, algorithm_id=algorithm),
                 sr.Measurement(name=codes.DCM.CalciumVolume, value=float(values["volume_mm3"]), unit=mm3,
                                algorithm_id=algorithm)]
        if values.get("mass_mg") is not None:
            items.append(sr.Measurement(name=codes.DCM.CalciumMass, value=float(values["mass_mg"]), unit=mg,
                                        algorithm_id=algorithm))
        return items

    category = str(result["category"])
    evaluation = sr.QualitativeEvaluation(
        name=category_name,
        value=sr.CodedConcept(f"CATEGORY-{category}", PRIVATE_SCHEME,
                              f"Agatston category {category} (score {_CATEGORY_RANGES.get(category, '?')})"))
    evaluations = [evaluation]
    doubt = result.get("category_range")
    if doubt:  # what a reader of the SR alone would otherwise not see: the warning lives in the JSON and picture
        low, high = doubt["low"]["category"], doubt["high"]["category"]
        evaluations.append(sr.QualitativeEvaluation(
            name=sr.CodedConcept("AGATSTON-CATEGORY-RANGE", PRIVATE_SCHEME,
                                 "Agatston category, one vote less / more; stent-dense left out"),
            value=sr.CodedConcept(f"RANGE-{low}-{high}", PRIVATE_SCHEME,
                                  f"{low} to {high}" + (" (uncertain category)" if doubt["uncertain"] else ""))))
    warning_name = sr.CodedConcept("AGATAX-WARNING", PRIVATE_SCHEME, "agatax warning")
    for text in result.get("warnings") or ():  # what a PACS reader must see beside the score
        if not str(text).startswith(_RANGE_WARNING):
            value, meaning = warning_code(str(text))
            evaluations.append(sr.QualitativeEvaluation(
                name=warning_name, value=sr.CodedConcept(value, PRIVATE_SCHEME, meaning)))
    groups: list = [sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=sr.TrackingIdentifier(uid=hd.UID(), identifier="coronary calcium, total"),
        finding_type=lesion_type, algorithm_id=algorithm, finding_sites=[sr.FindingSite(codes.SCT.CoronaryArtery)],
        measurements=amounts(result), qualitative_evaluations=evaluations)]

    series = sr.SourceSeriesForSegmentation(str(headers[0].SeriesInstanceUID))
    per_artery = result.get("per_artery") or {}
    for number, label, artery in segments:
        values = per_artery.get(artery) if artery else result
        if values is None:
            continue
        site = artery_codes()[artery] if artery else codes.SCT.CoronaryArtery
        groups.append(sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=sr.TrackingIdentifier(uid=hd.UID(), identifier=label),
            referenced_segment=sr.ReferencedSegment(sop_class_uid=seg.SOPClassUID,
                                                    sop_instance_uid=seg.SOPInstanceUID, segment_number=number,
                                                    source_series=series),
            finding_type=lesion_type, algorithm_id=algorithm, finding_sites=[sr.FindingSite(site)],
            measurements=amounts(values)))

    frames = _frame_index(seg)
    number_of = {artery: number for number, _, artery in segments}
    meta = volume.metadata or {}
    thin = meta.get("thin_slices")
    for i, lesion in enumerate(result.get("lesions") or [], start=1):
        k = int(lesion["slice"])
        source = int(thin["first_slice"]) + k * slab + slab // 2 if thin and slab else k
        header = headers[source]
        number = number_of.get(lesion.get("artery"), segments[0][0]) if per_artery else segments[0][0]
        frame = frames.get((number, str(header.SOPInstanceUID)))
        if frame is None:
            raise AgataxError(f"lesion {i} (slice {k}) has no frame in the Segmentation", code="UNEXPECTED")
        site = artery_codes()[lesion["artery"]] if lesion.get("artery") in ARTERY_CODES else codes.SCT.CoronaryArtery
        items = [sr.Measurement(name=codes.DCM.CalciumScore, value=float(lesion["agatston"]), unit=ucum_one,
                                method=codes.DCM.AgatstonScoringMethod, algorithm_id=algorithm),
                 sr.Measurement(name=codes.SCT.Area, value=float(lesion["area_mm2"]), unit=mm2, algorithm_id=algorithm),
                 sr.Measurement(name=codes.DCM.CalciumVolume, value=float(lesion["volume_mm3"]), unit=mm3,
                                algorithm_id=algorithm),
                 sr.Measurement(name=codes.DCM.MaximumAttenuationCoefficient, value=float(lesion["peak_hu"]),
                                unit=hu, algorithm_id=algorithm),
                 sr.Measurement(name=codes.DCM.MeanAttenuationCoefficient, value=float(lesion["mean_hu"]),
                                unit=hu, algorithm_id=algorithm)]
        if lesion.get("mass_mg") is not None:
            items.append(sr.Measurement(name=codes.DCM.CalciumMass, value=float(lesion["mass_mg"]), unit=mg,
                                        algorithm_id=algorithm))
        groups.append(sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=sr.TrackingIdentifier(uid=hd.UID(), identifier=f"slice lesion {i}"),
            referenced_segment=sr.ReferencedSegmentationFrame(
                sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, frame_number=frame,
                segment_number=number,
                source_image=sr.SourceImageForSegmentation(str(header.SOPClassUID), str(header.SOPInstanceUID))),
            finding_type=lesion_type, algorithm_id=algorithm, finding_sites=[sr.FindingSite(site)],
            measurements=items))

    weights = str(result.get("weights") or "given mask")
    device = sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=["agatax", __version__, weights]), name="agatax", manufacturer_name="agatax",
        model_name=f"agatax {__version__}"[:64])
    context = sr.ObservationContext(observer_device_context=sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))
    report = sr.MeasurementReport(observation_context=context,
                                  procedure_reported=codes.SCT.CardiacCTForCalciumScoring,
                                  imaging_measurements=groups)
    return sr.Comprehensive3DSR(
        evidence=[*headers, seg], content=report[0], series_instance_uid=hd.UID(), series_number=SR_SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="agatax", is_complete=True,
        series_description="agatax coronary calcium score")


def write_dicom_report(directory: str | os.PathLike, exam_id: str, volume, mask: np.ndarray,
                       result: Mapping[str, Any]) -> dict[str, Path]:
    """Write ``<id>_seg.dcm`` and ``<id>_sr.dcm`` for a scored exam (atomically, each replacing an earlier one).

    Args:
        volume: the exam as scored (``ScoredExam.volume``: its metadata names the source slices).
        mask: the scored calcium on ``volume``'s grid (bool or artery labels 1-4).
        result: the exam's JSON dict (totals, lesions, per_artery, weights, members): the SR's numbers.
    Returns:
        {"seg": path, "sr": path}.
    Raises:
        InputError NOT_DICOM_INPUT (not a DICOM exam), ReadError DICOM_SOURCE_INCOMPLETE (the source slices
        lack the UIDs a reference needs), AgataxError MISSING_DEPENDENCY (no highdicom).
    """
    paths = dicom_report_paths(directory, exam_id)
    with warnings.catch_warnings():  # names are copied as the source holds them: highdicom's advice is noise here
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
        seg, headers, segments, slab = build_segmentation(volume, mask, result)
        report = build_sr(seg, headers, segments, slab, volume, result)
    seg_bytes, sr_bytes = _dataset_bytes(seg), _dataset_bytes(report)
    atomic_write_bytes(paths["seg"], seg_bytes)
    atomic_write_bytes(paths["sr"], sr_bytes)
    return paths


def remove_dicom_report(directory: str | os.PathLike, exam_id: str) -> None:
    """Remove an exam's DICOM outputs of an earlier run (scored again without ``--dicom``)."""
    for path in dicom_report_paths(directory, exam_id).values():
        remove_file(path)
