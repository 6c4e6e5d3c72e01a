"""Cohorts of synthetic exams with a controlled score distribution, the paper-shaped presets, writing to disk.

Every exam's seed is derived from (cohort seed, preset name, index), so exam i of a preset can be made
alone (``preset_exam``) and equals the i-th exam of the whole cohort.
"""

from __future__ import annotations

import csv
import json
import os
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agatax.errors import InputError
from agatax.synthetic.exam import CATEGORIES, REAL_WORLD_MIX, SyntheticExam, generate_exam

__all__ = ["PRESETS", "SyntheticCohort", "plan_categories", "exam_seed", "make_cohort", "iter_cohort",
           "cohort_preset", "preset_exam", "write_cohort"]

# Shaped like Gogin et al. 2021: J1/J2/AD (training and validation, real-world skew toward low scores) and
# J3 (test set, balanced ~20 % per category).
_SKEWED = {"A": 0.42, "B": 0.16, "C": 0.19, "D": 0.13, "E": 0.10}
PRESETS: dict[str, dict[str, Any]] = {
    "J1": {"n": 100, "mix": _SKEWED},
    "J2": {"n": 322, "mix": _SKEWED},
    "AD": {"n": 361, "mix": {"A": 0.47, "B": 0.15, "C": 0.17, "D": 0.12, "E": 0.09}},
    "J3": {"n": 98, "mix": {c: 0.2 for c in CATEGORIES}},
}


def _check_mix(mix: Mapping[str, float]) -> dict[str, float]:
    bad = [k for k in mix if k not in CATEGORIES]
    if bad:
        raise InputError(f"category_mix keys must be A-E; got {bad}", code="BAD_CATEGORY")
    vals = {k: float(v) for k, v in mix.items()}
    if any(not np.isfinite(v) or v < 0 for v in vals.values()) or sum(vals.values()) <= 0:
        raise InputError(f"category_mix needs non-negative fractions with a positive sum; got {dict(mix)}",
                         code="BAD_MIX")
    total = sum(vals.values())
    return {k: vals.get(k, 0.0) / total for k in CATEGORIES}


