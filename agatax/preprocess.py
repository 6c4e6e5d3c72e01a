"""Jittable pre-processing: HU volume -> isotropic network input in [0, 1], and coarse masks back.

Grids share their first corner: fine voxel i along an axis of spacing d covers [i d, (i+1) d) mm, coarse
voxel o of the isotropic grid (spacing t) covers [o t, (o+1) t). Each coarse voxel takes

- the MAX of the fine voxels whose centres fall in it and whose HU reach ``threshold_hu`` (>= 130 HU, the
  scoring threshold), where any do: small dense calcifications survive the down-sampling (the paper's
  enhancement). The HU entering this maximum are first averaged in-plane over a box of ``box_mm`` x
  ``box_mm`` (1 mm by default; fractional pixels weighted by their overlap), so that what crosses 130 HU is
  the same whatever the pixel size: on raw 0.4 mm pixels noise of 45 HU alone crosses it somewhere in most
  3 mm cells of soft tissue, on 0.9 mm pixels in a fifth of them; through the 1 mm box in a tenth at both.
  With ``smooth_mm`` those HU are also smoothed in-plane by a Gaussian of that sigma (mm) first: an exam
  noisier than the networks' training is shown to them as a smoother, quieter reconstruction
  (``agatax.quality.input_smoothing_mm`` chooses the sigma);
- otherwise the overlap-weighted MEAN of the fine voxels it covers (a box filter, no aliasing);
- air (-1000 HU) beyond the scanned field, which also pads the grid to the network's multiple.

Then HU are clipped to ``window`` ([-300, 800]) and scaled linearly to [0, 1]. With a ``dense_gain`` g > 0
the input goes on rising above the window's top, g times as steeply, up to ``DENSE_CAP_HU`` (2000 HU; so
at most 1 + g * 1200 / 1100): dense calcium (800-1500 HU) is then told from the window's top and from metal
(2000 HU and more), where clipped at 800 HU all three look alike.

Output shapes are static: :func:`grid_shape` computes them on the host from the spacing; the spacing
and target itself then enter the kernels as traced values, so exams of equal shape share one compilation.
:func:`restore_grid` maps a coarse array back: each fine voxel takes the coarse voxel containing its centre.
"""

from __future__ import annotations

import math
from functools import partial
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from agatax.errors import InputError
from agatax.slabs import THIN_BELOW_MM

__all__ = ["preprocess", "grid_shape", "restore_grid", "resample_hu", "network_grid_mm", "box_weights",
           "gauss_weights", "WINDOW_HU", "AIR_HU", "ENHANCE_BOX_MM", "DENSE_CAP_HU", "SMOOTH_TAPS"]

WINDOW_HU = (-300.0, 800.0)
AIR_HU = -1000.0
ENHANCE_BOX_MM = 1.0
DENSE_CAP_HU = 2000.0
_BOX_TAPS = 3  # taps each side: boxes up to 7 pixels wide (1 mm on pixels >= 0.15 mm)
SMOOTH_TAPS = 12  # taps each side of the input smoothing's Gaussian: sigma up to 4 pixels (cut at 3 sigma)


def _host_spacing(spacing, what: str = "spacing") -> tuple[float, float, float]:
    try:
        values = np.asarray(spacing, dtype=np.float64).reshape(-1)
    except (TypeError, jax.errors.ConcretizationTypeError) as err:
        raise InputError(
            f"{what} must be concrete here to size the output grid; got a traced value",
            code="TRACED_SPACING",
            hint="pass out_shape=grid_shape(hu.shape, spacing) computed outside jit",
        ) from err
    if values.shape != (3,) or not np.all(np.isfinite(values) & (values > 0)):
        raise InputError(f"{what} must be three positive mm values (dz, dy, dx); got {spacing}", code="BAD_SPACING")
    return tuple(float(v) for v in values)  # type: ignore[return-value]


