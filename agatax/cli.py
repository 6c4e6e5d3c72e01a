"""The ``agatax`` command.

    agatax score PATH... [--report DIR] [--json OUT|-] [--weights FILE] [--mask MASK] [--device cpu|gpu|auto]
    agatax evaluate PRED REF [--plot DIR] [--json OUT|-] [--lesions]
    agatax example DIR [--seed N] [--matrix 512] [--count 1]
    agatax train DATA... --out ENSEMBLE.msgpack [--members 5] [--steps N] [--init default|none|FILE] ...
    agatax serve [--idle-minutes 30] [--stop]   (keeps a warm scorer: later `agatax score` runs start at once)

Exit status: 0 success; 2 refused input or options (one line ``error [CODE]: message (hint: ...)`` on
stderr; ``--debug`` shows the traceback instead); 3 a batch finished but some of its exams failed (each
has a summary row with its code); 1 an unexpected failure; 130 interrupted. Subcommands are argparse
subparsers; each one registers itself through a function ``add_<name>_command(subparsers)`` listed in
``COMMANDS`` and sets ``run`` to a function(args) -> int.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import functools
import hashlib
import io
import json
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agatax._atomic import atomic_write_bytes, atomic_write_text
from agatax._atomic import remove_file as atomic_remove
from agatax.errors import AgataxError, CheckpointError, InputError, ReadError
from agatax.slabs import THIN_SLICES

__all__ = ["main", "score_exam", "build_parser", "format_report", "select_device", "ExamScorer", "COMMANDS"]

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_ERROR = 2
EXIT_SOME_FAILED = 3

_RELAXATIONS = ("allow_gaps", "allow_uneven", "allow_tilt", "allow_not_ct", "allow_qform_mismatch", "allow_small",
                "allow_not_hu")
#: Tube voltage the Agatston thresholds were defined at (kVp).
REFERENCE_KVP = 120.0


# --------------------------------------------------------------------------------------------- device


def select_device(name: str = "auto"):
    """The JAX device to score on: "cpu", "gpu" or "auto" (None: JAX's default device, also returned
    when that is the device asked for).

    "cpu" before JAX has started its backends also restricts JAX to the CPU (no GPU memory taken).

    Raises:
        InputError NO_GPU when "gpu" is asked for and JAX sees none; BAD_ARGUMENT for other names.
    """
    import jax

    if name == "auto":
        return None
    if name == "cpu":
        try:
            from jax._src import xla_bridge

            if not xla_bridge.backends_are_initialized():
                jax.config.update("jax_platforms", "cpu")
        except Exception:  # private API moved: the device choice below still holds
            pass
        return None if jax.default_backend() == "cpu" else jax.devices("cpu")[0]
    if name == "gpu":
        try:
            return jax.devices("gpu")[0]
        except RuntimeError:
            present = sorted({d.platform for d in jax.devices()})
            raise InputError(
                f"--device gpu: JAX sees no GPU (platforms present: {', '.join(present)})",
                code="NO_GPU",
                hint='install the CUDA build of JAX (pip install "agatax[cuda]") or use --device cpu',
            ) from None
    raise InputError(f"--device must be cpu, gpu or auto; got {name!r}", code="BAD_ARGUMENT")


def load_weights(path: str | os.PathLike | None):
    """The ensemble to segment with: the file at ``path``, or the shipped default when None.

    Raises:
        CheckpointError (NOT_FOUND, CORRUPT_CHECKPOINT, VERSION_MISMATCH, MISSING_WEIGHTS, ...).
    """
    if path is None:
        from agatax.defaults import load_default_ensemble

        return load_default_ensemble()
    from agatax.ensemble import load_ensemble

    try:
        return load_ensemble(path)
    except AgataxError:
        raise
    except Exception as err:  # anything else means the file is not a usable ensemble
        raise CheckpointError(
            f"cannot load ensemble weights from {path} ({type(err).__name__}: {err})",
            code="CORRUPT_CHECKPOINT",
            hint="pass a file written by agatax.save_ensemble",
            paths=[str(path)],
        ) from None


def files_fingerprint(path: str | os.PathLike) -> str:
    """A cheap fingerprint of the files of an exam (a file or a folder searched recursively, hidden
    entries left out, as the reader does): sorted relative names, sizes and modification times."""
    root = Path(path)
    entries = []
    if root.is_file():
        st = root.stat()
        entries.append((root.name, st.st_size, st.st_mtime_ns))
    else:
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(f for f in files if not f.startswith(".")):
                full = Path(folder) / name
                with contextlib.suppress(OSError):
                    st = full.stat()
                    entries.append((str(full.relative_to(root)), st.st_size, st.st_mtime_ns))
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


#: Modules that never touch an exam's numbers (the generator, datasets, training): left out of the fingerprint,
#: so that a change to them does not re-score a report folder.
TRAINING_ONLY = ("synthetic/", "datasets/", "train.py", "train_cli.py", "cohort.py")


def source_fingerprint(root: str | os.PathLike, *, leave_out: Sequence[str] = ()) -> str:
    """sha256 (16 hex) of the Python sources under ``root`` (relative names and contents, sorted): regular
    ``*.py`` files, hidden names (editor locks, notebook checkpoints) and names starting with one of
    ``leave_out`` (relative, "/"-separated) left out."""
    root, digest = Path(root), hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        name = path.relative_to(root).as_posix()
        if any(part.startswith(".") for part in name.split("/")) or name.startswith(tuple(leave_out)):
            continue
        if not path.is_file():  # a dangling link (an editor's lock) is not a source
            continue
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@functools.cache
def code_fingerprint() -> str:
    """:func:`source_fingerprint` of the agatax package this process imported (computed once, at the first
    call, ``TRAINING_ONLY`` left out): a batch re-run keeps an earlier report only when the code that made it
    is this code, not only the same version number (reports made before a change of rules, e.g. a new
    refusal, are scored again)."""
    return source_fingerprint(Path(__file__).parent, leave_out=TRAINING_ONLY)


def weights_identity(path: str | os.PathLike | None) -> str:
    """``<file name> sha256:<12 hex>`` of an ensemble file (None: the shipped default, named "default")."""
    from agatax.defaults import default_weights_path

    file = Path(path) if path is not None else default_weights_path()
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"{'default' if path is None else file.name} sha256:{digest.hexdigest()[:12]}"


def device_name(device=None) -> str:
    """The JAX device results are computed on, e.g. ``cpu (cpu)`` or ``gpu (NVIDIA H100)``."""
    import jax

    device = device if device is not None else jax.devices()[0]
    return f"{device.platform} ({device.device_kind})"


# --------------------------------------------------------------------------------------------- one exam


@dataclasses.dataclass
class ScoredExam:
    """One exam after segmentation and scoring (host arrays).

    volume: the exam; scores: ``agatax.Scores``; mask: (z, y, x) bool or artery labels; votes: uint8
    (z, y, x) members voting calcium, or None for a given mask; members: ensemble size or None; chest:
    the ``ChestRegion`` the networks' calcium was restricted to, or None; noise_hu: the exam's measured
    noise SD (``agatax.quality.image_noise_hu``), or None; left_out: (bool (z, y, x), list of dicts) the
    calcified objects of the chest region not scored (``agatax.pipeline.left_out_objects``), or None;
    category_range: the ``agatax.uncertainty.CategoryRange`` of the networks' result, or None; dropped:
    bool (z, y, x) the networks' calcium the object rules left out (``PipelineResult.dropped``), or None;
    input_smoothing_mm: sigma (mm) of the in-plane Gaussian the networks saw the exam through (0: none).
    """

    volume: Any
    scores: Any
    mask: np.ndarray
    votes: np.ndarray | None = None
    members: int | None = None
    chest: Any = None
    noise_hu: float | None = None
    left_out: tuple | None = None
    category_range: Any = None
    dropped: np.ndarray | None = None
    input_smoothing_mm: float = 0.0

    def unscored(self) -> np.ndarray | None:
        """bool (z, y, x) the calcium the report picture outlines as not scored: the chest region's calcified
        objects left out and the networks' calcium the object rules left out; None when there is neither."""
        parts = [m for m in (None if self.left_out is None else self.left_out[0], self.dropped) if m is not None]
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else parts[0] | parts[1]


