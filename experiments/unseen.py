"""Test an ensemble on synthetic exams drawn from settings that training never used, next to J3.

The "unseen" cohort has J3's shape (98 exams, 20 % per category) but every exam is drawn outside the
training ranges of the generator: cardiac fields of view of 245-260 mm (training: 170-240), image noise of
40-50 HU SD (training: 10-40), calibration offsets of 6-12 HU either way (training: within 6), overlapping
reconstructions (3 mm slices every 2.5 mm; training: thickness = increment) and a sharp or smooth kernel
at the ends of the range. Same evaluation as experiments/table1.py (chest localisation on, majority vote,
host scoring):

    python experiments/unseen.py --weights agatax/weights/default_ensemble.msgpack --scale 1.0 --matrix 256

Prints one Markdown row per ensemble for the J3 test set and for the unseen one, and writes
<workdir>/unseen_results.json. ``--ablate`` then tells which never-used setting the errors come from: every
unseen exam scored in the wrong category is drawn again with one setting at a time put back inside the
training range.
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

import table1  # noqa: E402

from agatax.ensemble import load_ensemble  # noqa: E402
from agatax.synthetic import generate_exam, plan_categories  # noqa: E402
from agatax.synthetic.cohort import exam_seed  # noqa: E402


UNSEEN_NOISE_HU = (40.0, 50.0)


def unseen_settings(rng: np.random.Generator, noise_hu: tuple[float, float] = UNSEEN_NOISE_HU) -> dict:
    """Generator settings outside every training range (see the module docstring); ``noise_hu`` moves the
    noise range alone (the other settings are drawn the same)."""
    return {
        "protocol": "cardiac",
        "fov_mm": float(rng.uniform(245.0, 260.0)),
        "noise_sigma_hu": float(rng.uniform(*noise_hu)),
        "hu_offset": float(rng.choice([-1.0, 1.0]) * rng.uniform(6.0, 12.0)),
        "slice_increment_mm": 2.5,
        "slice_thickness_mm": 3.0,
        "sharpness": float(rng.choice([rng.uniform(0.0, 0.1), rng.uniform(0.9, 1.0)])),
    }


def category_right(ev) -> np.ndarray:
    """bool per exam of an evaluation: the ensemble's category is the reference's."""
    from agatax.scoring import risk_category

    return np.array([risk_category(p) == risk_category(r)
                     for p, r in zip(ev["ensemble_scores"], ev["reference_scores"])])


def noise_split(exams, ev, trained_hu: tuple[float, float]) -> dict:
    """How many exams the pipeline's noise warning (agatax.quality) fires on for an ensemble trained on
    ``trained_hu`` (``UNetConfig.trained_noise_hu``), and the category accuracy on the warned and the others."""
    from agatax.quality import image_noise_hu, noise_note

    measured = [image_noise_hu(e.volume.hu, e.volume.spacing) for e in exams]
    warned = np.array([bool(noise_note(m, trained_hu)) for m in measured])
    right = category_right(ev)

    def acc(sel):
        return round(float(right[sel].mean()), 3) if sel.any() else None

    return {"exams": len(exams), "warned": int(warned.sum()), "accuracy_warned": acc(warned),
            "accuracy_not_warned": acc(~warned),
            "noise_measured_hu": [None if m is None else round(float(m), 2) for m in measured],
            "noise_drawn_hu": [round(float(e.params["scanner"]["noise_sigma_hu"]), 2) for e in exams]}


#: For --ablate: each never-used setting put back inside the training range, one at a time.
PUT_BACK = {"noise 25 HU": {"noise_sigma_hu": 25.0}, "field of view 210 mm": {"fov_mm": 210.0},
            "slices every 3 mm": {"slice_increment_mm": 3.0}, "sharpness 0.5": {"sharpness": 0.5},
            "offset 0 HU": {"hu_offset": 0.0}}


def ablate(ensemble, n: int, seed: int, matrix: int | None, wrong: list[int],
           noise_hu: tuple[float, float] = UNSEEN_NOISE_HU, profile: tuple[float, float] | None = None) -> dict:
    """Exams ``wrong`` of the unseen cohort drawn again with one setting at a time put back inside the training
    range (seed and category unchanged): how many each puts right. Changing the noise level or the offset
    keeps the noise pattern; a new field of view or slice grid also redraws it."""
    plan = unseen_plan(n, seed, noise_hu, profile)
    right = {name: 0 for name in PUT_BACK}
    for i in wrong:
        for name, fix in PUT_BACK.items():
            exam = _draw(plan[i], matrix, fix)
            right[name] += int(category_right(table1.evaluate(ensemble, [exam]))[0])
    return {"exams": len(wrong), "right_after_putting_back": right}


def unseen_plan(n: int, seed: int, noise_hu: tuple[float, float] = UNSEEN_NOISE_HU,
                profile: tuple[float, float] | None = None) -> list[tuple[int, str, dict]]:
    """(exam seed, category, generator settings) of each exam of the unseen cohort. ``profile`` (low, high):
    each exam's ``noise_profile`` (noise SD rising or falling away from the image centre) drawn from this
    range on a stream of its own, so that the exams and their noise patterns stay those drawn without it."""
    cats = plan_categories(n, seed, {c: 0.2 for c in "ABCDE"}, salt="unseen")
    rng = np.random.default_rng([seed, 4242])
    plan = [(exam_seed(seed, i, "unseen"), cat, unseen_settings(rng, noise_hu)) for i, cat in enumerate(cats)]
    if profile is not None:
        r_prof = np.random.default_rng([seed, 4343])
        plan = [(s, c, {**kw, "noise_profile": float(r_prof.uniform(*profile))}) for s, c, kw in plan]
    return plan


def _draw(item: tuple[int, str, dict], matrix: int | None, fix: dict | None = None):
    exam_seed_, cat, settings = item
    kw = {**settings, **(fix or {}), **({"matrix": matrix} if matrix else {})}
    return generate_exam(exam_seed_, target_category=cat, **kw)


def unseen_cohort(n: int, seed: int, matrix: int | None, noise_hu: tuple[float, float] = UNSEEN_NOISE_HU,
                  profile: tuple[float, float] | None = None):
    for item in unseen_plan(n, seed, noise_hu, profile):
        yield _draw(item, matrix)


def add_dense_vote_argument(ap) -> None:
    """The ``--dense-vote`` option of the experiments that compare the pipeline's vote lines."""
    ap.add_argument("--dense-vote", nargs="+", default=None, metavar="SHARE|off",
                    help="run with each of these vote lines for objects peaking at 1000-1500 HU (a share of the "
                    "members, e.g. 0.4; off: the majority line for every object; default: the pipeline's)")


