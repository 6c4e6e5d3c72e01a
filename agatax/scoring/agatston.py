"""Agatston, volume and mass calcium scores, the per-lesion table and the risk category.

A lesion is a 2D connected component, within one axial slice, of the voxels that are in the mask and have
HU >= ``threshold_hu`` (130 HU). Components smaller than ``min_pixels`` pixels (3, as in Gogin et al. 2021)
are dropped; when ``min_area_mm2`` is given (1.0 mm^2 is the clinical convention) the area rule replaces the
pixel rule. With spacing (dz, dy, dx) in mm, dz the slice increment (distance between slice centres):

    area_mm2   = pixels * dy * dx
    weight     = density_weight(peak HU of the component)       130-199: 1, 200-299: 2, 300-399: 3, >= 400: 4
    agatston   = sum over lesions of area_mm2 * weight * dz / 3
    volume_mm3 = sum over lesions of pixels * dz * dy * dx
    mass_mg    = calibration * sum over lesion voxels of HU * dz * dy * dx    (calibration in mg / (HU * mm^3))

A mask may be boolean or integer (nonzero = calcium); integer values 1..4 name the artery (1 LM, 2 LAD,
3 LCX, 4 RCA) and a lesion belongs to the artery most of its voxels carry (ties go to the lower label).

The host functions (NumPy/scipy, float64) validate their input and raise ``InputError``; ``scores_jax`` is
the jittable twin for on-device pipelines.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from agatax.errors import InputError
from agatax.scoring.components import (
    SLICE_CONNECTIVITIES,
    _check_connectivity,
    _is_jax,
    _label_jax,
    label_host,
)

__all__ = [
    "ARTERIES",
    "CATEGORIES",
    "Lesion",
    "Scores",
    "agatston_score",
    "compute_scores",
    "density_weight",
    "mass_score",
    "risk_category",
    "scores_jax",
    "volume_score",
]

ARTERIES = ("LM", "LAD", "LCX", "RCA")  # mask values 1, 2, 3, 4
CATEGORIES = ("A", "B", "C", "D", "E")  # 0, (0, 10], (10, 100], (100, 400], > 400
CATEGORY_UPPER_BOUNDS = (0.0, 10.0, 100.0, 400.0)
WEIGHT_THRESHOLDS_HU = (130.0, 200.0, 300.0, 400.0)


# ------------------------------------------------------------------------------------ result types
@dataclass(frozen=True)
class Lesion:
    """One scored lesion: a 2D component in axial slice ``slice``.

    ``label`` is the component's number in ``label_slices`` of the lesion candidates; areas in mm^2,
    volumes in mm^3, HU values in HU, mass in mg (None without calibration), ``agatston`` its contribution,
    ``centroid_zyx`` the mean voxel coordinates (z, y, x).
    """

    slice: int
    label: int
    pixels: int
    area_mm2: float
    peak_hu: float
    mean_hu: float
    weight: int
    agatston: float
    volume_mm3: float
    mass_mg: float | None
    artery: str | None
    centroid_zyx: tuple[float, float, float]

    def to_dict(self) -> dict:
        """JSON-safe dict (plain ints, floats, strings, lists)."""
        d = asdict(self)
        d["centroid_zyx"] = list(self.centroid_zyx)
        return d


@dataclass(frozen=True)
class Scores:
    """Scores of one exam.

    ``agatston`` (unitless), ``volume_mm3`` (mm^3), ``mass_mg`` (mg, None without calibration),
    ``category`` ("A".."E"), ``lesions`` (retained lesions in label order), ``per_artery``: for an
    artery-labelled mask, {"LM"|"LAD"|"LCX"|"RCA": {"agatston", "volume_mm3", "mass_mg", "lesions"
    (count)}}, otherwise empty.
    """

    agatston: float
    volume_mm3: float
    mass_mg: float | None
    category: str
    lesions: tuple[Lesion, ...] = ()
    per_artery: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-safe dict."""
        return {
            "agatston": self.agatston,
            "volume_mm3": self.volume_mm3,
            "mass_mg": self.mass_mg,
            "category": self.category,
            "lesions": [lesion.to_dict() for lesion in self.lesions],
            "per_artery": {k: dict(v) for k, v in self.per_artery.items()},
        }


