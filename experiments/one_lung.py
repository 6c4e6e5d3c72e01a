"""One lung airless against the chest localisation: a collapsed lung, a large effusion, a pneumonectomy.

Each synthetic exam is localised as drawn and with one lung's cells (the generator's tissue map) set to
30 HU, on each side, either all of them or those below the heart's top (an effusion or collapse up to it);
each with the one-lung rule (``agatax.localise._one_lung``: the lungs mirrored about the spine when one
side holds almost no lung) and without it (the rule switched off in the same process). Per exam and
variant: whether the rule fired, the share of the true coronary calcium inside the region, the share of
the bone (>= 130 HU) left out, and whether the region is the same voxel for voxel.

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
    """(name, HU) of the exam as drawn and with one lung airless (30 HU): each side, whole or below the
    heart's top. Patient left is +x in generated exams."""
    hu = exam.volume.hu
    aff = exam.volume.affine
    x = aff[0, 2] * np.arange(hu.shape[2]) + aff[0, 3]
    lung = exam.tissue == TISSUES["lung"]
    myo = np.nonzero((exam.tissue == TISSUES["myocardium"]).any(axis=(1, 2)))[0]
    below_top = (np.arange(hu.shape[0]) <= myo[-1])[:, None, None]  # slice index grows towards the head
    yield "as drawn", hu
    for side, sel in (("left", x > 0), ("right", x < 0)):
        for extent, where in (("whole", True), ("to the heart's top", below_top)):
            out = hu.copy()
            out[lung & sel[None, None, :] & where] = 30.0
            yield f"{side} lung airless, {extent}", out


def measure(exam, hu) -> dict:
    """The region with and without the one-lung rule on ``hu`` (the exam's geometry and truth)."""
    spacing = exam.volume.spacing
    calcium = exam.mask > 0
    bone = (exam.distractor_mask == DISTRACTOR_CODES["bone"]) & (hu >= 130.0)
    on = loc.localise_chest(hu, spacing)
    saved = loc._ONE_SIDED_SLICES
    loc._ONE_SIDED_SLICES = 2.0  # never: the rule off
    try:
        off = loc.localise_chest(hu, spacing)
    finally:
        loc._ONE_SIDED_SLICES = saved

    def stats(r):
        region = r.region if r.found else np.zeros(hu.shape, bool)
        return {"found": bool(r.found),
                "coronary_kept": round(float((calcium & region).sum() / calcium.sum()), 4) if calcium.any() else None,
                "bone_left_out": round(1.0 - float((bone & region).sum() / max(int(bone.sum()), 1)), 4)}

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
        for name, hu in variants(exam):
            row = {"seed": seed, "protocol": protocol, "variant": name, **measure(exam, hu)}
            rows.append(row)
            print(f"| {seed} | {protocol} | {name} | {'yes' if row['fired'] else 'no'} | "
                  f"{row['off']['coronary_kept']} / {row['on']['coronary_kept']} | "
                  f"{row['off']['bone_left_out']} / {row['on']['bone_left_out']} | "
                  f"{'no' if row['same_region'] else 'yes'} |", flush=True)
    drawn = [r for r in rows if r["variant"] == "as drawn"]
    airless = [r for r in rows if r["variant"] != "as drawn"]

    def worst(rs, side, key):
        vals = [r[side][key] for r in rs if r[side][key] is not None]
        return min(vals) if vals else None

    summary = {
        "exams": len(drawn),
        "as_drawn_fired": sum(r["fired"] for r in drawn),
        "as_drawn_region_changed": sum(not r["same_region"] for r in drawn),
        "airless_variants": len(airless), "airless_fired": sum(r["fired"] for r in airless),
        "airless_losing_calcium_without": sum((r["off"]["coronary_kept"] or 0) < 1.0 for r in airless),
        "airless_losing_calcium_with": sum((r["on"]["coronary_kept"] or 0) < 1.0 for r in airless),
        "worst_kept_without": worst(airless, "off", "coronary_kept"),
        "worst_kept_with": worst(airless, "on", "coronary_kept"),
        "worst_bone_left_out_with": worst(rows, "on", "bone_left_out"),
        "worst_bone_left_out_without": worst(rows, "off", "bone_left_out"),
    }
    print(json.dumps(summary))
    out = Path(args.workdir) / f"one_lung_{args.first_seed}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps({"args": vars(args), "rows": rows, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
