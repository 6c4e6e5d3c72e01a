"""The in-memory exam: HU voxels on a known grid, with what a report needs to say about them."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from agatax.errors import InputError

__all__ = ["Volume"]


@dataclasses.dataclass(frozen=True, eq=False)
class Volume:
    """A CT exam in Hounsfield units.

    Attributes:
        hu: float32 array (z, y, x) in HU; z runs along the slice normal in increasing position.
        spacing: (dz, dy, dx) in mm; dz is the slice increment (distance between slice centres),
            dy the row spacing, dx the column spacing.
        slice_thickness: nominal reconstructed slice thickness in mm, or None when unknown.
        affine: float64 (4, 4) mapping homogeneous array indices (z, y, x, 1) to patient coordinates
            in mm, DICOM LPS convention. Default: a standard axial grid at the origin (z index towards the
            head, y towards the back, x towards the patient's left).
        metadata: identifiers and acquisition facts (keys such as ``patient_id``, ``study_uid``,
            ``series_uid``, ``series_description``, ``kvp``, ``manufacturer``, ``kernel``).
        warnings: human-readable notes gathered while reading (e.g. overlapping reconstruction).
        source: where the exam was read from, if from a file.
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    slice_thickness: float | None = None
    affine: np.ndarray | None = None
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    source: str | None = None

    def __post_init__(self) -> None:
        hu = np.asarray(self.hu)
        if hu.ndim != 3:
            raise InputError(
                f"Volume.hu must have rank 3 (z, y, x); got shape {hu.shape}", code="BAD_RANK"
            )
        if not np.issubdtype(hu.dtype, np.number):
            raise InputError(f"Volume.hu must be numeric; got dtype {hu.dtype}", code="BAD_DTYPE")
        hu = hu.astype(np.float32, copy=False)
        if not np.all(np.isfinite(hu)):
            bad = int(np.size(hu) - np.count_nonzero(np.isfinite(hu)))
            raise InputError(
                f"Volume.hu holds {bad} NaN or infinite values",
                code="NON_FINITE",
                hint="replace them (e.g. with -1000 HU for air) before building a Volume",
            )
        spacing = tuple(float(s) for s in np.asarray(self.spacing, dtype=np.float64).reshape(-1))
        if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
            raise InputError(
                f"Volume.spacing must be three positive mm values (dz, dy, dx); got {self.spacing}",
                code="BAD_SPACING",
            )
        if self.slice_thickness is not None and not (float(self.slice_thickness) > 0):
            raise InputError(
                f"slice_thickness must be positive or None; got {self.slice_thickness}",
                code="BAD_SPACING",
            )
        affine = self.affine
        if affine is None:
            # Standard axial grid: z index -> S (LPS z), y index -> P (LPS y), x index -> L (LPS x).
            affine = np.zeros((4, 4))
            affine[2, 0], affine[1, 1], affine[0, 2], affine[3, 3] = spacing[0], spacing[1], spacing[2], 1.0
        affine = np.asarray(affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise InputError(f"affine must be a finite 4 x 4 array; got shape {affine.shape}", code="BAD_AFFINE")
        object.__setattr__(self, "hu", hu)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "affine", affine)
        object.__setattr__(self, "metadata", dict(self.metadata))
        object.__setattr__(self, "warnings", tuple(self.warnings))
        if self.slice_thickness is not None:
            object.__setattr__(self, "slice_thickness", float(self.slice_thickness))

    @property
    def shape(self) -> tuple[int, int, int]:
        """(z, y, x) voxel counts."""
        return tuple(self.hu.shape)  # type: ignore[return-value]

    @property
    def overlapping(self) -> bool:
        """True when slices overlap: increment smaller than the nominal thickness (beyond 1 %)."""
        return self.slice_thickness is not None and self.spacing[0] < 0.99 * self.slice_thickness

    def replace(self, **changes: Any) -> "Volume":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)
