"""Header-only pass over DICOM files: one record per image slice (or frame), a reason for every file skipped.

Each file is opened once with ``stop_before_pixels``; the position of its pixel data in the file is noted
so that the pixel pass can read the raw bytes directly, without parsing the header again.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from agatax.errors import ReadError

__all__ = ["SliceRecord", "Unplaced", "scan_files", "list_files"]

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = ("1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2")
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"
_UNDEFINED_LENGTH = 0xFFFFFFFF


@dataclasses.dataclass
class SliceRecord:
    """One 2D image (a single-frame file, or one frame of a multi-frame file) as seen from its header.

    ``position`` is ImagePositionPatient (mm, LPS); ``orientation`` the six direction cosines (row then
    column direction); ``pixel_spacing`` (dy, dx) in mm; ``pixel_offset`` the byte offset of the pixel
    data value in the file (None when it must be decoded through pydicom: compressed, deflated, missing).
    """

    path: str
    frame: int
    n_frames: int
    series_uid: str
    series_number: str
    description: str
    modality: str
    image_type: tuple[str, ...]
    instance: int | None
    position: np.ndarray
    orientation: np.ndarray
    rows: int
    cols: int
    pixel_spacing: tuple[float, float]
    thickness: float | None
    slope: float
    intercept: float
    has_rescale: bool
    padding: tuple[float, float] | None
    bits_allocated: int
    bits_stored: int
    signed: bool
    samples: int
    transfer_syntax: UID
    pixel_offset: int | None
    pixel_length: int | None
    phase: float | None
    header: Any = dataclasses.field(repr=False)
    raw: bool = False  # read without the 128-byte preamble and DICM marker (pydicom force=True)

    @property
    def frame_bytes(self) -> int:
        """Uncompressed bytes of one frame: rows * cols * samples * bits / 8."""
        return self.rows * self.cols * self.samples * self.bits_allocated // 8

    @property
    def name(self) -> str:
        """The file name, with the frame number for multi-frame files."""
        return self.path if self.n_frames == 1 else f"{self.path} (frame {self.frame + 1})"


@dataclasses.dataclass(frozen=True)
class Unplaced:
    """An image file whose ImagePositionPatient / ImageOrientationPatient is missing or unreadable."""

    path: str
    series_uid: str
    detail: str


class _Header:
    """Fast reads of top-level header values: parses the raw bytes pydicom left unconverted.

    pydicom converts values lazily through a general machinery; for the ~25 values read per file this
    dominates a header pass, so plain strings, numbers and unsigned shorts are decoded here directly.
    """

    def __init__(self, ds, little_endian: bool) -> None:
        self.ds = ds
        self.order = "<" if little_endian else ">"

    def _raw(self, tag: int):
        elem = self.ds.get_item(tag)
        return None if elem is None else elem.value

    def has(self, tag: int) -> bool:
        return self.ds.get_item(tag) is not None

    def text(self, tag: int) -> str:
        value = self._raw(tag)
        if value is None:
            return ""
        if isinstance(value, bytes):
            try:
                return value.decode("utf-8").strip(" \x00")
            except UnicodeDecodeError:
                return value.decode("latin-1").strip(" \x00")
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            return "\\".join(str(v) for v in value)
        return str(value).strip()

    def numbers(self, tag: int) -> list[float] | None:
        """A DS / IS value (possibly multi-valued) as floats; None when absent, empty or malformed."""
        value = self._raw(tag)
        if value is None:
            return None
        try:
            if isinstance(value, bytes):
                text = value.decode("ascii").strip(" \x00")
                return [float(v) for v in text.split("\\")] if text else None
            if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
                return [float(v) for v in value]
            return [float(value)] if value != "" else None
        except (ValueError, UnicodeDecodeError):
            return None

    def number(self, tag: int) -> float | None:
        values = self.numbers(tag)
        return values[0] if values else None

    def ushort(self, tag: int, default: int) -> int:
        """A US value (binary); ``default`` when absent."""
        value = self._raw(tag)
        if value is None or value == b"":
            return default
        if isinstance(value, bytes):
            return int(struct.unpack(self.order + "H", value[:2])[0])
        return int(value)


def list_files(path: str | os.PathLike) -> list[str]:
    """Every regular file under ``path`` (recursively, sorted), or ``[path]`` for a file."""
    if not str(path).strip():
        raise ReadError(
            f"empty path {str(path)!r}", code="BAD_PATH", hint="give the exam's DICOM folder or file, or a NIfTI file"
        )
    root = Path(path)
    if root.is_file():
        return [str(root)]
    if not root.exists():
        raise ReadError(f"no such file or folder: {root}", code="NOT_FOUND", paths=[str(root)])
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        found.extend(os.path.join(folder, name) for name in sorted(files) if not name.startswith("."))
    return found


def scan_files(paths: list[str]) -> tuple[list[SliceRecord], list[tuple[str, str]], list[Unplaced]]:
    """Header pass: image slice records, (path, reason) for every file that is not an image slice, and the
    image files without a usable position (also among the skipped: the reader refuses them when they
    belong to the series it reads)."""
    records: list[SliceRecord] = []
    skipped: list[tuple[str, str]] = []
    unplaced: list[Unplaced] = []
    for path in paths:
        found = _scan_one(path)
        if isinstance(found, Unplaced):
            unplaced.append(found)
            skipped.append((path, found.detail))
        elif isinstance(found, str):
            skipped.append((path, found))
        else:
            records.extend(found)
    return records, skipped, unplaced


_TRUNCATED_HINT = "the file was cut short (copy or transfer interrupted); export it again or remove it"
# first bytes of a dataset without preamble: group 0002 or 0008, little or big endian
_RAW_STARTS = (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")


def _read_raw(fp):
    """A dataset without the 128-byte preamble (pydicom ``force=True``), or None when it is not one."""
    fp.seek(0)
    if fp.read(2) not in _RAW_STARTS:
        return None
    fp.seek(0)
    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True, defer_size="4 KB")
    except Exception:
        return None
    if ds.get_item(0x00280010) is None or ds.get_item(0x00280011) is None or ds.get_item(0x7FE00010) is not None:
        return None
    return ds


def _scan_one(path: str) -> list[SliceRecord] | str | Unplaced:
    try:
        with open(path, "rb") as fp:
            size = os.fstat(fp.fileno()).st_size
            preamble = fp.read(132)
            raw = len(preamble) < 132 or preamble[128:132] != b"DICM"
            if raw and not preamble[:128].strip(b"\x00") and b"DICM".startswith(preamble[128:]):
                raise ReadError(
                    f"DICOM file {path} holds only {len(preamble)} bytes, a DICOM preamble cut short",
                    code="TRUNCATED_FILE",
                    hint=_TRUNCATED_HINT,
                    paths=[path],
                )
            fp.seek(0)
            if raw:
                ds = _read_raw(fp)
                if ds is None:
                    return "not a DICOM file (no DICM marker)"
            else:
                try:
                    ds = pydicom.dcmread(fp, stop_before_pixels=True)
                except Exception as err:  # pydicom raises many types on cut or corrupt headers
                    if isinstance(err, (EOFError, struct.error)) or fp.tell() >= size:
                        raise ReadError(
                            f"DICOM file {path} ends inside its header ({size} bytes): {type(err).__name__}: {err}",
                            code="TRUNCATED_FILE",
                            hint=_TRUNCATED_HINT,
                            paths=[path],
                        ) from err
                    if isinstance(err, InvalidDicomError):
                        return f"not a readable DICOM file ({err})"
                    raise ReadError(
                        f"DICOM file {path} has a corrupt header: {type(err).__name__}: {err}",
                        code="CORRUPT_FILE",
                        hint="export the file again or remove it from the folder",
                        paths=[path],
                    ) from err
            offset = fp.tell()
            head = fp.read(12)
    except ReadError:
        raise
    except OSError as err:  # ReadError is an OSError too: passed on above
        raise ReadError(f"cannot open {path}: {err}", code="UNREADABLE", paths=[path]) from err

    is_image = ds.get_item(0x00280010) is not None and ds.get_item(0x00280011) is not None  # Rows, Columns
    meta = getattr(ds, "file_meta", None) or {}
    declared = {str(ds.get("SOPClassUID", "") or ""), str(meta.get("MediaStorageSOPClassUID", "") or "")}
    sop_class = str(ds.get("SOPClassUID", "") or meta.get("MediaStorageSOPClassUID", "") or "")
    ct = bool(declared & {CT_IMAGE, *ENHANCED_CT})
    if not head and (ct or is_image or not sop_class or not len(ds)):  # the file ends where the header stopped
        where = "before its pixel data" if sop_class and len(ds) else "inside its header (no dataset read)"
        raise ReadError(
            f"DICOM file {path} ends after {size} bytes, {where}",
            code="TRUNCATED_FILE",
            hint=_TRUNCATED_HINT,
            paths=[path],
        )
    ts = _transfer_syntax(ds)
    if not ts.is_transfer_syntax:
        if not is_image:
            return f"unknown transfer syntax {ts} (not an image)"
        raise ReadError(
            f"DICOM image file {path} declares TransferSyntaxUID {ts}, which is not a DICOM transfer syntax; "
            "its pixel data cannot be decoded",
            code="UNSUPPORTED_TRANSFER_SYNTAX",
            hint="export the series again (uncompressed, or JPEG / JPEG 2000 / RLE), or remove the file",
            paths=[path],
        )
    h = _Header(ds, ts.is_little_endian)
    if sop_class == MEDIA_DIRECTORY or os.path.basename(path).upper() == "DICOMDIR":
        return "DICOMDIR (media directory index, not an image)"
    if not is_image:
        kind = UID(sop_class).name if sop_class else "unknown SOP class"
        return f"not an image ({kind}, modality {h.text(0x00080060) or '?'})"
    if sop_class.startswith(SECONDARY_CAPTURE_PREFIX):
        return "secondary capture (e.g. a dose screen or screenshot), not a reconstructed slice"
    image_type = tuple(v.strip().upper() for v in h.text(0x00080008).split("\\") if v.strip())
    if "LOCALIZER" in image_type:
        return f"scout (ImageType {'/'.join(image_type)})"
    pixel_offset, pixel_length = _pixel_location(head, offset, ts)
    n_frames = int(h.number(0x00280008) or 1)  # NumberOfFrames
    if sop_class in ENHANCED_CT or h.has(0x52009230):  # PerFrameFunctionalGroupsSequence
        return _enhanced_records(path, ds, ts, pixel_offset, pixel_length, n_frames, image_type)
    if n_frames > 1:
        return f"multi-frame image without per-frame geometry ({UID(sop_class).name}); not supported"
    position, orientation = h.numbers(0x00200032), h.numbers(0x00200037)
    if not (_valid(position, 3) and _valid(orientation, 6)
            and np.linalg.norm(np.cross(orientation[:3], orientation[3:])) > 0.5):
        found = (f"ImagePositionPatient {h.text(0x00200032) or '(missing)'!r}, "
                 f"ImageOrientationPatient {h.text(0x00200037) or '(missing)'!r}")
        return Unplaced(path, h.text(0x0020000E), f"no valid ImagePositionPatient / ImageOrientationPatient ({found})")
    common = _common(ds, h, path, ts, pixel_offset, pixel_length, image_type)
    common["raw"] = raw
    instance = h.number(0x00200013)
    slope, intercept = h.number(0x00281053), h.number(0x00281052)
    phase = h.number(0x00181060)  # TriggerTime
    if phase is None:
        phase = _float_or_none(ds.get(0x00189153).value) if h.has(0x00189153) else h.number(0x00200100)
    spacing = h.numbers(0x00280030) or h.numbers(0x00181164)  # PixelSpacing, ImagerPixelSpacing
    return [
        SliceRecord(
            frame=0,
            n_frames=1,
            instance=None if instance is None else int(instance),
            position=np.asarray(position, dtype=np.float64),
            orientation=np.asarray(orientation, dtype=np.float64),
            pixel_spacing=(spacing[0], spacing[1]) if spacing and len(spacing) >= 2 else (0.0, 0.0),
            thickness=h.number(0x00180050),
            slope=slope if slope is not None else 1.0,
            intercept=intercept if intercept is not None else 0.0,
            has_rescale=slope is not None and intercept is not None,
            phase=phase,
            **common,
        )
    ]


def _common(ds, h: "_Header", path, ts, pixel_offset, pixel_length, image_type) -> dict[str, Any]:
    padding = None
    if h.has(0x00280120):  # PixelPaddingValue: US or SS, let pydicom decide
        value = float(ds.PixelPaddingValue)
        limit = float(ds.get("PixelPaddingRangeLimit", value))
        padding = (min(value, limit), max(value, limit))
    bits_allocated = h.ushort(0x00280100, 16)
    return dict(
        path=path,
        series_uid=h.text(0x0020000E),
        series_number=h.text(0x00200011),
        description=h.text(0x0008103E),
        modality=h.text(0x00080060),
        image_type=image_type,
        rows=h.ushort(0x00280010, 0),
        cols=h.ushort(0x00280011, 0),
        padding=padding,
        bits_allocated=bits_allocated,
        bits_stored=h.ushort(0x00280101, bits_allocated),
        signed=h.ushort(0x00280103, 0) == 1,
        samples=h.ushort(0x00280002, 1),
        transfer_syntax=ts,
        pixel_offset=pixel_offset,
        pixel_length=pixel_length,
        header=ds,
    )


def _enhanced_records(path, ds, ts, pixel_offset, pixel_length, n_frames, image_type):
    """Frames of an enhanced (multi-frame) CT file, geometry from the functional groups."""
    shared = ds.get("SharedFunctionalGroupsSequence")
    shared = shared[0] if shared else None
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if len(per_frame) != n_frames:
        raise ReadError(
            f"enhanced multi-frame file {path} has {n_frames} frames but {len(per_frame)} per-frame "
            "functional groups",
            code="ENHANCED_MULTIFRAME",
            hint="the file is inconsistent; export the series as single-frame CT images instead",
            paths=[path],
        )
    common = _common(ds, _Header(ds, ts.is_little_endian), path, ts, pixel_offset, pixel_length, image_type)
    records = []
    for index, group in enumerate(per_frame):

        def find(sequence: str, keyword: str, default=None):
            for source in (group, shared):
                if source is not None and sequence in source and len(source[sequence].value):
                    item = source[sequence][0]
                    if keyword in item:
                        return item[keyword].value
            return default

        position = find("PlanePositionSequence", "ImagePositionPatient")
        orientation = find("PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = find("PixelMeasuresSequence", "PixelSpacing")
        if position is None or orientation is None or spacing is None:
            raise ReadError(
                f"enhanced multi-frame file {path}: frame {index + 1} lacks plane position, orientation "
                "or pixel spacing in its functional groups",
                code="ENHANCED_MULTIFRAME",
                hint="export the series as single-frame CT images instead",
                paths=[path],
            )
        slope = find("PixelValueTransformationSequence", "RescaleSlope", None)
        intercept = find("PixelValueTransformationSequence", "RescaleIntercept", None)
        trigger = find("CardiacSynchronizationSequence", "NominalCardiacTriggerDelayTime", None)
        temporal = find("FrameContentSequence", "TemporalPositionIndex", None)
        records.append(
            SliceRecord(
                frame=index,
                n_frames=n_frames,
                instance=None,
                position=np.asarray([float(v) for v in position], dtype=np.float64),
                orientation=np.asarray([float(v) for v in orientation], dtype=np.float64),
                pixel_spacing=(float(spacing[0]), float(spacing[1])),
                thickness=_float_or_none(find("PixelMeasuresSequence", "SliceThickness")),
                slope=_float_or_none(slope) if slope is not None else 1.0,
                intercept=_float_or_none(intercept) if intercept is not None else 0.0,
                has_rescale=slope is not None and intercept is not None,
                phase=_float_or_none(trigger if trigger is not None else temporal),
                **common,
            )
        )
    return records


def _valid(values, n: int) -> bool:
    return values is not None and len(values) == n and bool(np.all(np.isfinite(values)))


def _transfer_syntax(ds) -> UID:
    """The file meta's TransferSyntaxUID; for a dataset without one, the encoding pydicom found."""
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts:
        return UID(str(ts))
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if implicit is False:
        return UID("1.2.840.10008.1.2.1" if little is not False else "1.2.840.10008.1.2.2")
    return UID("1.2.840.10008.1.2")


def _pixel_location(head: bytes, offset: int, ts: UID) -> tuple[int | None, int | None]:
    """(byte offset of the pixel data value, its declared length) for native pixel data, else (None, None).

    ``head`` holds the bytes where pydicom stopped (the Pixel Data element header, if there is one).
    """
    if ts.is_deflated or not ts.is_transfer_syntax or len(head) < 8:
        return None, None
    tag = b"\xe0\x7f\x10\x00" if ts.is_little_endian else b"\x7f\xe0\x00\x10"
    if head[:4] != tag:
        return None, None
    order = "<" if ts.is_little_endian else ">"
    if ts.is_implicit_VR:
        length = struct.unpack(order + "I", head[4:8])[0]
        start = offset + 8
    else:
        if len(head) < 12 or head[4:6] not in (b"OW", b"OB", b"UN"):
            return None, None
        length = struct.unpack(order + "I", head[8:12])[0]
        start = offset + 12
    if length == _UNDEFINED_LENGTH:  # encapsulated (compressed) frames: decode through pydicom
        return None, None
    return start, length


def _float_or_none(value) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
