"""Pipeline: segment on a tiny ensemble against a step-by-step oracle; HU threshold; strategies agree;
device scores agree with the host scores; input forms and errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agatax import InputError, Volume
from agatax.ensemble import ensemble_logits, stack_members
from agatax.model import UNet, UNetConfig
from agatax.pipeline import run_pipeline, segment, segment_and_score
from agatax.preprocess import preprocess

TINY = UNetConfig.tiny()
SPACING = (3.0, 1.5, 1.5)


def _variables(seed):
    shapes = jax.eval_shape(lambda: UNet(TINY).init(jax.random.key(0), jnp.zeros((1, 2, 2, 2, 1))))
    rng = np.random.default_rng(seed)

    def draw(path, s):
        if "var" in jax.tree_util.keystr(path):
            return jnp.asarray(rng.uniform(0.5, 1.5, s.shape).astype(np.float32))
        return jnp.asarray((0.5 * rng.standard_normal(s.shape)).astype(np.float32))

    return jax.tree_util.tree_map_with_path(draw, dict(shapes))


@pytest.fixture(scope="module")
def ensemble():
    return stack_members([_variables(s) for s in range(5)], TINY)


@pytest.fixture(scope="module")
def hu():
    rng = np.random.default_rng(5)
    hu = rng.uniform(-200, 100, size=(4, 16, 15)).astype(np.float32)
    hu[1:3, 4:9, 5:10] = rng.uniform(150, 700, size=(2, 5, 5))
    hu[3, 12:14, 2:4] = 450.0
    return hu


def test_segment_matches_step_by_step_oracle(ensemble, hu):
    mask, votes = segment(ensemble, Volume(hu, SPACING), localise=False)  # random arrays: no lungs
    assert mask.shape == votes.shape == hu.shape and mask.dtype == jnp.bool_ and votes.dtype == jnp.uint8
    mask, votes = np.asarray(mask), np.asarray(votes)
    # oracle: network votes on the coarse grid, nearest cell by centre on the host, threshold, majority
    x = preprocess(hu, SPACING, multiple=TINY.multiple)
    assert x.shape == (4, 8, 8)
    coarse_votes = (np.asarray(ensemble_logits(ensemble, x[None, ..., None]))[:, 0, ..., 0] > 0).sum(0)
    cz, cy, cx = (np.floor((np.arange(n) + 0.5) * d / SPACING[0]).astype(int) for n, d in zip(hu.shape, SPACING))
    expected_votes = np.where(hu >= 130, coarse_votes[np.ix_(cz, cy, cx)], 0)
    np.testing.assert_array_equal(votes, expected_votes)
    from ensembles import object_majority_oracle

    np.testing.assert_array_equal(mask, object_majority_oracle(expected_votes, hu >= 130, 5))
    assert not mask[hu < 130].any()
    assert mask.any()  # not vacuous


def test_the_dense_vote_line_reaches_every_path_with_the_exams_hu(ensemble):
    """segment (host objects), segment_and_score on the device path (objects in the jit) and run_pipeline keep
    objects peaking at 1000-1500 HU at a mean vote of 2 of 5, as the scipy oracle given the same votes and HU;
    and it changes the mask here (without the line 4 voxels, with it many more)."""
    from ensembles import object_majority_oracle

    rng = np.random.default_rng(5)
    hu = rng.uniform(-200, 100, size=(4, 16, 15)).astype(np.float32)
    hu[1:3, 4:9, 5:10] = rng.uniform(150, 1300, size=(2, 5, 5))
    hu[3, 12:14, 2:4] = 1100.0
    hu[0, 1:3, 1:3] = 1050.0
    plain, votes = (np.asarray(a) for a in segment(ensemble, Volume(hu, SPACING), dense_vote=None, localise=False))
    expected = object_majority_oracle(votes, hu >= 130, 5, hu=hu, dense_vote=0.4)
    assert expected.sum() > plain.sum() + 10
    np.testing.assert_array_equal(plain, object_majority_oracle(votes, hu >= 130, 5))
    off = dict(dense_vote=0.4, localise=False)  # random arrays: no lungs
    np.testing.assert_array_equal(np.asarray(segment(ensemble, Volume(hu, SPACING), **off)[0]), expected)
    device = segment_and_score(ensemble, Volume(hu, SPACING), score_on="device", **off)
    np.testing.assert_array_equal(np.asarray(device["mask"]), expected)
    res = run_pipeline(ensemble, Volume(hu, SPACING), metal_hu=None, air_share=None, noise_snr=None, **off)
    np.testing.assert_array_equal(res.mask, expected)


def test_the_dense_look_votes_the_larger_of_the_networks_two_looks_on_every_path(ensemble):
    """segment(dense_look=C): per voxel the larger of the step-by-step oracle's votes on the exam and on the exam
    with its HU capped at C (both on the exam's grid, 0 under 130 HU of the exam), the mask the scipy oracle's
    object rule over those votes with the exam's own HU (dense line); the device path and run_pipeline agree.
    Not vacuous: the capped look changes the votes here; a cap above the exam's peak changes nothing."""
    from ensembles import object_majority_oracle

    rng = np.random.default_rng(7)
    hu = rng.uniform(-200, 100, size=(4, 16, 15)).astype(np.float32)
    hu[1:3, 4:9, 5:10] = rng.uniform(150, 1400, size=(2, 5, 5))
    hu[3, 12:14, 2:4] = 1200.0
    hu[0, 1:3, 10:13] = 900.0
    cz, cy, cx = (np.floor((np.arange(n) + 0.5) * d / SPACING[0]).astype(int) for n, d in zip(hu.shape, SPACING))

    def oracle_votes(h):
        x = preprocess(h, SPACING, multiple=TINY.multiple)
        coarse = (np.asarray(ensemble_logits(ensemble, x[None, ..., None]))[:, 0, ..., 0] > 0).sum(0)
        return np.where(hu >= 130, coarse[np.ix_(cz, cy, cx)], 0)

    one, capped = oracle_votes(hu), oracle_votes(np.minimum(hu, 450.0))
    assert (capped > one).any()  # the second look adds votes here
    expected_votes = np.maximum(one, capped)
    expected = object_majority_oracle(expected_votes, hu >= 130, 5, hu=hu, dense_vote=0.4)
    kw = {"localise": False, "dense_vote": 0.4}
    mask, votes = (np.asarray(a) for a in segment(ensemble, Volume(hu, SPACING), dense_look=450.0, **kw))
    np.testing.assert_array_equal(votes, expected_votes)
    np.testing.assert_array_equal(mask, expected)
    device = segment_and_score(ensemble, Volume(hu, SPACING), score_on="device", dense_look=450.0, **kw)
    np.testing.assert_array_equal(np.asarray(device["mask"]), expected)
    res = run_pipeline(ensemble, Volume(hu, SPACING), dense_look=450.0, metal_hu=None, air_share=None, noise_snr=None,
                       **kw)
    np.testing.assert_array_equal(res.mask, expected)
    np.testing.assert_array_equal(np.asarray(segment(ensemble, Volume(hu, SPACING), dense_look=1500.0, **kw)[1]),
                                  one)
    np.testing.assert_array_equal(np.asarray(segment(ensemble, Volume(hu, SPACING), **kw)[1]), one)


@pytest.mark.parametrize("field,values,bright", [
    ("input_box_mm", (0.0, 4.0), 400.0),  # 4 mm on 1.5 mm pixels: a 2.7-pixel box averages them under 130 HU
    ("input_dense_gain", (0.0, 3.0), 1800.0),  # the input rises above 800 HU: above 1.0 for the networks
])
def test_pipeline_feeds_the_networks_the_input_their_config_names(field, values, bright):
    """The input the weights were trained on travels with them: segment pre-processes as their config says."""
    import dataclasses

    rng = np.random.default_rng(6)
    hu = np.full((4, 16, 15), 40.0, np.float32)
    hu[rng.random(hu.shape) < 0.3] = bright  # single bright pixels
    variables = [_variables(s) for s in range(5)]
    votes = {}
    for value in values:
        ens = stack_members(variables, dataclasses.replace(TINY, **{field: value}))
        _, v = segment(ens, Volume(hu, SPACING), localise=False)
        x = preprocess(hu, SPACING, multiple=TINY.multiple, box_mm=ens.config.input_box_mm,
                       dense_gain=ens.config.input_dense_gain)
        coarse_votes = (np.asarray(ensemble_logits(ens, x[None, ..., None]))[:, 0, ..., 0] > 0).sum(0)
        cz, cy, cx = (np.floor((np.arange(n) + 0.5) * d / SPACING[0]).astype(int) for n, d in zip(hu.shape, SPACING))
        np.testing.assert_array_equal(np.asarray(v), np.where(hu >= 130, coarse_votes[np.ix_(cz, cy, cx)], 0))
        votes[value] = np.asarray(v)
    assert not np.array_equal(*votes.values())  # the setting reaches the networks


def test_a_noisier_exam_reaches_the_networks_smoothed_as_the_quality_step_says(ensemble):
    """adapt_noise: the networks see the exam through ``input_smoothing_mm``'s Gaussian (preprocess's
    ``smooth_mm``), the candidates stay the exam's own voxels >= 130 HU; adapt_noise=False: as it is."""
    from agatax.quality import input_smoothing_mm

    rng = np.random.default_rng(8)
    hu = np.full((8, 64, 60), 40.0, np.float32)
    hu[:, :4] = hu[:, -4:] = -1000.0  # air above and below the body
    hu += rng.normal(0, 50.0, hu.shape).astype(np.float32)
    hu[2:5, 20:26, 20:26] = 400.0
    sigma = input_smoothing_mm(hu, SPACING)[0]
    assert sigma > 0
    cz, cy, cx = (np.floor((np.arange(n) + 0.5) * d / SPACING[0]).astype(int) for n, d in zip(hu.shape, SPACING))
    votes = {}
    for adapt, smooth in ((True, sigma), (False, 0.0)):
        _, v = segment(ensemble, Volume(hu, SPACING), adapt_noise=adapt, localise=False)
        x = preprocess(hu, SPACING, multiple=TINY.multiple, smooth_mm=smooth)
        coarse = (np.asarray(ensemble_logits(ensemble, x[None, ..., None]))[:, 0, ..., 0] > 0).sum(0)
        np.testing.assert_array_equal(np.asarray(v), np.where(hu >= 130, coarse[np.ix_(cz, cy, cx)], 0))
        votes[adapt] = np.asarray(v)
    assert not np.array_equal(votes[True], votes[False])  # the smoothing reaches the networks


def test_every_smoothing_sigma_shares_one_compilation(ensemble):
    """The sigma reaches the jit as a traced value: exams of one shape smoothed by different sigmas compile once."""
    from agatax.pipeline import _pipeline_kernel
    from agatax.quality import input_smoothing_mm

    rng = np.random.default_rng(9)
    sigmas = []
    for k, sd in enumerate((46.0, 60.0, 46.0)):
        hu = (np.full((8, 64, 60), 40.0) + rng.normal(0, sd, (8, 64, 60))).astype(np.float32)
        if k == 1:
            before = _pipeline_kernel._cache_size()
        segment(ensemble, Volume(hu, SPACING), localise=False)
        sigmas.append(input_smoothing_mm(hu, SPACING)[0])
    assert _pipeline_kernel._cache_size() == before
    assert sigmas[0] > 0 and sigmas[1] > sigmas[0]  # not vacuous: two different sigmas ran


def test_inputs_forms_and_strategies_agree(ensemble, hu):
    a = segment(ensemble, (hu, SPACING), strategy="sequential", localise=False)
    b = segment(ensemble, jnp.asarray(hu), spacing=SPACING, strategy="vmap", localise=False)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_run_pipeline_scores_agree_with_device_scores(ensemble, hu):
    result = run_pipeline(ensemble, Volume(hu, SPACING), localise=False)
    device = segment_and_score(ensemble, Volume(hu, SPACING), score_on="device", localise=False)
    np.testing.assert_array_equal(result.mask, device["mask"])
    assert result.scores.agatston > 0  # not vacuous
    assert result.scores.agatston == pytest.approx(float(device["scores"]["agatston"]), rel=1e-4, abs=1e-3)
    assert result.scores.volume_mm3 == pytest.approx(float(device["scores"]["volume_mm3"]), rel=1e-4)
    # independent volume check: retained voxels x voxel volume is at most the mask's volume
    assert result.scores.volume_mm3 <= result.mask.sum() * np.prod(SPACING) + 1e-6
    assert result.to_dict()["spacing"] == list(SPACING)
    # host scoring (the CPU default): same mask, votes and scores as the on-device path
    host = segment_and_score(ensemble, Volume(hu, SPACING), score_on="host", localise=False)
    np.testing.assert_array_equal(host["mask"], device["mask"])
    np.testing.assert_array_equal(host["votes"], device["votes"])
    for key in ("agatston", "volume_mm3", "lesions"):
        assert float(host["scores"][key]) == pytest.approx(float(device["scores"][key]), rel=1e-4, abs=1e-3)
    assert float(host["scores"]["lesions"]) == len(result.scores.lesions)
    with pytest.raises(InputError) as info:
        segment_and_score(ensemble, Volume(hu, SPACING), score_on="gpu")
    assert info.value.code == "BAD_ARGUMENT"


def test_segment_errors(ensemble, hu):
    with pytest.raises(InputError) as info:
        segment(ensemble, hu)
    assert info.value.code == "BAD_ARGUMENT"
    with pytest.raises(InputError) as info:
        segment(ensemble, hu[0], spacing=SPACING)
    assert info.value.code == "BAD_RANK"
    bad = hu.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError) as info:
        segment(ensemble, bad, spacing=SPACING)
    assert info.value.code == "NON_FINITE"
    with pytest.raises(InputError) as info:
        segment(ensemble, hu, spacing=SPACING, strategy="gpu")
    assert info.value.code == "BAD_STRATEGY"


