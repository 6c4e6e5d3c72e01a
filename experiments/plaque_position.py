"""Where the planted plaques lie on the heart: a training draw beside a test draw (generator time only).

The plaques every member leaves lie mostly on the heart's inferior surface (heart above them, none below:
the RCA's inferior segment, the PDA), cut lengthwise by the slice (RESULTS.md, forty-first session). This
counts, per draw, how many plaques lie there and how large they are, so that a training draw can be held
beside a test draw: is the kind of plaque the members miss rarer in what they learned from?

    python experiments/plaque_position.py --draw lesions --first-seed 3570000 --exams 45 --matrix 512
    python experiments/plaque_position.py --draw training --seed 18 --scale 0.25 --matrix 256 \\
        --lookalikes pericardium=0.5,mitral_annulus=0.5,aortic_root=0.5,metal=0.5

``--draw lesions``: exams as ``branch_lesions.py`` draws them (cardiac, exam i of category "CDE"[i % 3]);
``--draw training``: the exams of ``table1.py``'s training sets J1 + J2 + AD at ``--scale`` (as fine-tune 6
drew them; the noise ranges table1 may draw do not move a plaque). One JSON line per plaque with ``--out``.

Position classes, from the generator's tissue map: of the columns under and over the plaque's in-plane
footprint (widened by 3 mm), heart (myocardium or blood) within 10 mm above the plaque's top slice and
none within 10 mm below its bottom slice: "inferior surface"; heart below and none above: "superior
surface" (the plaque over the heart); else "side". "In plane": the plaque spans at least 3 times as many mm
in-plane as along z.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))


def heart_mask(tissue: np.ndarray) -> np.ndarray:
    """bool (z, y, x): the heart (myocardium or blood) of a tissue map (anatomy.TISSUES)."""
    from agatax.synthetic.anatomy import TISSUES

    return np.isin(tissue, (TISSUES["myocardium"], TISSUES["blood"]))


def superior_step(tissue: np.ndarray, heart: np.ndarray) -> int:
    """+1 when the head lies toward higher slice indices, -1 otherwise: the liver's centre (or, without
    liver in the field, the lungs' largest slice) against the heart's (``heart``: ``heart_mask(tissue)``)."""
    from agatax.synthetic.anatomy import TISSUES

    z = np.arange(tissue.shape[0])
    heart = heart.sum(axis=(1, 2))
    liver = (tissue == TISSUES["liver"]).sum(axis=(1, 2))
    zh = (z * heart).sum() / max(heart.sum(), 1)
    if liver.sum() > 0:
        return 1 if (z * liver).sum() / liver.sum() < zh else -1
    lung = (tissue == TISSUES["lung"]).sum(axis=(1, 2))
    return 1 if (z * lung).sum() / max(lung.sum(), 1) > zh else -1


def position(heart: np.ndarray, idx: np.ndarray, spacing, up: int) -> dict:
    """Position class and extents of one plaque (flat indices ``idx`` into ``heart``, ``heart_mask``'s)."""
    from scipy import ndimage

    zz, yy, xx = np.unravel_index(idx, heart.shape)
    foot = np.zeros(heart.shape[1:], bool)
    foot[yy, xx] = True
    r = max(int(round(3.0 / spacing[1])), 1)
    foot = ndimage.binary_dilation(foot, iterations=r)
    n = max(int(round(10.0 / spacing[0])), 1)
    lo, hi = int(zz.min()), int(zz.max())
    below_rows = range(max(lo - n, 0), lo) if up > 0 else range(hi + 1, min(hi + 1 + n, heart.shape[0]))
    above_rows = range(hi + 1, min(hi + 1 + n, heart.shape[0])) if up > 0 else range(max(lo - n, 0), lo)
    above = any(heart[k][foot].any() for k in above_rows)
    below = any(heart[k][foot].any() for k in below_rows)
    cls = "inferior surface" if above and not below else "superior surface" if below and not above else "side"
    z_mm = (hi - lo + 1) * spacing[0]
    xy_mm = max(float(np.ptp(yy)) + 1, float(np.ptp(xx)) + 1) * spacing[1]
    return {"position": cls, "z_mm": z_mm, "xy_mm": xy_mm, "in_plane": bool(xy_mm >= 3 * z_mm)}


def exams(args):
    from agatax.synthetic import generate_exam, parse_lookalike_rates, preset_exam

    kw = {"matrix": args.matrix, "keep_tissue": True}
    if args.lookalikes:
        kw["lookalike_rates"] = parse_lookalike_rates(args.lookalikes)
    if args.draw == "lesions":
        for i in range(args.exams):
            yield f"{args.first_seed + i}", generate_exam(args.first_seed + i, target_category="CDE"[i % 3],
                                                          protocol="cardiac", **kw)
    else:
        from table1 import cohort_size

        for name in ("J1", "J2", "AD"):
            for i in range(cohort_size(name, args.scale)):
                yield f"{name}-{i}", preset_exam(name, i, args.seed, **kw)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--draw", choices=("lesions", "training"), required=True)
    ap.add_argument("--first-seed", type=int, default=3570000)
    ap.add_argument("--exams", type=int, default=45)
    ap.add_argument("--seed", type=int, default=18, help="training draw seed (table1.py --seed)")
    ap.add_argument("--scale", type=float, default=0.25)
    ap.add_argument("--matrix", type=int, default=512)
    ap.add_argument("--lookalikes", default=None, help="KIND=P,... as table1.py --train-lookalikes")
    ap.add_argument("--out", default=None, help="JSON lines, one per plaque")
    args = ap.parse_args(argv)

    from branch_lesions import lesion_parts

    rows = []
    for name, ex in exams(args):
        sp = ex.volume.spacing
        heart = heart_mask(ex.tissue)
        up = superior_step(ex.tissue, heart)
        for les, idx in lesion_parts(ex):
            row = {"exam": name, "category": ex.category, "vessel": les["vessel"], "voxels": int(les["voxels"]),
                   "volume_mm3": float(len(idx) * np.prod(sp)), "peak_hu": float(les["peak_hu"]),
                   "agatston": float(les["agatston"]), "length_mm": float(les["length_mm"])}
            row |= position(heart, idx, sp, up)
            rows.append(row)
    if args.out:
        from agatax._atomic import atomic_open

        with atomic_open(Path(args.out)) as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows).encode())
    counted = [r for r in rows if r["agatston"] >= 10]
    print(f"{len(rows)} plaques in the true mask, {len(counted)} of own Agatston >= 10")
    for label, sel in (("all", counted), ("volume >= 100 mm3", [r for r in counted if r["volume_mm3"] >= 100]),
                       ("peak >= 1000 HU", [r for r in counted if r["peak_hu"] >= 1000])):
        c = Counter(r["position"] for r in sel)
        inplane = Counter(r["position"] for r in sel if r["in_plane"])
        print(f"{label} ({len(sel)}): " + ", ".join(
            f"{k} {c[k]} ({100 * c[k] / max(len(sel), 1):.0f} %, in plane {inplane[k]})"
            for k in ("inferior surface", "superior surface", "side")))
    by_vessel = defaultdict(Counter)
    for r in counted:
        by_vessel[r["vessel"]][r["position"]] += 1
    print("by vessel (inferior / superior / side): " + "; ".join(
        f"{v} {c['inferior surface']}/{c['superior surface']}/{c['side']}" for v, c in sorted(by_vessel.items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
