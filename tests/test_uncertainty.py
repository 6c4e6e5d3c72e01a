"""The category range of one vote (agatax.uncertainty) against hand-computed scores and the object vote."""

import numpy as np
import pytest
from scipy import ndimage
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ensembles import object_majority_oracle

from agatax import InputError, Volume, compute_scores
from agatax.uncertainty import category_range

SPACING = (3.0, 0.5, 0.5)  # 0.25 mm^2 pixels


def _four_objects():
    """Four one-slice squares; Agatston = area (mm^2) x density weight, by hand:
    A 4x4 px = 4 mm^2 at 250 HU (w 2) = 8, mean vote 4 (kept, sure);
    B 6x6 px = 9 mm^2 at 450 HU (w 4) = 36, votes 5 and 1 on halves: mean 3 (kept, in doubt: one vote lower
      its mean is 2 and it drops, but its former 5-vote half, now 4, is a part kept by the split: 18 stays);
    C 10x10 px = 25 mm^2 at 350 HU (w 3) = 75, mean 2 (left out, in doubt);
    D 4x4 px = 4 mm^2 at 150 HU (w 1) = 4, mean 1 (left out, sure)."""
    hu = np.full((3, 40, 40), -40.0, np.float32)
    votes = np.zeros(hu.shape, np.uint8)
    hu[1, 2:6, 2:6], votes[1, 2:6, 2:6] = 250.0, 4
    hu[1, 2:8, 20:26], votes[1, 2:8, 20:23], votes[1, 2:8, 23:26] = 450.0, 5, 1
    hu[1, 20:30, 2:12], votes[1, 20:30, 2:12] = 350.0, 2
    hu[1, 30:34, 30:34], votes[1, 30:34, 30:34] = 150.0, 1
    mask = np.zeros(hu.shape, bool)
    mask[1, 2:6, 2:6] = mask[1, 2:8, 20:26] = True
    return hu, votes, mask


def test_range_of_hand_built_objects():
    hu, votes, mask = _four_objects()
    r = category_range(hu, mask, votes, None, SPACING, 5)
    assert (r.agatston, r.category) == (pytest.approx(44.0), "C")
    assert (r.low_agatston, r.low_category) == (pytest.approx(8.0 + 18.0), "C")
    assert (r.high_agatston, r.high_category) == (pytest.approx(119.0), "D")
    assert r.uncertain
    assert [(o["scored"], o["agatston"], o["mean_vote"], o["voxels"]) for o in r.objects] == [
        (False, 75.0, 2.0, 100), (True, 18.0, 3.0, 36)]
    (note,) = r.note()
    assert note.startswith("uncertain category:") and "C (26.0) to D (119.0)" in note and "scored C (44.0)" in note
    d = r.to_dict()
    assert d["low"] == {"agatston": 26.0, "category": "C"} and d["high"]["category"] == "D" and d["objects_in_doubt"] == 2


def test_objects_exactly_one_vote_from_the_line():
    """Mean 3.5 (kept): one vote lower is 2.5, not over half of 5: in doubt. Mean 1.5 (left out): one vote
    higher is 2.5, still not over half: not in doubt."""
    hu = np.full((3, 20, 20), -40.0, np.float32)
    votes = np.zeros(hu.shape, np.uint8)
    hu[1, 2:6, 2:6], votes[1, 2:6, 2:4], votes[1, 2:6, 4:6] = 450.0, 3, 4  # 4 mm^2 x 4 = 16, mean 3.5
    hu[1, 10:14, 10:14], votes[1, 10:14, 10:12], votes[1, 10:14, 12:14] = 450.0, 1, 2  # 16, mean 1.5
    mask = np.zeros(hu.shape, bool)
    mask[1, 2:6, 2:6] = True
    r = category_range(hu, mask, votes, None, SPACING, 5)
    assert (r.low_agatston, r.agatston, r.high_agatston) == (0.0, pytest.approx(16.0), pytest.approx(16.0))
    assert [(o["scored"], o["mean_vote"]) for o in r.objects] == [(True, 3.5)]
    assert (r.low_category, r.high_category) == ("A", "C") and r.uncertain