def add_dense_look_argument(ap) -> None:
    """The ``--dense-look`` option of the experiments that compare the pipeline's second look."""
    ap.add_argument("--dense-look", nargs="+", default=None, metavar="HU|off",
                    help="run with each of these second looks (agatax.run_pipeline's dense_look: the networks also "
                    "see the exam with its HU capped at HU; off: one look; default: the pipeline's)")


def parse_dense_looks(ap, values) -> list:
    """``--dense-look`` values -> [HU or None]; None given: [the pipeline's DENSE_LOOK]."""
    from agatax.pipeline import DENSE_LOOK

    return _values_or_off(ap, values, DENSE_LOOK, lambda v: 130.0 < v < 2000.0,
                          "--dense-look takes a cap in HU between 130 and 2000, or off")


def _values_or_off(ap, values, default, valid, what: str) -> list:
    """An option's values ("off" or a number ``valid`` accepts) -> [float or None]; None given: [default]; an
    argparse error naming ``what`` otherwise."""
    if values is None:
        return [default]
    out = []
    for v in values:
        try:
            out.append(None if v == "off" else float(v))
            if out[-1] is not None and not valid(out[-1]):
                raise ValueError
        except ValueError:
            ap.error(f"{what}; got {v!r}")
    return out


def dense_look_tag(look) -> str:
    """How a result under one ``--dense-look`` is labelled: "dense look 600", "dense look off"."""
    return f"dense look {'off' if look is None else f'{look:g}'}"


def dense_vote_tag(dense) -> str:
    """How a result under one ``--dense-vote`` line is labelled: "dense vote 0.4", "dense vote off"."""
    return f"dense vote {'off' if dense is None else dense}"


def add_adapt_noise_argument(ap) -> None:
    """The ``--adapt-noise`` option of the experiments that compare the pipeline's noise adaptation."""
    ap.add_argument("--adapt-noise", choices=("on", "off", "both"), default="on",
                    help="show exams noisier than the training to the networks smoothed (agatax.run_pipeline's "
                    "adapt_noise; default on, as the pipeline), not, or both, one after the other on the same exams")