def test_aligned_exam_is_shared_with_the_cpu_device_not_copied():
    from agatax._memory import aligned_empty
    from agatax.pipeline import _on_device

    hu = aligned_empty((3, 5, 7))
    hu[:] = np.arange(hu.size, dtype=np.float32).reshape(hu.shape)
    assert hu.ctypes.data % 64 == 0 and hu.flags.c_contiguous
    on = _on_device(hu)
    np.testing.assert_array_equal(np.asarray(on), hu)
    if jax.default_backend() == "cpu":
        assert on.unsafe_buffer_pointer() == hu.ctypes.data


def test_exported_names_are_the_functions_even_where_a_submodule_shares_the_name():
    import importlib
    import subprocess
    import sys

    import agatax

    importlib.import_module("agatax.pipeline")  # loads the submodule agatax.preprocess
    assert callable(agatax.preprocess) and agatax.preprocess.__name__ == "preprocess"
    for name in agatax.__all__:  # every public name resolves
        assert getattr(agatax, name) is not None
    out = subprocess.run([sys.executable, "-c", "import agatax.cli, sys; print('jax' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # the command line starts without JAX


def test_metal_objects_are_left_out_and_named():
    from agatax.pipeline import exclude_metal

    hu = np.full((6, 20, 20), 40.0, np.float32)
    mask = np.zeros(hu.shape, bool)
    hu[1:3, 2:5, 2:5], mask[1:3, 2:5, 2:5] = 450.0, True  # calcium
    hu[3:5, 10:13, 10:13], mask[3:5, 10:13, 10:13] = 300.0, True  # a clip: its blooming ...
    hu[4, 11, 11] = 3071.0  # ... around a saturated core
    hu[2, 10, 10], mask[2, 10, 10] = 250.0, True  # touches the clip diagonally (26-connected): the same object
    votes = mask.astype(np.uint8) * 4
    out, out_votes, notes = exclude_metal(hu, mask, votes, (3.0, 0.5, 0.5), metal_hu=2000.0)
    expected = np.zeros(hu.shape, bool)
    expected[1:3, 2:5, 2:5] = True
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out_votes, expected * 4)
    assert mask.sum() == 18 + 18 + 1  # the input is not changed
    assert len(notes) == 1 and "1 object" in notes[0] and "3071 HU" in notes[0]
    same = exclude_metal(hu, expected, votes, (3.0, 0.5, 0.5), metal_hu=2000.0)
    assert same[0] is expected and same[2] == ()


def test_mask_objects_are_those_of_scipy_on_the_whole_volume():
    """Oracle: scipy's 26-connected labelling and per-label maximum on the whole volume; the box is the mask's
    tight bounding box (np.nonzero)."""
    from scipy import ndimage

    from agatax.pipeline import _objects

    rng = np.random.default_rng(3)
    for _ in range(20):
        shape = tuple(int(v) for v in rng.integers(3, 14, 3))
        mask = rng.random(shape) < rng.uniform(0.005, 0.2)
        mask.flat[rng.integers(mask.size)] = True
        hu = rng.normal(200, 300, shape).astype(np.float32)
        box, lab, peaks = _objects(hu, mask)
        assert box == tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(mask))
        full, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
        np.testing.assert_array_equal(lab, full[box])
        np.testing.assert_allclose(peaks, ndimage.maximum(hu, full, index=np.arange(1, n + 1)))


