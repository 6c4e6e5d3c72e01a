"""Training masks from annotated points (Gogin et al. 2021): every voxel >= 130 HU 3D-connected to a point.

An annotator clicks one 3D point per calcification; the mask is the union of the connected components
(3D, 26-connectivity by default) of the thresholded volume that hold a point. A point may miss by a voxel:
it snaps to the brightest voxel >= threshold within its 3 x 3 x 3 neighbourhood. Points that find no such
voxel are reported, not guessed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from agatax.errors import InputError
from agatax.volume import Volume

__all__ = ["GroundTruth", "mask_from_points"]

_ARTERY_CODES = {"LM": 1, "LAD": 2, "LCX": 3, "RCA": 4}
_STRUCTURES = {6: 1, 18: 2, 26: 3}


@dataclasses.dataclass(frozen=True, eq=False)
class GroundTruth:
    """Result of ``mask_from_points``.

    Attributes:
        mask: (z, y, x) uint8 artery labels (1 LM, 2 LAD, 3 LCX, 4 RCA) when ``arteries`` were given,
            else bool.
        missed_points: the points (z, y, x) that touched no voxel >= threshold (after snapping).
        snapped_points: where each point landed (z, y, x), None for a missed point.
        agatston: Agatston score of the mask (only when spacing is known), else None.
        category: its risk category, else None.
        category_matches: whether ``category`` equals the reference category; None without a reference.
    """

    mask: np.ndarray
    missed_points: list[tuple[int, int, int]]
    snapped_points: list[tuple[int, int, int] | None]
    agatston: float | None
    category: str | None
    category_matches: bool | None


def _points_array(points, shape) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    if pts.size == 0:
        return np.zeros((0, 3), np.int64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise InputError(f"points must be (N, 3) (z, y, x) voxel coordinates; got shape {pts.shape}",
                         code="BAD_POINTS")
    if not np.all(np.isfinite(pts)):
        raise InputError("points hold NaN or infinite coordinates", code="BAD_POINTS")
    idx = np.rint(pts).astype(np.int64)
    bad = np.any((idx < 0) | (idx >= np.asarray(shape)), axis=1)
    if bad.any():
        raise InputError(
            f"{int(bad.sum())} point(s) lie outside the volume of shape {tuple(shape)}, e.g. {tuple(pts[bad][0])}",
            code="POINT_OUTSIDE", hint="points are voxel indices (z, y, x), not mm")
    return idx


def mask_from_points(
    volume_or_hu,
    points: Sequence[Sequence[float]],
    *,
    threshold_hu: float = 130.0,
    connectivity: int = 26,
    reference_category: str | None = None,
    spacing: Sequence[float] | None = None,
    arteries: Sequence[str | int] | None = None,
) -> GroundTruth:
    """The paper's training mask: voxels >= ``threshold_hu`` 3D-connected to an annotated point.

    Args:
        volume_or_hu: a Volume or a (z, y, x) HU array.
        points: (N, 3) voxel coordinates (z, y, x) (rounded to the nearest voxel).
        threshold_hu: lowest HU of calcium (130).
        connectivity: 6, 18 or 26 (3D).
        reference_category: "A".."E" to check the mask's Agatston category against (needs a spacing).
        spacing: (dz, dy, dx) mm when ``volume_or_hu`` is an array (a Volume brings its own).
        arteries: per point, "LM"/"LAD"/"LCX"/"RCA" or 1..4: the mask is then uint8 artery-labelled (a
            component claimed by several points keeps the first point's artery).

    Returns:
        GroundTruth (mask, missed points, snapped points, score and category check).
    """
    if isinstance(volume_or_hu, Volume):
        hu = volume_or_hu.hu
        spacing = volume_or_hu.spacing if spacing is None else spacing
    else:
        hu = np.asarray(volume_or_hu)
        if hu.ndim != 3:
            raise InputError(f"expected a (z, y, x) HU volume; got shape {hu.shape}", code="BAD_RANK")
        if not np.issubdtype(hu.dtype, np.number):
            raise InputError(f"HU array must be numeric; got dtype {hu.dtype}", code="BAD_DTYPE")
    if connectivity not in _STRUCTURES:
        raise InputError(f"connectivity must be 6, 18 or 26; got {connectivity}", code="BAD_CONNECTIVITY")
    if reference_category is not None and reference_category not in ("A", "B", "C", "D", "E"):
        raise InputError(f"reference_category must be one of A-E; got {reference_category!r}", code="BAD_CATEGORY")
    if reference_category is not None and spacing is None:
        raise InputError("checking a reference category needs the voxel spacing", code="NO_SPACING",
                         hint="pass a Volume or spacing=(dz, dy, dx) in mm")
    idx = _points_array(points, hu.shape)
    codes = None
    if arteries is not None:
        if len(arteries) != len(idx):
            raise InputError(f"arteries has {len(arteries)} entries for {len(idx)} points", code="SHAPE_MISMATCH")
        codes = []
        for a in arteries:
            c = _ARTERY_CODES.get(a, a) if isinstance(a, str) else a
            if not isinstance(c, (int, np.integer)) or not 1 <= int(c) <= 4:
                raise InputError(f"artery {a!r} is not LM, LAD, LCX, RCA or 1..4", code="BAD_ARTERY")
            codes.append(int(c))

    above = hu >= threshold_hu
    snapped: list[tuple[int, int, int] | None] = []
    for p in idx:
        lo = np.maximum(p - 1, 0)
        hi = np.minimum(p + 2, hu.shape)
        win = hu[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        if above[tuple(p)]:
            snapped.append(tuple(int(v) for v in p))
            continue
        vals = np.where(win >= threshold_hu, win, -np.inf)
        if np.isfinite(vals).any():
            k = np.unravel_index(int(np.argmax(vals)), vals.shape)
            snapped.append(tuple(int(a + b) for a, b in zip(lo, k)))
        else:
            snapped.append(None)
    missed = [tuple(int(v) for v in p) for p, s in zip(idx, snapped) if s is None]

    hits = [(s, (codes[i] if codes is not None else 1)) for i, s in enumerate(snapped) if s is not None]
    if hits:
        structure = ndimage.generate_binary_structure(3, _STRUCTURES[connectivity])
        labels, n = ndimage.label(above, structure=structure)
        lut = np.zeros(n + 1, np.uint8)
        for s, code in reversed(hits):  # the first point that claims a component names its artery
            lut[labels[s]] = code
        mask = lut[labels]
        if codes is None:
            mask = mask.astype(bool)
    else:
        mask = np.zeros(hu.shape, np.uint8 if codes is not None else bool)
    agatston = category = matches = None
    if spacing is not None:
        from agatax.scoring import compute_scores

        sc = compute_scores(hu, mask, spacing, threshold_hu=threshold_hu)
        agatston, category = sc.agatston, sc.category
        if reference_category is not None:
            matches = category == reference_category
    return GroundTruth(mask, missed, snapped, agatston, category, matches)
