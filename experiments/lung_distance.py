"""How far from the lung true coronary calcium and pericardial calcification lie, on synthetic exams.

A pericardial plate lies on the pericardium, against the lung; coronary calcium lies in the epicardial fat
under it. If the two were apart by a clear margin, a rule after the networks could drop calcium touching
the lung. This measures, per object, the distance (mm) from its >= 130 HU voxels to the nearest voxel below
-500 HU (lung or air): main-artery lesions, side-branch lesions, pericardial plate objects (a plate forced
into every exam with ``lookalike_rates={"pericardium": 1}``).

    python experiments/lung_distance.py --exams 30

Cardiac protocol, categories C, D, E in turn, seeds 3600000 onward. Prints one Markdown row per kind.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agatax.synthetic import DISTRACTOR_CODES, generate_exam  # noqa: E402

SEED0 = 3_600_000  # a seed range no other experiment draws from


def distances_to_air(exam) -> dict[str, list[float]]:
    """{"main artery", "side branch", "pericardium"}: per object, the least distance (mm) from its voxels to a
    voxel below -500 HU. A lesion is its true-mask components (26-connected); a plate, each 26-connected
    part of its look-alike code at >= 130 HU."""
    hu = np.asarray(exam.volume.hu)
    dist = ndimage.distance_transform_edt(hu >= -500, sampling=exam.volume.spacing)
    full = np.ones((3, 3, 3), bool)
    out: dict[str, list[float]] = {"main artery": [], "side branch": [], "pericardium": []}
    lab, _ = ndimage.label(exam.mask > 0, structure=full)
    for les in exam.lesions:
        comps = {int(lab[p]) for p in les["points_zyx"]} - {0}
        if comps:
            kind = "side branch" if les["vessel"] != les["artery"] else "main artery"
            out[kind].append(float(dist[np.isin(lab, list(comps))].min()))
    plate = (exam.distractor_mask == DISTRACTOR_CODES["pericardium"]) & (hu >= 130)
    lab, n = ndimage.label(plate, structure=full)
    out["pericardium"] += [float(v) for v in ndimage.minimum(dist, lab, np.arange(1, n + 1))] if n else []
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exams", type=int, default=30)
    ap.add_argument("--matrix", type=int, default=512)
    args = ap.parse_args(argv)
    pooled: dict[str, list[float]] = {}
    for i in range(args.exams):
        exam = generate_exam(SEED0 + i, target_category="CDE"[i % 3], protocol="cardiac", matrix=args.matrix,
                             lookalike_rates={"pericardium": 1.0})
        for kind, values in distances_to_air(exam).items():
            pooled.setdefault(kind, []).extend(values)
    print("| objects | count | min | 5th percentile | median | within 1 mm | within 2 mm |")
    print("|---|---|---|---|---|---|---|")
    for kind, values in pooled.items():
        v = np.asarray(values)
        if v.size:
            print(f"| {kind} | {v.size} | {v.min():.1f} | {np.percentile(v, 5):.1f} | {np.median(v):.1f} | "
                  f"{(v <= 1.0).mean():.2f} | {(v <= 2.0).mean():.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
