"""The Stanford AIMI COCA gated release: cardiac CT exams with calcium outlines per artery.

Layout on disk (``root`` is ``Gated_release_final`` or the folder that holds it)::

    Gated_release_final/patient/<id>/<series folder>/*.dcm
    Gated_release_final/calcium_xml/<id>.xml

Each XML is an Apple property list: a dict whose ``Images`` array holds dicts with ``ImageIndex`` and
``ROIs``; each ROI has ``Name`` (the artery), ``Point_px`` (outline, strings ``"(x, y)"`` in pixel
coordinates, x = column, y = row, pixel centres at integer coordinates), ``Point_mm`` and ``Center``
(strings ``"(x, y, z)"``, patient LPS mm) and statistics (``Area``, ``Mean``, ``Max``).

``ImageIndex`` is not trusted as a slice index: in the release it counts slices in reverse (index i is slice
N-1-i in ascending InstanceNumber order), and InstanceNumber need not follow position; each ROI is placed
on the slice whose position matches the ROI's patient-space position (through the volume's affine). The lesion mask is every pixel inside or on the
outline with HU >= 130, labelled by artery: 1 LM, 2 LAD, 3 LCX, 4 RCA ("Left Coronary Artery" is the
release's name for the left main). An exam without an XML has no calcium.

Facts of the public release the reader copes with: many ROIs are empty placeholders (``NumberOfPoints`` 0,
no ``Point_px`` / ``Point_mm``, ``Area`` 0): skipped and counted; some outlines carry no ``Name``: kept as
calcium of unknown artery (the exam's mask is then 0/1 calcium without arteries, unless
``artery_map={"": "LAD"}`` names them); some patients have all slices at one z position (zero z-spacing,
ZERO_SPACING) or no DICOM files at all (NO_IMAGES): per-exam refusals (``CocaDataset.exams`` skips them
and lists them in ``refused``).

    dataset = CocaDataset("/data/Gated_release_final")
    for exam in dataset:
        scores = agatax.compute_scores(exam.volume.hu, exam.mask, exam.volume.spacing)
"""

from __future__ import annotations

import dataclasses
import plistlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agatax.errors import ReadError
from agatax.volume import Volume

__all__ = [
    "ARTERY_LABELS",
    "CocaAnnotation",
    "KNOWN_DEFECTS",
    "COCA_ARTERY_NAMES",
    "CocaDataset",
    "CocaExam",
    "CocaROI",
    "coca_mask",
    "parse_calcium_xml",
    "polygon_pixels",
    "read_calcium_xml",
]

#: Artery code -> mask label.
ARTERY_LABELS: dict[str, int] = {"LM": 1, "LAD": 2, "LCX": 3, "RCA": 4}

#: ROI ``Name`` (compared case-insensitively, spaces collapsed) -> artery code.
COCA_ARTERY_NAMES: dict[str, str] = {
    "left coronary artery": "LM",
    "left main": "LM",
    "left main coronary artery": "LM",
    "lm": "LM",
    "left anterior descending artery": "LAD",
    "left anterior descending": "LAD",
    "lad": "LAD",
    "left circumflex artery": "LCX",
    "left circumflex": "LCX",
    "lcx": "LCX",
    "right coronary artery": "RCA",
    "rca": "RCA",
}

#: Codes of per-exam defects known in the public release: ``CocaDataset.exams`` skips such exams.
KNOWN_DEFECTS = ("ZERO_SPACING", "NO_IMAGES")

#: Artery code of outlines without a name (calcium of unknown artery).
UNNAMED = "unknown"

LAYOUT = "Gated_release_final/patient/<id>/<series folder>/*.dcm and Gated_release_final/calcium_xml/<id>.xml"

_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


