"""Reading and writing exams: DICOM series and NIfTI volumes into a Volume, masks and series back out."""

from agatax.io.dicom import read_dicom
from agatax.io.dicom_write import axial_affine, write_dicom_series
from agatax.io.nifti import read_mask, read_nifti, write_nifti
from agatax.io.read import read_volume

__all__ = ["read_volume", "read_dicom", "read_nifti", "write_nifti", "read_mask", "write_dicom_series", "axial_affine"]