# ------------------------------------------------------------------------------- small pure helpers
def density_weight(peak_hu):
    """Agatston density weight of a lesion from its peak HU.

    0 below 130 HU, 1 for [130, 200), 2 for [200, 300), 3 for [300, 400), 4 from 400 HU (so 199.999 -> 1,
    200 -> 2). Scalar in, int out; NumPy array in, int array out; JAX array in, int32 JAX array out.
    """
    if _is_jax(peak_hu):
        p = jnp.asarray(peak_hu)
        return sum((p >= t).astype(jnp.int32) for t in WEIGHT_THRESHOLDS_HU)
    p = np.asarray(peak_hu, dtype=np.float64)
    if np.isnan(p).any():
        raise InputError("peak HU is NaN", code="NON_FINITE", hint="pass finite HU values")
    w = sum((p >= t).astype(np.int64) for t in WEIGHT_THRESHOLDS_HU)
    return int(w) if p.ndim == 0 else w


def risk_category(score) -> str:
    """Risk category of an Agatston score: "A" = 0, "B" (0, 10], "C" (10, 100], "D" (100, 400], "E" > 400."""
    try:
        s = float(score)
    except (TypeError, ValueError):
        raise InputError(f"score {score!r} is not a number", code="BAD_SCORE", hint="pass a float >= 0") from None
    if math.isnan(s) or s < 0:
        raise InputError(f"score {score!r} is not a valid Agatston score", code="BAD_SCORE", hint="pass a float >= 0")
    for letter, upper in zip(CATEGORIES, CATEGORY_UPPER_BOUNDS):
        if s <= upper:
            return letter
    return CATEGORIES[-1]


# --------------------------------------------------------------------------------------- validation
def _check_spacing(spacing) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in np.asarray(spacing, dtype=np.float64).reshape(-1))
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise InputError(
            f"spacing must be three positive finite numbers (dz, dy, dx) in mm; got {spacing!r}",
            code="BAD_SPACING",
            hint="take it from Volume.spacing; dz is the slice increment",
        )
    return values


def _check_options(min_pixels, min_area_mm2, threshold_hu, calibration) -> None:
    if isinstance(min_pixels, bool) or not isinstance(min_pixels, (int, np.integer)) or min_pixels < 1:
        raise InputError(f"min_pixels must be an integer >= 1; got {min_pixels!r}", code="BAD_MIN_SIZE")
    if min_area_mm2 is not None and not (math.isfinite(float(min_area_mm2)) and float(min_area_mm2) >= 0):
        raise InputError(
            f"min_area_mm2 must be None or a finite number >= 0; got {min_area_mm2!r}", code="BAD_MIN_SIZE"
        )
    if not math.isfinite(float(threshold_hu)):
        raise InputError(f"threshold_hu must be finite; got {threshold_hu!r}", code="BAD_THRESHOLD")
    if calibration is not None and not (math.isfinite(float(calibration)) and float(calibration) >= 0):
        raise InputError(
            f"calibration must be a finite factor >= 0 in mg / (HU * mm^3); got {calibration!r}",
            code="BAD_CALIBRATION",
            hint="measure it on a calibration phantom, or pass calibration=None to skip the mass score",
        )


def _check_arrays(hu, mask) -> tuple[np.ndarray, np.ndarray]:
    hu = np.asarray(hu)
    mask = np.asarray(mask)
    for name, a in (("hu", hu), ("mask", mask)):
        if a.ndim != 3:
            raise InputError(
                f"{name} must have rank 3 (z, y, x); got shape {a.shape} (rank {a.ndim})",
                code="BAD_RANK",
                hint="score one volume at a time",
            )
    if hu.shape != mask.shape:
        raise InputError(
            f"hu has shape {hu.shape} but mask has shape {mask.shape}",
            code="SHAPE_MISMATCH",
            hint="resample the mask onto the HU grid (read_mask(path, like=volume))",
        )
    if not (np.issubdtype(hu.dtype, np.floating) or np.issubdtype(hu.dtype, np.integer)):
        raise InputError(f"hu must be a real numeric array; got dtype {hu.dtype}", code="BAD_DTYPE")
    if np.issubdtype(hu.dtype, np.floating) and not np.isfinite(hu).all():
        bad = int(np.size(hu) - np.count_nonzero(np.isfinite(hu)))
        raise InputError(
            f"hu holds {bad} NaN or infinite values",
            code="NON_FINITE",
            hint="replace them (e.g. np.nan_to_num(hu, nan=-1024)) before scoring",
        )
    if mask.dtype != bool:
        if np.issubdtype(mask.dtype, np.floating):
            if not (np.isfinite(mask).all() and np.array_equal(mask, np.round(mask))):
                raise InputError(
                    "a floating-point mask must hold whole numbers (0 = background, 1..4 = arteries)",
                    code="BAD_MASK",
                    hint="threshold probabilities first (mask = prob >= 0.5)",
                )
        elif not np.issubdtype(mask.dtype, np.integer):
            raise InputError(f"mask must be boolean or integer; got dtype {mask.dtype}", code="BAD_MASK")
        if mask.size and mask.min() < 0:
            raise InputError("mask holds negative values", code="BAD_MASK", hint="0 = background, 1..4 = arteries")
    return hu, mask


