"""Annotated cohorts on disk -> a trained ensemble, in one call (``train_cohort``).

A cohort is described by one or more DATA paths (``discover_cohort``):

* a **manifest CSV** with columns ``path`` and ``mask_path`` (optional ``exam_id``, ``split``), paths relative
  to the CSV's folder: the one ``agatax example`` and ``agatax.synthetic.write_cohort`` write;
* a **folder of exams** with ``<id>_mask.nii.gz`` beside each exam ``<id>`` (a DICOM subfolder or a NIfTI
  file): the layout ``agatax example --count N`` writes;
* a **COCA gated release** folder (``Gated_release_final`` or its parent: ``patient/`` and
  ``calcium_xml/``), detected by its layout; exams with a known defect of the release (ZERO_SPACING,
  NO_IMAGES) are left out and listed;
* an **annotated points CSV**: one row per calcification, columns ``exam_id``, ``x``, ``y``, ``z`` (optional
  ``path`` of the exam, else ``<id>`` beside the CSV; ``units`` ``mm`` (patient coordinates, default) or
  ``voxel`` (x column, y row, z slice index); ``artery``; ``split``), turned into masks by
  ``agatax.mask_from_points`` (the voxels >= 130 HU 3D-connected to a point; missed and snapped points
  reported).

``check_cohort`` reads every exam once before any training: each path exists and reads, each mask is on
its exam's grid with labels 0-4, exam ids are unique, at least one training exam has calcium; every problem
is collected (``CohortProblem``: code, file, message) and ``train_cohort`` refuses the cohort with all of
them listed (``CohortError``). Thin-slice exams are taken to 3 mm slabs (volume and mask,
``agatax.thick_slabs``), as they are scored.

    result = agatax.cohort.train_cohort(["cohort/manifest.csv"], members=5, init="default",
                                        workdir="work/")
    agatax.save_ensemble("mine.msgpack", result.ensemble)
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agatax.errors import AgataxError, CheckpointError, InputError, ReadError

__all__ = [
    "CohortExam",
    "Cohort",
    "CohortProblem",
    "CohortError",
    "CohortTraining",
    "discover_cohort",
    "load_exam",
    "check_cohort",
    "split_validation",
    "resolve_init",
    "train_cohort",
    "score_validation",
]

SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "": None}
MASK_SUFFIXES = ("_mask.nii.gz", "_mask.nii")


@dataclasses.dataclass(frozen=True)
class CohortExam:
    """One annotated exam of a cohort.

    Attributes:
        exam_id: unique id.
        path: the exam (DICOM folder or file, NIfTI file); for COCA the patient id's folder.
        kind: "mask" (a mask file), "points" (annotated points) or "coca".
        mask_path: the mask file (kind "mask").
        points: ((x, y, z), ...) (kind "points"), in ``units``.
        units: "mm" or "voxel".
        arteries: per point "LM"/"LAD"/"LCX"/"RCA" or None.
        split: "train", "val", "test" or None (not given).
        source: the DATA path that described the exam.
    """

    exam_id: str
    path: Path
    kind: str = "mask"
    mask_path: Path | None = None
    points: tuple = ()
    units: str = "mm"
    arteries: tuple | None = None
    split: str | None = None
    source: str = ""
    coca_root: Path | None = None

    def describe(self) -> dict[str, Any]:
        """JSON-safe identity (part of the pair cache's key)."""
        return {"id": self.exam_id, "path": str(self.path), "kind": self.kind,
                "mask": None if self.mask_path is None else str(self.mask_path),
                "points": [list(map(float, p)) for p in self.points], "units": self.units,
                "arteries": None if self.arteries is None else list(self.arteries), "split": self.split}


@dataclasses.dataclass
class Cohort:
    """Exams of one or more DATA paths, and notes on what was found (exams left out, ...)."""

    exams: list[CohortExam]
    notes: list[str] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.exams)


@dataclasses.dataclass(frozen=True)
class CohortProblem:
    """Why one exam (or the cohort) cannot be trained on: a code, the file at fault, a message."""

    code: str
    path: str
    message: str
    exam_id: str | None = None

    def line(self) -> str:
        return f"[{self.code}] {self.path}: {self.message}"


