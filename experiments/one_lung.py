"""One lung airless against the chest localisation: a collapsed lung, a large effusion, a pneumonectomy.

Each synthetic exam is localised as drawn and with one lung's cells (the generator's tissue map) set to
30 HU, on each side, all of them or those up to the heart's top or to 30, 50 or 80 % of its height (an
effusion or a collapse up to there); a chest exam also drawn into the upper abdomen with splenic calcium;
each with the one-lung rule (``agatax.localise._one_lung``: the lungs mirrored about the spine in the
slices where one side holds almost no lung) and without it (the rule switched off in the same process). Per exam and
variant: whether the rule fired, the share of the true coronary calcium inside the region, the share of
the bone (>= 130 HU) left out, the splenic calcium inside the region, and whether the region is the same
voxel for voxel.

    python experiments/one_lung.py --first-seed 9210 --exams 40

Exams: categories C, D, E in turn, cardiac (even) and chest (odd) fields, matrix 256, the image filled to
its corners. Prints Markdown rows and a summary; writes <workdir>/one_lung_<first seed>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agatax import localise as loc  # noqa: E402
from agatax._atomic import atomic_write_text  # noqa: E402
from agatax.synthetic import DISTRACTOR_CODES, TISSUES, generate_exam  # noqa: E402


def variants(exam):
    """(name, HU) of the exam as drawn and with one lung airless (30 HU): each side, whole, up to the heart's
    top, or up to 30, 50 or 80 % of the heart's height (a lower-lobe collapse or an effusion). Patient left is
    +x in generated exams."""
    hu = exam.volume.hu
    aff = exam.volume.affine
    x = aff[0, 2] * np.arange(hu.shape[2]) + aff[0, 3]
    lung = exam.tissue == TISSUES["lung"]
    myo = np.nonzero((exam.tissue == TISSUES["myocardium"]).any(axis=(1, 2)))[0]
    k = np.arange(hu.shape[0])[:, None, None]  # slice index grows towards the head
    extents = [("whole", True), ("to the heart's top", k <= myo[-1])]
    extents += [(f"to {pct} % of the heart", k <= myo[0] + pct / 100.0 * (myo[-1] - myo[0])) for pct in (30, 50, 80)]
    yield "as drawn", hu
    for side, sel in (("left", x > 0), ("right", x < 0)):
        for extent, where in extents:
            out = hu.copy()
            out[lung & sel[None, None, :] & where] = 30.0
            yield f"{side} lung airless, {extent}", out


def measure(exam, hu) -> dict:
    """The region with and without the one-lung rule on ``hu`` (the exam's geometry and truth)."""
    spacing = exam.volume.spacing
    calcium = exam.mask > 0
    bone = (exam.distractor_mask == DISTRACTOR_CODES["bone"]) & (hu >= 130.0)
    splenic = (exam.distractor_mask == DISTRACTOR_CODES["splenic_artery"]) & (hu >= 130.0)
    on = loc.localise_chest(hu, spacing)
    saved = loc._SIDE_EMPTY
    loc._SIDE_EMPTY = 0.0  # never: the rule off
    try:
        off = loc.localise_chest(hu, spacing)
    finally:
        loc._SIDE_EMPTY = saved

    def stats(r):
        region = r.region if r.found else np.zeros(hu.shape, bool)
        return {"found": bool(r.found),
                "coronary_kept": round(float((calcium & region).sum() / calcium.sum()), 4) if calcium.any() else None,
                "bone_left_out": round(1.0 - float((bone & region).sum() / max(int(bone.sum()), 1)), 4),
                "splenic_in_region": int((splenic & region).sum()) if splenic.any() else None}

    same = (on.found == off.found) and (not on.found or bool((on.region == off.region).all()))
    return {"fired": "mirrored" in on.note, "same_region": same, "on": stats(on), "off": stats(off)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--first-seed", type=int, required=True)
    ap.add_argument("--exams", type=int, default=40)
    ap.add_argument("--matrix", type=int, default=256)
    ap.add_argument("--workdir", default=str(ROOT / "experiments" / "_table1_work"))
    args = ap.parse_args(argv)
    rows = []
    print("| seed | protocol | variant | rule fired | coronary kept: without / with the rule | bone left out: without / with | region changed |")
    print("|---|---|---|---|---|---|---|")
    for i in range(args.exams):
        seed = args.first_seed + i
        protocol = "chest" if i % 2 else "cardiac"
        exam = generate_exam(seed, target_category="CDE"[i % 3], protocol=protocol, matrix=args.matrix,
                             padding_hu=None, keep_tissue=True)
        pairs = [(name, exam, hu) for name, hu in variants(exam)]
        if protocol == "chest":  # the same patient into the upper abdomen, calcium on the splenic artery
            abd = generate_exam(seed, target_category="CDE"[i % 3], protocol=protocol, matrix=args.matrix,
                                padding_hu=None, keep_tissue=True, abdomen=True,
                                lookalike_rates={"splenic_artery": 1.0})
            pairs.append(("as drawn, with the abdomen", abd, abd.volume.hu))
        for name, ex, hu in pairs:
            row = {"seed": seed, "protocol": protocol, "variant": name, **measure(ex, hu)}
            rows.append(row)
            print(f"| {seed} | {protocol} | {name} | {'yes' if row['fired'] else 'no'} | "
                  f"{row['off']['coronary_kept']} / {row['on']['coronary_kept']} | "
                  f"{row['off']['bone_left_out']} / {row['on']['bone_left_out']} | "
                  f"{'no' if row['same_region'] else 'yes'} |", flush=True)
    drawn = [r for r in rows if r["variant"].startswith("as drawn")]
    airless = [r for r in rows if not r["variant"].startswith("as drawn")]
    abdomen = [r for r in rows if r["variant"] == "as drawn, with the abdomen"]

    def worst(rs, side, key):
        vals = [r[side][key] for r in rs if r[side][key] is not None]
        return min(vals) if vals else None

    summary = {
        "exams": sum(r["variant"] == "as drawn" for r in rows),
        "as_drawn_fired": sum(r["fired"] for r in drawn),
        "as_drawn_region_changed": sum(not r["same_region"] for r in drawn),
        "airless_variants": len(airless), "airless_fired": sum(r["fired"] for r in airless),
        "airless_losing_calcium_without": sum((r["off"]["coronary_kept"] or 0) < 1.0 for r in airless),
        "airless_losing_calcium_with": sum((r["on"]["coronary_kept"] or 0) < 1.0 for r in airless),
        "worst_kept_without": worst(airless, "off", "coronary_kept"),
        "worst_kept_with": worst(airless, "on", "coronary_kept"),
        "worst_bone_left_out_with": worst(rows, "on", "bone_left_out"),
        "worst_bone_left_out_without": worst(rows, "off", "bone_left_out"),
        "as_drawn_worst_kept_with": worst(drawn, "on", "coronary_kept"),
        "splenic_voxels_in_region_without_with": [sum(r["off"]["splenic_in_region"] or 0 for r in abdomen),
                                                  sum(r["on"]["splenic_in_region"] or 0 for r in abdomen)],
    }
    print(json.dumps(summary))
    out = Path(args.workdir) / f"one_lung_{args.first_seed}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps({"args": vars(args), "rows": rows, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