def _exam_warnings(volume, series: str | None) -> list[str]:
    """Notes the command line adds to the reader's: unusual tube voltage, the series chosen (a sharp kernel:
    ``run_pipeline``, or ``ExamScorer.score`` with a mask)."""
    meta = volume.metadata or {}
    notes = []
    kvp = meta.get("kvp")
    if kvp is not None and abs(float(kvp) - REFERENCE_KVP) > 0.5:
        notes.append(
            f"unusual tube voltage {float(kvp):g} kVp: the 130 HU threshold and density weights assume "
            f"{REFERENCE_KVP:g} kVp"
        )
    others = {str(reason).split("(", 1)[-1].split(")")[0]
              for _, reason in meta.get("skipped", ()) if str(reason).startswith("another series")}
    if others or series is not None:
        description = meta.get("series_description") or "no description"
        text = f"series chosen: {meta.get('series_uid') or '?'} ({description}, {volume.shape[0]} slices)"
        text += f" by --series {series}" if series is not None else ""
        if others:
            text += f"; {len(others)} other series in the folder not scored"
        notes.append(text)
    return notes


def _vote_fractions(scored: ScoredExam) -> list[float | None]:
    """Per lesion: mean over its pixels of votes / members (the share of networks that agreed)."""
    from agatax.report import _vote_fractions as fractions, lesion_regions

    lesions = tuple(scored.scores.lesions)
    regions = lesion_regions(scored.volume.hu, scored.mask, lesions)
    return fractions(scored.votes, scored.members, regions, lesions, scored.volume)


class ExamScorer:
    """Reads, segments and scores exams with one set of options (the ``score`` command's engine).

    Args:
        mask: a calcium mask file for the exam (then no network runs), or None.
        ensemble: the ``Ensemble`` to segment with when no mask is given.
        series: which DICOM series (UID, prefix, number or description).
        calibration: mg / (HU mm^3) for the mass score.
        min_pixels, min_area_mm2: smallest lesion kept.
        localise: discard calcium outside the chest region between the lungs (``agatax.localise_chest``).
        allow_phantom: score an exam that looks like a phantom (else it is refused with PHANTOM).
        assume_non_contrast: score an exam whose mediastinum looks contrast-enhanced (else it is refused
            with CONTRAST_ENHANCED).
        allow_noisy: score an exam far noisier than the networks' training (else it is refused with TOO_NOISY).
        allow_sharp_kernel: score an exam reconstructed with a bone or lung kernel (else it is refused with
            SHARP_KERNEL).
        keep_specks, keep_in_air: keep objects at the noise level / surrounded by air (``run_pipeline``).
        adapt_noise: show an exam noisier than the networks' training to them smoothed (``run_pipeline``).
        thin_slices: "slab" (default: thin-slice exams scored on 3 mm slabs, ``agatax.thick_slabs``) or
            "native" (scored on the thin slices, increment / 3 mm factor).
        relaxations: ``read_volume`` relaxations (allow_gaps, ...).
    """

    def __init__(self, *, mask=None, ensemble=None, series=None, calibration=None, min_pixels=3,
                 min_area_mm2=None, localise=True, about: dict[str, Any] | None = None, thin_slices: str = "slab",
                 allow_phantom: bool = False, assume_non_contrast: bool = False, keep_specks: bool = False,
                 keep_in_air: bool = False, adapt_noise: bool = True, allow_noisy: bool = False,
                 allow_sharp_kernel: bool = False, **relaxations: bool) -> None:
        if mask is None and ensemble is None:
            raise InputError("ExamScorer needs a mask or an ensemble", code="BAD_ARGUMENT")
        self.mask, self.ensemble, self.series, self.localise = mask, ensemble, series, bool(localise)
        #: the keyword arguments (less ensemble and about) that rebuild this scorer elsewhere (a cluster's workers)
        self.init_options = {"mask": mask, "series": series, "calibration": calibration, "min_pixels": min_pixels,
                             "min_area_mm2": min_area_mm2, "localise": localise, "thin_slices": thin_slices,
                             "allow_phantom": allow_phantom, "assume_non_contrast": assume_non_contrast,
                             "keep_specks": keep_specks, "keep_in_air": keep_in_air, "adapt_noise": adapt_noise,
                             "allow_noisy": allow_noisy, "allow_sharp_kernel": allow_sharp_kernel, **relaxations}
        self.keep_specks, self.keep_in_air, self.adapt_noise = bool(keep_specks), bool(keep_in_air), bool(adapt_noise)
        self.allow_phantom, self.allow_noisy = bool(allow_phantom), bool(allow_noisy)
        self.allow_sharp_kernel = bool(allow_sharp_kernel)
        self.assume_non_contrast = bool(assume_non_contrast)
        self.conventions = {"calibration": calibration, "min_pixels": min_pixels, "min_area_mm2": min_area_mm2}
        self.relaxations = {k: bool(v) for k, v in relaxations.items() if v}
        self.about = dict(about or {})  # device, weights: what made the results
        if thin_slices not in THIN_SLICES:
            raise InputError(f"thin_slices must be one of {THIN_SLICES}; got {thin_slices!r}", code="BAD_ARGUMENT")
        self.thin_slices = thin_slices

    def options(self) -> dict[str, Any]:
        """The options that change an exam's numbers (part of its provenance)."""
        mask = None if self.mask is None else {"path": str(Path(self.mask).resolve()),
                                                "files": files_fingerprint(self.mask)}
        return {**self.conventions, "series": self.series, "localise": self.localise and mask is None,
                "mask": mask, "relaxations": sorted(self.relaxations), "thin_slices": self.thin_slices,
                **({"allow_phantom": True} if self.allow_phantom and mask is None else {}),
                **({"assume_non_contrast": True} if self.assume_non_contrast and mask is None else {}),
                **({"allow_noisy": True} if self.allow_noisy and mask is None else {}),
                **({"allow_sharp_kernel": True} if self.allow_sharp_kernel and mask is None else {}),
                **({"keep_specks": True} if self.keep_specks and mask is None else {}),
                **({"keep_in_air": True} if self.keep_in_air and mask is None else {}),
                **({"adapt_noise": False} if not self.adapt_noise and mask is None else {})}

    def read(self, path):
        """Read the exam at ``path`` into a Volume, with the command line's warnings added."""
        from agatax.io import read_volume

        volume = read_volume(path, series=self.series, **self.relaxations)
        notes = _exam_warnings(volume, self.series)
        return volume.replace(warnings=tuple(volume.warnings) + tuple(notes)) if notes else volume

    def score(self, volume) -> ScoredExam:
        """Segment (ensemble) or take the given mask, then score: the device part of an exam."""
        from agatax.orientation import canonical_orientation
        from agatax.slabs import thick_slabs

        canonical_orientation(volume.affine, source=volume.source)  # NOT_AXIAL: never scored as if axial
        slab = self.thin_slices == "slab"
        if self.mask is not None:
            from agatax.io import read_mask
            from agatax.quality import kernel_note
            from agatax.scoring import compute_scores

            labels = read_mask(self.mask, like=volume)
            if slab:
                volume, labels = thick_slabs(volume, labels)
            meta = volume.metadata or {}
            notes = kernel_note(meta.get("kernel"), meta.get("manufacturer"), past_refusal=False)  # warned only
            if notes:
                volume = volume.replace(warnings=tuple(volume.warnings) + notes)
            return ScoredExam(volume, compute_scores(volume.hu, labels, volume.spacing, **self.conventions), labels)
        from agatax.pipeline import AIR_SHARE, NOISE_SNR, run_pipeline

        if slab:
            volume, _ = thick_slabs(volume)
        result = run_pipeline(self.ensemble, volume, localise=self.localise, allow_phantom=self.allow_phantom,
                              assume_non_contrast=self.assume_non_contrast,
                              noise_snr=None if self.keep_specks else NOISE_SNR,
                              air_share=None if self.keep_in_air else AIR_SHARE, adapt_noise=self.adapt_noise,
                              allow_noisy=self.allow_noisy, allow_sharp_kernel=self.allow_sharp_kernel,
                              **self.conventions)
        notes = tuple(result.notes)
        if result.chest is not None and not result.chest.found:
            notes += (f"chest localisation: {result.chest.note}",)
        if notes:
            volume = volume.replace(warnings=tuple(volume.warnings) + notes)
        left_out = None
        if result.chest is not None and result.chest.found:
            from agatax.pipeline import left_out_objects

            left_out = left_out_objects(volume.hu, np.asarray(result.mask) > 0, result.chest.region, volume.spacing)
        return ScoredExam(volume, result.scores, np.asarray(result.mask), np.asarray(result.votes),
                          self.ensemble.members, result.chest, result.noise_hu, left_out, result.category_range,
                          result.dropped, result.input_smoothing_mm)

    def _extras(self, scored: ScoredExam) -> dict[str, Any]:
        """Keys the JSON carries beyond the report: the given mask, and the chest region used."""
        extras: dict[str, Any] = {"mask": None if self.mask is None else str(self.mask), **self.about}
        if scored.chest is not None:
            extras["chest_region"] = scored.chest.to_dict()
        if scored.left_out is not None:
            from agatax.pipeline import LEFT_OUT_MIN_MM3, LEFT_OUT_MIN_PEAK_HU

            objects = scored.left_out[1]
            extras["left_out"] = {
                "objects": len(objects), "volume_mm3": round(sum(o["volume_mm3"] for o in objects), 1),
                "largest": objects[:5],
                "rule": f"calcified objects of the chest region not scored: >= {LEFT_OUT_MIN_MM3:g} mm^3, peak "
                        f">= {LEFT_OUT_MIN_PEAK_HU:g} HU, metal left out",
            }
        if scored.category_range is not None:
            extras["category_range"] = scored.category_range.to_dict()
        if scored.noise_hu is not None:
            extras["noise_hu"] = round(float(scored.noise_hu), 1)
            if self.ensemble is not None:
                extras["trained_noise_hu"] = list(self.ensemble.config.trained_noise_hu)
        if scored.input_smoothing_mm:
            extras["input_smoothing_mm"] = round(float(scored.input_smoothing_mm), 3)
        return extras

    def result(self, scored: ScoredExam, exam_id: str | None = None) -> dict[str, Any]:
        """The JSON dict of a scored exam (the ``--json`` contract; ``vote_fraction`` per lesion with an
        ensemble)."""
        from agatax.report import report_dict

        fractions = None if scored.votes is None else _vote_fractions(scored)
        out = report_dict(scored.volume, scored.scores, exam_id=exam_id, vote_fractions=fractions,
                          members=scored.members)
        out.update(self._extras(scored))
        return out

    def write(self, directory, scored: ScoredExam, exam_id: str, *, png: bool = True, png_slices: int | None = 6,
              extra: dict[str, Any] | None = None, dicom: bool = False) -> tuple[dict, dict]:
        """Write the exam's report files (``extra``: more JSON keys, e.g. the provenance; ``dicom``: the
        DICOM Segmentation and SR too); returns (the JSON dict as written, the paths)."""
        from agatax.report import write_report

        paths = write_report(directory, scored.volume, scored.scores, scored.mask, votes=scored.votes,
                             members=scored.members, exam_id=exam_id, png=png, max_slices=png_slices,
                             extra={**self._extras(scored), **(extra or {})}, dicom=dicom,
                             left_out=scored.unscored())
        return json.loads(Path(paths["json"]).read_text()), paths