class CohortError(InputError):
    """The cohort was refused: ``problems`` lists every problem found (code COHORT_REFUSED when they are
    several codes, else theirs)."""

    def __init__(self, problems: Sequence[CohortProblem]):
        self.problems = tuple(problems)
        codes = sorted({p.code for p in problems})
        first = problems[0]
        if len(problems) == 1:
            message = f"{first.path}: {first.message}"
        else:
            message = (f"{len(problems)} problems in the training data: "
                       + "; ".join(p.line() for p in problems[:5])
                       + (f"; and {len(problems) - 5} more" if len(problems) > 5 else ""))
        super().__init__(message, code=codes[0] if len(codes) == 1 else "COHORT_REFUSED",
                         hint="fix or leave out the exams named (every problem is listed), then run again",
                         paths=[p.path for p in problems])


# --------------------------------------------------------------------------------------------- discovery


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as err:
        raise ReadError(f"cannot read {path}: {err}", code="NOT_FOUND", paths=[path]) from None
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(text.splitlines(), dialect=dialect)
    fields = [f.strip().lower() for f in reader.fieldnames or []]
    rows = [{(k or "").strip().lower(): (v or "").strip() for k, v in row.items()} for row in reader]
    return fields, rows


def _split(value: str | None, where: str, path: Path) -> str | None:
    key = (value or "").strip().lower()
    if key not in SPLIT_NAMES:
        raise ReadError(f"{where}: split {value!r} is not train, val or test", code="BAD_SPLIT", paths=[path])
    return SPLIT_NAMES[key]


