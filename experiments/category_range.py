"""Does the category range flag the exams scored in the wrong category? (`agatax.uncertainty`)

Scores J3-like synthetic exams through `agatax.run_pipeline` (chest localisation, metal rule: as a user gets
it) and compares each exam's category and category range with the true category:

    python experiments/category_range.py --weights agatax/weights/default_ensemble.msgpack --seed 7 --matrix 256

Prints the exams flagged (range spanning categories), the category error rate on flagged and other exams,
the share of wrong-category exams flagged and how often the true category lies inside the range; writes
<workdir>/category_range_<seed>_<matrix>.json with one row per exam. ``--calcium-free N`` scores N
calcium-free exams per protocol (matrix 512, generator version 5) instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

import table1  # noqa: E402

from agatax._atomic import atomic_write_text  # noqa: E402
from agatax.ensemble import load_ensemble  # noqa: E402
from agatax.pipeline import run_pipeline  # noqa: E402
from agatax.scoring.agatston import CATEGORIES  # noqa: E402
from agatax.uncertainty import category_range  # noqa: E402


def rows_for(ensemble, exams) -> list[dict]:
    rows = []
    for exam in exams:
        res = run_pipeline(ensemble, exam.volume)
        r = res.category_range
        region = res.chest.region if res.chest is not None and res.chest.found else None
        by_votes = category_range(exam.volume.hu, res.mask, res.votes, region, res.spacing, ensemble.members,
                                  scores=res.scores)  # the range of votes alone (before stent-dense objects)
        rows.append({"true": exam.category, "true_agatston": round(float(exam.agatston), 2),
                     "scored": r.category, "agatston": round(r.agatston, 2), "low": r.low_category,
                     "high": r.high_category, "low_agatston": round(r.low_agatston, 2),
                     "high_agatston": round(r.high_agatston, 2), "uncertain": r.uncertain,
                     "objects_in_doubt": len(r.objects), "dense_in_doubt": sum(bool(o.get("dense")) for o in r.objects),
                     "uncertain_by_votes": by_votes.uncertain, "low_by_votes": by_votes.low_category,
                     "high_by_votes": by_votes.high_category})
    return rows


def summary(rows: list[dict], by_votes: bool = False) -> dict:
    """Flag figures of the range as shipped, or (``by_votes``) of the range of votes alone."""
    order = {c: i for i, c in enumerate(CATEGORIES)}
    key, low, high = ("uncertain_by_votes", "low_by_votes", "high_by_votes") if by_votes else ("uncertain", "low", "high")
    flagged = [r for r in rows if r[key]]
    others = [r for r in rows if not r[key]]
    wrong = [r for r in rows if r["scored"] != r["true"]]

    def err(rs):
        return None if not rs else sum(r["scored"] != r["true"] for r in rs) / len(rs)

    inside = sum(order[r[low]] <= order[r["true"]] <= order[r[high]] for r in rows)
    return {"exams": len(rows), "flagged": len(flagged), "wrong": len(wrong),
            "wrong_flagged": sum(r[key] for r in wrong),
            "error_flagged": err(flagged), "error_others": err(others),
            "true_inside_range": inside, "right": len(rows) - len(wrong)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=str(ROOT / "agatax" / "weights" / "default_ensemble.msgpack"))
    ap.add_argument("--seed", type=int, default=7, help="J3 seed (fresh draws: not used for anything else)")
    ap.add_argument("--matrix", type=int, default=256)
    ap.add_argument("--scale", type=float, default=1.0, help="cohort size factor (1 = 98 exams)")
    ap.add_argument("--calcium-free", type=int, default=0, metavar="N",
                    help="score N calcium-free exams per protocol (seeds from --first-seed) instead of J3")
    ap.add_argument("--first-seed", type=int, default=7700)
    ap.add_argument("--workdir", default=str(ROOT / "experiments" / "_table1_work"))
    args = ap.parse_args(argv)
    ens = load_ensemble(args.weights)
    t0 = time.perf_counter()
    if args.calcium_free:
        from false_calcium import calcium_free_exams

        exams = [e for p in ("cardiac", "chest")
                 for e in calcium_free_exams(args.calcium_free, p, 512, first_seed=args.first_seed)]
        tag = f"calcium_free_{args.first_seed}_{args.calcium_free}"
    else:
        n = table1.cohort_size("J3", args.scale)
        exams = table1.generate("J3", n, args.seed, {"matrix": args.matrix})
        tag = f"{args.seed}_{args.matrix}"
    rows = rows_for(ens, exams)
    s = summary(rows)
    for name, f in (("range as shipped", s), ("range of votes alone", summary(rows, by_votes=True))):
        print(f"{args.weights} {tag}, {name}: {f['exams']} exams ({time.perf_counter() - t0:.0f} s); flagged "
              f"{f['flagged']}; category right {f['right']}; error on flagged {f['error_flagged']}, on the others "
              f"{f['error_others']}; wrong exams flagged {f['wrong_flagged']} of {f['wrong']}; true category inside "
              f"the range {f['true_inside_range']}", flush=True)
    out = Path(args.workdir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"category_range_{tag}.json", json.dumps({"summary": s, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
