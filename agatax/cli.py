"""The ``agatax`` command.

    agatax score EXAM --mask MASK [--series UID] [--json OUT|-] [--min-area-mm2 X] [--calibration C]

Errors print one line, ``error [CODE]: message``, on stderr and exit with status 2 (``--debug`` shows the
traceback instead). Subcommands are argparse subparsers; each one registers itself through a function
``add_<name>_command(subparsers)`` listed in ``COMMANDS`` and sets ``run`` to a function(args) -> int.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agatax.errors import AgataxError, InputError

__all__ = ["main", "score_exam", "build_parser", "COMMANDS"]

EXIT_ERROR = 2
EXIT_UNEXPECTED = 1

_RELAXATIONS = ("allow_gaps", "allow_uneven", "allow_tilt", "allow_not_ct", "allow_qform_mismatch")


def score_exam(
    path: str | Path,
    mask: str | Path | None,
    *,
    series: str | None = None,
    calibration: float | None = None,
    min_pixels: int = 3,
    min_area_mm2: float | None = None,
    **relaxations: bool,
) -> dict[str, Any]:
    """Read one exam and its calcium mask, score it, and return a JSON-safe dict.

    Keys: agatston, category, volume_mm3 (mm^3), mass_mg (mg or None), lesions (list of dicts), per_artery,
    spacing_mm (dz, dy, dx), slice_thickness_mm, shape (z, y, x), warnings, series_uid,
    series_description, source, mask.
    ``relaxations``: allow_gaps, allow_uneven, allow_tilt, allow_not_ct, allow_qform_mismatch (see
    ``agatax.read_volume``).
    """
    from agatax.io import read_mask, read_volume
    from agatax.scoring import compute_scores

    if mask is None:
        raise InputError(
            "no calcium mask given",
            code="MASK_REQUIRED",
            hint="pass --mask MASK (a NIfTI file, or a .npy array (z, y, x) on the exam's grid)",
        )
    volume = read_volume(path, series=series, **relaxations)
    labels = read_mask(mask, like=volume)
    scores = compute_scores(
        volume.hu, labels, volume.spacing, calibration=calibration, min_pixels=min_pixels, min_area_mm2=min_area_mm2
    )
    result = scores.to_dict()
    return _json_safe(
        {
            "agatston": result["agatston"],
            "category": result["category"],
            "volume_mm3": result["volume_mm3"],
            "mass_mg": result["mass_mg"],
            "lesions": result["lesions"],
            "per_artery": result["per_artery"],
            "spacing_mm": list(volume.spacing),
            "slice_thickness_mm": volume.slice_thickness,
            "shape": list(volume.shape),
            "warnings": list(volume.warnings),
            "series_uid": volume.metadata.get("series_uid"),
            "series_description": volume.metadata.get("series_description"),
            "source": volume.source,
            "mask": str(mask),
        }
    )


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def format_report(result: dict[str, Any]) -> str:
    """Plain-text report of ``score_exam``'s result: totals, then the lesion table."""
    dz, dy, dx = result["spacing_mm"]
    thickness = result["slice_thickness_mm"]
    lines = [
        f"exam:      {result['source']}",
        f"series:    {result['series_uid'] or '-'}  {result['series_description'] or ''}".rstrip(),
        f"grid:      {' x '.join(str(n) for n in result['shape'])} voxels, spacing {dz:.3f} x {dy:.3f} x {dx:.3f} mm"
        + (f", slice thickness {thickness:g} mm" if thickness else ""),
        f"Agatston:  {result['agatston']:.1f}   (category {result['category']})",
        f"volume:    {result['volume_mm3']:.1f} mm^3",
    ]
    if result["mass_mg"] is not None:
        lines.append(f"mass:      {result['mass_mg']:.2f} mg")
    lesions = result["lesions"]
    lines.append(f"lesions:   {len(lesions)}")
    if lesions:
        lines.append("  slice  artery  pixels  area_mm2  peak_hu  weight  agatston  volume_mm3")
        for lesion in lesions:
            lines.append(
                f"  {lesion['slice']:5d}  {lesion['artery'] or '-':>6}  {lesion['pixels']:6d}  {lesion['area_mm2']:8.2f}"
                f"  {lesion['peak_hu']:7.0f}  {lesion['weight']:6d}  {lesion['agatston']:8.2f}  {lesion['volume_mm3']:10.2f}"
            )
    for artery, totals in result["per_artery"].items():
        lines.append(
            f"  {artery:>4}: Agatston {totals['agatston']:.1f}, volume {totals['volume_mm3']:.1f} mm^3, "
            f"{totals['lesions']} lesions"
        )
    for warning in result["warnings"]:
        lines.append(f"warning:   {warning}")
    return "\n".join(lines)


def add_score_command(subparsers) -> None:
    """``agatax score``: score one exam with a given calcium mask."""
    p = subparsers.add_parser(
        "score",
        help="score one exam (DICOM folder/file or NIfTI) with a calcium mask",
        description="Read a CT exam and a calcium mask on its grid; print Agatston, category, volume and lesions.",
    )
    _add_debug(p)
    p.add_argument("path", help="DICOM file, DICOM folder (searched recursively) or .nii/.nii.gz file")
    p.add_argument("--mask", help="calcium mask: NIfTI on the exam's grid, or .npy (z, y, x); labels 1..4 = arteries")
    p.add_argument("--series", help="which DICOM series: SeriesInstanceUID, unique prefix, number or description")
    p.add_argument("--json", metavar="OUT", help="write the result as one JSON object to OUT ('-' = stdout only)")
    p.add_argument("--min-area-mm2", type=float, default=None, help="smallest lesion area in mm^2 (e.g. 1.0)")
    p.add_argument("--min-pixels", type=int, default=3, help="smallest lesion in pixels (default 3)")
    p.add_argument("--calibration", type=float, default=None, help="mass calibration, mg / (HU * mm^3)")
    for name in _RELAXATIONS:
        p.add_argument("--" + name.replace("_", "-"), action="store_true", help=f"read_volume({name}=True)")
    p.set_defaults(run=run_score)


def run_score(args: argparse.Namespace) -> int:
    result = score_exam(
        args.path,
        args.mask,
        series=args.series,
        calibration=args.calibration,
        min_pixels=args.min_pixels,
        min_area_mm2=args.min_area_mm2,
        **{name: getattr(args, name) for name in _RELAXATIONS},
    )
    _emit(result, args.json, format_report)
    return 0


def _emit(result: dict[str, Any], json_target: str | None, formatter: Callable[[dict], str]) -> None:
    """Print the text report, or the JSON object to stdout (``-``), or both (JSON to a file)."""
    text = json.dumps(result, indent=2, allow_nan=False)
    if json_target == "-":
        sys.stdout.write(text + "\n")
        return
    if json_target:
        Path(json_target).parent.mkdir(parents=True, exist_ok=True)
        Path(json_target).write_text(text + "\n")
    sys.stdout.write(formatter(result) + "\n")


COMMANDS: list[Callable[[Any], None]] = [add_score_command]


def _add_debug(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")


def build_parser() -> argparse.ArgumentParser:
    """The ``agatax`` argument parser with every subcommand in ``COMMANDS``."""
    from agatax import __version__

    parser = argparse.ArgumentParser(prog="agatax", description="Coronary artery calcium scoring on cardiac CT.")
    parser.add_argument("--version", action="version", version=f"agatax {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 refused input, 1 unexpected failure)."""
    parser = build_parser()
    args = parser.parse_args(argv)
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
