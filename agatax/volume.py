"""The in-memory exam: HU voxels on a known grid, with what a report needs to say about them."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from agatax.errors import InputError

__all__ = ["Volume", "check_exam"]


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
        try:
            spacing = tuple(float(s) for s in np.asarray(self.spacing, dtype=np.float64).reshape(-1))
        except (TypeError, ValueError):
            spacing = ()
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


# ----------------------------------------------------------------------------------- exam plausibility
MIN_SLICES = 8  # fewer slices cannot cover the heart (~120 mm) at any usual increment
MIN_MATRIX = 64  # in-plane pixels: below this a voxel is several mm wide, calcium is invisible
AIR_BELOW_HU = -500.0  # air and lung
TISSUE_HU = (-200.0, 300.0)  # fat, water, soft tissue, blood
MIN_AIR_FRACTION = 0.001  # of the sampled voxels
MIN_TISSUE_FRACTION = 0.01
_SAMPLE_SHAPE = (64, 128, 128)  # the HU check looks at about this many voxels (a strided view)
EXAM_TEXT = (
    "a calcium scoring exam is a stack of axial CT slices covering the heart, typically 40-80 slices of "
    "512 x 512 pixels, in Hounsfield units"
)


def hu_sample(hu: np.ndarray) -> np.ndarray:
    """A strided subsample of ``hu`` (z, y, x) of at most about 64 x 128 x 128 voxels, float32 (a small copy)."""
    steps = tuple(max(1, n // m) for n, m in zip(hu.shape, _SAMPLE_SHAPE))
    return np.asarray(hu[:: steps[0], :: steps[1], :: steps[2]], dtype=np.float32)


def hu_problem(hu: np.ndarray) -> str | None:
    """Why ``hu`` (z, y, x) does not look like a chest CT in HU, or None when it does.

    A chest CT always holds air or lung (< -500 HU) and soft tissue (-200..300 HU); a [0, 1]-normalised image,
    a label mask (0..4), stored values without their rescale (air at 0) or an image without any air fail.
    Looks at a strided subsample only (no full-size temporaries).
    """
    sample = hu_sample(hu)
    if sample.size == 0:
        return "the image holds no voxels"
    air = float(np.count_nonzero(sample < AIR_BELOW_HU)) / sample.size
    tissue = float(np.count_nonzero((sample >= TISSUE_HU[0]) & (sample <= TISSUE_HU[1]))) / sample.size
    if air >= MIN_AIR_FRACTION and tissue >= MIN_TISSUE_FRACTION:
        return None
    low, p1, p99, high = np.percentile(sample, [0, 1, 99, 100])
    return (
        f"values range from {low:g} to {high:g} (1st-99th percentile {p1:g} to {p99:g}); {100 * air:.2f} % "
        f"below {AIR_BELOW_HU:g} HU (air, lung) and {100 * tissue:.2f} % between {TISSUE_HU[0]:g} and "
        f"{TISSUE_HU[1]:g} HU (soft tissue), where a chest CT in HU holds both"
    )


def check_exam(volume: Volume, *, allow_small: bool = False, allow_not_hu: bool = False) -> None:
    """Refuse a Volume that cannot be a calcium scoring exam; returns None when it can.

    Raises InputError with code TOO_SMALL (fewer than 8 slices, or under 64 x 64 pixels in plane) or NOT_HU
    (no air below -500 HU or no soft tissue in -200..300 HU, e.g. a normalised image or a mask; checked on
    a strided subsample). ``allow_small`` / ``allow_not_hu`` skip the checks. Readers call it on every exam;
    Volumes built directly are not checked unless this is called.
    """
    _check_exam(volume, allow_small=allow_small, allow_not_hu=allow_not_hu, error=InputError)


def _check_exam(volume: Volume, *, allow_small: bool, allow_not_hu: bool, error: type) -> None:
    name = volume.source or "the exam"
    nz, ny, nx = volume.shape
    if not allow_small and (nz < MIN_SLICES or ny < MIN_MATRIX or nx < MIN_MATRIX):
        raise error(
            f"{name} is (z, y, x) {nz} x {ny} x {nx} voxels: {EXAM_TEXT} (at least {MIN_SLICES} slices of "
            f"{MIN_MATRIX} x {MIN_MATRIX})",
            code="TOO_SMALL",
            hint="point at the whole axial series of the exam; pass allow_small=True to read it anyway",
            paths=[volume.source] if volume.source else (),
        )
    problem = None if allow_not_hu else hu_problem(volume.hu)
    if problem:
        raise error(
            f"{name} does not hold CT values in HU: {problem}; it looks like a normalised image, a mask or "
            "values without their rescale",
            code="NOT_HU",
            hint="give the CT exam itself in HU (stored value x slope + intercept); pass allow_not_hu=True to "
            "read it anyway",
            paths=[volume.source] if volume.source else (),
        )
