"""A scan that ends at the heart: synthetic cardiac exams scored whole and cut under their lowest calcification.

A calcium-scoring scan planned tight ends close under the heart, so the distal RCA, the crux or the apical
LAD can lie in its last slices. Each exam (cardiac protocol, categories B-E in turn, the generator's own
draws of everything else) is scored by each ensemble with the pipeline's defaults twice: whole, and with
the slices under its lowest calcification removed but for 0 to ``--max-mm`` (drawn per exam), so that all
of its calcium stays in the scan and the true score is the whole exam's.

    python experiments/scan_end.py --weights A [B ...] --first-seed 9600 --exams 24 [--matrix 512] [--max-mm 6]

Per exam and ensemble: the score and category, cut and whole, the share of the true calcium inside the
chest region on the cut exam (the region does not depend on the weights), whether the pipeline warned of
calcium at the scan's end, or the refusal's code. Prints Markdown rows and a summary; writes
<workdir>/scan_end_<first seed>.json.
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
from agatax.synthetic import generate_exam  # noqa: E402


def cut_under_calcium(low: int, dz: float, max_mm: float, rng: np.random.Generator) -> int:
    """The first slice to keep: 0 to floor(max_mm / dz) slices under ``low``, the lowest calcified slice
    (slice 0 is the scan's lowest)."""
    return max(low - int(rng.integers(0, int(max_mm // dz) + 1)), 0)


def score(ensemble, hu, spacing, calcium) -> dict:
    """The pipeline's score, category, scan's-end warning and region share of ``calcium``, or its refusal."""
    try:
        res = run_pipeline(ensemble, hu, spacing)
    except InputError as err:
        return {"refused": err.code}
    region = res.chest.region if res.chest is not None and res.chest.found else None
    return {"agatston": round(float(res.scores.agatston), 1), "category": res.scores.category,
            "end_warning": any(n.startswith("scan's end:") for n in res.notes),
            "calcium_in_region": None if region is None
            else round(float((calcium & region).sum() / calcium.sum()), 4)}


def shown(s: dict) -> str:
    return f"refused {s['refused']}" if "refused" in s else f"{s['agatston']} ({s['category']})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", nargs="+", required=True, help="ensemble file(s) to test")
    ap.add_argument("--first-seed", type=int, required=True)
    ap.add_argument("--exams", type=int, default=24)
    ap.add_argument("--matrix", type=int, default=512)
    ap.add_argument("--max-mm", type=float, default=6.0, help="most mm kept under the lowest calcification")
    ap.add_argument("--workdir", default=str(ROOT / "experiments" / "_table1_work"))
    args = ap.parse_args(argv)
    ensembles = [load_ensemble(w) for w in args.weights]
    names = [Path(w).name for w in args.weights]
    print("| seed | truth | kept under (mm) | calcium in region (cut) | "
          + " | ".join(f"{n}: cut / whole" for n in names) + " |")
    print("|---|---|---|---|" + "---|" * len(names))
    rows = []
    for i in range(args.exams):
        seed = args.first_seed + i
        exam = generate_exam(seed, target_category="BCDE"[i % 4], protocol="cardiac", matrix=args.matrix)
        hu, spacing, calcium = np.asarray(exam.volume.hu), exam.volume.spacing, exam.mask > 0
        low = int(np.nonzero(calcium.any(axis=(1, 2)))[0][0])
        start = cut_under_calcium(low, spacing[0], args.max_mm, np.random.default_rng(seed))
        row = {"seed": seed, "true_agatston": round(float(exam.agatston), 1), "true_category": exam.category,
               "kept_under_mm": round((low - start) * spacing[0], 2), "cut_slices": start, "results": {}}
        for name, ens in zip(names, ensembles):
            row["results"][name] = {"cut": score(ens, hu[start:], spacing, calcium[start:]),
                                    "whole": score(ens, hu, spacing, calcium)}
        rows.append(row)
        first = row["results"][names[0]]["cut"]
        print(f"| {seed} | {row['true_agatston']} ({exam.category}) | {row['kept_under_mm']} | "
              f"{first.get('calcium_in_region')} | "
              + " | ".join(f"{shown(r['cut'])}{' W' if r['cut'].get('end_warning') else ''} / {shown(r['whole'])}"
                           for r in row["results"].values()) + " |", flush=True)

    summary = {"exams": len(rows)}
    for name in names:
        s = {}
        for kind in ("cut", "whole"):
            res = [(r["true_category"], r["results"][name][kind]) for r in rows]
            s[kind] = {"right_category": sum(x.get("category") == t for t, x in res),
                       "refused": sum("refused" in x for _, x in res),
                       "end_warnings": sum(bool(x.get("end_warning")) for _, x in res)}
        kept = [r["results"][name]["cut"].get("calcium_in_region") for r in rows]
        s["cut"]["losing_calcium_to_region"] = sum(k is not None and k < 1.0 for k in kept)
        summary[name] = s
    print(json.dumps(summary))
    out = Path(args.workdir) / f"scan_end_{args.first_seed}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps({"args": vars(args), "rows": rows, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
