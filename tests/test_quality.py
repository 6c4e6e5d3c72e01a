"""Noise measurement against known noise (white and correlated, with tissue edges), and the pipeline's
warning when an exam is noisier than the networks' training range."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import ndimage

from agatax.quality import (SMOOTH_MAX_MM, SMOOTH_TARGET_SHARE, TRAINED_NOISE_HU, coverage_note, image_noise_hu,
                            input_smoothing_mm, noise_note, smoothing_note, thickness_note)

SPACING = (3.0, 0.5, 0.5)


def _body(shape=(8, 128, 128)):
    """Air around a soft-tissue body (40 HU) holding a fat band (-100 HU) and a bone disc (700 HU)."""
    hu = np.full(shape, -1000.0)
    yy, xx = np.mgrid[:shape[1], :shape[2]]
    body = (yy - 64) ** 2 + (xx - 64) ** 2 < 58 ** 2
    hu[:, body] = 40.0
    hu[:, 30:40, 20:110] = -100.0
    hu[:, (yy - 90) ** 2 + (xx - 64) ** 2 < 10 ** 2] = 700.0
    return hu


@pytest.mark.parametrize("sigma", [8.0, 25.0, 50.0])
def test_white_noise_is_measured(sigma):
    rng = np.random.default_rng(int(sigma))
    hu = _body() + rng.normal(0, sigma, (8, 128, 128))
    assert image_noise_hu(hu, SPACING) == pytest.approx(sigma, rel=0.06)


@pytest.mark.parametrize("sigma", [15.0, 45.0])
def test_correlated_noise_is_measured_as_its_pixel_sd(sigma):
    # CT-like grain: white noise smoothed in-plane over ~2 pixels, rescaled so that its pixel SD is sigma
    rng = np.random.default_rng(3)
    noise = ndimage.gaussian_filter(rng.normal(0, 1, (8, 128, 128)), (0, 0.8, 0.8))
    noise *= sigma / noise.std()
    hu = _body() + noise
    assert image_noise_hu(hu, SPACING) == pytest.approx(sigma, rel=0.12)


def test_no_soft_tissue_means_no_measurement():
    hu = np.full((8, 64, 64), -1000.0)
    hu[:, 10:50, 10:50] = 250.0  # plastic without soft tissue
    assert image_noise_hu(hu + np.random.default_rng(0).normal(0, 20, hu.shape), SPACING) is None


def _gauss_smoothed(hu, spacing, sigma_mm):
    """The exam through an in-plane Gaussian of ``sigma_mm``, cut at 12 pixels, edges repeated (scipy)."""
    out = hu.astype(np.float64)
    for axis in (1, 2):
        s = sigma_mm / spacing[axis]
        out = ndimage.gaussian_filter1d(out, s, axis=axis, mode="nearest", truncate=12 / s)
    return out


@pytest.mark.parametrize("sigma,seed", [(44.0, 0), (52.0, 1)])
def test_smoothing_brings_the_noise_just_under_the_target(sigma, seed):
    """The smallest 0.05 mm step of sigma whose smoothed exam measures at most 35 HU (0.875 x 40), checked by
    smoothing the whole exam with scipy and measuring it again."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.normal(0, 1, (8, 128, 128)), (0, 0.8, 0.8))
    hu = _body() + noise * (sigma / noise.std())
    got, before, after = input_smoothing_mm(hu, SPACING)
    target = SMOOTH_TARGET_SHARE * TRAINED_NOISE_HU[1]
    assert before == pytest.approx(image_noise_hu(hu, SPACING))
    assert 0 < got < SMOOTH_MAX_MM
    assert after == pytest.approx(image_noise_hu(_gauss_smoothed(hu, SPACING, got), SPACING), rel=1e-4)
    assert after <= target < image_noise_hu(_gauss_smoothed(hu, SPACING, got - 0.05), SPACING)


