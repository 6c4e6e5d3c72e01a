"""Series discovery and geometry checks on header records (no pixel data involved).

``group_series`` splits records into image series (SeriesInstanceUID, orientation, size, thickness),
``choose_series`` picks one (or refuses with the list), ``order_slices`` sorts by position projected on the
slice normal and checks duplicates, tilt, gaps and spacing, returning the grid geometry.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict

import numpy as np

from agatax.errors import ReadError
from agatax.io.dicom_scan import SliceRecord

__all__ = ["Series", "Geometry", "group_series", "drop_scouts", "choose_series", "order_slices"]

DUPLICATE_MM = 0.01  # two slices closer than this along the normal share one position
GAP_FACTOR = 1.5  # an increment above 1.5 x the median means slices are missing
TILT_DEGREES = 0.2  # slice centres may drift off the normal by this angle (position rounding)
_LIST_MAX = 6


@dataclasses.dataclass
class Series:
    """Records sharing SeriesInstanceUID, orientation, image size, pixel spacing and thickness."""

    records: list[SliceRecord]

    @property
    def first(self) -> SliceRecord:
        return self.records[0]

    @property
    def uid(self) -> str:
        return self.first.series_uid

    def label(self) -> str:
        """One line naming the series: UID, number, description, slice count, size, thickness and kernel (a bone
        or lung kernel, refused when scored, marked so: ``agatax.quality.kernel_sharpness``)."""
        from agatax.io.dicom import _text
        from agatax.quality import kernel_sharpness

        r = self.first
        thickness = f", {r.thickness:g} mm" if r.thickness else ""
        kernel = _text(r.header.get("ConvolutionKernel")) if r.header is not None else ""
        if kernel:
            sharp = kernel_sharpness(str(kernel), str(r.header.get("Manufacturer", "") or ""))
            thickness += f", kernel {kernel}" + (" (bone or lung kernel)" if sharp == 2 else "")
        return (
            f"{r.series_uid} (#{r.series_number or '?'} '{r.description}', {r.modality or '?'}, "
            f"{len(self.records)} slices of {r.rows}x{r.cols}{thickness})"
        )


@dataclasses.dataclass
class Geometry:
    """Sorted slices and the grid they span.

    ``affine`` maps (z, y, x, 1) array indices to LPS mm; ``increment`` is the median distance between
    slice centres along the normal (mm); ``warnings`` are notes for the Volume.
    """

    records: list[SliceRecord]
    affine: np.ndarray
    increment: float
    warnings: list[str]


def _normal(orientation: np.ndarray) -> np.ndarray:
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)
    return normal / np.linalg.norm(normal)


def group_series(records: list[SliceRecord]) -> list[Series]:
    """Split records by (SeriesInstanceUID, orientation, rows, cols, pixel spacing, thickness)."""
    groups: dict[tuple, list[SliceRecord]] = defaultdict(list)
    for r in records:
        key = (
            r.series_uid,
            tuple(np.round(r.orientation, 3) + 0.0),
            r.rows,
            r.cols,
            tuple(np.round(r.pixel_spacing, 4)),
            None if r.thickness is None else round(r.thickness, 3),
        )
        groups[key].append(r)
    return [Series(g) for g in groups.values()]


def drop_scouts(series: list[Series]) -> tuple[list[Series], list[tuple[str, str]]]:
    """Remove single-slice series whose orientation differs from the largest series (scouts)."""
    if len(series) < 2:
        return series, []
    main = max(series, key=lambda s: len(s.records))
    main_normal = _normal(main.first.orientation)
    kept, skipped = [], []
    for s in series:
        other_orientation = abs(float(_normal(s.first.orientation) @ main_normal)) < 0.999
        if s is not main and len(s.records) == 1 and other_orientation:
            skipped.append((s.first.path, "single slice in another orientation than the main series (scout)"))
        else:
            kept.append(s)
    return kept, skipped


def choose_series(series: list[Series], choice: str | int | None, source: str) -> tuple[Series, list[Series]]:
    """The series to read and the others. ``choice`` matches a UID, a unique UID prefix, the SeriesNumber
    or the SeriesDescription (case-insensitive); None means 'the only one'."""
    listing = "; ".join(s.label() for s in series)
    if choice is None:
        if len(series) == 1:
            return series[0], []
        _check_mixed(series, source)
        raise ReadError(
            f"{source} holds {len(series)} image series: {listing}",
            code="MULTIPLE_SERIES",
            hint="choose one with series=<UID, UID prefix, series number or description> (CLI: --series)",
            paths=[s.first.path for s in series],
        )
    text = str(choice).strip()
    tests = (
        lambda s: s.uid == text,
        lambda s: s.uid.startswith(text),
        lambda s: s.first.series_number == text,
        lambda s: s.first.description.strip().lower() == text.lower(),
    )
    for test in tests:
        chosen = [s for s in series if test(s)]
        if chosen:
            break
    else:
        raise ReadError(
            f"no series in {source} matches {text!r}; found: {listing}",
            code="SERIES_NOT_FOUND",
            hint="pass a UID, a unique UID prefix, a series number or a description from the list",
        )
    if len(chosen) > 1:
        _check_mixed(chosen, source)
        raise ReadError(
            f"{text!r} matches {len(chosen)} image series in {source}: "
            + "; ".join(s.label() for s in chosen),
            code="MULTIPLE_SERIES",
            hint="use a longer UID prefix or the full SeriesInstanceUID",
            paths=[s.first.path for s in chosen],
        )
    return chosen[0], [s for s in series if s is not chosen[0]]


def _check_mixed(series: list[Series], source: str) -> None:
    """MIXED_GEOMETRY when all of ``series`` are one SeriesInstanceUID split by image size, spacing or
    thickness: no choice of series can separate them."""
    if len({s.uid for s in series}) != 1:
        return
    groups = []
    for s in series:
        r = s.first
        thickness = f", {r.thickness:g} mm thick" if r.thickness else ""
        groups.append(f"{len(s.records)} slices of {r.rows}x{r.cols} at {r.pixel_spacing[0]:g} x "
                      f"{r.pixel_spacing[1]:g} mm{thickness} (e.g. {r.path})")
    raise ReadError(
        f"series {series[0].uid} in {source} mixes {len(series)} image geometries: " + "; ".join(groups),
        code="MIXED_GEOMETRY",
        hint="export the series again, or point at the files of one group only (copy them to their own folder)",
        paths=[s.first.path for s in series],
    )


def order_slices(
    series: Series, *, allow_gaps: bool = False, allow_uneven: bool = False, allow_tilt: bool = False
) -> Geometry:
    """Sort slices along the normal and check them; raise on duplicates, tilt, gaps and uneven spacing."""
    records = series.records
    first = records[0]
    normal = _normal(first.orientation)
    positions = np.stack([r.position for r in records])
    along = positions @ normal
    instance = np.asarray([r.instance if r.instance is not None else 0 for r in records])
    order = np.lexsort((instance, along))
    records = [records[i] for i in order]
    positions, along = positions[order], along[order]
    warnings: list[str] = []
    dy, dx = first.pixel_spacing
    if not (dy > 0 and dx > 0):
        raise ReadError(
            f"series {first.series_uid}: PixelSpacing missing or not positive ({first.pixel_spacing})",
            code="BAD_SPACING",
            paths=[first.path],
        )
    row, col = first.orientation[:3], first.orientation[3:]

    if len(records) == 1:
        dz = first.thickness or float(first.header.get("SpacingBetweenSlices", 0) or 0) or 1.0
        if not first.thickness:
            warnings.append(f"single slice without SliceThickness: dz set to {dz:g} mm")
        affine = _affine(normal * dz, col * dy, row * dx, positions[0])
        return Geometry(records, affine, dz, warnings)

    _check_duplicates(records, along)
    warnings += _instance_order(records)
    steps = np.diff(along)
    increment = float(np.median(steps))

    span = positions[-1] - positions[0]
    span_along = float(span @ normal)
    off_normal = float(np.linalg.norm(span - span_along * normal))
    tilt = float(np.degrees(np.arctan2(off_normal, span_along)))
    if tilt > TILT_DEGREES:
        declared = first.header.get("GantryDetectorTilt")
        declared = f" (GantryDetectorTilt {float(declared):g} deg)" if declared not in (None, "") else ""
        if not allow_tilt:
            raise ReadError(
                f"series {first.series_uid}: slice centres drift {off_normal:.2f} mm off the slice normal over "
                f"{span_along:.1f} mm, a gantry tilt of {tilt:.2f} deg{declared} "
                f"(first {records[0].name}, last {records[-1].name})",
                code="GANTRY_TILT",
                hint="pass allow_tilt=True to keep the sheared grid (the affine records the tilt)",
                paths=[records[0].path, records[-1].path],
            )
        warnings.append(f"gantry tilt of {tilt:.2f} deg kept: the grid is sheared (see the affine)")
        z_step = span / span_along * increment
    else:
        z_step = normal * increment

    gaps = np.flatnonzero(steps > GAP_FACTOR * increment)
    missing_instances = _instance_gaps(records)
    if len(gaps) or missing_instances:
        parts = [
            f"{steps[i]:.2f} mm between {along[i]:.2f} ({records[i].name}) and {along[i + 1]:.2f} "
            f"({records[i + 1].name})"
            for i in gaps[:_LIST_MAX]
        ]
        text = f"median increment {increment:.2f} mm; gaps: " + "; ".join(parts) if parts else ""
        if missing_instances:
            shown = ", ".join(str(v) for v in missing_instances[:_LIST_MAX * 2])
            more = "..." if len(missing_instances) > _LIST_MAX * 2 else ""
            text += ("; " if text else "") + f"InstanceNumber missing: {shown}{more}"
        if not allow_gaps:
            raise ReadError(
                f"series {first.series_uid} ({len(records)} slices) has missing slices: {text}",
                code="MISSING_SLICES",
                hint="find the missing files, or pass allow_gaps=True to read it anyway (the grid then "
                "assumes the median increment)",
                paths=[records[i].path for i in gaps[:_LIST_MAX]],
            )
        warnings.append(f"missing slices kept (allow_gaps): {text}")

    regular = np.delete(steps, gaps)
    tolerance = 0.02 * increment + 0.01
    uneven = np.flatnonzero(np.abs(regular - increment) > tolerance)
    if len(uneven):
        values = sorted({round(float(v), 3) for v in regular})
        text = (
            f"increments between slices vary from {regular.min():.3f} to {regular.max():.3f} mm "
            f"(median {increment:.3f} mm; values {values[:_LIST_MAX]})"
        )
        if not allow_uneven:
            index = [i for i in range(len(steps)) if i not in set(gaps)][int(uneven[0])]
            raise ReadError(
                f"series {first.series_uid}: {text}, e.g. {steps[index]:.3f} mm after {records[index].name}",
                code="UNEVEN_SPACING",
                hint="pass allow_uneven=True to read it on the median increment",
                paths=[records[index].path, records[index + 1].path],
            )
        warnings.append(f"uneven spacing kept (allow_uneven): {text}")

    affine = _affine(z_step, col * dy, row * dx, positions[0])
    return Geometry(records, affine, increment, warnings)


def _affine(z_step, y_step, x_step, origin) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2], affine[:3, 3] = z_step, y_step, x_step, origin
    return affine


def _check_duplicates(records: list[SliceRecord], along: np.ndarray) -> None:
    same = np.flatnonzero(np.diff(along) < DUPLICATE_MM)
    if not len(same):
        return
    clash = Counter(np.round(along[same], 2))
    phases = sorted({r.phase for r in records if r.phase is not None})
    example = int(same[0])
    text = (
        f"series {records[0].series_uid}: {len(clash)} positions hold more than one slice "
        f"({len(records)} slices on {len(records) - len(same)} positions), e.g. {along[example]:.2f} mm: "
        f"{records[example].name} and {records[example + 1].name}"
    )
    if len(phases) > 1:
        shown = ", ".join(f"{p:g}" for p in phases[:_LIST_MAX])
        text += f"; the series holds several cardiac phases (trigger times / temporal positions {shown})"
    raise ReadError(
        text,
        code="DUPLICATE_POSITION",
        hint="export one cardiac phase (one slice per position) per series, or move the extra files out",
        paths=[records[example].path, records[example + 1].path],
    )


def _instance_order(records: list[SliceRecord]) -> list[str]:
    """A warning (code SLICE_ORDER) when InstanceNumber, read in position order, neither only rises nor only falls.

    Slices are placed by ImagePositionPatient; either vendor order is fine. A scrambled numbering means the
    positions or the numbers were rewritten, so the note names the first slice out of order.
    """
    numbers = np.asarray([r.instance if r.instance is not None else -1 for r in records])
    if len(records) < 3 or np.any(numbers < 0) or len(set(numbers.tolist())) != len(numbers):
        return []
    steps = np.diff(numbers)
    if np.all(steps > 0) or np.all(steps < 0):
        return []
    rising = np.count_nonzero(steps > 0) >= np.count_nonzero(steps < 0)
    k = int(np.flatnonzero(steps < 0 if rising else steps > 0)[0])
    return [
        f"SLICE_ORDER: InstanceNumber neither rises nor falls steadily with ImagePositionPatient (e.g. "
        f"{records[k].name} #{numbers[k]} then {records[k + 1].name} #{numbers[k + 1]}); slices are placed by "
        "position, check the files were not relabelled"
    ]


def _instance_gaps(records: list[SliceRecord]) -> list[int]:
    numbers = [r.instance for r in records]
    if any(n is None for n in numbers) or len(set(numbers)) != len(numbers):
        return []
    present = set(numbers)
    return [n for n in range(min(present), max(present) + 1) if n not in present]
