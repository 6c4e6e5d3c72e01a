"""How far the score rests on objects the networks split on: the category range of one vote.

The pipeline keeps each calcified object (26-connected voxels >= the threshold inside the chest region)
whole when its members' mean vote over its voxels is more than half the members, and the strongly voted
parts of the others (``agatax.ensemble.object_majority``). The range is that same rule applied with every
member-vote lowered by ``margin`` (low) and raised by it (high): the score if each network had voted
against, or for, every voxel once more. With ``dense_hu`` (the pipeline: ``agatax.pipeline.DENSE_HU``) the
low end also leaves out every scored object peaking at ``dense_hu`` or more: as dense as a coronary stent,
which the networks may score whatever their votes. Objects whose calcium changes side at either end are
"in doubt". Both ends are exact scores of a mask, not estimates.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from agatax.errors import InputError

__all__ = ["CategoryRange", "category_range", "VOTE_MARGIN"]

VOTE_MARGIN = 1.0  # votes added to and taken from every voxel: as if one network more voted for (or against) all


@dataclasses.dataclass(frozen=True)
class CategoryRange:
    """The score and category at both ends of the vote margin.

    agatston / category: the pipeline's; low_agatston / low_category: the object rule with every vote
    lowered by ``margin``; high_agatston / high_category: raised by it; objects: one dict per calcified
    object whose calcium changes side at either end (``slices`` [first, last], ``voxels``, ``volume_mm3``,
    ``peak_hu``, ``mean_vote`` of ``members``, ``scored``: any of it in the mask, ``agatston``: of its
    calcium that changes side, ``dense``: a scored object left out at the low end for its density), largest
    Agatston first; dense_hu: the density rule's HU, or None.
    """

    agatston: float
    category: str
    low_agatston: float
    low_category: str
    high_agatston: float
    high_category: str
    members: int
    margin: float
    objects: tuple[dict, ...] = ()
    dense_hu: float | None = None

    @property
    def uncertain(self) -> bool:
        """True when the ends of the range fall in different risk categories."""
        return self.low_category != self.high_category

    def to_dict(self) -> dict[str, Any]:
        return {"low": {"agatston": round(self.low_agatston, 4), "category": self.low_category},
                "high": {"agatston": round(self.high_agatston, 4), "category": self.high_category},
                "uncertain": self.uncertain, "objects": [dict(o) for o in self.objects[:5]],
                "objects_in_doubt": len(self.objects),
                "rule": f"the object rule with every network's vote lowered (low) and raised (high) by "
                        f"{self.margin:g} of {self.members}"
                        + ("" if self.dense_hu is None else
                           f"; scored objects peaking at {self.dense_hu:g} HU or more left out at the low end")}

    def note(self) -> tuple[str, ...]:
        """One warning when the category depends on objects the networks split on, else nothing (objects in
        doubt for their density alone have the pipeline's own warning, ``agatax.pipeline.dense_note``)."""
        voted = [o for o in self.objects if not o.get("dense")]
        if not self.uncertain or not any(o["agatston"] > 0 for o in voted):
            return ()
        kept = [o for o in voted if o["scored"] and o["agatston"] > 0]
        dropped = [o for o in voted if not o["scored"] and o["agatston"] > 0]

        def where(objs):
            return "; ".join(f"slices {o['slices'][0]}-{o['slices'][1]}, mean vote {o['mean_vote']:.1f}" for o in objs[:3])

        parts = []
        if kept:
            parts.append(f"{len(kept)} scored object(s) ({where(kept)})")
        if dropped:
            parts.append(f"{len(dropped)} object(s) left out ({where(dropped)})")
        votes = "one vote" if self.margin == 1 else f"{self.margin:g} votes"
        return (f"uncertain category: the networks split on {' and '.join(parts)}: {votes} more or less from "
                f"each of the {self.members} networks makes the category {self.low_category} ({self.low_agatston:.1f}) "
                f"to {self.high_category} ({self.high_agatston:.1f}), scored {self.category} ({self.agatston:.1f}): "
                "look at those slices",)


def category_range(hu, mask, votes, region, spacing, members: int, *, margin: float = VOTE_MARGIN,
                   threshold_hu: float = 130.0, scores=None, dense_hu: float | None = None,
                   dense_vote: float | None = None, **conventions) -> CategoryRange:
    """The category range of one exam's pipeline result (host, NumPy).

    Args:
        hu: float (z, y, x) HU; mask: bool (z, y, x) the calcium scored; votes: int (z, y, x) members voting
            calcium (0 outside the candidates); region: bool (z, y, x) the chest region the candidates were
            restricted to, or None (no localisation); spacing: (dz, dy, dx) mm; members: ensemble size.
        margin: votes (0 < margin < members / 2); threshold_hu and ``conventions`` (min_pixels,
            min_area_mm2, connectivity, calibration): the scoring conventions of ``compute_scores``;
            scores: the ``Scores`` of ``mask`` when already computed; dense_hu: leave out at the low end every
            26-connected object of ``mask`` peaking at this HU or more (None: none); dense_vote: the
            pipeline's vote line for dense objects (``agatax.ensemble.object_majority``), applied at both ends.

    Returns:
        CategoryRange. An object is 26-connected voxels >= ``threshold_hu`` (inside ``region``).
    """
    from scipy import ndimage

    from agatax.scoring import compute_scores, risk_category

    hu, mask, votes = np.asarray(hu), np.asarray(mask, bool), np.asarray(votes)
    if not (hu.shape == mask.shape == votes.shape) or (region is not None and np.shape(region) != hu.shape):
        raise InputError(f"hu {hu.shape}, mask {mask.shape}, votes {votes.shape} and region "
                         f"{None if region is None else np.shape(region)} differ", code="SHAPE_MISMATCH")
    if not 0 < margin < members / 2:
        raise InputError(f"margin must lie between 0 and half the {members} members; got {margin}",
                         code="BAD_ARGUMENT")
    conventions = dict(threshold_hu=threshold_hu, **conventions)
    if scores is None:
        scores = compute_scores(hu, mask, spacing, **conventions)
    point = float(scores.agatston)
    objects: list[dict] = []
    low = high = point
    if (votes > 0).any():
        from agatax.ensemble import object_majority

        cand = hu >= threshold_hu
        if region is not None:
            cand &= np.asarray(region, bool)
        spans = [np.flatnonzero(cand.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
        box = tuple(slice(int(s[0]), int(s[-1]) + 1) for s in spans)
        c, v, m = cand[box], votes[box].astype(np.float64), mask[box]
        dense_line = {} if dense_vote is None else {"hu": hu[box], "dense_vote": dense_vote}
        low_m = object_majority(np.where(c, v - margin, 0.0), c, members, **dense_line)
        high_m = object_majority(np.where(c, v + margin, 0.0), c, members, **dense_line)
        dense = np.zeros_like(m)
        if dense_hu is not None and m.any() and float(hu[box][m].max()) >= dense_hu:
            mlab, mn = ndimage.label(m, structure=np.ones((3, 3, 3), bool))
            peaks = np.asarray(ndimage.maximum(hu[box], mlab, np.arange(1, mn + 1)))
            dense = np.isin(mlab, np.flatnonzero(peaks >= dense_hu) + 1)
            low_m &= ~dense
        changed = (low_m ^ m) | (high_m ^ m)
        if changed.any():
            lab, n = ndimage.label(c, structure=np.ones((3, 3, 3), bool))
            flat = np.flatnonzero(lab)
            labels = lab.ravel()[flat]
            total = np.bincount(labels, weights=v.ravel()[flat], minlength=n + 1)
            count = np.bincount(labels, minlength=n + 1)
            found = ndimage.find_objects(lab)
            voxel_mm3 = float(np.prod(spacing))
            for k in np.unique(lab[changed]):
                sub = tuple(slice(b.start + s.start, b.start + s.stop) for b, s in zip(box, found[k - 1]))
                part = lab[found[k - 1]] == k
                moves = part & changed[found[k - 1]]
                objects.append({"slices": [sub[0].start, sub[0].stop - 1], "voxels": int(count[k]),
                                "volume_mm3": round(float(count[k]) * voxel_mm3, 1),
                                "peak_hu": float(hu[sub][part].max()), "mean_vote": round(float(total[k] / count[k]), 2),
                                "scored": bool(m[found[k - 1]][part].any()),
                                "dense": bool(dense[found[k - 1]][part].any()),
                                "agatston": round(float(compute_scores(hu[sub], moves, spacing, **conventions).agatston), 2)})
            low = float(compute_scores(hu[box], low_m, spacing, **conventions).agatston)
            high = float(compute_scores(hu[box], high_m, spacing, **conventions).agatston)
    objects.sort(key=lambda o: (-o["agatston"], -o["voxels"], o["slices"][0]))
    return CategoryRange(agatston=point, category=scores.category, low_agatston=low,
                         low_category=str(risk_category(low)), high_agatston=high,
                         high_category=str(risk_category(high)), members=int(members), margin=float(margin),
                         objects=tuple(objects), dense_hu=None if dense_hu is None else float(dense_hu))
