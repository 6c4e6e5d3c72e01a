"""Reproduce Table 1 of Gogin et al. 2021 on the synthetic cohorts.

Training sets J1, J1+J2 and J1+J2+AD (a validation share held out of each), five networks each, tested
on J3: the single networks' C-index and category accuracy (mean +/- SD), the ensemble's, the confusion
matrix of the final ensemble (PNG, Figure 4's form) and orCaScore-style lesion sensitivity, PPV and F1.

The paper's configuration (cohorts at full size, the paper's U-Net, long training) is the default and
runs unchanged on a GPU:

    python experiments/table1.py

Flags scale it down for a CPU (the run of experiments/RESULTS.md, 40 minutes per training set on 2 cores):

    python experiments/table1.py --scale 0.25 --test-scale 1.0 --model small --steps 1400 --eval-every 80 \
        --lr 2e-3 --batch 2 --patch 32,48,48 --val 8 --matrix 256 --sets J1+J2+AD

Every batch pairs patches centred on calcium with patches centred on look-alike calcium (hard negatives:
--positive, --hard), with a Dice loss per patch.

Work files (pair caches, checkpoints, ensembles, results.json) go to --workdir; a rerun resumes from
them. Figures are printed as a Markdown table and written to <workdir>/results.json; the confusion PNGs go to
--out, by default the work folder too (the published ones: --out experiments).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

from agatax.ensemble import load_ensemble, save_ensemble  # noqa: E402
from agatax.model import UNetConfig  # noqa: E402
from agatax.preprocess import ENHANCE_BOX_MM  # noqa: E402
from agatax.quality import TRAINED_NOISE_HU  # noqa: E402
from agatax.cohort import train_cohort  # noqa: E402
from agatax.train import TrainConfig, TrainingSet, prepare_pairs  # noqa: E402

PRESET_SIZES = {"J1": 100, "J2": 322, "AD": 361, "J3": 98}
# The paper's final ensemble (trained on J1+J2+AD, tested on J3, 98 real exams); the per-set rows of its
# Table 1 are not reproduced here.
PAPER = {"J1+J2+AD": {"ens_c": 0.951, "ens_acc": 0.857}}
MODELS = {
    "tiny": dict(levels=2, base_filters=4),
    "small": dict(levels=3, base_filters=8),
    "paper": dict(levels=4, base_filters=16),
}
CATS = "ABCDE"


def _cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def device_description() -> str:
    dev = jax.devices()[0]
    if dev.platform == "cpu":
        import os

        return f"CPU, {os.cpu_count()} cores, {_cpu_name()}"
    return f"{dev.platform.upper()}: {dev.device_kind}"


# a training-only set of N exams of one category, e.g. "E40" (J1+J2+AD+E40: more large and dense plaques
# than the paper-shaped sets hold); its size ignores --scale
EXTRA_SET = re.compile(r"^([A-E])([1-9][0-9]*)$")


def cohort_size(name: str, scale: float) -> int:
    extra = EXTRA_SET.match(name)
    if extra:
        return int(extra.group(2))
    return max(4, int(round(PRESET_SIZES[name] * scale)))


_DRAW_SALTS = {"noise_sigma_hu": 5150, "noise_streak": 7331, "tissue_texture": 9173}


def generate(name: str, n: int, seed: int, gen_kwargs: dict, noise_range: tuple[float, float] | None = None,
             streak_range: tuple[float, float] | None = None, texture_range: tuple[float, float] | None = None):
    """Exams 0..n-1 of preset ``name``; ``noise_range`` (low, high) HU: each exam's noise SD drawn uniformly
    from it (seeded by cohort, seed and index) instead of the generator's 10-40 HU; nothing else changes (the
    generator draws its own noise level either way, so the anatomy and calcium stay the same).
    ``streak_range`` (low, high): each exam's ``noise_streak`` (share of the noise in horizontal streaks) drawn
    uniformly from it the same way, instead of none; ``texture_range``: its ``tissue_texture`` (septa, small
    vessels and drift in fat and soft tissue) likewise."""
    from agatax.synthetic import exam_seed, generate_exam, preset_exam

    ranges = {"noise_sigma_hu": noise_range, "noise_streak": streak_range, "tissue_texture": texture_range}
    extra = EXTRA_SET.match(name)
    for i in range(n):
        kw = dict(gen_kwargs)
        for key, bounds in ranges.items():
            if bounds is not None:
                salt = ord(extra.group(1)) if extra else PRESET_SIZES[name]
                rng = np.random.default_rng([seed, i, salt, _DRAW_SALTS[key]])
                kw[key] = float(rng.uniform(*bounds))
        if extra:  # exam i of "E40" is exam i of "E60": the set grows, its first exams stay
            yield generate_exam(exam_seed(seed, i, "extra-" + extra.group(1)), target_category=extra.group(1), **kw)
        else:
            yield preset_exam(name, i, seed, **kw)


def cohort_pairs(name: str, n: int, seed: int, gen_kwargs: dict, workdir: Path, log,
                 noise_range: tuple[float, float] | None, box_mm: float,
                 streak_range: tuple[float, float] | None = None, dense_gain: float = 0.0,
                 texture_range: tuple[float, float] | None = None) -> TrainingSet:
    tag = "-".join(f"{k}{v}" for k, v in sorted(gen_kwargs.items()) if k != "lookalike_rates")
    for kind, rate in sorted(gen_kwargs.get("lookalike_rates", {}).items()):
        tag += ("-" if tag else "") + f"{kind}{rate:g}"
    for word, bounds in (("noise", noise_range), ("streak", streak_range), ("texture", texture_range)):
        if bounds is not None:
            tag += ("-" if tag else "") + f"{word}{bounds[0]:g}to{bounds[1]:g}"
    if box_mm:
        tag += ("-" if tag else "") + f"box{box_mm:g}"
    if dense_gain:
        tag += ("-" if tag else "") + f"dense{dense_gain:g}"
    # "hn": the cache holds hard negatives (older caches without them are not reused); "g3": 5 mm exams on the
    # 3 mm network grid (older caches made them on a 5 mm grid); "gen": the generator's version
    from agatax.synthetic import GENERATOR_VERSION

    cache = workdir / f"pairs_{name}_n{n}_s{seed}{('_' + tag) if tag else ''}_hn_g3_gen{GENERATOR_VERSION}.npz"
    t0 = time.perf_counter()
    data = prepare_pairs(lambda: generate(name, n, seed, gen_kwargs, noise_range, streak_range, texture_range),
                         cache=cache,
                         names=[f"{name}-{i:04d}" for i in range(n)], log=log, box_mm=box_mm,
                         dense_gain=dense_gain)
    log(f"{name}: {len(data)} pairs ready ({time.perf_counter() - t0:.1f} s, cache {cache.name})")
    return data


def split_validation(data: TrainingSet, n_val: int, seed: int) -> tuple[TrainingSet, TrainingSet]:
    """Hold out ``n_val`` exams (a fixed random choice) as the validation set (the draw of
    ``agatax.cohort.train_cohort``)."""
    from agatax.cohort import split_validation as split

    train, val = split(len(data), int(n_val), seed, calcium=[bool(np.any(t)) for t in data.targets])
    return data.subset(train), data.subset(val)


def _segment_all(ensemble, volume, multiple):
    """Per-member masks and the ensemble's mask on the exam's grid, from one pass of every member.

    The method of agatax.pipeline: preprocess (an exam noisier than the training smoothed for the networks,
    agatax.quality.input_smoothing_mm) -> member logits -> back to the exam's grid -> HU >= 130 inside
    the chest region (agatax.localise_chest) -> each object kept whole by its mean vote
    (agatax.ensemble.object_majority; a member alone: by the share of its voxels it marks).
    Returns (member masks bool (members, z, y, x), ensemble mask bool (z, y, x), input smoothing sigma mm).
    """
    import jax.numpy as jnp

    from agatax.ensemble import object_majority
    from agatax.localise import localise_chest
    from agatax.preprocess import preprocess, restore_grid

    smooth = 0.0
    if ADAPT_NOISE:  # as agatax.run_pipeline: an exam noisier than the training is shown to the networks smoothed
        from agatax.quality import input_smoothing_mm

        smooth = input_smoothing_mm(volume.hu, volume.spacing, ensemble.config.trained_noise_hu)[0]
    bright = np.asarray(volume.hu) >= 130.0
    chest = localise_chest(volume.hu, volume.spacing) if LOCALISE else None  # as agatax.run_pipeline
    if chest is not None and chest.found:
        bright &= chest.region

    def look(hu):
        x = preprocess(hu, volume.spacing, multiple=multiple, smooth_mm=smooth,
                       **ensemble.config.input_options)[None, ..., None]
        logits = np.asarray(_logits_fn(ensemble)(ensemble, x))[:, 0, ..., 0]  # (members, Z, Y, X)
        return np.stack([np.asarray(restore_grid(jnp.asarray(c > 0), volume.shape, volume.spacing)) & bright
                         for c in logits])

    singles = look(volume.hu)
    votes = singles.sum(0, dtype=np.int32)
    if DENSE_LOOK is not None:  # as agatax.run_pipeline's dense_look: the larger vote of the two looks
        capped = look(np.minimum(np.asarray(volume.hu), np.float32(DENSE_LOOK)))
        votes = np.maximum(votes, capped.sum(0, dtype=np.int32))
        singles = singles | capped
    return (np.stack([object_majority(s, bright, 1) for s in singles]),
            object_majority(votes, bright, ensemble.members, hu=np.asarray(volume.hu), dense_vote=DENSE_VOTE), smooth)


_LOGITS = {}
LOCALISE = True  # discard calcium outside the chest region, as agatax.run_pipeline does by default
METAL_HU = 2000.0  # agatax.pipeline.METAL_HU; None keeps metal (the evaluations before 2026-12-02)
NOISE_SNR = 5.0  # agatax.pipeline.NOISE_SNR; None keeps noise-level objects (the evaluations before 2026-12-04)
ADAPT_NOISE = True  # agatax.run_pipeline's adapt_noise (False: the evaluations before 2026-12-05, 25th session)
DENSE_VOTE = 0.4  # agatax.pipeline.DENSE_VOTE: the line for objects peaking at 1000-1500 HU (None: the evaluations
# before 2026-12-05)
DENSE_LOOK = None  # agatax.pipeline.DENSE_LOOK: the cap (HU) of the networks' second look (None: one look)


def _logits_fn(ensemble):
    from agatax.ensemble import ensemble_logits

    key = ensemble.config
    if key not in _LOGITS:
        _LOGITS[key] = jax.jit(lambda e, x: ensemble_logits(e, x))
    return _LOGITS[key]


def planted_found(pred_mask, exam) -> tuple[int, int]:
    """(found, planted): how many of ``exam.lesions`` the predicted mask (z, y, x) bool touches, a lesion being
    the 26-connected components of ``exam.mask > 0`` that hold its ``points_zyx`` (two plaques that touch count
    as found together). Unlike the orCaScore count (``agatax.lesion_detection``: every 6-connected piece above
    130 HU a lesion), a plaque cut by the threshold into pieces counts once, as a reader counts it."""
    from scipy import ndimage

    lab = ndimage.label(np.asarray(exam.mask) > 0, structure=np.ones((3, 3, 3), bool))[0]
    touched = np.zeros(int(lab.max()) + 1, bool)
    touched[lab[np.asarray(pred_mask, bool)]] = True
    touched[0] = False
    found = sum(bool(touched[[lab[tuple(p)] for p in les["points_zyx"]]].any()) for les in exam.lesions)
    return found, len(exam.lesions)


def evaluate(ensemble, exams) -> dict:
    """Score every test exam with each member alone and with the majority vote of all members, both through
    the metal, in-air and noise-level rules as agatax.run_pipeline (single members through them since
    2026-12-04, eighteenth session; the ensemble's mask is also scored with the noise-level objects kept and
    with the noise read exam-wide)."""
    from agatax.evaluate import evaluate_masks
    from agatax.pipeline import exclude_in_air, exclude_metal, exclude_noise_level
    from agatax.quality import image_noise_hu
    from agatax.scoring import c_index, category_accuracy, compute_scores, confusion_matrix, risk_category

    multiple = ensemble.config.multiple  # as agatax.pipeline pads
    ref_score, ref_cat = [], []
    ens_score, ens_cat = [], []
    single_score = [[] for _ in range(ensemble.members)]
    single_cat = [[] for _ in range(ensemble.members)]
    detection_pairs = []  # (predicted mask, true mask, volume) for pooled lesion detection
    kept_specks, kept_pairs = [], []  # the ensemble's scores and masks with the noise-level objects kept
    wide_scores, wide_pairs = [], []  # ... with the noise-level rule read against the exam-wide noise SD
    t_exam = []
    planted = np.zeros(2, int)  # planted lesions (found, all): planted_found
    smoothing = []  # the input smoothing (mm) each exam was shown to the networks through (0: none)
    for exam in exams:
        vol = exam.volume
        ref_score.append(float(exam.agatston))
        ref_cat.append(exam.category)
        t0 = time.perf_counter()
        singles, mask, smooth = _segment_all(ensemble, vol, multiple)
        smoothing.append(smooth)
        if METAL_HU is not None:  # as agatax.run_pipeline: objects reaching metal density are left out
            mask = exclude_metal(vol.hu, mask, mask, vol.spacing, metal_hu=METAL_HU)[0]
            singles = np.stack([exclude_metal(vol.hu, s, s, vol.spacing, metal_hu=METAL_HU)[0] for s in singles])
        # as agatax.run_pipeline: objects in air, then objects at the noise level, left out (the ensemble's mask)
        mask = exclude_in_air(vol.hu, mask, mask, vol.spacing)[0]
        noise = image_noise_hu(vol.hu, vol.spacing)
        kept_specks.append(compute_scores(vol.hu, mask, vol.spacing).agatston)
        kept_pairs.append((mask, exam.mask > 0, vol))
        if NOISE_SNR is not None:
            wide = exclude_noise_level(vol.hu, mask, mask, vol.spacing, noise, snr=NOISE_SNR, local=False)[0]
            wide_scores.append(compute_scores(vol.hu, wide, vol.spacing).agatston)
            wide_pairs.append((wide, exam.mask > 0, vol))
            mask = exclude_noise_level(vol.hu, mask, mask, vol.spacing, noise, snr=NOISE_SNR, local=True)[0]
        res = compute_scores(vol.hu, mask, vol.spacing)
        t_exam.append(time.perf_counter() - t0)
        ens_score.append(res.agatston)
        ens_cat.append(res.category)
        detection_pairs.append((mask, exam.mask > 0, vol))
        planted += planted_found(mask, exam)
        for k in range(ensemble.members):  # each member alone through the same object rules
            single = exclude_in_air(vol.hu, singles[k], singles[k], vol.spacing)[0]
            if NOISE_SNR is not None:
                single = exclude_noise_level(vol.hu, single, single, vol.spacing, noise, snr=NOISE_SNR, local=True)[0]
            r = compute_scores(vol.hu, single, vol.spacing)
            single_score[k].append(r.agatston)
            single_cat[k].append(r.category)
    lesions = evaluate_masks(detection_pairs)
    s_c = [float(c_index(c, ref_cat)) for c in single_cat]
    s_a = [float(category_accuracy(c, ref_cat)) for c in single_cat]
    wide = {}
    if wide_scores:
        wide_cats = [risk_category(v) for v in wide_scores]
        wide = {"ensemble_scores_exam_wide_noise": wide_scores, "exam_wide_noise_lesions": evaluate_masks(wide_pairs),
                "exam_wide_noise_c_index": float(c_index(wide_cats, ref_cat)),
                "exam_wide_noise_accuracy": float(category_accuracy(wide_cats, ref_cat))}
    return {
        "n_test": len(ref_score),
        "single_c_index": s_c,
        "single_accuracy": s_a,
        "single_c_mean": float(np.mean(s_c)), "single_c_sd": float(np.std(s_c, ddof=1)) if len(s_c) > 1 else 0.0,
        "single_acc_mean": float(np.mean(s_a)), "single_acc_sd": float(np.std(s_a, ddof=1)) if len(s_a) > 1 else 0.0,
        "ensemble_c_index": float(c_index(ens_cat, ref_cat)),
        "ensemble_accuracy": float(category_accuracy(ens_cat, ref_cat)),
        "confusion": np.asarray(confusion_matrix(ens_cat, ref_cat)).tolist(),
        "lesions": lesions,
        "planted_lesions": {"found": int(planted[0]), "planted": int(planted[1]),
                            "sensitivity": float(planted[0] / planted[1]) if planted[1] else float("nan")},
        "seconds_per_exam_incl_scoring": float(np.median(t_exam)),
        "reference_scores": ref_score,
        "ensemble_scores": ens_score,
        "input_smoothing_mm": smoothing,
        "ensemble_scores_noise_level_kept": kept_specks,
        "noise_level_kept_lesions": evaluate_masks(kept_pairs),
        "noise_level_kept_c_index": float(c_index([risk_category(v) for v in kept_specks], ref_cat)),
        "noise_level_kept_accuracy": float(category_accuracy([risk_category(v) for v in kept_specks], ref_cat)),
        **wide,
    }


def plot_confusion(conf, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conf = np.asarray(conf)
    fig, ax = plt.subplots(figsize=(4.6, 4.2), dpi=120)
    ax.imshow(conf, cmap="Blues")
    for i in range(5):
        for j in range(5):
            ax.text(j, i, str(conf[i, j]), ha="center", va="center",
                    color="white" if conf[i, j] > conf.max() / 2 else "black")
    ax.set_xticks(range(5), list(CATS))
    ax.set_yticks(range(5), list(CATS))
    ax.set_xlabel("predicted category")
    ax.set_ylabel("reference category")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def figure_dir(args) -> Path:
    """Where the confusion PNGs go: --out, else the work folder (never the published figures unasked)."""
    return Path(args.out if args.out is not None else args.workdir)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="J1,J1+J2,J1+J2+AD",
                    help="training sets, comma separated; a part such as E40 adds 40 exams of category E (any of A-E; "
                         "not scaled by --scale)")
    ap.add_argument("--scale", type=float, default=1.0, help="cohort size factor (1 = the paper's sizes)")
    ap.add_argument("--test-scale", type=float, default=None, help="J3 size factor (default: --scale)")
    ap.add_argument("--model", choices=sorted(MODELS), default="paper")
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--patch", default="32,64,64", help="patch z,y,x in coarse voxels")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--schedule", choices=["constant", "cosine"], default="constant",
                    help="learning-rate schedule (cosine: decays to 5 %% of --lr over --steps)")
    ap.add_argument("--clip", type=float, default=1.0, help="gradient global-norm clip (0: none)")
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--bce", type=float, default=0.0, help="weight of an added BCE term (0: Dice only)")
    ap.add_argument("--positive", type=float, default=0.5, help="share of patches centred on calcium")
    ap.add_argument("--hard", type=float, default=0.5,
                    help="share of patches centred on look-alike non-coronary calcium (valves, annulus, aortic "
                         "wall); with --batch 2 and --positive 0.5 each batch pairs one of each")
    ap.add_argument("--pooled-dice", action="store_true",
                    help="one Dice over the whole batch instead of the mean of per-patch Dice losses")
    ap.add_argument("--per-object", type=int, default=0,
                    help="centre patches on at most this many voxels of each object (TrainConfig.per_object; 0: any voxel)")
    ap.add_argument("--dense-per-object", type=int, default=0,
                    help="and on this many of each calcified object reaching 800 HU on the network's grid "
                         "(TrainConfig.dense_per_object; 0: as any object)")
    ap.add_argument("--dense-hard-per-object", type=int, default=0,
                    help="and on this many of each look-alike object reaching 800 HU (metal, dense valve or "
                         "aortic calcium; TrainConfig.dense_hard_per_object; 0: as any object)")
    ap.add_argument("--init", default=None,
                    help="fine-tune from this ensemble file (or 'default': the shipped one) instead of fresh networks")
    ap.add_argument("--kernel", type=float, default=0.0, help="SD of the kernel blur/sharpen augmentation")
    ap.add_argument("--border-cut", type=float, default=0.0, help="share of patches cut by a field-of-view edge")
    ap.add_argument("--end-cut", type=float, default=0.0,
                    help="share of patches cut by a scan's end (TrainConfig.end_cut)")
    ap.add_argument("--rotate", type=float, default=0.0,
                    help="geometric augmentation: rotation of each patch up to this many degrees about z "
                         "(a third of it about y and x)")
    ap.add_argument("--tilt", type=float, default=None,
                    help="and the rotation's limit about y and x (degrees; default a third of --rotate)")
    ap.add_argument("--scale-aug", type=float, default=0.0, help="and an isotropic scale in [1 - r, 1 + r]")
    ap.add_argument("--elastic", type=float, default=0.0, help="and a smooth displacement of SD this many voxels")
    ap.add_argument("--train-noise", default=None,
                    help="LOW,HIGH: draw the training exams' noise SD (HU) from this range instead of the "
                    "generator's 10-40 (J3 keeps the generator's)")
    ap.add_argument("--train-streak", default=None,
                    help="LOW,HIGH: draw each training exam's share of noise in horizontal streaks (generate_exam's "
                    "noise_streak; the real phantom: 0.3) from this range instead of none (J3 keeps none)")
    ap.add_argument("--train-texture", default=None,
                    help="LOW,HIGH: draw each training exam's tissue_texture (septa, small vessels and drift in fat "
                    "and soft tissue, 0-1) from this range instead of none (J3 keeps none)")
    ap.add_argument("--train-tilt", type=float, default=None,
                    help="the training exams' heart_tilt_spread (the heart's long axis tilted below the axial plane "
                         "as at this spread, its turn within the plane as drawn); J3 keeps the generator's")
    ap.add_argument("--box-mm", type=float, default=ENHANCE_BOX_MM,
                    help="the pre-processing's enhancement box (mm) of fresh networks (UNetConfig.input_box_mm; "
                    "0: the fine voxels as they are); a fine-tune keeps its starting networks' box")
    ap.add_argument("--dense-gain", type=float, default=None,
                    help="the input above 800 HU rises this many times as steeply up to 2000 HU "
                         "(UNetConfig.input_dense_gain; default: 0 for fresh networks, a fine-tune's start's)")
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--collapse-retries", type=int, default=2,
                    help="train a collapsed network again up to N times with another seed (train_ensemble)")
    ap.add_argument("--val", type=int, default=20, help="validation exams held out (paper: 20)")
    ap.add_argument("--matrix", type=int, default=None, help="synthetic in-plane matrix (default: generator's)")
    ap.add_argument("--train-lookalikes", default=None,
                    help="KIND=P,...: in the training cohorts only, each exam has this look-alike with probability "
                         "P (generate_exam's lookalike_rates; e.g. pericardium=0.5); J3 keeps the generator's rates")
    ap.add_argument("--train-dense-plaques", type=float, default=None,
                    help="P: in the training cohorts only, each exam's largest plaque is planned at 900-1400 HU with "
                         "probability P (generate_exam's dense_plaque_rate; long in D-E exams); J3 keeps the generator's")
    ap.add_argument("--train-abdomen", action="store_true",
                    help="training exams show the upper abdomen (generate_exam's abdomen=True: the stomach's and "
                         "colon's gas, the splenic artery; chest exams reach further down); J3 does not")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=str(ROOT / "experiments" / "_table1_work"))
    ap.add_argument("--out", default=None,
                    help="where the confusion PNGs go (default: --workdir; the published figures: experiments)")
    ap.add_argument("--save-default", default=None, help="also save the last ensemble here (float16)")
    return ap


def main(argv=None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    parts = {p for s in sets for p in s.split("+")}
    unknown = sorted(p for p in parts if p == "J3" or (p not in PRESET_SIZES and not EXTRA_SET.match(p)))
    if unknown:
        ap.error(f"--sets: unknown training set(s) {unknown}; use J1, J2, AD and extra sets of one category such as "
                 f"E40 (J3 is the test set)")

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    logfile = open(workdir / "log.txt", "a")

    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        logfile.write(line + "\n")
        logfile.flush()

    gen_kwargs = {} if args.matrix is None else {"matrix": args.matrix}
    noise_range = None if args.train_noise is None else tuple(float(v) for v in args.train_noise.split(","))
    streak_range = None if args.train_streak is None else tuple(float(v) for v in args.train_streak.split(","))
    texture_range = None if args.train_texture is None else tuple(float(v) for v in args.train_texture.split(","))
    model_config = UNetConfig(**MODELS[args.model], input_box_mm=args.box_mm, input_dense_gain=args.dense_gain or 0.0)
    from agatax.cohort import resolve_init

    start = resolve_init(args.init)  # loaded once, handed to train_cohort below
    if start is not None:  # a fine-tune trains on the input its starting networks know
        if args.dense_gain is not None:  # the networks learn a new input above 800 HU
            start = start.replace(config=dataclasses.replace(start.config, input_dense_gain=args.dense_gain))
        model_config = dataclasses.replace(model_config, input_box_mm=start.config.input_box_mm,
                                           input_dense_gain=start.config.input_dense_gain)
    patch = tuple(int(p) for p in args.patch.split(","))
    config = TrainConfig(learning_rate=args.lr, lr_schedule=args.schedule, steps=args.steps,
                         batch_size=args.batch, patch_zyx=patch,
                         eval_every=args.eval_every, log_every=max(args.eval_every // 4, 1), seed=args.seed,
                         bce_weight=args.bce, clip_norm=args.clip,
                         positive_fraction=args.positive, hard_negative_fraction=args.hard,
                         dice_pooled=args.pooled_dice, kernel_std=args.kernel, border_cut=args.border_cut,
                         end_cut=args.end_cut,
                         per_object=args.per_object, dense_per_object=args.dense_per_object,
                         dense_hard_per_object=args.dense_hard_per_object,
                         rotate_deg=args.rotate, tilt_deg=args.tilt, scale_range=args.scale_aug,
                         elastic_voxels=args.elastic)
    log(f"device: {device_description()}; model {args.model} {model_config}; {config}")
    log("command: python experiments/table1.py " + " ".join(argv if argv is not None else sys.argv[1:]))

    needed = sorted(parts, key=lambda p: (list(PRESET_SIZES).index(p) if p in PRESET_SIZES else len(PRESET_SIZES), p))
    pairs = {}
    train_kwargs = dict(gen_kwargs)
    if args.train_lookalikes:
        from agatax.synthetic import parse_lookalike_rates

        train_kwargs["lookalike_rates"] = parse_lookalike_rates(args.train_lookalikes)
    if args.train_abdomen:
        train_kwargs["abdomen"] = True
    if args.train_tilt is not None:
        train_kwargs["heart_tilt_spread"] = args.train_tilt
    if args.train_dense_plaques is not None:
        train_kwargs["dense_plaque_rate"] = args.train_dense_plaques
    for name in needed:
        pairs[name] = cohort_pairs(name, cohort_size(name, args.scale), args.seed, train_kwargs, workdir, log,
                                   noise_range, model_config.input_box_mm, streak_range, model_config.input_dense_gain,
                                   texture_range)

    test_scale = args.scale if args.test_scale is None else args.test_scale
    n_test = cohort_size("J3", test_scale)
    t0 = time.perf_counter()
    test_exams = list(generate("J3", n_test, args.seed, gen_kwargs))
    log(f"J3: {n_test} test exams generated ({time.perf_counter() - t0:.1f} s)")

    results = {"device": device_description(), "command": " ".join(sys.argv), "model": args.model,
               "model_config": model_config.to_dict(), "train_config": config.fingerprint_dict() | {"steps": config.steps},
               "sets": {}}
    res_path = workdir / "results.json"
    if res_path.exists():
        results["sets"] = json.loads(res_path.read_text()).get("sets", {})
    ensemble = None
    for s in sets:
        data = pairs[s.split("+")[0]]
        for name in s.split("+")[1:]:
            data = data + pairs[name]
        n_val = min(args.val, max(2, len(data) // 5))
        train, val = split_validation(data, n_val, args.seed)  # the split train_cohort draws below
        ens_path = workdir / f"ensemble_{s.replace('+', '_')}.msgpack"
        t0 = time.perf_counter()
        if ens_path.exists():
            ensemble = load_ensemble(ens_path)
            train_s = results["sets"].get(s, {}).get("train_seconds")
            log(f"{s}: loaded {ens_path.name}")
        else:
            histories: list = []
            log(f"{s}: training {args.members} networks on {len(train)} exams, validating on {len(val)}")
            trained = train_cohort(data, members=args.members, config=config, model_config=model_config,
                                   init=start, validation=n_val, seed=args.seed,
                                   seeds=[args.seed * 100 + k for k in range(args.members)],
                                   checkpoint_dir=workdir / f"ckpt_{s.replace('+', '_')}", log=log,
                                   collapse_retries=args.collapse_retries)
            ensemble, histories = trained.ensemble, trained.histories
            # the networks know the noise the generator drew (a fine-tune: its start's as well); this replaces
            # train_cohort's estimate from the measured noise: the experiment knows what it drew
            drawn = noise_range if noise_range is not None else TRAINED_NOISE_HU  # the generator's 10-40 HU
            known = start.config.trained_noise_hu if start is not None else drawn
            ensemble = ensemble.replace(config=dataclasses.replace(
                ensemble.config, trained_noise_hu=(min(known[0], drawn[0]), max(known[1], drawn[1]))))
            train_s = time.perf_counter() - t0
            save_ensemble(ens_path, ensemble)
            results["sets"].setdefault(s, {})["best_val_dice"] = [
                max((r["val_dice"] for r in h if r["val_dice"] is not None), default=None) for h in histories]
        t0 = time.perf_counter()
        ev = evaluate(ensemble, test_exams)
        log(f"{s}: evaluated on {ev['n_test']} J3 exams ({time.perf_counter() - t0:.1f} s)")
        entry = results["sets"].setdefault(s, {})
        entry.update(ev, train_seconds=train_s, n_train=len(train), n_val=len(val))
        plot_confusion(ev["confusion"], figure_dir(args) / f"confusion_{s.replace('+', '_')}.png",
                       f"ensemble trained on {s} (synthetic), test J3 n={ev['n_test']}\n"
                       f"accuracy {ev['ensemble_accuracy']:.3f}, C-index {ev['ensemble_c_index']:.3f}")
        res_path.write_text(json.dumps(results, indent=1))
        log(f"{s}: single C {ev['single_c_mean']:.3f} +/- {ev['single_c_sd']:.3f}, "
            f"acc {ev['single_acc_mean']:.3f} +/- {ev['single_acc_sd']:.3f}; ensemble C "
            f"{ev['ensemble_c_index']:.3f}, acc {ev['ensemble_accuracy']:.3f}; lesions F1 {ev['lesions']['f1']:.3f}")

    print()
    print("| training set | n train/val | single C-index | single accuracy | ensemble C-index | ensemble accuracy "
          "| lesion sens / PPV / F1 | train time | paper ensemble C / acc |")
    print("|---|---|---|---|---|---|---|---|---|")
    for s in sets:
        e = results["sets"][s]
        p = PAPER.get(s, {})
        les = e["lesions"]
        tt = f"{e['train_seconds'] / 60:.1f} min" if e.get("train_seconds") else "-"
        print(f"| {s} | {e['n_train']}/{e['n_val']} | {e['single_c_mean']:.3f} +/- {e['single_c_sd']:.3f} | "
              f"{e['single_acc_mean']:.3f} +/- {e['single_acc_sd']:.3f} | {e['ensemble_c_index']:.3f} | "
              f"{e['ensemble_accuracy']:.3f} | {les['sensitivity']:.3f} / {les['ppv']:.3f} / {les['f1']:.3f} | "
              f"{tt} | {p.get('ens_c', '-')} / {p.get('ens_acc', '-')} |")
    if args.save_default and ensemble is not None:
        save_ensemble(args.save_default, ensemble, dtype="float16")
        log(f"saved {args.save_default}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
