"""Per-exam reports (JSON, lesion CSV, NIfTI mask, PNG) and the batch summary CSV.

    paths = agatax.write_report("out/", volume, scores, mask, votes=votes, members=5)
    rows = [agatax.report.exam_summary_row("exam1", scores, volume=volume, paths=paths),
            agatax.report.exam_summary_row("exam2", error=err)]
    agatax.write_summary_csv("out/summary.csv", rows)

matplotlib is only needed for the pictures (``pip install "agatax[report]"``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from agatax._atomic import atomic_open, atomic_write_bytes, atomic_write_text, remove_file
from agatax.batch import safe_name
from agatax.errors import AgataxError, InputError, ReadError
from agatax.volume import Volume

__all__ = [
    "CALCIUM_WINDOW",
    "SUMMARY_COLUMNS",
    "WEIGHT_COLOURS",
    "default_exam_id",
    "exam_summary_row",
    "lesion_regions",
    "render_png",
    "report_dict",
    "report_paths",
    "summary_row_from_report",
    "summary_row_from_result",
    "write_report",
    "write_summary_csv",
]

#: Outline colour per density weight 1..4.
WEIGHT_COLOURS = {1: "#ffe14d", 2: "#ff9a1f", 3: "#ff3030", 4: "#e040fb"}
_WEIGHT_RANGES = {1: "130-199 HU", 2: "200-299 HU", 3: "300-399 HU", 4: ">= 400 HU"}
#: Cardiac calcium window (level, width) in HU: -300..500 HU, calcium near white, soft tissue grey.
CALCIUM_WINDOW = (100.0, 800.0)
LEFT_OUT_COLOUR = "#00e676"  # calcified voxels the pipeline did not score (green: no weight colour)

SUMMARY_COLUMNS = (
    "exam_id",
    "status",
    "agatston",
    "category",
    "volume_mm3",
    "mass_mg",
    "lesions",
    "agatston_LM",
    "agatston_LAD",
    "agatston_LCX",
    "agatston_RCA",
    "shape",
    "spacing_z_mm",
    "spacing_y_mm",
    "spacing_x_mm",
    "slice_thickness_mm",
    "left_out_objects",
    "left_out_mm3",
    "category_low",
    "category_high",
    "series_uid",
    "source",
    "warnings",
    "error_code",
    "error_message",
    "seconds",
    "agatax_version",
    "device",
    "weights",
    "report",
)


def require_matplotlib():
    """Import matplotlib's object API (no pyplot, no global state) or say how to install it."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise AgataxError(
            f"pictures need matplotlib, which cannot be imported ({err})",
            code="MISSING_DEPENDENCY",
            hint='pip install "agatax[report]"',
        ) from None
    return Figure


def _safe_name(text: str) -> str:
    return safe_name(text) or "exam"


