"""NIfTI exams and masks: read into (z, y, x) with an LPS affine, write arrays aligned with a Volume.

NIfTI stores data as (i, j, k) with an affine to RAS mm; agatax arrays are (z, y, x) = (k, j, i) with an
affine to LPS mm. Reading transposes (and flips k when needed so that z runs along the slice normal,
x direction cross y direction); writing does the exact inverse, so a round trip keeps HU, spacing and
orientation.
"""

from __future__ import annotations

import gzip
import os
import warnings
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from agatax.errors import InputError, ReadError
from agatax.volume import Volume, _check_exam

__all__ = ["read_nifti", "write_nifti", "read_mask", "is_nifti", "MAX_VOXELS", "ARTERY_LABELS"]

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_IJK_TO_ZYX = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
ALIGN_TOLERANCE = 0.05  # grids agree when every corner voxel centre is within this fraction of a voxel
MAX_VOXELS = 1024 * 1024 * 2000  # larger images are refused before reading (8 GB as float32)
ARTERY_LABELS = 4  # mask contract: 0 background, 1 LM, 2 LAD, 3 LCX, 4 RCA
_TRUNCATED_HINT = "the file was cut short (copy or transfer interrupted); write or copy it again"


def is_nifti(path: str | os.PathLike) -> bool:
    """True for ``.nii`` and ``.nii.gz`` file names."""
    name = str(path).lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def _load(path: str | os.PathLike, *, allow_qform_mismatch: bool):
    """(data (i, j, k) proxy image, affine RAS, warnings) with the sform/qform check."""
    if not Path(path).is_file():
        raise ReadError(f"no such NIfTI file: {path}", code="NOT_FOUND", paths=[str(path)])
    try:
        img = nib.load(str(path))
    except Exception as err:
        code = "TRUNCATED_FILE" if isinstance(err, EOFError) else "CORRUPT_FILE"
        raise ReadError(f"cannot read NIfTI file {path}: {type(err).__name__}: {err}", code=code,
                        paths=[str(path)]) from err
    header = img.header
    _check_size(img, path)
    warnings = []
    sform, scode = header.get_sform(coded=True)
    qform, qcode = header.get_qform(coded=True)
    shape = img.shape[:3]
    if scode > 0 and qcode > 0:
        distance = _corner_distance(sform, qform, shape)
        voxel = float(min(header.get_zooms()[:3]))
        if distance > ALIGN_TOLERANCE * voxel:
            text = (
                f"{path}: qform (code {int(qcode)}) and sform (code {int(scode)}) disagree by up to "
                f"{distance:.3f} mm at the grid corners (voxel {voxel:g} mm)"
            )
            if not allow_qform_mismatch:
                raise ReadError(
                    text,
                    code="QFORM_SFORM_MISMATCH",
                    hint="fix the header, or pass allow_qform_mismatch=True to use the sform (as nibabel does)",
                    paths=[str(path)],
                )
            warnings.append(text + "; the sform was used")
    elif scode == 0 and qcode == 0:
        warnings.append(f"{path}: neither sform nor qform is set; orientation unknown, voxel sizes only")
    return img, np.asarray(img.affine, dtype=np.float64), warnings


def _check_size(img, path) -> None:
    """TOO_LARGE beyond MAX_VOXELS; TRUNCATED_FILE when an uncompressed file is shorter than its header says."""
    shape = tuple(int(n) for n in img.shape)
    voxels = int(np.prod(shape, dtype=np.float64)) if shape else 0
    itemsize = img.header.get_data_dtype().itemsize
    if voxels > MAX_VOXELS:
        raise ReadError(
            f"NIfTI file {path} declares {' x '.join(map(str, shape))} voxels ({voxels * itemsize / 1e9:.1f} GB "
            f"stored, {voxels * 4 / 1e9:.1f} GB as float32); at most {MAX_VOXELS} voxels (1024 x 1024 x 2000) are read",
            code="TOO_LARGE",
            hint="check the header's dimensions; a calcium scoring exam is about 512 x 512 x 40-80 voxels",
            paths=[str(path)],
        )
    if not str(path).lower().endswith(".gz"):
        want = int(getattr(img.dataobj, "offset", img.header["vox_offset"])) + voxels * itemsize
        have = os.path.getsize(path)
        if have < want:
            raise ReadError(
                f"NIfTI file {path} holds {have} bytes; its header ({' x '.join(map(str, shape))} voxels of "
                f"{img.header.get_data_dtype()}) needs {want}",
                code="TRUNCATED_FILE",
                hint=_TRUNCATED_HINT,
                paths=[str(path)],
            )


