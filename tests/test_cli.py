"""The command line: scoring with a planted mask or an ensemble, batches, reports, evaluate, example, errors."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dicom_factory as factory
from agatax import compute_scores, read_mask, read_volume, write_dicom_series, write_nifti
from agatax.cli import main, score_exam
from agatax.dicom_report import warning_code

DZ, DY, DX = 2.5, 0.5, 0.5


@pytest.fixture(scope="module")
def exam(tmp_path_factory):
    """An 8-slice series (soft tissue in air, the smallest exam the readers take) with two planted lesions,
    and their mask as .npy and NIfTI.

    Slice 1: a 4 x 4 square at 250 HU (weight 2), slice 3: a 3 x 3 square peaking at 450 HU (weight 4).
    Agatston = (16 * 0.25 mm^2 * 2 + 9 * 0.25 mm^2 * 4) * 2.5 / 3 = 17 * 2.5 / 3.
    """
    root = tmp_path_factory.mktemp("exam")
    hu = np.full((8, 64, 64), -1000.0)
    hu[:, 2:30, 2:40] = -50.0
    mask = np.zeros(hu.shape, np.uint8)
    hu[1, 4:8, 5:9] = 250.0
    mask[1, 4:8, 5:9] = 1
    hu[3, 10:13, 12:15] = 300.0
    hu[3, 11, 13] = 450.0
    mask[3, 10:13, 12:15] = 2
    factory.write_series(root / "dicom", hu, spacing=(DZ, DY, DX), thickness=DZ, series_uid="1.2.3.4.5")
    np.save(root / "mask.npy", mask)
    write_nifti(root / "mask.nii.gz", mask, like=read_volume(root / "dicom"))
    return root


EXPECTED_AGATSTON = (16 * 0.25 * 2 + 9 * 0.25 * 4) * DZ / 3
EXPECTED_VOLUME = (16 + 9) * DZ * DY * DX


def test_score_prints_totals_and_lesion_table(exam, capsys):
    assert main(["score", str(exam / "dicom"), "--mask", str(exam / "mask.npy")]) == 0
    out = capsys.readouterr().out
    assert f"Agatston:  {EXPECTED_AGATSTON:.1f}" in out and "(category C)" in out
    assert f"volume:    {EXPECTED_VOLUME:.1f} mm^3" in out
    assert "slice lesions: 2 " in out and "1.2.3.4.5" in out


def test_score_json_to_stdout_parses(exam, capsys):
    code = main(["score", str(exam / "dicom"), "--mask", str(exam / "mask.nii.gz"), "--json", "-", "--calibration", "0.001"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["agatston"] == pytest.approx(EXPECTED_AGATSTON)
    assert result["category"] == "C"
    assert result["volume_mm3"] == pytest.approx(EXPECTED_VOLUME)
    expected_mass = 0.001 * (16 * 250.0 + 8 * 300.0 + 450.0) * DZ * DY * DX
    assert result["mass_mg"] == pytest.approx(expected_mass)
    assert result["spacing_mm"] == pytest.approx([DZ, DY, DX]) and result["slice_thickness_mm"] == DZ
    assert sorted((l["slice"], l["pixels"], l["weight"]) for l in result["lesions"]) == [(1, 16, 2), (3, 9, 4)]
    assert set(result["per_artery"]) >= {"LM", "LAD"}
    assert result["series_uid"] == "1.2.3.4.5" and result["warnings"] == []
    assert set(result) >= {"agatston", "category", "volume_mm3", "mass_mg", "lesions", "per_artery", "spacing_mm",
                           "slice_thickness_mm", "warnings", "series_uid", "source"}


def test_json_file_and_score_exam_agree(exam, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["score", str(exam / "dicom"), "--mask", str(exam / "mask.npy"), "--json", str(out),
                 "--min-area-mm2", "3.0"]) == 0
    assert "Agatston" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["agatston"] == pytest.approx(16 * 0.25 * 2 * DZ / 3)  # the 2.25 mm^2 lesion is dropped
    assert saved.pop("provenance")["options"]["min_area_mm2"] == 3.0
    assert saved == score_exam(exam / "dicom", exam / "mask.npy", min_area_mm2=3.0)


def test_errors_are_one_line_with_code_and_exit_2(exam, tmp_path, capsys):
    assert main(["score", str(tmp_path / "absent"), "--mask", str(exam / "mask.npy")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error [NOT_FOUND]: ") and err.count("\n") == 1 and "Traceback" not in err
    np.save(tmp_path / "wrong.npy", np.zeros((2, 2, 2), np.uint8))
    assert main(["score", str(exam / "dicom"), "--mask", str(tmp_path / "wrong.npy")]) == 2
    assert "error [MASK_MISMATCH]" in capsys.readouterr().err


def test_debug_shows_the_exception(tmp_path):
    from agatax import ReadError

    with pytest.raises(ReadError):
        main(["--debug", "score", str(tmp_path / "absent"), "--mask", "m.npy"])


def test_python_dash_m_help_lists_the_commands():
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "agatax", "--help"], capture_output=True, text=True, cwd=root,
                          timeout=120)
    assert proc.returncode == 0
    assert all(name in proc.stdout for name in ("score", "evaluate", "example", "train"))


def test_score_a_nifti_exam(exam, tmp_path, capsys):
    volume = read_volume(exam / "dicom")
    write_nifti(tmp_path / "ct.nii.gz", volume)
    assert main(["score", str(tmp_path / "ct.nii.gz"), "--mask", str(exam / "mask.nii.gz"), "--json", "-"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["agatston"] == pytest.approx(EXPECTED_AGATSTON, rel=1e-6)


# ------------------------------------------------------------------------ the ensemble, batches, reports

CONTRACT = {"agatston", "category", "volume_mm3", "lesions", "spacing_mm", "slice_thickness_mm", "warnings"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Two synthetic exams (24 x 96 x 96, one compilation) as DICOM folders, and a tiny 3-network ensemble."""
    import jax

    from agatax import UNetConfig, init_ensemble, save_ensemble
    from agatax.synthetic import generate_exam

    root = tmp_path_factory.mktemp("cohort")
    truth = []
    for seed in (0, 1):
        exam = generate_exam(seed, matrix=96, n_slices=24, slice_increment_mm=3.0, slice_thickness_mm=3.0,
                             fov_mm=200.0)
        write_dicom_series(root / "exams" / f"case{seed}", exam.volume, patient_id=f"case{seed}")
        write_nifti(root / "exams" / f"case{seed}_mask.nii.gz", exam.mask, like=exam.volume)
        truth.append(f"case{seed},case{seed},case{seed}_mask.nii.gz,{exam.agatston:.4f},{exam.category}\n")
    (root / "exams" / "manifest.csv").write_text("exam_id,path,mask_path,agatston,category\n" + "".join(truth))
    save_ensemble(root / "tiny.msgpack", init_ensemble(jax.random.key(0), UNetConfig.tiny(), members=3))
    return root


def _rows(path):
    with open(path, newline="") as f:
        return {row["exam_id"]: row for row in csv.DictReader(f)}


