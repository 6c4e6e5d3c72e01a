"""``agatax train``: train (by default fine-tune the shipped ensemble) on an annotated cohort.

    agatax train DATA... --out ENSEMBLE.msgpack [--members 5] [--steps N] [--init default|none|FILE]
                 [--validation N|FRACTION] [--seed 0] [--device cpu|gpu|auto] [--resume] [--workdir DIR]

DATA: a manifest CSV (path, mask_path[, exam_id, split]), a folder of exams with ``<id>_mask.nii.gz``
beside them, a COCA gated release folder, or an annotated points CSV (exam_id, x, y, z[, units, path,
artery, split]); see ``agatax.cohort``. Every exam is read and checked before any training; the problems
found are all listed and the command exits 2. Checkpoints and the pair cache live in ``--workdir``
(default ``<out>.work/`` beside the output): running the same command again resumes exactly where a
killed or interrupted run stopped. Beside the output: ``<out>.log.jsonl`` (one line per validation of each
member), ``<out>.curves.png`` (loss and validation Dice) and ``<out>.validation.json`` (the validation
exams scored with the new ensemble).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from agatax.batch import duration_text
from agatax.errors import CheckpointError, InputError, ReadError

__all__ = ["add_train_command", "run_train", "parse_validation", "output_paths"]

MODELS = {"tiny": {"levels": 2, "base_filters": 4}, "small": {"levels": 3, "base_filters": 8},
          "paper": {"levels": 4, "base_filters": 16}}


def add_train_command(subparsers) -> None:
    """Register ``agatax train``."""
    p = subparsers.add_parser(
        "train",
        help="train an ensemble on annotated exams (fine-tunes the shipped one by default)",
        description=(
            "DATA: a manifest CSV (path, mask_path, optional exam_id and split = train|val|test), a folder of "
            "exams with <id>_mask.nii.gz beside them, a COCA gated release folder (Gated_release_final), or a "
            "CSV of annotated points (exam_id, x, y, z; optional units = mm|voxel, path, artery, split) made "
            "into masks by agatax.mask_from_points. Every exam is checked before training. The ensemble goes "
            "to --out; use it with agatax score --weights OUT."
        ),
    )
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    p.add_argument("data", nargs="+", metavar="DATA", help="manifest CSV, exam folder, COCA release or points CSV")
    p.add_argument("--out", required=True, metavar="ENSEMBLE", help="the trained ensemble (.msgpack)")
    p.add_argument("--members", type=int, default=5, help="networks in the ensemble (default 5)")
    p.add_argument("--steps", type=int, default=1000, help="training steps per network (default 1000)")
    p.add_argument("--init", default="default", metavar="default|none|FILE",
                   help="start from the shipped ensemble (default: fine-tuning, the sensible start for a small "
                   "cohort), from fresh networks (none), or from an ensemble file")
    p.add_argument("--model", choices=sorted(MODELS), default=None,
                   help="network size with --init none (default paper); fine-tuning keeps the start's")
    p.add_argument("--validation", default="0.2", metavar="N|FRACTION",
                   help="validation exams (count) or share (0-1) held out to keep each network's best step "
                   "(default 0.2; 0: none, the last step is kept); a manifest's split column overrides it")
    p.add_argument("--seed", type=int, default=0, help="seed of the networks, the data stream and the "
                   "validation draw (default 0)")
    p.add_argument("--device", choices=("cpu", "gpu", "auto"), default="auto", help="where to train")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoints "
                   "(refused when there are none; a plain re-run of the same command resumes too)")
    p.add_argument("--restart", action="store_true", help="discard the checkpoints in --workdir and start over")
    p.add_argument("--workdir", metavar="DIR", help="checkpoints and the data cache (default <out>.work/)")
    p.add_argument("--batch", type=int, default=4, help="patches per step (default 4)")
    p.add_argument("--patch", default="32,48,48", metavar="Z,Y,X", help="patch size in network voxels (default "
                   "32,48,48; multiples of 2**(levels-1))")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 3e-4 fine-tuning, 1e-3 fresh)")
    p.add_argument("--eval-every", type=int, default=None, help="validate every N steps (default steps / 20)")
    p.add_argument("--loss", choices=LOSSES, default=None,
                   help="batch-dice: one Dice over each step's patches (default with --init none: fresh networks "
                   "trained with per-patch Dice often learn to call nothing calcium); patch-dice: the mean of "
                   "per-patch Dice losses (default fine-tuning: the shipped ensemble's loss)")
    p.add_argument("--augment", choices=tuple(AUGMENT), default="intensity",
                   help="intensity: gain, offset and noise per patch (default); scanner: + reconstruction-kernel "
                   "blur/sharpening and field-of-view cuts (as the shipped ensemble was trained); all: + rotation "
                   "up to 20 degrees, scale +/- 15 %% and smooth elastic bending")
    p.add_argument("--collapse-retries", type=int, default=2, help="retrain a network whose validation Dice "
                   "stays under 0.05 (it calls nothing calcium) up to N times with another seed, abandoning it "
                   "after a quarter of its steps (default 2)")
    p.add_argument("--thin-slices", choices=("slab", "native"), default="slab",
                   help="train thin-slice exams on 3 mm slabs (default, as they are scored) or natively")
    p.add_argument("--no-png", action="store_true", help="no curves picture")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    for flag in ("--allow-small", "--allow-not-hu", "--allow-gaps", "--allow-uneven"):
        p.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(run=run_train)


#: ``--loss`` -> TrainConfig.dice_pooled.
LOSSES = ("batch-dice", "patch-dice")

#: ``--augment`` presets -> TrainConfig fields (on top of its intensity defaults).
AUGMENT = {
    "intensity": {},
    "scanner": {"kernel_std": 0.25, "border_cut": 0.2},
    "all": {"kernel_std": 0.25, "border_cut": 0.2, "rotate_deg": 20.0, "scale_range": 0.15, "elastic_voxels": 1.0},
}


def parse_validation(text: str) -> int | float:
    """``--validation``: a count (``5``) or a share (``0.2``)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (value >= 1 and not value.is_integer()):
        raise InputError(f"--validation must be a count (0, 1, 2, ...) or a share between 0 and 1; got {text!r}",
                         code="BAD_ARGUMENT")
    return int(value) if value >= 1 or value == 0 else value


