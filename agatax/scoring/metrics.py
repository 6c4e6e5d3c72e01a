"""Evaluation metrics: risk-category agreement (accuracy, confusion matrix, C-index, weighted kappa) and
orCaScore-style lesion detection.

Categories are given as letters "A".."E" or integers 0..4 (A = 0 ... E = 4), one per exam, as 1D
sequences of equal length. Ratios whose denominator is zero (no comparable pairs, no lesions) are NaN.
"""

from __future__ import annotations

import numpy as np

from agatax.errors import InputError
from agatax.scoring.agatston import CATEGORIES, _check_arrays, _check_spacing
from agatax.scoring.components import label_host

__all__ = ["c_index", "category_accuracy", "confusion_matrix", "weighted_kappa", "lesion_detection"]

_N = len(CATEGORIES)


def _categories(values, name: str) -> np.ndarray:
    """Letters "A".."E" or ints 0..4 -> int64 array (n,)."""
    if isinstance(values, (str, bytes)) or np.ndim(values) != 1:
        raise InputError(
            f"{name} must be a 1D sequence of categories, one per exam; got {values!r:.80}",
            code="BAD_CATEGORY",
            hint='e.g. ["A", "C", "E"] or [0, 2, 4]',
        )
    items = values if isinstance(values, (list, tuple)) else np.asarray(values).tolist()
    out = np.empty(len(items), dtype=np.int64)
    for i, v in enumerate(items):
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, str) and v.upper() in CATEGORIES:
            out[i] = CATEGORIES.index(v.upper())
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer() and 0 <= v < _N:
            out[i] = int(v)
        else:
            raise InputError(
                f"{name}[{i}] = {v!r} is not a risk category",
                code="BAD_CATEGORY",
                hint='use the letters "A".."E" or the integers 0..4',
            )
    return out


def _pair(predicted, reference) -> tuple[np.ndarray, np.ndarray]:
    pred = _categories(predicted, "predicted")
    ref = _categories(reference, "reference")
    if pred.shape != ref.shape:
        raise InputError(
            f"predicted has {pred.size} exams but reference has {ref.size}",
            code="SHAPE_MISMATCH",
            hint="give one category per exam, in the same order",
        )
    if pred.size == 0:
        raise InputError("no exams given", code="EMPTY", hint="pass at least one category per list")
    return pred, ref


def confusion_matrix(predicted, reference) -> np.ndarray:
    """5x5 int64 counts: rows = reference category A..E, columns = predicted category A..E."""
    pred, ref = _pair(predicted, reference)
    return np.bincount(ref * _N + pred, minlength=_N * _N).reshape(_N, _N)


def category_accuracy(predicted, reference) -> float:
    """Fraction of exams whose predicted category equals the reference one."""
    pred, ref = _pair(predicted, reference)
    return float(np.mean(pred == ref))


def c_index(predicted, reference) -> float:
    """Harrell's concordance index of predicted categories against reference categories.

    Over every pair of exams whose *reference* categories differ (the comparable pairs), a pair counts 1
    when the predictions are ordered the same way as the references, 1/2 when the predictions are tied,
    and 0 when they are ordered the other way; C = (concordant + ties / 2) / comparable. 1 = perfect
    order, 0 = reversed order, 0.5 = a constant prediction. NaN when no pair is comparable (all
    reference categories equal).

    This differs from the formula printed in Gogin et al. (2021), which counts pairs of exams
    differently: Harrell's definition counts only the comparable pairs, those with distinct truth (pairs
    with the same reference category are left out of numerator and denominator alike), and gives a tie
    in the prediction half credit. Values computed with the printed formula are therefore not directly
    comparable with this one.

    Computed from the 5x5 confusion matrix in O(25^2), whatever the number of exams.
    """
    counts = confusion_matrix(predicted, reference).astype(np.float64)  # rows ref, cols pred
    # cumulative counts over predicted categories strictly below / equal, per reference row
    below = np.cumsum(counts, axis=1) - counts
    concordant = ties = comparable = 0.0
    for r_hi in range(_N):
        for r_lo in range(r_hi):
            lo = counts[r_lo]  # exams of the lower reference category, by predicted category
            hi = counts[r_hi]
            comparable += lo.sum() * hi.sum()
            concordant += float(hi @ below[r_lo])  # predicted(hi) > predicted(lo)
            ties += float(hi @ lo)
    if comparable == 0:
        return float("nan")
    return (concordant + 0.5 * ties) / comparable


