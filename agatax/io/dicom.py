"""Read a DICOM CT series (a file or a folder searched recursively) into a Volume in HU.

Two passes: headers only (``dicom_scan``), then the chosen series' pixels straight into one preallocated
float32 (z, y, x) array, with rescale slope and intercept applied per slice and padding set to air.
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pydicom

from agatax._memory import aligned_empty
from agatax.errors import ReadError
from agatax.io.dicom_scan import SliceRecord, list_files, scan_files
from agatax.io.dicom_series import choose_series, drop_scouts, group_series, order_slices
from agatax.volume import Volume, _check_exam, hu_problem

__all__ = ["read_dicom", "AIR_HU", "PADDING_BELOW_HU"]

AIR_HU = -1024.0  # value given to padding (outside the reconstruction circle)
PADDING_BELOW_HU = -2000.0  # no tissue or air reads below this: such values are padding
# CT stores HU with slope 1 (a few vendors 0.5 or 2) and intercept -1024, -1000, 0 or -8192: slopes outside
# [0.1, 10] would give HU steps under 0.1 or over 10 HU (no 16-bit CT image is encoded so). The intercept
# shifts stored values up so that air (-1000 HU) fits unsigned storage, so it is zero or negative; beyond
# -8192 or above +1024 HU it puts air or water outside the 16-bit stored range.
SLOPE_RANGE = (0.1, 10.0)
INTERCEPT_RANGE = (-8192.0, 1024.0)
# Padding outside the reconstruction circle (the image corners and the circle's rim) is normal, and so are a
# few end slices reconstructed beyond the scanned range (the real phantom: 2.6 % of the central disc). Padding
# over more than 10 % of the central disc (95 % of the inscribed circle's radius) is worth a warning.
PADDING_DISC_RADIUS = 0.95
PADDING_INSIDE_FRACTION = 0.10
RESCALE_HINT = "the rescale tags were lost or altered on the way; export the series again from the scanner or PACS"
COMPRESSED_HINT = 'pip install "agatax[compressed]"  (pylibjpeg with its libjpeg, openjpeg and rle plugins)'


def read_dicom(
    path: str | os.PathLike,
    *,
    series: str | int | None = None,
    allow_gaps: bool = False,
    allow_uneven: bool = False,
    allow_tilt: bool = False,
    allow_not_ct: bool = False,
    allow_small: bool = False,
    allow_not_hu: bool = False,
) -> Volume:
    """Read one CT series from a DICOM file or folder into a Volume.

    Args:
        path: a DICOM file, or a folder searched recursively (other series, scouts, dose reports,
            DICOMDIR and non-DICOM files may be mixed in: they are skipped, see ``metadata["skipped"]``).
            Files without the 128-byte preamble are read as raw datasets, with a warning.
        series: which series to read when there are several: SeriesInstanceUID, a unique UID prefix,
            the SeriesNumber or the SeriesDescription.
        allow_gaps, allow_uneven, allow_tilt: read series with missing slices, uneven increments or a
            gantry tilt instead of refusing them.
        allow_not_ct: read a modality other than CT.
        allow_small, allow_not_hu: skip the exam checks of ``agatax.volume.check_exam`` (size, HU values).

    Returns:
        Volume with ``hu`` float32 (z, y, x) in HU, z increasing along the slice normal (row x column
        direction), spacing (dz = median increment, dy, dx) in mm and the LPS affine; ``metadata["padding_voxels"]``
        counts the padding voxels set to air (a warning only when they cover over 10 % of the central disc).

    Raises:
        ReadError with code NOT_FOUND, NO_IMAGES, MULTIPLE_SERIES, SERIES_NOT_FOUND, NOT_CT,
        DUPLICATE_POSITION, GANTRY_TILT, MISSING_SLICES, UNEVEN_SPACING, TRUNCATED_FILE, CORRUPT_FILE,
        DECODER_MISSING, ENHANCED_MULTIFRAME, UNSUPPORTED_PIXELS, BAD_PATH, BAD_POSITION, BAD_RESCALE,
        PIXEL_SIZE_MISMATCH, MIXED_GEOMETRY, UNSUPPORTED_TRANSFER_SYNTAX, TOO_SMALL, NOT_HU.
    """
    source = str(path)
    files = list_files(path)
    records, skipped, unplaced = scan_files(files)
    found = group_series(records)
    found, scouts = drop_scouts(found)
    skipped += scouts
    if not found and unplaced:
        _refuse_unplaced(unplaced)
    if not found:
        reasons = Counter(reason.split(" (")[0] for _, reason in skipped)
        summary = ", ".join(f"{n} {reason}" for reason, n in reasons.most_common()) or "no files at all"
        raise ReadError(
            f"no CT image slices in {source} ({len(files)} files: {summary})",
            code="NO_IMAGES",
            hint="point at the folder or file of the reconstructed axial CT series",
            paths=[p for p, _ in skipped[:10]],
        )
    if series is None:
        ct = [s for s in found if s.first.modality.upper() == "CT"]
        if ct or not allow_not_ct:
            for s in found:
                if s.first.modality.upper() != "CT":
                    skipped += [(r.path, f"modality {s.first.modality or '?'}, not CT") for r in s.records]
            if not ct:
                raise ReadError(
                    f"{source} holds no CT series, only: " + "; ".join(s.label() for s in found),
                    code="NOT_CT",
                    hint="agatax scores CT; pass allow_not_ct=True to read other modalities anyway",
                    paths=[s.first.path for s in found],
                )
            found = ct
    chosen, others = choose_series(found, series, source)
    for s in others:
        skipped += [(r.path, f"another series ({s.uid}), not selected") for r in s.records]
    first = chosen.first
    if first.modality.upper() != "CT" and not allow_not_ct:
        raise ReadError(
            f"series {chosen.label()} is modality {first.modality or '(none)'}, not CT",
            code="NOT_CT",
            hint="agatax scores CT; pass allow_not_ct=True to read it anyway",
            paths=[first.path],
        )

    _refuse_unplaced([u for u in unplaced if u.series_uid == chosen.uid])
    geometry = order_slices(chosen, allow_gaps=allow_gaps, allow_uneven=allow_uneven, allow_tilt=allow_tilt)
    rescaled = _check_rescale(geometry.records)
    hu, padded, inside, disc = _read_pixels(geometry.records)

    warnings = list(geometry.warnings)
    thickness = first.thickness
    if thickness is not None and thickness > 1.01 * geometry.increment:
        warnings.append(
            f"overlapping reconstruction: increment {geometry.increment:g} mm < slice thickness {thickness:g} mm; "
            "scores use the increment"
        )
    if not rescaled:
        problem = None if allow_not_hu else hu_problem(hu)
        if problem:
            raise ReadError(
                f"series {chosen.uid}: RescaleSlope / RescaleIntercept missing on every slice ({first.path}, ...) "
                f"and the stored values are not HU: {problem}",
                code="BAD_RESCALE",
                hint=RESCALE_HINT,
                paths=[first.path],
            )
        warnings.append("RescaleSlope / RescaleIntercept missing on every slice: stored values taken as HU "
                        "(they hold air and soft tissue)")
    raw = [r.name for r in geometry.records if r.raw]
    if raw:
        warnings.append(f"{len(raw)} files ({raw[0]}, ...) have no DICOM preamble (128 bytes + DICM); read as raw "
                        "datasets")
    if inside > PADDING_INSIDE_FRACTION * disc:
        warnings.append(
            f"{padded} padding voxels (PixelPaddingValue or below {PADDING_BELOW_HU:g} HU) set to {AIR_HU:g} HU, "
            f"{inside} of them ({100 * inside / disc:.1f} % of the central disc) inside the reconstruction circle, "
            "where the image should hold the body"
        )
    if skipped:
        reasons = Counter(reason.split(" (")[0].split(",")[0] for _, reason in skipped)
        summary = ", ".join(f"{n} {reason}" for reason, n in reasons.most_common())
        warnings.append(f"skipped {len(skipped)} files that are not slices of this series ({summary}); "
                        "see metadata['skipped']")

    header = first.header
    metadata = {
        "patient_id": str(header.get("PatientID", "") or ""),
        "study_uid": str(header.get("StudyInstanceUID", "") or ""),
        "series_uid": first.series_uid,
        "series_number": first.series_number,
        "series_description": first.description,
        "modality": first.modality,
        "kvp": _float(header.get("KVP")),
        "manufacturer": str(header.get("Manufacturer", "") or ""),
        "model": str(header.get("ManufacturerModelName", "") or ""),
        "kernel": _text(header.get("ConvolutionKernel")),
        "study_date": str(header.get("StudyDate", "") or ""),
        "skipped": skipped,
        "files": [r.name for r in geometry.records],
        "padding_voxels": padded,
        "format": "dicom",
    }
    dy, dx = first.pixel_spacing
    volume = Volume(
        hu=hu,
        spacing=(geometry.increment, dy, dx),
        slice_thickness=thickness,
        affine=geometry.affine,
        metadata=metadata,
        warnings=tuple(warnings),
        source=source,
    )
    _check_exam(volume, allow_small=allow_small, allow_not_hu=allow_not_hu, error=ReadError)
    return volume


def _refuse_unplaced(unplaced) -> None:
    if not unplaced:
        return
    names = ", ".join(u.path for u in unplaced[:3]) + (", ..." if len(unplaced) > 3 else "")
    raise ReadError(
        f"{len(unplaced)} image files of series {unplaced[0].series_uid or '(no SeriesInstanceUID)'} have no usable "
        f"position: {names}: {unplaced[0].detail}",
        code="BAD_POSITION",
        hint="the slice cannot be placed in the volume; export the series again, or remove the file (the series "
        "then reads as missing a slice: allow_gaps=True)",
        paths=[u.path for u in unplaced[:10]],
    )


def _check_rescale(records: list[SliceRecord]) -> bool:
    """Refuse rescale tags present on only some slices or out of range (BAD_RESCALE); False when absent on all."""
    present = [r for r in records if r.has_rescale]
    if present and len(present) < len(records):
        missing = [r for r in records if not r.has_rescale]
        raise ReadError(
            f"RescaleSlope / RescaleIntercept present on {len(present)} slices but missing on {len(missing)} "
            f"({', '.join(r.name for r in missing[:3])}{', ...' if len(missing) > 3 else ''}): their values are "
            "not known in HU",
            code="BAD_RESCALE",
            hint=RESCALE_HINT,
            paths=[r.path for r in missing[:10]],
        )
    for r in present:
        slope, intercept = r.slope, r.intercept
        if (slope is None or intercept is None or not SLOPE_RANGE[0] <= slope <= SLOPE_RANGE[1]
                or not INTERCEPT_RANGE[0] <= intercept <= INTERCEPT_RANGE[1]):
            raise ReadError(
                f"{r.name}: RescaleSlope {slope} / RescaleIntercept {intercept} are not a CT rescale (slope "
                f"{SLOPE_RANGE[0]:g}..{SLOPE_RANGE[1]:g}, intercept {INTERCEPT_RANGE[0]:g}..{INTERCEPT_RANGE[1]:g} HU)",
                code="BAD_RESCALE",
                hint=RESCALE_HINT,
                paths=[r.path],
            )
    return bool(present)


def _read_pixels(records: list[SliceRecord]) -> tuple[np.ndarray, int, int, int]:
    """Fill one float32 (z, y, x) array in HU; returns it, the number of padding voxels set to air, how many
    of those lie in the central disc (radius 0.95 x that of the circle inscribed in the image) and the number
    of voxels of that disc over all slices."""
    first = records[0]
    if first.samples != 1 or first.bits_allocated not in (8, 16, 32):
        raise ReadError(
            f"{first.path}: {first.samples} samples per pixel with {first.bits_allocated} bits allocated; "
            "a CT slice is one 8/16/32-bit greyscale sample",
            code="UNSUPPORTED_PIXELS",
            paths=[first.path],
        )
    _check_decoders(records)
    out = aligned_empty((len(records), first.rows, first.cols), np.float32)  # shared with the CPU device
    decoded: dict[str, np.ndarray] = {}  # multi-frame files needing pydicom, decoded once
    padded = inside = 0
    y, x = np.ogrid[: first.rows, : first.cols]
    radius = PADDING_DISC_RADIUS * min(first.rows, first.cols) / 2
    circle = (y - (first.rows - 1) / 2) ** 2 + (x - (first.cols - 1) / 2) ** 2 <= radius**2
    for index, record in enumerate(records):
        raw = _raw_slice(record, decoded)
        plane = out[index]
        np.copyto(plane, raw, casting="unsafe")
        pad = None
        if record.padding is not None:
            low, high = record.padding
            pad = (raw >= low) & (raw <= high)
        if record.slope != 1.0:
            plane *= np.float32(record.slope)
        if record.intercept != 0.0:
            plane += np.float32(record.intercept)
        below = plane < PADDING_BELOW_HU
        pad = below if pad is None else (pad | below)
        count = int(np.count_nonzero(pad))
        if count:
            plane[pad] = AIR_HU
            padded += count
            inside += int(np.count_nonzero(pad & circle))
    return out, padded, inside, int(np.count_nonzero(circle)) * len(records)


def _check_decoders(records: list[SliceRecord]) -> None:
    needing = [r for r in records if r.pixel_offset is None and r.transfer_syntax.is_compressed]
    if not needing:
        return
    ts = needing[0].transfer_syntax
    try:
        from pydicom.pixels import get_decoder

        decoder = get_decoder(ts)
        available = decoder.is_available
        missing = "; ".join(decoder.missing_dependencies)
    except (NotImplementedError, ValueError) as err:
        available, missing = False, str(err)
    if not available:
        raise ReadError(
            f"{len(needing)} slices ({needing[0].path}, ...) are compressed with {ts.name} ({ts}) and no "
            f"decoder for it is installed ({missing})",
            code="DECODER_MISSING",
            hint=COMPRESSED_HINT,
            paths=[r.path for r in needing[:10]],
        )


def _raw_slice(record: SliceRecord, decoded: dict[str, np.ndarray]) -> np.ndarray:
    """The stored pixel values of one slice, (rows, cols), as integers (no rescale)."""
    shape = (record.rows, record.cols)
    if record.pixel_offset is not None:
        nbytes = record.frame_bytes
        with open(record.path, "rb") as fp:
            _check_length(record, record.pixel_length, os.fstat(fp.fileno()).st_size - record.pixel_offset)
            fp.seek(record.pixel_offset + record.frame * nbytes)
            data = fp.read(nbytes)
        if len(data) < nbytes:
            _truncated(record, len(data) + record.frame * nbytes, nbytes * record.n_frames, "holds")
        order = "<" if record.transfer_syntax.is_little_endian else ">"
        dtype = np.dtype(f"{order}{'i' if record.signed else 'u'}{record.bits_allocated // 8}")
        raw = np.frombuffer(data, dtype=dtype).reshape(shape)
        return _mask_bits(raw, record)
    if record.path not in decoded:
        try:
            ds = pydicom.dcmread(record.path)
        except Exception as err:
            raise ReadError(f"cannot read {record.path}: {err}", code="CORRUPT_FILE", paths=[record.path]) from err
        if "PixelData" not in ds:
            _truncated(record, 0, record.frame_bytes * record.n_frames, "holds")
        if not record.transfer_syntax.is_compressed:
            _check_length(record, len(ds.PixelData), len(ds.PixelData))
        try:
            array = ds.pixel_array
        except Exception as err:
            raise ReadError(
                f"cannot decode the pixel data of {record.path} ({record.transfer_syntax.name}): {err}",
                code="CORRUPT_FILE",
                hint=COMPRESSED_HINT if record.transfer_syntax.is_compressed else None,
                paths=[record.path],
            ) from err
        decoded[record.path] = np.asarray(array).reshape((record.n_frames, *shape))
    frames = decoded[record.path]
    if record.frame == record.n_frames - 1:
        decoded.pop(record.path)
    return frames[record.frame]


def _mask_bits(raw: np.ndarray, record: SliceRecord) -> np.ndarray:
    """Honour BitsStored < BitsAllocated: clear unused high bits, sign-extend signed values."""
    unused = record.bits_allocated - record.bits_stored
    if unused <= 0:
        return raw
    if record.signed:
        return (raw << unused) >> unused
    return raw & ((1 << record.bits_stored) - 1)


def _check_length(record: SliceRecord, declared: int | None, held: int) -> None:
    """Native pixel data must be exactly rows x cols x frames x bytes (plus one pad byte to an even length):
    shorter data in a file cut short is TRUNCATED_FILE, other lengths PIXEL_SIZE_MISMATCH."""
    want = record.frame_bytes * record.n_frames
    declared = held if declared is None else declared
    if held < min(declared, want):
        _truncated(record, held, want, "holds")
    if declared not in (want, want + want % 2):
        raise ReadError(
            f"{record.path}: pixel data holds {declared} bytes but Rows {record.rows} x Columns {record.cols} x "
            f"{record.n_frames} frames x {record.bits_allocated} bits make {want} bytes: the image size in the "
            "header does not match its pixels",
            code="PIXEL_SIZE_MISMATCH",
            hint="the header was altered (Rows / Columns / BitsAllocated); export the series again",
            paths=[record.path],
        )


def _truncated(record: SliceRecord, have: int, want: int, verb: str) -> None:
    raise ReadError(
        f"{record.path} {verb} {have} bytes of pixel data, expected {want} "
        f"({record.n_frames} x {record.rows} x {record.cols} x {record.bits_allocated} bits)",
        code="TRUNCATED_FILE",
        hint="the file was cut short (copy or transfer interrupted); export the series again",
        paths=[record.path],
    )


def _float(value) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)