def test_no_smoothing_within_the_training_range_or_without_tissue():
    rng = np.random.default_rng(4)
    hu = _body() + rng.normal(0, 30.0, (8, 128, 128))
    assert input_smoothing_mm(hu, SPACING)[0] == 0.0
    noisy = _body() + rng.normal(0, 48.0, (8, 128, 128))
    assert input_smoothing_mm(noisy, SPACING)[0] > 0
    assert input_smoothing_mm(noisy, SPACING, (10.0, 55.0))[0] == 0.0  # trained on more noise: as it is
    plastic = np.full((8, 64, 64), 250.0) + rng.normal(0, 60, (8, 64, 64))
    assert input_smoothing_mm(plastic, SPACING) == (0.0, None, None)


def test_smoothing_stops_at_its_largest_sigma(monkeypatch):
    import agatax.quality as quality

    monkeypatch.setattr(quality, "SMOOTH_MAX_MM", 0.1)  # under the ~0.35 mm this exam needs
    hu = _body() + np.random.default_rng(5).normal(0, 48.0, (8, 128, 128))
    got, before, after = input_smoothing_mm(hu, SPACING)
    assert got == 0.1 and after == pytest.approx(image_noise_hu(_gauss_smoothed(hu, SPACING, 0.1), SPACING))
    assert after > SMOOTH_TARGET_SHARE * TRAINED_NOISE_HU[1]
    (text,) = smoothing_note(got, before, after)
    assert "0.10 mm" in text and "--no-adapt-noise" in text
    assert smoothing_note(0.0, 30.0, 30.0) == ()
    assert "45 -> ? HU" in smoothing_note(0.3, 45.0, None)[0]  # the noise after unmeasurable: said, not a crash


def test_note_only_above_the_training_range():
    assert noise_note(None) == () and noise_note(TRAINED_NOISE_HU[1]) == ()
    (text,) = noise_note(52.4)
    assert "52 HU" in text and "40 HU" in text
    assert noise_note(52.4, (10.0, 55.0)) == ()  # networks trained on more noise: nothing to say
    (text,) = noise_note(58.0, (10.0, 55.0))
    assert "10-55 HU" in text


def test_pipeline_reports_noise_and_warns_when_too_noisy():
    import jax
    import jax.numpy as jnp

    from agatax import Volume
    from agatax.ensemble import stack_members
    from agatax.model import UNet, UNetConfig
    from agatax.pipeline import run_pipeline

    tiny = UNetConfig.tiny()
    variables = [UNet(tiny).init(jax.random.key(s), jnp.zeros((1, 8, 8, 8, 1))) for s in range(3)]
    ensemble = stack_members(variables, tiny)
    rng = np.random.default_rng(1)
    noisier = ensemble.replace(config=UNetConfig.tiny(trained_noise_hu=(10.0, 55.0)))
    for sigma, warned, warned_noisier in ((20.0, False, False), (48.0, True, False), (60.0, True, True)):
        hu = (_body((8, 96, 96)) + rng.normal(0, sigma, (8, 96, 96))).astype(np.float32)
        res = run_pipeline(ensemble, Volume(hu, (3.0, 0.7, 0.7)), localise=False)
        assert res.noise_hu == pytest.approx(sigma, rel=0.08)
        assert any("image noise" in n for n in res.notes) == warned
        assert res.to_dict()["noise_hu"] == res.noise_hu
        assert (res.input_smoothing_mm > 0) == warned == any("noise adaptation" in n for n in res.notes)
        assert res.to_dict()["input_smoothing_mm"] == res.input_smoothing_mm
        off = run_pipeline(ensemble, Volume(hu, (3.0, 0.7, 0.7)), localise=False, adapt_noise=False)
        assert off.input_smoothing_mm == 0 and not any("noise adaptation" in n for n in off.notes)
        # one measure either way: the adaptation's (canonical slices) or the pipeline's own
        assert res.noise_hu == off.noise_hu == image_noise_hu(hu, (3.0, 0.7, 0.7))
        # the warning and the adaptation follow what the ensemble's networks were trained on
        res = run_pipeline(noisier, Volume(hu, (3.0, 0.7, 0.7)), localise=False)
        assert any("image noise" in n and "10-55 HU" in n for n in res.notes) == warned_noisier
        assert (res.input_smoothing_mm > 0) == warned_noisier


