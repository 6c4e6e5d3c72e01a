"""A PNG montage of the axial slices that hold calcium, true lesions outlined in colour by artery."""

from __future__ import annotations

import os

import numpy as np

from agatax.errors import InputError
from agatax.volume import Volume

__all__ = ["render_montage", "ARTERY_COLOURS"]

ARTERY_COLOURS = {1: ("LM", "#ffd400"), 2: ("LAD", "#ff3b30"), 3: ("LCX", "#34c759"), 4: ("RCA", "#00b7ff")}


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise InputError("render_montage needs matplotlib, which is not installed", code="MISSING_DEPENDENCY",
                         hint='pip install "agatax[report]"') from err
    return plt


def _pick_slices(mask: np.ndarray | None, hu: np.ndarray, max_slices: int) -> list[int]:
    nz = hu.shape[0]
    if mask is not None and mask.any():
        counts = (mask > 0).reshape(nz, -1).sum(1)
        ks = np.nonzero(counts)[0]
    else:
        counts = (hu >= 130).reshape(nz, -1).sum(1)
        ks = np.arange(nz)
    if ks.size > max_slices:
        ks = ks[np.linspace(0, ks.size - 1, max_slices).round().astype(int)]
    return [int(k) for k in ks]


def render_montage(exam_or_volume, mask: np.ndarray | None = None, path: str | os.PathLike | None = None, *,
                   max_slices: int = 12, window: tuple[float, float] = (800.0, 200.0), columns: int = 4,
                   crop: bool = True, dpi: int = 110) -> bytes:
    """Render a montage PNG and return its bytes (also written to ``path`` when given).

    Args:
        exam_or_volume: a SyntheticExam (its mask is used) or a Volume / (z, y, x) HU array.
        mask: (z, y, x) uint8 artery labels (1 LM, 2 LAD, 3 LCX, 4 RCA) or bool; overrides the exam's.
        max_slices: at most this many axial slices (those holding calcium, evenly picked).
        window: (width, level) in HU; (800, 200) shows soft tissue grey, calcium and bone white.
        crop: zoom on the region holding the mask (with margin) when there is one.
    Voxels >= 130 HU that are not in the mask (bone, aortic and valve calcium, noise) stay visible, unmarked.
    Requires matplotlib (``pip install "agatax[report]"``).
    """
    plt = _pyplot()
    title = ""
    if hasattr(exam_or_volume, "volume") and hasattr(exam_or_volume, "mask"):
        exam = exam_or_volume
        hu = exam.volume.hu
        mask = exam.mask if mask is None else mask
        title = f"seed {exam.seed}: Agatston {exam.agatston:.1f} (category {exam.category}), {len(exam.lesions)} lesions"
    elif isinstance(exam_or_volume, Volume):
        hu = exam_or_volume.hu
    else:
        hu = np.asarray(exam_or_volume, dtype=np.float32)
    if hu.ndim != 3:
        raise InputError(f"render_montage needs a (z, y, x) volume; got shape {hu.shape}", code="BAD_RANK")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != hu.shape:
            raise InputError(f"mask shape {mask.shape} differs from the volume's {hu.shape}", code="SHAPE_MISMATCH")
        if mask.dtype == bool:
            mask = mask.astype(np.uint8) * 2
    ks = _pick_slices(mask, hu, max_slices)
    width, level = window
    lo, hi = level - width / 2, level + width / 2
    ys, xs = slice(None), slice(None)
    if crop and mask is not None and mask.any():
        _, yy, xx = np.nonzero(mask)
        ny, nx = hu.shape[1:]
        half = max(yy.max() - yy.min(), xx.max() - xx.min()) // 2 + ny // 6
        cy, cx = (yy.max() + yy.min()) // 2, (xx.max() + xx.min()) // 2
        half = min(half, ny // 2)
        ys = slice(max(cy - half, 0), min(cy + half, ny))
        xs = slice(max(cx - half, 0), min(cx + half, nx))
    n = max(len(ks), 1)
    cols = min(columns, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    used = set()
    for ax, k in zip(axes.ravel(), ks):
        ax.imshow(hu[k, ys, xs], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        if mask is not None:
            sl = mask[k, ys, xs]
            for code, (name, colour) in ARTERY_COLOURS.items():
                if (sl == code).any():
                    ax.contour((sl == code).astype(float), levels=[0.5], colors=[colour], linewidths=1.0)
                    used.add(code)
        ax.set_title(f"slice {k}", fontsize=8)
    handles = [plt.Line2D([0], [0], color=ARTERY_COLOURS[c][1], lw=2, label=ARTERY_COLOURS[c][0]) for c in sorted(used)]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(title + f"   window W{width:g} L{level:g}", fontsize=9)
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    data = buf.getvalue()
    if path is not None:
        with open(path, "wb") as fh:
            fh.write(data)
    return data
