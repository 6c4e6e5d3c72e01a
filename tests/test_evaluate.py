"""Score agreement: hand-computed accuracy, C-index, kappa, Bland-Altman, confusion; reference tables."""

import json
import math

import numpy as np
import pytest

from agatax import InputError, ReadError
from agatax.evaluate import Evaluation, evaluate_scores, read_score_table

# Six exams in both tables, one in each table only.
#   exam  ref  cat   pred  cat   pred - ref
#   e1      0   A       0   A        0
#   e2      5   B      12   C        7
#   e3     50   C      40   C      -10
#   e4    200   D     150   D      -50
#   e5    500   E     450   E      -50
#   e6     30   C      45   C       15
REF = {"e1": 0, "e2": 5, "e3": 50, "e4": 200, "e5": 500, "e6": 30, "only_ref": 7}
PRED = {"e1": 0, "e2": 12, "e3": 40, "e4": 150, "e5": 450, "e6": 45, "only_pred": 10}

# Accuracy: 5 of 6 categories agree.
ACCURACY = 5 / 6
# C-index (Harrell, on categories): 15 pairs less (e3, e6) with equal reference C -> 14 comparable.
#   (ref, pred): e1 (A, A), e2 (B, C), e3 (C, C), e6 (C, C), e4 (D, D), e5 (E, E).
#   e2 against e3 and e6: predictions tied (C, C) -> 2 ties; the other 12 pairs are concordant.
#   C = (12 + 2 / 2) / 14 = 13/14.
C_INDEX = 13 / 14
# Linear kappa, categories 0..4, disagreement weight |i - j| / 4.
#   observed: one pair (B, C) at 1/4 over 6 exams -> 1/24 = 6/144.
#   marginals ref [1, 1, 2, 1, 1] / 6, pred [1, 0, 3, 1, 1] / 6;
#   sum_ij r_i q_j |i - j| = 13 + 9 + 2 * 5 + 7 + 11 = 50 -> expected 50 / (36 * 4) = 50/144.
#   kappa = 1 - 6/50 = 0.88.
KAPPA = 0.88
# Bland-Altman: differences 0, 7, -10, -50, -50, 15; sum -88 -> mean -88/6;
#   sum of squares 5374; SS about the mean 5374 - 88^2/6 = 12250/3; variance (n - 1 = 5) 2450/3.
MEAN_DIFF = -88 / 6
SD_DIFF = math.sqrt(2450 / 3)
CONFUSION = np.zeros((5, 5), int)
CONFUSION[0, 0] = 1  # A -> A
CONFUSION[1, 2] = 1  # B (reference) -> C (predicted)
CONFUSION[2, 2] = 2
CONFUSION[3, 3] = 1
CONFUSION[4, 4] = 1


def _check(ev: Evaluation):
    assert ev.n == 6 and ev.ids == ("e1", "e2", "e3", "e4", "e5", "e6")
    assert ev.accuracy == pytest.approx(ACCURACY)
    assert ev.c_index == pytest.approx(C_INDEX)
    assert ev.kappa == pytest.approx(KAPPA)
    assert ev.mean_difference == pytest.approx(MEAN_DIFF)
    assert ev.sd_difference == pytest.approx(SD_DIFF)
    assert ev.loa_lower == pytest.approx(MEAN_DIFF - 1.96 * SD_DIFF)
    assert ev.loa_upper == pytest.approx(MEAN_DIFF + 1.96 * SD_DIFF)
    np.testing.assert_array_equal(ev.confusion, CONFUSION)
    assert ev.only_in_predicted == ("only_pred",) and ev.only_in_reference == ("only_ref",)


def test_hand_computed_agreement_from_mappings():
    _check(evaluate_scores(PRED, REF))


def test_same_figures_from_csv_files_with_other_column_names(tmp_path):
    pred = tmp_path / "pred.csv"
    pred.write_text("exam_id,agatston,category\n" + "".join(f"{k},{v},x\n" for k, v in PRED.items()))
    ref = tmp_path / "ref.csv"  # Excel style: BOM, semicolons, capitalised names
    ref.write_text("\ufeffID;Score\n" + "".join(f"{k};{v}\n" for k, v in REF.items()), encoding="utf-8")
    assert read_score_table(ref) == {k: float(v) for k, v in REF.items()}
    _check(evaluate_scores(pred, ref))


