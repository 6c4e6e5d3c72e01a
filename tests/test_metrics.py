"""Evaluation metrics against brute-force float64 oracles and hand-computed cases."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import ndimage

from agatax import InputError, c_index, category_accuracy, confusion_matrix, lesion_detection, weighted_kappa

categories = st.lists(st.integers(0, 4), min_size=2, max_size=40)


def c_index_oracle(pred, ref):
    """O(n^2) loop over exam pairs: Harrell's C on pairs with distinct reference, prediction ties 1/2."""
    num = den = 0.0
    for i in range(len(ref)):
        for j in range(len(ref)):
            if ref[i] < ref[j]:
                den += 1
                num += 1.0 if pred[i] < pred[j] else 0.5 if pred[i] == pred[j] else 0.0
    return num / den if den else math.nan


def kappa_oracle(pred, ref, power):
    """Agreement form: (p_o - p_e) / (1 - p_e), p_o over exams, p_e over all (prediction, reference) pairs."""
    agree = lambda a, b: 1.0 - (abs(a - b) / 4.0) ** power  # noqa: E731
    n = len(ref)
    p_o = sum(agree(p, r) for p, r in zip(pred, ref)) / n
    p_e = sum(agree(p, r) for p in pred for r in ref) / (n * n)
    return (p_o - p_e) / (1.0 - p_e) if p_e != 1.0 else math.nan


# ----------------------------------------------------------------------------------------- C-index
def test_c_index_hand_case():
    # reference A, B, C; predicted A, C, C. Pairs with distinct truth: (A,B) concordant, (A,C) concordant,
    # (B,C) predicted tie -> 1/2: C = 2.5 / 3
    assert c_index(["A", "C", "C"], ["A", "B", "C"]) == pytest.approx(2.5 / 3)
    assert c_index([0, 2, 2], [0, 1, 2]) == pytest.approx(2.5 / 3)


@given(ref=categories)
def test_c_index_perfect_reversed_constant(ref):
    if len(set(ref)) < 2:
        assert math.isnan(c_index(ref, ref))
        return
    assert c_index(ref, ref) == 1.0
    assert c_index([4 - r for r in ref], ref) == 0.0
    assert c_index([2] * len(ref), ref) == 0.5


@given(pred=categories, data=st.data())
def test_c_index_matches_brute_force(pred, data):
    ref = data.draw(st.lists(st.integers(0, 4), min_size=len(pred), max_size=len(pred)))
    expected = c_index_oracle(pred, ref)
    got = c_index(pred, ref)
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected, rel=1e-12)
    letters = ["ABCDE"[p] for p in pred]
    assert (math.isnan(got) and math.isnan(c_index(letters, ref))) or c_index(letters, ref) == got


# -------------------------------------------------------------------- accuracy, confusion, kappa
def test_accuracy_and_confusion_hand_case():
    pred, ref = ["A", "C", "C", "E"], ["A", "B", "C", "D"]
    assert category_accuracy(pred, ref) == 0.5
    m = confusion_matrix(pred, ref)
    expected = np.zeros((5, 5), int)
    expected[0, 0] = expected[1, 2] = expected[2, 2] = expected[3, 4] = 1  # rows reference, columns predicted
    np.testing.assert_array_equal(m, expected)


def test_kappa_hand_case():
    # reference 0, 1, 2; predicted 0, 2, 2; linear disagreement |i - j| / 4.
    # observed disagreement: (0 + 1/4 + 0) / 3 = 1/12.
    # expected: reference marginal 1/3 each of 0, 1, 2; predicted 1/3 of 0, 2/3 of 2:
    #   r=0: 1/3 * (2/3 * 2/4) = 1/9;  r=1: 1/3 * (1/3 * 1/4 + 2/3 * 1/4) = 1/12;  r=2: 1/3 * (1/3 * 2/4) = 1/18
    #   total 1/4.  kappa = 1 - (1/12) / (1/4) = 2/3
    assert weighted_kappa([0, 2, 2], [0, 1, 2]) == pytest.approx(2 / 3)
    # quadratic, (i - j)^2 / 16: observed (1/16) / 3 = 1/48; expected
    #   r=0: 1/3 * 2/3 * 4/16 = 1/18;  r=1: 1/3 * 1/16 = 1/48;  r=2: 1/3 * 1/3 * 4/16 = 1/36
    #   -> 8/144 + 3/144 + 4/144 = 15/144
    #   kappa = 1 - (1/48) / (15/144) = 1 - 3/15 = 0.8
    assert weighted_kappa([0, 2, 2], [0, 1, 2], weights="quadratic") == pytest.approx(0.8)


@given(pred=categories, data=st.data(), weights=st.sampled_from(["linear", "quadratic"]))
def test_kappa_matches_agreement_form(pred, data, weights):
    ref = data.draw(st.lists(st.integers(0, 4), min_size=len(pred), max_size=len(pred)))
    expected = kappa_oracle(pred, ref, 1 if weights == "linear" else 2)
    got = weighted_kappa(pred, ref, weights=weights)
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_kappa_perfect_and_degenerate():
    assert weighted_kappa(list("ABCDE"), list("ABCDE")) == 1.0
    assert math.isnan(weighted_kappa(["C", "C"], ["C", "C"]))


