"""mask_from_points against hand-built volumes and a breadth-first flood-fill oracle."""

from collections import deque
from itertools import product

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agatax import InputError, Volume
from agatax.groundtruth import GroundTruth, mask_from_points


def _flood(hu, seeds, threshold, connectivity):
    """Oracle: breadth-first search over voxels >= threshold from each seed (no snapping)."""
    offs = [o for o in product((-1, 0, 1), repeat=3) if o != (0, 0, 0)]
    if connectivity == 6:
        offs = [o for o in offs if sum(map(abs, o)) == 1]
    elif connectivity == 18:
        offs = [o for o in offs if sum(map(abs, o)) <= 2]
    out = np.zeros(hu.shape, bool)
    for s in seeds:
        if hu[s] < threshold or out[s]:
            continue
        q = deque([s])
        out[s] = True
        while q:
            z, y, x = q.popleft()
            for dz, dy, dx in offs:
                n = (z + dz, y + dy, x + dx)
                if all(0 <= n[i] < hu.shape[i] for i in range(3)) and not out[n] and hu[n] >= threshold:
                    out[n] = True
                    q.append(n)
    return out


def _phantom():
    hu = np.full((5, 12, 12), 40.0, np.float32)
    hu[2, 2:4, 2:5] = 400.0  # lesion 1: 6 px, weight 4
    hu[1, 3, 3] = 180.0  # joins lesion 1 in 3D
    hu[2, 8:10, 8:10] = 250.0  # lesion 2: 4 px, weight 2
    hu[0:5, 0, 6:12] = 900.0  # "bone" strip, not annotated
    return hu


def test_points_select_their_components_only():
    hu = _phantom()
    gt = mask_from_points(hu, [(2, 2, 2)])
    assert isinstance(gt, GroundTruth)
    expected = np.zeros(hu.shape, bool)
    expected[2, 2:4, 2:5] = True
    expected[1, 3, 3] = True
    assert gt.mask.dtype == bool
    np.testing.assert_array_equal(gt.mask, expected)
    assert gt.missed_points == []
    assert gt.category_matches is None


def test_snapping_missed_points_and_artery_labels():
    hu = _phantom()
    # (2, 7, 7) is a 40 HU voxel diagonal to lesion 2 -> snaps; (4, 6, 2) finds nothing
    gt = mask_from_points(hu, [(2, 7, 7), (4, 6, 2), (2, 3, 4)], arteries=["RCA", "LAD", 2])
    assert gt.missed_points == [(4, 6, 2)]
    assert gt.snapped_points[0] == (2, 8, 8) and gt.snapped_points[1] is None
    assert gt.mask.dtype == np.uint8
    assert set(np.unique(gt.mask[2, 8:10, 8:10])) == {4}
    assert set(np.unique(gt.mask[2, 2:4, 2:5])) == {2}
    assert gt.mask.sum() == 4 * 4 + 7 * 2


def test_score_and_reference_category_by_hand():
    hu = _phantom()
    spacing = (3.0, 0.5, 0.5)
    gt = mask_from_points(Volume(hu, spacing), [(2, 2, 2), (2, 8, 8)], reference_category="B")
    # slice 2: 6 px * 0.25 mm^2 * 4 + 4 px * 0.25 * 2 = 6 + 2 = 8 (dz / 3 = 1); slice 1: 1 px < 3 px dropped
    assert gt.agatston == pytest.approx(8.0)
    assert gt.category == "B" and gt.category_matches is True
    gt = mask_from_points(hu, [(2, 2, 2)], spacing=spacing, reference_category="C")
    assert gt.category_matches is False


def test_connectivity_six_does_not_join_diagonals():
    hu = np.zeros((3, 5, 5), np.float32)
    hu[1, 1, 1] = hu[1, 2, 2] = 300.0
    assert mask_from_points(hu, [(1, 1, 1)], connectivity=26).mask.sum() == 2
    assert mask_from_points(hu, [(1, 1, 1)], connectivity=6).mask.sum() == 1


@pytest.mark.parametrize(
    "points, code",
    [([(0, 0)], "BAD_POINTS"), ([(9, 0, 0)], "POINT_OUTSIDE"), ([(0, 0, np.nan)], "BAD_POINTS")],
)
def test_bad_points(points, code):
    with pytest.raises(InputError) as err:
        mask_from_points(np.zeros((3, 4, 4)), points)
    assert err.value.code == code


def test_bad_options():
    with pytest.raises(InputError):
        mask_from_points(np.zeros((3, 4, 4)), [(0, 0, 0)], connectivity=8)
    with pytest.raises(InputError) as err:
        mask_from_points(np.zeros((3, 4, 4)), [(0, 0, 0)], reference_category="C")
    assert err.value.code == "NO_SPACING"
    with pytest.raises(InputError):
        mask_from_points(np.zeros((3, 4, 4)), [(0, 0, 0)], arteries=["XYZ"])
    with pytest.raises(InputError):
        mask_from_points(np.zeros((4, 4)), [(0, 0, 0)])


@settings(max_examples=20)
@given(
    data=st.data(),
    connectivity=st.sampled_from([6, 18, 26]),
)
def test_matches_flood_fill_oracle(data, connectivity):
    shape = (data.draw(st.integers(1, 4)), data.draw(st.integers(2, 7)), data.draw(st.integers(2, 7)))
    seed = data.draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    hu = np.where(rng.random(shape) < 0.4, rng.uniform(130, 900, shape), rng.uniform(-100, 129, shape))
    hu = hu.astype(np.float32)
    n = data.draw(st.integers(1, 3))
    pts = [tuple(int(rng.integers(0, s)) for s in shape) for _ in range(n)]
    # only points that sit on a voxel >= 130 HU: no snapping, so the oracle is plain flood fill
    pts = [p for p in pts if hu[p] >= 130] or [tuple(int(v) for v in np.argwhere(hu >= 130)[0])] if (hu >= 130).any() else []
    if not pts:
        return
    gt = mask_from_points(hu, pts, connectivity=connectivity)
    np.testing.assert_array_equal(gt.mask, _flood(hu, pts, 130.0, connectivity))
