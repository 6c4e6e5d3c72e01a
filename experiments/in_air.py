"""How much air surrounds true coronary calcium and calcified lung granulomas: the in-air rule checked on truth.

`agatax.pipeline.exclude_in_air` leaves out an object the networks mark when at least ``AIR_SHARE`` of the
ring 1-3 mm around it (in-plane, in its own slices) reads below -400 HU. Here the same measure
(`agatax.pipeline.air_shares`) is taken on the generator's truth, with no network: every true coronary object
(the mask's >= 130 HU voxels, 26-connected) and every granuloma (look-alike code 10, >= 130 HU) of a J3 draw.
A true object at or above the line is calcium the rule would throw away.

    python experiments/in_air.py --seed 16 --matrix 512

``--granulomas P`` sets how often an exam has granulomas (generate_exam's lookalike_rates; default: the
generator's own rate). Prints a Markdown table and writes <workdir>/in_air.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

import table1  # noqa: E402

from agatax._atomic import atomic_write_text  # noqa: E402
from agatax.pipeline import AIR_SHARE, air_shares  # noqa: E402
from agatax.synthetic import DISTRACTOR_CODES  # noqa: E402


def shares_of(exam) -> tuple[list[float], list[float]]:
    """(air shares of the true coronary objects, of the granulomas) of one exam."""
    hu, spacing = exam.volume.hu, exam.volume.spacing
    out = []
    for objects in ((exam.mask > 0) & (hu >= 130), (exam.distractor_mask == DISTRACTOR_CODES["lung_granuloma"]) & (hu >= 130)):
        out.append(air_shares(hu, objects, spacing)[2].tolist() if objects.any() else [])
    return out[0], out[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=16, help="J3 draw")
    ap.add_argument("--scale", type=float, default=1.0, help="cohort size factor (1 = 98 exams)")
    ap.add_argument("--matrix", type=int, default=512)
    ap.add_argument("--granulomas", type=float, default=None, help="probability of granulomas per exam")
    ap.add_argument("--workdir", default=str(ROOT / "experiments" / "_table1_work"))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    kw = {"matrix": args.matrix}
    if args.granulomas is not None:
        kw["lookalike_rates"] = {"lung_granuloma": args.granulomas}
    coronary, granuloma, worst = [], [], []
    for exam in table1.generate("J3", table1.cohort_size("J3", args.scale), args.seed, kw):
        c, g = shares_of(exam)
        coronary += c
        granuloma += g
        if c:
            worst.append((max(c), exam.seed))
    c, g = np.asarray(coronary), np.asarray(granuloma)

    def row(name, a):
        if not a.size:
            return f"| {name} | 0 | - | - |"
        return (f"| {name} | {a.size} | {np.median(a):.2f} / {np.percentile(a, 99):.2f} / {a.min():.2f} - {a.max():.2f} "
                f"| {int((a >= AIR_SHARE).sum())} |")

    print(f"J3 seed {args.seed}, matrix {args.matrix} ({time.perf_counter() - t0:.0f} s); device {table1.device_description()}")
    print(f"| objects (>= 130 HU, 26-connected) | count | air share: median / 99th percentile / range | >= {AIR_SHARE:g} |")
    print("|---|---|---|---|")
    print(row("true coronary calcium", c))
    print(row("calcified granulomas", g))
    print("exams with the most air around a true object (share, seed):", sorted(worst, reverse=True)[:3])
    out = Path(args.workdir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "in_air.json", json.dumps({"coronary": coronary, "granuloma": granuloma,
                                                       "seed": args.seed, "matrix": args.matrix}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