def _has_artery_labels(mask: np.ndarray, arteries: bool | None) -> bool:
    if arteries is False:
        return False
    if mask.dtype == bool:
        if arteries:
            raise InputError("arteries=True needs an integer mask with values 1..4", code="BAD_MASK")
        return False
    top = int(mask.max()) if mask.size else 0
    if arteries is None:
        return 2 <= top <= len(ARTERIES)
    if top > len(ARTERIES):
        raise InputError(
            f"arteries=True but the mask holds value {top}; artery labels are 1..4 (LM, LAD, LCX, RCA)",
            code="BAD_MASK",
        )
    return True


# ----------------------------------------------------------------------------------- host scoring
@dataclass(frozen=True)
class _Table:
    """Per-component arrays (retained lesions only), float64."""

    slice: np.ndarray
    label: np.ndarray
    pixels: np.ndarray
    area_mm2: np.ndarray
    peak_hu: np.ndarray
    hu_sum: np.ndarray
    weight: np.ndarray
    agatston: np.ndarray
    volume_mm3: np.ndarray
    artery: np.ndarray | None  # 1..4
    centroid: np.ndarray  # (n, 3)


def _lesion_table(hu, mask, spacing, *, min_pixels, min_area_mm2, connectivity, threshold_hu, arteries=False):
    _check_connectivity(connectivity, SLICE_CONNECTIVITIES, "per-slice (2D) lesion")
    _check_options(min_pixels, min_area_mm2, threshold_hu, None)
    hu, mask = _check_arrays(hu, mask)
    dz, dy, dx = _check_spacing(spacing)
    labelled = _has_artery_labels(mask, arteries)
    candidates = (mask != 0) & (hu >= threshold_hu)
    labels, n = label_host(candidates, connectivity, slices=True)
    flat = np.flatnonzero(labels)
    lab = labels.reshape(-1)[flat].astype(np.intp)
    values = hu.reshape(-1)[flat].astype(np.float64)
    pixels = np.bincount(lab, minlength=n + 1)[1:]
    hu_sum = np.bincount(lab, weights=values, minlength=n + 1)[1:]
    peak = np.zeros(0, np.float64)
    if n:
        peak = np.asarray(ndimage.maximum(values, lab, np.arange(1, n + 1)), dtype=np.float64).reshape(-1)
    _, ny, nx = labels.shape
    z, rest = np.divmod(flat, ny * nx)
    y, x = np.divmod(rest, nx)
    centroid = np.stack([np.bincount(lab, weights=c, minlength=n + 1)[1:] for c in (z, y, x)], axis=1)
    centroid = centroid / np.maximum(pixels, 1)[:, None]
    slice_index = np.zeros(n, dtype=np.int64)
    slice_index[lab - 1] = z
    artery = None
    if labelled:
        codes = np.minimum(mask.reshape(-1)[flat].astype(np.intp), len(ARTERIES))
        votes = np.bincount((lab - 1) * (len(ARTERIES) + 1) + codes, minlength=n * (len(ARTERIES) + 1))
        artery = np.argmax(votes.reshape(n, len(ARTERIES) + 1)[:, 1:], axis=1) + 1
    area = pixels * (dy * dx)
    keep = pixels >= min_pixels if min_area_mm2 is None else area >= float(min_area_mm2)
    weight = density_weight(peak)
    table = _Table(
        slice=slice_index[keep],
        label=np.arange(1, n + 1)[keep],
        pixels=pixels[keep],
        area_mm2=area[keep],
        peak_hu=peak[keep],
        hu_sum=hu_sum[keep],
        weight=weight[keep],
        agatston=(area * weight * (dz / 3.0))[keep],
        volume_mm3=pixels[keep] * (dz * dy * dx),
        artery=None if artery is None else artery[keep],
        centroid=centroid[keep],
    )
    return table, (dz, dy, dx)


