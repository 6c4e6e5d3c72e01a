"""One entry point for exams on disk: DICOM file or folder, or NIfTI file."""

from __future__ import annotations

import os

from agatax.errors import InputError
from agatax.io.dicom import read_dicom
from agatax.io.nifti import is_nifti, read_nifti
from agatax.volume import Volume

__all__ = ["read_volume"]


def read_volume(
    path: str | os.PathLike,
    *,
    series: str | int | None = None,
    allow_gaps: bool = False,
    allow_uneven: bool = False,
    allow_tilt: bool = False,
    allow_not_ct: bool = False,
    allow_qform_mismatch: bool = False,
    allow_small: bool = False,
    allow_not_hu: bool = False,
) -> Volume:
    """Read a CT exam into a Volume (hu float32 (z, y, x) in HU, spacing (dz, dy, dx) mm, LPS affine).

    Args:
        path: a ``.nii`` / ``.nii.gz`` file, a DICOM file, or a folder searched recursively for DICOM.
        series: DICOM only: which series when the folder holds several (UID, unique UID prefix,
            SeriesNumber or SeriesDescription).
        allow_gaps, allow_uneven, allow_tilt, allow_not_ct: DICOM only: read series with missing slices,
            uneven increments, a gantry tilt or another modality instead of refusing them.
        allow_qform_mismatch: NIfTI only: use the sform when qform and sform disagree.
        allow_small, allow_not_hu: read exams that ``agatax.volume.check_exam`` refuses: fewer than 8 slices or
            under 64 x 64 pixels (TOO_SMALL), values without air and soft tissue (NOT_HU).

    Raises:
        agatax.ReadError with a stable ``code`` (see ``agatax.io.dicom.read_dicom``, QFORM_SFORM_MISMATCH,
        NOT_FOUND, BAD_PATH, NON_FINITE, TOO_LARGE, TOO_SMALL, NOT_HU).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"read_volume takes a path (str or os.PathLike); got {type(path).__name__}",
                         code="BAD_PATH", hint="pass the exam's DICOM folder or file, or a NIfTI file, as a path")
    if is_nifti(path):
        return read_nifti(path, allow_qform_mismatch=allow_qform_mismatch, allow_small=allow_small,
                          allow_not_hu=allow_not_hu)
    return read_dicom(
        path,
        series=series,
        allow_gaps=allow_gaps,
        allow_uneven=allow_uneven,
        allow_tilt=allow_tilt,
        allow_not_ct=allow_not_ct,
        allow_small=allow_small,
        allow_not_hu=allow_not_hu,
    )