def score_exam(
    path: str | Path,
    mask: str | Path | None = None,
    *,
    weights: str | Path | None = None,
    ensemble: Any = None,
    series: str | None = None,
    calibration: float | None = None,
    min_pixels: int = 3,
    min_area_mm2: float | None = None,
    thin_slices: str = "slab",
    allow_phantom: bool = False,
    assume_non_contrast: bool = False,
    localise: bool = True,
    keep_specks: bool = False,
    keep_in_air: bool = False,
    adapt_noise: bool = True,
    allow_noisy: bool = False,
    allow_sharp_kernel: bool = False,
    **relaxations: bool,
) -> dict[str, Any]:
    """Read one exam, find its calcium and score it; return the JSON-safe dict ``agatax score --json`` prints.

    The calcium is ``mask`` (a NIfTI on the exam's grid or a .npy (z, y, x)) when given, else the
    segmentation of ``ensemble`` (default: the file ``weights``, else the shipped default ensemble).

    Keys: exam_id, agatston, category, volume_mm3 (mm^3), mass_mg (mg or None), lesions (list of dicts;
    with an ensemble each has ``vote_fraction``, the share of networks that agreed), per_artery,
    spacing_mm (dz, dy, dx), slice_thickness_mm, shape (z, y, x), warnings, series_uid,
    series_description, reconstruction_kernel and kvp (DICOM; None where unknown), source, mask,
    agatax_version, device, weights (file name and sha256 prefix; None
    for a given ``ensemble`` or mask), and ``members`` with an ensemble.
    ``relaxations``: allow_gaps, allow_uneven, allow_tilt, allow_not_ct, allow_qform_mismatch (see
    ``agatax.read_volume``). ``allow_phantom``: score an exam that looks like a phantom instead of refusing it;
    ``assume_non_contrast``: one whose mediastinum looks contrast-enhanced; ``allow_noisy``: one far noisier
    than the networks' training (TOO_NOISY); ``allow_sharp_kernel``: one reconstructed with a bone or lung kernel
    (SHARP_KERNEL). ``localise``, ``keep_specks``,
    ``keep_in_air``, ``adapt_noise``: the pipeline's options as ``agatax score`` (``--no-localise``,
    ``--keep-specks``, ``--keep-in-air``, ``--no-adapt-noise``).
    """
    identity = None
    if mask is None and ensemble is None:
        ensemble = load_weights(weights)
        identity = weights_identity(weights)
    scorer = ExamScorer(mask=mask, ensemble=ensemble, series=series, calibration=calibration,
                        min_pixels=min_pixels, min_area_mm2=min_area_mm2,
                        about={"device": device_name(), "weights": identity}, thin_slices=thin_slices,
                        allow_phantom=allow_phantom, assume_non_contrast=assume_non_contrast, localise=localise,
                        keep_specks=keep_specks, keep_in_air=keep_in_air, adapt_noise=adapt_noise,
                        allow_noisy=allow_noisy, allow_sharp_kernel=allow_sharp_kernel, **relaxations)
    return scorer.result(scorer.score(scorer.read(path)))


# --------------------------------------------------------------------------------------------- text