def _read_data(path, read):
    """``read()`` the voxels, turning the errors of a cut or damaged file into ReadError."""
    try:
        return read()
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError, ValueError) as err:
        cut = isinstance(err, EOFError) or "end-of-stream" in str(err)
        raise ReadError(
            f"cannot read the voxels of {path}: {type(err).__name__}: {err}",
            code="TRUNCATED_FILE" if cut else "CORRUPT_FILE",
            hint=_TRUNCATED_HINT if cut else "the file is damaged; write or copy it again",
            paths=[str(path)],
        ) from err


def _corner_distance(a: np.ndarray, b: np.ndarray, shape) -> float:
    corners = np.array(np.meshgrid(*[[0, max(n - 1, 0)] for n in shape], indexing="ij")).reshape(3, -1)
    corners = np.vstack([corners, np.ones(corners.shape[1])])
    return float(np.max(np.linalg.norm((a @ corners)[:3] - (b @ corners)[:3], axis=0)))


def _to_zyx(data: np.ndarray, affine_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(i, j, k) data + RAS affine -> (z, y, x) data + LPS affine, z along x-direction cross y-direction."""
    data = np.asarray(data)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ReadError(f"expected a 3D image (i, j, k); got shape {data.shape}", code="NOT_3D")
    zyx = data.transpose(2, 1, 0)
    affine = _RAS_TO_LPS @ affine_ras @ _IJK_TO_ZYX
    normal = np.cross(affine[:3, 2], affine[:3, 1])
    if float(affine[:3, 0] @ normal) < 0:
        zyx = zyx[::-1]
        affine = affine.copy()
        affine[:3, 3] += affine[:3, 0] * (zyx.shape[0] - 1)
        affine[:3, 0] *= -1
    return zyx, affine


def read_nifti(
    path: str | os.PathLike,
    *,
    allow_qform_mismatch: bool = False,
    allow_small: bool = False,
    allow_not_hu: bool = False,
) -> Volume:
    """Read a NIfTI CT volume: scaling (scl_slope, scl_inter) applied, float32 (z, y, x) HU.

    The affine is nibabel's choice (sform when its code > 0, else qform), converted to LPS; spacing is
    (dz, dy, dx) = column norms of that affine (mm). The exam is checked by ``agatax.volume.check_exam``
    (``allow_small`` / ``allow_not_hu`` skip it).

    Raises:
        ReadError NOT_FOUND, CORRUPT_FILE, TRUNCATED_FILE, TOO_LARGE, QFORM_SFORM_MISMATCH, NOT_3D, NON_FINITE,
        TOO_SMALL, NOT_HU.
    """
    img, affine_ras, warnings = _load(path, allow_qform_mismatch=allow_qform_mismatch)
    data = _read_data(path, lambda: img.get_fdata(dtype=np.float32))
    hu, affine = _to_zyx(data, affine_ras)
    spacing = tuple(float(np.linalg.norm(affine[:3, i])) for i in range(3))
    hu = np.ascontiguousarray(hu, dtype=np.float32)
    del data  # a flipped or transposed read was copied: keep one float32 copy only
    if not np.all(np.isfinite(hu)):
        bad = int(hu.size - np.count_nonzero(np.isfinite(hu)))
        raise ReadError(f"{path} holds {bad} NaN or infinite voxels", code="NON_FINITE", paths=[str(path)],
                        hint="replace them (e.g. with -1000 HU for air) before scoring")
    header = img.header
    description = header["descrip"].item()
    description = description.decode("latin-1", "replace") if isinstance(description, bytes) else str(description)
    volume = Volume(
        hu=hu,
        spacing=spacing,
        slice_thickness=None,
        affine=affine,
        metadata={"series_description": description.strip("\x00 "), "skipped": [], "format": "nifti"},
        warnings=tuple(warnings),
        source=str(path),
    )
    _check_exam(volume, allow_small=allow_small, allow_not_hu=allow_not_hu, error=ReadError)
    return volume


def write_nifti(path: str | os.PathLike, array, like: Volume | None = None) -> str:
    """Write a (z, y, x) array on ``like``'s grid as NIfTI (``.nii`` or ``.nii.gz``); returns the path.

    ``array`` may be a Volume (its HU are written on its own grid). Booleans are stored as uint8, other
    integers keep their type, floats as float32. sform and qform are both set (code 1, scanner) unless
    the grid is sheared (gantry tilt), where only the sform can hold it.
    """
    if isinstance(array, Volume):
        like = like or array
        array = array.hu
    if like is None:
        raise InputError("write_nifti needs like=<Volume> to know the grid", code="MISSING_GRID")
    data = np.asarray(array)
    if data.shape != like.shape:
        raise InputError(
            f"array shape {data.shape} does not match the volume's (z, y, x) shape {like.shape}",
            code="SHAPE_MISMATCH",
        )
    if data.dtype == bool:
        data = data.astype(np.uint8)
    elif np.issubdtype(data.dtype, np.floating):
        data = data.astype(np.float32)
    elif data.dtype == np.int64 or data.dtype == np.uint64:
        data = data.astype(np.int32)
    affine_ras = _RAS_TO_LPS @ np.asarray(like.affine, dtype=np.float64) @ _IJK_TO_ZYX
    img = nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), affine=None)
    img.set_sform(affine_ras, code=1)
    columns = affine_ras[:3, :3] / np.linalg.norm(affine_ras[:3, :3], axis=0)
    if np.allclose(columns.T @ columns, np.eye(3), atol=1e-6):
        img.set_qform(affine_ras, code=1)
    else:
        img.set_qform(None, code=0)
    img.header.set_xyzt_units("mm")
    path = Path(path)
    if not is_nifti(path):
        raise InputError(f"NIfTI file names end in .nii or .nii.gz; got {path.name}", code="BAD_PATH")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return str(path)


def read_mask(path: str | os.PathLike, like: Volume, *, allow_qform_mismatch: bool = False) -> np.ndarray:
    """Read a mask aligned with ``like``: integer array (z, y, x) of ``like.shape``.

    NIfTI masks are compared with ``like`` through their affine; a mask on the same voxel grid stored
    with axes permuted or flipped is brought to ``like``'s order. ``.npy`` files must already be
    (z, y, x) of ``like.shape``.

    Label contract: 0 background, 1 LM, 2 LAD, 3 LCX, 4 RCA (values 0..4 are returned as stored, uint8; a
    mask of 0 and 1 only is calcium without arteries). A mask whose only non-zero value lies outside 1..4
    (a binary 0/255 mask) is read as calcium with unknown artery: returned as 0/1, with a warning
    (UserWarning). Other values outside 0..4 are refused.

    Raises:
        ReadError MASK_MISMATCH when shape or grid differ; BAD_MASK for non-integer, negative or mixed
        out-of-contract values, object arrays and non-mask files; TRUNCATED_FILE, CORRUPT_FILE, TOO_LARGE.
    """
    path = Path(path)
    if str(path).lower().endswith(".npy"):
        if not path.is_file():
            raise ReadError(f"no such mask file: {path}", code="NOT_FOUND", paths=[str(path)])
        shape = _check_npy(path)
        if shape != like.shape:
            raise ReadError(
                f"mask {path} has shape {shape}; the volume is (z, y, x) {like.shape}",
                code="MASK_MISMATCH",
                hint="a .npy mask must be (z, y, x) on the volume's grid; use NIfTI to carry a different layout",
                paths=[str(path)],
            )
        data = _read_data(path, lambda: np.load(path, allow_pickle=False))
    elif is_nifti(path):
        img, affine_ras, _ = _load(path, allow_qform_mismatch=allow_qform_mismatch)
        data, affine = _to_zyx(_read_data(path, lambda: np.asanyarray(img.dataobj)), affine_ras)
        data = _onto_grid(data, affine, like, path)
    else:
        raise ReadError(f"mask {path}: expected a .nii, .nii.gz or .npy file", code="BAD_MASK", paths=[str(path)])
    return _as_labels(data, path)


def _onto_grid(data: np.ndarray, affine: np.ndarray, like: Volume, path) -> np.ndarray:
    """Permute/flip ``data`` onto ``like``'s grid when both grids are the same voxels, else MASK_MISMATCH."""
    index_map = np.linalg.solve(like.affine, affine)  # mask index -> like index
    rotation = index_map[:3, :3]
    target = np.argmax(np.abs(rotation), axis=0)  # like axis of each mask axis
    if sorted(target) == [0, 1, 2]:
        signs = np.sign(rotation[target, [0, 1, 2]])
        moved = data
        for axis in range(3):
            if signs[axis] < 0:
                moved = np.flip(moved, axis)
        order = np.argsort(target)  # like axis b comes from mask axis order[b]
        moved = moved.transpose(order)
        if moved.shape == like.shape:
            flipped = np.eye(4)
            for axis in range(3):
                if signs[axis] < 0:
                    flipped[axis, axis] = -1
                    flipped[axis, 3] = data.shape[axis] - 1
            permute = np.eye(4)[:, list(order) + [3]]
            moved_affine = affine @ flipped @ permute
            voxel = min(like.spacing)
            if _corner_distance(moved_affine, like.affine, like.shape) <= ALIGN_TOLERANCE * voxel:
                return np.ascontiguousarray(moved)
    origin_gap = float(np.linalg.norm(affine[:3, 3] - like.affine[:3, 3]))
    spacing = tuple(round(float(np.linalg.norm(affine[:3, i])), 4) for i in range(3))
    raise ReadError(
        f"mask {path} ((z, y, x) {data.shape}, spacing {spacing} mm) is not on the volume's grid "
        f"({like.shape}, spacing {tuple(round(s, 4) for s in like.spacing)} mm); origins {origin_gap:.2f} mm apart",
        code="MASK_MISMATCH",
        hint="write masks with agatax.write_nifti(path, mask, like=volume), or resample the mask onto the exam",
        paths=[str(path)],
    )


def _check_npy(path: Path) -> tuple[int, ...]:
    """The shape in a .npy mask's header, read before loading it: BAD_MASK for object arrays or non-.npy
    bytes, TRUNCATED_FILE when the file is shorter than its header says."""
    try:
        with open(path, "rb") as fp:
            version = np.lib.format.read_magic(fp)
            fmt = np.lib.format
            shape, _, dtype = (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(fp)
            offset = fp.tell()
    except Exception as err:
        raise ReadError(f"mask {path} is not a readable .npy file ({err})", code="BAD_MASK",
                        hint="save masks with numpy.save(path, mask) (an integer or boolean array)",
                        paths=[str(path)]) from err
    if dtype.hasobject or not (dtype == bool or np.issubdtype(dtype, np.number)):
        raise ReadError(
            f"mask {path} holds a {dtype} array (Python objects, not voxels)",
            code="BAD_MASK",
            hint="save the mask as an integer or boolean (z, y, x) array: numpy.save(path, np.asarray(mask, np.uint8))",
            paths=[str(path)],
        )
    want = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    have = os.path.getsize(path)
    if have < want:
        raise ReadError(f"mask {path} holds {have} bytes; its header ({shape} {dtype}) needs {want}",
                        code="TRUNCATED_FILE", hint=_TRUNCATED_HINT, paths=[str(path)])
    return tuple(shape)


def _as_labels(data: np.ndarray, path) -> np.ndarray:
    """The label contract on ``data`` (z, y, x), checked slab by slab (no full-size temporaries)."""
    data = np.asarray(data)
    if data.dtype == bool:
        return data.astype(np.uint8)
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise ReadError(f"mask {path} holds {data.dtype} values", code="BAD_MASK", paths=[str(path)])
    values: set = set()
    step = max(1, (1 << 24) // max(1, data[:1].size))
    for start in range(0, data.shape[0], step):
        slab = data[start : start + step]
        if np.issubdtype(slab.dtype, np.floating) and (
            not np.all(np.isfinite(slab)) or np.any(slab != np.round(slab))
        ):
            raise ReadError(f"mask {path} holds non-integer values", code="BAD_MASK",
                            hint="masks hold 0 for background and integer labels", paths=[str(path)])
        values.update(np.unique(slab).tolist())
        if len(values) > 64:
            break
    shown = ", ".join(f"{v:g}" for v in sorted(values)[:12]) + (", ..." if len(values) > 12 else "")
    if min(values, default=0) < 0:
        raise ReadError(f"mask {path} holds negative values ({shown})", code="BAD_MASK",
                        hint="0 = background, 1..4 = LM, LAD, LCX, RCA", paths=[str(path)])
    extra = values - set(range(ARTERY_LABELS + 1))
    if not extra:
        return np.ascontiguousarray(data.astype(np.uint8))
    nonzero = values - {0}
    if len(nonzero) == 1:
        (value,) = nonzero
        warnings.warn(f"mask {path}: its only non-zero value {value:g} is no artery label (1..4); read as "
                      "calcium of unknown artery (1)", stacklevel=3)
        return np.ascontiguousarray(data != 0, dtype=np.uint8)
    raise ReadError(
        f"mask {path} holds values {shown}: labels are 0 background, 1 LM, 2 LAD, 3 LCX, 4 RCA",
        code="BAD_MASK",
        hint="relabel the arteries 1..4, or give a binary mask (0 and one other value) for calcium without arteries",
        paths=[str(path)],
    )
