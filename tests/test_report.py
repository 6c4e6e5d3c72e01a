"""Per-exam report files and the batch summary, checked against hand-computed lesions and votes."""

import csv
import json
import sys

import numpy as np
import pytest

import agatax
from agatax import AgataxError, InputError, ReadError, Volume
from agatax.evaluate import read_score_table
from agatax.report import (
    exam_summary_row,
    lesion_regions,
    report_paths,
    require_matplotlib,
    summary_row_from_report,
    write_report,
    write_summary_csv,
)
from agatax.scoring import compute_scores

SPACING = (3.0, 0.5, 0.6)  # dz, dy, dx mm
L1 = (1, slice(10, 12), slice(12, 15))  # 2 x 3 pixels, peak 250 HU: weight 2
L2 = (3, slice(20, 23), slice(30, 33))  # 3 x 3 pixels, peak 450 HU: weight 4
SMALL = (3, slice(5, 6), slice(5, 7))  # 2 pixels: below the 3-pixel minimum, not a lesion
# Agatston (hand): L1 6 px * 0.3 mm^2 * 2 * 3/3 = 3.6; L2 9 * 0.3 * 4 = 10.8; total 14.4 -> category C.


def _exam(*, thickness=3.0, increment=3.0):
    hu = np.full((5, 40, 48), -1000.0, np.float32)
    yy, xx = np.mgrid[0:40, 0:48]
    body = ((yy - 20) / 19) ** 2 + ((xx - 24) / 23) ** 2 < 1
    hu[:, body] = 40.0
    mask = np.zeros(hu.shape, np.uint8)
    hu[L1] = 180.0
    hu[L1[0], 11, 14] = 250.0
    mask[L1] = 2  # LAD
    hu[L2] = 200.0
    hu[L2[0], 21, 31] = 450.0
    mask[L2] = 4  # RCA
    hu[SMALL] = 300.0
    mask[SMALL] = 1
    volume = Volume(
        hu,
        (increment, SPACING[1], SPACING[2]),
        slice_thickness=thickness,
        metadata={"series_uid": "1.2.3.4"},
        source="/data/exam_17.nii.gz",
    )
    return volume, mask


def _votes(mask):
    votes = np.where(mask > 0, 5, 0).astype(np.int32)
    votes[L1] = np.array([[5, 5, 4], [4, 3, 3]])  # mean 24 / 6 = 4 of 5 -> vote fraction 0.8
    return votes


def test_lesion_regions_are_the_hand_placed_blocks():
    volume, mask = _exam()
    scores = compute_scores(volume.hu, mask, volume.spacing)
    regions = lesion_regions(volume.hu, mask, scores.lesions)
    by_slice = {lesion.slice: region for lesion, region in zip(scores.lesions, regions)}
    for z, rows, cols in (L1, L2):
        expected = np.zeros(mask.shape[1:], bool)
        expected[rows, cols] = True
        got = np.zeros(mask.shape[1:], bool)
        got[by_slice[z]] = True
        assert len(by_slice[z][0]) == expected.sum()
        np.testing.assert_array_equal(got, expected)


def test_write_report_files_and_contents(tmp_path):
    volume, mask = _exam()
    scores = compute_scores(volume.hu, mask, volume.spacing)
    paths = write_report(tmp_path / "out", volume, scores, mask, votes=_votes(mask), members=5)
    assert {k: p.name for k, p in paths.items()} == {
        "json": "exam_17.json",
        "csv": "exam_17_lesions.csv",
        "mask": "exam_17_mask.nii.gz",
        "png": "exam_17.png",
    }
    data = json.loads(paths["json"].read_text())
    assert data["exam_id"] == "exam_17"
    assert data["agatston"] == pytest.approx(14.4)
    assert data["category"] == "C"
    assert data["volume_mm3"] == pytest.approx(15 * 3.0 * 0.5 * 0.6)
    assert data["spacing_mm"] == [3.0, 0.5, 0.6] and data["slice_thickness_mm"] == 3.0
    assert data["series_uid"] == "1.2.3.4" and data["source"] == "/data/exam_17.nii.gz"
    assert data["members"] == 5 and data["warnings"] == []
    lesions = sorted(data["lesions"], key=lambda d: d["slice"])
    assert [(d["slice"], d["artery"], d["weight"]) for d in lesions] == [(1, "LAD", 2), (3, "RCA", 4)]
    assert [d["agatston"] for d in lesions] == pytest.approx([3.6, 10.8])
    assert [d["vote_fraction"] for d in lesions] == pytest.approx([0.8, 1.0])
    assert data["per_artery"]["LAD"]["agatston"] == pytest.approx(3.6)
    assert data["per_artery"]["RCA"]["agatston"] == pytest.approx(10.8)

    with open(paths["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    assert {"exam_id", "lesion", "slice", "agatston", "centroid_z", "centroid_y", "centroid_x", "vote_fraction"} <= set(rows[0])
    by_slice = {int(r["slice"]): r for r in rows}
    assert float(by_slice[1]["centroid_y"]) == pytest.approx(10.5)
    assert float(by_slice[3]["centroid_x"]) == pytest.approx(31.0)
    assert float(by_slice[1]["vote_fraction"]) == pytest.approx(0.8)

    np.testing.assert_array_equal(agatax.read_mask(paths["mask"], like=volume), mask)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "out").glob("*.tmp*"))


