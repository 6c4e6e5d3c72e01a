"""What the pipeline leaves unscored inside the chest region, object by object, against the generator's truth.

Scores synthetic exams through `agatax.run_pipeline` (the shipped defaults) and lists, per exam, every
calcified object of the chest region (26-connected voxels >= 130 HU inside ``ChestRegion.region``) that holds
unscored voxels scoring Agatston > 0 on their own: its size, peak HU, the networks' votes on it (mean, max,
voxels with a majority), what it truly is (coronary calcium: the share of its voxels in the true mask; else
the generator's distractor code of most of its voxels, or "noise") and the Agatston of its unscored voxels.
With the exam's score, true score and category range, this tells which rule on unscored objects would flag
the exams scored too low, at what cost in exams flagged that were right:

    python experiments/missed_objects.py --cohort J3 --seed 37 --exams 98 --matrix 512
    python experiments/missed_objects.py --cohort unseen --seed 37 --exams 98 --matrix 512

Writes <workdir>/missed_objects_<cohort>_<seed>.json (one row per exam) and prints how many exams each rule
of FLAG_RULES flags (``--summarise FILE...`` prints it again from the files, parts of one draw joined).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

import unseen  # noqa: E402

from agatax._atomic import atomic_write_text  # noqa: E402
from agatax.ensemble import load_ensemble  # noqa: E402
from agatax.pipeline import METAL_HU, run_pipeline  # noqa: E402
from agatax.scoring import compute_scores  # noqa: E402
from agatax.scoring.components import label_slices  # noqa: E402
from agatax.synthetic import DISTRACTOR_CODES, preset_exam  # noqa: E402

DISTRACTOR_NAMES = {code: kind.replace("_", " ") for kind, code in DISTRACTOR_CODES.items()}


def unscored_objects(hu, mask, votes, region, spacing, truth, distractors, members, *, threshold_hu=130.0,
                     min_pixels=3):
    """One dict per calcified object of ``region`` whose unscored voxels score Agatston > 0 on their own
    (``agatax.compute_scores`` of them, its lesions summed per object), largest unscored Agatston first."""
    cand = (hu >= threshold_hu) & region
    lab, n = ndimage.label(cand, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return []
    unscored = cand & ~mask
    dz, dy, dx = spacing
    # the Agatston lesions of the unscored voxels (the scoring core's 2D components and conventions), each
    # added to the 3D object it lies in (a 2D component never spans two 26-connected objects)
    lesions = compute_scores(hu, unscored, spacing, min_pixels=min_pixels, threshold_hu=threshold_hu).lesions
    slice_labels = label_slices(unscored)
    owner = np.zeros(int(slice_labels.max()) + 1, int)
    owner[slice_labels[unscored]] = lab[unscored]
    part = np.zeros(n + 1)
    np.add.at(part, owner[[les.label for les in lesions]], [les.agatston for les in lesions])
    rows = []
    boxes = ndimage.find_objects(lab)
    for o in np.flatnonzero(part > 0):
        box = boxes[o - 1]
        sel = lab[box] == o
        v = votes[box][sel].astype(float)
        codes = distractors[box][sel]
        code = int(np.bincount(codes).argmax()) if codes.size else 0
        zs = np.flatnonzero(sel.any(axis=(1, 2))) + box[0].start
        rows.append({"voxels": int(sel.sum()), "volume_mm3": round(float(sel.sum() * dz * dy * dx), 2),
                     "scored_voxels": int((sel & mask[box]).sum()), "peak_hu": float(hu[box][sel].max()),
                     "mean_vote": round(float(v.mean()), 3), "max_vote": int(v.max()),
                     "majority_voxels": int((v * 2 > members).sum()),
                     "truth_share": round(float(truth[box][sel].mean()), 3),
                     "kind": ("coronary" if truth[box][sel].mean() >= 0.5
                              else DISTRACTOR_NAMES.get(code, "noise") if code else "noise"),
                     "unscored_agatston": round(float(part[o]), 2), "slices": [int(zs[0]), int(zs[-1])]})
    return sorted(rows, key=lambda r: -r["unscored_agatston"])


#: Rules on unscored objects whose Agatston is added to the category range's high end (peak under METAL_HU).
FLAG_RULES = {
    "none (the range as shipped)": lambda o: False,
    "mean vote >= 1": lambda o: o["mean_vote"] >= 1.0,
    "mean vote >= 0.5, >= 5 mm^3": lambda o: o["mean_vote"] >= 0.5 and o["volume_mm3"] >= 5,
    "a voxel with a majority": lambda o: o["majority_voxels"] >= 1,
    "max vote >= 1, >= 5 mm^3, >= 250 HU":
        lambda o: o["max_vote"] >= 1 and o["volume_mm3"] >= 5 and o["peak_hu"] >= 250,
    "any object >= 5 mm^3 and >= 250 HU": lambda o: o["volume_mm3"] >= 5 and o["peak_hu"] >= 250,
}


def flag_counts(rows: list[dict], rule) -> tuple[int, int, int]:
    """(exams flagged, wrong exams flagged, right exams flagged): an exam is flagged when its category range
    spans categories or its score plus the unscored Agatston of the objects ``rule`` picks is in another
    category."""
    from agatax.scoring import risk_category

    flagged = wrong = right = 0
    for e in rows:
        add = sum(o["unscored_agatston"] for o in e["objects"] if o["peak_hu"] < METAL_HU and rule(o))
        f = e["low"] != e["high"] or risk_category(e["agatston"] + add) != e["category"]
        ok = e["category"] == e["true_category"]
        flagged, wrong, right = flagged + f, wrong + (f and not ok), right + (f and ok)
    return flagged, wrong, right


def print_flag_table(rows: list[dict]) -> None:
    wrong = sum(e["category"] != e["true_category"] for e in rows)
    print(f"{len(rows)} exams, {wrong} in the wrong category; exams flagged / wrong flagged / right flagged:")
    for name, rule in FLAG_RULES.items():
        print("  {:40s} {} / {} / {}".format(name, *flag_counts(rows, rule)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=str(ROOT / "agatax" / "weights" / "default_ensemble.msgpack"))
    ap.add_argument("--cohort", choices=("J3", "unseen"))
    ap.add_argument("--seed", type=int)
    ap.add_argument("--exams", type=int, default=98, help="cohort size (J3: exams --start .. N-1)")
    ap.add_argument("--start", type=int, default=0, help="J3 only: begin at this exam (J3's exam i does not "
                    "depend on the cohort's size, so a draw can be scored in parts)")
    ap.add_argument("--summarise", nargs="+", default=None, metavar="JSON",
                    help="print the flag table of these result files (one cohort, parts joined) and stop")
    ap.add_argument("--matrix", type=int, default=512)
    ap.add_argument("--workdir", default=str(ROOT / "experiments" / "_table1_work"))
    args = ap.parse_args(argv)
    if args.summarise:
        print_flag_table([row for f in args.summarise for row in json.loads(Path(f).read_text())])
        return 0
    if args.cohort is None or args.seed is None:
        ap.error("--cohort and --seed name the draw to score")
    if args.start and args.cohort != "J3":
        ap.error("--start is for J3 only (the never-used cohort's plan depends on its size)")
    ens = load_ensemble(args.weights)
    if args.cohort == "J3":
        exams = (preset_exam("J3", i, args.seed, matrix=args.matrix) for i in range(args.start, args.exams))
    else:
        exams = unseen.unseen_cohort(args.exams, args.seed, args.matrix)
    out = []
    t0 = time.perf_counter()
    for i, exam in enumerate(exams, start=args.start):
        vol = exam.volume
        res = run_pipeline(ens, vol)
        region = res.chest.region if res.chest is not None and res.chest.found else np.ones(vol.hu.shape, bool)
        objs = unscored_objects(np.asarray(vol.hu), np.asarray(res.mask) > 0, np.asarray(res.votes), region,
                                vol.spacing, exam.mask > 0, exam.distractor_mask, ens.members)
        doubt = res.category_range
        out.append({"exam": i, "true_agatston": float(exam.agatston), "true_category": exam.category,
                    "agatston": float(res.scores.agatston), "category": res.scores.category,
                    "low": doubt.low_category, "high": doubt.high_category, "high_agatston": doubt.high_agatston,
                    "noise_hu": res.noise_hu, "objects": objs[:40]})
        print(f"{i}: true {exam.agatston:.1f} {exam.category}, scored {res.scores.agatston:.1f} "
              f"{res.scores.category} [{doubt.low_category}-{doubt.high_category}], unscored objects {len(objs)}"
              f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    part = f"_from{args.start}" if args.start else ""
    path = Path(args.workdir) / f"missed_objects_{args.cohort}_{args.seed}{part}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(out))
    print(f"wrote {path}")
    print_flag_table(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
