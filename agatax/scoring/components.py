"""Connected-component labelling of (z, y, x) masks: per axial slice (2D) or in 3D.

Two backends give the same labels, voxel for voxel, as ``scipy.ndimage.label`` (same partition and the
same numbering: components are numbered 1..n in raster order of their first voxel):

- ``"host"``: NumPy in, NumPy out, on the foreground's bounding box. Sparse masks (calcium) are labelled
  by runs of foreground along x (linking overlapping runs of neighbouring rows, grouping them with
  scipy.sparse.csgraph), with work that grows with the number of runs; dense ones with scipy's labeller
  (optionally on z-slabs in parallel threads, stitched back together: scipy releases the GIL).
- ``"jax"``: jittable, static shapes. Every foreground voxel starts with its own flat index as label;
  each step takes the minimum over the neighbourhood, hooks the current root of every voxel to that
  minimum (scatter-min) and jumps pointers twice (``label = label[label]``), inside ``lax.while_loop``
  until nothing changes. The fixed point gives every voxel its component's smallest flat index, i.e.
  its first voxel in raster order, so a cumulative sum over root flags yields scipy's numbering.
  The loop has no fixed step count: it is correct for any shape (spirals, snakes).
"""

from __future__ import annotations

from functools import partial
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from agatax.errors import InputError

__all__ = ["label_slices", "label_volume"]

SLICE_CONNECTIVITIES = (4, 8)
VOLUME_CONNECTIVITIES = (6, 18, 26)
BACKENDS = ("auto", "host", "jax")



# --------------------------------------------------------------------------------------------- checks
def _check_connectivity(connectivity, allowed: tuple[int, ...], what: str) -> int:
    if isinstance(connectivity, bool) or connectivity not in allowed:
        raise InputError(
            f"connectivity={connectivity!r} is not supported for {what} labelling",
            code="BAD_CONNECTIVITY",
            hint=f"use one of {', '.join(map(str, allowed))}",
        )
    return int(connectivity)


def _check_rank(shape: tuple[int, ...], what: str = "mask") -> None:
    if len(shape) != 3:
        raise InputError(
            f"{what} must have rank 3 (z, y, x); got shape {tuple(shape)} (rank {len(shape)})",
            code="BAD_RANK",
            hint="pass one volume at a time as a (z, y, x) array; use jax.vmap for batches",
        )


def _is_jax(x) -> bool:
    return isinstance(x, (jax.Array, jax.core.Tracer))


def _resolve_backend(backend: str, mask) -> str:
    if backend not in BACKENDS:
        raise InputError(
            f"backend={backend!r} is not known",
            code="BAD_BACKEND",
            hint="use 'auto', 'host' or 'jax'",
        )
    if backend == "auto":
        return "jax" if _is_jax(mask) else "host"
    return backend


def _structure(connectivity: int, *, slices: bool) -> np.ndarray:
    """3x3x3 boolean structuring element; for slices its z-links are zero."""
    if slices:
        s = np.zeros((3, 3, 3), dtype=bool)
        s[1] = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
        return s
    return ndimage.generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[connectivity])


# ------------------------------------------------------------------------------------------- public
def label_slices(mask, *, connectivity: int = 8, backend: str = "auto"):
    """Label connected components within each axial slice.

    Args:
        mask: (z, y, x) array; nonzero = foreground. NumPy (host) or JAX (jax backend, jittable).
        connectivity: 4 or 8 (in-plane neighbours); components never cross slices.
        backend: "host", "jax", or "auto" (jax for a jax array or tracer, host otherwise).

    Returns:
        int32 (z, y, x) labels, 0 = background, components numbered 1..n in raster order of their first
        voxel (exactly ``scipy.ndimage.label`` with a 3x3x3 structure whose z-links are zero).
    """
    conn = _check_connectivity(connectivity, SLICE_CONNECTIVITIES, "per-slice (2D)")
    kind = _resolve_backend(backend, mask)
    if kind == "jax":
        return label_jax(mask, conn, slices=True)[0]
    return label_host(mask, conn, slices=True)[0]


def label_volume(mask, *, connectivity: int = 26, backend: str = "auto"):
    """Label 3D connected components.

    Args:
        mask: (z, y, x) array; nonzero = foreground. NumPy (host) or JAX (jax backend, jittable).
        connectivity: 6 (faces), 18 (faces and edges) or 26 (faces, edges and corners).
        backend: "host", "jax", or "auto" (jax for a jax array or tracer, host otherwise).

    Returns:
        int32 (z, y, x) labels, 0 = background, numbered 1..n as ``scipy.ndimage.label`` numbers them.
    """
    conn = _check_connectivity(connectivity, VOLUME_CONNECTIVITIES, "3D")
    kind = _resolve_backend(backend, mask)
    if kind == "jax":
        return label_jax(mask, conn, slices=False)[0]
    return label_host(mask, conn, slices=False)[0]