@dataclasses.dataclass(frozen=True, eq=False)
class CocaROI:
    """One calcium outline from a COCA XML.

    Attributes:
        name: the ROI ``Name`` as written in the file.
        artery: "LM", "LAD", "LCX" or "RCA".
        label: mask label of the artery (1 LM, 2 LAD, 3 LCX, 4 RCA).
        image_index: the file's ``ImageIndex`` (kept for reference, not used for placement).
        points_px: float64 (n, 2) outline as (x = column, y = row) pixel coordinates.
        points_mm: float64 (n, 3) outline in patient mm, or None when absent.
        center_mm: float64 (3,) ROI centre in patient mm, or None when absent.
        area_mm2, mean_hu, max_hu: the file's statistics (None when absent).
        slice: z index of the matched slice in the exam's Volume; None until matched.
    """

    name: str
    artery: str
    label: int
    image_index: int | None
    points_px: np.ndarray
    points_mm: np.ndarray | None = None
    center_mm: np.ndarray | None = None
    area_mm2: float | None = None
    mean_hu: float | None = None
    max_hu: float | None = None
    slice: int | None = None

    @property
    def position_mm(self) -> np.ndarray | None:
        """A patient-space point on the ROI's plane (``Center``, else the mean of ``Point_mm``), mm."""
        if self.center_mm is not None:
            return self.center_mm
        if self.points_mm is not None and len(self.points_mm):
            return self.points_mm.mean(axis=0)
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (without the outline points)."""
        pos = self.position_mm
        return {
            "name": self.name,
            "artery": self.artery,
            "label": self.label,
            "image_index": self.image_index,
            "slice": self.slice,
            "points": int(len(self.points_px)),
            "position_mm": None if pos is None else [float(v) for v in pos],
            "area_mm2": self.area_mm2,
            "mean_hu": self.mean_hu,
            "max_hu": self.max_hu,
        }


@dataclasses.dataclass(frozen=True, eq=False)
class CocaExam:
    """One COCA exam.

    Attributes:
        id: the patient folder name.
        volume: the CT series (Volume, HU (z, y, x)).
        mask: uint8 (z, y, x) artery labels (1 LM, 2 LAD, 3 LCX, 4 RCA), 0 elsewhere; all zero without XML.
        rois: the XML's ROIs with ``slice`` set to the matched z index.
        warnings: notes about the annotation (e.g. pixels claimed by two arteries).
        xml_path: the annotation file, or None when the exam has none.
        empty_rois: empty placeholder ROIs of the XML (no points), skipped.
    """

    id: str
    volume: Volume
    mask: np.ndarray
    rois: tuple[CocaROI, ...] = ()
    warnings: tuple[str, ...] = ()
    xml_path: str | None = None
    empty_rois: int = 0


@dataclasses.dataclass(frozen=True)
class CocaAnnotation:
    """A parsed COCA XML: its ROIs with outlines, and the count of empty placeholder ROIs skipped."""

    rois: tuple[CocaROI, ...]
    empty_rois: int = 0


def _points(value: Any, dims: int, *, what: str, path: Path) -> np.ndarray:
    """Parse a list of "(x, y[, z])" strings (or number sequences) to float64 (n, dims)."""
    items = [value] if isinstance(value, str) else list(value)
    out = []
    for item in items:
        nums = _NUMBER.findall(item) if isinstance(item, str) else list(item)
        if len(nums) != dims:
            raise ReadError(
                f"{path}: {what} entry {item!r} does not hold {dims} numbers",
                code="BAD_ANNOTATION",
                paths=[path],
            )
        out.append([float(v) for v in nums])
    return np.asarray(out, dtype=np.float64).reshape(-1, dims)


def _number(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        nums = _NUMBER.findall(value)
        return float(nums[0]) if nums else None
    return float(value)


def _artery(name: str, artery_map: Mapping[str, str] | None) -> str | None:
    key = " ".join(str(name).lower().split())
    table = dict(COCA_ARTERY_NAMES)
    if artery_map:
        table.update({" ".join(k.lower().split()): v for k, v in artery_map.items()})
    code = table.get(key)
    if code is None and not key:
        return UNNAMED  # an outline without a name: calcium of unknown artery
    return code if code in ARTERY_LABELS else None


def _is_empty_roi(roi: dict) -> bool:
    """A placeholder ROI of the release: no outline points at all (NumberOfPoints 0 or absent)."""
    try:
        count = int(_number(roi.get("NumberOfPoints")) or 0)
    except (TypeError, ValueError):
        count = 0
    return count == 0 and not roi.get("Point_px") and not roi.get("Point_mm")


def parse_calcium_xml(path: str | Path, *, artery_map: Mapping[str, str] | None = None) -> list[CocaROI]:
    """Read a COCA calcium annotation (Apple property list) into ROI records.

    Args:
        path: the ``calcium_xml/<id>.xml`` file (XML or binary plist).
        artery_map: extra ROI names -> artery code ("LM", "LAD", "LCX", "RCA"), added to
            ``COCA_ARTERY_NAMES`` (names compared case-insensitively; the key "" names unnamed outlines).

    Returns:
        the ROIs with outlines in file order, ``slice`` unset (see ``coca_mask``). Empty placeholder ROIs
        (no points) are left out: ``read_calcium_xml`` also counts them. Outlines without a name have
        artery "unknown" and label 0 (``coca_mask`` marks them as calcium of unknown artery).

    Raises:
        ReadError: BAD_ANNOTATION (not a plist of the expected shape, an ROI with points but no
            ``Point_px``), UNKNOWN_ARTERY (ROI names outside the mapping; they are all listed).
    """
    return list(read_calcium_xml(path, artery_map=artery_map).rois)


def read_calcium_xml(path: str | Path, *, artery_map: Mapping[str, str] | None = None) -> CocaAnnotation:
    """``parse_calcium_xml`` with the count of empty placeholder ROIs skipped (a ``CocaAnnotation``)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = plistlib.load(f)
    except FileNotFoundError:
        raise ReadError(f"annotation file not found: {path}", code="NOT_FOUND", paths=[path]) from None
    except Exception as err:  # plistlib raises several types on malformed input
        raise ReadError(
            f"{path} is not a readable property list ({type(err).__name__}: {err})",
            code="BAD_ANNOTATION",
            paths=[path],
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("Images"), list):
        raise ReadError(
            f"{path}: expected a top-level dict with an 'Images' array; found "
            f"{type(data).__name__} with keys {sorted(data)[:10] if isinstance(data, dict) else '-'}",
            code="BAD_ANNOTATION",
            paths=[path],
        )
    rois: list[CocaROI] = []
    unknown: set[str] = set()
    empty = 0
    for image in data["Images"]:
        if not isinstance(image, dict):
            raise ReadError(f"{path}: an 'Images' entry is not a dict", code="BAD_ANNOTATION", paths=[path])
        index = image.get("ImageIndex")
        for roi in image.get("ROIs", []) or []:
            if not isinstance(roi, dict):
                raise ReadError(f"{path}: an 'ROIs' entry is not a dict", code="BAD_ANNOTATION", paths=[path])
            if _is_empty_roi(roi):
                empty += 1
                continue
            name = str(roi.get("Name", "") or "")
            artery = _artery(name, artery_map)
            if artery is None:
                unknown.add(name)
                continue
            if not roi.get("Point_px"):
                raise ReadError(
                    f"{path}: ROI {name!r} (ImageIndex {index}) has no Point_px outline",
                    code="BAD_ANNOTATION",
                    paths=[path],
                )
            points_mm = _points(roi["Point_mm"], 3, what="Point_mm", path=path) if roi.get("Point_mm") else None
            center = _points(roi["Center"], 3, what="Center", path=path)[0] if roi.get("Center") else None
            rois.append(
                CocaROI(
                    name=name,
                    artery=artery,
                    label=ARTERY_LABELS.get(artery, 0),
                    image_index=None if index is None else int(index),
                    points_px=_points(roi["Point_px"], 2, what="Point_px", path=path),
                    points_mm=points_mm,
                    center_mm=center,
                    area_mm2=_number(roi.get("Area")),
                    mean_hu=_number(roi.get("Mean")),
                    max_hu=_number(roi.get("Max")),
                )
            )
    if unknown:
        raise ReadError(
            f"{path}: unknown artery names {sorted(unknown)}; known: {sorted(set(COCA_ARTERY_NAMES))}",
            code="UNKNOWN_ARTERY",
            hint="pass artery_map={'<name>': 'LM'|'LAD'|'LCX'|'RCA'} to map them",
            paths=[path],
        )
    return CocaAnnotation(tuple(rois), empty)


