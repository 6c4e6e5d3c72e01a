"""Read a DICOM CT series (a file or a folder searched recursively) into a Volume in HU.

Two passes: headers only (``dicom_scan``), then the chosen series' pixels straight into one preallocated
float32 (z, y, x) array, with rescale slope and intercept applied per slice and padding set to air.
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pydicom

from agatax.errors import ReadError
from agatax.io.dicom_scan import SliceRecord, list_files, scan_files
from agatax.io.dicom_series import choose_series, drop_scouts, group_series, order_slices
from agatax.volume import Volume, _check_exam

__all__ = ["read_dicom", "AIR_HU", "PADDING_BELOW_HU"]

AIR_HU = -1024.0  # value given to padding (outside the reconstruction circle)
PADDING_BELOW_HU = -2000.0  # no tissue or air reads below this: such values are padding
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
        series: which series to read when there are several: SeriesInstanceUID, a unique UID prefix,
            the SeriesNumber or the SeriesDescription.
        allow_gaps, allow_uneven, allow_tilt: read series with missing slices, uneven increments or a
            gantry tilt instead of refusing them.
        allow_not_ct: read a modality other than CT.
        allow_small, allow_not_hu: skip the exam checks of ``agatax.volume.check_exam`` (size, HU values).

    Returns:
        Volume with ``hu`` float32 (z, y, x) in HU, z increasing along the slice normal (row x column
        direction), spacing (dz = median increment, dy, dx) in mm and the LPS affine.

    Raises:
        ReadError with code NOT_FOUND, NO_IMAGES, MULTIPLE_SERIES, SERIES_NOT_FOUND, NOT_CT,
        DUPLICATE_POSITION, GANTRY_TILT, MISSING_SLICES, UNEVEN_SPACING, TRUNCATED_FILE, CORRUPT_FILE,
        DECODER_MISSING, ENHANCED_MULTIFRAME, UNSUPPORTED_PIXELS, TOO_SMALL, NOT_HU.
    """
    source = str(path)
    files = list_files(path)
    records, skipped = scan_files(files)
    found = group_series(records)
    found, scouts = drop_scouts(found)
    skipped += scouts
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

    geometry = order_slices(chosen, allow_gaps=allow_gaps, allow_uneven=allow_uneven, allow_tilt=allow_tilt)
    hu, padded = _read_pixels(geometry.records)

    warnings = list(geometry.warnings)
    thickness = first.thickness
    if thickness is not None and thickness > 1.01 * geometry.increment:
        warnings.append(
            f"overlapping reconstruction: increment {geometry.increment:g} mm < slice thickness {thickness:g} mm; "
            "scores use the increment"
        )
    if not all(r.has_rescale for r in geometry.records):
        warnings.append("RescaleIntercept missing on some slices: stored values taken as HU")
    if padded:
        warnings.append(f"{padded} padding voxels (PixelPaddingValue or below {PADDING_BELOW_HU:g} HU) set to {AIR_HU:g} HU")
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


def _read_pixels(records: list[SliceRecord]) -> tuple[np.ndarray, int]:
    """Fill one float32 (z, y, x) array in HU; returns it and the number of padding voxels set to air."""
    first = records[0]
    if first.samples != 1 or first.bits_allocated not in (8, 16, 32):
        raise ReadError(
            f"{first.path}: {first.samples} samples per pixel with {first.bits_allocated} bits allocated; "
            "a CT slice is one 8/16/32-bit greyscale sample",
            code="UNSUPPORTED_PIXELS",
            paths=[first.path],
        )
    _check_decoders(records)
    out = np.empty((len(records), first.rows, first.cols), dtype=np.float32)
    decoded: dict[str, np.ndarray] = {}  # multi-frame files needing pydicom, decoded once
    padded = 0
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
    return out, padded


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
        if record.pixel_length is not None and record.pixel_length < nbytes * record.n_frames:
            _truncated(record, record.pixel_length, nbytes * record.n_frames, "declares")
        with open(record.path, "rb") as fp:
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
        if not record.transfer_syntax.is_compressed and len(ds.PixelData) < record.frame_bytes * record.n_frames:
            _truncated(record, len(ds.PixelData), record.frame_bytes * record.n_frames, "holds")
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