def format_report(result: dict[str, Any]) -> str:
    """Plain-text report of one exam's result dict: totals, the lesion table, per-artery totals, warnings."""
    dz, dy, dx = result["spacing_mm"]
    thickness = result["slice_thickness_mm"]
    lines = [
        f"exam:      {result['source']}",
        f"series:    {result['series_uid'] or '-'}  {result['series_description'] or ''}".rstrip(),
        f"grid:      {' x '.join(str(n) for n in result['shape'])} voxels, spacing {dz:.3f} x {dy:.3f} x {dx:.3f} mm"
        + (f", slice thickness {thickness:g} mm" if thickness else ""),
    ]
    scan = ([f"kernel {result['reconstruction_kernel']}"] if result.get("reconstruction_kernel") else []) + (
        [f"{float(result['kvp']):g} kVp"] if result.get("kvp") is not None else [])
    if scan:
        lines.append(f"scan:      {', '.join(scan)}")
    made = [f"{k} {result[k]}" for k in ("weights", "device") if result.get(k)]
    if result.get("agatax_version"):
        lines.append(f"made by:   agatax {result['agatax_version']}" + "".join(f", {m}" for m in made))
    if result.get("members"):
        lines.append(f"calcium:   objects voted for by a majority of {result['members']} networks")
    if result.get("chest_region"):
        lines.append(f"chest:     {result['chest_region']['note']}")
    elif result.get("mask"):
        lines.append(f"calcium:   mask {result['mask']}")
    if result.get("noise_hu") is not None:
        from agatax.quality import TRAINED_NOISE_HU

        low, high = result.get("trained_noise_hu") or TRAINED_NOISE_HU
        lines.append(f"noise:     {result['noise_hu']:.0f} HU (SD in soft tissue; the networks were trained on "
                     f"{low:g}-{high:g} HU)" + (f"; shown to them smoothed, sigma {result['input_smoothing_mm']:.2f} mm"
                                                if result.get("input_smoothing_mm") else ""))
    left_out = result.get("left_out")
    if left_out and left_out["objects"]:
        big = left_out["largest"][0]
        lines.append(f"left out:  {left_out['objects']} calcified object(s) in the chest region judged not coronary "
                     f"({left_out['volume_mm3']:.0f} mm^3; largest {big['volume_mm3']:.0f} mm^3 at slices "
                     f"{big['slices'][0]}-{big['slices'][1]}, peak {big['peak_hu']:.0f} HU): aortic wall, valves, "
                     "annulus, or calcium the networks missed (outlined green in the report picture)")
    lines.append(f"Agatston:  {result['agatston']:.1f}   (category {result['category']})")
    doubt = result.get("category_range")
    if doubt and doubt["uncertain"]:
        low, high = doubt["low"], doubt["high"]
        lines.append(f"range:     {low['category']} ({low['agatston']:.1f}) to {high['category']} ({high['agatston']:.1f})"
                     f": {doubt['objects_in_doubt']} object(s) in doubt (see the warnings)")
    lines += [
        f"volume:    {result['volume_mm3']:.1f} mm^3",
    ]
    if result.get("mass_mg") is not None:
        lines.append(f"mass:      {result['mass_mg']:.2f} mg")
    lesions = result["lesions"]
    votes = any("vote_fraction" in lesion for lesion in lesions)
    lines.append(f"slice lesions: {len(lesions)}  (2D calcium components per axial slice, as Agatston defines them)")
    if lesions:
        lines.append("  slice  instance   z_mm  artery  pixels  area_mm2  peak_hu  weight  agatston  volume_mm3"
                     + ("  votes" if votes else ""))
        for lesion in lesions:
            number = lesion.get("instance_number")
            z_mm = lesion.get("z_mm")
            line = (
                f"  {lesion['slice']:5d}  {'-' if number is None else number:>8}  {'-' if z_mm is None else f'{z_mm:.1f}':>6}"
                f"  {lesion['artery'] or '-':>6}  {lesion['pixels']:6d}  {lesion['area_mm2']:8.2f}"
                f"  {lesion['peak_hu']:7.0f}  {lesion['weight']:6d}  {lesion['agatston']:8.2f}  {lesion['volume_mm3']:10.2f}"
            )
            if votes:
                fraction = lesion.get("vote_fraction")
                line += "      -" if fraction is None else f"  {fraction:5.2f}"
            lines.append(line)
    for artery, totals in (result.get("per_artery") or {}).items():
        lines.append(
            f"  {artery:>4}: Agatston {totals['agatston']:.1f}, volume {totals['volume_mm3']:.1f} mm^3, "
            f"{totals['lesions']} slice lesions"
        )
    for warning in result["warnings"]:
        lines.append(f"warning:   {warning}")
    return "\n".join(lines)


#: Failures that say nothing about the exam (its source not there now, a lost or mismatched worker): an
#: earlier report is left where it is.
_TRANSIENT = ("NOT_FOUND", "WORKER_LOST", "CODE_MISMATCH", "REPORT_BUSY")


def _verdict(err: BaseException | None) -> bool:
    """Whether a failure is a verdict on the exam (a refusal, an unreadable exam), not a passing condition."""
    return isinstance(err, AgataxError) and err.code not in _TRANSIENT


def set_aside_report(report_dir: Path, exam_id: str) -> Path | None:
    """Move the report files of ``exam_id`` (JSON, lesion CSV, mask, PNG, DICOM SEG and SR, those that exist)
    into ``report_dir/superseded/<id>/<UTC time>/``: a re-run whose exam is now refused leaves no report that
    looks current, and deletes nothing. Only a complete report (its JSON there) is moved. Returns the folder,
    or None when there was no complete report."""
    import shutil
    import time

    from agatax.report import report_paths

    paths = report_paths(report_dir, exam_id, png=True, dicom=True)
    if not paths["json"].is_file():
        return None
    present = [p for p in paths.values() if p.is_file()]
    base = Path(report_dir) / "superseded" / paths["json"].stem / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target, k = base, 1
    while target.exists():
        k += 1
        target = base.with_name(f"{base.name}-{k}")
    target.mkdir(parents=True)
    for path in sorted(present, key=lambda p: p.suffix != ".json"):  # the JSON first: no half-current report
        shutil.move(os.fspath(path), os.fspath(target / path.name))
    return target


def _one_line(outcome, note: str | None = None) -> str:
    """One line per exam of a batch."""
    exam_id = outcome.task.exam_id
    if outcome.status == "failed":
        err = outcome.error
        code = err.code if isinstance(err, AgataxError) else type(err).__name__
        text = err.message if isinstance(err, AgataxError) else str(err)
        if isinstance(err, AgataxError) and err.hint:  # the way out, as the one-exam error line gives it
            text += f" (hint: {err.hint})"
        line = f"{exam_id}  FAILED [{code}] {' '.join(text.split())}"
        return line + (f"; {note}" if note and note.startswith("its earlier report") else "")
    r = outcome.result
    n = len(r["lesions"])
    line = (f"{exam_id}  Agatston {r['agatston']:.1f}  category {r['category']}  volume {r['volume_mm3']:.1f} mm^3"
            f"  {n} slice lesion{'' if n == 1 else 's'}")
    if r.get("mass_mg") is not None:
        line += f"  mass {r['mass_mg']:.2f} mg"
    if outcome.status == "skipped":
        line += "  (kept from an earlier run)"
    elif note:
        line += f"  ({note})"
    return line + "".join(f"\n    warning: {w}" for w in r.get("warnings", []))


def _error_entry(outcome) -> dict[str, Any]:
    err = outcome.error
    return {
        "exam_id": outcome.task.exam_id,
        "status": "failed",
        "source": str(outcome.task.path),
        "error_code": err.code if isinstance(err, AgataxError) else type(err).__name__,
        "error_message": err.message if isinstance(err, AgataxError) else str(err),
        "error_hint": err.hint if isinstance(err, AgataxError) else None,
    }


# --------------------------------------------------------------------------------------------- score