def test_batch_with_a_bad_exam_keeps_the_good_results_and_exits_3(cohort, tmp_path, capsys):
    listing = tmp_path / "exams.txt"
    listing.write_text(f"{cohort / 'exams' / 'case0'}\n{tmp_path / 'no_such_exam'}\n")
    report, out = tmp_path / "report", tmp_path / "all.json"
    # --no-localise: the untrained networks' calcium lies on bone, which the chest region would discard
    args = ["score", "@" + str(listing), "--weights", str(cohort / "tiny.msgpack"), "--report", str(report),
            "--json", str(out), "--no-png", "--no-localise"]
    assert main(args) == 3
    captured = capsys.readouterr()
    assert "case0  Agatston " in captured.out and "no_such_exam  FAILED [NOT_FOUND]" in captured.out
    assert "agatax: 2 exams: 1 scored, 1 failed; summary: " in captured.err
    rows = _rows(report / "summary.csv")
    assert rows["no_such_exam"]["status"] == "failed" and rows["no_such_exam"]["error_code"] == "NOT_FOUND"
    assert rows["case0"]["status"] == "ok"
    results = json.loads(out.read_text())
    assert [r["exam_id"] for r in results] == ["case0", "no_such_exam"]
    good, bad = results
    assert bad["status"] == "failed" and bad["error_code"] == "NOT_FOUND"
    assert good["status"] == "ok" and CONTRACT <= set(good) and good["members"] == 3
    # the mask written to the report lines up with the input: scoring it again gives the reported score
    volume = read_volume(cohort / "exams" / "case0")
    again = compute_scores(volume.hu, read_mask(report / "case0_mask.nii.gz", like=volume), volume.spacing)
    assert good["agatston"] == pytest.approx(again.agatston) and len(good["lesions"]) == len(again.lesions) > 0
    assert float(rows["case0"]["agatston"]) == pytest.approx(again.agatston)
    # vote fractions are shares of the 3 networks; objects are kept by a majority of their votes, so a lesion
    # (one slice of an object) may hold less, but some lesion holds a majority
    fractions = [lesion["vote_fraction"] for lesion in good["lesions"]]
    assert all(0.0 <= f <= 1.0 for f in fractions) and max(fractions) > 1 / 2

    # a re-run keeps the written results (marked here by an edited score) and retries the failure
    saved = json.loads((report / "case0.json").read_text())
    saved["agatston"] = 12345.0
    (report / "case0.json").write_text(json.dumps(saved))
    assert main(args) == 3
    assert "(kept from an earlier run)" in capsys.readouterr().out
    kept = json.loads(out.read_text())[0]
    assert kept["status"] == "skipped" and kept["agatston"] == 12345.0
    assert _rows(report / "summary.csv")["no_such_exam"]["error_code"] == "NOT_FOUND"
    # --overwrite scores it again
    assert main(args + ["--overwrite", "--jobs", "0"]) == 3
    capsys.readouterr()
    redone = json.loads(out.read_text())[0]
    assert redone["status"] == "ok" and redone["agatston"] == pytest.approx(again.agatston)


def test_folder_of_exams_json_lines_to_stdout(cohort, capsys):
    args = ["score", str(cohort / "exams"), "--weights", str(cohort / "tiny.msgpack"), "--json", "-",
            "--json-lines", "--jobs", "2"]
    assert main(args) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 2
    results = [json.loads(line) for line in lines]
    assert [r["exam_id"] for r in results] == ["case0", "case1"]
    assert all(CONTRACT <= set(r) and r["status"] == "ok" for r in results)
    assert "agatax: 2/2 exams" in captured.err


