"""The object rule as shipped against a split rule, on the same votes (see RESULTS.md, fourteenth session).

"shipped" (the rule before this test): each calcified object (26-connected voxels >= 130 HU inside the chest
region) is kept or dropped whole by its members' mean vote (``object_majority(..., split=False)``). "split"
(shipped since): in an object that is dropped, each 26-connected part of its voxels with a majority vote is
kept whole when that part's own mean vote is at least members - 1 (``object_majority``). One
`agatax.run_pipeline` per exam gives the votes both rules use. Three fresh sets:

- 80 cardiac exams with aortic-root and valve calcium (categories C-E): lesions found, by class
  (experiments/branch_lesions.py), LM lesions fused with root calcium among them;
- a J3 draw (98 exams): category accuracy and C-index against the truth;
- calcium-free exams of both protocols at matrix 512: exams scored >= 10.

    python experiments/split_rule.py [--root-exams 80 --root-seed 3420000 --j3-seed 9 --free 16 --free-seed 7800]

Writes <workdir>/split_rule.json. ``--quick``: a few tiny exams and a random network (plumbing only).
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


def _both(ens, volume, refused: list):
    """{rule: (mask, scores)}, or {} when the pipeline refuses the exam (its code appended to ``refused``)."""
    from agatax import AgataxError, compute_scores, run_pipeline
    from agatax.ensemble import object_majority

    try:
        res = run_pipeline(ens, volume, allow_phantom=True)
    except AgataxError as err:
        refused.append(err.code)
        return {}
    cand = volume.hu >= 130.0
    if res.chest is not None and res.chest.found:
        cand &= res.chest.region
    out = {}
    for rule, split in (("shipped", False), ("split", True)):  # the same votes (metal objects' set to 0)
        mask = object_majority(res.votes, cand, ens.members, split=split)
        out[rule] = (mask, compute_scores(volume.hu, mask, volume.spacing))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=str(ROOT / "agatax" / "weights" / "default_ensemble.msgpack"))
    ap.add_argument("--root-exams", type=int, default=80)
    ap.add_argument("--root-seed", type=int, default=3_420_000)
    ap.add_argument("--j3-seed", type=int, default=9)
    ap.add_argument("--j3-scale", type=float, default=1.0)
    ap.add_argument("--free", type=int, default=16, help="calcium-free exams per protocol")
    ap.add_argument("--free-seed", type=int, default=7800)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workdir", default=str(ROOT / "experiments" / "_table1_work"))
    args = ap.parse_args(argv)

    import agatax
    import table1
    from branch_lesions import aortic_distance_mm, found_lesions, lesion_classes, touching_root

    from agatax.scoring import c_index, category_accuracy
    from agatax.synthetic import generate_exam

    if args.quick:
        import jax

        from agatax.ensemble import init_ensemble
        from agatax.model import UNetConfig

        ens = init_ensemble(jax.random.PRNGKey(0), UNetConfig(levels=2, base_filters=2), members=5)
        root_kw, free_matrix, j3_kw = {"matrix": 64, "n_slices": 16, "fov_mm": 190.0}, 64, {"matrix": 128}
        args.root_exams, args.free, args.j3_scale = 2, 1, 0.02
    else:
        ens = agatax.load_ensemble(args.weights)
        root_kw, free_matrix, j3_kw = {"matrix": 256}, 512, {"matrix": 256}
    rules = ("shipped", "split")
    t0 = time.perf_counter()
    out: dict = {"root": {r: {} for r in rules}, "j3": {}, "free": {r: [] for r in rules},
                 "refused": {"root": [], "j3": [], "free": []}}
    for i in range(args.root_exams):
        exam = generate_exam(args.root_seed + i, target_category="CDE"[i % 3], protocol="cardiac",
                             lookalike_rates={"aortic_root": 1.0, "aortic_valve": 1.0}, **root_kw)
        aortic = aortic_distance_mm(exam)
        touching = dict(zip(map(id, exam.lesions), touching_root(exam)))
        for rule, (mask, _) in _both(ens, exam.volume, out["refused"]["root"]).items():
            for lesion, found in found_lesions(exam, mask):
                for cls in lesion_classes(lesion, float(aortic[tuple(lesion["center_zyx"])]), touching[id(lesion)]):
                    c = out["root"][rule].setdefault(cls, [0, 0])
                    c[0] += int(found)
                    c[1] += 1
    print(f"root exams done ({time.perf_counter() - t0:.0f} s)", flush=True)
    n = table1.cohort_size("J3", args.j3_scale)
    ref, cats = [], {r: [] for r in rules}
    for exam in table1.generate("J3", n, args.j3_seed, j3_kw):
        both = _both(ens, exam.volume, out["refused"]["j3"])
        if both:
            ref.append(exam.category)
        for rule, (_, scores) in both.items():
            cats[rule].append(scores.category)
    for rule in rules:
        out["j3"][rule] = {"accuracy": float(category_accuracy(cats[rule], ref)),
                           "c_index": float(c_index(cats[rule], ref)), "categories": cats[rule]}
    out["j3"]["reference"] = ref
    print(f"J3 done ({time.perf_counter() - t0:.0f} s)", flush=True)
    for protocol in ("cardiac", "chest"):
        for i in range(args.free):
            exam = generate_exam(args.free_seed + i, target_category="A", protocol=protocol, matrix=free_matrix)
            for rule, (_, scores) in _both(ens, exam.volume, out["refused"]["free"]).items():
                out["free"][rule].append(round(float(scores.agatston), 2))
    print(f"calcium-free done ({time.perf_counter() - t0:.0f} s)\n", flush=True)
    print(f"refused by the pipeline: {out['refused']}")
    print("| rule | LM fused with root calcium | all lesions | J3 accuracy / C-index | calcium-free >= 10 |")
    print("|---|---|---|---|---|")
    for rule in rules:
        fused = out["root"][rule].get("LM touching aortic-root calcium", [0, 0])
        everything = out["root"][rule].get("all", [0, 0])
        j3 = out["j3"][rule]
        free = sum(a >= 10 for a in out["free"][rule])
        print(f"| {rule} | {fused[0]} of {fused[1]} | {everything[0]} of {everything[1]} | "
              f"{j3['accuracy']:.3f} / {j3['c_index']:.3f} | {free} of {len(out['free'][rule])} |")
    from agatax._atomic import atomic_write_text

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_text(work / "split_rule.json", json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
