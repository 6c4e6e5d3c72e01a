"""One planted plaque as the networks see it: its HU, the network input and each member's probability over it.

For a plaque an ensemble misses (``branch_lesions.py`` lists them with the members' mean vote), this shows
whether the members split on it or all leave it, what lies around it (the generator's tissue map), and
whether they leave it because it is dense: the members' probabilities again with the HU of the plaque and of
a 2-voxel surround capped (``--caps``; nothing else changed). Exams as ``branch_lesions.py`` draws them
(cardiac, C-E; the exam ``first_seed + i`` of a draw has category "CDE"[i % 3]):

    python experiments/plaque_look.py --weights agatax/weights/default_ensemble.msgpack --seed 3580014 \\
        --category E --lesion 5 --out /tmp/plaque.png

Prints the plaque's planned and measured size and peak, the tissue around it, look-alikes within 30 mm and
one line per cap: members voting (probability >= 0.5) and each member's highest probability over the
plaque's network cells. ``--out`` writes a PNG: two slices through the plaque (HU, the whole slice, the
network input, the members' mean probability).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))


def member_probabilities(ensemble, hu, spacing, target_mm):
    """(members, Z, Y, X) float64 sigmoid probabilities on the network grid, the input as the pipeline makes it
    (no input smoothing), and the input (Z, Y, X)."""
    import jax.numpy as jnp

    from agatax.ensemble import ensemble_logits
    from agatax.preprocess import preprocess

    x = preprocess(jnp.asarray(hu), spacing, target_mm=target_mm, multiple=ensemble.config.multiple,
                   **ensemble.config.input_options)
    logits = np.asarray(ensemble_logits(ensemble, x[None, ..., None]), np.float64)[:, 0, ..., 0]
    return 1.0 / (1.0 + np.exp(-logits)), np.asarray(x)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default=str(ROOT / "agatax/weights/default_ensemble.msgpack"))
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--category", required=True, choices=list("BCDE"))
    ap.add_argument("--lesion", type=int, required=True, help="index in branch_lesions.py's per-lesion list")
    ap.add_argument("--matrix", type=int, default=512)
    ap.add_argument("--caps", default="800,600,450", help="HU caps of the plaque and its surround (comma list)")
    ap.add_argument("--out", default=None, help="PNG to write")
    args = ap.parse_args(argv)

    from scipy import ndimage

    import agatax
    from agatax.preprocess import network_grid_mm
    from agatax.synthetic import generate_exam
    from agatax.synthetic.anatomy import TISSUES
    from branch_lesions import lesion_parts

    ens = agatax.load_ensemble(args.weights)
    ex = generate_exam(args.seed, target_category=args.category, matrix=args.matrix, protocol="cardiac",
                       keep_tissue=True)
    parts = lesion_parts(ex)
    if not 0 <= args.lesion < len(parts):
        ap.error(f"exam {args.seed} has lesions 0..{len(parts) - 1} with a voxel in the true mask")
    les, idx = parts[args.lesion]
    hu, sp = np.asarray(ex.volume.hu), ex.volume.spacing
    t = network_grid_mm(sp[0])
    plaque = np.zeros(hu.shape, bool)
    plaque.flat[idx] = True
    zz, yy, xx = np.unravel_index(idx, hu.shape)
    cells = sorted(set(zip((zz * sp[0] / t).astype(int), (yy * sp[1] / t).astype(int), (xx * sp[2] / t).astype(int))))
    print(f"exam {args.seed} lesion {args.lesion}: {les['vessel']}, {les['voxels']} voxels, peak {les['peak_hu']:.0f} HU "
          f"(planned {les['density_hu']:.0f}), {les['length_mm']:.1f} mm long, {les['thickness_mm']:.1f} mm thick, "
          f"{les['eccentric']:.2f} lumen radii off the centre line, own Agatston {les['agatston']:.1f}; "
          f"{len(cells)} network cells of {t:g} mm")
    ring = ndimage.binary_dilation(plaque, iterations=4) & ~ndimage.binary_dilation(plaque, iterations=1)
    names = {v: k for k, v in TISSUES.items()}
    vals, counts = np.unique(ex.tissue[ring], return_counts=True)
    print("around it (voxels 1-4 away): " + ", ".join(f"{names.get(int(v), v)} {c}" for v, c in
                                                     sorted(zip(vals, counts), key=lambda vc: -vc[1])))
    centre = np.array([zz.mean(), yy.mean(), xx.mean()])
    near = [f"{d['kind']} ({d['peak_hu']:.0f} HU)" for d in ex.distractors
            if np.linalg.norm((np.asarray(d["center_zyx"]) - centre) * np.asarray(sp)) < 30.0]
    print("look-alikes within 30 mm: " + (", ".join(near) or "none"))
    surround = ndimage.binary_dilation(plaque, np.ones((3, 3, 3), bool), iterations=2)
    prob0 = x0 = None
    for cap in [None] + [float(c) for c in args.caps.split(",") if c.strip()]:
        h = hu if cap is None else np.where(surround, np.minimum(hu, cap), hu)
        prob, x = member_probabilities(ens, h, sp, t)
        if cap is None:
            prob0, x0 = prob, x
        best = np.array([max(prob[k][c] for c in cells) for k in range(prob.shape[0])])
        print(f"{'as it is' if cap is None else f'capped at {cap:g} HU'}: {int((best >= 0.5).sum())} of "
              f"{len(best)} members vote; highest probability per member {np.round(best, 2).tolist()}")
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        zc, yc, xc = int(np.median(zz)), int(round(yy.mean())), int(round(xx.mean()))
        h_fine, h_net = int(35.0 / sp[1]), int(35.0 / t)
        fig, ax = plt.subplots(2, 4, figsize=(16, 8))
        for r, z in enumerate((zc, min(zc + 1, hu.shape[0] - 1))):
            win = (z, slice(max(yc - h_fine, 0), yc + h_fine), slice(max(xc - h_fine, 0), xc + h_fine))
            ax[r, 0].imshow(hu[win], cmap="gray", vmin=-200, vmax=1000)
            ax[r, 0].contour(plaque[win], [0.5], colors="r", linewidths=0.6)
            ax[r, 0].set_title(f"HU (-200..1000), slice {z}, plaque outlined")
            ax[r, 1].imshow(hu[z], cmap="gray", vmin=-200, vmax=600)
            ax[r, 1].plot([xc], [yc], "r+", ms=14)
            ax[r, 1].set_title("the slice")
            c, yn, xn = int(z * sp[0] / t), int(yc * sp[1] / t), int(xc * sp[2] / t)
            net = (c, slice(max(yn - h_net, 0), yn + h_net), slice(max(xn - h_net, 0), xn + h_net))
            ax[r, 2].imshow(x0[net], cmap="gray", vmin=0, vmax=1)
            ax[r, 2].set_title(f"network input, cell row {c}")
            ax[r, 3].imshow(prob0[(slice(None),) + net].mean(0), cmap="magma", vmin=0, vmax=1)
            ax[r, 3].set_title("members' mean probability")
        for a in ax.flat:
            a.axis("off")
        fig.suptitle(f"exam {args.seed} lesion {args.lesion}: {les['vessel']}, {les['voxels']} voxels, peak "
                     f"{les['peak_hu']:.0f} HU, own Agatston {les['agatston']:.0f} ({Path(args.weights).name})")
        fig.tight_layout()
        from agatax._atomic import atomic_open

        with atomic_open(Path(args.out)) as f:
            fig.savefig(f, format="png", dpi=70)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