def weighted_kappa(predicted, reference, *, weights: str = "linear") -> float:
    """Cohen's kappa with "linear" (|i - j| / 4) or "quadratic" ((i - j)^2 / 16) disagreement weights.

    kappa = 1 - sum(w * O) / sum(w * E), O the observed 5x5 proportions, E = outer(reference marginal,
    predicted marginal). NaN when the expected disagreement is zero (both raters use one same category).
    """
    if weights not in ("linear", "quadratic"):
        raise InputError(f"weights={weights!r} is not supported", code="BAD_WEIGHTS",
                         hint='use "linear" or "quadratic"')
    observed = confusion_matrix(predicted, reference).astype(np.float64)
    observed /= observed.sum()
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0))
    i, j = np.indices((_N, _N))
    w = np.abs(i - j) / (_N - 1) if weights == "linear" else (i - j) ** 2 / (_N - 1) ** 2
    disagreement = float((w * expected).sum())
    if disagreement == 0:
        return float("nan")
    return 1.0 - float((w * observed).sum()) / disagreement


def lesion_detection(pred_mask, ref_mask, hu, spacing, *, threshold_hu: float = 130.0) -> dict:
    """orCaScore-style lesion detection of a predicted calcium mask against a reference mask.

    Lesions are the 3D 6-connected components of (mask != 0) & (HU >= threshold_hu) in each mask. A
    reference lesion is a true positive when any predicted lesion voxel overlaps it, a false negative
    otherwise; a predicted lesion that overlaps no reference lesion is a false positive.

    Args:
        pred_mask, ref_mask: (z, y, x) bool or integer masks (nonzero = calcium).
        hu: (z, y, x) HU array.  spacing: (dz, dy, dx) mm.

    Returns:
        {"tp", "fp", "fn": lesion counts, "sensitivity" tp / (tp + fn), "ppv" tp / (tp + fp),
        "f1" 2 tp / (2 tp + fp + fn), and by volume "tp_volume_mm3" (detected reference lesions),
        "fn_volume_mm3" (missed reference lesions), "fp_volume_mm3" (false positive predicted lesions),
        "sensitivity_volume", "ppv_volume", "f1_volume"}; ratios are NaN when their denominator is 0.
    """
    hu, ref = _check_arrays(hu, ref_mask)
    _, pred = _check_arrays(hu, pred_mask)
    dz, dy, dx = _check_spacing(spacing)
    voxel = dz * dy * dx
    above = hu >= threshold_hu
    ref_labels, n_ref = label_host((ref != 0) & above, 6, slices=False)
    pred_labels, n_pred = label_host((pred != 0) & above, 6, slices=False)
    overlap = (ref_labels > 0) & (pred_labels > 0)
    ref_hit = np.zeros(n_ref + 1, bool)
    ref_hit[ref_labels[overlap]] = True
    pred_hit = np.zeros(n_pred + 1, bool)
    pred_hit[pred_labels[overlap]] = True
    ref_size = np.bincount(ref_labels.reshape(-1), minlength=n_ref + 1) * voxel
    pred_size = np.bincount(pred_labels.reshape(-1), minlength=n_pred + 1) * voxel
    tp = int(ref_hit[1:].sum())
    fn = n_ref - tp
    fp = int((~pred_hit[1:]).sum())
    tp_v = float(ref_size[1:][ref_hit[1:]].sum())
    fn_v = float(ref_size[1:][~ref_hit[1:]].sum())
    fp_v = float(pred_size[1:][~pred_hit[1:]].sum())

    def ratio(a, b):
        return a / b if b else float("nan")

    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "sensitivity": ratio(tp, tp + fn),
        "ppv": ratio(tp, tp + fp),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "tp_volume_mm3": tp_v,
        "fp_volume_mm3": fp_v,
        "fn_volume_mm3": fn_v,
        "sensitivity_volume": ratio(tp_v, tp_v + fn_v),
        "ppv_volume": ratio(tp_v, tp_v + fp_v),
        "f1_volume": ratio(2 * tp_v, 2 * tp_v + fp_v + fn_v),
    }
