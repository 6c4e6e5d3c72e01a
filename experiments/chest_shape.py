"""The shape of the synthetic chests against published adult figures: heart size, chest depth, Haller index.

For seeds 0..N-1 (scanner and patient drawn as ``generate_exam`` draws them) the heart's scale (its long
semi-axis over 52 mm), the share of chests drawn deeper for the heart to keep 20 mm in front of the
vertebral body and by how much, the outer chest depth, the ventricles' length, breadth and thickness (their
ellipsoid's axes: base to apex, toward the patient's left, toward the front) and the Haller index: the inner chest width
over the sternum-to-vertebral-body depth (from the body's draws; the vertebral body's half-depth taken as
its mean draw, 16.5 mm). Adults: Haller ~2.5 (2.0-3.2), a heart 6 cm thick (Gray's Anatomy).

    python experiments/chest_shape.py --draws 784
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agatax.synthetic import GENERATOR_VERSION  # noqa: E402
from agatax.synthetic.anatomy import (STERNUM_CENTRE_MM, STERNUM_HALF_DEPTH_MM, VB_CENTRE_MM,  # noqa: E402
                                      VB_HALF_DEPTH_MM, sample_scanner)
from agatax.synthetic.exam import sample_patient  # noqa: E402

VB_MEAN_HALF_DEPTH_MM = float(np.mean(VB_HALF_DEPTH_MM))  # the vertebral body's half-depth, mean of its draw


def chest_figures(seed: int, **scanner) -> dict[str, float]:
    """One draw's heart and chest figures (mm), from the streams ``generate_exam`` uses (attempt 0; scanner
    settings given as to it)."""
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence([seed, 0]).spawn(2)]
    sc = sample_scanner(streams[0], **scanner)
    body, heart, _, _ = sample_patient(streams[1], sc)
    ai = body["a"] - body["subcut"] - body["wall"]
    bi = body["b"] - body["subcut"] * 0.8 - body["wall"]
    # from the sternum's back to the vertebral body's front (anatomy._template draws them so)
    depth = (bi - VB_CENTRE_MM - VB_MEAN_HALF_DEPTH_MM) - (-bi - STERNUM_CENTRE_MM + STERNUM_HALF_DEPTH_MM)
    return {"scale": heart.semi[0] / 52.0, "deeper": heart.chest_deeper_mm, "outer_depth": 2.0 * body["b"],
            "length": 2.0 * heart.semi[0], "breadth": 2.0 * heart.semi[2], "thickness": 2.0 * heart.semi[1],
            "haller": 2.0 * ai / depth}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draws", type=int, default=784, help="arithmetic draws (seeds 0..N-1)")
    args = ap.parse_args(argv)
    rows = [chest_figures(s) for s in range(args.draws)]
    col = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    deeper = col["deeper"][col["deeper"] > 0]
    print(f"generator version {GENERATOR_VERSION}, {args.draws} draws")
    print("| figure | median | 10th-90th percentile | 5th-95th |")
    print("|---|---|---|---|")
    for name, key in (("heart scale", "scale"), ("ventricles' length (mm)", "length"),
                      ("ventricles' breadth (mm)", "breadth"), ("ventricles' thickness (mm)", "thickness"),
                      ("outer chest depth (mm)", "outer_depth"), ("Haller index", "haller")):
        v = col[key]
        print(f"| {name} | {np.median(v):.2f} | {np.percentile(v, 10):.2f}-{np.percentile(v, 90):.2f} "
              f"| {np.percentile(v, 5):.2f}-{np.percentile(v, 95):.2f} |")
    share, med, top = len(deeper) / args.draws, np.median(deeper) if len(deeper) else 0.0, deeper.max(initial=0.0)
    print(f"chests drawn deeper: {share:.0%} (median {med:.1f} mm, at most {top:.1f} mm)")


if __name__ == "__main__":
    main()