def test_single_exam_with_the_ensemble_json_contract(cohort, capsys):
    assert main(["score", str(cohort / "exams" / "case1"), "--weights", str(cohort / "tiny.msgpack"),
                 "--json", "-", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert isinstance(result, dict) and CONTRACT <= set(result)
    assert result["spacing_mm"] == pytest.approx(list(read_volume(cohort / "exams" / "case1").spacing))
    assert result["lesions"] and all("vote_fraction" in lesion for lesion in result["lesions"])
    assert result["category"] in "ABCDE"


def test_exam_noise_in_the_json_and_the_text(cohort, capsys):
    from agatax.synthetic import generate_exam

    set_noise = generate_exam(1, matrix=96, n_slices=24, slice_increment_mm=3.0, slice_thickness_mm=3.0,
                              fov_mm=200.0).params["scanner"]["noise_sigma_hu"]  # case1's noise, as drawn
    args = ["score", str(cohort / "exams" / "case1"), "--weights", str(cohort / "tiny.msgpack"), "--device", "cpu"]
    assert main(args + ["--json", "-"]) == 0
    noise = json.loads(capsys.readouterr().out)["noise_hu"]
    assert noise == pytest.approx(set_noise, rel=0.15)
    assert main(args) == 0
    assert f"noise:     {noise:.0f} HU" in capsys.readouterr().out


def test_a_noisy_exam_is_shown_to_the_networks_smoothed_and_the_report_says_so(cohort):
    """Noise above the ensemble's training range: the JSON's ``input_smoothing_mm`` is the sigma
    ``agatax.quality.input_smoothing_mm`` chooses for the exam, a warning and the text's noise line say so;
    with ``adapt_noise=False`` (``--no-adapt-noise``) none of the three."""
    from agatax import load_ensemble
    from agatax.cli import ExamScorer, format_report
    from agatax.quality import input_smoothing_mm
    from agatax.synthetic import generate_exam

    volume = generate_exam(1, matrix=96, n_slices=24, slice_increment_mm=3.0, slice_thickness_mm=3.0, fov_mm=200.0,
                           noise_sigma_hu=55.0).volume
    sigma = input_smoothing_mm(volume.hu, volume.spacing)[0]
    assert sigma > 0
    ensemble = load_ensemble(cohort / "tiny.msgpack")
    for adapt in (True, False):
        scorer = ExamScorer(ensemble=ensemble, adapt_noise=adapt)
        result = scorer.result(scorer.score(volume))
        assert result.get("input_smoothing_mm") == (round(sigma, 3) if adapt else None)
        assert any(w.startswith("noise adaptation") for w in result["warnings"]) == adapt
        assert ("shown to them smoothed" in format_report(result)) == adapt


def test_report_png_is_drawn(cohort, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert main(["score", str(cohort / "exams" / "case0"), "--weights", str(cohort / "tiny.msgpack"),
                 "--report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Agatston:" in out and f"report:    {tmp_path / 'case0.png'}" in out
    assert (tmp_path / "case0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(_rows(tmp_path / "summary.csv")) == {"case0"}


def _one_error_line(capsys, code):
    err = capsys.readouterr().err
    assert err.startswith(f"error [{code}]: "), err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_unreadable_or_missing_weights_are_one_line(cohort, tmp_path, capsys):
    junk = tmp_path / "junk.msgpack"
    junk.write_bytes(b"not an ensemble at all")
    assert main(["score", str(cohort / "exams" / "case0"), "--weights", str(junk)]) == 2
    _one_error_line(capsys, "CORRUPT_CHECKPOINT")
    assert main(["score", str(cohort / "exams"), "--weights", str(tmp_path / "absent.msgpack")]) == 2
    _one_error_line(capsys, "NOT_FOUND")


def test_refused_options_are_one_line(cohort, exam, tmp_path, capsys):
    import jax

    assert main(["score", str(cohort / "exams"), "--mask", str(exam / "mask.npy")]) == 2
    _one_error_line(capsys, "MASK_WITH_BATCH")
    assert main(["score", "@" + str(tmp_path / "missing.txt")]) == 2
    _one_error_line(capsys, "NOT_FOUND")
    (tmp_path / "empty").mkdir()
    assert main(["score", str(tmp_path / "empty")]) == 2
    _one_error_line(capsys, "NO_EXAMS")
    if not any(d.platform == "gpu" for d in jax.devices()):
        assert main(["score", str(cohort / "exams"), "--device", "gpu", "--weights", str(cohort / "tiny.msgpack")]) == 2
        _one_error_line(capsys, "NO_GPU")


# ------------------------------------------------------------------------------------------- evaluate


def test_evaluate_hand_made_tables(tmp_path, capsys):
    # predicted categories B, C, E, A against reference B, D, E, A: 3 of 4 agree
    (tmp_path / "pred.csv").write_text("exam_id,agatston\na,10\nb,50\nc,500\nd,0\nx,7\n")
    (tmp_path / "ref.csv").write_text("exam_id;path;agatston;category\na;a;5;B\nb;b;150;D\nc;c;450;E\nd;d;0;A\ne;e;3;B\n")
    assert main(["evaluate", str(tmp_path / "pred.csv"), str(tmp_path / "ref.csv"), "--json", "-"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["n"] == 4 and figures["category_accuracy"] == pytest.approx(0.75)
    differences = np.array([10 - 5, 50 - 150, 500 - 450, 0 - 0], float)
    assert figures["bland_altman"]["mean_difference"] == pytest.approx(differences.mean())
    assert figures["bland_altman"]["loa_upper"] == pytest.approx(differences.mean() + 1.96 * differences.std(ddof=1))
    assert figures["c_index"] == pytest.approx(1.0)  # the categories rank the exams in the same order
    counts = np.zeros((5, 5), int)
    for ref, pred in (("B", "B"), ("D", "C"), ("E", "E"), ("A", "A")):
        counts["ABCDE".index(ref), "ABCDE".index(pred)] += 1
    assert figures["confusion_matrix"]["counts"] == counts.tolist()
    assert figures["only_in_predicted"] == ["x"] and figures["only_in_reference"] == ["e"]

    assert main(["evaluate", str(tmp_path / "pred.csv"), str(tmp_path / "ref.csv"), "--plot", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    assert "category accuracy          0.750" in out
    for name in ("confusion.png", "bland_altman.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:4] == b"\x89PNG"


def test_evaluate_a_report_folder_against_a_manifest_with_lesions(cohort, tmp_path, capsys):
    report = tmp_path / "report"
    assert main(["score", str(cohort / "exams"), "--weights", str(cohort / "tiny.msgpack"), "--report", str(report),
                 "--no-png", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(report), str(cohort / "exams" / "manifest.csv"), "--lesions", "--json", "-"]) == 0
    figures = json.loads(capsys.readouterr().out)
    predicted, reference = _rows(report / "summary.csv"), _rows(cohort / "exams" / "manifest.csv")
    agree = [predicted[i]["category"] == reference[i]["category"] for i in ("case0", "case1")]
    assert figures["n"] == 2 and figures["category_accuracy"] == pytest.approx(sum(agree) / 2)
    assert figures["lesions"]["exams"] == 2 and {"sensitivity", "ppv", "f1"} <= set(figures["lesions"])
    # a table without the mask columns cannot give lesion figures
    (tmp_path / "ref.csv").write_text("exam_id,agatston\ncase0,1\n")
    assert main(["evaluate", str(report), str(tmp_path / "ref.csv"), "--lesions"]) == 2
    _one_error_line(capsys, "MISSING_COLUMNS")


def test_evaluate_refusals_are_one_line(tmp_path, capsys):
    (tmp_path / "pred.csv").write_text("exam_id,agatston\na,1\n")
    (tmp_path / "ref.csv").write_text("case,calcium\na,1\n")
    assert main(["evaluate", str(tmp_path / "pred.csv"), str(tmp_path / "ref.csv")]) == 2
    _one_error_line(capsys, "MISSING_COLUMNS")
    assert main(["evaluate", str(tmp_path / "pred.csv"), str(tmp_path / "nothing.csv")]) == 2
    _one_error_line(capsys, "NOT_FOUND")


# ------------------------------------------------------------------------------------------- example


def test_example_writes_a_readable_series_with_its_truth(tmp_path, capsys):
    out = tmp_path / "example"
    assert main(["example", str(out), "--seed", "3", "--matrix", "128"]) == 0
    printed = capsys.readouterr().out
    assert f"next:      agatax score {out} --report {tmp_path / 'example-report'}\n" in printed
    truth = json.loads((out / "truth.json").read_text())["example_3"]
    volume = read_volume(out / "example_3")
    assert list(volume.shape) == truth["shape"] and volume.spacing == pytest.approx(truth["spacing_mm"])
    assert volume.metadata["kvp"] == 120.0 and volume.warnings == ()
    # the written series and mask score to the true Agatston score
    scores = compute_scores(volume.hu, read_mask(out / "example_3_mask.nii.gz", like=volume), volume.spacing)
    assert scores.agatston == pytest.approx(truth["agatston"], abs=1e-3) and truth["agatston"] > 0
    manifest = _rows(out / "manifest.csv")["example_3"]
    assert float(manifest["agatston"]) == pytest.approx(truth["agatston"], abs=1e-3)
    assert manifest["category"] == truth["category"]
    # the folder scores as a batch of its one exam (the truth mask beside it is not taken for an exam)
    from agatax.batch import discover_exams

    tasks, _ = discover_exams([out])
    assert [t.exam_id for t in tasks] == ["example_3"]


def _default_weights_present() -> bool:
    from agatax.defaults import default_weights_path

    return default_weights_path().is_file()


@pytest.mark.skipif(not _default_weights_present(), reason="the shipped default ensemble is not in this checkout")
def test_score_with_the_shipped_default_ensemble(tmp_path, capsys):
    """`agatax score` with no weights given, on a category-D cardiac exam at matrix 256 (the default's
    training resolution), written as DICOM: the generator's truth is the oracle. (The 96-matrix exams of the
    ``cohort`` fixture are too coarse to judge the default by: one 8-voxel plaque there sits at the vote line.)"""
    from agatax.synthetic import generate_exam

    exam = generate_exam(0, target_category="D", matrix=256, protocol="cardiac")
    write_dicom_series(tmp_path / "exam", exam.volume, patient_id="d0")
    assert main(["score", str(tmp_path / "exam"), "--json", "-"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert CONTRACT <= set(result) and result["members"] == 5
    # each lesion carries its share of votes; objects are kept whole by their mean vote (tests/test_ensemble.py),
    # so one slice of an object may hold less than a majority on its own
    lesions = result["lesions"]
    assert lesions and all(0 <= les["vote_fraction"] <= 1.0 for les in lesions)
    assert result["category"] == exam.category == "D"
    assert result["agatston"] == pytest.approx(exam.agatston, rel=0.1)


def test_score_lists_and_draws_the_calcified_objects_of_the_chest_region_it_left_out(cohort, tmp_path, capsys):
    """The JSON's ``left_out`` against scipy's objects of (>= 130 HU, inside the chest region, outside the
    written mask) of >= 5 mm^3 peaking at 250-2000 HU (case1: aortic-wall calcium); the text names them; the
    picture is written."""
    from scipy import ndimage

    from agatax import localise_chest

    exam = cohort / "exams" / "case1"
    assert main(["score", str(exam), "--report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "case1.json").read_text())
    volume = read_volume(exam)
    region = localise_chest(volume.hu, volume.spacing).region
    scored = read_mask(tmp_path / "case1_mask.nii.gz", like=volume) > 0
    lab, n = ndimage.label((volume.hu >= 130) & region & ~scored, structure=np.ones((3, 3, 3)))
    voxel_mm3 = float(np.prod(volume.spacing))
    want = []
    for k in range(1, n + 1):
        hu = volume.hu[lab == k]
        if hu.size * voxel_mm3 >= 5.0 and 250.0 <= hu.max() < 2000.0:
            want.append((hu.size, float(hu.max())))
    assert want  # not vacuous: this exam has calcium the networks leave out
    left = result["left_out"]
    assert left["objects"] == len(want)
    assert left["volume_mm3"] == pytest.approx(sum(v for v, _ in want) * voxel_mm3, abs=0.1 * len(want))
    assert len(want) <= 5 and sorted((o["voxels"], o["peak_hu"]) for o in left["largest"]) == sorted(want)
    assert [o["voxels"] for o in left["largest"]] == sorted((v for v, _ in want), reverse=True)
    assert f"left out:  {len(want)} calcified object(s)" in out
    assert (tmp_path / "case1.png").stat().st_size > 0
    row = _rows(tmp_path / "summary.csv")["case1"]
    assert int(row["left_out_objects"]) == len(want) and float(row["left_out_mm3"]) == left["volume_mm3"]


def test_the_picture_outlines_both_the_left_out_objects_and_what_the_object_rules_dropped():
    from agatax.cli import ScoredExam

    a, b = np.zeros((3, 4, 4), bool), np.zeros((3, 4, 4), bool)
    a[0, 0, 0], b[2, 3, 3] = True, True
    assert ScoredExam(None, None, a).unscored() is None
    assert ScoredExam(None, None, a, left_out=(a, [])).unscored() is a
    assert ScoredExam(None, None, a, dropped=b).unscored() is b
    both = ScoredExam(None, None, a, left_out=(a, []), dropped=b).unscored()
    np.testing.assert_array_equal(both, a | b)


def test_report_slices_show_the_left_out_calcium_too():
    from agatax.report import report_slices

    wanted = [3, 1, 5, 6]  # one slice per left-out object, most important first
    assert report_slices({3: 10.0, 7: 50.0}, wanted, 4) == [1, 3, 5, 7]  # 3 shows both; then 1 and 5
    assert report_slices({3: 10.0, 7: 50.0}, wanted, 2) == [3, 7]  # slice 3 already shows left-out calcium
    assert report_slices({2: 1.0, 4: 3.0, 6: 2.0}, None, 2) == [4, 6]
    assert report_slices({2: 1.0, 4: 3.0, 6: 2.0}, [5], 3) == [4, 5, 6]  # slice 2 gives way
    assert report_slices({2: 1.0}, [5], 1) == [2]  # one place: the calcium keeps it
    assert report_slices({}, wanted, 3) == [1, 3, 5] and report_slices({}, [5, 5, 2], 6) == [2, 5]
    assert report_slices({}, wanted, None) == [3] and report_slices({}, None, 6) == []


def test_left_out_slices_name_one_slice_per_object_largest_first():
    from agatax.report import left_out_slices

    m = np.zeros((8, 10, 10), bool)
    m[1:5, 0:3, 0:3] = True  # A: 36 voxels over slices 1-4, 9 per slice: the lowest, 1
    m[3, 1, 1] = True  # (inside A already)
    m[6, 6:9, 6:9] = True  # B: 9 voxels on slice 6
    m[5, 6, 6] = m[7, 8, 8] = True  # ... and one on slices 5 and 7 (26-connected to it): 11 voxels
    m[2, 8, 0] = True  # C: 1 voxel
    m[0, 9, 9] = m[1, 9, 9] = True  # D: 2 voxels, one per slice: the lower, 0
    assert left_out_slices(m) == [1, 6, 0, 2]
    assert left_out_slices(np.zeros((3, 4, 4), bool)) == []


def test_localisation_discards_calcium_outside_the_chest_region_unless_turned_off(cohort, tmp_path):
    from agatax import localise_chest

    exam = cohort / "exams" / "case0"
    outs = {}
    for flag in ([], ["--no-localise"]):
        out = tmp_path / f"r{len(flag)}.json"
        assert main(["score", str(exam), "--weights", str(cohort / "tiny.msgpack"), "--json", str(out)] + flag) == 0
        outs[bool(flag)] = json.loads(out.read_text())
    volume = read_volume(exam)
    region = localise_chest(volume.hu, volume.spacing).region
    assert region is not None
    inside = [region[tuple(int(round(c)) for c in lesion["centroid_zyx"])] for lesion in outs[True]["lesions"]]
    assert not all(inside)  # the untrained networks call calcium outside the chest region...
    for lesion in outs[False]["lesions"]:  # ...which the default run discards
        assert region[tuple(int(round(c)) for c in lesion["centroid_zyx"])]
    assert outs[False]["agatston"] < outs[True]["agatston"]
    assert outs[False]["chest_region"]["found"] is True and "lungs" in outs[False]["chest_region"]["note"]
    assert "chest_region" not in outs[True]


def test_keep_specks_keep_in_air_and_no_adapt_noise_reach_the_pipeline(cohort, tmp_path, monkeypatch):
    """``--keep-specks``, ``--keep-in-air`` and ``--no-adapt-noise`` reach ``run_pipeline`` as ``noise_snr=None``,
    ``air_share=None`` and ``adapt_noise=False`` (by default the shipped values) and are recorded in the exam's
    options."""
    import agatax.pipeline as pipeline

    seen = []
    real = pipeline.run_pipeline
    monkeypatch.setattr(pipeline, "run_pipeline", lambda *a, **k: seen.append(k) or real(*a, **k))
    exam = cohort / "exams" / "case0"
    outs = {}
    for flags in ([], ["--keep-specks"], ["--keep-in-air"], ["--no-adapt-noise"]):
        out = tmp_path / f"r{len(seen)}.json"
        assert main(["score", str(exam), "--weights", str(cohort / "tiny.msgpack"), "--json", str(out)] + flags) == 0
        outs[tuple(flags)] = json.loads(out.read_text())
    assert [(k["noise_snr"], k["air_share"], k["adapt_noise"]) for k in seen] == [
        (pipeline.NOISE_SNR, pipeline.AIR_SHARE, True), (None, pipeline.AIR_SHARE, True),
        (pipeline.NOISE_SNR, None, True), (pipeline.NOISE_SNR, pipeline.AIR_SHARE, False)]
    for key in ("keep_specks", "keep_in_air", "adapt_noise"):
        assert key not in json.dumps(outs[()])
    assert '"keep_specks": true' in json.dumps(outs[("--keep-specks",)])
    assert '"keep_in_air": true' in json.dumps(outs[("--keep-in-air",)])
    assert '"adapt_noise": false' in json.dumps(outs[("--no-adapt-noise",)])
    # the Python one-exam helper takes the same options by name
    del seen[:]
    for option in ({"keep_specks": True}, {"keep_in_air": True}, {"adapt_noise": False}):
        assert score_exam(exam, weights=cohort / "tiny.msgpack", **option)["agatston"] >= 0
    assert [(k["noise_snr"], k["air_share"], k["adapt_noise"]) for k in seen] == [
        (None, pipeline.AIR_SHARE, True), (pipeline.NOISE_SNR, None, True), (pipeline.NOISE_SNR, pipeline.AIR_SHARE, False)]


# ------------------------------------------------------------------------ provenance, safety, interrupts


def _mask_exam(root, name, *, value=250.0, uid=None):
    """An 8-slice DICOM exam (the smallest the readers take) with one 4 x 4 lesion of ``value`` HU on slice 1,
    and its mask as .npy."""
    hu = np.full((8, 64, 64), -1000.0)
    hu[:, 2:30, 2:40] = -50.0
    hu[1, 4:8, 4:8] = value
    factory.write_series(root / name, hu, spacing=(DZ, DY, DX), thickness=DZ, series_uid=uid)
    mask = np.zeros(hu.shape, np.uint8)
    mask[1, 4:8, 4:8] = 1
    np.save(root / f"{name}.npy", mask)
    return root / name, root / f"{name}.npy"


def _agatston(value):  # 16 pixels of 0.25 mm^2, density weight of ``value``, increment 2.5 mm
    return 16 * 0.25 * (1 if value < 200 else 2 if value < 300 else 3 if value < 400 else 4) * DZ / 3


def test_rerun_with_other_options_or_another_exam_is_scored_again(tmp_path, capsys):
    exam, mask = _mask_exam(tmp_path, "exam1")
    report = tmp_path / "report"
    base = ["score", str(exam), "--mask", str(mask), "--report", str(report), "--no-png"]
    assert main(base) == 0
    assert main(base) == 0
    assert "results kept from an earlier run" in capsys.readouterr().out
    assert main(base + ["--calibration", "0.001"]) == 0
    out = capsys.readouterr().out
    assert "re-scored: --calibration changed" in out
    saved = json.loads((report / "exam1.json").read_text())
    assert saved["mass_mg"] == pytest.approx(0.001 * 16 * 250.0 * DZ * DY * DX)
    assert saved["agatax_version"] and saved["device"] and saved["weights"] is None
    # another exam with the same folder name, in another place: never the first one's result
    other, other_mask = _mask_exam(tmp_path / "elsewhere", "exam1", value=450.0)
    assert main(["score", str(other), "--mask", str(other_mask), "--report", str(report), "--no-png",
                 "--json", "-"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["agatston"] == pytest.approx(_agatston(450.0)) and result["exam_id"].startswith("exam1_")
    assert json.loads((report / "exam1.json").read_text())["agatston"] == pytest.approx(_agatston(250.0))
    # the exam's files changed: scored again
    hu = np.full((8, 64, 64), -1000.0)
    hu[:, 2:30, 2:40] = -50.0
    hu[1, 4:8, 4:8] = 350.0
    for path in sorted(exam.iterdir()):
        path.unlink()
    factory.write_series(exam, hu, spacing=(DZ, DY, DX), thickness=DZ)
    assert main(base + ["--calibration", "0.001"]) == 0
    assert "re-scored: input files changed" in capsys.readouterr().out
    assert json.loads((report / "exam1.json").read_text())["agatston"] == pytest.approx(_agatston(350.0))
    # a report made by other agatax code (here: by a version that did not record its code) is scored again
    saved = json.loads((report / "exam1.json").read_text())
    del saved["provenance"]["agatax_code"]
    (report / "exam1.json").write_text(json.dumps(saved))
    assert main(base + ["--calibration", "0.001"]) == 0
    assert "re-scored: agatax code changed" in capsys.readouterr().out
    assert main(base + ["--calibration", "0.001"]) == 0
    assert "results kept from an earlier run" in capsys.readouterr().out


def test_the_code_fingerprint_follows_the_python_sources(tmp_path):
    """source_fingerprint changes when a source's contents or name change, not for other files; the
    installed package's is the fingerprint of agatax's own folder."""
    import agatax
    from agatax.cli import code_fingerprint, source_fingerprint

    (tmp_path / "sub").mkdir()
    (tmp_path / "a.py").write_text("A = 1\n")
    (tmp_path / "sub" / "b.py").write_text("B = 2\n")
    first = source_fingerprint(tmp_path)
    (tmp_path / "notes.txt").write_text("not code")
    assert source_fingerprint(tmp_path) == first
    (tmp_path / "a.py").write_text("A = 3\n")
    second = source_fingerprint(tmp_path)
    assert second != first
    (tmp_path / "sub" / "b.py").rename(tmp_path / "sub" / "c.py")
    third = source_fingerprint(tmp_path)
    assert third not in (first, second)
    # editor locks (dangling links) and notebook checkpoints are not sources: no change, no crash
    (tmp_path / ".#a.py").symlink_to(tmp_path / "gone.py")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / ".ipynb_checkpoints" / "a-checkpoint.py").write_text("A = 4\n")
    assert source_fingerprint(tmp_path) == third
    # modules left out (the generator, training) do not count
    kept = source_fingerprint(tmp_path, leave_out=("sub/",))
    (tmp_path / "sub" / "c.py").write_text("B = 5\n")
    assert source_fingerprint(tmp_path, leave_out=("sub/",)) == kept and source_fingerprint(tmp_path) != third
    assert len(code_fingerprint()) == 16 and Path(agatax.__file__).parent.joinpath("synthetic").is_dir()


def test_same_folder_names_and_non_ascii_names_in_one_batch(cohort, tmp_path, capsys):
    import shutil

    for folder in ("a/case", "b/case", "张伟", "李娜"):
        shutil.copytree(cohort / "exams" / "case0", tmp_path / folder)
    listing = tmp_path / "list.txt"
    listing.write_text("a/case\nb/case\n张伟\n李娜\n")
    report = tmp_path / "report"
    assert main(["score", "@" + str(listing), "--weights", str(cohort / "tiny.msgpack"), "--report", str(report),
                 "--no-png", "--no-localise", "--quiet"]) == 0
    capsys.readouterr()
    rows = _rows(report / "summary.csv")
    assert set(rows) == {"a_case", "b_case", "张伟", "李娜"}
    assert {Path(r["source"]).name for r in rows.values()} == {"case", "张伟", "李娜"}
    weights = json.loads((report / "张伟.json").read_text())["weights"]
    assert weights.startswith("tiny.msgpack sha256:") and rows["李娜"]["weights"] == weights


def test_outputs_and_options_are_refused_before_any_work(exam, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    (tmp_path / "folder").mkdir()
    absent_weights = ["--weights", str(tmp_path / "absent.msgpack")]  # loading it would fail NOT_FOUND
    for extra in (["--report", str(blocker / "sub")], ["--summary", str(tmp_path / "folder")],
                  ["--json", str(tmp_path / "folder")], ["--json", str(blocker / "r.json")]):
        assert main(["score", str(exam / "dicom")] + absent_weights + extra) == 2
        _one_error_line(capsys, "OUTPUT_NOT_WRITABLE")
    for option in (["--min-pixels", "0"], ["--min-pixels", "-2"], ["--min-area-mm2", "-1"], ["--calibration", "0"],
                   ["--calibration", "-0.1"], ["--jobs", "-1"], ["--png-slices", "0"], ["--png-slices", "some"]):
        assert main(["score", str(exam / "dicom")] + absent_weights + option) == 2
        _one_error_line(capsys, "BAD_ARGUMENT")


def test_a_second_batch_into_a_busy_report_folder_is_refused(exam, tmp_path, capsys):
    report = tmp_path / "report"
    report.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from agatax._atomic import folder_lock\n"
         f"with folder_lock({str(report)!r}):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["score", str(exam / "dicom"), "--mask", str(exam / "mask.npy"), "--report", str(report)]) == 2
        _one_error_line(capsys, "REPORT_BUSY")
    finally:
        holder.kill()
        holder.wait()
    assert main(["score", str(exam / "dicom"), "--mask", str(exam / "mask.npy"), "--report", str(report),
                 "--no-png"]) == 0


def test_png_slices_all(exam, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert main(["score", str(exam / "dicom"), "--mask", str(exam / "mask.npy"), "--report", str(tmp_path),
                 "--png-slices", "1"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "dicom.png").is_file()
    assert "slice lesions: 2 " in out and "made by:   agatax " in out
    lines = [line.split() for line in out.splitlines() if line.strip().startswith(("1 ", "3 "))]
    # slice, instance number (the factory numbers slices 1.. up the z axis), z of the slice centre
    assert [(int(l[0]), int(l[1]), float(l[2])) for l in lines] == [(1, 2, pytest.approx(100.0 + DZ)),
                                                                   (3, 4, pytest.approx(100.0 + 3 * DZ))]


REPO = Path(__file__).resolve().parents[1]


def _agatax(args, *, seconds_per_exam=0.0, **kw):
    """``agatax ARGS`` in a subprocess; ``seconds_per_exam`` slows each exam's scoring down, so that a test
    can interrupt a batch in its middle however fast or loaded the machine is."""
    import os

    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "agatax"] + args
    if seconds_per_exam:
        command = [sys.executable, "-c", (
            "import sys, time\nfrom agatax import cli\nscore = cli.ExamScorer.score\n"
            f"cli.ExamScorer.score = lambda self, v: (time.sleep({seconds_per_exam}), score(self, v))[1]\n"
            f"sys.exit(cli.main({args!r}))\n")]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kw)


def _wait_for(condition, proc, timeout=120.0):
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.fixture
def four_exams(cohort, tmp_path):
    import shutil

    for k in range(6):
        shutil.copytree(cohort / "exams" / f"case{k % 2}", tmp_path / "exams" / f"e{k}")
    return tmp_path / "exams"


def _interrupt(args, when):
    import signal

    proc = _agatax(args, seconds_per_exam=1.0)
    _wait_for(lambda: when(), proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def test_ctrl_c_early_or_mid_batch_stops_cleanly_and_a_rerun_finishes(cohort, four_exams, tmp_path):
    report = tmp_path / "report"
    args = ["score", str(four_exams), "--weights", str(cohort / "tiny.msgpack"), "--report", str(report),
            "--no-png", "--no-localise"]
    lock = report / ".agatax.lock"
    code, out, err = _interrupt(args, lambda: lock.is_file() and lock.read_text().strip())  # before any exam
    assert code == 130 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]  # the exams may not all be found yet: "0 of ?"
    assert last in [f"interrupted: 0 of {n} exams scored; re-run the same command to continue" for n in "6?"]
    rows = lambda: _rows(report / "summary.csv") if (report / "summary.csv").is_file() else {}
    code, out, err = _interrupt(args, lambda: len(rows()) >= 1)  # mid-batch
    assert code == 130 and "Traceback" not in err, err
    done = int(err.strip().splitlines()[-1].split()[1])
    assert 1 <= done < 6 and len(rows()) == done
    proc = _agatax(args)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    ids = [f"e{k}" for k in range(6)]
    assert f"{done} kept from an earlier run" in err and set(rows()) == set(ids)
    assert all(r["status"] == "ok" for r in rows().values())
    # an interrupted --overwrite re-run keeps every exam's row in the summary, and leaves no temporary file
    before = (report / "e0.json").stat().st_mtime_ns
    code, out, err = _interrupt(args + ["--overwrite"], lambda: (report / "e0.json").is_file()
                                and (report / "e0.json").stat().st_mtime_ns != before)
    assert code == 130 and "Traceback" not in err, err
    assert set(rows()) == set(ids) and all(r["status"] == "ok" for r in rows().values())
    assert not [p for p in report.iterdir() if p.name.endswith(".tmp")]


def test_a_kill_mid_write_leaves_no_stale_marker_and_the_next_run_cleans_up(exam, tmp_path, capsys):
    report = tmp_path / "report"
    args = ["score", str(exam / "dicom"), "--mask", str(exam / "mask.npy"), "--report", str(report), "--no-png"]
    assert main(args) == 0
    capsys.readouterr()
    old_mask = (report / "dicom_mask.nii.gz").read_bytes()
    # an --overwrite re-run killed (SIGKILL) while the first report file is being written to disk
    script = ("import os, signal\nos.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)\n"
              f"from agatax.cli import main\nmain({args + ['--overwrite', '--calibration', '0.002']!r})\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=dict(__import__("os").environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == -9
    assert not (report / "dicom.json").exists()  # no complete-marker beside files of another run
    assert (report / "dicom_mask.nii.gz").read_bytes() == old_mask  # never a partial mask
    stale = [p.name for p in report.iterdir() if p.name.endswith(".tmp")]
    assert len(stale) == 1 and stale[0].startswith(".dicom_mask.nii.gz.")
    assert main(args) == 0  # not kept: the report was incomplete
    assert "results kept from an earlier run" not in capsys.readouterr().out
    assert not [p for p in report.iterdir() if p.name.endswith(".tmp")]
    assert (report / "dicom.json").is_file()


def test_example_commands_point_at_its_own_folders_and_foreign_files_are_refused(tmp_path, capsys):
    cohort_dir = tmp_path / "cohort"
    assert main(["example", str(cohort_dir), "--count", "2", "--matrix", "64", "--category", "any"]) == 0
    printed = capsys.readouterr().out
    assert f"agatax score {cohort_dir} --report {tmp_path / 'cohort-report'}\n" in printed
    assert f"agatax evaluate {tmp_path / 'cohort-report'} {cohort_dir / 'manifest.csv'} --lesions" in printed
    assert main(["example", str(cohort_dir), "--count", "2", "--matrix", "64", "--category", "any"]) == 0  # same
    capsys.readouterr()
    # a user's own files: refused, never deleted
    mine = tmp_path / "mine"
    (mine / "example_0").mkdir(parents=True)
    (mine / "example_0" / "scan.dcm").write_bytes(b"my slice")
    (mine / "manifest.csv").write_text("my,table\n")
    assert main(["example", str(mine), "--matrix", "64"]) == 2
    _one_error_line(capsys, "OUTPUT_EXISTS")
    assert (mine / "example_0" / "scan.dcm").read_bytes() == b"my slice"
    assert (mine / "manifest.csv").read_text() == "my,table\n"
    # other arguments over an earlier example: refused too, allowed with --overwrite
    assert main(["example", str(cohort_dir), "--seed", "1", "--matrix", "64"]) == 2
    _one_error_line(capsys, "OUTPUT_EXISTS")
    assert main(["example", str(mine), "--matrix", "64", "--overwrite"]) == 0
    assert (mine / "example_0" / "scan.dcm").read_bytes() == b"my slice"  # replaced files only, none deleted


@pytest.mark.parametrize("path", ["", "  ", "@"])
def test_an_empty_exam_path_is_refused_not_the_current_folder_scanned(path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # an empty path must not mean this folder
    assert main(["score", path, "--no-png"]) == 2
    assert "error [BAD_PATH]" in capsys.readouterr().err


def test_a_phantom_is_refused_with_its_code_unless_allowed(tmp_path, capsys):
    """A water cylinder with a dense insert (its section repeats along z): exit 2 and one PHANTOM line;
    --allow-phantom scores it with the phantom warning; a mask of its insert is scored without networks."""
    z, y, x = np.mgrid[0:20, 0:96, 0:96]
    hu = np.where(np.hypot(y - 48, x - 48) < 40, 20.0, -1000.0)
    hu[8:11, 30:33, 40:43] = 450.0
    factory.write_series(tmp_path / "phantom", hu, spacing=(3.0, 1.0, 1.0), thickness=3.0, series_uid="1.2.3.9")
    assert main(["score", str(tmp_path / "phantom"), "--no-server"]) == 2
    _one_error_line(capsys, "PHANTOM")
    assert main(["score", str(tmp_path / "phantom"), "--no-server", "--allow-phantom", "--json", "-"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert any(w.startswith("phantom:") for w in result["warnings"])
    assert "WARNING-PHANTOM" in {warning_code(w)[0] for w in result["warnings"]}  # the SR's code for it
    np.save(tmp_path / "insert.npy", (hu >= 130).astype(np.uint8))
    assert main(["score", str(tmp_path / "phantom"), "--no-server", "--mask", str(tmp_path / "insert.npy"),
                 "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["agatston"] > 0


def test_an_exam_far_noisier_than_the_training_is_refused_with_its_code_unless_allowed(cohort, tmp_path, capsys):
    """Soft tissue with 120 HU of noise (a sharp kernel's): exit 2 and one TOO_NOISY line; --allow-noisy scores it,
    records the option and carries the noise warning."""
    rng = np.random.default_rng(3)
    z, y, x = np.mgrid[0:16, 0:96, 0:96]
    hu = np.where(np.hypot(y - 48, x - 48) < 40, 40.0, -1000.0) + rng.normal(0, 120.0, (16, 96, 96))
    factory.write_series(tmp_path / "batch" / "sharp", np.round(hu), spacing=(3.0, 0.7, 0.7), thickness=3.0,
                         series_uid="1.2.3.8")
    args = ["score", str(tmp_path / "batch" / "sharp"), "--no-server", "--no-localise", "--weights",
            str(cohort / "tiny.msgpack")]
    assert main(args) == 2
    _one_error_line(capsys, "TOO_NOISY")
    # in a batch: the exam's line names the code and the way out, and the batch exits "some failed"
    assert main(["score", str(tmp_path / "batch"), "--no-server", "--no-localise", "--no-png", "--weights",
                 str(cohort / "tiny.msgpack"), "--report", str(tmp_path / "out")]) == 3
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("sharp  FAILED"))
    assert "[TOO_NOISY]" in line and "(hint: " in line and "--allow-noisy" in line
    assert main(args + ["--allow-noisy", "--json", "-"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["noise_hu"] > 100 and any(w.startswith("image noise") for w in result["warnings"])
    assert "WARNING-TOO-NOISY" in {warning_code(w)[0] for w in result["warnings"]}  # the SR's code for it
    assert '"allow_noisy": true' in json.dumps(result)


def test_a_bone_or_lung_kernel_is_refused_with_its_code_unless_allowed(cohort, tmp_path, capsys):
    """A series whose header names GE's LUNG kernel: exit 2 and one SHARP_KERNEL line naming the way out;
    --allow-sharp-kernel scores it (exit 0) with the warning that says so (the SR's WARNING-KERNEL) and records
    the option; a given mask is scored with the milder warning, not refused; DETAIL is scored, warned."""
    rng = np.random.default_rng(6)
    z, y, x = np.mgrid[0:8, 0:64, 0:64]
    hu = np.where(np.hypot(y - 32, x - 32) < 28, 40.0, -1000.0) + rng.normal(0, 15.0, (8, 64, 64))
    hu[3:5, 30:33, 30:33] = 400.0
    factory.write_series(tmp_path / "lung", np.round(hu), spacing=(3.0, 0.7, 0.7), thickness=3.0, kernel="LUNG",
                         manufacturer="GE MEDICAL SYSTEMS")
    factory.write_series(tmp_path / "detail", np.round(hu), spacing=(3.0, 0.7, 0.7), thickness=3.0, kernel="DETAIL")
    args = ["score", str(tmp_path / "lung"), "--no-server", "--no-localise", "--weights", str(cohort / "tiny.msgpack")]
    assert main(args) == 2
    _one_error_line(capsys, "SHARP_KERNEL")
    assert main(args + ["--allow-sharp-kernel", "--json", "-"]) == 0
    result = json.loads(capsys.readouterr().out)
    (warned,) = [w for w in result["warnings"] if w.startswith("sharp kernel")]
    assert warned.startswith("sharp kernel, scored on request: reconstructed with LUNG,")
    assert warning_code(warned)[0] == "WARNING-SHARP-KERNEL"
    assert '"allow_sharp_kernel": true' in json.dumps(result)
    np.save(tmp_path / "mask.npy", (hu >= 130).astype(np.uint8))
    assert main(["score", str(tmp_path / "lung"), "--no-server", "--mask", str(tmp_path / "mask.npy"),
                 "--json", "-"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["agatston"] > 0
    assert [w.split(",")[0] for w in result["warnings"] if w.startswith("sharp kernel")] == [
        "sharp kernel: reconstructed with LUNG"]
    assert main(["score", str(tmp_path / "detail"), "--no-server", "--no-localise", "--weights",
                 str(cohort / "tiny.msgpack"), "--json", "-"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [w.split(",")[0] for w in result["warnings"] if w.startswith("sharp kernel")] == [
        "sharp kernel: reconstructed with DETAIL"]


def test_a_rerun_without_an_allow_option_is_refused_and_sets_the_earlier_report_aside(cohort, tmp_path, capsys):
    """A LUNG-kernel exam scored into a report folder with --allow-sharp-kernel, then the same command without
    it: the earlier report is not kept (the option it was made with counts, though the new run does not
    give it); the exam is refused (SHARP_KERNEL) and its earlier report files are moved to
    superseded/<id>, none left in the folder as if current, none deleted."""
    rng = np.random.default_rng(7)
    z, y, x = np.mgrid[0:8, 0:64, 0:64]
    hu = np.where(np.hypot(y - 32, x - 32) < 28, 40.0, -1000.0) + rng.normal(0, 15.0, (8, 64, 64))
    factory.write_series(tmp_path / "batch" / "lung", np.round(hu), spacing=(3.0, 0.7, 0.7), thickness=3.0,
                         kernel="LUNG", manufacturer="GE MEDICAL SYSTEMS")
    report = tmp_path / "report"
    args = ["score", str(tmp_path / "batch"), "--no-server", "--no-localise", "--no-png", "--weights",
            str(cohort / "tiny.msgpack"), "--report", str(report)]
    assert main(args + ["--allow-sharp-kernel"]) == 0
    made = sorted(p.name for p in report.glob("lung*"))
    assert "lung.json" in made
    capsys.readouterr()
    assert main(args) == 3
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("lung  FAILED"))
    assert "[SHARP_KERNEL]" in line and "superseded" in line
    assert not list(report.glob("lung*"))
    (moved,) = (report / "superseded" / "lung").iterdir()  # one folder per set-aside, named by its UTC time
    assert sorted(p.name for p in moved.iterdir()) == made
    assert main(args + ["--allow-sharp-kernel"]) == 0  # scored again on request; the set-aside copy stays
    assert (report / "lung.json").is_file() and (moved / "lung.json").is_file()
    # the source not there now (an unmounted share): not a verdict on the exam, its report stays in place
    renamed = tmp_path / "batch" / "lung-away"
    (tmp_path / "batch" / "lung").rename(renamed)
    assert main(["score", str(tmp_path / "batch" / "lung"), "--no-server", "--no-localise", "--no-png", "--weights",
                 str(cohort / "tiny.msgpack"), "--report", str(report), "--allow-sharp-kernel"]) == 2
    assert (report / "lung.json").is_file() and len(list((report / "superseded" / "lung").iterdir())) == 1


def test_the_result_names_the_reconstruction_kernel_and_tube_voltage(exam, tmp_path, capsys):
    """The JSON carries the DICOM ConvolutionKernel and KVP the factory wrote (FC12, 120) and the text report a
    ``scan:`` line with them; a NIfTI of the same exam has neither (null, no line)."""
    from agatax.cli import format_report

    assert main(["score", str(exam / "dicom"), "--mask", str(exam / "mask.npy"), "--json", "-"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["reconstruction_kernel"] == "FC12" and result["kvp"] == 120.0
    assert "scan:      kernel FC12, 120 kVp" in format_report(result).splitlines()
    write_nifti(tmp_path / "exam.nii.gz", read_volume(exam / "dicom"))
    assert main(["score", str(tmp_path / "exam.nii.gz"), "--mask", str(exam / "mask.npy"), "--json", "-"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["reconstruction_kernel"] is None and result["kvp"] is None
    assert not any(line.startswith("scan:") for line in format_report(result).splitlines())


def test_report_names_the_noise_the_ensemble_was_trained_on(exam, capsys):
    """The noise line of the text report names the scoring ensemble's training range (JSON
    ``trained_noise_hu``), not a fixed one."""
    from agatax.cli import format_report

    assert main(["score", str(exam / "dicom"), "--mask", str(exam / "mask.npy"), "--json", "-"]) == 0
    result = json.loads(capsys.readouterr().out)
    for trained, shown in (([10.0, 55.0], "10-55 HU"), (None, "10-40 HU")):
        text = format_report({**result, "noise_hu": 30.0, "trained_noise_hu": trained})
        assert f"trained on {shown}" in text


def test_score_json_carries_the_category_range_of_one_vote(cohort, tmp_path):
    """The JSON's ``category_range`` against the object vote (scipy, one object at a time) with every
    candidate's vote one lower and one higher, the pipeline's dense line at both ends and, at the low end,
    no scored object as dense as a stent, on the votes of the same exam (the untrained 3-network ensemble,
    no localisation: its votes split on bone); the summary row names both ends."""
    from ensembles import object_majority_oracle
    from scipy import ndimage

    from agatax import load_ensemble, run_pipeline
    from agatax.pipeline import DENSE_HU, DENSE_VOTE

    exam, weights = cohort / "exams" / "case0", cohort / "tiny.msgpack"
    assert main(["score", str(exam), "--report", str(tmp_path), "--no-png", "--no-localise",
                 "--weights", str(weights)]) == 0
    result = json.loads((tmp_path / "case0.json").read_text())
    volume = read_volume(exam)
    res = run_pipeline(load_ensemble(weights), volume, localise=False)
    scored = read_mask(tmp_path / "case0_mask.nii.gz", like=volume) > 0
    assert np.array_equal(scored, res.mask)  # the votes below are the CLI's
    cand = volume.hu >= 130
    votes = res.votes.astype(np.int64)
    low, high = (object_majority_oracle(np.where(cand, votes + d, 0), cand, 3, hu=volume.hu, dense_vote=DENSE_VOTE)
                 for d in (-1, 1))
    lab, n = ndimage.label(res.mask, structure=np.ones((3, 3, 3), bool))
    low &= ~np.isin(lab, [k for k in range(1, n + 1) if volume.hu[lab == k].max() >= DENSE_HU])
    ends = [compute_scores(volume.hu, m, volume.spacing) for m in (low, high)]
    got = result["category_range"]
    assert got["low"] == {"agatston": round(ends[0].agatston, 4), "category": ends[0].category}
    assert got["high"] == {"agatston": round(ends[1].agatston, 4), "category": ends[1].category}
    assert got["uncertain"] == (ends[0].category != ends[1].category)
    assert ends[0].agatston < result["agatston"] <= ends[1].agatston  # not vacuous: objects in doubt downward
    row = _rows(tmp_path / "summary.csv")["case0"]
    assert (row["category_low"], row["category_high"]) == (ends[0].category, ends[1].category)
    # upward, not vacuous: without the dense line (this exam's bone peaks in its band, so with it every object
    # is scored already) objects come in at one vote more
    plain = run_pipeline(load_ensemble(weights), volume, localise=False, dense_vote=None)
    plain_high = object_majority_oracle(np.where(cand, plain.votes.astype(np.int64) + 1, 0), cand, 3)
    assert plain.category_range.high_agatston == pytest.approx(
        compute_scores(volume.hu, plain_high, volume.spacing).agatston, rel=1e-9)
    assert plain.category_range.high_agatston > plain.scores.agatston


def test_text_report_shows_the_range_only_when_it_spans_categories(exam, capsys):
    from agatax.cli import format_report

    assert main(["score", str(exam / "dicom"), "--mask", str(exam / "mask.npy"), "--json", "-"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert "category_range" not in result  # a given mask has no votes
    doubt = {"low": {"agatston": 8.0, "category": "B"}, "high": {"agatston": 119.0, "category": "D"},
             "uncertain": True, "objects_in_doubt": 2}
    assert "range:     B (8.0) to D (119.0): 2 object(s) in doubt" in format_report(
        {**result, "category_range": doubt})
    same = {**doubt, "high": {"agatston": 9.0, "category": "B"}, "uncertain": False}
    assert "range:" not in format_report({**result, "category_range": same})


def test_assume_non_contrast_scores_an_exam_the_contrast_check_refuses(cohort, tmp_path, capsys):
    """An exam with blood at +250 HU is refused (CONTRAST_ENHANCED, exit 2, the hint names the option);
    --assume-non-contrast scores it, says so in a warning and records the option in the provenance."""
    from agatax.synthetic import TISSUES, generate_exam

    ex = generate_exam(5, target_category="E", protocol="cardiac", matrix=128, padding_hu=None, keep_tissue=True)
    hu = ex.volume.hu.copy()
    hu[ex.tissue == TISSUES["blood"]] += 250.0
    hu[ex.tissue == TISSUES["myocardium"]] += 80.0
    path = tmp_path / "enhanced.nii.gz"
    write_nifti(path, hu, like=ex.volume)
    args = ["score", str(path), "--weights", str(cohort / "tiny.msgpack"), "--json", "-"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "CONTRAST_ENHANCED" in err and "--assume-non-contrast" in err
    assert main(args + ["--assume-non-contrast"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert any(w.startswith("contrast: the mediastinum reads") for w in result["warnings"])
    assert "WARNING-CONTRAST" in {warning_code(w)[0] for w in result["warnings"]}  # the SR's code for it
    assert result["provenance"]["options"]["assume_non_contrast"] is True
    assert result["chest_region"]["found"]
