"""The command line: scoring a generated series with a planted mask, JSON output, one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dicom_factory as factory
from agatax import read_volume, write_nifti
from agatax.cli import main, score_exam

DZ, DY, DX = 2.5, 0.5, 0.5


@pytest.fixture(scope="module")
def exam(tmp_path_factory):
    """A 5-slice series with two planted lesions, and their mask as .npy and NIfTI.

    Slice 1: a 4 x 4 square at 250 HU (weight 2), slice 3: a 3 x 3 square peaking at 450 HU (weight 4).
    Agatston = (16 * 0.25 mm^2 * 2 + 9 * 0.25 mm^2 * 4) * 2.5 / 3 = 17 * 2.5 / 3.
    """
    root = tmp_path_factory.mktemp("exam")
    hu = np.full((5, 16, 20), -50.0)
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
    assert "lesions:   2" in out and "1.2.3.4.5" in out


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


def test_python_dash_m_bad_path_exits_nonzero_without_traceback(tmp_path):
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "agatax", "score", str(tmp_path / "nothing"), "--mask", "m.npy"],
                          capture_output=True, text=True, cwd=root, timeout=120)
    assert proc.returncode == 2
    assert "error [NOT_FOUND]" in proc.stderr and "Traceback" not in proc.stderr


def test_score_a_nifti_exam(exam, tmp_path, capsys):
    volume = read_volume(exam / "dicom")
    write_nifti(tmp_path / "ct.nii.gz", volume)
    assert main(["score", str(tmp_path / "ct.nii.gz"), "--mask", str(exam / "mask.nii.gz"), "--json", "-"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["agatston"] == pytest.approx(EXPECTED_AGATSTON, rel=1e-6)
