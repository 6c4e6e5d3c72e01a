"""The shipped default ensemble and one-call scoring of an exam.

    result = agatax.score_exam("exam_dicom_folder/")      # default ensemble, paper conventions
    print(result.scores.agatston, result.scores.category)

The default weights (``agatax/weights/``) were trained on synthetic exams only; see
``agatax/weights/MODEL_CARD.md`` for the configuration, measured figures and limits (not validated on
patients, not a medical device).
"""

from __future__ import annotations

import os
from pathlib import Path

from agatax.errors import CheckpointError, InputError

__all__ = ["DEFAULT_WEIGHTS", "default_weights_path", "load_default_ensemble", "score_exam"]

DEFAULT_WEIGHTS = "default_ensemble.msgpack"

_CACHE: dict = {}


def default_weights_path() -> Path:
    """Path of the shipped default ensemble file inside the package."""
    return Path(__file__).resolve().parent / "weights" / DEFAULT_WEIGHTS


def load_default_ensemble(path=None):
    """Load the shipped five-network ensemble (cached after the first call).

    Args:
        path: another ensemble file to load instead (default: ``default_weights_path()``).
    Returns:
        ``agatax.ensemble.Ensemble`` with float32 parameters.
    Raises:
        CheckpointError: the file is missing (code ``MISSING_WEIGHTS``) or unreadable/corrupt.
    """
    from agatax.ensemble import load_ensemble

    p = Path(path) if path is not None else default_weights_path()
    key = str(p)
    if key in _CACHE:
        return _CACHE[key]
    if not p.is_file():
        raise CheckpointError(
            f"default ensemble weights not found at {p}",
            code="MISSING_WEIGHTS",
            hint="reinstall agatax (the weights ship as package data), or pass your own ensemble: "
            "score_exam(volume, ensemble=agatax.load_ensemble(path))",
            paths=[p],
        )
    try:
        ensemble = load_ensemble(p)
    except CheckpointError:
        raise
    except Exception as err:  # any other failure to decode means a damaged file
        raise CheckpointError(
            f"default ensemble weights at {p} are unreadable ({type(err).__name__}: {err})",
            code="CORRUPT_CHECKPOINT",
            hint="reinstall agatax to restore the shipped file",
            paths=[p],
        ) from err
    _CACHE[key] = ensemble
    return ensemble


def score_exam(path_or_volume, ensemble=None, *, series=None, thin_slices: str = "slab", **conventions):
    """Score one exam with the whole method: read -> pre-process -> ensemble -> post-process -> scores.

    Args:
        path_or_volume: a DICOM file or folder, a NIfTI file (str or os.PathLike), or a ``Volume``.
        ensemble: an ``Ensemble`` (default: ``load_default_ensemble()``).
        series: SeriesInstanceUID to pick when a folder holds several series.
        thin_slices: "slab" (default): an exam with slices under 2 mm is scored on 3 mm slabs
            (``agatax.thick_slabs``, the clinical convention); ``result.volume`` is then the slab exam, on
            whose grid ``mask`` and ``votes`` lie. "native": scored on the thin slices.
        **conventions: scoring conventions passed on (``min_pixels``, ``min_area_mm2``, ``connectivity``,
            ``threshold_hu``, ``calibration``, ...).
    Returns:
        the pipeline's result: ``.scores`` (``Scores``: Agatston, volume, mass, category, lesion table),
        ``.mask`` bool (z, y, x) on the exam's grid, ``.votes`` uint8 (z, y, x) members voting calcium.

    Raises:
        InputError TOO_SMALL / NOT_HU for a Volume that cannot be an exam (see ``agatax.check_exam``), and
        what the readers and the pipeline raise (NOT_AXIAL, CONTRAST_ENHANCED, PHANTOM, TOO_NOISY, SHARP_KERNEL, ...).
    """
    from agatax.pipeline import run_pipeline
    from agatax.volume import Volume, check_exam

    if isinstance(path_or_volume, (str, os.PathLike)):
        from agatax.io import read_volume

        volume = read_volume(path_or_volume, series=series)
    elif isinstance(path_or_volume, Volume):
        volume = path_or_volume
        check_exam(volume)  # the readers check what they read; a Volume built by hand gets the same checks
    else:
        raise InputError(
            f"score_exam takes a path or a Volume, got {type(path_or_volume).__name__}",
            code="BAD_ARGUMENT",
            hint="wrap a bare HU array: agatax.Volume(hu, spacing=(dz, dy, dx))",
        )
    from agatax.slabs import THIN_SLICES, thick_slabs

    if thin_slices not in THIN_SLICES:
        raise InputError(f"thin_slices must be one of {THIN_SLICES}; got {thin_slices!r}", code="BAD_ARGUMENT")
    if thin_slices == "slab":
        volume, _ = thick_slabs(volume)
    if ensemble is None:
        ensemble = load_default_ensemble()
    return run_pipeline(ensemble, volume, **conventions)