def test_the_dense_vote_line_moves_both_ends():
    """An object peaking at 1200 HU (weight 4) left out at mean vote 1.5: one vote higher is 2.5, not over half
    of 5, so without the dense line it stays out at the high end; with the pipeline's dense line (2 of 5) it is
    kept there (16 pixels of 0.25 mm^2 = 4 mm^2, x 4 = 16). Scored at mean 3.0, one vote lower is 2.0: kept
    at the low end with the line, left out without it."""
    hu = np.full((3, 20, 20), -40.0, np.float32)
    votes = np.zeros(hu.shape, np.uint8)
    hu[1, 2:6, 2:6], votes[1, 2:6, 2:4], votes[1, 2:6, 4:6] = 1200.0, 1, 2
    mask = np.zeros(hu.shape, bool)
    plain = category_range(hu, mask, votes, None, SPACING, 5)
    dense = category_range(hu, mask, votes, None, SPACING, 5, dense_vote=0.4)
    assert plain.high_agatston == 0.0 and not plain.uncertain
    assert dense.high_agatston == pytest.approx(16.0) and dense.high_category == "C" and dense.uncertain
    votes[1, 2:6, 2:6] = 3  # mean 3: scored; one lower is 2
    mask[1, 2:6, 2:6] = True
    assert category_range(hu, mask, votes, None, SPACING, 5).low_agatston == 0.0
    assert category_range(hu, mask, votes, None, SPACING, 5, dense_vote=0.4).low_agatston == pytest.approx(16.0)


def test_a_region_cuts_objects_as_the_pipeline_does():
    """Object C outside the region: not a candidate, so not in doubt; the high end loses it."""
    hu, votes, mask = _four_objects()
    region = np.ones(hu.shape, bool)
    region[:, 18:, :15] = False
    votes[~region] = 0
    r = category_range(hu, mask, votes, region, SPACING, 5)
    assert r.high_agatston == pytest.approx(44.0) and r.low_agatston == pytest.approx(26.0)
    assert [o["agatston"] for o in r.objects] == [18.0]


def test_no_objects_in_doubt_no_note():
    hu, votes, mask = _four_objects()
    votes[votes == 2] = 0  # C: mean 0
    votes[1, 2:8, 20:26] = 5  # B: mean 5
    r = category_range(hu, mask, votes, None, SPACING, 5)
    assert (r.low_agatston, r.high_agatston) == (pytest.approx(44.0), pytest.approx(44.0))
    assert not r.uncertain and r.note() == () and r.objects == ()


def test_bad_margin_and_shapes_are_refused():
    hu, votes, mask = _four_objects()
    with pytest.raises(InputError) as err:
        category_range(hu, mask, votes, None, SPACING, 5, margin=2.5)
    assert err.value.code == "BAD_ARGUMENT"
    with pytest.raises(InputError) as err:
        category_range(hu, mask[:2], votes, None, SPACING, 5)
    assert err.value.code == "SHAPE_MISMATCH"


@given(
    hu=hnp.arrays(np.float32, (3, 9, 9), elements=st.sampled_from([-100.0, 140.0, 220.0, 330.0, 520.0])),
    votes=hnp.arrays(np.int64, (3, 9, 9), elements=st.integers(0, 5)),
    region=hnp.arrays(bool, (3, 9, 9)),
    use_region=st.booleans(),
    margin=st.sampled_from([0.5, 1.0, 2.0]),
    dense_hu=st.sampled_from([None, 300.0]),
)
def test_ends_are_the_object_vote_with_every_vote_shifted(hu, votes, region, use_region, margin, dense_hu):
    """Oracle: the low end is the object rule (whole objects, then the split) with every candidate's vote
    lowered by ``margin``, the high end with it raised (scipy labelling, one object at a time), each scored
    by compute_scores; with ``dense_hu`` the low end also without the mask's objects peaking at it or more."""
    region = region if use_region else None
    cand = (hu >= 130) & (True if region is None else region)
    votes = np.where(cand, votes, 0)
    mask = object_majority_oracle(votes, cand, 5)
    r = category_range(hu, mask, votes, region, (2.0, 0.7, 0.7), 5, margin=margin, dense_hu=dense_hu)
    low = object_majority_oracle(np.where(cand, votes - margin, 0), cand, 5)
    if dense_hu is not None:
        mlab, mn = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
        for k in range(1, mn + 1):
            if hu[mlab == k].max() >= dense_hu:
                low &= mlab != k
    high = object_majority_oracle(np.where(cand, votes + margin, 0), cand, 5)
    assert r.agatston == pytest.approx(compute_scores(hu, mask, (2.0, 0.7, 0.7)).agatston)
    assert r.low_agatston == pytest.approx(compute_scores(hu, low, (2.0, 0.7, 0.7)).agatston)
    assert r.high_agatston == pytest.approx(compute_scores(hu, high, (2.0, 0.7, 0.7)).agatston)
    changed = (low ^ mask) | (high ^ mask)
    lab, _ = ndimage.label(cand, structure=np.ones((3, 3, 3), bool))
    assert sum(o["voxels"] for o in r.objects) == int(np.isin(lab, np.unique(lab[changed & (lab > 0)])).sum())