def test_the_noise_line_is_a_multiple_of_the_trained_range_and_check_noise_refuses_above_it():
    """``refuse_noise_hu``: REFUSE_NOISE_SHARE x the top of the trained range (65 HU for the shipped 10-40, the
    lower edge of the first band where the never-used accuracy fell under 0.75); ``check_noise`` passes an exam
    at or under it and one of unknown noise, and refuses one above it with TOO_NOISY and the way out."""
    from agatax.errors import InputError
    from agatax.quality import REFUSE_NOISE_SHARE, check_noise, refuse_noise_hu

    assert refuse_noise_hu() == pytest.approx(65.0) == REFUSE_NOISE_SHARE * TRAINED_NOISE_HU[1]
    assert refuse_noise_hu((10.0, 55.0)) == pytest.approx(REFUSE_NOISE_SHARE * 55.0)
    for noise in (None, 20.0, 64.9, 65.0):
        check_noise(noise)
    check_noise(80.0, (10.0, 55.0))  # networks trained on more noise: their line is higher
    for noise, trained in ((65.1, TRAINED_NOISE_HU), (150.0, TRAINED_NOISE_HU), (90.0, (10.0, 55.0))):
        with pytest.raises(InputError) as err:
            check_noise(noise, trained)
        assert err.value.code == "TOO_NOISY" and f"about {noise:.1f} HU" in err.value.message
        assert f"trained on {trained[0]:g}-{trained[1]:g} HU" in err.value.message
        assert "allow_noisy=True" in err.value.hint and "--allow-noisy" in err.value.hint
        assert "slabs" not in err.value.hint
    # thin slices: the way out names the 3 mm slabs first
    with pytest.raises(InputError) as err:
        check_noise(70.0, slice_mm=0.625)
    assert "--thin-slices slab" in err.value.hint and "--allow-noisy" in err.value.hint
    with pytest.raises(InputError) as err:
        check_noise(70.0, slice_mm=3.0)
    assert "slabs" not in err.value.hint


def test_an_exam_far_noisier_than_the_training_is_refused_unless_allowed():
    """White noise of 100 HU on a body (measured ~100): run_pipeline, segment and segment_and_score refuse it
    (TOO_NOISY) with the adaptation on or off; allow_noisy=True scores it with the noise warning; 50 HU is
    scored (warned, not refused); an ensemble trained on 10-80 HU scores the 100 HU exam without refusing."""
    import jax
    import jax.numpy as jnp

    from agatax import Volume
    from agatax.ensemble import stack_members
    from agatax.errors import InputError
    from agatax.model import UNet, UNetConfig
    from agatax.pipeline import run_pipeline, segment, segment_and_score

    tiny = UNetConfig.tiny()
    variables = [UNet(tiny).init(jax.random.key(s), jnp.zeros((1, 8, 8, 8, 1))) for s in range(3)]
    ensemble = stack_members(variables, tiny)
    rng = np.random.default_rng(4)
    noisy = Volume((_body((8, 96, 96)) + rng.normal(0, 100.0, (8, 96, 96))).astype(np.float32), (3.0, 0.7, 0.7))
    assert image_noise_hu(noisy.hu, noisy.spacing) == pytest.approx(100.0, rel=0.08)
    calls = (lambda **k: run_pipeline(ensemble, noisy, localise=False, **k),
             lambda **k: segment(ensemble, noisy, localise=False, **k),
             lambda **k: segment_and_score(ensemble, noisy, localise=False, **k))
    for call in calls:
        for adapt in (True, False):
            with pytest.raises(InputError) as err:
                call(adapt_noise=adapt)
            assert err.value.code == "TOO_NOISY"
        call(allow_noisy=True)  # scored on request by every entry point
    res = run_pipeline(ensemble, noisy, localise=False, allow_noisy=True)
    assert res.noise_hu == pytest.approx(100.0, rel=0.08)
    assert any("image noise" in n for n in res.notes)
    (too,) = [n for n in res.notes if n.startswith("too noisy:")]  # says it was past the refusal
    assert "allow_noisy" in too and f"about {res.noise_hu:.1f} HU" in too
    quieter = Volume((_body((8, 96, 96)) + rng.normal(0, 50.0, (8, 96, 96))).astype(np.float32), (3.0, 0.7, 0.7))
    notes = run_pipeline(ensemble, quieter, localise=False).notes
    assert any("image noise" in n for n in notes) and not any(n.startswith("too noisy:") for n in notes)
    trained_noisier = ensemble.replace(config=UNetConfig.tiny(trained_noise_hu=(10.0, 80.0)))
    res = run_pipeline(trained_noisier, noisy, localise=False)
    assert res.noise_hu == pytest.approx(100.0, rel=0.08) and not any(n.startswith("too noisy:") for n in res.notes)


