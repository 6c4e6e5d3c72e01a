"""Fine-tuning the default ensemble on 20 exams of a new domain, with `agatax train`.

The new domain is a synthetic scanner the default ensemble never saw in training: low dose (noise SD
55 HU, the default saw 10-40), a calibration drift of +25 HU (it saw -6..6) and 2.5 mm slices. The script

1. writes 20 training exams of the domain as a cohort on disk (NIfTI + <id>_mask.nii.gz + manifest.csv),
2. runs `agatax train <cohort>/manifest.csv --out <work>/finetuned.msgpack` (fine-tuning the shipped
   ensemble: --init default; 4 of the 20 exams validate),
3. scores a separate test set of the domain (default 40 exams, other seeds) with the shipped default and
   with the fine-tuned ensemble, through the whole pipeline (agatax.run_pipeline, 3 mm slabs, chest
   localisation), and prints category accuracy, C-index, linearly weighted kappa, lesion F1 and the
   median absolute Agatston error of both, as a Markdown table, also written to <work>/results.json.

The run for experiments/RESULTS.md (CPU, minutes to an hour on 2 cores):

    python experiments/finetune.py --workdir experiments/_finetune_work

--quick checks the plumbing in seconds: 3 tiny exams (64 x 64 x 16), 2 test exams, one tiny network
trained for 2 steps stands in for the shipped ensemble, fine-tuned for 2 steps:

    python experiments/finetune.py --quick --workdir /tmp/finetune-quick
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

#: The new domain: scanner settings outside the default ensemble's training range (MODEL_CARD.md).
DOMAIN = {"noise_sigma_hu": 55.0, "hu_offset": 25.0, "slice_increment_mm": 2.5, "slice_thickness_mm": 2.5,
          "matrix": 256}
QUICK_DOMAIN = {**DOMAIN, "matrix": 64, "n_slices": 16, "fov_mm": 190.0, "slice_increment_mm": 3.0,
                "slice_thickness_mm": 3.0, "protocol": "cardiac"}
CATEGORIES = "ABCDE"


def domain_exams(n: int, first_seed: int, domain: dict, categories: str = CATEGORIES):
    """``n`` exams of the domain, categories cycling through ``categories`` (balanced test sets); a seed the
    generator cannot bring to its category is skipped for the next one."""
    from agatax.errors import AgataxError
    from agatax.synthetic import generate_exam

    seed, made = first_seed, 0
    while made < n:
        if seed - first_seed > 20 * n:
            raise RuntimeError(f"the generator reached the planned categories for only {made} of {n} exams")
        try:
            exam = generate_exam(seed, target_category=categories[made % len(categories)], **domain)
        except (AgataxError, ValueError, TypeError):  # an unreachable target on a coarse grid
            seed += 1
            continue
        yield exam
        made += 1
        seed += 1


def evaluate(ensemble, exams) -> dict:
    """Score the test exams with ``ensemble`` (the pipeline of agatax score) against their truth."""
    from agatax.evaluate import evaluate_masks, evaluate_scores
    from agatax.pipeline import run_pipeline
    from agatax.slabs import thick_slabs

    pred, ref, pairs = {}, {}, []
    for i, exam in enumerate(exams):
        volume, mask = thick_slabs(exam.volume, exam.mask)
        result = run_pipeline(ensemble, volume)
        pred[str(i)], ref[str(i)] = float(result.scores.agatston), float(exam.agatston)
        pairs.append((np.asarray(result.mask), mask > 0, volume))
    ev = evaluate_scores(pred, ref)
    lesions = evaluate_masks(pairs)
    errors = np.abs(np.array([pred[k] - ref[k] for k in ref]))
    return {"exams": len(ref), "category_accuracy": ev.accuracy, "c_index": ev.c_index, "kappa": ev.kappa,
            "lesion_f1": lesions["f1"], "lesion_sensitivity": lesions["sensitivity"], "lesion_ppv": lesions["ppv"],
            "median_abs_agatston_error": float(np.median(errors)), "confusion": ev.confusion.tolist()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=str(ROOT / "experiments" / "_finetune_work"))
    ap.add_argument("--train", type=int, default=20, help="training exams of the new domain (default 20)")
    ap.add_argument("--test", type=int, default=40, help="test exams of the new domain (default 40)")
    ap.add_argument("--steps", type=int, default=600, help="fine-tuning steps per network (default 600)")
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--validation", default="4", help="validation exams out of --train (default 4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="a seconds-long check of the plumbing (tiny everything)")
    args = ap.parse_args(argv)

    from agatax.cli import main as agatax_main
    from agatax.defaults import default_weights_path
    from agatax.ensemble import load_ensemble
    from agatax.synthetic.cohort import write_cohort

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    domain = QUICK_DOMAIN if args.quick else DOMAIN
    n_train, n_test = (3, 2) if args.quick else (args.train, args.test)
    cohort = work / "cohort"
    t0 = time.perf_counter()
    if not (cohort / "manifest.csv").exists():
        mix = "CD" if args.quick else "CDBEC"  # the 64 x 64 quick grid reaches categories C and D at once
        write_cohort(cohort, list(domain_exams(n_train, 1000 + 1000 * args.seed, domain, mix)), format="nifti",
                     ids=[f"new_{i:03d}" for i in range(n_train)])
    test = list(domain_exams(n_test, 500000 + 1000 * args.seed, domain, "CD" if args.quick else CATEGORIES))
    print(f"new domain {domain}: {n_train} training exams in {cohort}, {n_test} test exams "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)

    train_args = ["--members", str(args.members), "--steps", str(args.steps), "--validation", args.validation,
                  "--seed", str(args.seed), "--device", args.device]
    if args.quick:  # a tiny network stands in for the shipped ensemble, so that this runs in seconds
        start = work / "stand_in_default.msgpack"
        tiny = ["--members", "1", "--steps", "2", "--eval-every", "2", "--batch", "2", "--patch", "8,16,16",
                "--validation", "1", "--collapse-retries", "0", "--no-png", "--quiet", "--device", args.device]
        if not start.exists():
            code = agatax_main(["train", str(cohort / "manifest.csv"), "--out", str(start), "--init", "none",
                                "--model", "tiny", "--workdir", str(work / "stand_in.work"), *tiny])
            if code:
                return code
        train_args, init = tiny, str(start)
    else:
        init, start = "default", default_weights_path()
    out = work / "finetuned.msgpack"
    t0 = time.perf_counter()
    code = agatax_main(["train", str(cohort / "manifest.csv"), "--out", str(out), "--init", init, *train_args])
    if code:
        return code
    train_seconds = time.perf_counter() - t0

    results = {"domain": domain, "n_train": n_train, "n_test": n_test, "train_seconds": train_seconds,
               "command": "python experiments/finetune.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    for name, path in (("default", start), ("fine-tuned", out)):
        t0 = time.perf_counter()
        results[name] = evaluate(load_ensemble(path), test)
        print(f"{name}: scored {n_test} test exams ({time.perf_counter() - t0:.0f} s)", flush=True)
    (work / "results.json").write_text(json.dumps(results, indent=1, default=float))

    print()
    print("| ensemble | test exams | category accuracy | C-index | kappa | lesion F1 | median abs Agatston error |")
    print("|---|---|---|---|---|---|---|")
    for name in ("default", "fine-tuned"):
        r = results[name]
        print(f"| {name} | {r['exams']} | {r['category_accuracy']:.3f} | {r['c_index']:.3f} | {r['kappa']:.3f} | "
              f"{r['lesion_f1']:.3f} | {r['median_abs_agatston_error']:.1f} |")
    print(f"\nfine-tuning: {train_seconds / 60:.1f} min; results in {work / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