def test_exam_without_calcium_and_overlapping_slices(tmp_path):
    volume, _ = _exam(thickness=3.0, increment=1.5)
    empty = np.zeros(volume.shape, np.uint8)
    scores = compute_scores(volume.hu, empty, volume.spacing)
    paths = write_report(tmp_path, volume, scores, empty, exam_id="no calcium/1")
    assert paths["json"].name == "no_calcium_1.json"
    data = json.loads(paths["json"].read_text())
    assert data["agatston"] == 0 and data["category"] == "A" and data["lesions"] == []
    assert any("overlapping" in w for w in data["warnings"])
    assert paths["csv"].read_text().strip() == "exam_id,lesion"
    assert paths["png"].stat().st_size > 0


def test_bad_votes_and_shapes_are_refused(tmp_path):
    volume, mask = _exam()
    scores = compute_scores(volume.hu, mask, volume.spacing)
    with pytest.raises(InputError, match="members"):
        write_report(tmp_path, volume, scores, mask, votes=_votes(mask), png=False)
    with pytest.raises(InputError, match="0..5"):
        write_report(tmp_path, volume, scores, mask, votes=_votes(mask) + 3, members=5, png=False)
    with pytest.raises(InputError) as info:
        write_report(tmp_path, volume, scores, mask[:, :-1], png=False)
    assert info.value.code == "SHAPE_MISMATCH"


def test_missing_matplotlib_names_the_extra(tmp_path, monkeypatch):
    volume, mask = _exam()
    scores = compute_scores(volume.hu, mask, volume.spacing)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if not installed
    with pytest.raises(AgataxError) as info:
        require_matplotlib()
    assert info.value.code == "MISSING_DEPENDENCY" and 'pip install "agatax[report]"' in str(info.value)
    with pytest.raises(AgataxError, match="agatax\\[report\\]"):
        write_report(tmp_path / "r", volume, scores, mask)
    assert not (tmp_path / "r").exists() or not list((tmp_path / "r").iterdir())
    assert set(write_report(tmp_path / "r", volume, scores, mask, png=False)) == {"json", "csv", "mask"}


def test_summary_csv_keeps_failures_and_reads_back_as_scores(tmp_path):
    volume, mask = _exam()
    scores = compute_scores(volume.hu, mask, volume.spacing)
    rows = [
        exam_summary_row("exam_17", scores, volume=volume, seconds=1.23456, paths={"json": tmp_path / "exam_17.json"}),
        exam_summary_row("bad", error=ReadError("3 slices missing", code="MISSING_SLICES", hint="allow_gaps=True")),
        exam_summary_row("worse", error=RuntimeError("out of memory")),
    ]
    path = write_summary_csv(tmp_path / "batch" / "summary.csv", rows)
    with open(path, newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["status"] for r in table] == ["ok", "failed", "failed"]
    assert table[0]["category"] == "C" and float(table[0]["agatston"]) == pytest.approx(14.4)
    assert float(table[0]["agatston_RCA"]) == pytest.approx(10.8) and float(table[0]["agatston_LM"]) == 0.0
    assert table[0]["shape"] == "5x40x48" and table[0]["seconds"] == "1.235"
    assert table[1]["error_code"] == "MISSING_SLICES" and "3 slices missing" in table[1]["error_message"]
    assert "allow_gaps=True" in table[1]["error_message"]
    assert table[2]["error_code"] == "RuntimeError" and table[2]["agatston"] == ""
    assert read_score_table(path) == {"exam_17": pytest.approx(14.4)}