def _exam_id_from(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _manifest(path: Path, rows: list[dict[str, str]]) -> list[CohortExam]:
    exams = []
    for n, row in enumerate(rows, start=2):
        if not row.get("path") and not row.get("mask_path"):
            continue
        where = f"{path} line {n}"
        if not row.get("path") or not row.get("mask_path"):
            raise ReadError(f"{where}: both path and mask_path are needed", code="MISSING_COLUMNS", paths=[path])
        exam = path.parent / row["path"]
        exams.append(CohortExam(row.get("exam_id") or _exam_id_from(exam), exam, "mask",
                                path.parent / row["mask_path"], split=_split(row.get("split"), where, path),
                                source=str(path)))
    return exams


def _points_csv(path: Path, rows: list[dict[str, str]]) -> list[CohortExam]:
    grouped: dict[str, dict[str, Any]] = {}
    for n, row in enumerate(rows, start=2):
        where = f"{path} line {n}"
        exam_id = row.get("exam_id", "")
        if not exam_id:
            raise ReadError(f"{where}: no exam_id", code="BAD_POINTS", paths=[path])
        try:
            point = tuple(float(row[c]) for c in ("x", "y", "z"))
        except ValueError:
            raise ReadError(f"{where}: x, y, z must be numbers; got {row['x']!r}, {row['y']!r}, {row['z']!r}",
                            code="BAD_POINTS", paths=[path]) from None
        if not all(math.isfinite(v) for v in point):
            raise ReadError(f"{where}: x, y, z must be finite", code="BAD_POINTS", paths=[path])
        units = (row.get("units") or "mm").lower()
        units = {"mm": "mm", "voxel": "voxel", "voxels": "voxel", "px": "voxel"}.get(units)
        if units is None:
            raise ReadError(f"{where}: units {row.get('units')!r} is not mm or voxel", code="BAD_POINTS",
                            paths=[path])
        entry = grouped.setdefault(exam_id, {"points": [], "arteries": [], "units": units, "path": row.get("path"),
                                             "split": _split(row.get("split"), where, path)})
        if entry["units"] != units:
            raise ReadError(f"{where}: exam {exam_id} mixes mm and voxel points", code="BAD_POINTS", paths=[path])
        entry["points"].append(point)
        entry["arteries"].append(row.get("artery") or None)
    exams = []
    for exam_id, entry in grouped.items():
        if entry["path"]:
            exam = path.parent / entry["path"]
        else:  # the exam beside the CSV: a folder <id>, or <id>.nii.gz / <id>.nii
            candidates = [path.parent / exam_id, path.parent / f"{exam_id}.nii.gz", path.parent / f"{exam_id}.nii"]
            exam = next((c for c in candidates if c.exists()), candidates[0])
        arteries = tuple(entry["arteries"]) if all(entry["arteries"]) else None
        exams.append(CohortExam(exam_id, exam, "points", points=tuple(entry["points"]), units=entry["units"],
                                arteries=arteries, split=entry["split"], source=str(path)))
    return exams


def _coca_root(path: Path) -> Path | None:
    for base in (path, path / "Gated_release_final"):
        if (base / "patient").is_dir() and (base / "calcium_xml").is_dir():
            return base
    return None


def _folder(path: Path) -> list[CohortExam]:
    entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    masks = {p.name[: -len(s)]: p for p in entries for s in MASK_SUFFIXES if p.name.lower().endswith(s)}
    exams, missing = [], []
    for p in entries:
        name = p.name.lower()
        if any(name.endswith(s) for s in MASK_SUFFIXES) or name.endswith("_seg.nii.gz"):
            continue
        if p.is_dir():
            if not any(f.is_file() for f in p.rglob("*")):
                continue
        elif not (name.endswith(".nii") or name.endswith(".nii.gz")):
            continue  # manifest.csv, truth.json, ...: not exams
        exam_id = _exam_id_from(p)
        if exam_id in masks:
            exams.append(CohortExam(exam_id, p, "mask", masks[exam_id], source=str(path)))
        else:
            missing.append(p)
    if missing:
        raise ReadError(
            f"{len(missing)} exam(s) in {path} have no mask beside them, e.g. {missing[0]} (expected "
            f"{missing[0].parent / (_exam_id_from(missing[0]) + '_mask.nii.gz')})",
            code="MISSING_MASK", hint="add <id>_mask.nii.gz, or list the annotated exams in a manifest CSV",
            paths=[str(m) for m in missing])
    return exams


def discover_cohort(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> Cohort:
    """The exams that DATA paths describe (see the module docstring for the four forms).

    Raises:
        ReadError NOT_FOUND (a path that does not exist), UNKNOWN_LAYOUT (neither form), MISSING_COLUMNS,
        BAD_SPLIT, BAD_POINTS, MISSING_MASK (an exam of a folder without its mask), NO_EXAMS.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    exams: list[CohortExam] = []
    notes: list[str] = []
    for given in paths:
        path = Path(given)
        if not str(given).strip():
            raise ReadError("an empty DATA path", code="BAD_PATH")
        if not path.exists():
            raise ReadError(f"DATA not found: {path}", code="NOT_FOUND", paths=[path])
        if path.is_file() and path.suffix.lower() in (".csv", ".tsv", ".txt"):
            fields, rows = _read_csv(path)
            if "path" in fields and "mask_path" in fields:
                found = _manifest(path, rows)
            elif {"exam_id", "x", "y", "z"} <= set(fields):
                found = _points_csv(path, rows)
            else:
                raise ReadError(
                    f"{path}: columns {fields}: neither a manifest (path, mask_path) nor annotated points "
                    "(exam_id, x, y, z)", code="MISSING_COLUMNS", paths=[path])
        elif path.is_dir() and _coca_root(path) is not None:
            from agatax.datasets import CocaDataset

            root = _coca_root(path)
            found = [CohortExam(i, root / "patient" / i, "coca", source=str(path), coca_root=root)
                     for i in CocaDataset(root).ids()]
            notes.append(f"{path}: COCA gated release, {len(found)} patients")
        elif path.is_dir():
            found = _folder(path)
        else:
            raise ReadError(
                f"{path}: not a manifest CSV, a points CSV, a folder of exams with <id>_mask.nii.gz, or a COCA "
                "release", code="UNKNOWN_LAYOUT", paths=[path])
        if not found:
            raise ReadError(f"{path}: no annotated exams found", code="NO_EXAMS", paths=[path])
        exams.extend(found)
    return Cohort(exams, notes)


# --------------------------------------------------------------------------------------------- reading


@dataclasses.dataclass
class LoadedExam:
    """An exam read for training: Volume (3 mm slabs for thin slices), labels uint8 on its grid, notes."""

    exam: CohortExam
    volume: Any
    mask: np.ndarray
    notes: list[str]


def _points_to_voxels(exam: CohortExam, volume) -> np.ndarray:
    pts = np.asarray(exam.points, np.float64).reshape(-1, 3)
    if exam.units == "voxel":
        return pts[:, ::-1]  # (x, y, z) -> (z, y, x)
    homogeneous = np.hstack([pts, np.ones((len(pts), 1))])
    return np.linalg.solve(volume.affine, homogeneous.T).T[:, :3]  # affine: (z, y, x) index -> mm


_COCA_CACHE: dict[str, Any] = {}


def _coca(root: Path, read_options: dict):
    from agatax.datasets import CocaDataset

    key = json.dumps([str(root), sorted(read_options.items())], default=str)
    if key not in _COCA_CACHE:
        _COCA_CACHE[key] = CocaDataset(root, **read_options)
    return _COCA_CACHE[key]


def load_exam(exam: CohortExam, *, slabs: bool = True, read_options: dict | None = None) -> LoadedExam:
    """Read one cohort exam with its mask (from the mask file, the points or the COCA outlines), both taken
    to 3 mm slabs when the exam has thin slices (``slabs``).

    Raises:
        the readers' AgataxErrors (NOT_FOUND, MASK_MISMATCH, BAD_MASK, POINT_OUTSIDE, ZERO_SPACING, ...).
    """
    from agatax.io import read_mask, read_volume
    from agatax.slabs import thick_slabs

    read_options = dict(read_options or {})
    notes: list[str] = []
    if exam.kind == "coca":
        coca = _coca(exam.coca_root, read_options).load(exam.exam_id)
        volume, mask = coca.volume, np.asarray(coca.mask, np.uint8)
        notes += list(coca.warnings)
    else:
        if not exam.path.exists():
            raise ReadError(f"exam {exam.exam_id}: {exam.path} does not exist", code="NOT_FOUND", paths=[exam.path])
        volume = read_volume(exam.path, **read_options)
        if exam.kind == "mask":
            if not exam.mask_path.exists():
                raise ReadError(f"exam {exam.exam_id}: mask {exam.mask_path} does not exist", code="NOT_FOUND",
                                paths=[exam.mask_path])
            import warnings

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                mask = np.asarray(read_mask(exam.mask_path, like=volume), np.uint8)
            notes += [str(w.message) for w in caught]
        else:
            from agatax.groundtruth import mask_from_points

            zyx = _points_to_voxels(exam, volume)
            truth = mask_from_points(volume, zyx, arteries=exam.arteries)
            mask = np.asarray(truth.mask, np.uint8)
            exact = sum(1 for p, s in zip(np.rint(zyx).astype(int).tolist(), truth.snapped_points)
                        if s is not None and tuple(p) == tuple(s))
            snapped = sum(1 for s in truth.snapped_points if s is not None) - exact
            notes.append(f"{len(zyx)} points: {exact} on calcium, {snapped} snapped to a neighbour, "
                         f"{len(truth.missed_points)} missed")
    if slabs:
        volume, mask = thick_slabs(volume, mask)
    return LoadedExam(exam, volume, np.asarray(mask, np.uint8), notes)


def _fingerprint_exam(exam: CohortExam) -> dict:
    from agatax.cli import files_fingerprint

    doc = exam.describe()
    doc["files"] = files_fingerprint(exam.path) if exam.path.exists() else None
    if exam.mask_path is not None:
        doc["mask_files"] = files_fingerprint(exam.mask_path) if exam.mask_path.exists() else None
    if exam.kind == "coca":
        xml = exam.coca_root / "calcium_xml" / f"{exam.exam_id}.xml"
        doc["xml"] = files_fingerprint(xml) if xml.exists() else None
    return doc


def cohort_key(cohort: Cohort, **options) -> str:
    """A hash of the cohort's exams (paths, files' names, sizes and times) and of the reading options."""
    # version 2: exams of slices thicker than 3.5 mm go to the 3 mm network grid (agatax.preprocess.network_grid_mm);
    # version 3: each pair's extra holds the exam's measured noise (noise_hu: the trained noise range)
    doc = {"exams": [_fingerprint_exam(e) for e in cohort.exams], "options": options, "version": 3}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclasses.dataclass
class CheckedCohort:
    """A cohort read and checked: its coarse pairs (``TrainingSet``, one per exam kept, named by exam id),
    the exams kept (same order), the exams left out as known defects, and notes."""

    pairs: Any
    exams: list[CohortExam]
    left_out: list[CohortProblem]
    notes: list[str]


def check_cohort(cohort: Cohort, *, slabs: bool = True, read_options: dict | None = None,
                 log: Callable[[str], None] | None = None, skip_codes: Sequence[str] = ("ZERO_SPACING", "NO_IMAGES"),
                 progress: Callable[[int, int], None] | None = None, box_mm: float | None = None,
                 dense_gain: float = 0.0) -> CheckedCohort:
    """Read every exam once, check it and take it to the network's grid; refuse the cohort (``CohortError``
    listing every problem) when any exam cannot be trained on. ``box_mm``: the pre-processing's enhancement
    box, the ``UNetConfig.input_box_mm`` of the networks to train (default ``agatax.preprocess.ENHANCE_BOX_MM``);
    ``dense_gain``: their ``UNetConfig.input_dense_gain``.

    Checks: unique exam ids (DUPLICATE_ID), every path exists and reads (the readers' codes), masks on their
    exam's grid (MASK_MISMATCH) with labels 0-4 (BAD_MASK), points inside their exam (POINT_OUTSIDE), at
    least one exam with calcium (NO_CALCIUM). COCA exams with a known defect of the release (``skip_codes``)
    are left out and listed, not refused.
    """
    from agatax.preprocess import ENHANCE_BOX_MM
    from agatax.train import TrainingSet, prepare_pairs

    box_mm = ENHANCE_BOX_MM if box_mm is None else float(box_mm)
    problems: list[CohortProblem] = []
    seen: dict[str, CohortExam] = {}
    for exam in cohort.exams:
        if exam.exam_id in seen:
            problems.append(CohortProblem("DUPLICATE_ID", str(exam.source or exam.path),
                                          f"exam id {exam.exam_id!r} names both {seen[exam.exam_id].path} and "
                                          f"{exam.path}", exam.exam_id))
        seen[exam.exam_id] = exam
    images, targets, names, extra, kept, left_out, notes = [], [], [], [], [], [], []
    for n, exam in enumerate(cohort.exams):
        if progress is not None:
            progress(n, len(cohort.exams))
        if exam.split == "test":
            notes.append(f"{exam.exam_id}: split test, not used for training")
            continue
        try:
            loaded = load_exam(exam, slabs=slabs, read_options=read_options)
            pair = prepare_pairs([(loaded.volume, loaded.mask)], box_mm=box_mm, dense_gain=dense_gain)
        except AgataxError as err:
            message = err.message if f"exam {exam.exam_id}" in err.message else f"exam {exam.exam_id}: {err.message}"
            problem = CohortProblem(err.code, err.paths[0] if err.paths else str(exam.path), message, exam.exam_id)
            if exam.kind == "coca" and err.code in skip_codes:
                left_out.append(problem)
            else:
                problems.append(problem)
            continue
        notes += [f"{exam.exam_id}: {note}" for note in loaded.notes]
        calcium = int(np.count_nonzero(loaded.mask))
        images += pair.images
        targets += pair.targets
        names.append(exam.exam_id)
        extra.append({**pair.extra[0], "calcium_voxels": calcium, "split": exam.split})  # with its noise_hu
        kept.append(exam)
    if not problems and kept and not any(e["calcium_voxels"] for e in extra):
        problems.append(CohortProblem("NO_CALCIUM", str(cohort.exams[0].source or cohort.exams[0].path),
                                      f"none of the {len(kept)} exams has calcium in its mask: nothing to learn"))
    if not problems and not kept:
        problems.append(CohortProblem("NO_EXAMS", str(cohort.exams[0].source if cohort.exams else "-"),
                                      "no exam left to train on"))
    if problems:
        raise CohortError(problems)
    return CheckedCohort(TrainingSet(images, targets, names, extra, box_mm=box_mm, dense_gain=float(dense_gain)),
                         kept, left_out, notes)


# --------------------------------------------------------------------------------------------- training


def split_validation(n: int, validation: float | int, seed: int, *, fixed_val: Sequence[int] = (),
                     fixed_train: Sequence[int] = (), calcium: Sequence[bool] | None = None
                     ) -> tuple[list[int], list[int]]:
    """Indices (train, validation) of ``n`` exams: ``validation`` exams (an int) or that share (a float in
    (0, 1), rounded, at least 1) drawn at random with ``seed`` (``numpy.random.default_rng(seed)``'s
    permutation, its first ones), unless exams carry a split: ``fixed_val`` are the validation exams
    then, ``fixed_train`` always train. ``calcium`` (bool per exam): where the draw holds no exam with
    calcium, its last exam gives way to the next one with calcium in the permutation, leaving one with
    calcium to train on (a calcium-free validation set makes the validation Dice 0 whatever the networks
    do); the draw is unchanged otherwise."""
    if fixed_val:
        return [i for i in range(n) if i not in set(fixed_val)], sorted(fixed_val)
    free = [i for i in range(n) if i not in set(fixed_train)]
    if isinstance(validation, float) and 0 < validation < 1:
        count = max(1, int(round(validation * len(free))))
    else:
        count = int(validation)
    count = min(count, max(len(free) - (0 if fixed_train else 1), 0))  # at least one exam left to train on
    order = [free[i] for i in np.random.default_rng(seed).permutation(len(free))]
    picked = order[:count]
    if calcium is not None and picked and not any(calcium[i] for i in picked):
        rest = [i for i in order[count:] if calcium[i]]
        if len(rest) >= 2 or (rest and fixed_train and any(calcium[i] for i in fixed_train)):
            picked = picked[:-1] + rest[:1]
    val = sorted(picked)
    return sorted(set(range(n)) - set(val)), val


def resolve_init(init, model_config=None):
    """The Ensemble to fine-tune from: "default" (the shipped ensemble), "none"/None (fresh networks), a
    file written by ``save_ensemble``, or an Ensemble. Checks ``model_config`` against it (CONFIG_MISMATCH)."""
    from agatax.ensemble import Ensemble, load_ensemble

    if init is None or (isinstance(init, str) and init.lower() == "none"):
        return None
    if isinstance(init, Ensemble):
        ensemble = init
    elif isinstance(init, str) and init == "default":
        from agatax.defaults import load_default_ensemble

        ensemble = load_default_ensemble()
    else:
        ensemble = load_ensemble(init)
    if model_config is not None and (model_config.levels, model_config.base_filters) != (
            ensemble.config.levels, ensemble.config.base_filters):
        raise CheckpointError(
            f"the starting ensemble is UNetConfig(levels={ensemble.config.levels}, "
            f"base_filters={ensemble.config.base_filters}); asked for levels={model_config.levels}, "
            f"base_filters={model_config.base_filters}", code="CONFIG_MISMATCH",
            hint="fine-tuning keeps the starting ensemble's architecture: leave out the model choice, or --init none")
    return ensemble


@dataclasses.dataclass
class CohortTraining:
    """What ``train_cohort`` returns: the ensemble, each member's validation history, the exam ids trained
    and validated on, the cohort exams validated on (None for pairs given directly), notes."""

    ensemble: Any
    histories: list
    train_ids: list[str]
    val_ids: list[str]
    val_exams: list[CohortExam] | None
    notes: list[str]
    left_out: list[CohortProblem]


def train_cohort(
    data,
    *,
    members: int = 5,
    config=None,
    model_config=None,
    init="default",
    validation: float | int = 0.2,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    workdir: str | os.PathLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    slabs: bool = True,
    read_options: dict | None = None,
    log: Callable[[str], None] | None = print,
    on_step: Callable[[int, int, dict], None] | None = None,
    on_data: Callable[[int, int], None] | None = None,
    collapse_retries: int = 2,
) -> CohortTraining:
    """From a cohort description to a trained Ensemble (the path of ``agatax train`` and of
    ``experiments/table1.py``).

    Args:
        data: DATA paths (one or a list: manifest CSV, folder of exams, COCA release, points CSV), a
            ``Cohort``, exams (``SyntheticExam``, ``(Volume, mask)`` ...: ``prepare_pairs``'s input) or a
            ``TrainingSet`` of prepared pairs.
        members: networks in the ensemble.
        config: ``TrainConfig`` (default ``TrainConfig()``; its ``seed`` is replaced by ``seed``).
        model_config: ``UNetConfig`` (default: the starting ensemble's, else the paper's).
        init: "default" (fine-tune the shipped ensemble), "none" / None, an ensemble file or an Ensemble.
        validation: validation exams (int) or share (float in (0, 1)); exams with a ``split`` column
            override it; 0: no validation (the last step is kept).
        seed: data-stream and initialisation seed of member 0 (member k: ``seed + k``, or ``seeds``) and
            of the validation draw.
        workdir: the pair cache (``pairs_<key>.npz``, keyed by the exams' files and options) and, unless
            ``checkpoint_dir``, the checkpoints (``workdir/checkpoints``): a run resumes from them exactly.
        slabs: thin-slice exams taken to 3 mm slabs (as ``agatax score`` scores them).
        read_options: ``read_volume`` relaxations (allow_small, ...).
        log: print-like callable for notes (None: silent).
        on_step: on_step(member, step, info) after every training step (progress bars).
        on_data: on_data(done, total) while exams are read.

    Raises:
        CohortError (every problem of the data, before any training), CheckpointError (starting weights,
        checkpoints of another run: CHECKPOINT_MISMATCH), InputError (settings).
    """
    from agatax.model import UNetConfig
    from agatax.train import TrainConfig, TrainingSet, prepare_pairs, train_ensemble

    say = log or (lambda _msg: None)
    config = TrainConfig() if config is None else config
    config = dataclasses.replace(config, seed=int(seed))
    if isinstance(validation, bool) or not isinstance(validation, (int, float)) or validation < 0 or (
            isinstance(validation, float) and not validation.is_integer() and validation >= 1):
        raise InputError(f"validation must be a count >= 0 or a share in (0, 1); got {validation!r}",
                         code="BAD_ARGUMENT")
    if isinstance(members, bool) or not isinstance(members, int) or members < 1:
        raise InputError(f"members must be 1 or more; got {members!r}", code="BAD_ARGUMENT")
    start = resolve_init(init, model_config)
    model_config = start.config if start is not None else (model_config or UNetConfig())
    workdir = None if workdir is None else Path(workdir)
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)

    val_exams = None
    cohort_exams: list[CohortExam] | None = None
    left_out: list[CohortProblem] = []
    notes: list[str] = []
    if isinstance(data, TrainingSet):
        pairs = data
    elif isinstance(data, (str, os.PathLike, Cohort)) or (
            isinstance(data, (list, tuple)) and data and all(isinstance(d, (str, os.PathLike)) for d in data)):
        cohort = data if isinstance(data, Cohort) else discover_cohort(data)
        notes += cohort.notes
        key = cohort_key(cohort, slabs=slabs, read_options=read_options or {}, multiple=8,
                         **model_config.input_options)
        cache = None if workdir is None else workdir / f"pairs_{key}.npz"
        meta = None if cache is None else cache.with_suffix(".json")
        if cache is not None and cache.exists() and meta.exists():
            pairs = TrainingSet.load(cache)
            saved = json.loads(meta.read_text())
            by_id = {e.exam_id: e for e in cohort.exams}
            cohort_exams = [by_id[i] for i in saved["ids"]]
            left_out = [CohortProblem(**p) for p in saved["left_out"]]
            notes += saved["notes"]
            say(f"data: {len(pairs)} exams from the cache {cache.name} (files unchanged since they were checked)")
        else:
            checked = check_cohort(cohort, slabs=slabs, read_options=read_options, progress=on_data,
                                   **model_config.input_options)
            pairs, cohort_exams, left_out = checked.pairs, checked.exams, checked.left_out
            notes += checked.notes
            if cache is not None:
                pairs.save(cache)
                meta.write_text(json.dumps({"ids": [e.exam_id for e in cohort_exams], "notes": checked.notes,
                                            "left_out": [dataclasses.asdict(p) for p in left_out]}))
        for problem in left_out:
            notes.append(f"left out (known defect of the release): {problem.line()}")
    else:
        pairs = prepare_pairs(data, **model_config.input_options)

    fixed_val = fixed_train = ()
    if cohort_exams is not None:
        fixed_val = [i for i, e in enumerate(cohort_exams) if e.split == "val"]
        fixed_train = [i for i, e in enumerate(cohort_exams) if e.split == "train"]
    train_idx, val_idx = split_validation(len(pairs), validation, seed, fixed_val=fixed_val,
                                          fixed_train=fixed_train, calcium=[bool(np.any(t)) for t in pairs.targets])
    train, val = pairs.subset(train_idx), pairs.subset(val_idx)
    if not any(np.any(t) for t in train.targets):
        raise CohortError([CohortProblem("NO_CALCIUM", "-", f"none of the {len(train)} training exams has calcium "
                                         "on the network's grid: nothing to learn (the validation exams are "
                                         f"{', '.join(val.names[:5])})")])
    if cohort_exams is not None:
        val_exams = [cohort_exams[i] for i in val_idx]
    say(f"data: {len(train)} training exams, {len(val)} validation exams"
        + (f", {len(left_out)} left out" if left_out else ""))
    ckpt = checkpoint_dir if checkpoint_dir is not None else (None if workdir is None else workdir / "checkpoints")
    histories: list = []
    known = tuple(float(v) for v in model_config.trained_noise_hu)
    noise_range = trained_noise_range(known, train.extra, fresh=start is None)  # checked before any training
    if noise_range is None:
        notes.append(f"no training exam carries a noise measure: the networks' trained noise range stays "
                     f"{known[0]:g}-{known[1]:g} HU")
    elif noise_range != known:
        notes.append(f"trained noise range: {noise_range[0]:g}-{noise_range[1]:g} HU ("
                     + ("measured on the training exams" if start is None else
                        f"the starting networks' {known[0]:g}-{known[1]:g} widened to the training exams'")
                     + "): agatax score's noise warning, adaptation and refusal follow it")
    ensemble = train_ensemble(train, val if len(val) else None, config, model_config, members=members, seeds=seeds,
                              checkpoint_dir=ckpt, log=log, histories=histories, init=start, on_step=on_step,
                              collapse_retries=collapse_retries)
    if noise_range is not None and noise_range != known:
        ensemble = ensemble.replace(config=dataclasses.replace(ensemble.config, trained_noise_hu=noise_range))
    return CohortTraining(ensemble, histories, list(train.names), list(val.names), val_exams, notes, left_out)


def trained_noise_range(known: tuple[float, float], extra: Sequence[dict], *, fresh: bool = False
                        ) -> tuple[float, float] | None:
    """The noise SD range (low, high) HU networks trained on exams of ``extra`` (a ``TrainingSet``'s, with
    each exam's measured ``noise_hu``) were trained on, for ``UNetConfig.trained_noise_hu``: agatax score's
    noise warning, adaptation and refusal line (``agatax.quality``) follow its top.

    The training exams' range is their 5th to 95th percentile (``method="higher"``: for under 20 exams the
    noisiest one), so that one odd exam does not move it; the top is rounded up to 0.01 HU so that the
    exam that sets it lies inside it. ``fresh`` (networks trained from scratch): that range; else ``known``
    (the starting networks') widened to it, never narrowed. None when no exam carries a measure."""
    import math

    measured = [float(e["noise_hu"]) for e in extra
                if isinstance(e, dict) and e.get("noise_hu") is not None and math.isfinite(float(e["noise_hu"]))]
    if not measured:
        return None
    low = float(np.percentile(measured, 5, method="lower"))
    high = math.ceil(float(np.percentile(measured, 95, method="higher")) * 100.0 - 1e-6) / 100.0
    if fresh:
        return (round(low, 2), high)
    return (min(float(known[0]), round(low, 2)), max(float(known[1]), high))


def score_validation(ensemble, exams: Iterable[CohortExam], *, slabs: bool = True, read_options: dict | None = None,
                     log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Score validation exams with ``ensemble`` (the whole pipeline, as ``agatax score``) against their
    reference masks: category accuracy, C-index (on the categories), lesion detection (sensitivity, PPV,
    F1), and per exam the predicted and reference Agatston scores. Exams ``agatax score`` would refuse (too
    noisy, a phantom, contrast-enhanced, a bone or lung kernel) are scored all the same, with their warnings in the row: validation
    measures the ensemble; one whose chest region is too small to hold a heart (REGION_TOO_SMALL), that
    shows no lungs (NO_LUNGS) or no region between them (NO_REGION) is scored without the region, which the
    row says."""
    from agatax.evaluate import evaluate_masks, evaluate_scores
    from agatax.pipeline import NO_REGION_REFUSALS, run_pipeline
    from agatax.report import PAST_REFUSAL
    from agatax.scoring import compute_scores

    past_refusal = tuple(start for start, _ in PAST_REFUSAL)  # the warnings of a refusal scored past

    past = dict(allow_noisy=True, allow_phantom=True, assume_non_contrast=True, allow_sharp_kernel=True)
    pred, ref, pairs, rows = {}, {}, [], []
    for exam in exams:
        loaded = load_exam(exam, slabs=slabs, read_options=read_options)
        try:
            result = run_pipeline(ensemble, loaded.volume, **past)
            without_region = []
        except AgataxError as err:
            if err.code not in NO_REGION_REFUSALS:
                raise
            result = run_pipeline(ensemble, loaded.volume, localise=False, **past)
            without_region = [f"{err.code.lower().replace('_', ' ')}: scored without the chest region ({err})"]
        truth = compute_scores(loaded.volume.hu, loaded.mask, loaded.volume.spacing)
        pred[exam.exam_id], ref[exam.exam_id] = float(result.scores.agatston), float(truth.agatston)
        pairs.append((np.asarray(result.mask), loaded.mask > 0, loaded.volume))
        rows.append({"exam_id": exam.exam_id, "agatston": round(pred[exam.exam_id], 3),
                     "reference_agatston": round(ref[exam.exam_id], 3), "category": result.scores.category,
                     "reference_category": truth.category, "noise_hu": result.noise_hu,
                     "past_refusal": without_region + [n for n in result.notes if n.startswith(past_refusal)]})
        if log:
            log(f"validation {exam.exam_id}: Agatston {pred[exam.exam_id]:.1f} ({result.scores.category}), "
                f"reference {ref[exam.exam_id]:.1f} ({truth.category})")
    if not rows:
        return {"exams": 0}
    evaluation = evaluate_scores(pred, ref)
    lesions = evaluate_masks(pairs)
    return {"exams": len(rows), "category_accuracy": evaluation.accuracy, "c_index": evaluation.c_index,
            "kappa": evaluation.kappa, "lesion_sensitivity": lesions.get("sensitivity"),
            "lesion_ppv": lesions.get("ppv"), "lesion_f1": lesions.get("f1"), "lesions": lesions, "per_exam": rows}