def test_objects_surrounded_by_air_are_left_out_and_named():
    """Hand-built, 3 x 0.5 x 0.5 mm voxels: the ring 1-3 mm around an object (in-plane, its own slices) is
    read; an object in lung (-850 HU) is dropped, one in fat or on the lung's border (half its ring tissue,
    as a plaque on the heart's surface facing the lung) is kept."""
    from agatax.pipeline import exclude_in_air

    hu = np.full((6, 40, 60), -100.0, np.float32)  # fat
    hu[:, :, 40:] = -850.0  # lung on the right
    hu[:, 20:, 20:40] = 40.0  # a heart below, against the lung at x = 40
    mask = np.zeros(hu.shape, bool)
    hu[1:3, 5:8, 5:8], mask[1:3, 5:8, 5:8] = 450.0, True  # A: in fat
    hu[2:4, 5:8, 50:53], mask[2:4, 5:8, 50:53] = 600.0, True  # B: deep in the lung (a granuloma)
    hu[3:5, 28:31, 38:41], mask[3:5, 28:31, 38:41] = 500.0, True  # C: on the heart's border with the lung
    votes = mask.astype(np.uint8) * 5
    out, out_votes, notes = exclude_in_air(hu, mask, votes, (3.0, 0.5, 0.5))
    expected = mask.copy()
    expected[2:4, 5:8, 50:53] = False
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out_votes, expected * 5)
    assert mask.sum() == 3 * 18  # the input is not changed
    assert len(notes) == 1 and notes[0].startswith("in air: 1 object(s)")
    assert "(slices 2;" in notes[0] or "(slices 3;" in notes[0]  # B spans slices 2-3
    # the share is a threshold: C's ring is half lung (x >= 40), so asking for 40 % drops it too
    out, _, notes = exclude_in_air(hu, mask, votes, (3.0, 0.5, 0.5), air_share=0.4)
    assert not out[3:5, 28:31, 38:41].any() and out[1:3, 5:8, 5:8].all() and "2 object(s)" in notes[0]
    # an object whose slices hold no air, and an empty mask, are returned as they came
    same = exclude_in_air(hu, expected, votes, (3.0, 0.5, 0.5))
    assert same[0] is expected and same[2] == ()
    empty = np.zeros(hu.shape, bool)
    assert exclude_in_air(hu, empty, votes, (3.0, 0.5, 0.5))[2] == ()