def add_score_command(subparsers) -> None:
    """``agatax score``: score exams with the default ensemble, your own weights, or a given mask."""
    p = subparsers.add_parser(
        "score",
        help="score exams (DICOM folders/files, NIfTI, folders of exams, @list.txt)",
        description=(
            "Read CT exams, find the coronary calcium (objects voted for by a majority of the ensemble's networks, "
            "or --mask) and print Agatston score, category, volume, lesions and warnings. Each PATH is an exam (DICOM "
            "file or folder, NIfTI file), a folder holding one subfolder (or NIfTI file) per exam, or "
            "@LIST, a text file naming one path per line. Exit status: 0 all scored, 2 refused input, "
            "3 a batch in which some exams failed (see the summary CSV)."
        ),
    )
    _add_debug(p)
    p.add_argument("paths", nargs="+", metavar="PATH", help="exam, folder of exams, or @list.txt")
    p.add_argument("--mask", help="score this calcium mask instead of running the networks (one exam only): "
                   "NIfTI on the exam's grid, or .npy (z, y, x); labels 1..4 = LM, LAD, LCX, RCA")
    p.add_argument("--weights", metavar="FILE", help="ensemble file (agatax.save_ensemble) instead of the shipped default")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto", help="where the networks run (default auto)")
    p.add_argument("--series", help="which DICOM series: SeriesInstanceUID, unique prefix, number or description")
    p.add_argument("--report", metavar="DIR", help="write per exam <id>.json, <id>_lesions.csv, <id>_mask.nii.gz, "
                   "<id>.png, and DIR/summary.csv")
    p.add_argument("--no-png", action="store_true", help="with --report: skip the pictures (no matplotlib needed)")
    p.add_argument("--dicom", action="store_true", help="with --report, DICOM exams only: also <id>_seg.dcm (DICOM "
                   "Segmentation of the calcium) and <id>_sr.dcm (Comprehensive 3D SR of the scores), for PACS")
    p.add_argument("--summary", metavar="CSV", help="summary CSV path (default DIR/summary.csv with --report)")
    p.add_argument("--json", metavar="OUT", help="write results as JSON to OUT ('-' = stdout): one object for one "
                   "exam, a list of objects for a batch")
    p.add_argument("--json-lines", action="store_true", help="with --json: one object per line, written as each "
                   "exam finishes")
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="exams read ahead while one is scored (default 1, 0 = none)")
    p.add_argument("--png-slices", default="6", metavar="all|N", help="slices drawn in the report picture: the N "
                   "with most Agatston (default 6), or all")
    p.add_argument("--overwrite", action="store_true", help="with --report: score again exams whose results exist")
    p.add_argument("--scheduler", metavar="ADDRESS", help="score the exams on the Dask cluster at ADDRESS (e.g. "
                   "tcp://node01:8786); its workers write the reports, so DIR and the exams must be on a shared disk")
    p.add_argument("--workers", type=int, metavar="N", help="score the exams on a Dask cluster of N worker processes "
                   "started on this machine")
    p.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    p.add_argument("--min-area-mm2", type=float, default=None, help="smallest lesion area in mm^2 (e.g. 1.0)")
    p.add_argument("--min-pixels", type=int, default=3, help="smallest lesion in pixels (default 3)")
    p.add_argument("--calibration", type=float, default=None, help="mass calibration, mg / (HU * mm^3)")
    p.add_argument("--no-localise", action="store_true", help="keep calcium the networks find outside the chest "
                   "region between the lungs (by default it is discarded: bone, arms, the image border)")
    p.add_argument("--keep-specks", action="store_true", help="score objects standing less than 5 noise SDs above "
                   "their surroundings (by default they are left out as image noise, with a warning)")
    p.add_argument("--keep-in-air", action="store_true", help="score objects surrounded by air (by default they are "
                   "left out as lung granulomas or clips, with a warning)")
    p.add_argument("--no-adapt-noise", action="store_true", help="show the networks an exam noisier than their "
                   "training as it is (by default it is shown to them smoothed in-plane, its noise brought to 0.875 of "
                   "the top of their training range: 35 HU for the shipped ones; with a warning; the score is read "
                   "from the exam as it is)")
    p.add_argument("--thin-slices", choices=THIN_SLICES, default="slab",
                   help="exams with slices under 2 mm: 'slab' (default) scores 3 mm slabs (the mean of 3 mm of slices), "
                   "as a 3 mm reconstruction is scored clinically; 'native' scores the thin slices")
    p.add_argument("--allow-phantom", action="store_true", help="score an exam that looks like a phantom (its "
                   "cross-section repeats along z) instead of refusing it; the networks miss most phantom inserts")
    p.add_argument("--assume-non-contrast", action="store_true", help="score an exam whose mediastinum reads "
                   "contrast-enhanced instead of refusing it (CONTRAST_ENHANCED), the chest region kept: for a "
                   "non-contrast exam whose narrow mediastinum is mostly spine and sternum")
    p.add_argument("--allow-noisy", action="store_true", help="score an exam far noisier than the networks' "
                   "training (a sharp kernel the header does not name, a thin low-dose reconstruction) instead of refusing it "
                   "(TOO_NOISY), with the noise warning; the networks miss calcium in such noise")
    p.add_argument("--allow-sharp-kernel", action="store_true", help="score an exam whose DICOM kernel is a bone or "
                   "lung kernel (GE LUNG / BONE, Siemens B60f and sharper) instead of refusing it (SHARP_KERNEL), with "
                   "a warning; the score reads high")
    for name in _RELAXATIONS:
        p.add_argument("--" + name.replace("_", "-"), action="store_true", help=f"read_volume({name}=True)")
    p.add_argument("--no-server", action="store_true", help="run in this process even when `agatax serve` runs")
    p.set_defaults(run=run_score)


class _JsonSink:
    """Collects results for ``--json``: a list written at the end, or JSON lines written as they come."""

    def __init__(self, target: str | None, *, lines: bool, batch: bool) -> None:
        self.target, self.lines, self.batch = target, lines, batch
        self.items: list[dict[str, Any]] = []
        self.handle = None
        if target and lines:
            self.handle = sys.stdout if target == "-" else _open_for_writing(target)

    def add(self, item: dict[str, Any]) -> None:
        if self.handle is not None:
            self.handle.write(json.dumps(item, allow_nan=False) + "\n")
            self.handle.flush()
        else:
            self.items.append(item)

    def close(self) -> None:
        if self.handle is not None:
            if self.handle is not sys.stdout:
                self.handle.close()
            return
        if not self.target or not self.items and not self.batch:
            return
        value: Any = self.items if self.batch else self.items[0]
        text = json.dumps(value, indent=2, allow_nan=False) + "\n"
        if self.target == "-":
            sys.stdout.write(text)
        else:
            atomic_write_text(self.target, text)


def _open_for_writing(target: str):
    path = Path(target)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # JSON lines stream into the file: never through a symlink
        return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o666), "w")
    except OSError as err:
        raise ReadError(f"cannot write {path}: {err}", code="WRITE_ERROR", paths=[path]) from None


def _png_slices(text: str) -> int | None:
    if text == "all":
        return None
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise InputError(f"--png-slices takes 'all' or a number of slices >= 1; got {text!r}", code="BAD_ARGUMENT")


def _check_score_args(args: argparse.Namespace) -> None:
    """Refuse bad option values and combinations before any work."""
    bounds = [("--jobs", args.jobs, args.jobs >= 0, "0 or more"),
              ("--min-pixels", args.min_pixels, args.min_pixels >= 1, "1 or more"),
              ("--min-area-mm2", args.min_area_mm2, args.min_area_mm2 is None or args.min_area_mm2 > 0, "above 0"),
              ("--calibration", args.calibration, args.calibration is None or args.calibration > 0, "above 0")]
    for name, value, ok, wanted in bounds:
        if not ok or (isinstance(value, float) and not np.isfinite(value)):
            raise InputError(f"{name} must be {wanted}; got {value}", code="BAD_ARGUMENT")
    _png_slices(args.png_slices)
    if getattr(args, "scheduler", None) is not None or getattr(args, "workers", None) is not None:
        from agatax.cluster import check_cluster_args

        check_cluster_args(args.scheduler, args.workers)
    if args.mask and args.weights:
        raise InputError("--mask and --weights exclude each other: a given mask needs no networks",
                         code="BAD_ARGUMENT")
    if getattr(args, "dicom", False) and not args.report:
        raise InputError("--dicom writes into the report folder: it needs --report DIR", code="BAD_ARGUMENT")
    if args.json_lines and not args.json:
        raise InputError("--json-lines needs --json OUT|-", code="BAD_ARGUMENT")
    if args.report and Path(args.report).exists() and not Path(args.report).is_dir():
        raise ReadError(f"--report {args.report} exists and is not a folder", code="NOT_A_FOLDER",
                        hint="give a folder path (created if needed)", paths=[args.report])


def _writable_folder(folder: Path, what: str) -> None:
    """Create ``folder`` if needed and make sure a file can be created in it (OUTPUT_NOT_WRITABLE)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".agatax-probe.{os.getpid()}.0.tmp"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as err:
        raise ReadError(f"{what}: cannot write into {folder} ({err.strerror or err})", code="OUTPUT_NOT_WRITABLE",
                        hint="choose a folder you can write to", paths=[folder]) from None


def _check_outputs(report_dir: Path | None, summary_path: Path | None, json_target: str | None) -> None:
    """Every output can be written: checked before any exam is read or any weights loaded."""
    if report_dir is not None:
        _writable_folder(report_dir, f"--report {report_dir}")
    for what, target in (("--summary", summary_path), ("--json", json_target)):
        if target is None or target == "-":
            continue
        target = Path(target)
        if target.is_dir():
            raise ReadError(f"{what} {target} is a folder; a file path is needed", code="OUTPUT_NOT_WRITABLE",
                            hint="give a file name", paths=[target])
        _writable_folder(target.parent, f"{what} {target}")


@contextlib.contextmanager
def _sigint_stops(stop: threading.Event):
    """While the block runs, the first Ctrl-C (SIGINT, even where the parent shell ignored it) sets ``stop``
    and raises KeyboardInterrupt; later ones are ignored so that the cleanup (the writes in progress, the
    summary) finishes."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if not stop.is_set():
            stop.set()
            raise KeyboardInterrupt

    def unraisable(info):  # raised inside a finaliser or gc callback: stop is set, the batch stops anyway
        if not isinstance(info.exc_value, KeyboardInterrupt):
            previous_hook(info)

    previous, previous_hook = signal.signal(signal.SIGINT, handler), sys.unraisablehook
    sys.unraisablehook = unraisable
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = previous_hook