def test_noise_is_measured_alike_on_a_device_array():
    """image_noise_hu on a jax array (only the sampled slices leave the device) equals the host figure."""
    import jax.numpy as jnp

    hu = (_body() + np.random.default_rng(8).normal(0, 33.0, (8, 128, 128))).astype(np.float32)
    region = np.zeros(hu.shape, bool)
    region[:, 20:110, 20:110] = True
    assert image_noise_hu(jnp.asarray(hu), SPACING) == image_noise_hu(hu, SPACING)
    assert image_noise_hu(jnp.asarray(hu), SPACING, jnp.asarray(region)) == image_noise_hu(hu, SPACING, region)


@pytest.mark.parametrize("kernel,maker,level", [
    ("LUNG", "GE MEDICAL SYSTEMS", 2), ("BONEPLUS", "GE", 2), ("EDGE", None, 2), ("BONE", "GE", 2),
    ("DETAIL", "GE", 1), ("STANDARD", "GE MEDICAL SYSTEMS", 0), ("SOFT", "GE", 0), ("sharp body", "X", 2),
    ("B35f", "SIEMENS", 0), ("Qr36d\\3", "Siemens Healthineers", 0), ("Br40d", "SIEMENS", 0),
    ("B45f", "SIEMENS", 1), ("B50f", "SIEMENS", 1), ("Br59d", "SIEMENS", 1),
    ("B60f", "SIEMENS", 2), ("Br64d\\3", "SIEMENS", 2), ("I70f", "Siemens", 2), ("B80f", "SIEMENS", 2),
    ("B60f", "GE", 0),  # Siemens' digits are not read on another maker's scanner
    ("B70f", None, 2), ("B70f", "", 2), ("Br40d", None, 0), ("B46f", "  ", 1),  # anonymised: Siemens' form is read
    ("B70f", "ANONYMIZED", 2), ("I70f\\2", "NONE", 2), ("FC52", "ANONYMIZED", 0),  # an anonymiser's word
    ("B70F", "SIEMENS", 2), ("BR64D", "Siemens Healthineers", 2), ("B70F", None, 0),  # upper case: Siemens only
    ("B70f", "Philips", 0), ("B70f", "GE MEDICAL SYSTEMS", 0), ("B70f", "CANON_MEC", 0),
    ("FC12", "TOSHIBA", 0), ("FC52", "CANON", 0), ("FC52", None, 0), ("B", "Philips", 0), ("L", "Philips", 0),
    ("YB", None, 0), (None, "SIEMENS", 0), ("", None, 0),
])
def test_kernel_sharpness_reads_only_kernels_whose_name_says_sharp(kernel, maker, level):
    """Levels by hand from each vendor's naming: GE's words, Siemens' two digits (warned from 45, refused from
    60; read on Siemens scanners and on anonymised headers), other vendors' codes not read. The note and the
    refusal follow the level."""
    from agatax.errors import InputError
    from agatax.quality import check_kernel, kernel_note, kernel_sharpness

    assert kernel_sharpness(kernel, maker) == level
    notes = kernel_note(kernel, maker)
    assert len(notes) == (level > 0)
    if level == 1:
        assert notes[0].startswith(f"sharp kernel: reconstructed with {kernel},") and "reads high" in notes[0]
    if level == 2:
        assert notes[0].startswith(f"sharp kernel, scored on request: reconstructed with {kernel},")
        assert "SHARP_KERNEL" in notes[0] and "reads high" in notes[0]
        with pytest.raises(InputError) as err:
            check_kernel(kernel, maker)
        assert err.value.code == "SHARP_KERNEL" and str(kernel) in err.value.message
        assert "allow_sharp_kernel=True" in err.value.hint and "--allow-sharp-kernel" in err.value.hint
    else:
        check_kernel(kernel, maker)


