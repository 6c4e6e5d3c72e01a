"""Write a Volume as a DICOM CT series: one CT Image Storage file per slice, int16 with a rescale intercept."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

from agatax.errors import InputError
from agatax.volume import Volume

__all__ = ["write_dicom_series", "axial_affine"]


def write_dicom_series(
    directory: str | os.PathLike,
    volume: Volume,
    *,
    series_uid: str | None = None,
    series_description: str = "agatax",
    patient_id: str = "ANON",
    study_uid: str | None = None,
    instance_start: int = 1,
) -> list[str]:
    """Write ``volume`` as one CT Image Storage file per z slice (explicit VR little endian).

    Pixels are int16 with RescaleSlope 1 and one RescaleIntercept for the series, chosen so the rounded
    HU range fits (0 when it already fits int16). ImagePositionPatient and ImageOrientationPatient come
    from ``volume.affine`` (slice k at affine @ (k, 0, 0, 1)); PixelSpacing is (dy, dx).

    Returns:
        The written paths, in z order (``CT00001.dcm``, ... numbered from ``instance_start``).
    """
    hu = volume.hu  # float32: integers are exact far beyond the int16 range
    low, high = float(np.rint(hu.min())), float(np.rint(hu.max()))
    if high - low > 65535:
        raise InputError(
            f"HU range {low:g}..{high:g} spans more than 65535 values and does not fit int16 with slope 1",
            code="HU_RANGE",
            hint="clip the volume to a physical HU range (e.g. -1024..3071) before writing",
        )
    intercept = 0.0 if (low >= -32768 and high <= 32767) else low + 32768

    affine = np.asarray(volume.affine, dtype=np.float64)
    dy, dx = float(np.linalg.norm(affine[:3, 1])), float(np.linalg.norm(affine[:3, 2]))
    row_dir, col_dir = affine[:3, 2] / dx, affine[:3, 1] / dy
    if float(affine[:3, 0] @ np.cross(row_dir, col_dir)) <= 0:
        raise InputError(
            "the volume's z axis does not run along the DICOM slice normal (x direction cross y direction), "
            f"so readers would sort its slices in reverse; affine z column {affine[:3, 0].round(4).tolist()}",
            code="LEFT_HANDED_GRID",
            hint="give the Volume a right-handed affine, e.g. agatax.io.axial_affine(spacing, origin) for "
            "axial slices (z to head, y to back, x to the patient's left)",
        )
    study_uid = study_uid or str(volume.metadata.get("study_uid") or "") or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    meta = volume.metadata
    thickness = volume.slice_thickness or volume.spacing[0]
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(volume.shape[0]):
        number = instance_start + k
        stored = (np.rint(hu[k]).astype(np.int32) - int(intercept)).astype(np.int16)
        ds = _slice_dataset(
            stored,
            position=affine[:3, :] @ np.array([k, 0.0, 0.0, 1.0]),
            orientation=np.concatenate([row_dir, col_dir]),
            pixel_spacing=(dy, dx),
            thickness=thickness,
            increment=volume.spacing[0],
            intercept=intercept,
            instance=number,
            uids=(study_uid, series_uid, frame_uid),
            patient_id=patient_id,
            description=series_description,
            meta=meta,
        )
        path = out / f"CT{number:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(str(path))
    return paths


def axial_affine(spacing, origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Affine (4, 4) of a standard axial grid: index (z, y, x) -> LPS mm with z toward the head (S),
    y toward the back (P), x toward the patient's left (L); ``spacing`` (dz, dy, dx) mm, ``origin`` the
    LPS position of voxel (0, 0, 0)."""
    dz, dy, dx = (float(v) for v in spacing)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = (0.0, 0.0, dz), (0.0, dy, 0.0), (dx, 0.0, 0.0)
    affine[:3, 3] = origin
    return affine


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text if len(text) <= 16 else f"{value:.8g}"


def _slice_dataset(pixels, *, position, orientation, pixel_spacing, thickness, increment, intercept, instance,
                   uids, patient_id, description, meta) -> Dataset:
    study_uid, series_uid, frame_uid = uids
    sop_uid = generate_uid()
    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = CTImageStorage
    file_meta.MediaStorageSOPInstanceUID = sop_uid
    file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = file_meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = str(meta.get("study_date") or "")
    ds.Modality = "CT"
    ds.Manufacturer = str(meta.get("manufacturer") or "")
    ds.SeriesDescription = description
    ds.PatientName = patient_id
    ds.PatientID = patient_id
    if meta.get("kvp") is not None:
        ds.KVP = _ds(float(meta["kvp"]))
    if meta.get("kernel"):
        ds.ConvolutionKernel = str(meta["kernel"]).split("\\")
    ds.SliceThickness = _ds(thickness)
    ds.SpacingBetweenSlices = _ds(increment)
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.ImageOrientationPatient = [_ds(v) for v in orientation]
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelSpacing = [_ds(v) for v in pixel_spacing]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = _ds(intercept)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    return ds