def run_score(args: argparse.Namespace) -> int:
    stop = getattr(args, "stop_event", None) or threading.Event()  # set by main's Ctrl-C handler
    counts = {"scored": 0, "total": None}
    try:
        code = _run_score(args, stop, counts)
    except KeyboardInterrupt:
        code = 130
    except Exception:
        if not stop.is_set():
            raise
        code = 130  # Ctrl-C inside an import or a native call surfaces as another exception
    if code == 130:
        total = "?" if counts["total"] is None else counts["total"]
        print(f"interrupted: {counts['scored']} of {total} exams scored; re-run the same command to continue",
              file=sys.stderr)
    return code


def _provenance(task, scorer: ExamScorer, weights: str | None) -> dict[str, Any]:
    """What an exam's results were made from: re-runs keep a report only when all of it matches."""
    from agatax import __version__

    return {"source": str(Path(task.path).expanduser().resolve()), "files": files_fingerprint(task.path),
            "options": scorer.options(), "weights": weights, "agatax_version": __version__,
            "agatax_code": code_fingerprint()}


_PROVENANCE_NAMES = {"source": "source path", "files": "input files", "weights": "weights",
                     "agatax_version": "agatax version", "agatax_code": "agatax code"}


def _changed(old: Any, new: dict[str, Any]) -> str | None:
    """Why a report with provenance ``old`` is not the result of ``new`` (None: it is)."""
    if not isinstance(old, dict):
        return "re-scored: earlier report has no provenance"
    changed = [_PROVENANCE_NAMES[k] for k in _PROVENANCE_NAMES if old.get(k) != new[k]]
    options = old.get("options") if isinstance(old.get("options"), dict) else {}
    # every option either run set (an option given before and not now, e.g. --allow-sharp-kernel, counts too)
    changed += [f"--{k.replace('_', '-')}" for k in sorted(set(new["options"]) | set(options))
                if options.get(k) != new["options"].get(k)]
    return f"re-scored: {', '.join(changed)} changed" if changed else None


def _run_score(args: argparse.Namespace, stop: threading.Event, counts: dict[str, Any]) -> int:
    from agatax import batch as batching
    from agatax._atomic import folder_lock, remove_stale_temps

    _check_score_args(args)
    report_dir = Path(args.report) if args.report else None
    summary_path = Path(args.summary) if args.summary else (report_dir / "summary.csv" if report_dir else None)
    _check_outputs(report_dir, summary_path, args.json)
    png = not args.no_png
    png_slices = _png_slices(args.png_slices)
    if report_dir is not None and png:
        from agatax.report import require_matplotlib

        try:
            require_matplotlib()  # refuse before any exam is scored
        except AgataxError as err:
            raise AgataxError(err.message, code=err.code,
                              hint=f"{err.hint}, or pass --no-png to write the reports without pictures") from None
    if getattr(args, "dicom", False):
        from agatax.dicom_report import require_highdicom

        require_highdicom()
    locked = report_dir if report_dir is not None else (summary_path.parent if summary_path is not None else None)
    with (folder_lock(locked) if locked is not None else contextlib.nullcontext()):
        for folder in {p for p in (report_dir, summary_path and summary_path.parent) if p is not None}:
            remove_stale_temps(folder)
        tasks, is_batch = batching.discover_exams(args.paths)
        counts["total"] = len(tasks)
        if getattr(args, "dicom", False):
            from agatax.dicom_report import check_dicom_input

            check_dicom_input(task.path for task in tasks)  # NIfTI exams: refused before any work
        if args.mask and len(tasks) != 1:
            raise InputError(f"--mask scores one exam; {len(tasks)} exams were given", code="MASK_WITH_BATCH",
                             hint="score the exams one by one with their masks, or drop --mask to run the networks")
        device = select_device(args.device)
        if not args.mask:
            from agatax import compile_cache

            compile_cache.enable()  # a second run on an exam of this shape loads the compiled code
        with (contextlib.nullcontext() if device is None else _default_device(device)):
            ensemble = None if args.mask else load_weights(args.weights)
            weights = None if args.mask else weights_identity(args.weights)
            scorer = ExamScorer(mask=args.mask, ensemble=ensemble, series=args.series, calibration=args.calibration,
                                min_pixels=args.min_pixels, min_area_mm2=args.min_area_mm2,
                                localise=not args.no_localise, about={"device": device_name(device), "weights": weights},
                                thin_slices=args.thin_slices, allow_phantom=args.allow_phantom,
                                assume_non_contrast=args.assume_non_contrast, keep_specks=args.keep_specks,
                                keep_in_air=args.keep_in_air, adapt_noise=not args.no_adapt_noise,
                                allow_noisy=args.allow_noisy, allow_sharp_kernel=args.allow_sharp_kernel,
                                **{name: getattr(args, name) for name in _RELAXATIONS})
            return _score_tasks(args, stop, counts, tasks, is_batch, scorer, weights, report_dir, summary_path,
                                png, png_slices)


def _score_tasks(args, stop, counts, tasks, is_batch, scorer, weights, report_dir, summary_path, png, png_slices):
    from agatax import batch as batching
    from agatax.report import report_paths, summary_row_from_report

    provenance = {task: _provenance(task, scorer, weights) for task in tasks}
    if report_dir is not None:  # an id whose report holds another exam's results gets a hash of its source
        renamed = {}
        for task, made in provenance.items():
            old = _read_json(report_paths(report_dir, task.exam_id)["json"])
            source = (old or {}).get("provenance")
            source = source.get("source") if isinstance(source, dict) else None
            if isinstance(source, str) and source != made["source"]:
                # cut as agatax.batch cuts ids, so that the hash survives the file name's 80 characters
                task = batching.ExamTask(f"{task.exam_id[:71]}_{batching.source_hash(task.path)}", task.path)
            renamed[task] = made
        provenance = renamed
        tasks = list(provenance)
    notes: dict[str, str] = {}
    dicom = bool(getattr(args, "dicom", False))
    previous = batching.read_summary_rows(summary_path) if summary_path is not None else {}
    carried: dict[str, dict[str, Any]] = {}
    had_report: set[str] = set()  # exams whose folder held a report before this run

    def existing(task):
        if report_dir is None:
            return None
        paths = report_paths(report_dir, task.exam_id, png=png, dicom=dicom)
        old = _read_json(paths["json"])
        if old is None:
            if paths["json"].exists():
                notes[task.exam_id] = "re-scored: earlier report unreadable"
            elif previous.get(task.exam_id, {}).get("status") == "failed":
                carried[task.exam_id] = previous[task.exam_id]  # kept until it is retried
            return None
        carried[task.exam_id] = summary_row_from_report(paths["json"])
        had_report.add(task.exam_id)
        if args.overwrite:
            return None
        note = _changed(old.get("provenance"), provenance[task])
        if note is None and not all(p.is_file() for p in paths.values()):
            note = "re-scored: report files missing"
        if note is not None:
            notes[task.exam_id] = note
            return None
        return old, carried[task.exam_id]

    from agatax.cluster import dask_executor
    from agatax.exam_job import ExamJob

    # the read / score / write functions of every batch: run here, or by a cluster's workers (only the executor differs)
    job = ExamJob.from_scorer(scorer, weights_path=args.weights, weights=weights, device=args.device,
                              report_dir=report_dir, png=png, png_slices=png_slices, dicom=dicom)

    def finish(task, scored: ScoredExam, seconds: float):
        return job.finish(task, scored, seconds, provenance[task])

    json_to_stdout = args.json == "-"
    sink = _JsonSink(args.json, lines=args.json_lines, batch=is_batch)
    progress = batching.Progress(len(tasks), enabled=is_batch and len(tasks) > 1 and not args.quiet)

    def on_outcome(outcome) -> None:
        exam_id = outcome.task.exam_id
        if (outcome.status == "failed" and report_dir is not None and exam_id in had_report and not stop.is_set()
                and _verdict(outcome.error) and notes.get(exam_id, "").startswith("re-scored:")
                and "report files missing" not in notes[exam_id]):
            # the earlier report was made by other code, options or inputs, and this exam is now refused or
            # unreadable: the earlier score is not this run's, so it is not left in place looking current
            try:
                where = set_aside_report(report_dir, exam_id)
            except OSError as err:
                notes[exam_id] = f"its earlier report, not this run's, could not be moved aside ({err})"
            else:
                notes[exam_id] = f"its earlier report moved to {where}" if where is not None else notes[exam_id]
            if not is_batch and notes[exam_id].startswith("its earlier report"):
                print(f"note: {exam_id}: {notes[exam_id]}", file=sys.stderr)
        if outcome.status == "failed":
            item = _error_entry(outcome)
        else:
            item = dict(outcome.result)
            if is_batch:
                item["status"] = outcome.status
        if is_batch or outcome.status != "failed":
            sink.add(item)
        counts["scored"] += outcome.status != "failed"
        if json_to_stdout or (not is_batch and outcome.status == "failed"):
            return
        note = notes.get(outcome.task.exam_id)
        if len(tasks) == 1 and outcome.status != "failed":
            text = format_report(outcome.result)
            if outcome.status == "skipped":
                text += "\nnote:      results kept from an earlier run (--overwrite to score again)"
            elif note:
                text += f"\nnote:      {note}"
            if report_dir is not None:
                text += f"\nreport:    {report_paths(report_dir, outcome.task.exam_id, png=png)[('png' if png else 'json')]}"
        else:
            text = _one_line(outcome, note)
        progress.write(text)

    try:
        with dask_executor(job, provenance, scheduler=getattr(args, "scheduler", None),
                           workers=getattr(args, "workers", None)) as executor:
            outcome = batching.run_batch(
                tasks,
                read=job.read,
                score=job.score,
                finish=finish,
                existing=existing,
                summary_path=summary_path,
                summary_rows=carried,
                jobs=args.jobs,
                progress=progress,
                on_outcome=on_outcome,
                stop=stop,
                executor=executor,
            )
    finally:
        order = {task.exam_id: i for i, task in enumerate(tasks)}
        sink.items.sort(key=lambda item: order.get(item.get("exam_id"), len(order)))  # input order, wherever scored
        sink.close()
    if outcome.interrupted:
        return 130
    if not is_batch:
        single = outcome.outcomes[0]
        if single.status == "failed":
            raise single.error
        return EXIT_OK
    parts = [f"{outcome.ok} scored"] + [f"{n} {what}" for n, what in ((outcome.skipped, "kept from an earlier run"),
                                                                       (outcome.failed, "failed")) if n]
    where = f"; summary: {summary_path}" if summary_path is not None else ""
    print(f"agatax: {len(tasks)} exam{'' if len(tasks) == 1 else 's'}: {', '.join(parts)}{where}", file=sys.stderr)
    return EXIT_SOME_FAILED if outcome.failed else EXIT_OK