def test_a_folder_of_reports_reads_as_a_score_table(tmp_path):
    volume, mask = _exam()
    scores = compute_scores(volume.hu, mask, volume.spacing)
    write_report(tmp_path, volume, scores, mask, exam_id="a", png=False)
    only_l2 = mask.copy()
    only_l2[L1] = 0
    write_report(tmp_path, volume, compute_scores(volume.hu, only_l2, volume.spacing), only_l2, exam_id="b", png=False)
    (tmp_path / "notes.json").write_text('{"unrelated": 1}')
    assert read_score_table(tmp_path) == {"a": pytest.approx(14.4), "b": pytest.approx(10.8)}


def test_summary_row_rebuilt_from_a_written_report(tmp_path):
    volume, mask = _exam()
    scores = compute_scores(volume.hu, mask, volume.spacing)
    assert not report_paths(tmp_path, "exam_17")["json"].exists()
    paths = write_report(tmp_path, volume, scores, mask, png=False)
    assert paths == report_paths(tmp_path, "exam_17", png=False) and paths["json"].exists()
    fresh = exam_summary_row("exam_17", scores, volume=volume, paths=paths)
    rebuilt = summary_row_from_report(paths["json"])
    assert set(rebuilt) == set(fresh)
    for key, value in fresh.items():
        assert rebuilt[key] == (pytest.approx(value) if isinstance(value, float) else value), key
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ReadError) as info:
        summary_row_from_report(tmp_path / "broken.json")
    assert info.value.code == "BAD_REPORT"


def test_outline_follows_pixel_edges():
    from agatax.report import _outline_segments

    # An L of three pixels: (0, 0), (1, 0), (1, 1) as (row, col); its boundary has 8 unit edges.
    segs = _outline_segments((np.array([0, 1, 1]), np.array([0, 0, 1])))
    edges = {tuple(sorted(map(tuple, seg.tolist()))) for seg in segs}
    expected = {  # (x, y) end points on pixel corners at half-integers
        ((-0.5, -0.5), (0.5, -0.5)), ((-0.5, -0.5), (-0.5, 0.5)), ((0.5, -0.5), (0.5, 0.5)),
        ((0.5, 0.5), (1.5, 0.5)), ((1.5, 0.5), (1.5, 1.5)), ((0.5, 1.5), (1.5, 1.5)),
        ((-0.5, 1.5), (0.5, 1.5)), ((-0.5, 0.5), (-0.5, 1.5)),
    }
    assert len(segs) == 8 and edges == expected


def test_lesions_carry_instance_number_and_patient_z(tmp_path):
    import dicom_factory as factory

    volume, mask = _exam()
    # instance numbers count down the z axis (as many scanners do) and file names are unrelated to z
    factory.write_series(tmp_path / "dicom", volume.hu, spacing=(3.0, 0.5, 0.6), origin=(-10.0, -20.0, 100.0),
                         instance_numbers=[5, 4, 3, 2, 1], names=["e", "b", "d", "a", "c"])
    dicom = agatax.read_volume(tmp_path / "dicom", allow_small=True)  # a small grid
    data = agatax.report.report_dict(dicom, compute_scores(dicom.hu, mask, dicom.spacing))
    got = sorted((d["slice"], d["instance_number"], d["z_mm"]) for d in data["lesions"])
    assert got == [(1, 4, pytest.approx(103.0)), (3, 2, pytest.approx(109.0))]
    nifti = agatax.report.report_dict(volume, compute_scores(volume.hu, mask, volume.spacing))
    assert [d["instance_number"] for d in nifti["lesions"]] == [None, None]


def test_report_files_never_write_through_symlinks(tmp_path):
    volume, mask = _exam()
    scores = compute_scores(volume.hu, mask, volume.spacing)
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    for name in ("exam_17_mask.nii.gz", "exam_17_lesions.csv", "exam_17.json", "exam_17.png"):
        (outside / name).write_bytes(b"precious")
        (out / name).symlink_to(outside / name)
    write_report(out, volume, scores, mask)
    assert all(p.read_bytes() == b"precious" for p in outside.iterdir())
    assert not any(p.is_symlink() for p in out.iterdir())
    np.testing.assert_array_equal(agatax.read_mask(out / "exam_17_mask.nii.gz", like=volume), mask)


def test_a_failure_between_files_leaves_no_old_json_beside_new_files(tmp_path, monkeypatch):
    volume, mask = _exam()
    scores = compute_scores(volume.hu, mask, volume.spacing)
    paths = write_report(tmp_path, volume, scores, mask, png=False)
    old_mask = paths["mask"].read_bytes()
    empty = np.zeros_like(mask)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(agatax.report, "_write_csv", broken)
    with pytest.raises(OSError):
        write_report(tmp_path, volume, compute_scores(volume.hu, empty, volume.spacing), empty, png=False)
    assert not paths["json"].exists()  # the old complete-marker went first
    assert paths["mask"].read_bytes() != old_mask  # the new mask, whole
    np.testing.assert_array_equal(agatax.read_mask(paths["mask"], like=volume), empty)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exam_17_lesions.csv", "exam_17_mask.nii.gz"]


