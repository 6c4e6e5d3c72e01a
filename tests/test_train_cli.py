"""``agatax train``: a tiny end-to-end run on a generated cohort in each DATA form, exact resume after a
kill, and every refusal of the data check (before any training).

Every run trains tiny networks (UNetConfig.tiny) for a few steps on three 16 x 64 x 64 exams of one
geometry, so the jitted step compiles once for the whole file.
"""

from __future__ import annotations

import csv
import json
import plistlib
from pathlib import Path

import jax
import numpy as np
import pydicom
import pytest
from scipy import ndimage

from agatax.cli import main
from agatax.cohort import CohortError, discover_cohort, split_validation, train_cohort
from agatax.ensemble import load_ensemble

FAST = ["--init", "none", "--model", "tiny", "--members", "1", "--steps", "2", "--eval-every", "2", "--batch", "2",
        "--patch", "8,16,16", "--validation", "1", "--collapse-retries", "0", "--quiet", "--no-png"]


def _exams():
    from agatax.synthetic import generate_exam

    shape = dict(matrix=64, n_slices=16, fov_mm=190.0, slice_increment_mm=3.0, slice_thickness_mm=3.0,
                 protocol="cardiac")
    # seeds this 3 mm-pixel grid brings to their categories (on so coarse a grid some seeds cannot reach C:
    # the generator refuses them with TARGET_UNREACHABLE)
    return [generate_exam(s, target_category=c, **shape) for s, c in ((3, "C"), (5, "D"), (7, "C"))]


@pytest.fixture(scope="module")
def exams():
    return _exams()


@pytest.fixture(scope="module")
def manifest_cohort(tmp_path_factory, exams):
    from agatax.synthetic.cohort import write_cohort

    folder = tmp_path_factory.mktemp("cohort")
    write_cohort(folder, exams, format="nifti", ids=["a", "b", "c"])
    return folder


def _run(*argv):
    return main(["train", *map(str, argv)])


def _refused(capsys, code, *needles):
    err = capsys.readouterr().err
    assert f"error [{code}]" in err, err
    for needle in needles:
        assert str(needle) in err, err
    return err


def _params(path):
    return jax.tree.leaves(load_ensemble(path).variables)


# ------------------------------------------------------------------------------------ the four forms


