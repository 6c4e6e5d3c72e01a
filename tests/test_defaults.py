"""The shipped default ensemble: it loads, finds planted calcium, leaves bone alone; clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

import agatax
from agatax.defaults import default_weights_path, load_default_ensemble, score_exam
from agatax.errors import CheckpointError, InputError


@pytest.fixture(scope="module")
def exam():
    from agatax.synthetic import generate_exam

    return generate_exam(11, target_category="E", matrix=256)


@pytest.fixture(scope="module")
def result(exam):
    return score_exam(exam.volume)


def test_model_card_describes_the_shipped_file():
    """The model card names the sha256 of the weights it describes: shipping new weights without a card
    written for them fails here."""
    import hashlib
    import re

    path = default_weights_path()
    card = (path.parent / "MODEL_CARD.md").read_text(encoding="utf-8")
    named = re.findall(r"sha256\s+`([0-9a-f]{64})`", card)
    assert named, "the model card names no sha256"
    assert named[0] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_default_weights_ship_small_and_load():
    path = default_weights_path()
    assert path.is_file()
    assert path.stat().st_size <= 16 * 2**20
    ens = load_default_ensemble()
    assert ens.members == 5
    assert agatax.load_default_ensemble is load_default_ensemble


def test_default_ensemble_finds_a_large_calcification(exam, result):
    true = exam.mask > 0
    labels, n = ndimage.label(true, structure=np.ones((3, 3, 3)))
    assert n > 0
    sizes = ndimage.sum(true, labels, index=np.arange(1, n + 1))
    largest = labels == (1 + int(np.argmax(sizes)))
    found = np.sum(result.mask & largest) / np.sum(largest)
    assert found >= 0.5, f"found {found:.2f} of the largest planted calcification ({int(largest.sum())} voxels)"
    # the exam is category E by construction: the score must be in the upper categories too
    assert result.scores.category in ("D", "E"), (result.scores.agatston, exam.agatston)


def test_default_ensemble_leaves_bone_alone(exam, result):
    bone = (exam.distractor_mask == 1) & (exam.volume.hu >= 130)
    assert bone.sum() > 1000  # the exam does hold plenty of bright bone
    assert np.sum(result.mask & bone) <= 0.001 * bone.sum()
    # everything the ensemble calls calcium is >= 130 HU
    assert np.all(exam.volume.hu[result.mask] >= 130)


def test_score_exam_reads_a_path(tmp_path, exam, result):
    path = tmp_path / "exam.nii.gz"
    agatax.write_nifti(path, exam.volume.hu, like=exam.volume)
    from_file = score_exam(path)
    assert from_file.scores.agatston == pytest.approx(result.scores.agatston, rel=1e-6)


def test_missing_or_corrupt_weights_raise_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError) as err:
        load_default_ensemble(tmp_path / "absent.msgpack")
    assert err.value.code == "MISSING_WEIGHTS"
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(default_weights_path().read_bytes()[:1000])  # truncated copy
    with pytest.raises(CheckpointError):
        load_default_ensemble(bad)


def test_score_exam_refuses_other_inputs():
    with pytest.raises(InputError):
        score_exam(np.zeros((8, 8, 8)))


@pytest.mark.parametrize("kw,flip", [
    ({"protocol": "chest"}, None),  # non-gated chest field of view: whole rib cage, scapulae
    ({"protocol": "cardiac", "padding_hu": -2048.0}, None),  # bone cut at the border, padding
    ({"protocol": "cardiac", "padding_hu": -2048.0}, (2,)),  # the same body mirrored left-right
    ({"protocol": "cardiac", "padding_hu": None}, (1, 2)),  # rotated by 180 degrees
])
def test_calcium_free_exams_keep_bone_and_the_border_clear(kw, flip):
    from agatax.synthetic import generate_exam

    ex = generate_exam(21, target_category="A", matrix=256, **kw)
    hu, affine = ex.volume.hu, ex.volume.affine.copy()
    bone = (ex.distractor_mask == 1) & (ex.volume.hu >= 130)
    if flip is not None:  # the same exam stored mirrored (a valid DICOM orientation): its affine says so
        hu, bone = np.ascontiguousarray(np.flip(hu, flip)), np.flip(bone, flip)
        for axis in flip:
            affine[:3, 3] += affine[:3, axis] * (hu.shape[axis] - 1)
            affine[:3, axis] *= -1
    res = score_exam(agatax.Volume(hu, ex.volume.spacing, affine=affine))
    assert not (res.mask & bone).any()
    assert res.chest.found and not (res.mask & ~res.chest.region).any()  # nothing outside the heart region
    assert res.mask.sum() <= 20, int(res.mask.sum())  # at most a speck: no bone or border scored wholesale


def test_calcium_free_chest_cts_score_under_10():
    """Calcium-free non-gated chest CTs (the issue's target: under 10, category A or B) in 7 of 8 exams at
    least (seeds 20-27, matrix 256): noise specks near 130 HU are the known failure of noisy 5 mm chest CT
    (generator version 6, seed 21: a 5-voxel speck at 149 HU in 32 HU of noise scores 14.1 with the
    2026-12-04 weights); experiments/false_calcium.py measures the rate on 512-matrix cohorts (RESULTS.md)."""
    from agatax.synthetic import generate_exam

    scores = [score_exam(generate_exam(seed, target_category="A", matrix=256, protocol="chest").volume).scores.agatston
              for seed in range(20, 28)]
    assert sum(a >= 10.0 for a in scores) <= 1, scores


def test_noise_specks_are_left_out_and_small_true_plaques_kept():
    """At 38 HU of noise (inside the networks' training range), cardiac exams at matrix 256: the shipped
    default scores specks of noise on calcium-free exams and adds them to small true plaques; the noise-level
    rule (``noise_snr``, on by default) leaves them out. Oracle: the generator's true Agatston score."""
    from agatax.synthetic import generate_exam

    kept_specks = []
    for seed in (30, 31, 33):  # calcium-free exams where the default finds specks (generator version 9)
        volume = generate_exam(seed, target_category="A", matrix=256, noise_sigma_hu=38.0).volume
        res = score_exam(volume)
        assert res.scores.agatston == 0.0, (seed, res.scores.agatston)
        kept = score_exam(volume, noise_snr=None)
        kept_specks.append(kept.scores.agatston)
        # what the rule left out is handed on for the report picture: the specks, beside what the other
        # rules (metal, in air) left out in both runs
        want = kept.mask & ~res.mask
        if kept.dropped is not None:
            want = want | kept.dropped
        assert (res.dropped is None) == (not want.any())
        if want.any():
            np.testing.assert_array_equal(res.dropped, want)
    assert all(a > 0 for a in kept_specks), kept_specks  # the rule is what clears them
    over = []
    for seed in (30, 31, 33):  # category B: small true plaques in the same noise
        ex = generate_exam(seed, target_category="B", matrix=256, noise_sigma_hu=38.0)
        res = score_exam(ex.volume)
        assert res.scores.agatston == pytest.approx(ex.agatston, rel=0.1), (seed, res.scores.agatston, ex.agatston)
        over.append(score_exam(ex.volume, noise_snr=None).scores.agatston / ex.agatston)
    assert max(over) > 1.2, over


def test_real_phantom_spine_insert_and_rod_are_never_scored(phantom_dir):
    """The QRM phantom end to end with the default ensemble: nothing on its spine insert or calibration rod
    (located by hand: rows 320-470 x columns 200-310; slices 29-38 x rows 190-245 x columns 225-290)."""
    volume = agatax.read_volume(phantom_dir / "dicom")
    with pytest.raises(InputError) as err:  # a phantom is refused unless asked for
        score_exam(volume)
    assert err.value.code == "PHANTOM"
    res = score_exam(volume, allow_phantom=True)
    assert any(n.startswith("phantom:") for n in res.notes)
    assert not res.mask[:, 320:470, 200:310].any()
    assert not res.mask[29:39, 190:245, 225:290].any()


def test_exam_stored_with_reversed_rows_scores_as_stored_normally(tmp_path):
    """The same exam as DICOM with ImageOrientationPatient -1,0,0,0,1,0 (pixels mirrored to match, slices
    then run head to feet): the networks must see the same heart, so the scores and the mask agree."""
    from agatax.io import write_dicom_series
    from agatax.synthetic import generate_exam

    v = generate_exam(5, target_category="D", matrix=256).volume
    affine = v.affine.copy()
    for axis in (0, 2):
        affine[:3, 3] += affine[:3, axis] * (v.shape[axis] - 1)
        affine[:3, axis] *= -1
    write_dicom_series(tmp_path / "normal", v)
    write_dicom_series(tmp_path / "reversed", agatax.Volume(v.hu[::-1, :, ::-1], v.spacing, affine=affine))
    normal = score_exam(agatax.read_volume(tmp_path / "normal"))
    reversed_ = score_exam(agatax.read_volume(tmp_path / "reversed"))
    assert normal.mask.sum() >= 20 and normal.scores.agatston > 10  # not vacuous: calcium found to compare
    np.testing.assert_array_equal(reversed_.mask, normal.mask[::-1, :, ::-1])
    assert reversed_.scores.agatston == pytest.approx(normal.scores.agatston, abs=1e-9)


@pytest.mark.parametrize("make,code", [
    (lambda v: agatax.Volume(v.hu[:, :32, :32], v.spacing), "TOO_SMALL"),  # a corner, not an exam
    (lambda v: agatax.Volume((v.hu - v.hu.min()) / np.ptp(v.hu), v.spacing), "NOT_HU"),  # normalised to [0, 1]
    (lambda v: agatax.Volume((v.hu > 130).astype(np.float32), v.spacing), "NOT_HU"),  # its own mask
])
def test_score_exam_refuses_volumes_that_are_not_exams(make, code):
    from agatax.synthetic import generate_exam

    v = generate_exam(2, target_category="C", matrix=128).volume
    with pytest.raises(InputError) as err:
        score_exam(make(v))
    assert err.value.code == code


def test_the_package_version_is_the_one_pyproject_declares():
    """agatax.__version__ (written into reports, SRs and SEGs) is the version pip installs: one number."""
    import re
    from pathlib import Path

    import agatax

    text = (Path(agatax.__file__).parents[1] / "pyproject.toml").read_text(encoding="utf-8")
    (declared,) = re.findall(r'(?m)^version = "([^"]+)"$', text)
    assert agatax.__version__ == declared
