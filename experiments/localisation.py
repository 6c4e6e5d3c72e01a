"""Chest localisation on synthetic exams: share of the true coronary calcium kept inside the region, share
of bone (and of look-alike calcium) left out, region size and time, and the phantom check's z_change (the
share of the body changing over 30 mm, lower quartile over the slices: a phantom is taken below 0.04), and
the carina: in how many exams it was traced, its distance from the generator's carina (mm, positive when
found below it), and how much of the aortic arch's calcification (aortic-wall calcium > 20 mm above the
carina) the region leaves out.

    python3 experiments/localisation.py [--exams 60] [--matrix 256]

Exams: seeds 1000.., categories A-E in turn, scanner settings and protocol (80 % cardiac, 20 % chest)
drawn by the generator. Bone: the generator's noise-free anatomy >= 130 HU, counted where the image is
>= 130 HU. Mediastinum HU70: the contrast check's statistic (refused above 130 HU). Prints a Markdown
summary (pasted into RESULTS.md).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from agatax.localise import localise_chest
from agatax.synthetic import DISTRACTOR_CODES, generate_exam


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exams", type=int, default=60)
    ap.add_argument("--matrix", type=int, default=256)
    args = ap.parse_args()
    rows = []
    for i in range(args.exams):
        ex = generate_exam(1000 + i, target_category="ABCDE"[i % 5], matrix=args.matrix)
        t0 = time.perf_counter()
        r = localise_chest(ex.volume.hu, ex.volume.spacing)
        dt = time.perf_counter() - t0
        region = r.region if r.found else np.ones(ex.volume.shape, bool)
        cac = ex.mask > 0
        bone = (ex.distractor_mask == DISTRACTOR_CODES["bone"]) & (ex.volume.hu >= 130)
        alike = ex.distractor_mask > DISTRACTOR_CODES["bone"]
        z, y, x = ex.params["carina_mm"]
        kc = float(np.linalg.solve(ex.volume.affine, np.array([x, y, z, 1.0]))[0])
        dz = ex.volume.spacing[0]
        arch = ((ex.distractor_mask == DISTRACTOR_CODES["aortic_wall"]) & (ex.volume.hu >= 130)
                & (np.arange(ex.volume.shape[0]) > kc + 20.0 / dz)[:, None, None])
        rows.append({"protocol": ex.params["scanner"]["protocol"], "found": r.found, "cac": int(cac.sum()),
                     "carina_mm": (kc - r.carina_slice) * dz, "arch": int(arch.sum()),
                     "arch_in": int((arch & region).sum()),
                     "cac_in": int((cac & region).sum()), "bone": int(bone.sum()), "bone_in": int((bone & region).sum()),
                     "alike": int(alike.sum()), "alike_in": int((alike & region).sum()), "frac": float(region.mean()),
                     "s": dt, "hu70": r.mediastinum_hu70, "z_change": r.z_change, "phantom": r.phantom_like})
    found = [r for r in rows if r["found"]]
    pooled = lambda k: sum(r[k] for r in rows)  # noqa: E731
    print(f"| exams | lungs found | coronary calcium kept | exams losing any | bone left out (pooled, worst exam) "
          f"| look-alike left out | region, share of volume (median) | time (median) | mediastinum HU70 (max) "
          f"| z_change: min, 1st percentile, median (taken for phantoms) | carina traced: cardiac, chest "
          f"| carina found below the true one, mm (min, median, max) | arch calcium left out |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    err = np.array([r["carina_mm"] for r in rows])
    traced = {p: (sum(np.isfinite(r["carina_mm"]) for r in rows if r["protocol"] == p),
                  sum(r["protocol"] == p for r in rows)) for p in ("cardiac", "chest")}
    zc = np.array([r["z_change"] for r in rows])
    worst = min(1 - r["bone_in"] / max(r["bone"], 1) for r in rows)
    print(f"| {len(rows)} ({sum(r['protocol'] == 'chest' for r in rows)} chest) | {len(found)} | "
          f"{pooled('cac_in')} / {pooled('cac')} voxels | {sum(r['cac_in'] < r['cac'] for r in rows)} | "
          f"{100 * (1 - pooled('bone_in') / pooled('bone')):.2f} %, {100 * worst:.1f} % | "
          f"{100 * (1 - pooled('alike_in') / max(pooled('alike'), 1)):.0f} % | "
          f"{100 * np.median([r['frac'] for r in rows]):.0f} % | {np.median([r['s'] for r in rows]):.2f} s | "
          f"{max(r['hu70'] for r in rows):.0f} HU | {np.nanmin(zc):.3f}, {np.nanpercentile(zc, 1):.3f}, "
          f"{np.nanmedian(zc):.3f} ({sum(r['phantom'] for r in rows)}) | "
          f"{traced['cardiac'][0]} of {traced['cardiac'][1]}, {traced['chest'][0]} of {traced['chest'][1]} | "
          f"{np.nanmin(err):.0f}, {np.nanmedian(err):.0f}, {np.nanmax(err):.0f} | "
          f"{pooled('arch') - pooled('arch_in')} / {pooled('arch')} voxels |")


if __name__ == "__main__":
    main()