def test_manifest_end_to_end_writes_ensemble_log_curves_and_scored_validation(manifest_cohort, tmp_path, capsys):
    out = tmp_path / "ens.msgpack"
    argv = [a for a in FAST if a != "--no-png"]
    assert _run(manifest_cohort / "manifest.csv", "--out", out, *argv) == 0
    captured = capsys.readouterr()
    text = captured.out
    assert "trained 1 network (fresh; batch-dice, intensity augmentation) on 2 exams" in text
    assert "validation exams scored (1): category accuracy" in text and "C-index" in text and "lesion F1" in text
    ensemble = load_ensemble(out)
    assert ensemble.members == 1 and ensemble.config.levels == 2
    rows = [json.loads(line) for line in (tmp_path / "ens.log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2] and rows[0]["val_dice"] is not None and rows[0]["loss"] > 0
    # a network that never found the validation calcium is named on stderr, one that did is not
    assert ("network 1 never found the validation calcium" in captured.err) == (rows[0]["val_dice"] < 0.05)
    assert (tmp_path / "ens.curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    scored = json.loads((tmp_path / "ens.validation.json").read_text())
    assert scored["exams"] == 1 and {"category_accuracy", "c_index", "lesion_f1"} <= set(scored)
    assert scored["per_exam"][0]["exam_id"] in ("a", "b", "c")


def test_folder_of_exams_with_masks_beside_them(manifest_cohort, tmp_path, capsys):
    cohort = discover_cohort(manifest_cohort)
    assert sorted(e.exam_id for e in cohort.exams) == ["a", "b", "c"]
    assert all(e.mask_path.name == f"{e.exam_id}_mask.nii.gz" for e in cohort.exams)
    assert _run(manifest_cohort, "--out", tmp_path / "f.msgpack", *FAST) == 0
    assert "on 2 exams" in capsys.readouterr().out


def test_dicom_folder_as_agatax_example_writes_it(tmp_path, capsys):
    assert main(["example", str(tmp_path / "ex"), "--count", "2", "--matrix", "64", "--category", "C"]) == 0
    cohort = discover_cohort(tmp_path / "ex")
    assert [e.exam_id for e in cohort.exams] == ["example_0", "example_1"] and cohort.exams[0].path.is_dir()
    manifest = discover_cohort(tmp_path / "ex" / "manifest.csv")
    assert [e.path for e in manifest.exams] == [e.path for e in cohort.exams]


def test_points_csv_makes_masks_and_reports_snapped_and_missed(manifest_cohort, exams, tmp_path, capsys):
    rows = []
    for exam_id, exam in zip("abc", exams):
        for les in exam.lesions:
            z, y, x = les["center_zyx"]
            mm = exam.volume.affine @ np.array([z, y, x, 1.0])
            rows.append({"exam_id": exam_id, "x": mm[0], "y": mm[1], "z": mm[2], "path": f"{exam_id}.nii.gz"})
    assert rows
    # one point a voxel off its calcium (snapped), one in the air (missed), in voxel units
    z, y, x = exams[0].lesions[0]["center_zyx"]
    points = manifest_cohort / "points.csv"
    with open(points, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["exam_id", "x", "y", "z", "path"])
        writer.writeheader()
        writer.writerows(rows)
    cohort = discover_cohort(points)
    assert {e.kind for e in cohort.exams} == {"points"} and {e.units for e in cohort.exams} == {"mm"}
    from agatax.cohort import load_exam

    loaded = load_exam(cohort.exams[0])
    truth = exams[0].mask > 0
    assert loaded.mask.shape == truth.shape
    assert (loaded.mask > 0)[truth & (exams[0].volume.hu >= 130)].mean() > 0.8  # the planted calcium is found
    assert "missed" in loaded.notes[-1]
    vox = tmp_path / "vox.csv"
    vox.write_text("exam_id,x,y,z,units,path\n"
                   f"a,{x},{y},{z},voxel,{manifest_cohort / 'a.nii.gz'}\n"
                   f"a,1,1,1,voxel,{manifest_cohort / 'a.nii.gz'}\n")
    loaded = load_exam(discover_cohort(vox).exams[0])
    assert loaded.notes[-1].startswith("2 points:") and "1 missed" in loaded.notes[-1]
    assert _run(points, "--out", tmp_path / "p.msgpack", *FAST) == 0
    assert "on 2 exams" in capsys.readouterr().out


def _coca_release(root, exams):
    """A COCA-layout release of the exams: DICOM series with ascending instance numbers, outlines per
    2D component (bounding boxes), ImageIndex counted in reverse as the real release does, empty
    placeholder ROIs, and one patient without DICOM files (a known defect)."""
    from agatax.io import write_dicom_series

    names = {1: "Left Coronary Artery", 2: "Left Anterior Descending Artery", 3: "Left Circumflex Artery",
             4: "Right Coronary Artery"}
    (root / "calcium_xml").mkdir(parents=True)
    for exam_id, exam in zip(("p1", "p2", "p3"), exams):
        files = write_dicom_series(root / "patient" / exam_id / "CT", exam.volume, patient_id=exam_id)
        numbers = [int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber) for f in files]
        rank = {k: r for r, k in enumerate(np.argsort(numbers))}  # ascending InstanceNumber order
        n = len(files)
        images = []
        for k in range(exam.mask.shape[0]):
            rois = [{"Name": "Right Coronary Artery", "NumberOfPoints": 0, "Point_px": [], "Point_mm": [],
                     "Area": 0}]
            labels, count = ndimage.label(exam.mask[k] > 0)
            for box, j in zip(ndimage.find_objects(labels), range(1, count + 1)):
                y0, y1, x0, x1 = box[0].start, box[0].stop - 1, box[1].start, box[1].stop - 1
                corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
                artery = int(np.max(exam.mask[k][labels == j]))
                mm = [exam.volume.affine @ np.array([k, cy, cx, 1.0]) for cx, cy in corners]
                rois.append({"Name": names[artery], "NumberOfPoints": 4,
                             "Point_px": [f"({cx}, {cy})" for cx, cy in corners],
                             "Point_mm": [f"({p[0]}, {p[1]}, {p[2]})" for p in mm], "Area": 1.0})
            images.append({"ImageIndex": n - 1 - rank[k], "ROIs": rois})
        (root / "calcium_xml" / f"{exam_id}.xml").write_bytes(plistlib.dumps({"Images": images}))
    (root / "patient" / "p4" / "CT").mkdir(parents=True)  # no DICOM files


def test_coca_release_with_empty_rois_reversed_index_and_a_defective_patient(exams, tmp_path, capsys):
    root = tmp_path / "dl" / "Gated_release_final"
    _coca_release(root, exams)
    cohort = discover_cohort(tmp_path / "dl")
    assert [e.exam_id for e in cohort.exams] == ["p1", "p2", "p3", "p4"] and cohort.exams[0].kind == "coca"
    from agatax.cohort import load_exam

    loaded = load_exam(cohort.exams[0])
    truth = (exams[0].mask > 0) & (exams[0].volume.hu >= 130)
    assert np.all(loaded.mask[truth] > 0)  # every calcium voxel is inside its outline on its own slice
    assert any("empty placeholder ROIs" in n for n in loaded.notes)
    assert _run(tmp_path / "dl", "--out", tmp_path / "c.msgpack", *FAST) == 0
    captured = capsys.readouterr()
    assert "on 2 exams" in captured.out
    assert "left out (known defect of the release): [NO_IMAGES]" in captured.err and "p4" in captured.err


# ------------------------------------------------------------------------------------------- resume


def test_resume_after_a_kill_equals_an_uninterrupted_run(manifest_cohort, tmp_path, monkeypatch, capsys):
    from agatax import train_cli

    argv = [manifest_cohort / "manifest.csv", "--init", "none", "--model", "tiny", "--members", "2", "--steps", "4",
            "--eval-every", "2", "--batch", "2", "--patch", "8,16,16", "--validation", "1", "--collapse-retries",
            "0", "--quiet", "--no-png"]
    assert _run(*argv, "--out", tmp_path / "whole.msgpack") == 0

    calls = []
    original = train_cli._Progress.__call__

    def killed(self, member, step, info):  # the process dies after member 2's step 3 (checkpoint at step 2)
        original(self, member, step, info)
        calls.append((member, step))
        if (member, step) == (1, 3):
            raise KeyboardInterrupt

    monkeypatch.setattr(train_cli._Progress, "__call__", killed)
    assert _run(*argv, "--out", tmp_path / "cut.msgpack") == 130
    assert "re-run the same command to continue" in capsys.readouterr().err
    assert not (tmp_path / "cut.msgpack").exists()
    assert (tmp_path / "cut.work" / "checkpoints" / "member1" / "last.ckpt").exists()
    monkeypatch.setattr(train_cli._Progress, "__call__", original)
    assert _run(*argv, "--out", tmp_path / "cut.msgpack", "--resume") == 0
    for a, b in zip(_params(tmp_path / "whole.msgpack"), _params(tmp_path / "cut.msgpack")):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # bit for bit
    whole = (tmp_path / "whole.log.jsonl").read_text().splitlines()
    cut = (tmp_path / "cut.log.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in cut] == [json.loads(r)["step"] for r in whole] == [2, 4, 2, 4]
    # a plain re-run of a finished run trains nothing more and gives the same ensemble
    assert _run(*argv, "--out", tmp_path / "cut.msgpack") == 0
    for a, b in zip(_params(tmp_path / "whole.msgpack"), _params(tmp_path / "cut.msgpack")):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # other settings against these checkpoints: refused, with the way out
    assert _run(*argv[:-2], "--out", tmp_path / "cut.msgpack", "--seed", "5") == 2
    _refused(capsys, "CHECKPOINT_MISMATCH", "--restart")


def test_resume_after_sigkill_of_the_process_equals_an_uninterrupted_run(manifest_cohort, tmp_path):
    """A real kill: the training process SIGKILLs itself after member 2's step 3 (no handler, no cleanup)."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    argv = [str(manifest_cohort / "manifest.csv"), "--init", "none", "--model", "tiny", "--members", "2", "--steps",
            "4", "--eval-every", "2", "--batch", "2", "--patch", "8,16,16", "--validation", "1",
            "--collapse-retries", "0", "--quiet", "--no-png"]
    assert _run(*argv, "--out", tmp_path / "whole.msgpack") == 0
    cut = str(tmp_path / "cut.msgpack")
    script = (
        "import os, signal, sys\nfrom agatax import train_cli\nfrom agatax.cli import main\n"
        "original = train_cli._Progress.__call__\n"
        "def killed(self, member, step, info):\n"
        "    original(self, member, step, info)\n"
        "    if (member, step) == (1, 3):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "train_cli._Progress.__call__ = killed\n"
        f"sys.exit(main(['train', *{argv!r}, '--out', {cut!r}]))\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=repo, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(repo)))
    assert proc.returncode == -9, proc.stderr
    assert not Path(cut).exists()
    assert _run(*argv, "--out", cut) == 0  # a plain re-run resumes
    for a, b in zip(_params(tmp_path / "whole.msgpack"), _params(cut)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # bit for bit


def test_fine_tuning_starts_from_the_given_ensemble(manifest_cohort, tmp_path):
    from agatax.ensemble import init_ensemble, save_ensemble
    from agatax.model import UNetConfig
    from agatax.train import TrainConfig

    start = init_ensemble(jax.random.PRNGKey(3), UNetConfig.tiny(), members=2)
    save_ensemble(tmp_path / "start.msgpack", start)
    config = TrainConfig(steps=1, batch_size=2, patch_zyx=(8, 16, 16), eval_every=1, log_every=0,
                         learning_rate=1e-12)
    result = train_cohort(manifest_cohort / "manifest.csv", members=3, config=config,
                          init=tmp_path / "start.msgpack", validation=0, log=None)
    assert result.ensemble.config.levels == 2 and result.val_ids == []
    for got, want in zip(jax.tree.leaves(result.ensemble.variables["params"]), jax.tree.leaves(start.variables["params"])):
        for k in range(3):  # member k starts from member k % 2; a vanishing step keeps it there
            np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k % 2]), atol=1e-6)


def test_loss_and_augmentation_options_reach_the_training(manifest_cohort, tmp_path, monkeypatch):
    import agatax.cohort

    seen = []

    def capture(*args, config, **kwargs):
        seen.append(config)
        raise KeyboardInterrupt  # stop before any work: the command then exits 130

    monkeypatch.setattr(agatax.cohort, "train_cohort", capture)
    data, out = manifest_cohort / "manifest.csv", tmp_path / "e.msgpack"
    fine = [a for a in FAST if a not in ("--init", "none", "--model", "tiny")]
    assert _run(data, "--out", out, *FAST) == 130  # fresh networks: one Dice over the batch
    assert _run(data, "--out", out, *fine, "--init", "default") == 130  # fine-tuning: the default's per-patch Dice
    assert _run(data, "--out", out, *FAST, "--loss", "patch-dice", "--augment", "scanner") == 130
    assert _run(data, "--out", out, *fine, "--init", "default", "--loss", "batch-dice", "--augment", "all") == 130
    assert [c.dice_pooled for c in seen] == [True, False, False, True]
    plain = {"kernel_std": 0.0, "border_cut": 0.0, "rotate_deg": 0.0, "scale_range": 0.0, "elastic_voxels": 0.0}
    want = [plain, plain, {**plain, "kernel_std": 0.25, "border_cut": 0.2},
            {"kernel_std": 0.25, "border_cut": 0.2, "rotate_deg": 20.0, "scale_range": 0.15, "elastic_voxels": 1.0}]
    assert [{k: getattr(c, k) for k in plain} for c in seen] == want
    assert {(c.gain_std, c.shift_std, c.noise_std) for c in seen} == {(0.05, 0.02, 0.015)}  # intensity always on


def test_validation_split_count_share_and_manifest_column():
    assert split_validation(10, 0.2, 0)[1] == sorted(np.random.default_rng(0).permutation(10)[:2].tolist())
    assert len(split_validation(10, 3, 1)[1]) == 3 and split_validation(10, 0, 1) == (list(range(10)), [])
    assert split_validation(3, 5, 0)[0]  # at least one exam left to train on
    assert split_validation(5, 0.2, 0, fixed_val=[4]) == ([0, 1, 2, 3], [4])


def test_validation_draw_holds_calcium_when_it_can():
    """A calcium-free validation draw (seen: 8 calcium-free exams of 195, so every network's validation Dice
    was 0 and each was taken for collapsed) gives its last exam for the next exam with calcium."""
    order = np.random.default_rng(5).permutation(20).tolist()
    calcium = [True] * 20
    for i in order[:3]:
        calcium[i] = False  # the first three drawn are calcium-free
    plain = split_validation(20, 3, 5)[1]
    assert plain == sorted(order[:3])
    assert split_validation(20, 3, 5, calcium=calcium)[1] == sorted(order[:2] + order[3:4])
    # a draw that holds calcium is left as it was
    calcium[order[1]] = True
    assert split_validation(20, 3, 5, calcium=calcium)[1] == plain
    # no swap that would leave training without calcium: one calcium exam in all stays in training
    only = [i == order[5] for i in range(20)]
    train, val = split_validation(20, 3, 5, calcium=only)
    assert val == plain and order[5] in train


# ------------------------------------------------------------------------------------------ refusals


def _manifest(folder, rows):
    path = folder / "m.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _copy_cohort(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def _assert_nothing_trained(out):
    assert not out.exists()
    ckpt = out.with_suffix(".work") / "checkpoints"
    assert not ckpt.exists() or not any(ckpt.iterdir())


def test_refused_data_path_exam_and_mask_not_found(manifest_cohort, tmp_path, capsys):
    out = tmp_path / "e.msgpack"
    assert _run(tmp_path / "nowhere.csv", "--out", out, *FAST) == 2
    _refused(capsys, "NOT_FOUND", "nowhere.csv")
    d = manifest_cohort.name
    m = _manifest(manifest_cohort.parent, [{"path": f"{d}/a.nii.gz", "mask_path": f"{d}/a_mask.nii.gz"},
                                           {"path": f"{d}/zz.nii.gz", "mask_path": f"{d}/b_mask.nii.gz"},
                                           {"path": f"{d}/c.nii.gz", "mask_path": f"{d}/zz_mask.nii.gz"}])
    assert _run(m, "--out", out, *FAST) == 2
    err = _refused(capsys, "NOT_FOUND", "zz.nii.gz", "zz_mask.nii.gz", "2 problems")
    assert "a.nii.gz" not in err.replace("a_mask", "")
    _assert_nothing_trained(out)


def test_refused_mask_off_the_exam_grid_and_labels_outside_0_4(manifest_cohort, tmp_path, capsys):
    from agatax.io import read_volume, write_nifti

    folder = _copy_cohort(manifest_cohort, tmp_path / "c")
    volume = read_volume(folder / "a.nii.gz")
    write_nifti(folder / "a_mask.nii.gz", np.zeros((volume.shape[0] - 1, *volume.shape[1:]), np.uint8),
                like=volume.replace(hu=volume.hu[1:]))
    out = tmp_path / "e.msgpack"
    assert _run(folder / "manifest.csv", "--out", out, *FAST) == 2
    _refused(capsys, "MASK_MISMATCH", "a_mask.nii.gz")
    folder = _copy_cohort(manifest_cohort, tmp_path / "d")
    volume = read_volume(folder / "b.nii.gz")
    labels = np.zeros(volume.shape, np.uint8)
    labels[5, 30:33, 30:33] = 7
    labels[5, 40, 40] = 2
    write_nifti(folder / "b_mask.nii.gz", labels, like=volume)
    assert _run(folder / "manifest.csv", "--out", out, *FAST) == 2
    _refused(capsys, "BAD_MASK", "b_mask.nii.gz")
    _assert_nothing_trained(out)


def test_refused_unreadable_exam(manifest_cohort, tmp_path, capsys):
    folder = _copy_cohort(manifest_cohort, tmp_path / "c")
    (folder / "c.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    out = tmp_path / "e.msgpack"
    assert _run(folder / "manifest.csv", "--out", out, *FAST) == 2
    err = capsys.readouterr().err
    assert "c.nii.gz" in err and "error [" in err and "UNEXPECTED" not in err
    _assert_nothing_trained(out)


def test_refused_no_calcium_and_duplicate_ids(manifest_cohort, tmp_path, capsys):
    from agatax.io import read_volume, write_nifti

    folder = _copy_cohort(manifest_cohort, tmp_path / "c")
    for exam_id in "abc":
        volume = read_volume(folder / f"{exam_id}.nii.gz")
        write_nifti(folder / f"{exam_id}_mask.nii.gz", np.zeros(volume.shape, np.uint8), like=volume)
    out = tmp_path / "e.msgpack"
    assert _run(folder / "manifest.csv", "--out", out, *FAST) == 2
    _refused(capsys, "NO_CALCIUM", "manifest.csv")
    m = _manifest(manifest_cohort, [{"exam_id": "x", "path": "a.nii.gz", "mask_path": "a_mask.nii.gz"},
                                    {"exam_id": "x", "path": "b.nii.gz", "mask_path": "b_mask.nii.gz"}])
    assert _run(m, "--out", out, *FAST) == 2
    _refused(capsys, "DUPLICATE_ID", "'x'", "m.csv")
    m.unlink()
    _assert_nothing_trained(out)


def test_refused_folder_exam_without_mask_and_unknown_layout(manifest_cohort, tmp_path, capsys):
    folder = _copy_cohort(manifest_cohort, tmp_path / "c")
    (folder / "b_mask.nii.gz").unlink()
    out = tmp_path / "e.msgpack"
    assert _run(folder, "--out", out, *FAST) == 2
    _refused(capsys, "MISSING_MASK", "b.nii.gz")
    (tmp_path / "notes.csv").write_text("a,b\n1,2\n")
    assert _run(tmp_path / "notes.csv", "--out", out, *FAST) == 2
    _refused(capsys, "MISSING_COLUMNS", "notes.csv")
    _assert_nothing_trained(out)


def test_refused_points_outside_their_exam(manifest_cohort, tmp_path, capsys):
    points = tmp_path / "pts.csv"
    points.write_text(f"exam_id,x,y,z,units,path\na,500,3,3,voxel,{manifest_cohort / 'a.nii.gz'}\n")
    out = tmp_path / "e.msgpack"
    assert _run(points, "--out", out, *FAST) == 2
    _refused(capsys, "POINT_OUTSIDE", "a.nii.gz")
    points.write_text("exam_id,x,y,z\na,1,2,nope\n")
    assert _run(points, "--out", out, *FAST) == 2
    _refused(capsys, "BAD_POINTS", "pts.csv")


def test_refused_options_before_any_reading(manifest_cohort, tmp_path, capsys):
    out = tmp_path / "e.msgpack"
    data = manifest_cohort / "manifest.csv"
    for bad in (["--validation", "1.5"], ["--validation", "x"], ["--members", "0"], ["--steps", "0"],
                ["--patch", "8,16"], ["--init", "default", "--model", "tiny"]):
        assert _run(data, "--out", out, *[a for a in FAST if a not in ("--model", "tiny")], *bad) == 2, bad
        _refused(capsys, "BAD_ARGUMENT")
    assert _run(data, "--out", out, *FAST, "--resume") == 2
    _refused(capsys, "NO_CHECKPOINT", "checkpoints")
    assert _run(data, "--out", out, "--init", tmp_path / "missing.msgpack") == 2
    _refused(capsys, "NOT_FOUND", "missing.msgpack")
    assert _run(data, "--out", tmp_path, *FAST) == 2
    _refused(capsys, "OUTPUT_NOT_WRITABLE")


def test_python_call_lists_every_problem(manifest_cohort, tmp_path):
    m = _manifest(tmp_path, [{"path": str(manifest_cohort / "a.nii.gz"), "mask_path": str(tmp_path / "no1.nii.gz")},
                             {"path": str(tmp_path / "no2.nii.gz"), "mask_path": "x.nii.gz"}])
    with pytest.raises(CohortError) as info:
        train_cohort(m, init=None, log=None)
    assert info.value.code == "NOT_FOUND" and len(info.value.problems) == 2
    assert [p.exam_id for p in info.value.problems] == ["a", "no2"]


def test_finetune_experiment_quick_mode_runs(tmp_path, capsys):
    """experiments/finetune.py --quick: the fine-tuning experiment's plumbing (cohort on disk, agatax train
    from a starting ensemble, both ensembles scored on the new domain's test exams)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "experiments" / "finetune.py"
    spec = importlib.util.spec_from_file_location("finetune_experiment", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--quick", "--workdir", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["n_train"] == 3 and results["default"]["exams"] == results["fine-tuned"]["exams"] == 2
    assert "| fine-tuned | 2 |" in capsys.readouterr().out


def test_thin_slice_exams_train_on_3_mm_slabs_volume_and_mask(exams, tmp_path):
    from agatax.cohort import load_exam
    from agatax.io import write_nifti
    from agatax.volume import Volume

    exam = exams[0]  # 16 slices of 3 mm made into 48 slices of 1 mm (each slice repeated)
    hu = np.repeat(exam.volume.hu, 3, axis=0)
    affine = exam.volume.affine.copy()
    affine[:3, 0] /= 3.0
    thin = Volume(hu, (1.0, *exam.volume.spacing[1:]), slice_thickness=1.0, affine=affine)
    write_nifti(tmp_path / "t.nii.gz", thin)
    write_nifti(tmp_path / "t_mask.nii.gz", np.repeat(exam.mask, 3, axis=0), like=thin)
    loaded = load_exam(discover_cohort(tmp_path).exams[0])
    assert loaded.volume.spacing[0] == pytest.approx(3.0) and loaded.volume.shape == exam.volume.shape
    np.testing.assert_array_equal(loaded.mask, exam.mask)
    native = load_exam(discover_cohort(tmp_path).exams[0], slabs=False)
    assert native.volume.shape[0] == 48


def test_a_val_split_without_calcium_is_refused_by_name(exams, tmp_path, capsys):
    """A manifest whose `val` exams hold no calcium: the validation Dice would be 0 whatever the networks do
    (every network taken for collapsed, the first step kept), so training is refused, not run."""
    import csv

    from agatax.synthetic import generate_exam
    from agatax.synthetic.cohort import write_cohort

    free = generate_exam(4, target_category="A", matrix=64, n_slices=16, fov_mm=190.0, slice_increment_mm=3.0,
                         slice_thickness_mm=3.0, protocol="cardiac")
    manifest = write_cohort(tmp_path / "c", [*exams[:2], free], format="nifti", ids=["a", "b", "free"])
    rows = list(csv.DictReader(manifest.open()))
    for row in rows:
        row["split"] = "val" if row["exam_id"] == "free" else "train"
    with manifest.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert _run(manifest, "--out", tmp_path / "ens.msgpack", *FAST) != 0
    _refused(capsys, "NO_CALCIUM", "validation")
    assert not (tmp_path / "ens.msgpack").exists()


def test_validation_scores_an_exam_past_the_noise_refusal(tmp_path):
    """score_validation measures the ensemble: an exam that agatax score refuses as TOO_NOISY (noise ~100 HU,
    measured above the 65 HU line) is scored against its reference, not an error that ends the training run."""
    import jax.numpy as jnp

    from agatax.cohort import score_validation
    from agatax.ensemble import stack_members
    from agatax.errors import AgataxError
    from agatax.model import UNet, UNetConfig
    from agatax.pipeline import run_pipeline
    from agatax.quality import image_noise_hu, refuse_noise_hu
    from agatax.synthetic import generate_exam
    from agatax.synthetic.cohort import write_cohort

    exam = generate_exam(3, target_category="C", matrix=64, n_slices=16, fov_mm=190.0, slice_increment_mm=3.0,
                         slice_thickness_mm=3.0, protocol="cardiac", noise_sigma_hu=100.0)
    assert image_noise_hu(exam.volume.hu, exam.volume.spacing) > refuse_noise_hu()
    tiny = UNetConfig.tiny()
    ensemble = stack_members([UNet(tiny).init(jax.random.key(s), jnp.zeros((1, 8, 8, 8, 1))) for s in range(3)], tiny)
    with pytest.raises(AgataxError, match="TOO_NOISY"):
        run_pipeline(ensemble, exam.volume)
    write_cohort(tmp_path / "cohort", [exam], format="nifti", ids=["noisy"])
    scored = score_validation(ensemble, discover_cohort(tmp_path / "cohort" / "manifest.csv").exams)
    assert scored["exams"] == 1
    assert scored["per_exam"][0]["reference_agatston"] == pytest.approx(exam.agatston, rel=1e-3)
    row = scored["per_exam"][0]
    assert row["noise_hu"] > refuse_noise_hu() and [n.split(":")[0] for n in row["past_refusal"]] == ["too noisy"]


@pytest.mark.parametrize("module,line,code,tag", [
    ("pipeline", "MIN_REGION_SECTION_CM2", "REGION_TOO_SMALL", "region too small"),
    ("localise", "MIN_LUNGS_CM3", "NO_LUNGS", "no lungs"),
])
def test_validation_scores_an_exam_whose_region_is_refused_without_the_region(tmp_path, monkeypatch, module, line,
                                                                               code, tag):
    """score_validation measures the ensemble: an exam that agatax score refuses as REGION_TOO_SMALL or
    NO_LUNGS (here every exam: the line raised above any chest) is scored without the chest region, against its
    reference, and the row says so; not an error that ends the training run."""
    import importlib

    import jax.numpy as jnp

    from agatax.cohort import score_validation
    from agatax.ensemble import stack_members
    from agatax.errors import AgataxError
    from agatax.model import UNet, UNetConfig
    from agatax.pipeline import run_pipeline
    from agatax.synthetic import generate_exam
    from agatax.synthetic.cohort import write_cohort

    exam = generate_exam(3, target_category="C", matrix=64, n_slices=16, fov_mm=190.0, slice_increment_mm=3.0,
                         slice_thickness_mm=3.0, protocol="cardiac")
    tiny = UNetConfig.tiny()
    ensemble = stack_members([UNet(tiny).init(jax.random.key(s), jnp.zeros((1, 8, 8, 8, 1))) for s in range(3)], tiny)
    monkeypatch.setattr(importlib.import_module(f"agatax.{module}"), line, 1e9)
    with pytest.raises(AgataxError, match=code):
        run_pipeline(ensemble, exam.volume)
    write_cohort(tmp_path / "cohort", [exam], format="nifti", ids=["small_region"])
    scored = score_validation(ensemble, discover_cohort(tmp_path / "cohort" / "manifest.csv").exams)
    assert scored["exams"] == 1
    row = scored["per_exam"][0]
    assert row["reference_agatston"] == pytest.approx(exam.agatston, rel=1e-3)
    assert [n.split(":")[0] for n in row["past_refusal"]] == [tag]


def test_training_on_noisier_exams_widens_the_trained_noise_range(tmp_path):
    """trained_noise_range: the exams' 5th-95th percentile (the noisiest for under 20 exams, the top rounded
    up to 0.01 HU), the starting range widened to it (never narrowed), that range alone for fresh networks,
    None without measures. train_cohort on exams drawn at 55 and 70 HU gives fine-tuned networks whose range
    reaches the noisiest exam's measure (so the pipeline does not refuse their own domain), kept through save
    and load; quiet exams leave (10, 40); fresh networks get the exams' own range."""
    from agatax.cohort import trained_noise_range
    from agatax.ensemble import init_ensemble, save_ensemble
    from agatax.model import UNetConfig
    from agatax.quality import image_noise_hu
    from agatax.synthetic import generate_exam
    from agatax.synthetic.cohort import write_cohort
    from agatax.train import TrainConfig

    assert trained_noise_range((10.0, 40.0), [{"noise_hu": 55.5}, {"noise_hu": 8.0}, {}]) == (8.0, 55.5)
    assert trained_noise_range((10.0, 40.0), [{"noise_hu": 20.0}, {"agatston": 3.0}]) == (10.0, 40.0)
    assert trained_noise_range((10.0, 40.0), [{"noise_hu": 20.0}, {"noise_hu": 31.5}], fresh=True) == (20.0, 31.5)
    assert trained_noise_range((10.0, 40.0), [{"noise_hu": 71.284}]) == (10.0, 71.29)  # rounded up: inside
    assert trained_noise_range((10.0, 40.0), []) is None
    assert trained_noise_range((10.0, 40.0), [{"agatston": 1.0}, {"noise_hu": float("nan")}]) is None
    # one odd exam among forty does not move the top: the 95th percentile (the 39th of 40, sorted)
    many = [{"noise_hu": 20.0 + 0.5 * k} for k in range(39)] + [{"noise_hu": 95.0}]
    assert trained_noise_range((10.0, 40.0), many, fresh=True) == (20.5, 39.0)  # the 2nd and 39th of 40
    assert trained_noise_range((10.0, 40.0), many) == (10.0, 40.0)
    shape = dict(matrix=64, n_slices=16, fov_mm=190.0, slice_increment_mm=3.0, slice_thickness_mm=3.0,
                 protocol="cardiac")
    noisy = [generate_exam(s, target_category=c, noise_sigma_hu=n, **shape) for s, c, n in ((3, "C", 55.0), (5, "D", 70.0))]
    measured = sorted(image_noise_hu(e.volume.hu, e.volume.spacing) for e in noisy)
    assert measured[1] > 60.0
    write_cohort(tmp_path / "noisy", noisy, format="nifti", ids=["a", "b"])
    start = init_ensemble(jax.random.PRNGKey(3), UNetConfig.tiny(), members=1)
    save_ensemble(tmp_path / "start.msgpack", start)
    config = TrainConfig(steps=1, batch_size=2, patch_zyx=(8, 16, 16), eval_every=1, log_every=0)
    result = train_cohort(tmp_path / "noisy" / "manifest.csv", members=1, config=config,
                          init=tmp_path / "start.msgpack", validation=0, log=None)
    low, high = result.ensemble.config.trained_noise_hu
    assert low == 10.0 and measured[1] <= high <= measured[1] + 0.01
    assert sum(n.startswith("trained noise range: 10-") for n in result.notes) == 1
    save_ensemble(tmp_path / "tuned.msgpack", result.ensemble)
    assert load_ensemble(tmp_path / "tuned.msgpack").config.trained_noise_hu == result.ensemble.config.trained_noise_hu
    fresh = train_cohort(tmp_path / "noisy" / "manifest.csv", members=1, config=config, init="none",
                         model_config=UNetConfig.tiny(), validation=0, log=None)
    assert fresh.ensemble.config.trained_noise_hu == (round(measured[0], 2), high)
    quiet = [generate_exam(s, target_category=c, noise_sigma_hu=20.0, **shape) for s, c in ((3, "C"), (5, "D"))]
    write_cohort(tmp_path / "quiet", quiet, format="nifti", ids=["a", "b"])
    result = train_cohort(tmp_path / "quiet" / "manifest.csv", members=1, config=config,
                          init=tmp_path / "start.msgpack", validation=0, log=None)
    assert result.ensemble.config.trained_noise_hu == (10.0, 40.0)
    assert not any(n.startswith("trained noise range") for n in result.notes)