def output_paths(out: str | os.PathLike) -> dict[str, Path]:
    """The files written beside ``out``: log (JSON lines), curves (PNG), validation (JSON), workdir."""
    out = Path(out)
    stem = out.with_suffix("") if out.suffix else out
    return {"out": out, "log": Path(f"{stem}.log.jsonl"), "curves": Path(f"{stem}.curves.png"),
            "validation": Path(f"{stem}.validation.json"), "workdir": Path(f"{stem}.work")}


def _check_arguments(args) -> dict[str, Any]:
    for name, low in (("members", 1), ("steps", 1), ("batch", 1), ("collapse_retries", 0)):
        value = getattr(args, name)
        if value < low:
            raise InputError(f"--{name.replace('_', '-')} must be {low} or more; got {value}", code="BAD_ARGUMENT")
    if args.eval_every is not None and args.eval_every < 1:
        raise InputError(f"--eval-every must be 1 or more; got {args.eval_every}", code="BAD_ARGUMENT")
    if args.lr is not None and not (args.lr > 0 and math.isfinite(args.lr)):
        raise InputError(f"--lr must be above 0; got {args.lr}", code="BAD_ARGUMENT")
    try:
        patch = tuple(int(v) for v in args.patch.split(","))
    except ValueError:
        patch = ()
    if len(patch) != 3 or min(patch) < 1:
        raise InputError(f"--patch must be three sizes Z,Y,X; got {args.patch!r}", code="BAD_ARGUMENT")
    if args.resume and args.restart:
        raise InputError("--resume and --restart exclude each other", code="BAD_ARGUMENT")
    init = args.init
    if init.lower() not in ("default", "none") and not Path(init).is_file():
        raise ReadError(f"--init {init}: no such ensemble file (or say default or none)", code="NOT_FOUND",
                        paths=[init])
    if args.model is not None and init.lower() != "none":
        raise InputError("--model chooses the size of fresh networks: use it with --init none (fine-tuning keeps "
                         "the starting ensemble's architecture)", code="BAD_ARGUMENT")
    paths = output_paths(args.out)
    out = paths["out"]
    if out.is_dir():
        raise InputError(f"--out {out} is a folder; give a file name such as {out / 'ensemble.msgpack'}",
                         code="OUTPUT_NOT_WRITABLE")
    workdir = Path(args.workdir) if args.workdir else paths["workdir"]
    from agatax.cli import _writable_folder  # the score command's check: creates the folder, probes a write

    _writable_folder(out.parent if str(out.parent) else Path("."), f"--out {out}")
    _writable_folder(workdir, f"--workdir {workdir}")
    return {"validation": parse_validation(args.validation), "patch": patch, "workdir": workdir, "paths": paths}