def test_objects_at_the_noise_level_are_left_out_and_named():
    """Hand-built, 3 x 0.5 x 0.5 mm voxels, noise SD given: an object is dropped when its peak stands less
    than 5 SDs above the median of the voxels 1-3 mm around it (in-plane, its own slices)."""
    from agatax.pipeline import exclude_noise_level

    hu = np.full((6, 40, 60), -100.0, np.float32)  # fat
    hu[:, 20:, :] = 40.0  # blood and myocardium below y = 20
    mask = np.zeros(hu.shape, bool)
    hu[1, 5:7, 5:7], mask[1, 5:7, 5:7] = 160.0, True  # A: 260 HU above fat: 8.7 SDs at 30 HU
    hu[2, 30:32, 10:12], mask[2, 30:32, 10:12] = 160.0, True  # B: 120 HU above blood: 4.0 SDs
    hu[3:5, 30:33, 40:43], mask[3:5, 30:33, 40:43] = 200.0, True  # C: 160 HU above blood: 5.3 SDs
    votes = mask.astype(np.uint8) * 5
    out, out_votes, notes = exclude_noise_level(hu, mask, votes, (3.0, 0.5, 0.5), 30.0)
    expected = mask.copy()
    expected[2, 30:32, 10:12] = False
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out_votes, expected * 5)
    assert mask.sum() == 4 + 4 + 18  # the input is not changed
    assert len(notes) == 1 and notes[0].startswith("noise level: 1 object(s)") and "(slices 2;" in notes[0]
    # at 40 HU of noise C stands 4.0 SDs out and goes too; A (6.5) stays
    out, _, notes = exclude_noise_level(hu, mask, votes, (3.0, 0.5, 0.5), 40.0)
    assert out[1, 5:7, 5:7].all() and not out[2:5].any() and "2 object(s)" in notes[0]
    # noise unknown (a phantom's plastic: no flat tissue), an empty mask: returned as they came
    assert exclude_noise_level(hu, mask, votes, (3.0, 0.5, 0.5), None)[0] is mask
    assert exclude_noise_level(hu, np.zeros_like(mask), votes, (3.0, 0.5, 0.5), 30.0)[2] == ()


def test_noise_level_rule_reads_the_noise_near_each_object():
    """Seeded white noise of 10 HU SD on the left half and 40 HU on the right (more than 25 mm apart), 40 HU
    soft tissue, 0.5 mm pixels. The local estimate must find each half's SD (the oracle: the SD drawn), and
    the rule must judge each object against it: a plaque 130 HU above quiet tissue is kept (13 SDs), a
    speck 160 HU above noisy tissue is dropped (4 SDs), though against the exam-wide SD both stand >= 5."""
    from agatax.pipeline import exclude_noise_level
    from agatax.quality import image_noise_hu, local_noise_hu

    rng = np.random.default_rng(7)
    spacing = (3.0, 0.5, 0.5)
    sd = np.where(np.arange(320) < 160, 10.0, 40.0)[None, None, :]
    hu = (40.0 + rng.standard_normal((6, 120, 320)) * sd).astype(np.float32)
    mask = np.zeros(hu.shape, bool)
    hu[2:4, 58:61, 38:41], mask[2:4, 58:61, 38:41] = 170.0, True  # quiet side, 130 HU above
    hu[2:4, 58:61, 278:281], mask[2:4, 58:61, 278:281] = 200.0, True  # noisy side, 160 HU above
    quiet = local_noise_hu(hu, spacing, (slice(2, 4), slice(58, 61), slice(38, 41)))
    noisy = local_noise_hu(hu, spacing, (slice(2, 4), slice(58, 61), slice(278, 281)))
    assert abs(quiet - 10.0) < 1.0 and abs(noisy - 40.0) < 4.0, (quiet, noisy)
    whole = image_noise_hu(hu, spacing)
    assert 10.0 < whole <= 160.0 / 5.0  # the premise: both objects stand >= 5 exam-wide SDs out
    votes = mask.astype(np.uint8) * 5
    kept_all, _, notes = exclude_noise_level(hu, mask, votes, spacing, whole, local=False)
    assert kept_all.sum() == mask.sum() and notes == ()
    out, _, notes = exclude_noise_level(hu, mask, votes, spacing, whole, local=True)
    expected = mask.copy()
    expected[:, :, 160:] = False
    np.testing.assert_array_equal(out, expected)
    assert len(notes) == 1 and "1 object(s)" in notes[0] and "(slices 2;" in notes[0]
    assert f"({noisy:.0f} HU near them)" in notes[0]
    # too little flat tissue near an object (all of it above 100 HU): the exam-wide SD is used
    assert local_noise_hu(np.full((2, 40, 40), 400.0, np.float32), spacing, (slice(0, 1), slice(9, 11), slice(9, 11))) is None