# -------------------------------------------------------------------------------------- host backend
def label_host(
    mask, connectivity: int, *, slices: bool, workers: int | None = None, method: str = "auto"
) -> tuple[np.ndarray, int]:
    """Host labelling: (labels int32 (z, y, x), number of components). Identical to scipy's output.

    The foreground's bounding box is labelled (cropping keeps raster order, hence scipy's numbering).
    ``method``: "runs" labels runs of foreground along x (work grows with the number of runs, not of
    voxels: the fast path for sparse calcium masks); "scipy" calls ``scipy.ndimage.label`` on z-slabs
    in ``workers`` threads (default 1: threads pay off only on an otherwise idle machine); "auto" takes
    runs when there is at most one per ``_RUNS_PER_VOXEL_LIMIT`` voxels, scipy otherwise.
    """
    mask = np.asarray(mask)
    _check_rank(mask.shape)
    fg = mask if mask.dtype == bool else mask != 0
    out = np.zeros(fg.shape, dtype=np.int32)
    zs = np.flatnonzero(fg.any(axis=(1, 2)))
    if zs.size == 0:
        return out, 0
    ys = np.flatnonzero(fg[zs[0] : zs[-1] + 1].any(axis=(0, 2)))
    xs = np.flatnonzero(fg[zs[0] : zs[-1] + 1, ys[0] : ys[-1] + 1].any(axis=(0, 1)))
    box = (slice(zs[0], zs[-1] + 1), slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))
    sub_fg, sub_out = fg[box], out[box]
    if method not in ("auto", "runs", "scipy"):
        raise InputError(f"method={method!r} is not known", code="BAD_METHOD", hint="use 'auto', 'runs' or 'scipy'")
    # runs <= foreground voxels: count runs only where the foreground is sparse enough to pay off
    if method == "runs" or (method == "auto" and np.count_nonzero(sub_fg) * _DENSE_FRACTION_INV <= sub_fg.size):
        runs = _runs(sub_fg)
        if method == "runs" or runs[0].size * _RUNS_PER_VOXEL_LIMIT <= sub_fg.size:
            n = _label_runs(sub_fg.shape, runs, connectivity, slices=slices, out=sub_out)
            return out, n
    return out, _label_scipy(sub_fg, sub_out, connectivity, slices=slices, workers=workers)


# "auto" labels runs when there is at most one run per this many voxels (measured crossover: ~1 per 200),
# and does not look for runs when more than one voxel in this many is foreground.
_RUNS_PER_VOXEL_LIMIT = 400
_DENSE_FRACTION_INV = 25