def test_a_volume_reconstructed_with_a_bone_or_lung_kernel_is_refused_unless_allowed():
    """A Volume whose header names B70f (Siemens): run_pipeline, segment and segment_and_score refuse it
    (SHARP_KERNEL); allow_sharp_kernel=True scores it with the warning that says so; DETAIL is scored with the
    milder warning; the same HU as a bare array (no header) is not checked; B35f draws no kernel warning."""
    import jax
    import jax.numpy as jnp

    from agatax import Volume
    from agatax.ensemble import stack_members
    from agatax.errors import InputError
    from agatax.model import UNet, UNetConfig
    from agatax.pipeline import run_pipeline, segment, segment_and_score

    tiny = UNetConfig.tiny()
    variables = [UNet(tiny).init(jax.random.key(s), jnp.zeros((1, 8, 8, 8, 1))) for s in range(3)]
    ensemble = stack_members(variables, tiny)
    rng = np.random.default_rng(5)
    hu = (_body((8, 64, 64)) + rng.normal(0, 20.0, (8, 64, 64))).astype(np.float32)

    def volume(kernel):
        return Volume(hu, (3.0, 0.7, 0.7), metadata={"kernel": kernel, "manufacturer": "SIEMENS"})

    sharp = volume("B70f")
    calls = (lambda v, **k: run_pipeline(ensemble, v, localise=False, **k),
             lambda v, **k: segment(ensemble, v, localise=False, **k),
             lambda v, **k: segment_and_score(ensemble, v, localise=False, **k))
    for call in calls:
        with pytest.raises(InputError) as err:
            call(sharp)
        assert err.value.code == "SHARP_KERNEL" and "B70f" in err.value.message
        call(sharp, allow_sharp_kernel=True)
        call(hu, spacing=(3.0, 0.7, 0.7))  # an array carries no kernel
    notes = run_pipeline(ensemble, sharp, localise=False, allow_sharp_kernel=True).notes
    (past,) = [n for n in notes if n.startswith("sharp kernel")]
    assert past.startswith("sharp kernel, scored on request: reconstructed with B70f,")
    notes = run_pipeline(ensemble, Volume(hu, (3.0, 0.7, 0.7), metadata={"kernel": "DETAIL"}), localise=False).notes
    (warned,) = [n for n in notes if n.startswith("sharp kernel")]
    assert warned.startswith("sharp kernel: reconstructed with DETAIL,")
    assert not any(n.startswith("sharp kernel") for n in run_pipeline(ensemble, volume("B35f"), localise=False).notes)


@pytest.mark.parametrize("thickness,expect", [
    (None, None), (2.5, None), (3.0, None), (2.999, None),  # the Agatston reconstructions: nothing to say
    (3.125, None), (3.5, None),  # 3 mm slabs of 0.625 and 1.75 mm slices (agatax.thick_slabs)
    (5.0, "reads low"), (4.0, "reads low"), (1.0, "reads high"), (0.5, "reads high"), (2.0, "reads high"),
])
def test_thickness_note_outside_the_agatston_reconstruction(thickness, expect):
    notes = thickness_note(thickness)
    if expect is None:
        assert notes == ()
    else:
        (text,) = notes
        assert f"{thickness:g} mm" in text and expect in text and "3 mm" in text


@pytest.mark.parametrize("n,increment,expect", [
    (40, 3.0, None), (27, 3.0, None), (160, 0.5, None),  # 120, 81 and 80 mm: a heart fits
    (26, 3.0, "78 mm"), (19, 3.0, "57 mm"), (100, 0.625, "62 mm"), (8, 5.0, "40 mm"),
])
def test_coverage_note_when_the_scan_is_shorter_than_a_heart(n, increment, expect):
    notes = coverage_note(n, increment)
    if expect is None:
        assert notes == ()
    else:
        (text,) = notes
        assert text.startswith(f"short scan: the series covers {expect} along z ({n} slices of {increment:g} mm)")


def test_run_pipeline_warns_of_a_scan_shorter_than_a_heart():
    """A 20-slice 3 mm exam (60 mm) is warned, the same exam with 30 slices (90 mm) not; either way scored."""
    from ensembles import all_calcium_ensemble

    from agatax import Volume
    from agatax.pipeline import run_pipeline

    for n, warned in ((20, True), (30, False)):
        hu = np.full((n, 40, 60), -50.0, np.float32)
        hu[8:10, 10:14, 20:24] = 400.0
        res = run_pipeline(all_calcium_ensemble(), Volume(hu, (3.0, 0.5, 0.5)), localise=False)
        assert res.scores.agatston > 0
        assert any(t.startswith(f"short scan: the series covers {3 * n} mm") for t in res.notes) == warned