_DOC_CONVENTIONS = """
    Args:
        hu: (z, y, x) HU array.
        mask: (z, y, x) bool or integer array, nonzero = calcium (1..4 = LM, LAD, LCX, RCA).
        spacing: (dz, dy, dx) in mm, dz = slice increment.
        min_pixels: smallest lesion in pixels (ignored when ``min_area_mm2`` is given).
        min_area_mm2: smallest lesion area in mm^2, or None for the pixel rule.
        connectivity: 8 or 4, in-slice connectivity of a lesion.
        threshold_hu: lowest HU of a lesion voxel (130).
"""


def agatston_score(hu, mask, spacing, *, min_pixels=3, min_area_mm2=None, connectivity=8, threshold_hu=130.0):
    """Agatston score: sum over 2D lesions of area_mm2 * density_weight(peak HU) * dz / 3 (float)."""
    table, _ = _lesion_table(
        hu, mask, spacing, min_pixels=min_pixels, min_area_mm2=min_area_mm2,
        connectivity=connectivity, threshold_hu=threshold_hu,
    )
    return float(table.agatston.sum())


def volume_score(hu, mask, spacing, *, min_pixels=3, min_area_mm2=None, connectivity=8, threshold_hu=130.0):
    """Calcium volume in mm^3: retained lesion voxels x dz * dy * dx (float)."""
    table, _ = _lesion_table(
        hu, mask, spacing, min_pixels=min_pixels, min_area_mm2=min_area_mm2,
        connectivity=connectivity, threshold_hu=threshold_hu,
    )
    return float(table.volume_mm3.sum())


def mass_score(
    hu, mask, spacing, *, calibration, min_pixels=3, min_area_mm2=None, connectivity=8, threshold_hu=130.0
):
    """Calcium mass in mg: calibration (mg / (HU * mm^3)) x sum over retained lesion voxels of HU x voxel mm^3."""
    if calibration is None:
        raise InputError("mass_score needs a calibration factor", code="BAD_CALIBRATION",
                         hint="pass calibration= in mg / (HU * mm^3), measured on a calibration phantom")
    _check_options(min_pixels, min_area_mm2, threshold_hu, calibration)
    table, (dz, dy, dx) = _lesion_table(
        hu, mask, spacing, min_pixels=min_pixels, min_area_mm2=min_area_mm2,
        connectivity=connectivity, threshold_hu=threshold_hu,
    )
    return float(calibration) * float(table.hu_sum.sum()) * (dz * dy * dx)




def compute_scores(
    hu,
    mask,
    spacing,
    *,
    calibration=None,
    min_pixels=3,
    min_area_mm2=None,
    connectivity=8,
    threshold_hu=130.0,
    arteries: bool | None = None,
) -> Scores:
    """All scores of one exam, the lesion table and per-artery totals (host, float64).

    ``calibration`` (mg / (HU * mm^3)) enables the mass score. ``arteries``: None = the mask carries artery
    labels when it is an integer mask with values in 0..4 and some value >= 2; True = it does (values
    must be 0..4); False = ignore labels.
    """
    _check_options(min_pixels, min_area_mm2, threshold_hu, calibration)
    table, (dz, dy, dx) = _lesion_table(
        hu, mask, spacing, min_pixels=min_pixels, min_area_mm2=min_area_mm2,
        connectivity=connectivity, threshold_hu=threshold_hu, arteries=arteries,
    )
    voxel = dz * dy * dx
    cal = None if calibration is None else float(calibration)
    mass = None if cal is None else cal * table.hu_sum * voxel
    lesions = tuple(
        Lesion(
            slice=int(table.slice[i]),
            label=int(table.label[i]),
            pixels=int(table.pixels[i]),
            area_mm2=float(table.area_mm2[i]),
            peak_hu=float(table.peak_hu[i]),
            mean_hu=float(table.hu_sum[i] / table.pixels[i]),
            weight=int(table.weight[i]),
            agatston=float(table.agatston[i]),
            volume_mm3=float(table.volume_mm3[i]),
            mass_mg=None if mass is None else float(mass[i]),
            artery=None if table.artery is None else ARTERIES[int(table.artery[i]) - 1],
            centroid_zyx=tuple(float(c) for c in table.centroid[i]),
        )
        for i in range(table.label.size)
    )
    per_artery = {}
    if table.artery is not None:
        for code, name in enumerate(ARTERIES, start=1):
            sel = table.artery == code
            per_artery[name] = {
                "agatston": float(table.agatston[sel].sum()),
                "volume_mm3": float(table.volume_mm3[sel].sum()),
                "mass_mg": None if mass is None else float(mass[sel].sum()),
                "lesions": int(sel.sum()),
            }
    agatston = float(table.agatston.sum())
    return Scores(
        agatston=agatston,
        volume_mm3=float(table.volume_mm3.sum()),
        mass_mg=None if mass is None else float(mass.sum()),
        category=risk_category(agatston),
        lesions=lesions,
        per_artery=per_artery,
    )