def test_left_out_objects_are_the_unscored_calcified_objects_of_the_region():
    """Hand-built: 1.5 mm^3 voxels (3 x 0.5 x 1.0 mm). Listed: unscored objects >= 130 HU inside the region of
    >= 5 mm^3 (4 voxels) peaking at >= 250 HU, below metal; each object 26-connected across slices."""
    from agatax.pipeline import left_out_objects

    hu = np.full((8, 20, 20), 40.0, np.float32)
    mask = np.zeros(hu.shape, bool)
    region = np.zeros(hu.shape, bool)
    region[:, 2:18, 2:18] = True
    hu[1:3, 3:5, 3:5] = 300.0  # A: 8 voxels, 12 mm^3, peak 300 -> listed
    hu[2, 4, 4] = 420.0
    hu[4, 8, 8] = hu[6, 10, 10] = hu[6, 10, 11] = 260.0  # B: 4 voxels diagonal over 3 slices -> listed
    hu[5, 9, 9] = 270.0
    hu[1, 12:14, 12:14] = 500.0  # C: scored -> not listed
    mask[1, 12:14, 12:14] = True
    hu[3, 15, 15:18] = 600.0  # D: 3 voxels, 4.5 mm^3 -> too small
    hu[5, 14:16, 3:5] = 200.0  # E: 4 voxels but peak 200 -> too faint
    hu[6, 0:2, 5:9] = 700.0  # F: outside the region -> not listed
    hu[7, 5:7, 12:14] = 2500.0  # G: metal -> not listed
    got_mask, got = left_out_objects(hu, mask, region, (3.0, 0.5, 1.0))
    assert got == [
        {"slices": [1, 2], "peak_slice": 2, "voxels": 8, "volume_mm3": 12.0, "peak_hu": 420.0},
        {"slices": [4, 6], "peak_slice": 5, "voxels": 4, "volume_mm3": 6.0, "peak_hu": 270.0},
    ]
    want = np.zeros(hu.shape, bool)
    want[1:3, 3:5, 3:5] = True
    want[4, 8, 8] = want[5, 9, 9] = want[6, 10, 10] = want[6, 10, 11] = True
    np.testing.assert_array_equal(got_mask, want)
    assert [o["peak_hu"] for o in left_out_objects(hu, mask, region, (3.0, 0.5, 1.0), metal_hu=None)[1]] == [
        420.0, 270.0, 2500.0]  # G kept without the metal rule (4 voxels, after B by its first slice)
    empty = left_out_objects(hu, mask, np.zeros(hu.shape, bool), (3.0, 0.5, 1.0))
    assert not empty[0].any() and empty[1] == []
    with pytest.raises(InputError) as err:
        left_out_objects(hu, mask[:4], region, (3.0, 0.5, 1.0))
    assert err.value.code == "SHAPE_MISMATCH"


def _one_dense_note(notes):
    """The dense notes of the two tests below: one object of slices 3-4 peaking at 1700 HU carries 18.0 of
    21.0 (C); without it, B."""
    assert len(notes) == 1 and notes[0].startswith("dense: 1 scored object")
    assert "slices 3-4;" in notes[0] and "peak 1700 HU" in notes[0]
    assert "18.0 of the Agatston score 21.0" in notes[0] and "category is B, not C" in notes[0]


def test_a_category_that_rests_on_stent_dense_objects_is_flagged():
    """Hand-computed: 0.5 mm pixels (0.25 mm^2). Calcium: 3 pixels at 450 HU on one slice = 0.75 mm^2 x 4 = 3.0
    (category B). A stent-dense object: 3 x 3 pixels at 1700 HU on two slices = 2 x 2.25 x 4 = 18.0. Scored
    together, 21.0 (C); without the dense object, B: one note names it and the category without it. An
    object at the metal rule's HU (left out before) or none >= 1500 HU: no note."""
    from agatax.pipeline import dense_note
    from agatax.scoring import compute_scores

    spacing = (3.0, 0.5, 0.5)
    hu = np.full((6, 20, 20), 40.0, np.float32)
    mask = np.zeros(hu.shape, bool)
    hu[1, 2, 2:5], mask[1, 2, 2:5] = 450.0, True
    hu[3:5, 10:13, 10:13], mask[3:5, 10:13, 10:13] = 1700.0, True
    scores = compute_scores(hu, mask, spacing)
    assert scores.agatston == pytest.approx(21.0) and scores.category == "C"
    _one_dense_note(dense_note(hu, mask, spacing, scores))
    # the same object at 2100 HU is metal (exclude_metal's business): no note here
    metal = hu.copy()
    metal[3:5, 10:13, 10:13] = 2100.0
    assert dense_note(metal, mask, spacing, compute_scores(metal, mask, spacing)) == ()
    # a dense object that does not change the category: the number stands, no note
    big = mask.copy()
    hu2 = hu.copy()
    hu2[1, 5:15, 2:12], big[1, 5:15, 2:12] = 450.0, True  # + 100 px x 0.25 x 4 = 100 -> 121 with, 103 without
    s2 = compute_scores(hu2, big, spacing)
    assert s2.category == "D" and dense_note(hu2, big, spacing, s2) == ()
    assert dense_note(hu, mask & (hu < 1500), spacing, compute_scores(hu, mask & (hu < 1500), spacing)) == ()