def _read_json(path: Path) -> dict[str, Any] | None:
    """A report JSON's content, None when absent or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@contextlib.contextmanager
def _default_device(device):
    import jax

    with jax.default_device(device):
        yield


# --------------------------------------------------------------------------------------------- evaluate


def add_evaluate_command(subparsers) -> None:
    """``agatax evaluate``: agreement of predicted with reference scores."""
    p = subparsers.add_parser(
        "evaluate",
        help="compare predicted scores with a reference (accuracy, C-index, kappa, Bland-Altman, confusion)",
        description=(
            "PRED: a CSV with exam_id and agatston columns (e.g. a summary.csv), or a --report folder "
            "(its summary.csv, else its per-exam JSON files). REF: a reference CSV with exam_id and agatston "
            "(e.g. a synthetic cohort's manifest.csv). Exams present in one table only are listed, not compared."
        ),
    )
    _add_debug(p)
    p.add_argument("pred", metavar="PRED", help="predicted scores: CSV or report folder")
    p.add_argument("ref", metavar="REF", help="reference scores: CSV (exam_id, agatston) or report folder")
    p.add_argument("--plot", metavar="DIR", help="write confusion.png and bland_altman.png into DIR")
    p.add_argument("--json", metavar="OUT", help="write the figures as JSON to OUT ('-' = stdout only)")
    p.add_argument("--lesions", action="store_true",
                   help="also lesion detection (sensitivity, PPV, F1): needs PRED to be a report folder with "
                   "<id>_mask.nii.gz and REF to have path and mask_path columns (a cohort manifest)")
    p.set_defaults(run=run_evaluate)


def _pred_table(path: Path) -> Path:
    """A report folder's summary.csv when it has one, else the path itself."""
    if path.is_dir() and (path / "summary.csv").is_file():
        return path / "summary.csv"
    return path


def _manifest_rows(path: Path, needed: Sequence[str]) -> dict[str, dict[str, str]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as err:
        raise ReadError(f"cannot read {path}: {err}", code="NOT_FOUND", paths=[path]) from None
    reader = csv.DictReader(text.splitlines())
    found = [c.strip() for c in reader.fieldnames or []]
    missing = [c for c in needed if c not in found]
    if missing:
        raise ReadError(f"{path}: columns found {found}; missing {missing}", code="MISSING_COLUMNS",
                        hint="--lesions needs a manifest with exam_id, path and mask_path", paths=[path])
    return {row["exam_id"].strip(): row for row in reader if (row.get("exam_id") or "").strip()}


def _lesion_pairs(pred_dir: Path, ref: Path, ids: Sequence[str]):
    from agatax.io import read_mask, read_volume
    from agatax.report import report_paths

    if not pred_dir.is_dir():
        raise InputError(f"--lesions needs PRED to be a report folder; {pred_dir} is not a folder",
                         code="BAD_ARGUMENT", hint="pass the --report folder of agatax score")
    rows = _manifest_rows(ref, ("exam_id", "path", "mask_path"))
    for exam_id in ids:
        row = rows[exam_id]
        volume = read_volume(ref.parent / row["path"])
        pred = read_mask(report_paths(pred_dir, exam_id)["mask"], like=volume)
        truth = read_mask(ref.parent / row["mask_path"], like=volume)
        yield pred, truth, volume


def run_evaluate(args: argparse.Namespace) -> int:
    from agatax.evaluate import evaluate_masks, evaluate_scores

    pred = Path(args.pred)
    ref = Path(args.ref)
    for what, path in (("PRED", pred), ("REF", ref)):
        if not path.exists():
            raise ReadError(f"{what} not found: {path}", code="NOT_FOUND", paths=[path])
    evaluation = evaluate_scores(_pred_table(pred), _pred_table(ref))
    if args.lesions:
        lesions = evaluate_masks(_lesion_pairs(pred, ref, evaluation.ids))
        evaluation = dataclasses.replace(evaluation, lesions=lesions)
    written = []
    if args.plot:
        folder = Path(args.plot)
        folder.mkdir(parents=True, exist_ok=True)
        written = [evaluation.plot_confusion(folder / "confusion.png"),
                   evaluation.plot_bland_altman(folder / "bland_altman.png")]
    if args.json:
        text = json.dumps(evaluation.to_dict(), indent=2, allow_nan=False) + "\n"
        if args.json == "-":
            sys.stdout.write(text)
            return EXIT_OK
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text)
    sys.stdout.write(evaluation.format_text() + "\n")
    for path in written:
        sys.stdout.write(f"plot:      {path}\n")
    return EXIT_OK


# --------------------------------------------------------------------------------------------- example


def add_example_command(subparsers) -> None:
    """``agatax example``: write synthetic exams as DICOM to try the other commands on."""
    p = subparsers.add_parser(
        "example",
        help="write a synthetic cardiac CT exam (DICOM series) with its true calcium",
        description=(
            "Write DIR/example_<seed>/ (a DICOM CT series), DIR/example_<seed>_mask.nii.gz (true calcium, "
            "labels 1..4 = LM, LAD, LCX, RCA), DIR/truth.json and DIR/manifest.csv (exam_id, path, mask_path, "
            "seed, agatston, category), then print the command to score them."
        ),
    )
    _add_debug(p)
    p.add_argument("directory", metavar="DIR", help="output folder (created if needed)")
    p.add_argument("--seed", type=int, default=0, help="first exam's seed (default 0)")
    p.add_argument("--matrix", type=int, default=512, help="pixels per row and column (default 512)")
    p.add_argument("--count", type=int, default=1, help="number of exams, seeds seed..seed+count-1 (default 1)")
    p.add_argument("--category", choices=tuple("ABCDE") + ("any",), default="D",
                   help="true risk category of the exams (default D: several lesions; 'any': drawn per exam)")
    p.add_argument("--overwrite", action="store_true", help="write over files in DIR that another command (or "
                   "agatax example with other arguments) wrote")
    p.set_defaults(run=run_example)