def plan_categories(n: int, seed: int, category_mix: Mapping[str, float] | None = None, *, salt: str = "") -> list[str]:
    """Target category of each of ``n`` exams: exact counts by largest remainder of ``n`` x fraction, in a
    seeded random order (so every prefix is mixed, not sorted)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise InputError(f"n must be a non-negative int; got {n!r}", code="BAD_COUNT")
    mix = _check_mix(category_mix or REAL_WORLD_MIX)
    raw = np.array([mix[c] * n for c in CATEGORIES])
    counts = np.floor(raw).astype(int)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    cats = [c for c, k in zip(CATEGORIES, counts) for _ in range(k)]
    rng = np.random.default_rng([int(seed), zlib.crc32(salt.encode()), 7])
    return [cats[i] for i in rng.permutation(n)]


def exam_seed(seed: int, index: int, salt: str = "") -> int:
    """Seed of exam ``index`` of a cohort (deterministic, independent of the cohort size)."""
    ss = np.random.SeedSequence([int(seed), zlib.crc32(salt.encode()), int(index)])
    return int(ss.generate_state(1, np.uint32)[0])


class SyntheticCohort(Sequence):
    """A lazy, list-like cohort: ``cohort[i]`` generates exam i on demand (same exam every time).

    ``categories[i]`` is exam i's target (= true) category and ``seeds[i]`` its seed; ``list(cohort)``
    generates them all (mind the memory: ~60 MB per 512 x 512 x 56 exam).
    """

    def __init__(self, categories: list[str], seeds: list[int], params: dict[str, Any], name: str = ""):
        self.categories = categories
        self.seeds = seeds
        self.params = dict(params)
        self.name = name

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"cohort index {i} out of range 0..{len(self) - 1}")
        return generate_exam(self.seeds[i], target_category=self.categories[i], **self.params)

    def ids(self) -> list[str]:
        prefix = f"{self.name}_" if self.name else "exam_"
        return [f"{prefix}{i:04d}" for i in range(len(self))]


def make_cohort(n: int, seed: int, category_mix: Mapping[str, float] | None = None, *, lazy: bool = True,
                **params: Any) -> SyntheticCohort | list[SyntheticExam]:
    """``n`` synthetic exams whose true categories follow ``category_mix`` (fractions per "A".."E"; default
    REAL_WORLD_MIX) exactly up to rounding. ``params`` go to ``generate_exam`` (e.g. ``matrix=128``).
    Returns a lazy SyntheticCohort, or a list of exams with ``lazy=False``."""
    cats = plan_categories(n, seed, category_mix)
    cohort = SyntheticCohort(cats, [exam_seed(seed, i) for i in range(n)], params)
    return cohort if lazy else list(cohort)


def iter_cohort(n: int, seed: int, category_mix: Mapping[str, float] | None = None, **params: Any) -> Iterator[SyntheticExam]:
    """Yield the exams of ``make_cohort(n, seed, category_mix, **params)`` one at a time."""
    yield from make_cohort(n, seed, category_mix, **params)


def _preset(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise InputError(f"unknown cohort preset {name!r}", code="BAD_PRESET", hint=f"choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def cohort_preset(name: str, seed: int = 0, **params: Any) -> SyntheticCohort:
    """A paper-shaped cohort: "J1" (100 exams), "J2" (322), "AD" (361) skewed toward low scores, "J3" (98)
    balanced ~20 % per category. Lazy: exams are generated when indexed or iterated."""
    p = _preset(name)
    cats = plan_categories(p["n"], seed, p["mix"], salt=name)
    return SyntheticCohort(cats, [exam_seed(seed, i, name) for i in range(p["n"])], params, name)


def preset_exam(name: str, index: int, seed: int = 0, **params: Any) -> SyntheticExam:
    """Exam ``index`` of ``cohort_preset(name, seed)``, generated alone."""
    p = _preset(name)
    if not 0 <= index < p["n"]:
        raise InputError(f"preset {name} has exams 0..{p['n'] - 1}; got index {index}", code="BAD_INDEX")
    cat = plan_categories(p["n"], seed, p["mix"], salt=name)[index]
    return generate_exam(exam_seed(seed, index, name), target_category=cat, **params)


def write_cohort(directory: str | os.PathLike, exams, *, format: str = "dicom", ids: Sequence[str] | None = None) -> Path:
    """Write exams to ``directory``: per exam a DICOM series folder (``format="dicom"``) or a NIfTI file
    (``"nifti"``), the true mask as NIfTI (``<id>_mask.nii.gz``, artery labels), plus ``manifest.csv``
    (exam_id, path, mask_path, seed, agatston, category, n_lesions) and ``lesions.json`` (annotation points
    per exam). Returns the manifest path."""
    from agatax.io import write_dicom_series, write_nifti

    if format not in ("dicom", "nifti"):
        raise InputError(f"format must be 'dicom' or 'nifti'; got {format!r}", code="BAD_FORMAT")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    if ids is None:
        ids = exams.ids() if isinstance(exams, SyntheticCohort) else None
    rows, points = [], {}
    for i, exam in enumerate(exams):
        exam_id = ids[i] if ids is not None else f"exam_{i:04d}"
        if format == "dicom":
            path = out / exam_id
            write_dicom_series(path, exam.volume, patient_id=exam_id, series_description="agatax synthetic")
        else:
            path = out / f"{exam_id}.nii.gz"
            write_nifti(path, exam.volume)
        mask_path = out / f"{exam_id}_mask.nii.gz"
        write_nifti(mask_path, exam.mask, like=exam.volume)
        rows.append({"exam_id": exam_id, "path": path.name, "mask_path": mask_path.name, "seed": exam.seed,
                     "agatston": f"{exam.agatston:.4f}", "category": exam.category, "n_lesions": len(exam.lesions),
                     "n_distractors": len(exam.distractors)})
        points[exam_id] = [
            {k: les[k] for k in ("artery", "center_zyx", "points_zyx", "peak_hu", "agatston")} for les in exam.lesions
        ]
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["exam_id", "path", "mask_path", "seed", "agatston", "category",
                                           "n_lesions", "n_distractors"])
        w.writeheader()
        w.writerows(rows)
    with open(out / "lesions.json", "w") as fh:
        json.dump(points, fh, indent=1)
    return manifest