def default_exam_id(volume: Volume) -> str:
    """A file-name-safe id from the volume's source path (file stem or folder name), else its series UID."""
    if volume.source:
        name = Path(str(volume.source).rstrip("/\\")).name
        for suffix in (".nii.gz", ".nii", ".dcm", ".DCM"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
        if name:
            return _safe_name(name)
    uid = volume.metadata.get("series_uid")
    return _safe_name(uid) if uid else "exam"


def _check_mask(mask: Any, volume: Volume, what: str = "mask") -> np.ndarray:
    arr = np.asarray(mask)
    if arr.shape != volume.shape:
        raise InputError(
            f"{what} shape {arr.shape} differs from the volume's (z, y, x) shape {volume.shape}",
            code="SHAPE_MISMATCH",
        )
    return arr


def lesion_regions(
    hu: np.ndarray,
    mask: np.ndarray,
    lesions: Sequence[Any],
    *,
    threshold_hu: float = 130.0,
    connectivity: int = 8,
) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """Find the pixels of each scored lesion (for drawing and vote fractions).

    Components of ``mask != 0 & hu >= threshold_hu`` on each lesion's slice (and, for artery-labelled
    masks, of each label separately) are matched to the lesion by pixel count, then by nearest centroid.

    Args:
        hu: float (z, y, x) HU.  mask: (z, y, x) bool or artery labels.
        lesions: ``Scores.lesions`` (needs ``slice``, ``pixels``, ``centroid_zyx``).

    Returns:
        per lesion its pixels on ``lesion.slice`` as (rows, cols) int arrays, or None when no component
        matches.
    """
    structure = ndimage.generate_binary_structure(2, 2 if connectivity == 8 else 1)
    cache: dict[int, list[tuple[tuple[np.ndarray, np.ndarray], np.ndarray, int]]] = {}

    def components(k: int):
        if k not in cache:
            calcium = (mask[k] != 0) & (hu[k] >= threshold_hu)
            values = [v for v in np.unique(mask[k][calcium]) if v != 0]
            layers = [calcium] + ([calcium & (mask[k] == v) for v in values] if len(values) > 1 else [])
            found = []
            for layer in layers:
                labels, _ = ndimage.label(layer, structure=structure)
                for j, box in enumerate(ndimage.find_objects(labels), start=1):
                    if box is None:
                        continue
                    rows, cols = np.nonzero(labels[box] == j)
                    rows, cols = rows + box[0].start, cols + box[1].start
                    found.append(((rows, cols), np.array([rows.mean(), cols.mean()]), len(rows)))
            cache[k] = found
        return cache[k]

    out: list[tuple[np.ndarray, np.ndarray] | None] = []
    for lesion in lesions:
        k = int(lesion.slice)
        candidates = components(k) if 0 <= k < mask.shape[0] else []
        if not candidates:
            out.append(None)
            continue
        centre = np.asarray(lesion.centroid_zyx, dtype=np.float64)[1:]
        best = min(
            candidates,
            key=lambda c: (c[2] != int(lesion.pixels), float(np.sum((c[1] - centre) ** 2))),
        )
        out.append(best[0])
    return out


def _vote_fractions(votes, members, regions, lesions, volume) -> list[float | None]:
    votes = _check_mask(votes, volume, "votes")
    if members is None or int(members) < 1:
        raise InputError(
            f"votes given without a positive member count (members={members!r})",
            code="BAD_ARGUMENT",
            hint="pass members=<number of networks in the ensemble>",
        )
    members = int(members)
    if votes.size and (votes.min() < 0 or votes.max() > members):
        raise InputError(
            f"votes must lie in 0..{members}; found {votes.min()}..{votes.max()}",
            code="BAD_ARGUMENT",
        )
    fractions = []
    for lesion, region in zip(lesions, regions):
        if region is None:
            fractions.append(None)
        else:
            fractions.append(round(float(votes[int(lesion.slice)][region].mean()) / members, 4))
    return fractions


def _json_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_json_safe(v) for v in value.tolist()]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def _instance_numbers(volume: Volume, slices: Iterable[int]) -> dict[int, int | None]:
    """InstanceNumber of the DICOM file of each slice index (None for NIfTI, multi-frame or unreadable)."""
    files = volume.metadata.get("files") or []
    if volume.metadata.get("format") != "dicom" or len(files) != volume.shape[0]:
        return {}
    import pydicom

    out: dict[int, int | None] = {}
    for k in slices:
        try:
            header = pydicom.dcmread(files[k], stop_before_pixels=True, specific_tags=["InstanceNumber"])
            out[k] = int(header.InstanceNumber)
        except Exception:  # a frame of a multi-frame file, a missing tag, a file gone since
            out[k] = None
    return out