def test_png_shows_all_slices_on_request_and_says_how_many(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    titles, panels = [], []
    real_suptitle, real_add = Figure.suptitle, Figure.add_subplot
    monkeypatch.setattr(Figure, "suptitle", lambda self, text, **kw: titles.append(text) or real_suptitle(self, text, **kw))
    monkeypatch.setattr(Figure, "add_subplot", lambda self, *a, **kw: panels.append(a) or real_add(self, *a, **kw))
    volume, mask = _exam()
    scores = compute_scores(volume.hu, mask, volume.spacing)  # calcium on slices 1 and 3
    write_report(tmp_path, volume, scores, mask, max_slices=1)
    assert len(panels) == 1 and "showing 1 of 2 calcium slices" in titles[-1] and "2 slice lesions" in titles[-1]
    panels.clear()
    write_report(tmp_path, volume, scores, mask, max_slices=None)
    assert len(panels) == 2 and "showing all 2 calcium slices" in titles[-1]
    left_out = np.zeros(volume.shape, bool)
    left_out[4, 20:23, 20:23] = True  # calcium left out on slice 4
    panels.clear()
    write_report(tmp_path, volume, scores, mask, max_slices=2, left_out=left_out)
    assert len(panels) == 2 and "showing 1 of 2 calcium slices" in titles[-1] and "1 slice of calcium not scored" in titles[-1]
    empty = np.zeros(volume.shape, bool)
    nothing = compute_scores(volume.hu, empty, volume.spacing)
    for given in (None, empty):  # no calcium, nothing left out: the middle slice, no word of calcium left out
        panels.clear()
        write_report(tmp_path, volume, nothing, empty, left_out=given)
        assert len(panels) == 1 and titles[-1].endswith("no calcium found")
    doubt = {"low": {"agatston": 0.0, "category": "A"}, "high": {"agatston": 12.0, "category": "C"},
             "uncertain": True}
    write_report(tmp_path, volume, scores, mask, extra={"category_range": doubt})
    assert "category C (uncertain: A to C, see the report's warning)" in titles[-1]
    write_report(tmp_path, volume, scores, mask, extra={"category_range": {**doubt, "uncertain": False}})
    assert "uncertain" not in titles[-1] and "rests on" not in titles[-1]
    warned = ["beside metal: 1 scored object(s) within 10 mm of metal ...", "image noise: 45 HU ..."]
    write_report(tmp_path, volume, scores, mask, extra={"warnings": warned})
    assert "(rests on objects beside metal: see the warnings)" in titles[-1]
    write_report(tmp_path, volume, scores, mask, extra={"warnings": ["dense: 1 scored object(s) ..."] + warned})
    assert "(rests on stent-dense objects and objects beside metal: see the warnings)" in titles[-1]
    write_report(tmp_path, volume, scores, mask, extra={"warnings": warned, "category_range": doubt})
    assert "category C (uncertain: A to C; rests on objects beside metal: see the warnings)" in titles[-1]
    assert "past a refusal" not in titles[-1]
    write_report(tmp_path, volume, scores, mask, extra={"warnings": ["sharp kernel: reconstructed with DETAIL ..."]})
    assert "past a refusal" not in titles[-1]  # a medium-sharp kernel is warned, not refused
    for warned, what in ((["too noisy: image noise about 104 HU ..."], "too noisy"),
                         (["phantom: the cross-section repeats ...", "too noisy: ..."], "too noisy and a phantom"),
                         (["sharp kernel, scored on request: reconstructed with B70f ..."], "a sharp kernel")):
        write_report(tmp_path, volume, scores, mask, extra={"warnings": warned})
        assert titles[-1].endswith(f"calcium slices\nscored on request past a refusal ({what}): see the warnings")


def test_readme_python_api_example_runs_verbatim(tmp_path, capsys):
    """The README's "Python API" block, with only its two folder names replaced."""
    import re
    from pathlib import Path

    from agatax.cli import main

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("### Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert main(["example", str(tmp_path / "example"), "--matrix", "128"]) == 0
    code = code.replace("/tmp/agatax-example", str(tmp_path / "example")).replace("/tmp/agatax-out", str(tmp_path / "out"))
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "exams compared" in out or "category accuracy" in out
    rows = list(csv.DictReader(open(tmp_path / "out" / "summary.csv")))
    assert [r["exam_id"] for r in rows] == ["example_0"]