for _f in (agatston_score, volume_score, mass_score, compute_scores):
    if _f.__doc__:
        _f.__doc__ += _DOC_CONVENTIONS


# ------------------------------------------------------------------------------------ JAX scoring
def scores_jax(hu, mask, spacing, *, min_pixels=3, min_area_mm2=None, connectivity=8, threshold_hu=130.0):
    """Agatston score, volume (mm^3) and retained lesion count, computed fully in JAX (jittable).

    Same conventions as ``compute_scores``; hu and mask (z, y, x) (shapes static), spacing (dz, dy, dx) mm,
    ``min_pixels``, ``min_area_mm2`` and ``threshold_hu`` may be traced; ``connectivity`` is static.
    Values are not checked for finiteness under jit (a NaN voxel never passes the HU threshold).

    Returns:
        {"agatston": float32, "volume_mm3": float32, "lesions": float32} scalars.
    """
    conn = _check_connectivity(connectivity, SLICE_CONNECTIVITIES, "per-slice (2D) lesion")
    hu_shape, mask_shape = tuple(jnp.shape(hu)), tuple(jnp.shape(mask))
    if len(hu_shape) != 3 or len(mask_shape) != 3:
        raise InputError(
            f"hu and mask must have rank 3 (z, y, x); got shapes {hu_shape} and {mask_shape}", code="BAD_RANK"
        )
    if hu_shape != mask_shape:
        raise InputError(f"hu has shape {hu_shape} but mask has shape {mask_shape}", code="SHAPE_MISMATCH")
    if not _is_jax(spacing):
        _check_spacing(spacing)
    return _scores_jax(hu, mask, spacing, min_pixels, min_area_mm2, threshold_hu, conn)


@partial(jax.jit, static_argnums=(6,))
def _scores_jax(hu, mask, spacing, min_pixels, min_area_mm2, threshold_hu, connectivity):
    hu = jnp.asarray(hu, jnp.float32)
    spacing = jnp.asarray(spacing, jnp.float32).reshape(3)
    dz, dy, dx = spacing[0], spacing[1], spacing[2]
    candidates = (jnp.asarray(mask) != 0) & (hu >= threshold_hu)
    labels, _ = _label_jax(candidates, connectivity, True)
    seg = labels.reshape(-1)
    n_seg = seg.size + 1  # static cap: labels are 0..number of voxels
    pixels = jax.ops.segment_sum(jnp.ones_like(seg, dtype=jnp.float32), seg, n_seg)[1:]
    peak = jax.ops.segment_max(hu.reshape(-1), seg, n_seg)[1:]
    area = pixels * (dy * dx)
    present = pixels > 0
    if min_area_mm2 is None:
        keep = present & (pixels >= min_pixels)
    else:
        keep = present & (area >= min_area_mm2)
    weight = density_weight(jnp.where(keep, peak, 0.0)).astype(jnp.float32)
    agatston = jnp.sum(jnp.where(keep, area * weight, 0.0)) * dz / 3.0
    volume = jnp.sum(jnp.where(keep, pixels, 0.0)) * (dz * dy * dx)
    return {"agatston": agatston, "volume_mm3": volume, "lesions": jnp.sum(keep).astype(jnp.float32)}