def test_run_pipeline_carries_the_range_and_the_note():
    """Every voxel >= 130 HU voted by all members: nothing in doubt, the range is the score."""
    from ensembles import all_calcium_ensemble

    from agatax.pipeline import run_pipeline

    hu = np.full((16, 32, 32), -50.0, np.float32)
    hu[6, 4:8, 4:8] = 450.0
    res = run_pipeline(all_calcium_ensemble(), Volume(hu, (3.0, 0.5, 0.5)), localise=False)
    r = res.category_range
    assert r.agatston == res.scores.agatston == pytest.approx(16.0)
    assert (r.low_agatston, r.high_agatston) == (pytest.approx(16.0), pytest.approx(16.0)) and not r.uncertain
    assert not any(n.startswith("uncertain category") for n in res.notes)


def test_stent_dense_objects_are_left_out_at_the_low_end():
    """A sure 250 HU object (4 mm^2 x weight 2 = 8) and a sure 1800 HU one (4 mm^2 x 4 = 16), both voted by
    all five networks: by votes nothing is in doubt (C, 24, both ends); with dense_hu=1500 the low end
    leaves the dense object out (B, 8) and names it, with no vote warning (the pipeline's dense note says it)."""
    hu = np.full((3, 20, 20), -40.0, np.float32)
    votes = np.zeros(hu.shape, np.uint8)
    hu[1, 2:6, 2:6], votes[1, 2:6, 2:6] = 250.0, 5
    hu[1, 10:14, 10:14], votes[1, 10:14, 10:14] = 900.0, 5
    hu[1, 11, 11] = 1800.0
    mask = votes > 0
    plain = category_range(hu, mask, votes, None, SPACING, 5)
    assert (plain.low_category, plain.high_category) == ("C", "C") and not plain.objects
    r = category_range(hu, mask, votes, None, SPACING, 5, dense_hu=1500.0)
    assert (r.agatston, r.low_agatston, r.high_agatston) == (pytest.approx(24.0), pytest.approx(8.0), pytest.approx(24.0))
    assert (r.low_category, r.high_category) == ("B", "C") and r.uncertain
    (dense,) = r.objects
    assert dense["dense"] and dense["scored"] and dense["peak_hu"] == 1800.0 and dense["agatston"] == pytest.approx(16.0)
    assert r.note() == () and "1500 HU" in r.to_dict()["rule"]


def test_run_pipeline_range_leaves_out_stent_dense_objects_and_warns_once():
    from ensembles import all_calcium_ensemble

    from agatax.pipeline import DENSE_HU, run_pipeline

    hu = np.full((30, 32, 32), -50.0, np.float32)  # 90 mm: no short-scan warning
    hu[6, 4:8, 4:8] = 250.0  # 4 mm^2 x 2 = 8
    hu[9, 20:24, 20:24] = DENSE_HU + 300.0  # 4 mm^2 x 4 = 16: C with it, B without
    res = run_pipeline(all_calcium_ensemble(), Volume(hu, (3.0, 0.5, 0.5)), localise=False)
    r = res.category_range
    assert (r.low_agatston, r.agatston, r.high_agatston) == (pytest.approx(8.0), pytest.approx(24.0), pytest.approx(24.0))
    assert [n.split(":")[0] for n in res.notes] == ["dense"]  # one warning, not a second from the range
