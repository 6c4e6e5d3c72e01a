"""One anatomical orientation for every exam before the networks see it.

The networks were trained on axial slices in the standard DICOM layout: z index towards the head
(superior), y index (rows) towards the patient's back (posterior), x index (columns) towards the patient's
left. The same exam may be stored with rows or columns reversed (a mirrored ImageOrientationPatient), rotated
by 180 degrees, slices from head to feet, or as a NIfTI in another axis order; fed as stored, the networks
would see a mirrored heart. :func:`canonical_orientation` finds the axis permutation and flips that bring a
Volume's affine closest to the standard layout (as ``nibabel.as_closest_canonical`` does, in LPS); the
pipeline runs on the reoriented exam and returns its mask on the input's grid.

Sagittal and coronal series (slice normal not closest to the head-feet axis) are refused with NOT_AXIAL:
the Agatston score is defined on axial slices of the acquired thickness, so permuting them would invent it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from agatax.errors import InputError
from agatax.volume import Volume

__all__ = ["Reorientation", "canonical_orientation", "to_canonical", "restore_chest"]

# canonical world axis (LPS: 0 = L, 1 = P, 2 = S) of each array axis (z, y, x)
_CANONICAL_WORLD = (2, 1, 0)
_PLANES = {0: "sagittal (slices along the left-right axis)", 1: "coronal (slices along the front-back axis)"}


@dataclasses.dataclass(frozen=True)
class Reorientation:
    """Axis permutation then flips taking a stored (z, y, x) array to the canonical layout.

    Attributes:
        order: canonical axis a is stored axis ``order[a]`` (a transpose of the stored array).
        flip: per canonical axis, True when it is reversed after the transpose.
    """

    order: tuple[int, int, int]
    flip: tuple[bool, bool, bool]

    @property
    def identity(self) -> bool:
        """True when the stored array is already canonical (most DICOM axial series)."""
        return self.order == (0, 1, 2) and not any(self.flip)

    def apply(self, array, xp=np):
        """Stored (z, y, x) -> canonical (a view where possible); ``xp`` np, or jax.numpy inside a jit."""
        if self.identity:
            return array
        out = xp.transpose(array, self.order)
        axes = tuple(a for a in range(3) if self.flip[a])
        return xp.flip(out, axes) if axes else out

    def undo(self, array, xp=np):
        """Canonical (z, y, x) -> stored layout, exactly inverting :meth:`apply` (NumPy: a contiguous copy)."""
        if self.identity:
            return array
        axes = tuple(a for a in range(3) if self.flip[a])
        out = xp.flip(array, axes) if axes else array
        out = xp.transpose(out, self.stored_order)
        return np.ascontiguousarray(out) if xp is np else out

    @property
    def stored_order(self) -> tuple[int, int, int]:
        """Stored axis b is canonical axis ``stored_order[b]`` (the inverse permutation of ``order``)."""
        return tuple(int(i) for i in np.argsort(self.order))  # type: ignore[return-value]

    def affine(self, affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
        """The canonical array's affine, given the stored (4, 4) affine and the stored shape."""
        out = np.asarray(affine, dtype=np.float64)[:, list(self.order) + [3]].copy()
        shape_c = [shape[o] for o in self.order]
        for a in range(3):
            if self.flip[a]:
                out[:3, 3] += out[:3, a] * (shape_c[a] - 1)
                out[:3, a] *= -1
        return out


def canonical_orientation(affine: np.ndarray, *, source: str | None = None) -> Reorientation:
    """The reorientation bringing an exam with this (4, 4) index-(z, y, x)-to-LPS affine to the standard
    axial layout (z superior, y posterior, x patient left).

    Raises:
        InputError NOT_AXIAL: the slices are sagittal or coronal, or the grid is too oblique (an axis at
        about 45 degrees between two body axes) to say which.
    """
    columns = np.asarray(affine, dtype=np.float64)[:3, :3]
    directions = columns / np.linalg.norm(columns, axis=0)
    world = np.argmax(np.abs(directions), axis=0)  # body axis closest to each stored axis
    where = f"{source}: " if source else ""
    if sorted(world.tolist()) != [0, 1, 2] or np.min(np.max(np.abs(directions), axis=0)) < 0.75:
        raise InputError(
            f"{where}the image axes are oblique to the body (directions {np.round(directions.T, 3).tolist()}); "
            "cannot tell the axial slices", code="NOT_AXIAL",
            hint="reconstruct the series as axial slices (or resample it onto an axial grid) and score that")
    if world[0] != 2:
        raise InputError(
            f"{where}the slices are {_PLANES[int(world[0])]}, not axial; the Agatston score is defined on axial "
            "slices", code="NOT_AXIAL",
            hint="score the axial calcium-scoring series of the study (or resample this one onto 3 mm axial slices)")
    order = tuple(int(np.flatnonzero(world == w)[0]) for w in _CANONICAL_WORLD)
    flip = tuple(bool(directions[_CANONICAL_WORLD[a], order[a]] < 0) for a in range(3))
    return Reorientation(order=order, flip=flip)  # type: ignore[arg-type]


def to_canonical(volume: Volume) -> tuple[Volume, Reorientation]:
    """The exam in the standard axial layout, and the reorientation (``undo`` maps arrays back).

    The returned Volume shares the voxels (a view) when no reorientation is needed.
    """
    how = canonical_orientation(volume.affine, source=volume.source)
    if how.identity:
        return volume, how
    hu = np.ascontiguousarray(how.apply(volume.hu))
    spacing = tuple(volume.spacing[o] for o in how.order)
    affine = how.affine(volume.affine, volume.shape)
    return volume.replace(hu=hu, spacing=spacing, affine=affine), how


def restore_chest(chest, how: Reorientation, shape: tuple[int, int, int]):
    """A ``ChestRegion`` found on the canonical exam, with its region and box on the stored grid ``shape``."""
    if how.identity or chest.region is None:
        return chest
    region = how.undo(chest.region)
    box = [None, None, None]
    for a, s in enumerate(chest.box):
        n = shape[how.order[a]]
        box[how.order[a]] = slice(n - s.stop, n - s.start) if how.flip[a] else s
    carina = chest.carina_slice  # an index along canonical z, which stays the stored slice axis (axial exams)
    if how.flip[0] and np.isfinite(carina):
        carina = shape[how.order[0]] - 1 - carina
    return dataclasses.replace(chest, region=region, box=tuple(box), carina_slice=carina)