class _Progress:
    """Step, loss, validation Dice, time per step and time left: a tqdm bar on a terminal, else a plain
    line at each validation."""

    def __init__(self, members: int, steps: int, quiet: bool):
        self.members, self.steps, self.quiet = members, steps, quiet
        self.total = members * steps
        self.bar = None
        self.t0 = time.perf_counter()
        self.done_here = 0
        self.last: dict[str, Any] = {}
        self.offset = 0
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, unit="step", file=sys.stderr, dynamic_ncols=True, mininterval=0.5,
                            desc="training")

    def write(self, text: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def __call__(self, member: int, step: int, info: dict) -> None:
        position = member * self.steps + step
        if info.get("resumed"):
            self.offset = position
            self.t0 = time.perf_counter()
            self.write(f"member {member + 1}/{self.members}: resumed at step {step}/{self.steps}")
            if self.bar is not None:
                self.bar.n = position
                self.bar.refresh()
            return
        if self.done_here and position <= self.offset + self.done_here:  # a collapsed member started again
            self.offset, self.t0 = position - 1, time.perf_counter()
        self.done_here = position - self.offset
        self.last.update({k: v for k, v in info.items() if v is not None})
        per_step = (time.perf_counter() - self.t0) / max(self.done_here, 1)
        left = per_step * max(self.total - position, 0)
        if self.bar is not None:
            self.bar.n = position
            post = {"member": f"{member + 1}/{self.members}"}
            if "loss" in self.last:
                post["loss"] = f"{self.last['loss']:.4f}"
            if "val_dice" in self.last:
                post["val Dice"] = f"{self.last['val_dice']:.3f}"
            post["s/step"] = f"{per_step:.2f}"
            self.bar.set_postfix(post, refresh=False)
            self.bar.update(0)
        elif "best_dice" in info and not self.quiet:
            dice = "" if info.get("val_dice") is None else f" val Dice {info['val_dice']:.3f} (best {info['best_dice']:.3f})"
            self.write(f"member {member + 1}/{self.members} step {step}/{self.steps} loss {info['loss']:.4f}{dice} "
                       f"{per_step:.2f} s/step, {duration_text(left)} left")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _log_records(histories: list, seeds: list[int]) -> list[dict]:
    rows = []
    for k, history in enumerate(histories):
        best = -math.inf
        for rec in history:
            if rec.get("val_dice") is not None:
                best = max(best, rec["val_dice"])
            rows.append({"member": k, "seed": seeds[k], "step": rec["step"], "loss": rec["loss"],
                         "val_dice": rec.get("val_dice"), "best_val_dice": None if best == -math.inf else best,
                         "seconds_per_step": rec.get("seconds_per_step")})
    return rows


def _plot_curves(rows: list[dict], path: Path, title: str) -> Path | None:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=110)
    for k in sorted({r["member"] for r in rows}):
        mine = [r for r in rows if r["member"] == k]
        ax_loss.plot([r["step"] for r in mine], [r["loss"] for r in mine], marker=".", label=f"member {k + 1}")
        dice = [r for r in mine if r["val_dice"] is not None]
        if dice:
            ax_dice.plot([r["step"] for r in dice], [r["val_dice"] for r in dice], marker=".", label=f"member {k + 1}")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss (Dice loss)")
    ax_dice.set_xlabel("step")
    ax_dice.set_ylabel("validation Dice (network grid)")
    ax_dice.set_ylim(0, 1)
    ax_loss.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    from agatax._atomic import atomic_open

    with atomic_open(path) as handle:
        fig.savefig(handle, format="png")
    plt.close(fig)
    return path


