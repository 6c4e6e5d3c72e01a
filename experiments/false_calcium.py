"""False calcium on calcium-free exams: how often an ensemble scores a patient without coronary calcium.

The target on real non-gated chest CT is "calcium-free patients score under 10" (no false calcium on bone,
sternum or ribs, nor on the look-alikes inside the heart region). This draws calcium-free exams (category A
planned: no coronary calcium) of both protocols at the real matrix of 512 and scores them through the
whole pipeline, as a user gets it (`agatax.run_pipeline`: chest localisation, metal rule, 3 mm networks),
then names what each false calcium voxel lies on (the generator's look-alike codes: aortic wall and valve,
mitral annulus, costal cartilage, lymph node, pericardium, metal; bone).

    python experiments/false_calcium.py --weights agatax/weights/default_ensemble.msgpack --exams 16

Chest CTs span the lungs from their apices (trachea, aortic arch and great vessels) to below the diaphragm;
false calcium more than 20 mm above the generator's carina is counted apart ("above the carina").
``--without-carina`` scores with the localisation's region not cut at the carina (the rule before the cut),
for comparison. Prints one Markdown row per ensemble and protocol, and writes <workdir>/false_calcium.json.
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

from agatax.ensemble import load_ensemble  # noqa: E402
from agatax._atomic import atomic_write_text  # noqa: E402
from agatax.pipeline import AIR_SHARE, DENSE_LOOK, DENSE_VOTE, run_pipeline  # noqa: E402
from unseen import (add_adapt_noise_argument, add_dense_look_argument, add_dense_vote_argument,  # noqa: E402
                    adapt_noise_values, dense_look_tag, dense_vote_tag, parse_dense_looks, parse_dense_votes,
                    parse_noise_range)
from agatax.synthetic import DISTRACTOR_CODES, generate_exam, parse_lookalike_rates  # noqa: E402

KINDS = {v: k for k, v in DISTRACTOR_CODES.items()}


def calcium_free_exams(n: int, protocol: str, matrix: int, first_seed: int = 7000, lookalike_rates=None,
                       noise_hu: tuple[float, float] | None = None):
    """Calcium-free exams of seeds first_seed ..; ``noise_hu`` (low, high): each exam's noise SD drawn from
    this range (on a stream of its own; else the generator's)."""
    for i in range(n):
        seed = first_seed + i
        noisy = {} if noise_hu is None else {
            "noise_sigma_hu": float(np.random.default_rng([seed, 4545]).uniform(*noise_hu))}
        yield generate_exam(seed, target_category="A", protocol=protocol, matrix=matrix,
                            lookalike_rates=lookalike_rates, **noisy)


def score(ensemble, exams, air_share=AIR_SHARE, dense_vote=DENSE_VOTE, adapt_noise=True,
          dense_look=DENSE_LOOK) -> dict:
    scores, on = [], {}
    for exam in exams:
        res = run_pipeline(ensemble, exam.volume, air_share=air_share, dense_vote=dense_vote, adapt_noise=adapt_noise,
                           allow_noisy=True,  # measured at any --noise, past the pipeline's refusal line too
                           dense_look=dense_look)
        scores.append(float(res.scores.agatston))
        z, y, x = exam.params["carina_mm"]
        kc = float(np.linalg.solve(exam.volume.affine, np.array([x, y, z, 1.0]))[0])
        above = np.arange(exam.volume.shape[0]) > kc + 20.0 / exam.volume.spacing[0]
        if res.mask[above].any():
            on["above the carina"] = on.get("above the carina", 0) + int(res.mask[above].sum())
        codes = exam.distractor_mask[res.mask]
        for code, count in zip(*np.unique(codes, return_counts=True)):
            name = KINDS.get(int(code), "elsewhere")
            on[name] = on.get(name, 0) + int(count)
    s = np.asarray(scores)
    return {"scores": scores, "n": len(s), "at_least_10": int((s >= 10).sum()), "above_0": int((s > 0).sum()),
            "max": float(s.max()) if len(s) else 0.0, "false_voxels_on": on}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", nargs="+", required=True, help="ensemble file(s) to test")
    ap.add_argument("--exams", type=int, default=16, help="calcium-free exams per protocol")
    ap.add_argument("--matrix", type=int, default=512)
    ap.add_argument("--protocols", default="cardiac,chest")
    ap.add_argument("--first-seed", type=int, default=7000, help="seeds first-seed .. first-seed + exams - 1")
    ap.add_argument("--lookalikes", default=None,
                    help="KIND=P,...: each exam has this look-alike with probability P (generate_exam's "
                         "lookalike_rates; e.g. pericardium=1 to test on pericardial calcification alone)")
    ap.add_argument("--workdir", default=str(ROOT / "experiments" / "_table1_work"))
    ap.add_argument("--without-carina", action="store_true",
                    help="do not cut the chest region at the carina (the earlier rule), for comparison")
    ap.add_argument("--air-rule", choices=("on", "off", "both"), default="on",
                    help="leave out objects surrounded by air (run_pipeline's air_share, as shipped: on), keep "
                         "them (off), or score both ways")
    add_dense_vote_argument(ap)
    add_dense_look_argument(ap)
    ap.add_argument("--noise", default=None, metavar="LOW,HIGH",
                    help="draw each exam's image noise SD from this range, HU (default: the generator's 10-40)")
    add_adapt_noise_argument(ap)
    args = ap.parse_args(argv)
    noise_hu = None if args.noise is None else parse_noise_range(ap, args.noise)
    lines = parse_dense_votes(ap, args.dense_vote)
    if args.without_carina:
        import agatax.localise

        agatax.localise._find_carina = lambda *a, **k: (float("nan"), 0)
    t0 = time.perf_counter()
    rates = parse_lookalike_rates(args.lookalikes) if args.lookalikes else None
    cohorts = {p: list(calcium_free_exams(args.exams, p, args.matrix, args.first_seed, rates, noise_hu))
               for p in args.protocols.split(",")}
    print(f"{args.exams} calcium-free exams per protocol generated ({time.perf_counter() - t0:.0f} s)", flush=True)
    results = {}
    print("| ensemble | protocol | exams | scored >= 10 | scored > 0 | max | false calcium voxels on |")
    print("|---|---|---|---|---|---|---|")
    rules = {"on": [("", AIR_SHARE)], "off": [(" (in-air rule off)", None)],
             "both": [("", AIR_SHARE), (" (in-air rule off)", None)]}[args.air_rule]
    if args.dense_vote is not None:
        rules = [(f"{label} ({dense_vote_tag(d)})", air, d) for label, air in rules for d in lines]
    else:
        rules = [(label, air, lines[0]) for label, air in rules]
    adapts = adapt_noise_values(args.adapt_noise)
    rules = [(label + ("" if args.adapt_noise == "on" else f" (noise adaptation {'on' if a else 'off'})"), air, d, a)
             for label, air, d in rules for a in adapts]
    looks = parse_dense_looks(ap, args.dense_look)
    rules = [(label + ("" if args.dense_look is None else f" ({dense_look_tag(k)})"), air, d, a, k)
             for label, air, d, a in rules for k in looks]
    for w in args.weights:
        ens = load_ensemble(w)
        for (label, air_share, dense, adapt, look), (protocol, exams) in ((r, c) for r in rules for c in cohorts.items()):
            r = score(ens, exams, air_share, dense, adapt, look)
            results[f"{w}{label}::{protocol}"] = r
            on = ", ".join(f"{k} {v}" for k, v in sorted(r["false_voxels_on"].items(), key=lambda kv: -kv[1]))
            print(f"| {w}{label} | {protocol} | {r['n']} | {r['at_least_10']} | {r['above_0']} | {r['max']:.1f} | "
                  f"{on or '-'} |", flush=True)
    out = Path(args.workdir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "false_calcium.json", json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
