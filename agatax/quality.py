"""Image quality the networks depend on: the noise level, measured from the HU alone, the reconstruction
kernel, read from its DICOM name (:func:`kernel_sharpness`, :func:`check_kernel`: SHARP_KERNEL), and the slice
thickness the Agatston score assumes.

The shipped networks were trained on exams with 10-40 HU of image noise (SD in soft tissue). Beyond that,
noise crosses 130 HU in single pixels and small calcifications drown: on synthetic exams at 40-50 HU the
category accuracy falls from 0.97 to 0.78 (experiments/RESULTS.md). The pipeline measures the noise of every
exam and says so in the warnings when it is above that range, instead of printing a score as if all were well.
Such an exam is also shown to the networks smoothed in-plane (:func:`input_smoothing_mm`), as a smoother
reconstruction whose noise lies inside that range; the score itself is read from the exam as it is. Far
above it (:func:`refuse_noise_hu`: 65 HU for 10-40) no score is given (:func:`check_noise`, TOO_NOISY).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["image_noise_hu", "local_noise_hu", "noise_note", "thickness_note", "input_smoothing_mm", "smoothing_note",
           "refuse_noise_hu", "check_noise", "too_noisy_note", "TRAINED_NOISE_HU", "AGATSTON_THICKNESS_MM",
           "SMOOTH_TARGET_SHARE", "SMOOTH_MAX_MM", "REFUSE_NOISE_SHARE", "kernel_note", "SHARP_KERNEL_WORDS",
           "REFUSE_KERNEL_WORDS", "kernel_sharpness", "check_kernel", "coverage_note", "SHORT_SCAN_MM"]

#: Noise SD (HU) the shipped networks were trained on (agatax/weights/MODEL_CARD.md).
TRAINED_NOISE_HU = (10.0, 40.0)
#: Slice thicknesses (mm) taken as the Agatston reconstruction: 3 mm (2.5 mm on some scanners), and the
#: 3 mm slabs agatax makes of thin slices (a whole number of slices: 2.5-3.5 mm).
AGATSTON_THICKNESS_MM = (2.5, 3.5)
#: a scan shorter than this along z (mm) cannot hold a whole adult heart: calcium-scoring scans cover it from
#: above the coronary ostia to below its lowest part in 100-160 mm (the heart alone: about 90-120 mm high)
SHORT_SCAN_MM = 80.0
#: An exam noisier than the training is smoothed for the networks down to this share of the trained range's top
#: (35 HU for 10-40), in steps of ``_SMOOTH_STEP_MM`` of sigma, at most ``SMOOTH_MAX_MM``.
SMOOTH_TARGET_SHARE = 0.875
SMOOTH_MAX_MM = 1.0
_SMOOTH_STEP_MM = 0.05
#: An exam noisier than this multiple of the top of the trained range (65 HU for 10-40) is refused
#: (:func:`check_noise`): the lower edge of the first noise band where the shipped networks' category accuracy
#: fell below 0.75 (experiments/RESULTS.md, twenty-eighth session).
REFUSE_NOISE_SHARE = 1.625
_TISSUE_HU = (-20.0, 100.0)  # blood, myocardium, muscle, liver without contrast: locally flat areas
_LAG_MM = 1.5  # pixel pairs this far apart (and >= 3 pixels): past the grain of CT noise, inside flat tissue
_MIN_PAIRS = 2000
LOCAL_HALF_MM = 25.0  # local noise: within 25 mm of the object (in-plane), on the slices it spans
LOCAL_MIN_PAIRS = 1000  # relative SE of the robust SD ~4 % (fewer: the exam-wide estimate is used)


def _picks(n: int, slices: int) -> np.ndarray:
    """Up to ``slices`` evenly spaced slice indices of ``n``: where the noise is measured."""
    return np.unique(np.linspace(0, n - 1, min(slices, n)).round().astype(int))


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
    hu = hu if hasattr(hu, "ndim") else np.asarray(hu)  # a device array: only the sampled slices come over
    if hu.ndim != 3:
        return None
    picks = _picks(hu.shape[0], slices)
    planes = (np.asarray(hu[int(k)]) for k in picks)
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


def input_smoothing_mm(hu, spacing, trained_hu: tuple[float, float] = TRAINED_NOISE_HU, *,
                       slices: int = 8) -> tuple[float, float | None, float | None]:
    """How much to smooth an exam for the networks: the sigma (mm) of the in-plane Gaussian
    (``agatax.preprocess``'s ``smooth_mm``) that brings its noise (:func:`image_noise_hu`) down to
    ``SMOOTH_TARGET_SHARE`` of the top of ``trained_hu`` (35 HU for 10-40), or 0 for an exam within the range.

    The noise is measured again on the sample slices smoothed by the same Gaussian as the pre-processing's
    (``agatax.preprocess.gauss_weights``, edges repeated); sigma is the smallest multiple of 0.05 mm that
    gets there, at most ``SMOOTH_MAX_MM`` (1 mm). On synthetic exams of 40-50 HU this shows the networks
    about 35 HU and the categories come out right more often (experiments/RESULTS.md, twenty-fifth session).

    Args:
        hu: (z, y, x) HU (host or device array), in-plane axes (y, x) as the networks see them.
        spacing: (dz, dy, dx) mm.
        trained_hu: (low, high) the noise SD the networks were trained on (``UNetConfig.trained_noise_hu``).
    Returns:
        (sigma mm, the noise before, the noise after) in HU; (0, noise, noise) where the noise is within the
        range or unknown (None: no flat soft tissue).
    """
    from scipy import ndimage

    from agatax.preprocess import gauss_weights

    hu = hu if hasattr(hu, "ndim") else np.asarray(hu)
    if hu.ndim != 3:
        return 0.0, None, None
    planes = [np.asarray(hu[int(k)], np.float32) for k in _picks(hu.shape[0], slices)]
    dx = float(spacing[2])
    noise = _pair_noise(planes, dx, None, _MIN_PAIRS)
    if noise is None or noise <= trained_hu[1]:
        return 0.0, noise, noise
    target = SMOOTH_TARGET_SHARE * trained_hu[1]

    def weights(sigma_px: float) -> np.ndarray:  # the pre-processing's taps less those under 1e-6 of the peak
        w = gauss_weights(sigma_px, xp=np)
        k = int(np.argmax(w > 1e-6 * w.max()))
        return w[k: len(w) - k]

    def after(sigma_mm: float) -> float | None:
        wy, wx = weights(sigma_mm / float(spacing[1])), weights(sigma_mm / dx)
        smooth = (ndimage.convolve1d(ndimage.convolve1d(p, wy, axis=0, mode="nearest"), wx, axis=1, mode="nearest")
                  for p in planes)
        return _pair_noise(smooth, dx, None, _MIN_PAIRS)

    steps = int(round(SMOOTH_MAX_MM / _SMOOTH_STEP_MM))
    lo, hi = 0, steps  # the noise falls as sigma grows: the smallest step reaching the target, by bisection
    reached = {}
    while lo < hi:
        mid = (lo + hi) // 2
        n = after((mid + 1) * _SMOOTH_STEP_MM)
        reached[mid + 1] = n
        if n is None or n <= target:
            hi = mid
        else:
            lo = mid + 1
    k = min(lo + 1, steps)
    sigma = k * _SMOOTH_STEP_MM
    return round(sigma, 4), noise, reached[k] if k in reached else after(sigma)


def smoothing_note(sigma_mm: float, noise_hu: float | None, after_hu: float | None) -> tuple[str, ...]:
    """What the noise adaptation did (:func:`input_smoothing_mm`), for the report's warnings; nothing for 0."""
    if not sigma_mm:
        return ()
    after = "?" if after_hu is None else f"{after_hu:.0f}"
    return (f"noise adaptation: the networks saw this exam smoothed in-plane (Gaussian, sigma {sigma_mm:.2f} mm; "
            f"noise about {noise_hu:.0f} -> {after} HU) to bring it into their training range; the score "
            "is read from the exam as it is. agatax score --no-adapt-noise (adapt_noise=False) shows them the "
            "exam unsmoothed",)


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


def refuse_noise_hu(trained_hu: tuple[float, float] = TRAINED_NOISE_HU) -> float:
    """The noise SD (HU) above which an exam is refused: ``REFUSE_NOISE_SHARE`` x the top of ``trained_hu``."""
    return REFUSE_NOISE_SHARE * float(trained_hu[1])


def check_noise(noise_hu: float | None, trained_hu: tuple[float, float] = TRAINED_NOISE_HU, *,
                slice_mm: float | None = None) -> None:
    """Refuse (``InputError``, code ``TOO_NOISY``) an exam whose measured noise (:func:`image_noise_hu`) is
    above :func:`refuse_noise_hu`: there the networks miss most calcium and no score can be trusted (synthetic
    exams at 65-80 HU: two of three lesions missed, accuracy 0.63; experiments/RESULTS.md, twenty-eighth
    session); nothing for an exam within it or of unknown noise (None). ``slice_mm``: the slice increment;
    under 2 mm the hint names the 3 mm slabs (thin slices are ~sqrt(3 / increment) times noisier)."""
    line = refuse_noise_hu(trained_hu)
    if noise_hu is None or noise_hu <= line:
        return
    from agatax.errors import InputError
    from agatax.slabs import THIN_BELOW_MM

    low, high = trained_hu
    slabs = ("score it on 3 mm slabs (agatax score's default, --thin-slices slab; agatax.thick_slabs), whose "
             "noise is lower, or " if slice_mm is not None and slice_mm < THIN_BELOW_MM else "")
    raise InputError(
        f"image noise about {noise_hu:.1f} HU (SD in soft tissue), above the {line:.0f} HU beyond which the "
        f"networks (trained on {low:g}-{high:g} HU) miss most calcium: such noise comes from a sharp (lung or "
        "bone) kernel or a thin low-dose reconstruction, and a score read from it would be wrong, so none is given",
        code="TOO_NOISY",
        hint=f"{slabs}score the soft-tissue (calcium-scoring) reconstruction of the same acquisition, 3 mm with a "
        "standard kernel; allow_noisy=True (--allow-noisy) scores this one anyway, with a warning")


def too_noisy_note(noise_hu: float | None, trained_hu: tuple[float, float] = TRAINED_NOISE_HU) -> tuple[str, ...]:
    """The warning of an exam scored above :func:`refuse_noise_hu` on request (``allow_noisy``), else nothing."""
    line = refuse_noise_hu(trained_hu)
    if noise_hu is None or noise_hu <= line:
        return ()
    return (f"too noisy: image noise about {noise_hu:.1f} HU, above the {line:.0f} HU where agatax refuses an exam "
            "(TOO_NOISY), scored on request (allow_noisy): at this noise the networks miss most calcium and the "
            "score may be far too low",)


#: Words in a DICOM ConvolutionKernel (any vendor's) that name a kernel sharper than calcium scoring's: GE's
#: LUNG, BONE, BONEPLUS, EDGE and DETAIL, and SHARP; STANDARD, SOFT and the like name none. GE's CHEST is not
#: listed (its place among GE's kernels was not checked).
SHARP_KERNEL_WORDS = ("LUNG", "BONE", "BONEPLUS", "EDGE", "DETAIL", "SHARP")
#: Of those, the bone and lung kernels, whose exams are refused (SHARP_KERNEL) unless allowed; DETAIL, a
#: medium-sharp kernel, is warned.
REFUSE_KERNEL_WORDS = ("LUNG", "BONE", "BONEPLUS", "EDGE", "SHARP")
#: Siemens' kernels carry their sharpness in two digits (B35f, Qr36: calcium scoring; B30-B40 the standard body
#: kernels; B50-B80 and the bone / lung kernels sharper): warned from 45, refused from 60 (B60f-B80f, Br64, I70f).
SIEMENS_WARN_FROM, SIEMENS_REFUSE_FROM = 45, 60
#: Makers whose headers are not read as Siemens' (a manufacturer naming none of these, e.g. "ANONYMIZED", may be)
_OTHER_MAKERS = (r"(?<![A-Z])(GE|GEMS|PHILIPS|TOSHIBA|CANON|HITACHI|FUJIFILM|UNITED|UIH|NEUSOFT|SHIMADZU|MINFOUND|"
                 r"SINOVISION|ANALOGIC|PLANMED|KONINKLIJKE)(?![A-Z])")


def kernel_sharpness(kernel: str | None, manufacturer: str | None = None) -> int:
    """How sharp the DICOM ConvolutionKernel says it is: 0 (calcium scoring's or not read), 1 (sharper: warned),
    2 (a bone or lung kernel: refused by :func:`check_kernel`).

    Only names that say so are read: a word of ``SHARP_KERNEL_WORDS`` (any vendor; ``REFUSE_KERNEL_WORDS``
    refused), or a Siemens kernel's two digits (``SIEMENS_WARN_FROM``, ``SIEMENS_REFUSE_FROM``): on a Siemens
    header in any case (B70f, BR64D), and where ``manufacturer`` names no other maker (empty, or an
    anonymiser's word) only in Siemens' own form (one capital, at most one small letter, two digits: B70f,
    Br64d, I70f; Canon's FC52 has not). Other vendors' codes (Philips letters, Canon FC numbers) are not
    interpreted."""
    import re

    if not kernel:
        return 0
    tokens = [t for t in re.split(r"[^A-Za-z0-9]+", str(kernel)) if t]
    words = {t.upper() for t in tokens}
    level = 2 if words & set(REFUSE_KERNEL_WORDS) else 1 if words & set(SHARP_KERNEL_WORDS) else 0
    maker = str(manufacturer or "").strip().upper()
    siemens = "SIEMENS" in maker
    if siemens or not re.search(_OTHER_MAKERS, maker):
        form = r"[A-Z]{1,2}(\d{2})[A-Z]?" if siemens else r"[A-Z][a-z]?(\d{2})[a-z]?"
        for t in (t.upper() for t in tokens) if siemens else tokens:
            m = re.fullmatch(form, t)
            if m:
                index = int(m.group(1))
                level = max(level, 2 if index >= SIEMENS_REFUSE_FROM else 1 if index >= SIEMENS_WARN_FROM else 0)
    return level


_SHARP_EFFECT = ("edges overshoot, so the same calcium scores higher and the networks mark edges; the score reads "
                 "high")
_SCORING_RECON = "the calcium-scoring reconstruction (3 mm, standard soft-tissue kernel: Siemens B35f / Qr36, GE STANDARD)"


def check_kernel(kernel: str | None, manufacturer: str | None = None) -> None:
    """Refuse (``InputError``, code ``SHARP_KERNEL``) an exam whose DICOM kernel is a bone or lung kernel
    (:func:`kernel_sharpness` 2): the true calcium's own Agatston rises and the networks mark edges (synthetic
    exams sharpened in-plane by an unsharp mask of gain 1: accuracy 0.62 against 0.94, the true mask's
    Agatston x1.31; experiments/RESULTS.md, twenty-eighth session); nothing otherwise."""
    if kernel_sharpness(kernel, manufacturer) < 2:
        return
    from agatax.errors import InputError

    raise InputError(
        f"reconstructed with {kernel}, a sharp (bone or lung) kernel: {_SHARP_EFFECT} (synthetic exams sharpened "
        "in-plane read 0.62 accuracy against 0.94), so no score is given", code="SHARP_KERNEL",
        hint=f"score {_SCORING_RECON} of the same acquisition; allow_sharp_kernel=True (--allow-sharp-kernel) "
        "scores this one anyway, with a warning")


def kernel_note(kernel: str | None, manufacturer: str | None = None, *, past_refusal: bool = True) -> tuple[str, ...]:
    """The warning of an exam whose DICOM ConvolutionKernel is sharper than calcium scoring's
    (:func:`kernel_sharpness` 1, or 2: then, with ``past_refusal``, it says the exam was scored past
    :func:`check_kernel` on request; a given mask is not refused), else nothing. Sharp
    kernels make the score read high (experiments/RESULTS.md, twenty-eighth session: synthetic exams sharpened
    in-plane read 0.84-0.62 accuracy against 0.94, all but one error upward). ``run_pipeline`` adds it for a
    ``Volume`` that names its kernel; ``agatax score --mask`` too."""
    level = kernel_sharpness(kernel, manufacturer)
    if level == 0:
        return ()
    if level == 2 and past_refusal:
        return (f"sharp kernel, scored on request: reconstructed with {kernel}, a sharp (bone or lung) kernel that "
                f"agatax refuses (SHARP_KERNEL): {_SHARP_EFFECT}. Score {_SCORING_RECON}",)
    return (f"sharp kernel: reconstructed with {kernel}, sharper than the calcium-scoring standard: {_SHARP_EFFECT}. "
            f"Score {_SCORING_RECON}",)


def coverage_note(n_slices: int, increment_mm: float, short_mm: float = SHORT_SCAN_MM) -> tuple[str, ...]:
    """A warning when the scan covers less than ``short_mm`` along z (``n_slices`` x ``increment_mm``), else
    nothing: part of the heart, and its calcium, then lies outside the scan (a series missing files, a
    partial reconstruction, a volume cropped too tight)."""
    covered = float(n_slices) * float(increment_mm)
    if covered >= short_mm:
        return ()
    return (f"short scan: the series covers {covered:.0f} mm along z ({n_slices} slices of {float(increment_mm):g} mm), "
            f"under {short_mm:.0f} mm and so less than an adult heart's height (about 90-120 mm; calcium-scoring scans "
            "cover it in 100-160 mm): part of the heart and its calcium may lie outside the scan, so the score may be "
            "too low; check that the series is complete",)


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
