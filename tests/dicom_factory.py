"""Synthetic DICOM files written directly with pydicom, for the good and the bad cases of the reader.

Independent of agatax's own writer: every tag is set here, so tests compare the reader with values this
module chose.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.67"
MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"


def _meta(sop_class: str, sop_uid: str, transfer_syntax: str = ExplicitVRLittleEndian) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = transfer_syntax
    return meta


def _base(sop_class: str, *, series_uid: str, study_uid: str, modality: str = "CT", transfer_syntax=None) -> Dataset:
    ds = Dataset()
    sop_uid = generate_uid()
    ds.file_meta = _meta(sop_class, sop_uid, transfer_syntax or ExplicitVRLittleEndian)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.Modality = modality
    ds.PatientID = "FACTORY"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyDate = "20261128"
    ds.Manufacturer = "Factory"
    return ds


def _pixels(ds: Dataset, stored: np.ndarray, signed: bool = True) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape[-2:]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = np.ascontiguousarray(stored, dtype="<i2" if signed else "<u2").tobytes()


def ct_slice(
    stored: np.ndarray,
    *,
    position,
    series_uid: str,
    study_uid: str,
    instance: int | None = 1,
    orientation=AXIAL,
    pixel_spacing=(0.5, 0.5),
    thickness: float | None = 3.0,
    slope: float = 1.0,
    intercept: float = -1024.0,
    modality: str = "CT",
    image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
    description: str = "calcium score",
    series_number: int = 2,
    padding: int | None = None,
    trigger_time: float | None = None,
    sop_class: str = CTImageStorage,
    kernel: str = "FC12",
    manufacturer: str | None = None,
) -> Dataset:
    """One single-frame image dataset holding ``stored`` (rows, cols) int16 values."""
    ds = _base(sop_class, series_uid=series_uid, study_uid=study_uid, modality=modality)
    ds.ImageType = list(image_type)
    ds.SeriesDescription = description
    ds.SeriesNumber = series_number
    if instance is not None:
        ds.InstanceNumber = instance
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
    ds.PixelSpacing = [f"{v:g}" for v in pixel_spacing]
    if thickness is not None:
        ds.SliceThickness = f"{thickness:g}"
    ds.KVP = "120"
    ds.ConvolutionKernel = kernel
    if manufacturer is not None:
        ds.Manufacturer = manufacturer
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleIntercept = f"{intercept:g}"
    if padding is not None:
        ds.PixelPaddingValue = int(padding)
    if trigger_time is not None:
        ds.TriggerTime = f"{trigger_time:g}"
    _pixels(ds, stored)
    return ds


def save(ds: Dataset, path) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def write_series(
    directory,
    hu: np.ndarray,
    *,
    spacing=(3.0, 0.5, 0.5),
    origin=(-10.0, -20.0, 100.0),
    positions=None,
    slopes=None,
    intercepts=None,
    instance_numbers=None,
    names=None,
    series_uid: str | None = None,
    study_uid: str | None = None,
    orientation=AXIAL,
    **slice_kw,
) -> list[str]:
    """Write ``hu`` (z, y, x) as one file per slice; returns paths in z order.

    Slice k sits at ``positions[k]`` (3-vectors) or origin + k * dz * normal. Stored values are
    round((hu - intercept) / slope) with per-slice ``slopes`` / ``intercepts`` (default 1 / -1024).
    """
    hu = np.asarray(hu, dtype=np.float64)
    n = hu.shape[0]
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    normal = np.cross(row, col)
    if positions is None:
        positions = [np.asarray(origin) + k * spacing[0] * normal for k in range(n)]
    slopes = [1.0] * n if slopes is None else list(slopes)
    intercepts = [-1024.0] * n if intercepts is None else list(intercepts)
    instance_numbers = list(range(1, n + 1)) if instance_numbers is None else list(instance_numbers)
    names = [f"IM{k:04d}" for k in range(n)] if names is None else list(names)
    paths = []
    for k in range(n):
        stored = np.rint((hu[k] - intercepts[k]) / slopes[k]).astype(np.int16)
        ds = ct_slice(
            stored,
            position=positions[k],
            series_uid=series_uid,
            study_uid=study_uid,
            instance=instance_numbers[k],
            orientation=orientation,
            pixel_spacing=spacing[1:],
            slope=slopes[k],
            intercept=intercepts[k],
            **slice_kw,
        )
        paths.append(save(ds, Path(directory) / names[k]))
    return paths


def write_dose_report(path, *, study_uid: str | None = None) -> str:
    """An X-Ray Radiation Dose SR (no pixels), as scanners add to exams."""
    ds = _base(DOSE_SR, series_uid=generate_uid(), study_uid=study_uid or generate_uid(), modality="SR")
    ds.SeriesDescription = "Dose Report"
    ds.ValueType = "CONTAINER"
    return save(ds, path)


def write_dicomdir(path) -> str:
    """A minimal file carrying the Media Storage Directory SOP class."""
    ds = Dataset()
    ds.file_meta = _meta(MEDIA_DIRECTORY, generate_uid())
    ds.FileSetID = "AGATAX"
    ds.DirectoryRecordSequence = []
    return save(ds, path)


def write_scout(path, *, study_uid: str | None = None, localizer_tag: bool = True) -> str:
    """A coronal projection image: LOCALIZER in ImageType (or not, then only its orientation tells)."""
    image_type = ("ORIGINAL", "PRIMARY", "LOCALIZER") if localizer_tag else ("ORIGINAL", "PRIMARY", "AXIAL")
    ds = ct_slice(
        np.zeros((8, 8), np.int16),
        position=(-100.0, 0.0, 200.0),
        orientation=CORONAL,
        series_uid=generate_uid(),
        study_uid=study_uid or generate_uid(),
        image_type=image_type,
        description="Topogram",
        series_number=1,
    )
    return save(ds, path)


def write_mr_series(directory, n: int = 3) -> list[str]:
    """A small MR series (modality MR, MR Image Storage)."""
    uid, study = generate_uid(), generate_uid()
    return [
        save(
            ct_slice(np.zeros((8, 8), np.int16), position=(0.0, 0.0, 5.0 * k), series_uid=uid, study_uid=study,
                     instance=k + 1, modality="MR", sop_class=MRImageStorage, intercept=0.0, description="T1"),
            Path(directory) / f"MR{k}",
        )
        for k in range(n)
    ]


def write_compressed_junk(directory, n: int, transfer_syntax: str) -> list[str]:
    """CT slices whose (junk) pixel data is encapsulated under a compressed transfer syntax."""
    uid, study = generate_uid(), generate_uid()
    paths = []
    for k in range(n):
        ds = ct_slice(np.zeros((8, 8), np.int16), position=(0.0, 0.0, 3.0 * k), series_uid=uid, study_uid=study,
                      instance=k + 1)
        ds.file_meta.TransferSyntaxUID = transfer_syntax
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3" + bytes(60)])
        ds["PixelData"].VR = "OB"
        paths.append(save(ds, Path(directory) / f"J{k}"))
    return paths


def write_enhanced(path, hu: np.ndarray, *, spacing=(2.0, 0.5, 0.5), origin=(0.0, 0.0, 50.0),
                   intercepts=None, order=None) -> str:
    """An Enhanced CT multi-frame file: geometry and rescale in the (per-frame) functional groups.

    ``order`` lists which z index each stored frame holds (frames may be stored out of order).
    """
    hu = np.asarray(hu, dtype=np.float64)
    n = hu.shape[0]
    order = list(range(n)) if order is None else list(order)
    intercepts = [-1024.0] * n if intercepts is None else list(intercepts)
    ds = _base(EnhancedCTImageStorage, series_uid=generate_uid(), study_uid=generate_uid())
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.SeriesDescription = "enhanced"
    ds.SeriesNumber = 5
    ds.InstanceNumber = 1
    ds.NumberOfFrames = n
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [f"{spacing[1]:g}", f"{spacing[2]:g}"]
    measures.SliceThickness = f"{spacing[0]:g}"
    shared.PixelMeasuresSequence = [measures]
    plane = Dataset()
    plane.ImageOrientationPatient = [f"{v:g}" for v in AXIAL]
    shared.PlaneOrientationSequence = [plane]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames, stored = [], []
    for z in order:
        group = Dataset()
        pos = Dataset()
        pos.ImagePositionPatient = [f"{origin[0]:g}", f"{origin[1]:g}", f"{origin[2] + z * spacing[0]:g}"]
        group.PlanePositionSequence = [pos]
        rescale = Dataset()
        rescale.RescaleIntercept = f"{intercepts[z]:g}"
        rescale.RescaleSlope = "1"
        rescale.RescaleType = "HU"
        group.PixelValueTransformationSequence = [rescale]
        frames.append(group)
        stored.append(np.rint(hu[z] - intercepts[z]).astype(np.int16))
    ds.PerFrameFunctionalGroupsSequence = frames
    _pixels(ds, np.stack(stored))
    return save(ds, path)


def truncate(path, drop_bytes: int) -> None:
    """Cut the last ``drop_bytes`` bytes off a file (an interrupted copy)."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[:-drop_bytes])
