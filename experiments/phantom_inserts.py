"""What each network sees of the real QRM phantom's calcium inserts.

Every 3D object >= 130 HU on the phantom (26-connected) of 5 to 5000 voxels peaking at 250 HU or more (the
inserts; the thorax ring, spine insert and calibration rod are larger, the ring's grain fainter) with its
size, peak and place, and each member's highest
probability within one coarse (3 mm) voxel of the object's centre. Reference Agatston per insert:
../shared/data/qrm-phantom-canon/reference_agatston.csv (rows scan == Large_rep1).

    python experiments/phantom_inserts.py --weights agatax/weights/default_ensemble.msgpack

The phantom is read from $AGATAX_SHARED/data/qrm-phantom-canon, else ../shared beside the checkout.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = Path(os.environ.get("AGATAX_SHARED") or ROOT.parent / "shared")


def insert_probabilities(ensemble, volume, *, min_voxels: int = 5, max_voxels: int = 5000,
                         min_peak_hu: float = 250.0) -> list[dict]:
    """Objects >= 130 HU of ``volume`` between the sizes given, peaking at ``min_peak_hu`` or more, each with
    every member's highest probability near it (float, members order), largest first."""
    import jax
    from scipy import ndimage

    from agatax.ensemble import ensemble_logits
    from agatax.preprocess import network_grid_mm, preprocess

    hu = np.asarray(volume.hu, np.float32)
    spacing = volume.spacing
    x = preprocess(hu, spacing, multiple=ensemble.config.multiple, **ensemble.config.input_options)
    logits = np.asarray(ensemble_logits(ensemble, x[None, ..., None]))[:, 0, ..., 0]  # (members, Z, Y, X)
    prob = np.asarray(jax.nn.sigmoid(logits))
    target = float(network_grid_mm(spacing[0]))
    lab, n = ndimage.label(hu >= 130.0, structure=np.ones((3, 3, 3), bool))
    sizes = ndimage.sum_labels(np.ones_like(hu), lab, np.arange(1, n + 1))
    out = []
    for i, box in enumerate(ndimage.find_objects(lab)):
        if not min_voxels <= sizes[i] <= max_voxels:
            continue
        peak = float(hu[box][lab[box] == i + 1].max())
        if peak < min_peak_hu:
            continue
        centre = [(s.start + s.stop - 1) / 2 for s in box]
        c = [int(centre[a] * spacing[a] / target) for a in range(3)]
        near = prob[:, max(c[0] - 1, 0): c[0] + 2, max(c[1] - 1, 0): c[1] + 2, max(c[2] - 1, 0): c[2] + 2]
        out.append({"voxels": int(sizes[i]), "peak_hu": peak,
                    "slices": (box[0].start, box[0].stop - 1), "rows": (box[1].start, box[1].stop - 1),
                    "columns": (box[2].start, box[2].stop - 1),
                    "member_probability": [float(p) for p in near.reshape(len(near), -1).max(1)]})
    return sorted(out, key=lambda o: -o["voxels"])


def main(argv=None) -> int:
    import agatax
    from agatax.ensemble import load_ensemble

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True, help="ensemble file")
    ap.add_argument("--phantom", default=str(SHARED / "data" / "qrm-phantom-canon" / "dicom"))
    ap.add_argument("--top", type=int, default=12, help="objects listed (largest first)")
    args = ap.parse_args(argv)
    if not Path(args.phantom).is_dir():
        print(f"phantom series not found at {args.phantom}: set AGATAX_SHARED or --phantom", file=sys.stderr)
        return 2
    rows = insert_probabilities(load_ensemble(args.weights), agatax.read_volume(args.phantom))
    print("| voxels >= 130 HU | peak HU | slices | rows | columns | members' highest probability |")
    print("|---|---|---|---|---|---|")
    for r in rows[: args.top]:
        p = ", ".join(f"{v:.2f}" for v in r["member_probability"])
        print(f"| {r['voxels']} | {r['peak_hu']:.0f} | {r['slices'][0]}-{r['slices'][1]} | {r['rows'][0]}-{r['rows'][1]} "
              f"| {r['columns'][0]}-{r['columns'][1]} | {p} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