def _runs(fg: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Runs of foreground along x: (starts, ends) as flat indices into the rows padded by one voxel at
    each end (row width x + 2), in raster order; ends are one past the last voxel; and the padded width."""
    z, y, x = fg.shape
    width = x + 2
    padded = np.zeros((z, y, width), np.int8)
    padded[:, :, 1:-1] = fg
    edges = np.flatnonzero(np.diff(padded.reshape(-1)))  # alternately a run's start - 1 and end - 1
    return edges[0::2] + 1, edges[1::2] + 1, width


def _row_links(connectivity: int, slices: bool) -> list[tuple[int, int, int]]:
    """(dz, dy, reach) of the earlier rows a run touches: rows (z - dz, y - dy); reach 1 = x-diagonals."""
    if slices:
        return [(0, 1, 1 if connectivity == 8 else 0)]
    if connectivity == 6:
        return [(0, 1, 0), (1, 0, 0)]
    if connectivity == 18:
        return [(0, 1, 1), (1, 0, 1), (1, 1, 0), (1, -1, 0)]
    return [(0, 1, 1), (1, 0, 1), (1, 1, 1), (1, -1, 1)]


def _label_runs(shape, runs, connectivity: int, *, slices: bool, out: np.ndarray) -> int:
    """Label runs: link overlapping runs of neighbouring rows, group them, number groups by first run."""
    starts, ends, width = runs
    n_runs = starts.size
    nz, ny, nx = shape
    row = starts // width
    begin, stop = starts - row * width, ends - row * width  # x + 1 of the run's first voxel; one past the last
    src, dst = [], []
    for dz, dy, reach in _row_links(connectivity, slices):
        ry, rz = row % ny - dy, row // ny - dz
        other = (rz * ny + ry) * width
        lo = np.searchsorted(ends, other + begin - reach, "right")  # first run there ending after our start
        hi = np.searchsorted(starts, other + stop + reach, "left")  # runs there starting before our end
        count = np.where((ry >= 0) & (ry < ny) & (rz >= 0), np.maximum(hi - lo, 0), 0)
        total = int(count.sum())
        if total:
            first = np.cumsum(count) - count
            src.append(np.repeat(np.arange(n_runs), count))
            dst.append(np.repeat(lo - first, count) + np.arange(total))
    if src:
        a, b = np.concatenate(src), np.concatenate(dst)
        graph = coo_matrix((np.ones(a.size, np.int8), (a, b)), shape=(n_runs, n_runs))
        n, group = connected_components(graph, directed=False)
        first_run = np.full(n, n_runs, dtype=np.int64)
        np.minimum.at(first_run, group, np.arange(n_runs))
        rank = np.empty(n, dtype=np.int32)
        rank[np.argsort(first_run)] = np.arange(1, n + 1, dtype=np.int32)
        run_label = rank[group]
    else:
        n, run_label = n_runs, np.arange(1, n_runs + 1, dtype=np.int32)
    if n_runs:
        lengths = stop - begin
        first_voxel = row * nx + begin - 1  # flat index in the unpadded volume
        cum = np.cumsum(lengths)
        voxels = np.arange(cum[-1]) + np.repeat(first_voxel - (cum - lengths), lengths)
        values = np.repeat(run_label, lengths)
        if out.flags.c_contiguous:
            out.reshape(-1)[voxels] = values
        else:
            z, rest = np.divmod(voxels, ny * nx)
            out[z, rest // nx, rest % nx] = values
    return int(n)


def _label_scipy(sub_fg, sub_out, connectivity: int, *, slices: bool, workers: int | None) -> int:
    structure = _structure(connectivity, slices=slices)
    workers = 1 if workers is None else max(1, min(int(workers), sub_fg.shape[0]))
    if workers == 1:
        return int(ndimage.label(sub_fg, structure, output=sub_out))
    bounds = np.linspace(0, sub_fg.shape[0], workers + 1).round().astype(int)
    slabs = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    with ThreadPoolExecutor(workers) as pool:
        counts = list(pool.map(lambda s: int(ndimage.label(sub_fg[s], structure, output=sub_out[s])), slabs))
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32)
        if slices:  # no z-links: shifting each slab's labels by the counts before it is scipy's numbering
            list(pool.map(lambda so: _add_where_nonzero(sub_out[so[0]], so[1]), zip(slabs[1:], offsets[1:])))
            return int(sum(counts))
        lut, n = _stitch_slabs(sub_out, slabs, counts, offsets, structure)
        list(pool.map(lambda so: _apply_lut(sub_out[so[0]], lut, so[1]), zip(slabs, offsets)))
    return n


def _add_where_nonzero(block: np.ndarray, offset: int) -> None:
    if offset:
        np.add(block, np.int32(offset), out=block, where=block != 0)


def _apply_lut(block: np.ndarray, lut: np.ndarray, offset: int) -> None:
    """block[nonzero] = lut[block + offset] in place (block holds slab-local labels)."""
    nonzero = block != 0  # block may be a strided view: index it in place, never via a reshaped copy
    block[nonzero] = lut[block[nonzero] + offset]


def _stitch_slabs(sub_out, slabs, counts, offsets, structure):
    """Merge slab-local 3D labels across slab boundaries.

    Returns (lut, n): lut maps global provisional labels (slab label + slab offset) to final labels
    1..n in scipy's order (a merged component keeps the smallest provisional label, which belongs to
    its first voxel in raster order).
    """
    total = int(sum(counts))
    links_a, links_b = [], []
    dz1 = np.argwhere(structure[2])  # (dy+1, dx+1) offsets linking plane z to plane z+1
    for k in range(1, len(slabs)):
        z = slabs[k].start
        lower = sub_out[z - 1].astype(np.int64)
        upper = sub_out[z].astype(np.int64)
        lower = np.where(lower > 0, lower + offsets[k - 1], 0)
        upper = np.where(upper > 0, upper + offsets[k], 0)
        h, w = lower.shape
        for oy, ox in dz1:
            dy, dx = oy - 1, ox - 1
            a = lower[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
            b = upper[max(0, dy) : h - max(0, -dy), max(0, dx) : w - max(0, -dx)]
            both = (a > 0) & (b > 0)
            links_a.append(a[both])
            links_b.append(b[both])
    a = np.concatenate(links_a) if links_a else np.zeros(0, np.int64)
    b = np.concatenate(links_b) if links_b else np.zeros(0, np.int64)
    if a.size == 0:
        lut = np.arange(total + 1, dtype=np.int32)
        return lut, total
    graph = coo_matrix((np.ones(a.size, np.int8), (a - 1, b - 1)), shape=(total, total))
    ngroups, group = connected_components(graph, directed=False)
    first = np.full(ngroups, total, dtype=np.int64)
    np.minimum.at(first, group, np.arange(total))
    rank = np.empty(ngroups, dtype=np.int32)
    rank[np.argsort(first, kind="stable")] = np.arange(1, ngroups + 1, dtype=np.int32)
    lut = np.zeros(total + 1, dtype=np.int32)
    lut[1:] = rank[group]
    return lut, int(ngroups)


# --------------------------------------------------------------------------------------- JAX backend
def _min3(a: jax.Array, axis: int, big) -> jax.Array:
    """Minimum over {i-1, i, i+1} along one axis; outside the array counts as ``big``."""
    pad = [(0, 0, 0)] * a.ndim
    pad[axis] = (1, 1, 0)
    p = lax.pad(a, jnp.asarray(big, a.dtype), pad)
    n = a.shape[axis]
    s = [lax.slice_in_dim(p, k, k + n, axis=axis) for k in range(3)]
    return jnp.minimum(jnp.minimum(s[0], s[1]), s[2])


def _neighbourhood_min(a: jax.Array, connectivity: int, *, slices: bool, big) -> jax.Array:
    """Minimum over each voxel and its neighbours (box minima are separable; crosses are unions)."""
    if slices:
        if connectivity == 8:
            return _min3(_min3(a, 1, big), 2, big)
        return jnp.minimum(_min3(a, 1, big), _min3(a, 2, big))
    if connectivity == 26:
        return _min3(_min3(_min3(a, 0, big), 1, big), 2, big)
    if connectivity == 6:
        return jnp.minimum(jnp.minimum(_min3(a, 0, big), _min3(a, 1, big)), _min3(a, 2, big))
    # 18: union of the three axis-aligned 3x3 planes through the voxel
    mz, my = _min3(a, 0, big), _min3(a, 1, big)
    return jnp.minimum(jnp.minimum(_min3(my, 2, big), _min3(mz, 2, big)), _min3(mz, 1, big))


def label_jax(mask, connectivity: int, *, slices: bool) -> tuple[jax.Array, jax.Array]:
    """JAX labelling: (labels int32 (z, y, x), number of components int32 scalar). Jittable."""
    _check_rank(tuple(jnp.shape(mask)))
    allowed = SLICE_CONNECTIVITIES if slices else VOLUME_CONNECTIVITIES
    conn = _check_connectivity(connectivity, allowed, "per-slice (2D)" if slices else "3D")
    return _label_jax(jnp.asarray(mask), conn, slices)


@partial(jax.jit, static_argnums=(1, 2))
def _label_jax(mask: jax.Array, connectivity: int, slices: bool):
    fg = mask if mask.dtype == jnp.bool_ else mask != 0
    shape = fg.shape
    n_vox = int(np.prod(shape))
    if n_vox >= np.iinfo(np.int32).max:
        raise InputError(
            f"volume of shape {shape} has {n_vox} voxels, too many for int32 labels",
            code="VOLUME_TOO_LARGE",
            hint="label the volume in slabs or crop it first",
        )
    if n_vox == 0:
        return jnp.zeros(shape, jnp.int32), jnp.int32(0)
    big = jnp.int32(n_vox)  # background: larger than every flat index, ignored by the minima
    flat_fg = fg.reshape(-1)
    index = jnp.arange(n_vox, dtype=jnp.int32)
    init = jnp.where(flat_fg, index, big)

    def jump(lab):  # label = label[label] on the foreground
        return jnp.where(flat_fg, lab[jnp.minimum(lab, n_vox - 1)], big)

    def step(state):
        lab, _ = state
        nmin = _neighbourhood_min(lab.reshape(shape), connectivity, slices=slices, big=big).reshape(-1)
        nmin = jnp.where(flat_fg, nmin, big)
        # hook: the current root of each voxel takes the neighbourhood minimum (background is dropped)
        hooked = lab.at[jnp.where(flat_fg, lab, n_vox)].min(nmin, mode="drop")
        new = jump(jump(jnp.minimum(hooked, nmin)))
        return new, jnp.any(new != lab)

    lab, _ = lax.while_loop(lambda s: s[1], step, (init, jnp.asarray(True)))
    roots = flat_fg & (lab == index)
    rank = jnp.cumsum(roots, dtype=jnp.int32)
    labels = jnp.where(flat_fg, rank[jnp.minimum(lab, n_vox - 1)], 0).reshape(shape)
    return labels, rank[-1]