def run_train(args: argparse.Namespace) -> int:
    checked = _check_arguments(args)
    paths, workdir = checked["paths"], checked["workdir"]
    ckpt = workdir / "checkpoints"
    if args.restart and ckpt.exists():
        shutil.rmtree(ckpt)
    if args.resume and not (ckpt.is_dir() and any(ckpt.rglob("last.ckpt"))):
        raise InputError(f"--resume: no checkpoints in {ckpt} to continue from", code="NO_CHECKPOINT",
                         hint="run without --resume to start (the same command then resumes by itself), or give "
                         "the --workdir of the run to continue", paths=[ckpt])
    from agatax.cli import select_device

    device = select_device(args.device)
    import jax

    from agatax.cohort import score_validation, train_cohort
    from agatax.ensemble import save_ensemble
    from agatax.model import UNetConfig
    from agatax.train import TrainConfig

    fresh = args.init.lower() == "none"
    lr = args.lr if args.lr is not None else (1e-3 if fresh else 3e-4)
    eval_every = args.eval_every or max(1, args.steps // 20)
    loss = args.loss or ("batch-dice" if fresh else "patch-dice")
    config = TrainConfig(learning_rate=lr, steps=args.steps, batch_size=args.batch, patch_zyx=checked["patch"],
                         eval_every=min(eval_every, args.steps), log_every=1, seed=args.seed,
                         dice_pooled=loss == "batch-dice", **AUGMENT[args.augment])
    model_config = UNetConfig(**MODELS[args.model or "paper"]) if fresh else None
    read_options = {k: True for k in ("allow_small", "allow_not_hu", "allow_gaps", "allow_uneven")
                    if getattr(args, k, False)}
    seeds = [args.seed + k for k in range(args.members)]
    progress = _Progress(args.members, args.steps, args.quiet)

    def note(text: str) -> None:
        if (text.startswith("member ") and "(seed " in text) or text.startswith("step ") or text.startswith("resumed "):
            return  # the progress bar says it
        progress.write(text)

    slabs = args.thin_slices == "slab"
    started = time.perf_counter()
    context = jax.default_device(device) if device is not None else contextlib.nullcontext()
    try:
        with context:
            try:
                result = train_cohort(args.data, members=args.members, config=config, model_config=model_config,
                                      init=args.init, validation=checked["validation"], seed=args.seed, seeds=seeds,
                                      workdir=workdir, slabs=slabs, read_options=read_options, log=note,
                                      on_step=progress, collapse_retries=args.collapse_retries)
            except CheckpointError as err:
                if err.code == "CHECKPOINT_MISMATCH":
                    raise CheckpointError(
                        f"{workdir} holds checkpoints of a run with other data or settings ({err.message})",
                        code="CHECKPOINT_MISMATCH", paths=err.paths,
                        hint="--restart discards them, or give another --workdir") from None
                raise
            finally:
                progress.close()
            train_seconds = time.perf_counter() - started
            save_ensemble(paths["out"], result.ensemble)
            rows = _log_records(result.histories, seeds)
            from agatax._atomic import atomic_write_text

            atomic_write_text(paths["log"], "".join(json.dumps(r) + "\n" for r in rows))
            picture = None
            if not args.no_png:
                picture = _plot_curves(rows, paths["curves"],
                                       f"{paths['out'].name}: {args.members} networks, {len(result.train_ids)} "
                                       f"training / {len(result.val_ids)} validation exams")
            for text in result.notes:
                print(f"note: {text}", file=sys.stderr)
            scored = {"exams": 0}
            if result.val_exams:
                scored = score_validation(result.ensemble, result.val_exams, slabs=slabs, read_options=read_options)
                from agatax.report import _json_safe

                atomic_write_text(paths["validation"], json.dumps(_json_safe(scored), indent=1) + "\n")
    except KeyboardInterrupt:
        print(f"interrupted: checkpoints in {ckpt}; re-run the same command to continue", file=sys.stderr)
        return 130
    best = [max((r["val_dice"] for r in h if r.get("val_dice") is not None), default=None) for h in result.histories]
    print(f"trained {args.members} network{'s' if args.members > 1 else ''} ({'fine-tuned from ' + args.init if not fresh else 'fresh'}; "
          f"{loss}, {args.augment} augmentation) on {len(result.train_ids)} exams in {duration_text(train_seconds)}; "
          f"validation exams: {len(result.val_ids)}")
    if any(b is not None for b in best):
        print("best validation Dice per network: " + ", ".join("-" if b is None else f"{b:.3f}" for b in best))
        from agatax.train import COLLAPSE_DICE

        dead = [k + 1 for k, b in enumerate(best) if b is not None and b < COLLAPSE_DICE]
        if dead:
            print(f"warning: network{'s' if len(dead) > 1 else ''} {', '.join(map(str, dead))} never found the "
                  f"validation calcium (Dice under {COLLAPSE_DICE:g}); "
                  + ("--loss batch-dice trains more reliably; " if loss == "patch-dice" else "")
                  + "more --steps or --collapse-retries, a lower --lr or fewer augmentations may help",
                  file=sys.stderr)
    if scored.get("exams"):
        def num(x):
            return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"

        print(f"validation exams scored ({scored['exams']}): category accuracy {num(scored['category_accuracy'])}, "
              f"C-index {num(scored['c_index'])}, lesion F1 {num(scored['lesion_f1'])} "
              f"(sensitivity {num(scored['lesion_sensitivity'])}, PPV {num(scored['lesion_ppv'])})")
    print(f"ensemble:  {paths['out']}")
    print(f"log:       {paths['log']}" + (f", {picture}" if picture else ""))
    if scored.get("exams"):
        print(f"scored:    {paths['validation']}")
    print(f"next:      agatax score EXAM --weights {paths['out']}")
    return 0
