"""What lies around the patient against the chest localisation and the score: the patient's support (foam
pad and table top, ``--variant table``) or the upper abdomen under the diaphragm (``--variant abdomen``).

Each exam is drawn twice, the same patient without and with the variant (``generate_exam(..., table=True)``;
``generate_exam(..., abdomen=True, lookalike_rates={"splenic_artery": 1.0})``: the stomach and colon with
their gas, and calcium on the splenic artery in every exam; a chest exam then reaches 40-100 mm further
down), and both are localised (``agatax.localise_chest``) and scored (``agatax.run_pipeline``, shipped
default). Per exam: the lungs found (cm^3), the region's size and how far it reaches below the heart's lowest
myocardium and below the traced carina (mm), the share of the voxels >= 130 HU that are not coronary calcium (bone, the table's skins,
look-alikes) inside the region, the share of the splenic artery's calcium inside it and the voxels of it the
pipeline scored, the share of the true coronary calcium inside the region, and the score and category
against the truth.

    python experiments/table_support.py --protocol chest --exams 16 --first-seed 8800
    python experiments/table_support.py --protocol cardiac --fov 250 --exams 8 --first-seed 8820
    python experiments/table_support.py --variant abdomen --protocol chest --exams 16 --first-seed 9100

Calcium-free exams first (half of them), then categories C, D, E in turn. Prints one Markdown row per
exam and a summary; writes <workdir>/table_support_<protocol>_<first seed>.json. To measure other code on
the same exams, copy this script into that checkout (e.g. a git worktree) and run it there: it imports the
agatax of the checkout it lies in.
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

import agatax  # noqa: E402
from agatax._atomic import atomic_write_text  # noqa: E402
from agatax.defaults import load_default_ensemble  # noqa: E402
from agatax.ensemble import load_ensemble  # noqa: E402
from agatax.localise import localise_chest  # noqa: E402
from agatax.pipeline import run_pipeline  # noqa: E402
from agatax.synthetic import DISTRACTOR_CODES, TISSUES, generate_exam  # noqa: E402


def measure(exam, ensemble, localise: bool = True) -> dict:
    """Localisation and score of one synthetic exam (see the module docstring)."""
    hu, spacing = np.asarray(exam.volume.hu), exam.volume.spacing
    found = localise_chest(hu, spacing)
    coronary = exam.mask > 0
    other = (hu >= 130.0) & ~coronary
    splenic = (exam.distractor_mask == DISTRACTOR_CODES["splenic_artery"]) & (hu >= 130.0)
    region = found.region if found.found else np.zeros(hu.shape, bool)
    res = run_pipeline(ensemble, exam.volume, allow_noisy=True, localise=localise)
    # how far the region reaches below the heart (slice index grows towards the head in generated exams)
    heart = np.nonzero((exam.tissue == TISSUES["myocardium"]).any(axis=(1, 2)))[0]
    rows = np.nonzero(region.any(axis=(1, 2)))[0]
    below = float((heart[0] - rows[0]) * spacing[0]) if heart.size and rows.size else None
    # and below the traced carina (None: no carina traced)
    carina = found.carina_slice if found.found else float("nan")
    below_carina = float((carina - rows[0]) * spacing[0]) if np.isfinite(carina) and rows.size else None
    return {"found": bool(found.found), "lung_cm3": round(float(found.lung_cm3), 1),
            "region_voxels": int(region.sum()), "region_below_heart_mm": below,
            "region_below_carina_mm": None if below_carina is None else round(below_carina, 1),
            "splenic_voxels": int(splenic.sum()),
            "splenic_in_region": round(float((splenic & region).sum() / splenic.sum()), 4) if splenic.any() else None,
            "splenic_scored": int((splenic & res.mask).sum()),
            "other_in_region": round(float((other & region).sum() / max(int(other.sum()), 1)), 4),
            "coronary_kept": round(float((coronary & region).sum() / coronary.sum()), 4) if coronary.any() else None,
            "agatston": round(float(res.scores.agatston), 1), "category": res.scores.category,
            "true_agatston": round(float(exam.agatston), 1), "true_category": exam.category, "note": found.note}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", choices=("table", "abdomen"), default="table")
    ap.add_argument("--protocol", choices=("chest", "cardiac"), default="chest")
    ap.add_argument("--exams", type=int, default=16)
    ap.add_argument("--first-seed", type=int, required=True)
    ap.add_argument("--matrix", type=int, default=512)
    ap.add_argument("--fov", type=float, default=None, help="field of view, mm (default: the generator's draw)")
    ap.add_argument("--weights", default=None, help="ensemble file to score with (default: the shipped one)")
    ap.add_argument("--no-localise", action="store_true",
                    help="score without the chest region (what the networks alone do); the region is still reported")
    ap.add_argument("--workdir", default=str(ROOT / "experiments" / "_table1_work"))
    args = ap.parse_args(argv)
    ensemble = load_default_ensemble() if args.weights is None else load_ensemble(args.weights)
    print(f"agatax from {Path(agatax.__file__).parent}", flush=True)
    cats = ["A"] * (args.exams // 2) + [("C", "D", "E")[i % 3] for i in range(args.exams - args.exams // 2)]
    scanner = {} if args.fov is None else {"fov_mm": args.fov}
    rows = []
    print(f"| seed | true | {args.variant} | lungs cm^3 | region voxels | region below the heart | non-coronary >= 130 HU "
          "in region | splenic calcium in region (voxels scored) | coronary kept | score (category) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    t0 = time.perf_counter()
    for i, cat in enumerate(cats):
        seed = args.first_seed + i
        for drawn in (False, True):  # the exam without, then with the variant
            variant = ({"table": True} if args.variant == "table"
                       else {"abdomen": True, "lookalike_rates": {"splenic_artery": 1.0}}) if drawn else {}
            exam = generate_exam(seed, target_category=cat, protocol=args.protocol, matrix=args.matrix,
                                 keep_tissue=True, **variant, **scanner)
            row = {"seed": seed, "with_variant": drawn, **measure(exam, ensemble, not args.no_localise)}
            rows.append(row)
            kept = "-" if row["coronary_kept"] is None else f"{100 * row['coronary_kept']:.1f} %"
            below = "-" if row["region_below_heart_mm"] is None else f"{row['region_below_heart_mm']:.0f} mm"
            spl = ("-" if row["splenic_in_region"] is None
                   else f"{100 * row['splenic_in_region']:.0f} % ({row['splenic_scored']})")
            print(f"| {seed} | {row['true_agatston']:g} ({row['true_category']}) | {'yes' if drawn else 'no'} | "
                  f"{row['lung_cm3']:.0f} | {row['region_voxels']} | {below} | {100 * row['other_in_region']:.2f} % | "
                  f"{spl} | {kept} | {row['agatston']:g} ({row['category']}) |", flush=True)
    with_variant = [r for r in rows if r["with_variant"]]
    plain = {r["seed"]: r for r in rows if not r["with_variant"]}
    summary = {
        "exams": len(with_variant),
        "worst_other_in_region_with_variant": max(r["other_in_region"] for r in with_variant),
        "worst_coronary_kept_with_variant": min((r["coronary_kept"] for r in with_variant
                                               if r["coronary_kept"] is not None), default=None),
        "calcium_free_scored_10_or_more_with_variant": sum(r["agatston"] >= 10 for r in with_variant
                                                         if r["true_category"] == "A"),
        "category_changed_by_variant": sum(r["category"] != plain[r["seed"]]["category"] for r in with_variant),
        "region_ratio_variant_to_plain": [round(r["region_voxels"] / max(plain[r["seed"]]["region_voxels"], 1), 3)
                                          for r in with_variant],
        "region_below_heart_mm_with_variant": [r["region_below_heart_mm"] for r in with_variant],
        "region_below_carina_mm_with_variant": [r["region_below_carina_mm"] for r in with_variant],
        "coronary_kept_worst": min((r["coronary_kept"] for r in rows if r["coronary_kept"] is not None), default=None),
        "splenic_scored_exams": sum(r["splenic_scored"] > 0 for r in with_variant),
        "seconds": round(time.perf_counter() - t0),
    }
    print(json.dumps(summary))
    name = (("table_support" if args.variant == "table" else "abdomen")
            + ("" if args.weights is None else "_" + Path(args.weights).stem) + ("_nolocalise" if args.no_localise else ""))
    out = Path(args.workdir) / f"{name}_{args.protocol}_{args.first_seed}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps({"args": vars(args), "agatax": str(Path(agatax.__file__).parent),
                                       "rows": rows, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
