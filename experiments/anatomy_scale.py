"""The shipped networks on larger or smaller anatomy: J3 exams scored with their spacing declared s x their own.

The generator's heart is about 0.81 of a real adult heart's size (experiments/REALISM.md), and the networks
work on a grid fixed in mm. Declaring an exam's voxel spacing (slice increment and pixel size alike) s x its
own makes the whole exam s x larger in mm, anatomy, calcium and noise grain together, without resampling a
voxel; the networks' grid is kept at the drawn exam's (so that the anatomy covers s x as many cells); the
truth is the same mask scored at the declared spacing. s = 1.23 shows the networks anatomy of a
real heart's size.

    python experiments/anatomy_scale.py --seed 47 --exams 49 [--scales 1.0 1.23 0.85] [--weights W] [--matrix 512]

Prints per exam the true and scored category at each scale, then per scale the accuracy, C-index, lesion
sensitivity and PPV, calcium-free exams scored and the median noise measured; writes
<workdir>/anatomy_scale_<seed>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agatax._atomic import atomic_write_text  # noqa: E402
from agatax.ensemble import load_ensemble  # noqa: E402
from agatax.errors import InputError  # noqa: E402
from agatax.pipeline import run_pipeline  # noqa: E402
from agatax.preprocess import network_grid_mm  # noqa: E402
from agatax.scoring import c_index, compute_scores, lesion_detection, risk_category  # noqa: E402
from agatax.synthetic import preset_exam  # noqa: E402

DEFAULT_WEIGHTS = ROOT / "agatax" / "weights" / "default_ensemble.msgpack"


def scored_at(ensemble, hu: np.ndarray, spacing, mask: np.ndarray, s: float) -> dict:
    """One exam scored by the pipeline with its spacing declared ``s`` x ``spacing``, and its truth there. The
    networks' grid stays the one of the exam as drawn (``network_grid_mm`` follows the slice increment from 2 to
    3.5 mm, so by default a 2.5 mm exam declared 3.075 mm would meet the networks on a grid scaled with it, its
    anatomy covering the same cells)."""
    declared = tuple(float(d) * s for d in spacing)
    truth = float(compute_scores(hu, mask, declared).agatston)
    row = {"true": round(truth, 1), "true_category": risk_category(truth)}
    try:
        res = run_pipeline(ensemble, hu, declared, target_mm=network_grid_mm(float(spacing[0])))
    except InputError as err:
        return {**row, "refused": err.code}
    pred = np.asarray(res.mask) > 0
    det = lesion_detection(pred, mask, hu, declared)
    return {**row, "agatston": round(float(res.scores.agatston), 1), "category": res.scores.category,
            "noise_hu": None if res.noise_hu is None else round(float(res.noise_hu), 1),
            "tp": det["tp"], "fp": det["fp"], "fn": det["fn"]}


def summary(rows: list[dict]) -> dict:
    """Accuracy, C-index, lesion counts, calcium-free exams scored and median noise over scored rows."""
    ok = [r for r in rows if "refused" not in r]
    truth = [r["true_category"] for r in ok]
    pred = [r["category"] for r in ok]
    tp, fp, fn = (sum(r[k] for r in ok) for k in ("tp", "fp", "fn"))
    free = [r for r in ok if r["true"] == 0.0]
    noise = [r["noise_hu"] for r in ok if r["noise_hu"] is not None]
    return {"exams": len(rows), "refused": len(rows) - len(ok),
            "accuracy": round(float(np.mean([a == b for a, b in zip(truth, pred)])), 3) if ok else None,
            "c_index": round(float(c_index(pred, truth)), 3) if ok else None,
            "sensitivity": round(tp / max(tp + fn, 1), 3), "ppv": round(tp / max(tp + fp, 1), 3),
            "tp": tp, "fp": fp, "fn": fn,
            "calcium_free_scored": sum(r["agatston"] > 0 for r in free), "calcium_free": len(free),
            "median_noise_hu": round(float(np.median(noise)), 1) if noise else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, required=True, help="J3's seed")
    ap.add_argument("--exams", type=int, default=49, help="J3's first N exams")
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 1.23, 0.85])
    ap.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    ap.add_argument("--matrix", type=int, default=512)
    ap.add_argument("--workdir", default=str(ROOT / "experiments" / "_table1_work"))
    args = ap.parse_args(argv)
    if any(s <= 0 for s in args.scales):
        ap.error("--scales must be > 0")
    ensemble = load_ensemble(args.weights)
    rows = {s: [] for s in args.scales}
    print("| exam | " + " | ".join(f"s = {s:g}: truth -> scored" for s in args.scales) + " |")
    print("|---|" + "---|" * len(args.scales))
    for i in range(args.exams):
        exam = preset_exam("J3", i, args.seed, matrix=args.matrix)
        hu, spacing, mask = np.asarray(exam.volume.hu), exam.volume.spacing, exam.mask > 0
        cells = []
        for s in args.scales:
            r = {"exam": i, **scored_at(ensemble, hu, spacing, mask, s)}
            rows[s].append(r)
            cells.append(f"{r['true']} ({r['true_category']}) -> "
                         + (f"refused {r['refused']}" if "refused" in r else f"{r['agatston']} ({r['category']})"))
        print(f"| {i} | " + " | ".join(cells) + " |", flush=True)
    out = {"seed": args.seed, "exams": args.exams, "matrix": args.matrix, "weights": str(args.weights),
           "summary": {f"{s:g}": summary(rows[s]) for s in args.scales},
           "rows": {f"{s:g}": rows[s] for s in args.scales}}
    print("\n| scale | accuracy | C-index | lesions sens / PPV (tp, fp, fn) | calcium-free scored | median noise (HU) "
          "| refused |\n|---|---|---|---|---|---|---|")
    for s in args.scales:
        m = out["summary"][f"{s:g}"]
        print(f"| {s:g} | {m['accuracy']} | {m['c_index']} | {m['sensitivity']} / {m['ppv']} ({m['tp']}, {m['fp']}, "
              f"{m['fn']}) | {m['calcium_free_scored']} of {m['calcium_free']} | {m['median_noise_hu']} | {m['refused']} |")
    path = Path(args.workdir) / f"anatomy_scale_{args.seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(out, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