def test_a_scored_part_of_a_stent_dense_object_is_flagged_by_the_objects_peak():
    """Hand-computed: 0.5 mm pixels (0.25 mm^2). Calcium: 3 pixels at 450 HU (3.0, category B). A tube on
    slices 3-4 (14 mm from the calcium), 3 rows x 6 columns: its first 3 columns at 1700 HU (not scored), the next 3 at 600 HU (scored:
    2 x 9 px x 0.25 mm^2 x 4 = 18.0). The scored part peaks at 600 HU but belongs to one object >= 130 HU that
    peaks at 1700 (a stent marked only at its end): 21.0 (C) rests on it, so one note. The same tube with a
    column of soft tissue (40 HU) between the two parts: two objects, no note. A second scored object dense
    of its own does not hide the first. With the unscored part at metal's 2100 HU, both the dense note and
    the note beside metal name it; 12 mm from metal, beyond the note beside metal, the dense note alone."""
    from agatax.pipeline import beside_metal_note, dense_note
    from agatax.scoring import compute_scores

    spacing = (3.0, 0.5, 0.5)
    hu = np.full((6, 48, 48), 40.0, np.float32)
    mask = np.zeros(hu.shape, bool)
    hu[1, 2, 2:5], mask[1, 2, 2:5] = 450.0, True
    hu[3:5, 30:33, 10:13] = 1700.0
    hu[3:5, 30:33, 13:16], mask[3:5, 30:33, 13:16] = 600.0, True
    scores = compute_scores(hu, mask, spacing)
    assert scores.agatston == pytest.approx(21.0) and scores.category == "C"
    _one_dense_note(dense_note(hu, mask, spacing, scores))
    apart = hu.copy()
    apart[3:5, 30:33, 13] = 40.0  # soft tissue between: the scored part is an object of its own
    apart[3:5, 30:33, 16] = 600.0
    mask_apart = np.zeros(hu.shape, bool)
    mask_apart[1, 2, 2:5] = True
    mask_apart[3:5, 30:33, 14:17] = True
    s_apart = compute_scores(apart, mask_apart, spacing)
    assert s_apart.agatston == pytest.approx(21.0) and dense_note(apart, mask_apart, spacing, s_apart) == ()
    # a second scored object at 1700 HU of its own (3 px x 0.25 mm^2 x 4 = 3.0): 24.0, C; without both, B.
    # Each object is judged by its own image object, not by the densest scored one
    both, mask_both = hu.copy(), mask.copy()
    both[4, 40, 40:43], mask_both[4, 40, 40:43] = 1700.0, True
    s_both = compute_scores(both, mask_both, spacing)
    assert s_both.agatston == pytest.approx(24.0) and s_both.category == "C"
    notes = dense_note(both, mask_both, spacing, s_both)
    assert len(notes) == 1 and notes[0].startswith("dense: 2 scored object") and "category is B, not C" in notes[0]
    # the tube's unscored part at metal's 2100 HU: the scored part belongs to metal; both notes name it
    metal = hu.copy()
    metal[3:5, 30:33, 10:13] = 2100.0
    notes = dense_note(metal, mask, spacing, scores)
    assert len(notes) == 1 and "peak 2100 HU" in notes[0] and "category is B, not C" in notes[0]
    beside = beside_metal_note(metal, mask, spacing, scores)
    assert len(beside) == 1 and beside[0].startswith("beside metal: 1 scored object")
    # a scored object of 1700 HU of its own, part of a tube reaching 2100 HU 12 mm away (beyond the 10 mm of
    # the note beside metal): the dense note still names it
    far, mask_far = np.full((6, 48, 60), 40.0, np.float32), np.zeros((6, 48, 60), bool)
    far[1, 2, 2:5], mask_far[1, 2, 2:5] = 450.0, True
    far[3:5, 30:33, 10:40] = 1000.0
    far[3:5, 30:33, 10:13], mask_far[3:5, 30:33, 10:13] = 1700.0, True
    far[3:5, 30:33, 37:40] = 2100.0  # 24 columns (12 mm) beyond the scored part
    s_far = compute_scores(far, mask_far, spacing)
    assert s_far.category == "C" and beside_metal_note(far, mask_far, spacing, s_far) == ()
    notes = dense_note(far, mask_far, spacing, s_far)
    assert len(notes) == 1 and "slices 3-4;" in notes[0] and "category is B, not C" in notes[0]