def polygon_pixels(points_xy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels inside or on a closed outline.

    A pixel belongs to the region when its centre (integer (row, column) coordinates) is inside the polygon
    by the even-odd rule, or when it is on the outline's digital line (each edge sampled once per pixel
    step along its major axis, rounded to the nearest pixel centre, so 8-connected without gaps). Outlines with one or two points give just those pixels / that segment.

    Args:
        points_xy: (n, 2) vertices as (x = column, y = row), pixels.
        shape: (rows, columns) of the slice.

    Returns:
        bool (rows, columns).
    """
    pts = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    rows, cols = int(shape[0]), int(shape[1])
    out = np.zeros((rows, cols), dtype=bool)
    if len(pts) == 0:
        return out
    closed = np.vstack([pts, pts[:1]]) if len(pts) > 2 else pts
    if len(pts) >= 3:
        c0 = max(int(np.floor(pts[:, 0].min())), 0)
        c1 = min(int(np.ceil(pts[:, 0].max())), cols - 1)
        r0 = max(int(np.floor(pts[:, 1].min())), 0)
        r1 = min(int(np.ceil(pts[:, 1].max())), rows - 1)
        if c0 <= c1 and r0 <= r1:
            py, px = np.mgrid[r0 : r1 + 1, c0 : c1 + 1].astype(np.float64)
            inside = np.zeros(py.shape, dtype=bool)
            for (x1, y1), (x2, y2) in zip(closed[:-1], closed[1:]):
                crosses = (y1 > py) != (y2 > py)
                if not crosses.any():
                    continue
                x_at = x1 + (py - y1) * (x2 - x1) / (y2 - y1 if y2 != y1 else 1.0)
                inside ^= crosses & (px < x_at)
            out[r0 : r1 + 1, c0 : c1 + 1] = inside
    segments = zip(closed[:-1], closed[1:]) if len(closed) > 1 else [(closed[0], closed[0])]
    for p1, p2 in segments:  # digital line: one sample per pixel step along the major axis, rounded
        steps = int(np.ceil(np.abs(p2 - p1).max())) + 1
        t = np.linspace(0.0, 1.0, steps)[:, None]
        samples = np.floor(p1 + t * (p2 - p1) + 0.5).astype(np.int64)
        ok = (samples[:, 0] >= 0) & (samples[:, 0] < cols) & (samples[:, 1] >= 0) & (samples[:, 1] < rows)
        out[samples[ok, 1], samples[ok, 0]] = True
    return out


def _match_slice(volume: Volume, roi: CocaROI, *, exam_id: str, tolerance: float) -> int:
    pos = roi.position_mm
    if pos is None:
        raise ReadError(
            f"exam {exam_id}: ROI {roi.name!r} (ImageIndex {roi.image_index}) has neither Center nor Point_mm, "
            "so its slice cannot be placed",
            code="ROI_NO_POSITION",
        )
    index = np.linalg.solve(volume.affine, np.array([pos[0], pos[1], pos[2], 1.0]))[0]
    k = int(np.floor(index + 0.5))
    if abs(index - k) > tolerance or not 0 <= k < volume.shape[0]:
        z_first = volume.affine[:3, 3]
        z_last = volume.affine @ np.array([volume.shape[0] - 1, 0, 0, 1.0])
        raise ReadError(
            f"exam {exam_id}: ROI {roi.name!r} (ImageIndex {roi.image_index}) at z = {pos[2]:.3f} mm matches no "
            f"slice (nearest index {index:.2f}; slices run from z = {z_first[2]:.3f} to {z_last[2]:.3f} mm "
            f"every {volume.spacing[0]:.3f} mm)",
            code="ROI_SLICE_NOT_FOUND",
            hint="check that the XML belongs to this series (or raise z_tolerance)",
        )
    return k


def coca_mask(
    volume: Volume,
    rois: list[CocaROI] | tuple[CocaROI, ...],
    *,
    threshold_hu: float = 130.0,
    z_tolerance: float = 0.25,
    exam_id: str = "?",
) -> tuple[np.ndarray, tuple[CocaROI, ...], tuple[str, ...]]:
    """Rasterise COCA ROIs onto a volume.

    Args:
        volume: the exam (HU (z, y, x), affine to patient mm).
        rois: from ``parse_calcium_xml``.
        threshold_hu: pixels inside an outline count as calcium when HU >= this.
        z_tolerance: largest distance between the ROI's plane and a slice centre, as a fraction of the
            slice increment.
        exam_id: named in errors.

    Returns:
        (mask uint8 (z, y, x) with artery labels (0/1 calcium without arteries when an outline has no
        artery name), the ROIs with ``slice`` set, warnings). Where outlines
        of two arteries claim the same pixel, the first ROI in file order keeps it (and a warning says so).
        A warning also flags outlines whose ``Point_px`` and ``Point_mm`` (through the affine) disagree by
        more than 1.5 pixels (median per ROI): the annotation may belong to another series.

    Raises:
        ReadError: ROI_SLICE_NOT_FOUND (naming the exam and the ROI's z), ROI_NO_POSITION.
    """
    nz, ny, nx = volume.shape
    mask = np.zeros((nz, ny, nx), dtype=np.uint8)
    placed = []
    conflicts = 0
    inverse = np.linalg.inv(volume.affine)
    worst_offset = 0.0
    unnamed = np.zeros((nz, ny, nx), dtype=bool)
    n_unnamed = 0
    for roi in rois:
        k = _match_slice(volume, roi, exam_id=exam_id, tolerance=z_tolerance)
        region = polygon_pixels(roi.points_px, (ny, nx)) & (volume.hu[k] >= threshold_hu)
        if roi.label not in ARTERY_LABELS.values():  # an outline without an artery name
            unnamed[k] |= region
            n_unnamed += 1
            placed.append(dataclasses.replace(roi, slice=k))
            continue
        current = mask[k]
        conflicts += int(np.count_nonzero(region & (current != 0) & (current != roi.label)))
        current[region & (current == 0)] = roi.label
        placed.append(dataclasses.replace(roi, slice=k))
        if roi.points_mm is not None and len(roi.points_mm) == len(roi.points_px):
            homogeneous = np.hstack([roi.points_mm, np.ones((len(roi.points_mm), 1))])
            index = homogeneous @ inverse.T
            offset = np.hypot(index[:, 2] - roi.points_px[:, 0], index[:, 1] - roi.points_px[:, 1])
            worst_offset = max(worst_offset, float(np.median(offset)))
    warnings = []
    if n_unnamed:
        mask = ((mask > 0) | unnamed).astype(np.uint8)
        warnings.append(
            f"{n_unnamed} outline{'s carry' if n_unnamed > 1 else ' carries'} no artery name: the mask marks "
            "calcium without arteries (0/1); artery_map={'': 'LAD'} (or another artery) names them"
        )
    if conflicts:
        warnings.append(f"{conflicts} calcium pixels lie in outlines of two arteries; the first outline keeps them")
    if worst_offset > 1.5:
        warnings.append(
            f"outline pixel coordinates (Point_px) and patient coordinates (Point_mm) disagree by up to "
            f"{worst_offset:.1f} pixels (median per ROI): check that the XML belongs to this series"
        )
    return mask, tuple(placed), tuple(warnings)


def _one_position(path: Path) -> bool:
    """Whether every DICOM slice under ``path`` sits at one ImagePositionPatient (headers only)."""
    import pydicom

    positions = set()
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file() and not p.name.startswith(".")):
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True, specific_tags=["ImagePositionPatient"])
            positions.add(tuple(round(float(v), 3) for v in ds.ImagePositionPatient))
        except Exception:  # not DICOM or no position: not this defect's evidence
            continue
        if len(positions) > 1:
            return False
    return len(positions) == 1


def _natural_key(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


class CocaDataset:
    """The COCA gated release on disk.

    Args:
        root: ``Gated_release_final`` or the folder holding it.
        threshold_hu: HU threshold for calcium inside outlines (130).
        z_tolerance: ROI-to-slice matching tolerance, fraction of the slice increment (0.25).
        artery_map: extra ROI names -> artery code (see ``parse_calcium_xml``).
        allow_missing_xml_folder: treat a release without ``calcium_xml/`` as having no calcium at all
            (off: such a folder is refused).
        reader: callable path -> Volume for a patient folder; default ``agatax.read_volume``.
        **read_options: passed to the reader (e.g. relaxations of ``read_volume``).

    ``ids()`` lists the patient folders (natural order); ``load(id)`` reads one exam; iterating yields
    every exam in that order; ``exams()`` does too, leaving out (and listing in ``refused``) the exams
    with a known defect of the release.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        threshold_hu: float = 130.0,
        z_tolerance: float = 0.25,
        artery_map: Mapping[str, str] | None = None,
        allow_missing_xml_folder: bool = False,
        reader: Callable[..., Volume] | None = None,
        **read_options: Any,
    ) -> None:
        given = Path(root)
        base = given
        if not (base / "patient").is_dir() and (base / "Gated_release_final" / "patient").is_dir():
            base = base / "Gated_release_final"
        if not (base / "patient").is_dir():
            raise ReadError(
                f"{given} is not a COCA gated release: no 'patient' folder found; expected {LAYOUT}",
                code="UNKNOWN_LAYOUT",
                hint="pass the Gated_release_final folder (or its parent)",
                paths=[given],
            )
        self.root = base
        self.patient_dir = base / "patient"
        self.xml_dir = base / "calcium_xml"
        if not self.xml_dir.is_dir() and not allow_missing_xml_folder:
            raise ReadError(
                f"{base} has no 'calcium_xml' folder; expected {LAYOUT}",
                code="UNKNOWN_LAYOUT",
                hint="pass allow_missing_xml_folder=True to read every exam as calcium-free",
                paths=[base],
            )
        self.threshold_hu = float(threshold_hu)
        self.z_tolerance = float(z_tolerance)
        self.artery_map = dict(artery_map or {})
        self._reader = reader
        self._read_options = read_options
        self._ids = sorted((p.name for p in self.patient_dir.iterdir() if p.is_dir()), key=_natural_key)
        self.refused: list[tuple[str, str, str]] = []

    def ids(self) -> list[str]:
        """Exam ids (patient folder names), natural order."""
        return list(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, exam_id: object) -> bool:
        return str(exam_id) in self._ids

    def __iter__(self) -> Iterator[CocaExam]:
        for exam_id in self._ids:
            yield self.load(exam_id)

    def xml_path(self, exam_id: str) -> Path | None:
        """The exam's annotation file, or None when it has none (no calcium)."""
        path = self.xml_dir / f"{exam_id}.xml"
        return path if path.is_file() else None

    def series_path(self, exam_id: str) -> Path:
        """The folder handed to the reader: the single series folder, else the patient folder."""
        exam_id = str(exam_id)
        if exam_id not in self._ids:
            raise ReadError(
                f"exam {exam_id!r} not in {self.patient_dir} ({len(self._ids)} exams)",
                code="UNKNOWN_EXAM",
                paths=[self.patient_dir / exam_id],
            )
        folder = self.patient_dir / exam_id
        subdirs = [p for p in folder.iterdir() if p.is_dir()]
        return subdirs[0] if len(subdirs) == 1 else folder

    def load(self, exam_id: str) -> CocaExam:
        """Read one exam: the CT volume, its artery-labelled calcium mask and the placed ROIs.

        Raises:
            ReadError: UNKNOWN_EXAM, the reader's errors, annotation errors (see ``parse_calcium_xml``,
                ``coca_mask``).
        """
        exam_id = str(exam_id)
        path = self.series_path(exam_id)
        folder = self.patient_dir / exam_id
        reader = self._reader
        if reader is None:
            if not any(p.is_file() and not p.name.startswith(".") for p in folder.rglob("*")):
                raise ReadError(f"COCA exam {exam_id}: {folder} holds no files (no DICOM slices)",
                                code="NO_IMAGES", hint="a known defect of the release: leave the exam out",
                                paths=[folder])
            from agatax.io import read_volume as reader
        try:
            volume = reader(path, **self._read_options)
        except ReadError as err:
            if err.code == "DUPLICATE_POSITION" and _one_position(path):
                raise ReadError(
                    f"COCA exam {exam_id}: every slice in {path} has the same position (zero z-spacing)",
                    code="ZERO_SPACING", hint="a known defect of the release: leave the exam out",
                    paths=[path]) from None
            raise
        if not volume.spacing[0] > 0:
            raise ReadError(f"COCA exam {exam_id}: slice increment {volume.spacing[0]:g} mm (zero z-spacing)",
                            code="ZERO_SPACING", hint="a known defect of the release: leave the exam out",
                            paths=[path])
        xml = self.xml_path(exam_id)
        if xml is None:
            mask = np.zeros(volume.shape, dtype=np.uint8)
            return CocaExam(exam_id, volume, mask)
        annotation = read_calcium_xml(xml, artery_map=self.artery_map)
        mask, placed, warnings = coca_mask(
            volume, annotation.rois, threshold_hu=self.threshold_hu, z_tolerance=self.z_tolerance, exam_id=exam_id
        )
        if annotation.empty_rois:
            warnings = (f"{annotation.empty_rois} empty placeholder ROI{'s' if annotation.empty_rois > 1 else ''} "
                        "(no points) skipped",) + tuple(warnings)
        return CocaExam(exam_id, volume, mask, placed, warnings, str(xml), annotation.empty_rois)

    def exams(self, ids=None, *, skip: Sequence[str] | None = KNOWN_DEFECTS) -> Iterator[CocaExam]:
        """Read exams (all, or ``ids``) one by one; an exam refused with a code in ``skip`` (default: the
        release's known defects, ZERO_SPACING and NO_IMAGES; None: every ReadError) is left out and recorded
        in ``self.refused`` as (exam id, code, message) instead of stopping the iteration."""
        self.refused = []
        for exam_id in (self._ids if ids is None else ids):
            try:
                exam = self.load(exam_id)
            except ReadError as err:
                if skip is not None and err.code not in skip:
                    raise
                self.refused.append((str(exam_id), err.code, err.message))
                continue
            yield exam

    def __repr__(self) -> str:
        return f"CocaDataset({str(self.root)!r}, {len(self)} exams)"