def adapt_noise_values(choice: str) -> tuple[bool, ...]:
    """``--adapt-noise`` on / off / both -> the adapt_noise values to run."""
    return {"on": (True,), "off": (False,), "both": (True, False)}[choice]


def parse_noise_range(ap, text: str) -> tuple[float, float]:
    """``--noise LOW,HIGH`` (HU) -> (low, high); an argparse error otherwise."""
    try:
        noise_hu = tuple(float(v) for v in text.split(","))
        if len(noise_hu) != 2 or not 0 <= noise_hu[0] <= noise_hu[1]:
            raise ValueError
    except ValueError:
        ap.error(f"--noise takes LOW,HIGH in HU with 0 <= LOW <= HIGH, got {text!r}")
    return noise_hu


def parse_dense_votes(ap, values) -> list:
    """``--dense-vote`` values -> [share or None]; None given: [the pipeline's DENSE_VOTE]."""
    from agatax.pipeline import DENSE_VOTE

    return _values_or_off(ap, values, DENSE_VOTE, lambda v: 0 < v <= 0.5,
                          "--dense-vote takes shares of the members in (0, 0.5] or off")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", nargs="+", required=True, help="ensemble file(s) to test")
    ap.add_argument("--scale", type=float, default=1.0, help="cohort size factor (1 = 98 exams each)")
    ap.add_argument("--matrix", type=int, default=None, help="synthetic in-plane matrix")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-j3", action="store_true", help="test on the unseen cohort only")
    ap.add_argument("--skip-unseen", action="store_true", help="test on J3 only (e.g. J3 drawn at --matrix 512)")
    ap.add_argument("--both-localise", action="store_true",
                    help="also evaluate without the chest localisation (localise=False)")
    ap.add_argument("--ablate", action="store_true",
                    help="then draw every unseen exam scored in the wrong category again with one setting at a "
                    "time put back inside the training range, and count how many each puts right")
    ap.add_argument("--noise", default="40,50", help="noise SD range of the unseen cohort, HU (LOW,HIGH): "
                    "outside the ensemble's training range (40,50 for the 10-40 HU of the generator's default; "
                    "an ensemble trained with --train-noise 10,55 needs e.g. 55,65); the other settings are "
                    "drawn the same")
    ap.add_argument("--noise-profile", default=None,
                    help="LOW,HIGH: draw each unseen exam's noise_profile from this range (the noise SD times "
                    "1 + P (r / R)^2 away from the image centre; e.g. -0.5,1.0); same exams and noise patterns")
    ap.add_argument("--sharpness", type=float, default=None,
                    help="draw J3 with this kernel sharpness instead of its own (-0.5..1; e.g. -0.2: an in-plane "
                    "PSF of 0.66 mm, the real QRM phantom's Canon FC12 (experiments/insert_psf.py); the draws' "
                    "range is 0..1); the rest of each exam is drawn the same")
    add_dense_vote_argument(ap)
    add_dense_look_argument(ap)
    add_adapt_noise_argument(ap)
    ap.add_argument("--workdir", default=str(ROOT / "experiments" / "_table1_work"))
    args = ap.parse_args(argv)
    lines = parse_dense_votes(ap, args.dense_vote)
    looks = parse_dense_looks(ap, args.dense_look)
    noise_hu = parse_noise_range(ap, args.noise)
    profile = None
    if args.noise_profile is not None:
        try:
            profile = tuple(float(v) for v in args.noise_profile.split(","))
            if len(profile) != 2 or not -0.9 <= profile[0] <= profile[1] <= 3.0:
                raise ValueError
        except ValueError:
            ap.error(f"--noise-profile takes LOW,HIGH with -0.9 <= LOW <= HIGH <= 3, got {args.noise_profile!r}")
    n = table1.cohort_size("J3", args.scale)
    gen_kwargs = {} if args.matrix is None else {"matrix": args.matrix}
    if args.sharpness is not None:
        from agatax.errors import InputError
        from agatax.synthetic.exam import _check_scanner

        try:  # the generator's own range, checked before any exam is drawn
            _check_scanner({"sharpness": args.sharpness})
        except InputError as err:
            ap.error(f"--sharpness: {err}")
        gen_kwargs["sharpness"] = args.sharpness
    if args.skip_j3 and args.skip_unseen:
        ap.error("--skip-j3 and --skip-unseen leave nothing to test")
    # one cohort in memory at a time (98 exams at matrix 512 take ~11 GB)
    adapts = adapt_noise_values(args.adapt_noise)
    draws = {}
    if not args.skip_unseen:
        draws["unseen"] = lambda: unseen_cohort(n, args.seed, args.matrix, noise_hu, profile)
    if not args.skip_j3:
        draws["J3"] = lambda: table1.generate("J3", n, args.seed, gen_kwargs)
    ensembles = {w: load_ensemble(w) for w in args.weights}
    results = {}
    print(f"{n} exams per cohort; device {table1.device_description()}", flush=True)
    print("| ensemble | test set | C-index | accuracy | lesion sens / PPV / F1 | single C-index (mean) |")
    print("|---|---|---|---|---|---|")
    for name, draw in draws.items():
        t0 = time.perf_counter()
        exams = list(draw())
        print(f"({name}: {len(exams)} exams generated in {time.perf_counter() - t0:.0f} s)", flush=True)
        for w, ens in ensembles.items():
            for localise, dense, adapt, look in ((lo, d, a, k)
                                                 for lo in ((True, False) if args.both_localise else (True,))
                                                 for d in lines for a in adapts for k in looks):
                table1.LOCALISE, table1.DENSE_VOTE, table1.ADAPT_NOISE = localise, dense, adapt
                table1.DENSE_LOOK = look
                ev = table1.evaluate(ens, exams)
                tag = name if localise else f"{name}, no localisation"
                if args.dense_vote is not None:
                    tag += f", {dense_vote_tag(dense)}"
                if args.dense_look is not None:
                    tag += f", {dense_look_tag(look)}"
                if args.adapt_noise != "on":
                    tag += f", noise adaptation {'on' if adapt else 'off'}"
                results[f"{w}::{tag}"] = ev
                les = ev["lesions"]
                print(f"| {w} | {tag} | {ev['ensemble_c_index']:.3f} | {ev['ensemble_accuracy']:.3f} | "
                      f"{les['sensitivity']:.3f} / {les['ppv']:.3f} / {les['f1']:.3f} | {ev['single_c_mean']:.3f} |",
                      flush=True)
                pl = ev["planted_lesions"]
                print(f"({w}, {tag}: planted lesions found {pl['found']} of {pl['planted']}, {pl['sensitivity']:.3f})",
                      flush=True)
                kept = ev["noise_level_kept_lesions"]
                print(f"| {w}, noise-level objects kept | {tag} | {ev['noise_level_kept_c_index']:.3f} | "
                      f"{ev['noise_level_kept_accuracy']:.3f} | {kept['sensitivity']:.3f} / {kept['ppv']:.3f} / "
                      f"{kept['f1']:.3f} | - |", flush=True)
                if "exam_wide_noise_lesions" in ev:
                    wide = ev["exam_wide_noise_lesions"]
                    print(f"| {w}, noise level read exam-wide | {tag} | {ev['exam_wide_noise_c_index']:.3f} | "
                          f"{ev['exam_wide_noise_accuracy']:.3f} | {wide['sensitivity']:.3f} / {wide['ppv']:.3f} / "
                          f"{wide['f1']:.3f} | - |", flush=True)
                ev["noise_warning"] = noise_split(exams, ev, ens.config.trained_noise_hu)
                if args.ablate and name == "unseen" and localise:
                    wrong = [int(i) for i in np.flatnonzero(~category_right(ev))]
                    ev["ablation"] = ablate(ens, n, args.seed, args.matrix, wrong, noise_hu, profile)
                    print(f"{w}: of {len(wrong)} unseen exams in the wrong category, right after putting back: "
                          + ", ".join(f"{k} {v}" for k, v in ev["ablation"]["right_after_putting_back"].items()),
                          flush=True)
        del exams
    for key, ev in results.items():
        ns = ev["noise_warning"]
        print(f"{key}: the pipeline's noise warning fires on {ns['warned']} of {ns['exams']} exams; category "
              f"accuracy {ns['accuracy_warned']} on those, {ns['accuracy_not_warned']} on the others")
    out = Path(args.workdir)
    out.mkdir(parents=True, exist_ok=True)
    name = "unseen_results.json" if args.sharpness is None else f"unseen_results_sharpness{args.sharpness:g}.json"
    (out / name).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