def test_scored_calcium_in_the_scans_first_or_last_slice_is_warned():
    """Hand-computed: 0.5 mm pixels (0.25 mm^2). An object in slices 0-1, 4 x 4 pixels at 450 HU on each: 2 x 4
    mm^2 x 4 = 32.0; one in slice 3 only, 3 pixels at 250 HU: 0.75 mm^2 x 2 = 1.5 (33.5 in all). The note
    names the object in the first slice and its 32.0; none when no scored voxel lies in an end slice; the
    last slice named on its own, and both ends together."""
    from agatax.pipeline import scan_cut_note
    from agatax.scoring import compute_scores

    spacing = (3.0, 0.5, 0.5)
    hu = np.full((6, 20, 20), 40.0, np.float32)
    mask = np.zeros(hu.shape, bool)
    hu[0:2, 2:6, 2:6], mask[0:2, 2:6, 2:6] = 450.0, True
    hu[3, 12, 2:5], mask[3, 12, 2:5] = 250.0, True
    scores = compute_scores(hu, mask, spacing)
    assert scores.agatston == pytest.approx(33.5)
    (note,) = scan_cut_note(hu, mask, spacing, scores)
    assert note.startswith("cut by the scan: 1 scored object(s) reach the scan's first slice (0) and carry")
    assert "carry 32.0 of the Agatston score 33.5" in note
    inner = mask.copy()
    inner[0] = False  # the object now starts in slice 1: nothing in an end slice
    assert scan_cut_note(hu, inner, spacing, compute_scores(hu, inner, spacing)) == ()
    flipped, fmask = hu[::-1].copy(), mask[::-1].copy()
    (last,) = scan_cut_note(flipped, fmask, spacing, compute_scores(flipped, fmask, spacing))
    assert "the scan's last slice (5) and" in last and "carry 32.0 of" in last
    both = mask.copy()
    hu2 = hu.copy()
    hu2[5, 15:17, 15:17], both[5, 15:17, 15:17] = 300.0, True  # + 1 mm^2 x 3 = 3.0
    (two,) = scan_cut_note(hu2, both, spacing, compute_scores(hu2, both, spacing))
    assert two.startswith("cut by the scan: 2 scored object(s) reach the scan's first slice (0) and last slice (5)")
    assert "carry 35.0 of the Agatston score 36.5" in two
    # a speck in an end slice that the score leaves out (2 pixels: under the 3-pixel minimum) is not named
    speck, smask = hu.copy(), inner.copy()
    speck[5, 15, 15:17], smask[5, 15, 15:17] = 300.0, True
    assert scan_cut_note(speck, smask, spacing, compute_scores(speck, smask, spacing)) == ()
    import jax.numpy as jnp  # device arrays are taken too

    (dev,) = scan_cut_note(jnp.asarray(hu), jnp.asarray(mask), spacing, scores)
    assert dev == note


def test_run_pipeline_warns_of_scored_calcium_the_scans_end_cuts():
    """run_pipeline (an ensemble marking every voxel >= 130 HU, no localisation) adds the note when calcium
    lies in the last slice, and not when the same calcium lies inside the scan."""
    from ensembles import all_calcium_ensemble

    from agatax.pipeline import run_pipeline

    hu = np.full((16, 40, 60), -50.0, np.float32)
    hu[14:16, 10:14, 20:24] = 400.0
    res = run_pipeline(all_calcium_ensemble(), Volume(hu, (3.0, 0.5, 0.5)), localise=False)
    assert [n for n in res.notes if n.startswith("cut by the scan: 1 scored object(s) reach the scan's last")]
    inside = np.roll(hu, -6, axis=0)
    res = run_pipeline(all_calcium_ensemble(), Volume(inside, (3.0, 0.5, 0.5)), localise=False)
    assert res.scores.agatston > 0 and not [n for n in res.notes if n.startswith("cut by the scan:")]


def test_run_pipeline_warns_when_the_category_rests_on_objects_beside_metal():
    """run_pipeline leaves the metal out and adds the note (an ensemble that marks every voxel >= 130 HU, no
    localisation): the object 4.5 mm from a 3000 HU clip carries the category; with the metal rule off
    (metal_hu=None) the metal itself is scored and no note is made."""
    from ensembles import all_calcium_ensemble

    from agatax.pipeline import run_pipeline

    hu = np.full((16, 40, 60), -50.0, np.float32)
    hu[8, 2:4, 30:32] = 3000.0
    hu[8, 2:6, 40:44] = 200.0
    hu[4, 30, 2:5] = 450.0
    res = run_pipeline(all_calcium_ensemble(), Volume(hu, (3.0, 0.5, 0.5)), localise=False)
    assert res.scores.agatston == pytest.approx(11.0)
    assert any(n.startswith("beside metal:") and "category is B, not C" in n for n in res.notes)
    kept = run_pipeline(all_calcium_ensemble(), Volume(hu, (3.0, 0.5, 0.5)), localise=False, metal_hu=None)
    assert not any(n.startswith("beside metal:") for n in kept.notes)


def test_run_pipeline_warns_when_the_category_rests_on_a_stent_dense_object():
    """run_pipeline adds the note (an ensemble that marks every voxel >= 130 HU as calcium, no localisation)."""
    from ensembles import all_calcium_ensemble

    from agatax.pipeline import run_pipeline

    hu = np.full((16, 32, 32), -50.0, np.float32)
    hu[6, 4, 4:7] = 450.0
    hu[8:10, 20:23, 20:23] = 1700.0
    res = run_pipeline(all_calcium_ensemble(), Volume(hu, (3.0, 0.5, 0.5)), localise=False)
    assert res.scores.category == "C"
    assert any(n.startswith("dense:") and "category is B, not C" in n for n in res.notes)


@pytest.mark.parametrize("x0, near", [(40, True), (51, True), (52, False)])
def test_a_category_that_rests_on_objects_beside_metal_is_flagged(x0, near):
    """Hand-computed: 0.5 mm pixels (0.25 mm^2), 3 mm slices. Metal: 2 x 2 pixels at 3000 HU, columns 30-31,
    not scored. A streak-like object: 4 x 4 pixels at 200 HU on the metal's slice from column x0 = 16 x 0.25
    x 2 = 8.0, its nearest pixel (x0 - 31) x 0.5 mm from the metal: 4.5, 10.0 (within) or 10.5 mm (not).
    Calcium far away: 3 pixels at 450 HU = 3.0 (B). Together 11.0 (C); without the object beside metal, B."""
    from agatax.pipeline import beside_metal_note
    from agatax.scoring import compute_scores

    spacing = (3.0, 0.5, 0.5)
    hu = np.full((6, 40, 60), 40.0, np.float32)
    mask = np.zeros(hu.shape, bool)
    hu[3, 2:4, 30:32] = 3000.0
    hu[3, 2:6, x0:x0 + 4], mask[3, 2:6, x0:x0 + 4] = 200.0, True
    hu[1, 30, 2:5], mask[1, 30, 2:5] = 450.0, True
    scores = compute_scores(hu, mask, spacing)
    assert scores.agatston == pytest.approx(11.0) and scores.category == "C"
    notes = beside_metal_note(hu, mask, spacing, scores)
    if near:
        assert len(notes) == 1 and notes[0].startswith("beside metal: 1 scored object(s) within 10 mm")
        assert "slices 3)" in notes[0] and "8.0 of the Agatston score 11.0" in notes[0]
        assert "category is B, not C" in notes[0]
    else:
        assert notes == ()
    # no metal, or the category not resting on the object: no note
    plain = np.where(hu >= 2000, 40.0, hu).astype(np.float32)
    assert beside_metal_note(plain, mask, spacing, scores) == ()
    big, hu2 = mask.copy(), hu.copy()
    hu2[1, 10:20, 2:12], big[1, 10:20, 2:12] = 450.0, True  # + 100 px x 0.25 x 4 = 100: 111 with, 103 without
    s2 = compute_scores(hu2, big, spacing)
    assert s2.category == "D" and beside_metal_note(hu2, big, spacing, s2) == ()


