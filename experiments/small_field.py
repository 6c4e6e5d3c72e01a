"""Small cardiac fields of view against the chest region: the lungs the field cuts, and the heart beyond them.

Each synthetic cardiac exam is drawn at one field of view (default 160 mm, under the generator's 170-240 mm)
and localised and scored by the shipped ensemble twice in one process: with the small-field rule
(``agatax.localise.SMALL_FIELD_MM``: in fields narrower than it, the lungs' cells at the field's edge are
taken to go on beyond it for the hull) and without it (the threshold set to 0). Per exam and setting: the
share of the true coronary calcium inside the region, the share of the bone (>= 130 HU) left out, the
costal-cartilage calcium inside the region, the Agatston score and category against the truth, and the
voxels scored on bone or costal cartilage.

    python experiments/small_field.py --first-seed 9330 --exams 20 [--fov 160] [--matrix 512]
        [--centre X,Y] [--region-only]

Exams: categories A-E in turn, the generator's own draws of everything else (the field's centre unless
``--centre`` gives it, in mm in the patient frame: the generator draws X 5-25, Y -15-5; padding).
``--region-only`` skips the networks (the region's figures only, and whether the pipeline would refuse the
region as too small).
Prints Markdown rows and a summary; writes <workdir>/small_field_<first seed>_<fov>.json.
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
from agatax.errors import InputError  # noqa: E402
from agatax.defaults import load_default_ensemble  # noqa: E402
from agatax.pipeline import MIN_REGION_SECTION_CM2, NO_REGION_REFUSALS, run_pipeline  # noqa: E402
from agatax.synthetic import DISTRACTOR_CODES, generate_exam  # noqa: E402


def measure(exam, ensemble) -> dict:
    """The region and the score with the small-field rule ("on") and without it ("off"); no score when
    ``ensemble`` is None."""
    hu, spacing = np.asarray(exam.volume.hu), exam.volume.spacing
    calcium = exam.mask > 0
    bone = (exam.distractor_mask == DISTRACTOR_CODES["bone"]) & (hu >= 130.0)
    costal = exam.distractor_mask == DISTRACTOR_CODES["costal_cartilage"]
    out = {}
    saved = loc.SMALL_FIELD_MM
    for name, threshold in (("on", saved), ("off", 0.0)):
        loc.SMALL_FIELD_MM = threshold
        refusal = None
        try:
            r = loc.localise_chest(hu, spacing)
            res = None if ensemble is None else run_pipeline(ensemble, exam.volume, allow_noisy=True)
        except InputError as err:  # as agatax score: no region, or one too small to hold a heart
            if err.code not in NO_REGION_REFUSALS:
                raise
            res, refusal = None, err.code
        finally:
            loc.SMALL_FIELD_MM = saved
        region = r.region if r.found else np.zeros(hu.shape, bool)
        section = float(region.sum(axis=(1, 2)).max()) * spacing[1] * spacing[2] / 100.0
        out[name] = {
            "found": bool(r.found), "fired": "cuts the lungs" in r.note,
            "coronary_kept": round(float((calcium & region).sum() / calcium.sum()), 4) if calcium.any() else None,
            "bone_left_out": round(1.0 - float((bone & region).sum() / max(int(bone.sum()), 1)), 4),
            "costal_in_region": int((costal & region).sum()),
            "region_share": round(float(region.mean()), 4),
            "refused": bool(not r.found or section < MIN_REGION_SECTION_CM2),
            "refusal": refusal,
        }
        if res is not None:
            out[name].update({
                "agatston": round(float(res.scores.agatston), 1), "category": res.scores.category,
                "scored_on_bone": int((res.mask & (exam.distractor_mask == DISTRACTOR_CODES["bone"])).sum()),
                "scored_on_costal": int((res.mask & costal).sum())})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--first-seed", type=int, required=True)
    ap.add_argument("--exams", type=int, default=20)
    ap.add_argument("--fov", type=float, default=160.0)
    ap.add_argument("--matrix", type=int, default=512)
    ap.add_argument("--centre", default=None, help="X,Y: the field's centre (mm, patient frame)")
    ap.add_argument("--region-only", action="store_true")
    ap.add_argument("--workdir", default=str(ROOT / "experiments" / "_table1_work"))
    args = ap.parse_args(argv)
    ensemble = None if args.region_only else load_default_ensemble()
    centre = {} if args.centre is None else {"fov_center_mm": tuple(float(v) for v in args.centre.split(","))}
    rows = []
    if args.region_only:
        print("| seed | rule fired | coronary kept: without / with | bone left out: without / with "
              "| refused as too small: without / with |")
        print("|---|---|---|---|---|")
    else:
        print("| seed | truth | rule fired | coronary kept: without / with | bone left out: without / with "
          "| costal cartilage in region: without / with | score (category): without / with "
          "| voxels scored on bone, costal cartilage: without / with |")
        print("|---|---|---|---|---|---|---|---|")
    for i in range(args.exams):
        seed = args.first_seed + i
        exam = generate_exam(seed, target_category="ABCDE"[i % 5], protocol="cardiac", matrix=args.matrix,
                             fov_mm=args.fov, **centre)
        row = {"seed": seed, "true_agatston": round(float(exam.agatston), 1), "true_category": exam.category,
               **measure(exam, ensemble)}
        rows.append(row)
        on, off = row["on"], row["off"]
        if args.region_only:
            print(f"| {seed} | {'yes' if on['fired'] else 'no'} | {off['coronary_kept']} / {on['coronary_kept']} | "
                  f"{off['bone_left_out']} / {on['bone_left_out']} | {off['refused']} / {on['refused']} |", flush=True)
            continue
        print(f"| {seed} | {row['true_agatston']} ({row['true_category']}) | {'yes' if on['fired'] else 'no'} | "
              f"{off['coronary_kept']} / {on['coronary_kept']} | {off['bone_left_out']} / {on['bone_left_out']} | "
              f"{off['costal_in_region']} / {on['costal_in_region']} | {off['agatston']} ({off['category']}) / "
              f"{on['agatston']} ({on['category']}) | {off['scored_on_bone']}, {off['scored_on_costal']} / "
              f"{on['scored_on_bone']}, {on['scored_on_costal']} |", flush=True)

    def count(side, test):
        return sum(bool(test(r, r[side])) for r in rows)

    summary = {"exams": len(rows), "fov_mm": args.fov, "centre": args.centre,
               "fired": count("on", lambda r, s: s["fired"])}
    for side in ("off", "on"):
        kept = [r[side]["coronary_kept"] for r in rows if r[side]["coronary_kept"] is not None]
        summary[side] = {
            "losing_calcium": sum(k < 1.0 for k in kept), "worst_kept": min(kept) if kept else None,
            "refused": count(side, lambda r, s: s["refused"]),
            "losing_calcium_not_refused": count(side, lambda r, s: s["coronary_kept"] is not None
                                                and s["coronary_kept"] < 1.0 and not s["refused"]),
            "worst_bone_left_out": min(r[side]["bone_left_out"] for r in rows)}
        if args.region_only:
            continue
        summary[side].update({
            "right_category": count(side, lambda r, s: s["category"] == r["true_category"]),
            "within_one": count(side, lambda r, s: abs("ABCDE".index(s["category"])
                                                       - "ABCDE".index(r["true_category"])) <= 1),
            "exams_scored_on_bone_or_costal": count(side, lambda r, s: s["scored_on_bone"] + s["scored_on_costal"] > 0),
            "median_abs_error": float(np.median([abs(r[side]["agatston"] - r["true_agatston"]) for r in rows]))})
    print(json.dumps(summary))
    tag = "" if args.centre is None else "_at_" + args.centre.replace(",", "_")
    out = Path(args.workdir) / f"small_field_{args.first_seed}_{args.fov:g}{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps({"args": vars(args), "rows": rows, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