def report_dict(
    volume: Volume,
    scores: Any,
    *,
    exam_id: str | None = None,
    vote_fractions: Sequence[float | None] | None = None,
    members: int | None = None,
) -> dict[str, Any]:
    """The JSON score dict of one exam.

    Keys: ``exam_id``, ``agatax_version``, ``agatston``, ``category``, ``volume_mm3``, ``mass_mg``,
    ``lesions`` (slice lesions: per-slice 2D components, each with ``slice`` (0-based index from the most
    inferior slice), ``instance_number`` (of that slice's DICOM file, else None), ``z_mm`` (patient z of
    the slice centre) and ``vote_fraction`` when given), ``per_artery``, ``spacing_mm`` [dz, dy, dx], ``slice_thickness_mm``,
    ``shape`` [z, y, x], ``warnings`` (reading notes plus an overlapping-slices note), ``series_uid``,
    ``series_description``, ``reconstruction_kernel`` and ``kvp`` (DICOM ConvolutionKernel and KVP; None
    where unknown), ``source``, and ``members`` when votes were given.
    """
    base = scores.to_dict()
    numbers = _instance_numbers(volume, {int(lesion["slice"]) for lesion in base.get("lesions", [])})
    lesions = []
    for lesion in base.get("lesions", []):
        k = int(lesion["slice"])
        placed = {"slice": k, "instance_number": numbers.get(k), "z_mm": round(_slice_z_mm(volume, k), 3)}
        lesions.append({**placed, **{key: v for key, v in lesion.items() if key not in placed}})
    if vote_fractions is not None:
        for lesion, fraction in zip(lesions, vote_fractions):
            lesion["vote_fraction"] = fraction
    warnings = list(volume.warnings)
    if volume.overlapping:
        note = (
            f"overlapping slices: increment {volume.spacing[0]:g} mm < thickness {volume.slice_thickness:g} mm; "
            "scored with the increment"
        )
        if not any("overlap" in w.lower() for w in warnings):
            warnings.append(note)
    from agatax.quality import thickness_note

    for note in thickness_note(volume.slice_thickness, volume.spacing[0]):  # as agatax.run_pipeline says
        if not any(w.startswith("slices of") for w in warnings):
            warnings.append(note)
    from agatax import __version__

    out: dict[str, Any] = {"exam_id": exam_id or default_exam_id(volume), "agatax_version": __version__}
    out.update(
        {
            "agatston": base.get("agatston"),
            "category": base.get("category"),
            "volume_mm3": base.get("volume_mm3"),
            "mass_mg": base.get("mass_mg"),
            "lesions": lesions,
            "per_artery": base.get("per_artery", {}),
        }
    )
    for key, value in base.items():  # anything else the scorer reports
        out.setdefault(key, value)
    out.update(
        {
            "spacing_mm": list(volume.spacing),
            "slice_thickness_mm": volume.slice_thickness,
            "shape": list(volume.shape),
            "warnings": warnings,
            "series_uid": volume.metadata.get("series_uid"),
            "series_description": volume.metadata.get("series_description"),
            # as the scanner wrote them (DICOM); a kernel sharper than calcium scoring's reads high (README)
            "reconstruction_kernel": volume.metadata.get("kernel") or None,
            "kvp": volume.metadata.get("kvp"),
            "source": volume.source,
        }
    )
    if vote_fractions is not None:
        out["members"] = members
    return _json_safe(out)


def _lesion_rows(exam_id: str, lesions: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[dict]]:
    columns: list[str] = ["exam_id", "lesion"]
    rows = []
    for number, lesion in enumerate(lesions, start=1):
        row: dict[str, Any] = {"exam_id": exam_id, "lesion": number}
        for key, value in lesion.items():
            if isinstance(value, (list, tuple)) and key.endswith("_zyx") and len(value) == 3:
                stem = key[: -len("_zyx")]
                row.update({f"{stem}_z": value[0], f"{stem}_y": value[1], f"{stem}_x": value[2]})
            else:
                row[key] = value
        for key in row:
            if key not in columns:
                columns.append(key)
        rows.append(row)
    return columns, rows


