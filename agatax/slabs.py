"""Thin-slice exams scored as the clinical convention does: on 3 mm slabs.

The Agatston score is defined on 3 mm axial slices (2.5-3 mm on modern scanners); scored on a 0.5-1.5 mm
reconstruction it runs higher (less partial volume, more noise above 130 HU), so clinical workstations
score a 3 mm reconstruction of thin-slice data. :func:`thick_slabs` makes that reconstruction: the mean of
``n = round(3 mm / increment)`` consecutive slices (a box filter along z, as an average-intensity slab
reconstruction does), slabs centred on the exam (the fewer than ``n`` left-over slices split between both
ends). The networks then see the slab exam too: the 3 mm axial slices they were trained on.
"""

from __future__ import annotations

import numpy as np

from agatax.errors import InputError
from agatax.volume import Volume

__all__ = ["thick_slabs", "SLAB_MM", "THIN_BELOW_MM", "THIN_SLICES"]

SLAB_MM = 3.0
THIN_BELOW_MM = 2.0  # increments under this are thin slices (agatax.preprocess.network_grid_mm uses it too)
THIN_SLICES = ("slab", "native")


def thick_slabs(volume: Volume, mask: np.ndarray | None = None, *, slab_mm: float = SLAB_MM
                ) -> tuple[Volume, np.ndarray | None]:
    """A thin-slice exam (increment < 2 mm) as ``slab_mm`` slabs; other exams come back unchanged.

    Args:
        volume: the exam; its z axis is the slice axis.
        mask: optional labels (z, y, x) on ``volume``'s grid (a given calcium mask): a slab voxel takes the
            highest label of its slices (calcium where any of them is; the HU threshold on the slab's mean
            then applies as on any exam).
    Returns:
        (slab Volume: hu float32 (m, y, x) mean HU, spacing (n dz, dy, dx), thickness n dz, affine at the
        slab centres, ``metadata["files"]`` the middle file of each slab (``metadata["source_files"]`` all of them), a warning saying what was done;
        the slab mask or None).
    """
    dz = volume.spacing[0]
    n = int(round(slab_mm / dz))
    if dz >= THIN_BELOW_MM or n <= 1:
        return volume, mask
    nz = volume.shape[0]
    m = nz // n
    if m < 1:
        raise InputError(f"{nz} slices of {dz:g} mm cover less than one {slab_mm:g} mm slab", code="TOO_SMALL",
                         hint="give the whole thin-slice series")
    start = (nz - m * n) // 2
    hu = volume.hu[start: start + m * n].reshape(m, n, *volume.shape[1:]).mean(axis=1, dtype=np.float32)
    affine = volume.affine.copy()
    affine[:3, 3] = (volume.affine @ np.array([start + (n - 1) / 2, 0.0, 0.0, 1.0]))[:3]
    affine[:3, 0] *= n
    metadata = dict(volume.metadata)
    files = metadata.get("files") or []
    if len(files) == nz:
        metadata["files"] = [files[start + k * n + n // 2] for k in range(m)]
        metadata["source_files"] = list(files)  # the thin slices in z order (DICOM outputs reference them)
    metadata["thin_slices"] = {"increment_mm": dz, "slab_slices": n, "first_slice": start, "slabs": m, "slices": nz}
    note = (f"thin slices ({dz:g} mm) scored on {m} slabs of {n} slices ({n * dz:g} mm, their mean), as a "
            f"3 mm reconstruction is scored clinically (--thin-slices native scores the thin slices)")
    if nz - m * n:
        note += f"; {nz - m * n} end slices left out"
    slab = Volume(hu, (n * dz, *volume.spacing[1:]), slice_thickness=n * dz, affine=affine, metadata=metadata,
                  warnings=tuple(volume.warnings) + (note,), source=volume.source)
    if mask is None:
        return slab, None
    labels = np.asarray(mask)[start: start + m * n].reshape(m, n, *volume.shape[1:]).max(axis=1)
    return slab, np.ascontiguousarray(labels)