def test_a_thin_series_scored_on_slabs_is_measured_by_its_thin_slices():
    """161 slices of 0.5 mm (80.5 mm) make 26 slabs of 3 mm (78 mm, the 5 left-over slices set aside): the
    series holds 80.5 mm and is not short; 150 slices (75 mm) are, and the note counts the thin slices."""
    from ensembles import all_calcium_ensemble

    from agatax import Volume, thick_slabs
    from agatax.pipeline import run_pipeline

    for n, expect in ((161, None), (150, "short scan: the series covers 75 mm along z (150 slices of 0.5 mm)")):
        hu = np.full((n, 40, 60), -50.0, np.float32)
        hu[60:80, 10:14, 20:24] = 400.0
        slabs, _ = thick_slabs(Volume(hu, (0.5, 0.5, 0.5)))
        assert slabs.spacing[0] == 3.0 and slabs.shape[0] == n // 6
        notes = [t for t in run_pipeline(all_calcium_ensemble(), slabs, localise=False).notes
                 if t.startswith("short scan")]
        assert notes == [] if expect is None else notes[0].startswith(expect)


def test_pipeline_notes_thick_slices_from_the_volume_or_else_the_increment():
    import jax
    import jax.numpy as jnp

    from agatax import Volume
    from agatax.ensemble import stack_members
    from agatax.model import UNet, UNetConfig
    from agatax.pipeline import run_pipeline

    tiny = UNetConfig.tiny()
    variables = [UNet(tiny).init(jax.random.key(s), jnp.zeros((1, 8, 8, 8, 1))) for s in range(3)]
    ensemble = stack_members(variables, tiny)
    hu = (_body((8, 64, 64)) + np.random.default_rng(2).normal(0, 15, (8, 64, 64))).astype(np.float32)
    cases = [  # (volume, thickness named in a note or None)
        (Volume(hu, (3.0, 0.7, 0.7), slice_thickness=3.0), None),
        (Volume(hu, (5.0, 0.7, 0.7), slice_thickness=5.0), 5.0),
        (Volume(hu, (2.5, 0.7, 0.7), slice_thickness=3.0), None),  # overlapping 3 mm slices every 2.5 mm
        (Volume(hu, (1.0, 0.7, 0.7)), 1.0),  # thickness unknown (NIfTI): the increment
    ]
    for volume, named in cases:
        res = run_pipeline(ensemble, volume, localise=False)
        found = [n for n in res.notes if n.startswith("slices of")]
        assert (found == []) if named is None else (len(found) == 1 and f"{named:g} mm" in found[0])


@given(left=st.floats(8.0, 45.0), right=st.floats(8.0, 45.0), seed=st.integers(0, 2**16))
def test_local_noise_finds_each_sides_sd_across_tissue_edges(left, right, seed):
    """Noise of SD ``left`` on one side of a slice and ``right`` on the other (160 pixels = 80 mm apart), soft
    tissue crossed by a fat band and holding a bone disc: the noise near a point of each side is that
    side's SD (the oracle: the SD drawn)."""
    from agatax.quality import local_noise_hu

    rng = np.random.default_rng(seed)
    hu = np.full((4, 128, 320), 40.0)
    hu[:, 30:40, :] = -100.0  # fat band across both sides
    yy, xx = np.mgrid[:128, :320]
    for cx in (40, 280):
        hu[:, (yy - 90) ** 2 + (xx - cx) ** 2 < 10 ** 2] = 700.0  # a bone disc near each point
    sd = np.where(np.arange(320) < 160, left, right)
    hu = hu + rng.normal(0.0, 1.0, hu.shape) * sd
    for cx, want in ((40, left), (280, right)):
        got = local_noise_hu(hu, SPACING, (slice(1, 3), slice(60, 62), slice(cx, cx + 2)))
        assert got == pytest.approx(want, rel=0.1), (cx, got, want)