THIN_SLICE_MM = THIN_BELOW_MM  # one bound for thin slices: the slab rule's (agatax.slabs)
THIN_GRID_MM = 3.0
THICK_SLICE_MM = 3.5  # increments above this (5 mm chest CT) meet the networks on the 3 mm grid too


def network_grid_mm(dz):
    """Default isotropic grid spacing (mm) for a slice increment ``dz`` (mm; a float or a traced scalar):
    ``dz`` itself from 2 to 3.5 mm (the paper: 2.5 or 3 mm), else 3 mm: a 0.625 mm series meets the networks
    at the grid they were trained on instead of a grid 5x finer (and ~100x larger), and a 5 mm chest CT
    meets them at the cell size of nearly all their training exams: on a 5 mm grid a 2-4 mm plaque fills
    a fraction of a cell and the networks miss it (experiments/RESULTS.md, ninth session)."""
    if isinstance(dz, (int, float)):
        return THIN_GRID_MM if dz < THIN_SLICE_MM or dz > THICK_SLICE_MM else float(dz)
    return jnp.where((dz < THIN_SLICE_MM) | (dz > THICK_SLICE_MM), jnp.float32(THIN_GRID_MM), dz)


def grid_shape(
    shape: Sequence[int], spacing, *, target_mm: float | None = None, multiple: int = 8
) -> tuple[int, int, int]:
    """Static (z, y, x) size of the isotropic grid (host side).

    Each axis gets ceil(extent / target_mm) voxels (extent = size x spacing, mm), rounded up to a multiple
    of ``multiple`` (the network's 2**(levels-1)). ``target_mm`` defaults to :func:`network_grid_mm` of
    the slice increment dz. E.g. (56, 512, 512) at (3, 0.4, 0.4) mm -> (56, 72, 72); (240, 512, 512) at
    (0.625, 0.4, 0.4) mm -> (56, 72, 72) on a 3 mm grid.
    """
    if len(shape) != 3:
        raise InputError(f"volume must have rank 3 (z, y, x); got shape {tuple(shape)}", code="BAD_RANK")
    dz, dy, dx = _host_spacing(spacing)
    t = network_grid_mm(dz) if target_mm is None else float(target_mm)
    if not (math.isfinite(t) and t > 0):
        raise InputError(f"target_mm must be a positive number of mm; got {target_mm}", code="BAD_SPACING")
    out = []
    for n, d in zip(shape, (dz, dy, dx)):
        cells = max(1, math.ceil(n * d / t - 1e-6))
        out.append(-(-cells // multiple) * multiple)
    return tuple(out)  # type: ignore[return-value]


def _axis_weights(n_in: int, d_in: jax.Array, n_out: int, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Overlap (mm) of coarse cells with fine voxels, (n_out, n_in), and each fine voxel's cell index (n_in,)."""
    i = jnp.arange(n_in, dtype=jnp.float32)
    o = jnp.arange(n_out, dtype=jnp.float32)
    lo = jnp.maximum(o[:, None] * t, i[None, :] * d_in)
    hi = jnp.minimum((o[:, None] + 1) * t, (i[None, :] + 1) * d_in)
    overlap = jnp.maximum(hi - lo, 0.0)
    cell = jnp.clip(jnp.floor((i + 0.5) * d_in / t).astype(jnp.int32), 0, n_out - 1)
    return overlap, cell


def _segment_max(values: jax.Array, ids: jax.Array, num: int, axis: int) -> jax.Array:
    moved = jnp.moveaxis(values, axis, 0)
    out = jax.ops.segment_max(moved, ids, num_segments=num, indices_are_sorted=True)
    return jnp.moveaxis(out, 0, axis)


def box_weights(width_px, taps: int = _BOX_TAPS, xp=jnp):
    """Weights (2 taps + 1,) of a centred box ``width_px`` pixels wide (float, may be traced), summing to 1:
    whole pixels weigh 1, the two edge pixels the fraction of them the box covers (width 2.5 ->
    [0.75, 1, 0.75] / 2.5); widths up to 1 pixel give the identity [.., 0, 1, 0, ..]."""
    j = xp.abs(xp.arange(-taps, taps + 1, dtype=xp.float32))
    w = xp.clip((width_px + 1.0) / 2.0 - j, 0.0, 1.0)
    return w / w.sum()


def gauss_weights(sigma_px, taps: int = SMOOTH_TAPS, xp=jnp):
    """Weights (2 taps + 1,) of a centred Gaussian of ``sigma_px`` pixels (float, may be traced), summing to
    1; sigma is held within [0.01, taps / 3] pixels (at 0.01 the weights are the identity)."""
    j = xp.arange(-taps, taps + 1, dtype=xp.float32)
    s = xp.clip(xp.asarray(sigma_px, dtype=xp.float32), 0.01, taps / 3.0)
    w = xp.exp(-0.5 * (j / s) ** 2)
    return w / w.sum()


def enhancement_weights(box_mm: float, smooth_mm, dy, dx, xp=jnp):
    """(wy, wx): the separable in-plane filter the HU entering the enhancement's maximum go through: the
    ``box_mm`` box (None where 0 and no smoothing) convolved with the ``smooth_mm`` Gaussian (None: none)."""
    if smooth_mm is None:
        return None if box_mm <= 0 else (box_weights(box_mm / dy, xp=xp), box_weights(box_mm / dx, xp=xp))
    out = []
    for d in (dy, dx):
        g = gauss_weights(smooth_mm / d, xp=xp)
        out.append(xp.convolve(box_weights(box_mm / d, xp=xp), g) if box_mm > 0 else g)
    return tuple(out)


def _box_plane(plane: jax.Array, wy: jax.Array, wx: jax.Array) -> jax.Array:
    """Separable box average of one (y, x) slice, edges repeated."""
    t = (wy.shape[0] - 1) // 2
    n_y, n_x = plane.shape
    p = jnp.pad(plane, ((t, t), (0, 0)), mode="edge")
    plane = sum(wy[k] * p[k: k + n_y] for k in range(2 * t + 1))
    p = jnp.pad(plane, ((0, 0), (t, t)), mode="edge")
    return sum(wx[k] * p[:, k: k + n_x] for k in range(2 * t + 1))


def _bright_max_z(hu: jax.Array, cells: jax.Array, num: int, threshold_hu, box=None) -> jax.Array:
    """Max over the slices of each coarse z cell of the HU at or above the threshold (-inf where none):
    (z, y, x) -> (num, y, x), one slice at a time, so no full-size temporary is ever made (a 1024 x 1024 x
    700 exam would need 3 GB more). ``box``: (wy, wx) weights averaging each slice in-plane first, or None."""

    def step(k, out):
        plane = jax.lax.dynamic_index_in_dim(hu, k, axis=0, keepdims=False)
        if box is not None:
            plane = _box_plane(plane, *box)
        plane = jnp.where(plane >= threshold_hu, plane, -jnp.inf)
        row = jax.lax.dynamic_index_in_dim(out, cells[k], axis=0, keepdims=False)
        return jax.lax.dynamic_update_index_in_dim(out, jnp.maximum(row, plane), cells[k], axis=0)

    init = jnp.full((num, *hu.shape[1:]), -jnp.inf, jnp.float32)
    return jax.lax.fori_loop(0, hu.shape[0], step, init)


@partial(jax.jit, static_argnames=("out_shape", "box_mm"))
def resample_hu(
    hu: jax.Array,
    spacing: jax.Array,
    target_mm: jax.Array,
    out_shape: tuple[int, int, int],
    *,
    threshold_hu: float | jax.Array = 130.0,
    box_mm: float = ENHANCE_BOX_MM,
    smooth_mm: float | jax.Array | None = None,
) -> jax.Array:
    """HU (z, y, x) at ``spacing`` (dz, dy, dx) mm -> HU ``out_shape`` on the isotropic ``target_mm`` grid.

    Max of the fine voxels at or above ``threshold_hu`` per coarse voxel where any (their HU smoothed
    in-plane by a Gaussian of ``smooth_mm`` sigma when given, then averaged over a ``box_mm`` box; 0 and
    None: as they are), else the overlap-weighted mean, air (-1000 HU) outside the field. Jittable; spacing,
    target, threshold and ``smooth_mm`` may be traced, ``box_mm`` is static.
    """
    hu = jnp.asarray(hu, jnp.float32)
    spacing = jnp.asarray(spacing, jnp.float32)
    t = jnp.asarray(target_mm, jnp.float32)
    weights, cells = [], []
    for axis in range(3):
        w, c = _axis_weights(hu.shape[axis], spacing[axis], out_shape[axis], t)
        weights.append(w)
        cells.append(c)
    wz, wy, wx = weights
    # overlap-weighted mean, axis by axis (x first: it shrinks the most)
    total = jnp.einsum("zyx,ox->zyo", hu, wx)
    total = jnp.einsum("zyo,py->zpo", total, wy)
    total = jnp.einsum("zpo,qz->qpo", total, wz)
    cover = (
        wz.sum(1)[:, None, None] * wy.sum(1)[None, :, None] * wx.sum(1)[None, None, :]
    )  # mm^3 of the scanned field inside each coarse voxel
    mean = jnp.where(cover > 0, total / jnp.where(cover > 0, cover, 1.0), AIR_HU)
    # enhancement: max over the voxels at or above the threshold whose centres fall in the coarse voxel
    box = enhancement_weights(box_mm, smooth_mm, spacing[1], spacing[2])
    peak = _bright_max_z(hu, cells[0], out_shape[0], threshold_hu, box)
    peak = _segment_max(peak, cells[1], out_shape[1], 1)
    peak = _segment_max(peak, cells[2], out_shape[2], 2)
    return jnp.where(peak >= threshold_hu, peak, mean)


def preprocess(
    hu,
    spacing,
    *,
    target_mm=None,
    out_shape: tuple[int, int, int] | None = None,
    multiple: int = 8,
    threshold_hu=130.0,
    window: tuple[float, float] = WINDOW_HU,
    box_mm: float = ENHANCE_BOX_MM,
    dense_gain: float = 0.0,
    smooth_mm: float = 0.0,
) -> jax.Array:
    """Network input from an HU volume: isotropic resampling with enhancement, clip, scale to [0, 1], pad.

    Args:
        hu: (z, y, x) HU.
        spacing: (dz, dy, dx) mm (may be traced when ``out_shape`` is given).
        target_mm: isotropic grid spacing, mm; default ``network_grid_mm(dz)``: the slice increment, 3 mm
            for thin slices (may be traced).
        out_shape: static output (z, y, x); default ``grid_shape(hu.shape, spacing, target_mm=...,
            multiple=multiple)`` (needs a concrete spacing).
        multiple: network size multiple, 2**(levels-1) (8 for the paper's network).
        threshold_hu: enhancement threshold, HU (may be traced).
        window: HU clipped to [low, high] then mapped linearly to [0, 1].
        box_mm: in-plane box (mm) averaging the HU that enter the enhancement's maximum (0: none); an
            ensemble's own value is ``ensemble.config.input_box_mm``.
        dense_gain: above the window's top the input keeps rising this many times as steeply, up to
            ``DENSE_CAP_HU`` (0: clipped there); an ensemble's own value is ``ensemble.config.input_dense_gain``.
        smooth_mm: sigma (mm) of an in-plane Gaussian the HU entering the enhancement's maximum go through
            before the box (0: none): ``agatax.quality.input_smoothing_mm`` chooses it for exams noisier
            than the networks' training (the pipeline's ``adapt_noise``).

    Returns:
        float32 ``out_shape`` in [0, 1] (up to 1 + dense_gain * (DENSE_CAP_HU - high) / (high - low) with a
        ``dense_gain``; add batch and channel axes for the network).
    """
    hu = jnp.asarray(hu)
    if hu.ndim != 3:
        raise InputError(f"volume must have rank 3 (z, y, x); got shape {hu.shape}", code="BAD_RANK")
    if out_shape is None:
        out_shape = grid_shape(hu.shape, spacing, target_mm=target_mm, multiple=multiple)
    out_shape = tuple(int(s) for s in out_shape)
    if len(out_shape) != 3 or any(s % multiple or s <= 0 for s in out_shape):
        raise InputError(
            f"out_shape must be three positive multiples of {multiple}; got {out_shape}", code="BAD_SHAPE"
        )
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise InputError(f"window must be (low, high) HU with high > low; got {window}", code="BAD_WINDOW")
    spacing = jnp.asarray(spacing, jnp.float32).reshape(3)
    target = network_grid_mm(spacing[0]) if target_mm is None else jnp.asarray(target_mm, jnp.float32)
    box_mm, dense_gain, smooth_mm = float(box_mm), float(dense_gain), float(smooth_mm)
    for name, value, what in (("box_mm", box_mm, "a number of mm >= 0"), ("dense_gain", dense_gain, "a number >= 0"),
                              ("smooth_mm", smooth_mm, "a number of mm >= 0")):
        if not (math.isfinite(value) and value >= 0):
            raise InputError(f"{name} must be {what}; got {value}", code="BAD_CONFIG")
    return _preprocess_kernel(hu, spacing, target, threshold_hu, None if smooth_mm == 0 else jnp.float32(smooth_mm),
                              out_shape=out_shape, window=(lo, hi), box_mm=box_mm, dense_gain=dense_gain)


@partial(jax.jit, static_argnames=("out_shape", "window", "box_mm", "dense_gain"))
def _preprocess_kernel(hu, spacing, target, threshold_hu, smooth_mm=None, *, out_shape, window,
                       box_mm=ENHANCE_BOX_MM, dense_gain=0.0):
    lo, hi = window
    coarse = resample_hu(hu, spacing, target, out_shape, threshold_hu=threshold_hu, box_mm=box_mm,
                         smooth_mm=smooth_mm)
    x = (jnp.clip(coarse, lo, hi) - lo) / (hi - lo)
    if dense_gain:
        x = x + dense_gain * (jnp.clip(coarse, hi, max(hi, DENSE_CAP_HU)) - hi) / (hi - lo)
    return x


def restore_grid(coarse: jax.Array, shape: Sequence[int], spacing, *, target_mm=None) -> jax.Array:
    """Coarse (Z, Y, X) array (mask, votes, probabilities) -> the original (z, y, x) grid ``shape``.

    Each fine voxel takes the coarse voxel containing its centre (nearest; the inverse of the grid used by
    :func:`preprocess`, padding dropped). Jittable; ``spacing`` (dz, dy, dx) mm and ``target_mm`` may be traced.
    """
    coarse = jnp.asarray(coarse)
    if coarse.ndim != 3 or len(shape) != 3:
        raise InputError(
            f"restore_grid needs a rank-3 coarse array and a 3-axis shape; got {coarse.shape} and {tuple(shape)}",
            code="BAD_RANK",
        )
    spacing = jnp.asarray(spacing, jnp.float32).reshape(3)
    t = network_grid_mm(spacing[0]) if target_mm is None else jnp.asarray(target_mm, jnp.float32)
    return _restore_kernel(coarse, spacing, t, shape=tuple(int(n) for n in shape))


@partial(jax.jit, static_argnames="shape")
def _restore_kernel(coarse, spacing, t, *, shape):
    out = coarse
    for axis in range(3):
        i = jnp.arange(int(shape[axis]), dtype=jnp.float32)
        cell = jnp.clip(jnp.floor((i + 0.5) * spacing[axis] / t).astype(jnp.int32), 0, coarse.shape[axis] - 1)
        out = jnp.take(out, cell, axis=axis)
    return out