_EXAMPLE_RECORD = ".agatax-example.json"


def _example_conflicts(out: Path, arguments: dict[str, Any], ids: Sequence[str]) -> list[Path]:
    """Files in ``out`` that writing the example would replace and that an earlier ``agatax example`` with
    the same arguments did not write."""
    record = _read_json(out / _EXAMPLE_RECORD) or {}
    ours = set(record.get("files", [])) if record.get("arguments") == arguments else set()
    targets = [out / "manifest.csv", out / "truth.json"] + [out / f"{i}_mask.nii.gz" for i in ids]
    for exam_id in ids:
        if (out / exam_id).is_dir():
            targets += [p for p in (out / exam_id).rglob("*") if not p.is_dir()]
        elif (out / exam_id).exists() or (out / exam_id).is_symlink():
            targets.append(out / exam_id)
    return [p for p in targets if (p.exists() or p.is_symlink()) and str(p.relative_to(out)) not in ours]


def write_example(
    directory: str | os.PathLike, *, seed: int = 0, matrix: int = 512, count: int = 1, category: str | None = "D",
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Write ``count`` synthetic exams (``agatax.synthetic.generate_exam``) as DICOM series with their truth.

    ``category``: the exams' true risk category "A".."E", or None to draw it per exam. The files written
    are recorded in ``DIR/.agatax-example.json``; files that another command wrote are never deleted, and
    replaced only with ``overwrite`` (else InputError OUTPUT_EXISTS).

    Returns the manifest rows (exam_id, path, mask_path, seed, agatston, category, calcifications_3d).
    """
    from agatax.io import write_dicom_series
    from agatax.report import _nifti_bytes
    from agatax.synthetic import generate_exam

    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InputError(f"--count must be 1 or more; got {count!r}", code="BAD_ARGUMENT")
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise ReadError(f"{out} exists and is not a folder", code="NOT_A_FOLDER", paths=[out])
    arguments = {"seed": seed, "matrix": matrix, "count": count, "category": category}
    ids = [f"example_{s}" for s in range(seed, seed + count)]
    conflicts = [] if overwrite else _example_conflicts(out, arguments, ids)
    if conflicts:
        listed = ", ".join(str(p) for p in conflicts[:3]) + (f" and {len(conflicts) - 3} more" if len(conflicts) > 3 else "")
        raise InputError(f"{out} holds files agatax example did not write with these arguments: {listed}",
                         code="OUTPUT_EXISTS", hint="choose another DIR, or pass --overwrite to replace them",
                         paths=[str(p) for p in conflicts])
    previous = _read_json(out / _EXAMPLE_RECORD) or {}
    out.mkdir(parents=True, exist_ok=True)
    rows, truth, written = [], {}, ["manifest.csv", "truth.json"]
    for s, exam_id in zip(range(seed, seed + count), ids):
        exam = generate_exam(s, matrix=matrix, target_category=category)
        series_dir = out / exam_id
        for name in previous.get("files", []):  # slices of an earlier example: replaced, not mixed with
            if Path(name).parts[0] == exam_id:
                atomic_remove(out / name)
        slices = write_dicom_series(series_dir, exam.volume, patient_id=exam_id,
                                    series_description="agatax synthetic example")
        atomic_write_bytes(out / f"{exam_id}_mask.nii.gz", _nifti_bytes(exam.mask, exam.volume, "mask.nii.gz"))
        written += [str(Path(p).relative_to(out)) for p in slices] + [f"{exam_id}_mask.nii.gz"]
        rows.append({"exam_id": exam_id, "path": exam_id, "mask_path": f"{exam_id}_mask.nii.gz", "seed": s,
                     "agatston": f"{exam.agatston:.4f}", "category": exam.category,
                     "calcifications_3d": len(exam.lesions)})
        truth[exam_id] = {
            "seed": s,
            "agatston": round(float(exam.agatston), 4),
            "category": exam.category,
            "volume_mm3": round(float(exam.scores.volume_mm3), 4),
            "shape": list(exam.volume.shape),
            "spacing_mm": list(exam.volume.spacing),
            "calcifications_3d": [{"artery": les.get("artery"), "center_zyx": [int(v) for v in les["center_zyx"]],
                                   "peak_hu": float(les["peak_hu"])} for les in exam.lesions],
        }
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "manifest.csv", text.getvalue())
    atomic_write_text(out / "truth.json", json.dumps(truth, indent=2) + "\n")
    atomic_write_text(out / _EXAMPLE_RECORD, json.dumps({"arguments": arguments, "files": written}, indent=1) + "\n")
    return rows


def run_example(args: argparse.Namespace) -> int:
    category = None if args.category == "any" else args.category
    rows = write_example(args.directory, seed=args.seed, matrix=args.matrix, count=args.count, category=category,
                         overwrite=args.overwrite)
    out = Path(args.directory)
    report = out.parent / f"{out.name}-report"
    for row in rows:
        n = row["calcifications_3d"]
        print(f"wrote {out / row['path']}  (true Agatston {float(row['agatston']):.1f}, category {row['category']}, "
              f"{n} calcification{'' if n == 1 else 's'} (3D))")
    print(f"truth:     {out / 'manifest.csv'}, {out / 'truth.json'}, <exam>_mask.nii.gz")
    print(f"next:      agatax score {out} --report {report}")
    print(f"then:      agatax evaluate {report} {out / 'manifest.csv'} --lesions")
    return EXIT_OK


# --------------------------------------------------------------------------------------------- main


from agatax.serve import add_serve_command  # noqa: E402  (agatax serve: its own module)
from agatax.train_cli import add_train_command  # noqa: E402  (agatax train: its own module)

COMMANDS: list[Callable[[Any], None]] = [add_score_command, add_evaluate_command, add_example_command,
                                         add_train_command, add_serve_command]


def _add_debug(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")


def build_parser() -> argparse.ArgumentParser:
    """The ``agatax`` argument parser with every subcommand in ``COMMANDS``."""
    from agatax import __version__

    parser = argparse.ArgumentParser(
        prog="agatax",
        description="Coronary artery calcium scoring on cardiac CT.",
        epilog="exit status: 0 ok, 2 refused input, 3 a batch with failed exams, 1 unexpected failure",
    )
    parser.add_argument("--version", action="version", version=f"agatax {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 refused input, 3 some exams of a batch
    failed, 1 unexpected failure, 130 interrupted)."""
    if argv is None:  # the program itself: a running `agatax serve` takes the command if it can
        from agatax.serve import try_remote

        with _sigint_stops(threading.Event()):  # Ctrl-C reaches the served command even where it was ignored
            code = try_remote(sys.argv[1:])
        if code is not None:
            return code
    stop = threading.Event()
    with _sigint_stops(stop):  # at once: a Ctrl-C from here on stops the command cleanly
        args = build_parser().parse_args(argv)
        args.stop_event = stop
        code = _run(args)
    if code == 130 and argv is None:  # the program itself: skip the interpreter's teardown, which can crash
        sys.stdout.flush()            # while native threads (JAX's) still run
        sys.stderr.flush()
        os._exit(code)
    return code


def _run(args: argparse.Namespace) -> int:
    debug = bool(getattr(args, "debug", False))
    try:
        return int(args.run(args) or 0)
    except AgataxError as err:
        if debug:
            raise
        text = err.message + (f" (hint: {err.hint})" if err.hint else "")
        print(f"error [{err.code}]: {' '.join(text.split())}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("error [INTERRUPTED]: stopped by the user", file=sys.stderr)
        return 130
    except Exception as err:  # anything else is a bug: say so on one line, traceback with --debug
        if debug:
            raise
        message = " ".join(f"{type(err).__name__}: {err}".split())
        print(f"error [UNEXPECTED]: {message} (run with --debug for the traceback)", file=sys.stderr)
        return EXIT_UNEXPECTED