@pytest.mark.parametrize("flip_z", [False, True])
def test_slice_counts_of_one_bucket_share_a_compilation_and_give_the_unpadded_result(ensemble, flip_z):
    from agatax.pipeline import _pipeline_kernel, _run

    rng = np.random.default_rng(11)
    m = TINY.multiple
    kw = dict(strategy="auto", target_mm=None, threshold_hu=130.0, score=False, localise=False)
    volumes = []
    for nz in range(3 * m + 1, 4 * m + 1):  # slice counts whose 3 mm grid is 4 m cells
        hu = rng.uniform(-200, 100, size=(nz, 16, 14)).astype(np.float32)
        hu[1:3, 3:9, 2:7] = rng.uniform(150, 700, size=(2, 6, 5))
        hu[-1, 10:13, 9:12] = 500.0  # calcium on the last slice, next to the added air
        affine = np.zeros((4, 4))
        affine[2, 0], affine[1, 1], affine[0, 2], affine[3, 3] = (-3.0 if flip_z else 3.0), 1.5, 1.5, 1.0
        volumes.append(Volume(hu, (3.0, 1.5, 1.5), affine=affine))
    _run(ensemble, volumes[0], None, **kw)
    before = _pipeline_kernel._cache_size()
    padded = [_run(ensemble, v, None, **kw)[0] for v in volumes]
    assert _pipeline_kernel._cache_size() == before  # every slice count of the bucket: the one compilation
    for v, out in zip(volumes, padded):
        plain = _run(ensemble, v, None, bucket=False, **kw)[0]
        assert out["mask"].shape == v.shape
        np.testing.assert_array_equal(np.asarray(out["votes"]), np.asarray(plain["votes"]))
        np.testing.assert_array_equal(np.asarray(out["mask"]), np.asarray(plain["mask"]))
    assert any((np.asarray(out["votes"]) >= 3).any() for out in padded)  # voxels a majority voted for


def test_network_crop_covers_the_box_with_context_on_aligned_bucketed_cells():
    from agatax.pipeline import CROP_MARGIN_CELLS, network_crop

    assert CROP_MARGIN_CELLS == 6  # the hand-worked cases below assume it
    box = (slice(10, 30), slice(100, 200), slice(50, 150))  # cells 10-30, 25-50, 12.5-37.5 of 3 mm
    assert network_crop(box, (3.0, 0.75, 0.75), 3.0, (40, 64, 64), 4) == ((4, 16, 4), (32, 48, 48))
    # at the grid's end the crop keeps its size and moves back inside
    assert network_crop((slice(30, 40),) + box[1:], (3.0, 0.75, 0.75), 3.0, (40, 64, 64), 4) == ((24, 16, 4), (16, 48, 48))
    # a box that fills most of the grid (a cardiac field of view): the whole grid, one shape for all
    assert network_crop((slice(2, 38), slice(10, 250), slice(10, 250)), (3.0, 0.75, 0.75), 3.0, (40, 64, 64), 4) is None
    assert network_crop(None, (3.0, 0.75, 0.75), 3.0, (40, 64, 64), 4) is None


def test_networks_run_on_the_chest_region_box_only_lose_no_region_voxel():
    """A chest CT whose region is a small part of the grid: the networks run on the crop only. With networks
    that vote calcium everywhere the mask must still be every voxel >= 130 HU inside the region (a crop
    placed wrongly loses some); the shipped ensemble's mask is that of the whole grid, voxel for voxel."""
    import agatax.pipeline as P
    from agatax.defaults import load_default_ensemble
    from agatax.localise import localise_chest
    from agatax.preprocess import grid_shape, network_grid_mm
    from agatax.synthetic import generate_exam
    from ensembles import all_calcium_ensemble

    ex = generate_exam(3, target_category="C", protocol="chest", matrix=256)
    hu, sp = np.asarray(ex.volume.hu), ex.volume.spacing
    chest = localise_chest(hu, sp)
    everywhere = all_calcium_ensemble()
    grid = grid_shape(hu.shape, sp, multiple=everywhere.config.multiple)
    cells = P.network_crop(chest.box, sp, network_grid_mm(sp[0]), grid, everywhere.config.multiple)
    assert cells is not None and np.prod(cells[1]) < 0.6 * np.prod(grid)  # the crop is used, and small
    mask, _ = segment(everywhere, ex.volume)
    np.testing.assert_array_equal(np.asarray(mask), (hu >= 130.0) & chest.region)
    default = load_default_ensemble()
    cropped = run_pipeline(default, ex.volume)
    old = P.CROP_MAX_SHARE
    try:
        P.CROP_MAX_SHARE = -1.0  # never crop
        whole = run_pipeline(default, ex.volume)
    finally:
        P.CROP_MAX_SHARE = old
    assert whole.mask.any()
    np.testing.assert_array_equal(cropped.mask, whole.mask)