def _write_csv(path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    atomic_write_text(path, text.getvalue())


def report_paths(directory: str | os.PathLike, exam_id: str, *, png: bool = True, dicom: bool = False
                 ) -> dict[str, Path]:
    """The files ``write_report`` writes for ``exam_id`` in ``directory`` (``dicom``: with the DICOM
    Segmentation ``seg`` and structured report ``sr``, see ``agatax.dicom_report``).

    The JSON is written last, so ``report_paths(d, i)["json"].exists()`` means the report is complete
    (a batch can skip such exams on a re-run).
    """
    directory, stem = Path(directory), _safe_name(exam_id)
    paths = {
        "json": directory / f"{stem}.json",
        "csv": directory / f"{stem}_lesions.csv",
        "mask": directory / f"{stem}_mask.nii.gz",
    }
    if png:
        paths["png"] = directory / f"{stem}.png"
    if dicom:
        from agatax.dicom_report import dicom_report_paths

        paths.update(dicom_report_paths(directory, stem))
    return paths


def write_report(
    directory: str | os.PathLike,
    volume: Volume,
    scores: Any,
    mask: Any,
    *,
    votes: Any = None,
    members: int | None = None,
    exam_id: str | None = None,
    png: bool = True,
    max_slices: int | None = 6,
    extra: Mapping[str, Any] | None = None,
    window: tuple[float, float] = CALCIUM_WINDOW,
    threshold_hu: float = 130.0,
    connectivity: int = 8,
    dicom: bool = False,
    left_out: Any = None,
) -> dict[str, Path]:
    """Write one exam's report files into ``directory`` (created if needed).

    Args:
        volume: the exam (HU (z, y, x)).
        scores: ``agatax.compute_scores(...)`` result for ``mask`` on this volume.
        mask: (z, y, x) bool or artery labels, the scored calcium.
        votes: optional int (z, y, x) count of ensemble members voting calcium per voxel.
        members: number of ensemble members (required with ``votes``).
        exam_id: file stem; default from the volume's source (see ``default_exam_id``).
        png: also draw ``<id>.png`` (needs matplotlib).
        max_slices: most slices drawn (those with the most Agatston, shown in z order); None: all.
        extra: keys added to the JSON (provenance, ...).
        window: (level, width) HU display window.
        threshold_hu, connectivity: as used for ``scores`` (to find each lesion's pixels).
        dicom: also the DICOM Segmentation and SR (``agatax.dicom_report``; a DICOM exam only), written
            from the JSON's numbers before the JSON; without it those of an earlier run are removed.
        left_out: optional bool (z, y, x): calcified voxels not scored that a reader should see
            (``agatax.pipeline.left_out_objects``); outlined green in the picture, at least one of their slices
            shown (``report_slices``).

    Returns:
        {"json": <id>.json, "csv": <id>_lesions.csv, "mask": <id>_mask.nii.gz, "png": <id>.png}
        (``png`` only when drawn). The JSON holds ``report_dict`` plus ``extra``; the mask is uint8,
        aligned with the input via ``agatax.write_nifti(..., like=volume)``. ``vote_fraction`` per lesion
        is the mean of votes / members over the lesion's pixels. Every file is written atomically; an
        earlier ``<id>.json`` is removed first and the new one written last, so its presence means the
        files beside it are complete and belong to it.
    """
    mask = _check_mask(mask, volume)
    exam_id = _safe_name(exam_id) if exam_id else default_exam_id(volume)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lesions = tuple(scores.lesions)
    regions = lesion_regions(volume.hu, mask, lesions, threshold_hu=threshold_hu, connectivity=connectivity)
    fractions = None if votes is None else _vote_fractions(votes, members, regions, lesions, volume)
    summary = report_dict(volume, scores, exam_id=exam_id, vote_fractions=fractions, members=members)
    summary.update(_json_safe(dict(extra or {})))

    paths = report_paths(directory, exam_id, png=png)
    if png:  # fail on a missing matplotlib before writing anything
        require_matplotlib()
    remove_file(paths["json"])  # the old complete-marker goes first: never beside new, partial files
    atomic_write_bytes(paths["mask"], _nifti_bytes(mask.astype(np.uint8), volume, paths["mask"].name))
    columns, rows = _lesion_rows(exam_id, summary["lesions"])
    _write_csv(paths["csv"], columns, rows)
    if png:
        render_png(
            paths["png"], volume, lesions, regions, summary, max_slices=max_slices, window=window,
            left_out=None if left_out is None else _check_mask(left_out, volume, "left_out"),
        )
    else:
        remove_file(report_paths(directory, exam_id)["png"])  # a picture of earlier results
    if dicom:
        from agatax.dicom_report import write_dicom_report

        paths.update(write_dicom_report(directory, exam_id, volume, mask, summary))
    else:
        from agatax.dicom_report import remove_dicom_report

        remove_dicom_report(directory, exam_id)  # DICOM objects of earlier results
    atomic_write_text(paths["json"], json.dumps(summary, indent=2) + "\n")
    return paths


def _nifti_bytes(array: np.ndarray, volume: Volume, name: str) -> bytes:
    """The NIfTI file ``agatax.write_nifti`` makes, as bytes (written in a private temporary folder)."""
    import tempfile

    from agatax.io import write_nifti

    with tempfile.TemporaryDirectory(prefix="agatax-") as tmp:
        path = Path(tmp) / name
        write_nifti(path, array, like=volume)
        return path.read_bytes()


def _outline_segments(region: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Pixel-edge outline of a region given as (rows, cols): (n, 2, 2) segments of (x, y) points."""
    rows, cols = region
    r0, c0 = int(rows.min()), int(cols.min())
    local = np.zeros((int(rows.max()) - r0 + 3, int(cols.max()) - c0 + 3), dtype=bool)  # 1-pixel border
    local[rows - r0 + 1, cols - c0 + 1] = True
    segs = []
    er, ec = np.nonzero(local[1:, 1:-1] != local[:-1, 1:-1])  # edge above local row er (image row r0 + er)
    for r, c in zip(er + r0, ec + c0):
        segs.append([(c - 0.5, r - 0.5), (c + 0.5, r - 0.5)])
    er, ec = np.nonzero(local[1:-1, 1:] != local[1:-1, :-1])  # edge left of local column ec
    for r, c in zip(er + r0, ec + c0):
        segs.append([(c - 0.5, r - 0.5), (c - 0.5, r + 0.5)])
    return np.asarray(segs, dtype=np.float64).reshape(-1, 2, 2)


def _slice_z_mm(volume: Volume, k: int) -> float:
    return float((volume.affine @ np.array([k, 0.0, 0.0, 1.0]))[2])


def report_slices(per_slice: Mapping[int, float], left_out_slices: Sequence[int] | None = None,
                  max_slices: int | None = 6) -> list[int]:
    """The slices a report picture shows, in z order: those with the most Agatston (``per_slice``: slice ->
    Agatston on it), at most ``max_slices`` (None: all of them, at least one). ``left_out_slices``: one slice
    per left-out calcified object, most important first (``left_out_slices``); when none of them is chosen,
    the calcium slice with the least Agatston gives up its place (``max_slices`` >= 2), and the places left
    go to them in their order."""
    limit = max(len(per_slice) if max_slices is None else int(max_slices), 1)
    chosen = sorted(per_slice, key=lambda k: (-per_slice[k], k))[:limit]
    wanted = list(dict.fromkeys(int(k) for k in left_out_slices or ()))
    if wanted and not set(wanted) & set(chosen) and len(chosen) == limit >= 2:
        chosen = chosen[:-1]
    chosen += [k for k in wanted if k not in chosen][:limit - len(chosen)]
    return sorted(chosen)


def left_out_slices(left_out: np.ndarray) -> list[int]:
    """One slice per calcified object of ``left_out`` (bool (z, y, x); 26-connected): the slice holding most of
    it, the largest objects first (ties: the lower slice)."""
    zyx = np.nonzero(left_out)
    if not zyx[0].size:
        return []
    box = tuple(slice(int(a.min()), int(a.max()) + 1) for a in zyx)  # label the objects' box, not the exam
    lab, n = ndimage.label(left_out[box], structure=np.ones((3, 3, 3), bool))
    per = np.zeros((n + 1, left_out.shape[0]), np.int64)
    np.add.at(per, (lab[tuple(a - b.start for a, b in zip(zyx, box))], zyx[0]), 1)
    best = per[1:].argmax(axis=1)
    sizes = per[1:].sum(axis=1)
    return [int(best[k]) for k in sorted(range(n), key=lambda k: (-sizes[k], best[k]))]


#: Warnings saying the category rests on objects that may not be calcium, named in the picture's title.
_RESTING_WARNINGS = (("dense:", "stent-dense objects"), ("beside metal:", "objects beside metal"))
#: The warnings of an exam scored on request past one of the pipeline's refusals (TOO_NOISY, PHANTOM,
#: CONTRAST_ENHANCED, SHARP_KERNEL): the picture's title says so, as the score may be far from the truth;
#: agatax train's validation rows list them (``agatax.cohort.score_validation``).
PAST_REFUSAL = (("too noisy:", "too noisy"), ("phantom:", "a phantom"), ("contrast:", "contrast-enhanced"),
                ("sharp kernel, scored on request", "a sharp kernel"))

def render_png(
    path: str | os.PathLike,
    volume: Volume,
    lesions: Sequence[Any],
    regions: Sequence[tuple[np.ndarray, np.ndarray] | None],
    summary: Mapping[str, Any],
    *,
    max_slices: int | None = 6,
    window: tuple[float, float] = CALCIUM_WINDOW,
    margin_mm: float = 45.0,
    left_out: np.ndarray | None = None,
) -> Path:
    """Draw the calcium slices: CT in a calcium window, each lesion outlined in its density-weight colour
    and labelled with its Agatston contribution; title with exam id, total Agatston and category.

    Slices are chosen by Agatston on the slice (most first, at most ``max_slices``; None: all) and shown
    in z order, the notes saying how many of the calcium slices are shown, cropped to the calcium plus
    ``margin_mm``. ``left_out`` (bool (z, y, x), optional): calcified voxels not scored, outlined green, one
    slice per object in the places left, at least one (``report_slices``). An exam with neither shows its
    middle slice.
    """
    Figure = require_matplotlib()
    from matplotlib import patheffects
    from matplotlib.collections import LineCollection
    from matplotlib.patches import Patch

    per_slice: dict[int, float] = {}
    for lesion in lesions:
        per_slice[int(lesion.slice)] = per_slice.get(int(lesion.slice), 0.0) + float(lesion.agatston)
    wanted = [] if left_out is None else left_out_slices(left_out)
    chosen = report_slices(per_slice, wanted, max_slices) or [volume.shape[0] // 2]
    extra_slices = [k for k in chosen if k not in per_slice and k in wanted]

    ny, nx = volume.shape[1:]
    dz, dy, dx = volume.spacing
    r0, r1, c0, c1 = 0, ny, 0, nx
    drawn = [reg for les, reg in zip(lesions, regions) if reg is not None and int(les.slice) in chosen]
    if left_out is not None:
        drawn += [np.nonzero(left_out[k]) for k in chosen if left_out[k].any()]
    if drawn:
        all_rows = np.concatenate([reg[0] for reg in drawn])
        all_cols = np.concatenate([reg[1] for reg in drawn])
        mr, mc = int(round(margin_mm / dy)), int(round(margin_mm / dx))
        r0, c0 = max(int(all_rows.min()) - mr, 0), max(int(all_cols.min()) - mc, 0)
        r1, c1 = min(int(all_rows.max()) + mr + 1, ny), min(int(all_cols.max()) + mc + 1, nx)

    n = len(chosen)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    panel = 3.6
    aspect = ((r1 - r0) * dy) / max((c1 - c0) * dx, 1e-9)
    legend_cols = 4 if ncols >= 2 else 2
    shows_left_out = left_out is not None and any(left_out[k].any() for k in chosen)
    bottom_in = 0.2 if not (lesions or extra_slices) else (0.6 if legend_cols == 4 and not shows_left_out else 0.85)
    past = [what for start, what in PAST_REFUSAL if any(str(w).startswith(start) for w in summary.get("warnings") or ())]
    top_in = 0.9 + (0.25 if past else 0.0)  # the title's lines
    fig = Figure(figsize=(panel * ncols, panel * aspect * nrows + top_in + bottom_in), dpi=110, facecolor="black")
    fig.subplots_adjust(left=0.02, right=0.98, top=1 - top_in / fig.get_figheight(),
                        bottom=bottom_in / fig.get_figheight(), wspace=0.04, hspace=0.18)
    level, width = window
    stroke = [patheffects.withStroke(linewidth=2.2, foreground="black")]
    for i, k in enumerate(chosen):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.imshow(
            volume.hu[k, r0:r1, c0:c1],
            cmap="gray",
            vmin=level - width / 2,
            vmax=level + width / 2,
            interpolation="nearest",
            extent=(c0 - 0.5, c1 - 0.5, r1 - 0.5, r0 - 0.5),
            aspect=dy / dx,
        )
        ax.set_xlim(c0 - 0.5, c1 - 0.5)
        ax.set_ylim(r1 - 0.5, r0 - 0.5)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.apply_aspect()
        box = ax.get_position()
        # data units per screen pixel, to size label boxes (8 pt bold: ~6.5 px per character, 12 px high)
        per_px_x = (c1 - c0) / max(box.width * fig.get_figwidth() * fig.dpi, 1.0)
        per_px_y = (r1 - r0) / max(box.height * fig.get_figheight() * fig.dpi, 1.0)
        placed: list[tuple[float, float, float, float]] = []
        hidden = 0
        if left_out is not None and left_out[k].any():
            ax.add_collection(LineCollection(_outline_segments(np.nonzero(left_out[k])), colors=LEFT_OUT_COLOUR,
                                             linewidths=1.4, linestyles="dashed"))
        on_slice = [(les, reg) for les, reg in zip(lesions, regions) if reg is not None and int(les.slice) == k]
        for lesion, region in sorted(on_slice, key=lambda lr: -float(lr[0].agatston)):
            colour = WEIGHT_COLOURS.get(int(lesion.weight), "#00e5ff")
            ax.add_collection(LineCollection(_outline_segments(region), colors=colour, linewidths=1.4))
            rows, cols = region
            text = f"{float(lesion.agatston):.1f}"
            w, h = (6.5 * len(text) + 4) * per_px_x, 14 * per_px_y
            gap_x, gap_y = 3 * per_px_x, 3 * per_px_y
            top, bottom = rows.min() - 0.5, rows.max() + 0.5
            left, right = cols.min() - 0.5, cols.max() + 0.5
            mid = (top + bottom) / 2
            candidates = [  # (x0, y0) top-left corners in data coordinates (y down)
                (right + gap_x, top - h), (right + gap_x, mid - h / 2), (right + gap_x, bottom),
                (left - gap_x - w, top - h), (left - gap_x - w, mid - h / 2), (left - gap_x - w, bottom),
                ((left + right - w) / 2, top - gap_y - h), ((left + right - w) / 2, bottom + gap_y),
            ]
            spot = None
            for x0, y0 in candidates:
                inside = x0 >= c0 - 0.5 and x0 + w <= c1 - 0.5 and y0 >= r0 - 0.5 and y0 + h <= r1 - 0.5
                clear = all(x0 + w <= a or b <= x0 or y0 + h <= c or d <= y0 for a, c, b, d in placed)
                if inside and clear:
                    spot = (x0, y0)
                    break
            if spot is None:
                hidden += 1
                continue
            placed.append((spot[0], spot[1], spot[0] + w, spot[1] + h))
            ax.text(spot[0] + 2 * per_px_x, spot[1] + h / 2, text, color=colour, fontsize=8, fontweight="bold",
                    ha="left", va="center", path_effects=stroke, clip_on=True)
        label = f"slice {k}, z = {_slice_z_mm(volume, k):.1f} mm"
        if k in per_slice:
            label += f", Agatston {per_slice[k]:.1f}"
        elif k in extra_slices:
            label += ", calcium not scored"
        if hidden:
            label += f"\n({hidden} crowded lesion{'s' if hidden > 1 else ''} not labelled)"
        ax.set_title(label, color="white", fontsize=9)
    total = summary.get("agatston")
    title = f"{summary.get('exam_id', '')}   Agatston {float(total or 0):.1f}   category {summary.get('category')}"
    doubt = summary.get("category_range") or {}
    uncertain = ""
    if doubt.get("uncertain"):
        uncertain = f"uncertain: {doubt['low']['category']} to {doubt['high']['category']}"
    resting = [what for start, what in _RESTING_WARNINGS if any(str(w).startswith(start)
                                                                for w in summary.get("warnings") or ())]
    if resting:  # the warnings that say the category rests on objects that may not be calcium
        title += f" ({uncertain + '; ' if uncertain else ''}rests on {' and '.join(resting)}: see the warnings)"
    elif uncertain:
        title += f" ({uncertain}, see the report's warning)"
    extra = [f"{len(lesions)} slice lesion{'' if len(lesions) == 1 else 's'}"]
    if summary.get("volume_mm3") is not None:
        extra.append(f"volume {float(summary['volume_mm3']):.1f} mm\u00b3")
    if summary.get("mass_mg") is not None:
        extra.append(f"mass {float(summary['mass_mg']):.1f} mg")
    shown = len(chosen) - len(extra_slices)
    if len(per_slice) > shown:
        extra.append(f"showing {shown} of {len(per_slice)} calcium slices (most Agatston)")
    else:
        extra.append(f"showing all {len(per_slice)} calcium slice{'' if len(per_slice) == 1 else 's'}")
    if not lesions:
        extra = ["no calcium found"]
    if extra_slices:
        extra.append(f"{len(extra_slices)} slice{'' if len(extra_slices) == 1 else 's'} of calcium not scored (green)")
    refused = f"\nscored on request past a refusal ({' and '.join(past)}): see the warnings" if past else ""
    fig.suptitle(title + "\n" + ", ".join(extra) + refused, color="white", fontsize=11)
    if lesions or extra_slices:
        handles = [Patch(facecolor="none", edgecolor=c, linewidth=2, label=f"weight {w}: {_WEIGHT_RANGES[w]}")
                   for w, c in WEIGHT_COLOURS.items()]
        if shows_left_out:
            handles.append(Patch(facecolor="none", edgecolor=LEFT_OUT_COLOUR, linewidth=1.5, linestyle="--",
                                 label="over 130 HU, not scored (see the warnings)"))
        legend = fig.legend(
            handles=handles, loc="lower center", ncol=legend_cols, fontsize=8, frameon=False, labelcolor="white",
            title="outline colour = density weight; number = lesion Agatston", title_fontsize=8,
        )
        legend.get_title().set_color("white")
    path = Path(path)
    with atomic_open(path) as handle:
        fig.savefig(handle, format="png", facecolor=fig.get_facecolor())
    return path


def exam_summary_row(
    exam_id: str,
    scores: Any = None,
    *,
    volume: Volume | None = None,
    error: BaseException | None = None,
    seconds: float | None = None,
    paths: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One row of the batch summary (columns ``SUMMARY_COLUMNS``).

    Give ``scores`` (and ``volume``) for a scored exam, or ``error`` for a failed one: ``status`` is
    "ok" or "failed"; a failure keeps its code (``AgataxError.code``, else the exception type name) and
    its message.
    """
    row: dict[str, Any] = {"exam_id": exam_id, "status": "failed" if error is not None else "ok"}
    if scores is not None:
        row.update(
            agatston=float(scores.agatston),
            category=scores.category,
            volume_mm3=float(scores.volume_mm3),
            mass_mg=None if scores.mass_mg is None else float(scores.mass_mg),
            lesions=len(scores.lesions),
            agatax_version=__import__("agatax").__version__,
        )
        for artery, values in (scores.per_artery or {}).items():
            row[f"agatston_{artery}"] = float(values["agatston"])
    if volume is not None:
        row.update(
            shape="x".join(str(s) for s in volume.shape),
            spacing_z_mm=volume.spacing[0],
            spacing_y_mm=volume.spacing[1],
            spacing_x_mm=volume.spacing[2],
            slice_thickness_mm=volume.slice_thickness,
            series_uid=volume.metadata.get("series_uid"),
            source=volume.source,
            warnings="; ".join(volume.warnings),
        )
    if error is not None:
        if isinstance(error, AgataxError):
            row.update(error_code=error.code, error_message=error.message + (f" -> {error.hint}" if error.hint else ""))
        else:
            row.update(error_code=type(error).__name__, error_message=str(error))
    if seconds is not None:
        row["seconds"] = round(float(seconds), 3)
    if paths and paths.get("json") is not None:
        row["report"] = str(paths["json"])
    return row


def summary_row_from_result(data: Mapping[str, Any], *, report: str | os.PathLike | None = None,
                            seconds: float | None = None) -> dict[str, Any]:
    """The summary row of a scored exam's result dict (``report_dict`` with the command line's keys)."""
    row: dict[str, Any] = {
        "exam_id": data["exam_id"],
        "status": "ok",
        "agatston": data["agatston"],
        "category": data["category"],
        "volume_mm3": data.get("volume_mm3"),
        "mass_mg": data.get("mass_mg"),
        "lesions": len(data.get("lesions", [])),
    }
    for artery, values in (data.get("per_artery") or {}).items():
        row[f"agatston_{artery}"] = values.get("agatston")
    spacing = data.get("spacing_mm") or [None, None, None]
    row.update(
        shape="x".join(str(s) for s in data.get("shape") or []) or None,
        spacing_z_mm=spacing[0],
        spacing_y_mm=spacing[1],
        spacing_x_mm=spacing[2],
        slice_thickness_mm=data.get("slice_thickness_mm"),
        left_out_objects=(data.get("left_out") or {}).get("objects"),
        left_out_mm3=(data.get("left_out") or {}).get("volume_mm3"),
        category_low=((data.get("category_range") or {}).get("low") or {}).get("category"),
        category_high=((data.get("category_range") or {}).get("high") or {}).get("category"),
        series_uid=data.get("series_uid"),
        source=data.get("source"),
        warnings="; ".join(data.get("warnings") or []),
        seconds=None if seconds is None else round(float(seconds), 3),
        agatax_version=data.get("agatax_version"),
        device=data.get("device"),
        weights=data.get("weights"),
        report=None if report is None else str(report),
    )
    optional = ("seconds", "agatax_version", "device", "weights", "report", "left_out_objects", "left_out_mm3",
                "category_low", "category_high")
    return {key: value for key, value in row.items() if value is not None or key not in optional}


def summary_row_from_report(path: str | os.PathLike) -> dict[str, Any]:
    """A summary row rebuilt from a report JSON written earlier (for exams a re-run skips).

    Raises:
        ReadError: BAD_REPORT when the file is not a report JSON.
    """
    path = Path(path)
    try:
        return summary_row_from_result(json.loads(path.read_text()), report=path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ReadError(f"{path} is not a readable report JSON ({err})", code="BAD_REPORT", paths=[path]) from None


def write_summary_csv(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write the batch summary: ``SUMMARY_COLUMNS`` first, then any other keys in order of appearance.

    Written to a temporary file and renamed, so a reader never sees half a table.
    """
    rows = list(rows)
    columns = list(SUMMARY_COLUMNS)
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_csv(path, columns, rows)
    return path
