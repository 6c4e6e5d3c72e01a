"""Image quality the networks depend on, measured from the HU alone (the noise level), and the slice
thickness the Agatston score assumes.

The shipped networks were trained on exams with 10-40 HU of image noise (SD in soft tissue). Beyond that,
noise crosses 130 HU in single pixels and small calcifications drown: on synthetic exams at 40-50 HU the
category accuracy falls from 0.97 to 0.78 (experiments/RESULTS.md). The pipeline measures the noise of every
exam and says so in the warnings when it is above that range, instead of printing a score as if all were well.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["image_noise_hu", "local_noise_hu", "noise_note", "thickness_note", "TRAINED_NOISE_HU", "AGATSTON_THICKNESS_MM"]

#: Noise SD (HU) the shipped networks were trained on (agatax/weights/MODEL_CARD.md).
TRAINED_NOISE_HU = (10.0, 40.0)
#: Slice thicknesses (mm) taken as the Agatston reconstruction: 3 mm (2.5 mm on some scanners), and the
#: 3 mm slabs agatax makes of thin slices (a whole number of slices: 2.5-3.5 mm).
AGATSTON_THICKNESS_MM = (2.5, 3.5)
_TISSUE_HU = (-20.0, 100.0)  # blood, myocardium, muscle, liver without contrast: locally flat areas
_LAG_MM = 1.5  # pixel pairs this far apart (and >= 3 pixels): past the grain of CT noise, inside flat tissue
_MIN_PAIRS = 2000
LOCAL_HALF_MM = 25.0  # local noise: within 25 mm of the object (in-plane), on the slices it spans
LOCAL_MIN_PAIRS = 1000  # relative SE of the robust SD ~4 % (fewer: the exam-wide estimate is used)


def image_noise_hu(hu, spacing, region=None, *, slices: int = 8) -> float | None:
    """Noise SD (HU) of an exam: the spread of differences between pixels ~1.5 mm (at least 3 pixels) apart
    in flat soft tissue.

    Pairs are taken along x on up to ``slices`` evenly spaced slices, where the 5 x 5 local mean at both
    pixels lies in soft tissue (-20..100 HU; chosen on the local mean, not the noisy values, so that the
    window does not truncate the noise), inside ``region`` (bool (z, y, x), e.g. the chest region) when
    given. SD = 1.4826 x MAD(differences) / sqrt(2) (robust to the few pairs that straddle an edge).

    Args:
        hu: (z, y, x) HU.
        spacing: (dz, dy, dx) mm.
        region: optional bool (z, y, x) where to look.
    Returns:
        the noise SD in HU, or None where fewer than 2000 pairs of flat tissue exist (a phantom of plastic
        without soft tissue, a tiny crop).
    """
    hu = np.asarray(hu)
    if hu.ndim != 3:
        return None
    picks = np.unique(np.linspace(0, hu.shape[0] - 1, min(slices, hu.shape[0])).round().astype(int))
    planes = (hu[k] for k in picks)
    regions = None if region is None else (np.asarray(region[k], bool) for k in picks)
    return _pair_noise(planes, float(spacing[2]), regions, _MIN_PAIRS)


def local_noise_hu(hu, spacing, box, *, half_mm: float = LOCAL_HALF_MM, min_pairs: int = LOCAL_MIN_PAIRS
                   ) -> float | None:
    """Noise SD (HU) near one place of an exam: :func:`image_noise_hu`'s estimate on every slice of ``box``
    (a (z, y, x) tuple of slices, e.g. an object's bounding box), in-plane within ``half_mm`` of it.

    CT noise is not the same everywhere in a slice: it depends on the attenuation along the rays through
    each point and on the scanner's bowtie filter (the real phantom in ../shared: about 20 HU at its
    centre, 26 HU along its edge). Returns None where fewer than ``min_pairs`` pairs of flat soft tissue lie
    there (then use the exam's :func:`image_noise_hu`).
    """
    hu = np.asarray(hu)
    if hu.ndim != 3:
        return None
    pads = [int(math.ceil(half_mm / float(s))) for s in spacing[1:]]
    ys, xs = box[1], box[2]
    y0, y1 = max(ys.start - pads[0], 0), min(ys.stop + pads[0], hu.shape[1])
    x0, x1 = max(xs.start - pads[1], 0), min(xs.stop + pads[1], hu.shape[2])
    planes = (hu[k, y0:y1, x0:x1] for k in range(box[0].start, box[0].stop))
    return _pair_noise(planes, float(spacing[2]), None, min_pairs)


def _pair_noise(planes, dx: float, regions, min_pairs: int) -> float | None:
    """1.4826 x MAD / sqrt(2) of the differences between flat soft-tissue pixels ~1.5 mm apart along x on
    the (y, x) ``planes`` (``regions``: bool (y, x) per plane, or None); None under ``min_pairs`` pairs."""
    from scipy import ndimage

    lag = max(3, int(math.ceil(_LAG_MM / dx - 1e-6)))  # at least 3 pixels: past the grain on coarse pixels too
    regions = iter(regions) if regions is not None else None
    diffs = []
    for plane in planes:
        where = None if regions is None else next(regions)
        plane = np.asarray(plane, np.float32)
        if plane.ndim != 2 or plane.shape[1] <= lag:
            continue
        local = ndimage.uniform_filter(plane, size=5, mode="nearest")
        flat = (local >= _TISSUE_HU[0]) & (local <= _TISSUE_HU[1])
        if where is not None:
            flat &= where
        both = flat[:, :-lag] & flat[:, lag:]
        if both.any():
            diffs.append((plane[:, :-lag] - plane[:, lag:])[both])
    if not diffs:
        return None
    d = np.concatenate(diffs).astype(np.float64)
    if d.size < min_pairs:
        return None
    mad = np.median(np.abs(d - np.median(d)))
    return float(1.4826 * mad / math.sqrt(2.0))


def noise_note(noise_hu: float | None, trained_hu: tuple[float, float] = TRAINED_NOISE_HU) -> tuple[str, ...]:
    """A warning when the measured noise is above ``trained_hu`` (low, high), the noise SD the networks were
    trained on (``UNetConfig.trained_noise_hu``), else nothing."""
    low, high = trained_hu
    if noise_hu is None or noise_hu <= high:
        return ()
    return (f"image noise: about {noise_hu:.0f} HU (SD in soft tissue), above the {low:g}-"
            f"{high:g} HU the networks were trained on: small calcifications may be missed and "
            "noise above 130 HU may be scored. Check the mask, or score a smoother (thicker or iterative) "
            "reconstruction of the same acquisition",)


def thickness_note(thickness_mm: float | None, increment_mm: float | None = None) -> tuple[str, ...]:
    """A warning when the reconstructed slice thickness (mm) is outside the 2.5-3.5 mm taken as the Agatston
    reconstruction (``AGATSTON_THICKNESS_MM``), else nothing. An unknown thickness (NIfTI, bare arrays) is
    taken as the slice increment ``increment_mm``; nothing when both are unknown."""
    if thickness_mm is None:
        thickness_mm = increment_mm
    if thickness_mm is None:
        return ()
    t = float(thickness_mm)
    lo, hi = AGATSTON_THICKNESS_MM
    if lo - 0.05 <= t <= hi + 0.05:
        return ()
    if t > hi:
        effect = ("on thicker slices small calcifications are averaged below 130 HU and the score reads low "
                  "(typical of non-gated chest CT)")
    else:
        effect = "on thinner slices more small calcifications reach 130 HU and the score reads high"
    return (f"slices of {t:g} mm: the Agatston score and its categories are defined on 3 mm slices; "
            f"{effect}. Compare it only with scores of the same reconstruction, or score a 3 mm "
            "reconstruction of the same acquisition",)
