"""Which planted lesions an ensemble finds, by where they sit: on a main artery or a side branch, inside the
vessel's shadow or beside it in the fat, within 10 mm of aortic calcium (wall, valve, root) or not; by its
own Agatston score and by its peak HU (dense calcium, 1000 HU and more, is what the networks missed most).

Real calcifications also lie on diagonals, marginals and the PDA, and beside the vessel rather than inside
its soft-tissue tube; generator versions before 3 put every plaque inside the lumen of LM, LAD, LCX or RCA.
This draws cardiac exams (categories C-E, so that each holds several lesions), runs each ensemble through
agatax.run_pipeline (defaults: localisation on, 3 mm slabs, metal rule) and counts a lesion found when the
predicted mask touches one of its 3D components. Prints one Markdown row per ensemble and lesion class and
writes <workdir>/branch_lesions.json (per lesion: its classes, found or not and the members' mean vote
over it, per ensemble):

    python experiments/branch_lesions.py --weights agatax/weights/default_ensemble.msgpack --exams 40

--quick checks the plumbing in seconds (2 tiny exams, a random tiny network).
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

from unseen import (add_dense_look_argument, add_dense_vote_argument, dense_look_tag, dense_vote_tag,  # noqa: E402
                    parse_dense_looks, parse_dense_votes)

SEED0 = 3_400_000  # a seed range no other experiment draws from


NEAR_AORTIC_MM = 10.0


def lesion_classes(lesion: dict, aortic_mm: float = np.inf, touches_root: bool = False) -> list[str]:
    """The classes a planted lesion is counted in; ``aortic_mm``: distance (mm) from its brightest voxel to
    the nearest voxel of aortic calcium (wall, valve or root: ``aortic_distance_mm``); ``touches_root``: its
    calcified object (>= 130 HU, 26-connected) holds aortic-root calcium (``touching_root``)."""
    out = ["all", f"artery {lesion['artery']}", "side branch" if lesion["vessel"] != lesion["artery"] else "main artery"]
    out.append("beside the vessel (> 1 radius off)" if lesion["eccentric"] > 1.0 else "inside the vessel")
    if lesion["speck"]:
        out.append("speck")
    a = lesion["agatston"]
    out.append("own Agatston >= 100" if a >= 100 else "own Agatston 10-100" if a >= 10 else "own Agatston < 10")
    peak = lesion["peak_hu"]
    out.append("peak >= 1000 HU" if peak >= 1000 else "peak 800-1000 HU" if peak >= 800 else "peak < 800 HU")
    if aortic_mm <= NEAR_AORTIC_MM:
        out.append(f"within {NEAR_AORTIC_MM:g} mm of aortic calcium")
    if touches_root:
        out.append(f"{lesion['artery']} touching aortic-root calcium")
    return out


def touching_root(exam) -> list[bool]:
    """Per lesion of ``exam.lesions``: its calcified object (26-connected voxels >= 130 HU holding one of its
    points) also holds aortic-root calcium, so the pipeline sees the two as one object."""
    from scipy import ndimage

    from agatax.synthetic import DISTRACTOR_CODES

    lab, _ = ndimage.label(exam.volume.hu >= 130, structure=np.ones((3, 3, 3), bool))
    root = set(np.unique(lab[exam.distractor_mask == DISTRACTOR_CODES["aortic_root"]]).tolist()) - {0}
    return [bool(root & ({int(lab[p]) for p in lesion["points_zyx"]} - {0})) for lesion in exam.lesions]


def aortic_distance_mm(exam) -> np.ndarray:
    """float (z, y, x): distance (mm) to the nearest voxel of the exam's aortic calcium (wall, valve, or root at
    the left main ostium); inf everywhere when it has none."""
    from scipy import ndimage

    from agatax.synthetic import DISTRACTOR_CODES

    aortic = np.isin(exam.distractor_mask, [DISTRACTOR_CODES[k] for k in ("aortic_wall", "aortic_valve", "aortic_root")])
    if not aortic.any():
        return np.full(aortic.shape, np.inf)
    return ndimage.distance_transform_edt(~aortic, sampling=exam.volume.spacing)


def lesion_parts(exam) -> list[tuple[dict, np.ndarray]]:
    """(lesion, flat indices) for each lesion of ``exam`` that has a voxel in the true mask: the voxels of the
    3D components (26-connected) of the true mask that hold one of its points. One labelling per exam,
    shared by ``found_lesions`` and ``lesion_votes``."""
    from scipy import ndimage

    lab, _ = ndimage.label(exam.mask > 0, structure=np.ones((3, 3, 3), bool))
    out = []
    for lesion in exam.lesions:
        comps = {int(lab[p]) for p in lesion["points_zyx"]} - {0}
        if comps:
            out.append((lesion, np.flatnonzero(np.isin(lab, list(comps)))))
    return out


def found_lesions(exam, predicted: np.ndarray, parts=None) -> list[tuple[dict, bool]]:
    """(lesion, found) for each lesion of ``lesion_parts(exam)`` (or ``parts``, its result): found when
    ``predicted`` (bool (z, y, x)) touches a 3D component of the true mask holding one of its points."""
    flat = np.asarray(predicted).reshape(-1)
    return [(lesion, bool(flat[idx].any())) for lesion, idx in (parts if parts is not None else lesion_parts(exam))]


def lesion_votes(exam, votes: np.ndarray, parts=None) -> list[float]:
    """Per lesion of ``found_lesions`` (same lesions, same order): the members' mean vote (``votes``: (z, y, x)
    votes per voxel, e.g. ``PipelineResult.votes``) over the 3D components of the true mask that hold its
    points. Tells a miss nobody voted for from one the members split on."""
    flat = np.asarray(votes, np.float64).reshape(-1)
    return [float(flat[idx].mean()) for _, idx in (parts if parts is not None else lesion_parts(exam))]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", nargs="+", default=[str(ROOT / "agatax/weights/default_ensemble.msgpack")])
    ap.add_argument("--exams", type=int, default=40)
    ap.add_argument("--matrix", type=int, default=256)
    ap.add_argument("--workdir", default=str(ROOT / "experiments/_branch_work"))
    ap.add_argument("--first-seed", type=int, default=SEED0, help="seeds first-seed .. first-seed + exams - 1")
    ap.add_argument("--lookalikes", default=None,
                    help="KIND=P,... look-alike rates of every exam, e.g. aortic_root=1,aortic_valve=1 (lesions "
                         "beside aortic calcium)")
    ap.add_argument("--target-mm", type=float, default=None,
                    help="the networks' grid, mm (default: the pipeline's, 3 mm): a finer grid than trained on")
    ap.add_argument("--quick", action="store_true", help="2 tiny exams and a random tiny network")
    add_dense_vote_argument(ap)
    add_dense_look_argument(ap)
    args = ap.parse_args(argv)

    import agatax
    from agatax.synthetic import generate_exam, parse_lookalike_rates

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if args.quick:
        import jax

        from agatax.ensemble import init_ensemble
        from agatax.model import UNetConfig

        tiny = init_ensemble(jax.random.PRNGKey(0), UNetConfig(levels=2, base_filters=2), members=1)
        ensembles = {"random tiny": tiny}
        settings, n = {"matrix": 64, "n_slices": 16, "fov_mm": 190.0}, 2
    else:
        ensembles = {Path(w).name: agatax.load_ensemble(w) for w in args.weights}
        settings, n = {"matrix": args.matrix, "protocol": "cardiac"}, args.exams
    lines = parse_dense_votes(ap, args.dense_vote)
    if args.dense_vote is not None:  # one entry per weights and vote line
        ensembles = {f"{name} ({dense_vote_tag(d)})": (ens, d)
                     for name, ens in ensembles.items() for d in lines}
    else:
        ensembles = {name: (ens, lines[0]) for name, ens in ensembles.items()}
    looks = parse_dense_looks(ap, args.dense_look)
    if args.dense_look is not None:  # one entry per weights, vote line and look
        ensembles = {f"{name} ({dense_look_tag(k)})": (ens, d, k) for name, (ens, d) in ensembles.items() for k in looks}
    else:
        ensembles = {name: (ens, d, looks[0]) for name, (ens, d) in ensembles.items()}
    rates = parse_lookalike_rates(args.lookalikes) if args.lookalikes else None
    counts: dict[str, dict[str, list[int]]] = {name: {} for name in ensembles}
    per_lesion: dict[tuple[int, int], dict] = {}  # (seed, lesion) -> classes and found per ensemble (paired tests)
    t0 = time.perf_counter()
    for i in range(n):
        exam = generate_exam(args.first_seed + i, target_category="CDE"[i % 3], lookalike_rates=rates, **settings)
        aortic = aortic_distance_mm(exam)
        parts = lesion_parts(exam)
        touching = dict(zip(map(id, exam.lesions), touching_root(exam)))
        for name, (ens, dense, look) in ensembles.items():
            res = agatax.run_pipeline(ens, exam.volume, allow_phantom=True, target_mm=args.target_mm,
                                      dense_vote=dense, dense_look=look)
            votes = lesion_votes(exam, np.asarray(res.votes), parts)
            for j, (lesion, found) in enumerate(found_lesions(exam, np.asarray(res.mask) > 0, parts)):
                classes = lesion_classes(lesion, float(aortic[tuple(lesion["center_zyx"])]), touching[id(lesion)])
                per_lesion.setdefault((args.first_seed + i, j), {
                    "classes": classes, "agatston": lesion["agatston"], "voxels": lesion["voxels"],
                    "peak_hu": lesion["peak_hu"],
                    "eccentric": lesion["eccentric"], "vessel": lesion["vessel"]})[name] = found
                per_lesion[(args.first_seed + i, j)][f"{name} mean vote"] = votes[j]
                for cls in classes:
                    c = counts[name].setdefault(cls, [0, 0])
                    c[0] += int(found)
                    c[1] += 1
        if (i + 1) % 10 == 0:
            print(f"{i + 1}/{n} exams ({time.perf_counter() - t0:.0f} s)", flush=True)
    print("\n| ensemble | lesions | found | sensitivity |\n|---|---|---|---|")
    for name, by in counts.items():
        for cls, (hit, tot) in sorted(by.items()):
            print(f"| {name} | {cls} ({tot}) | {hit} | {hit / max(tot, 1):.3f} |")
    from agatax._atomic import atomic_write_text

    atomic_write_text(work / "branch_lesions.json", json.dumps(
        {"exams": n, "settings": settings, "target_mm": args.target_mm, "seed0": args.first_seed, "lookalikes": rates, "counts": counts,
         "lesions": [{"seed": k[0], "lesion": k[1], **v} for k, v in per_lesion.items()]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