def test_missing_columns_names_found_and_needed(tmp_path):
    path = tmp_path / "ref.csv"
    path.write_text("patient,calcium\np1,3\n")
    with pytest.raises(ReadError) as info:
        read_score_table(path)
    err = info.value
    assert err.code == "MISSING_COLUMNS"
    for name in ("patient", "calcium", "exam_id", "id", "agatston", "score"):
        assert name in err.message


def test_bad_values_duplicates_and_missing_file(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("id,score\na,1\nb,\n")
    with pytest.raises(ReadError) as info:
        read_score_table(path)
    assert info.value.code == "BAD_VALUE" and "line 3" in info.value.message
    path.write_text("id,score\na,1\na,2\n")
    with pytest.raises(ReadError, match="twice"):
        read_score_table(path)
    path.write_text("id,score\na,-4\n")
    with pytest.raises(ReadError, match="BAD_VALUE"):
        read_score_table(path)
    with pytest.raises(ReadError) as info:
        read_score_table(tmp_path / "absent.csv")
    assert info.value.code == "NOT_FOUND"


def test_failed_rows_of_a_summary_are_left_out(tmp_path):
    path = tmp_path / "summary.csv"
    path.write_text("exam_id,status,agatston,error_code\na,ok,12.5,\nb,failed,,MISSING_SLICES\nc,ok,0,\n")
    assert read_score_table(path) == {"a": 12.5, "c": 0.0}


def test_no_common_exams_is_an_error():
    with pytest.raises(InputError) as info:
        evaluate_scores({"a": 1.0}, {"b": 1.0})
    assert info.value.code == "NO_COMMON_EXAMS"


def test_text_dict_and_plots(tmp_path):
    ev = evaluate_scores(PRED, REF)
    text = ev.format_text()
    assert "0.833" in text and "0.929" in text and "0.880" in text
    assert f"{MEAN_DIFF:.2f}" in text and "only_pred" in text
    assert "  B        0     0     1     0     0" in text  # the confusion row of reference B
    data = json.loads(json.dumps(ev.to_dict()))
    assert data["n"] == 6 and data["confusion_matrix"]["counts"] == CONFUSION.tolist()
    assert data["bland_altman"]["mean_difference"] == pytest.approx(MEAN_DIFF)
    for plot in (ev.plot_confusion, ev.plot_bland_altman):
        out = plot(tmp_path / f"{plot.__name__}.png")
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_single_exam_has_no_sd_and_stays_json_safe():
    ev = evaluate_scores({"a": 3.0}, {"a": 1.0})
    assert ev.mean_difference == 2.0 and math.isnan(ev.sd_difference)
    assert json.loads(json.dumps(ev.to_dict()))["bland_altman"]["sd_difference"] is None
    assert "n/a" in ev.format_text()


def test_lesion_metrics_are_pooled_over_exams():
    from agatax import Volume
    from agatax.evaluate import evaluate_masks

    # Exam 1 (voxels 2 mm^3): reference R1 (4 voxels) found by P1, R2 (2 voxels) missed, P2 (3 voxels) false.
    hu1 = np.full((3, 10, 10), 300.0, np.float32)
    ref1, pred1 = np.zeros(hu1.shape, np.uint8), np.zeros(hu1.shape, np.uint8)
    ref1[0, 1:3, 1:3] = 1  # R1
    ref1[2, 8, 1:3] = 2  # R2
    pred1[0, 2, 2:4] = 1  # P1, touches R1 at (0, 2, 2)
    pred1[2, 5:8, 7] = 1  # P2
    # Exam 2 (voxels 1 mm^3): reference R3 (5 voxels) found by P3.
    hu2 = np.full((2, 6, 6), 300.0, np.float32)
    ref2, pred2 = np.zeros(hu2.shape, bool), np.zeros(hu2.shape, bool)
    ref2[1, 1, 0:5] = True
    pred2[1, 1, 4] = True
    pooled = evaluate_masks([(pred1, ref1, Volume(hu1, (2.0, 1.0, 1.0))), (pred2, ref2, hu2, (1.0, 1.0, 1.0))])
    # Counts: tp 1 + 1, fp 1, fn 1 -> sensitivity = ppv = f1 = 2/3 (a mean of per-exam rates would give 0.75).
    assert (pooled["exams"], pooled["tp"], pooled["fp"], pooled["fn"]) == (2, 2, 1, 1)
    assert pooled["sensitivity"] == pytest.approx(2 / 3) and pooled["ppv"] == pytest.approx(2 / 3)
    assert pooled["f1"] == pytest.approx(2 / 3)
    # Volumes: tp 4*2 + 5 = 13, fn 2*2 = 4, fp 3*2 = 6 mm^3.
    assert pooled["tp_volume_mm3"] == pytest.approx(13) and pooled["fn_volume_mm3"] == pytest.approx(4)
    assert pooled["fp_volume_mm3"] == pytest.approx(6)
    assert pooled["sensitivity_volume"] == pytest.approx(13 / 17)
    assert pooled["ppv_volume"] == pytest.approx(13 / 19)
    assert pooled["f1_volume"] == pytest.approx(26 / 36)
    ev = evaluate_scores(PRED, REF, lesions=pooled)
    assert "f1_volume" in ev.format_text() and ev.to_dict()["lesions"]["tp"] == 2
    with pytest.raises(InputError):
        evaluate_masks([(pred1, ref1)])


def test_category_ranges_of_a_summary_against_the_reference(tmp_path):
    """By hand: e1 B in A-B, reference A (wrong, uncertain, inside); e2 C in C-C, C (right); e3 D in C-D, D
    (right, uncertain); e4 E in E-E, D (wrong, outside); e5 failed; e6 without a range."""
    pred = tmp_path / "summary.csv"
    pred.write_text("exam_id,status,agatston,category,category_low,category_high\n"
                    "e1,ok,5,B,A,B\ne2,ok,50,C,C,C\ne3,ok,150,D,C,D\ne4,ok,500,E,E,E\ne5,failed,,,,\ne6,ok,0,A,,\n")
    ref = tmp_path / "ref.csv"
    ref.write_text("exam_id,agatston\ne1,0\ne2,60\ne3,150\ne4,200\ne5,10\ne6,0\n")
    ev = evaluate_scores(pred, ref)
    assert ev.n == 5
    assert ev.ranges == {"exams": 4, "uncertain": 2, "error_uncertain": 0.5, "error_others": 0.5, "wrong": 2,
                         "wrong_uncertain": 1, "reference_inside_range": 3}
    assert ev.to_dict()["category_ranges"]["uncertain"] == 2
    text = ev.format_text()
    assert "wrong exams flagged uncertain      1 of 2" in text and "reference inside the range         3 of 4" in text
    # a table without ranges (another tool's, a given mask): no range figures
    plain = tmp_path / "plain.csv"
    plain.write_text("exam_id,agatston\ne1,5\ne2,50\n")
    assert evaluate_scores(plain, ref).ranges is None and "category ranges" not in evaluate_scores(plain, ref).format_text()
    assert evaluate_scores({"e1": 5.0}, {"e1": 0.0}, ranges={"e1": ("A", "B")}).ranges["uncertain"] == 1


def test_category_ranges_from_a_folder_of_report_json_files(tmp_path):
    from agatax.evaluate import read_category_ranges

    for exam_id, low, high in (("a", "B", "D"), ("b", "C", "C")):
        (tmp_path / f"{exam_id}.json").write_text(json.dumps(
            {"exam_id": exam_id, "agatston": 50.0, "category_range": {"low": {"category": low, "agatston": 1.0},
                                                                     "high": {"category": high, "agatston": 2.0}}}))
    (tmp_path / "c.json").write_text(json.dumps({"exam_id": "c", "agatston": 3.0}))  # a given mask: no range
    (tmp_path / "broken.json").write_text("{")
    assert read_category_ranges(tmp_path) == {"a": ("B", "D"), "b": ("C", "C")}