def test_category_validation():
    for bad_pred, bad_ref, code in [
        (["A", "F"], ["A", "B"], "BAD_CATEGORY"),
        ([0, 5], [0, 1], "BAD_CATEGORY"),
        ([0, 1.5], [0, 1], "BAD_CATEGORY"),
        ([True, 0], [0, 1], "BAD_CATEGORY"),
        ("AB", ["A", "B"], "BAD_CATEGORY"),
        ([0, 1, 2], [0, 1], "SHAPE_MISMATCH"),
        ([], [], "EMPTY"),
    ]:
        with pytest.raises(InputError) as err:
            c_index(bad_pred, bad_ref)
        assert err.value.code == code
    with pytest.raises(InputError) as err:
        weighted_kappa([0], [0], weights="cubic")
    assert err.value.code == "BAD_WEIGHTS"
    assert category_accuracy(np.array([0, 1]), ["a", "B"]) == 1.0  # arrays and lower-case letters


# --------------------------------------------------------------------------------- lesion detection
def test_lesion_detection_hand_case():
    hu = np.full((3, 6, 6), 300.0)
    ref = np.zeros((3, 6, 6), bool)
    pred = np.zeros((3, 6, 6), bool)
    ref[0, 0, 0:4] = True  # reference lesion 1: 4 voxels, overlapped by the prediction -> TP
    ref[2, 4, 4:6] = True  # reference lesion 2: 2 voxels, missed -> FN
    pred[0, 0, 3:5] = True  # overlaps lesion 1 at (0, 0, 3)
    pred[1, 2, 0] = pred[1, 3, 1] = pred[1, 4, 2] = True  # diagonal: three 6-connected lesions -> 3 FP
    hu[1, 4, 2] = 100.0  # ... but this one is below 130 HU: not a lesion -> 2 FP
    r = lesion_detection(pred, ref, hu, (2.0, 0.5, 0.5))  # voxel 0.5 mm^3
    assert (r["tp"], r["fp"], r["fn"]) == (1, 2, 1)
    assert r["sensitivity"] == 0.5 and r["ppv"] == pytest.approx(1 / 3) and r["f1"] == pytest.approx(2 / 5)
    # volumes: TP 4 * 0.5 = 2.0, FN 2 * 0.5 = 1.0, FP 2 * 0.5 = 1.0
    assert (r["tp_volume_mm3"], r["fn_volume_mm3"], r["fp_volume_mm3"]) == (2.0, 1.0, 1.0)
    assert r["sensitivity_volume"] == pytest.approx(2 / 3) and r["ppv_volume"] == pytest.approx(2 / 3)
    assert r["f1_volume"] == pytest.approx(4 / 6)


def test_lesion_detection_empty_gives_nan_ratios():
    hu = np.zeros((2, 3, 3))
    r = lesion_detection(np.zeros((2, 3, 3), bool), np.zeros((2, 3, 3), bool), hu, (1, 1, 1))
    assert (r["tp"], r["fp"], r["fn"]) == (0, 0, 0) and math.isnan(r["sensitivity"]) and math.isnan(r["f1"])


@given(seed=st.integers(0, 2**32 - 1))
def test_lesion_detection_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    shape = (3, 7, 7)
    hu = rng.integers(0, 400, shape).astype(np.float32)
    ref, pred = rng.random(shape) < 0.35, rng.random(shape) < 0.35
    six = ndimage.generate_binary_structure(3, 1)
    ref_l, n_ref = ndimage.label(ref & (hu >= 130), six)
    pred_l, n_pred = ndimage.label(pred & (hu >= 130), six)
    tp = sum(1 for k in range(1, n_ref + 1) if (pred_l[ref_l == k] > 0).any())
    fp = sum(1 for k in range(1, n_pred + 1) if not (ref_l[pred_l == k] > 0).any())
    tp_v = sum(float((ref_l == k).sum()) for k in range(1, n_ref + 1) if (pred_l[ref_l == k] > 0).any()) * 0.75
    r = lesion_detection(pred.astype(np.uint8) * 2, ref, hu, (3.0, 0.5, 0.5))
    assert (r["tp"], r["fp"], r["fn"]) == (tp, fp, n_ref - tp)
    assert r["tp_volume_mm3"] == pytest.approx(tp_v)


def test_lesion_detection_validates():
    hu = np.zeros((2, 3, 3))
    with pytest.raises(InputError) as err:
        lesion_detection(np.zeros((2, 3, 2), bool), np.zeros((2, 3, 3), bool), hu, (1, 1, 1))
    assert err.value.code == "SHAPE_MISMATCH"
    with pytest.raises(InputError) as err:
        lesion_detection(np.zeros((2, 3, 3), bool), np.zeros((2, 3, 3), bool), hu, (1, 0, 1))
    assert err.value.code == "BAD_SPACING"
