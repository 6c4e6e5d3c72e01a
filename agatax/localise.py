"""Chest localisation from HU alone: the lungs, and from them where coronary calcium can be.

A deterministic, data-free step (NumPy and SciPy on the host, ~0.1-0.5 s per exam) that runs before the
networks. On a coarse grid of about 4 mm:

1. HU below -1000 (padding outside the reconstruction circle: -1024, -2048, -3024) is read as air in the
   local means; a coarse cell holding in all its voxels, in five slices spread over the series, the value of
   the first slice's corners, where they hold one value below -1000 HU, is padding (noisy air never is): the
   field of view's edge.
2. Lungs: voxels whose local mean is aerated (< -400 HU), less the air outside the body (3D components
   below -960 HU that reach the in-plane border: lung parenchyma, at -950 to -700 HU, is never that),
   and less the bowel's gas under the lungs (small pockets below -960 HU in soft tissue, in slices where
   the lungs are narrow, and their rim: the stomach's and colon's gas under the diaphragm), opened
   in-plane so that thin shells (the skin's partial volume, gaps between arm and chest) go, in 3D
   components of at least 20 cm^3.
   This holds where the lungs reach the image border (cardiac fields of view), with arms in the field
   (chest CT), with emphysema (bullae below -960 HU inside lung count as lung, and so do bases it has
   destroyed), a pneumothorax, and the upper abdomen in the field (its gas would widen the lungs' hull into
   it).
3. The mediastinum: the 3D convex hull of the lungs, less its outer 10 mm (where the ribs lie along the
   lung surface; not from the scan's first and last slices, which cut the hull rather than bound it),
   minus the lungs (less an 8 mm band along their border), plus a margin of 8 mm. In the slices where one
   side of the spine holds almost no aerated lung (a lung collapsed, removed or filled by an effusion, in
   whole or in part; an apex or base reaching further on one side), the hull also takes those slices'
   lung mirrored about the spine: from one lung alone it would stop at that lung's medial surface, short
   of the heart. In a field narrower than ``SMALL_FIELD_MM`` (170 mm) the lungs at the
   field's edge are taken to go on beyond it, so that the hull reaches the field's edge between them: the
   field cuts the lungs in front of the heart (or the heart itself), and the hull of the lungs it shows
   would pass behind the heart's front. Where no vertebra is traced and one side of the image holds almost
   no lung in most lung slices (a field placed off the chest's middle, showing one lung), the region spans
   those slices whole, less the lungs and the bone.
4. The skeleton inside it is cut out: the face-connected components of dense tissue (local mean >= 150
   HU, the padding left out of the mean in cells the reconstruction circle cuts; holes filled slice by
   slice) that hold a thick core (what survives a 1-voxel in-plane erosion, in 3D components of at least
   2 cm^3: spine, sternum, rib heads, a phantom's spine insert and rods), with a 1-voxel rim of their
   partial volume. Coronary plaques are too thin to leave such a core, and the
   coronaries run >= 1 cm from bone. Dense components of at least 0.5 cm^3 within 2 coarse voxels of the
   field of view's edge (the image border, the padding outside the reconstruction circle) are bone too:
   the sternum and ribs a cardiac field cuts can be too thin there to hold a core.
5. The carina (on 2 mm in-plane cells): the trachea is traced as a round air lumen in a soft-tissue wall
   near the spine's x over at least 40 mm, to the end beyond which two lumens lie on either side of its
   axis (the main bronchi); the region ends ``CARINA_MARGIN_MM`` beyond it on the trachea's side, leaving
   out the arch, the great vessels and the lung apices (the coronary arteries lie below the carina, where
   calcium-scoring scans start), and ``HEART_BELOW_CARINA_MM`` below it (the heart ends 120-150 mm below
   the carina, the upper abdomen's arteries lie lower). Without a traced trachea or its division nothing is
   cut along z.

Where no lungs are found (a water phantom, a volume cut below the lungs, a tiny volume) the result has
``found=False`` and a note; the pipeline then refuses the exam (NO_LUNGS), or, for a phantom it was allowed
to score, discards nothing. A cross-section that repeats along z
(``phantom_like``: under 4 % of the body changes over 30 mm, where synthetic patients of every protocol
change by 12 % or more) marks a phantom, which the pipeline refuses unless asked (its inserts lie outside
any heart's anatomy, where the networks do not look). The mediastinum's density also tells a
contrast-enhanced scan (``contrast_enhanced``: its 70th percentile above 130 HU; 50-90 HU without
contrast), which the pipeline refuses.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage, spatial

__all__ = ["ChestRegion", "localise_chest", "ENHANCED_HU70", "PHANTOM_Z_CHANGE", "CARINA_MARGIN_MM",
           "HEART_BELOW_CARINA_MM", "SMALL_FIELD_MM"]

_COARSE_MM = 4.0
_LUNG_HU = (-960.0, -400.0)
_MIN_LUNG_CM3 = 20.0
_GAS_SHELL_LUNG = 0.3  # a gas pocket with less lung than this 4-8 mm around it is bowel or airway, not lung
_GAS_UNDER_LUNGS = 0.5  # ... when the lungs' cross-section in its middle slice is under this share of their widest
_GAS_SMALL = 0.1  # ... and it is under this share of the lungs and gas together
MIN_LUNGS_CM3 = 150.0  # less aerated lung than this (cm^3): no lungs found, no region (the pipeline refuses: NO_LUNGS)
_BONE_HU = 150.0
_MIN_BONE_CM3 = 2.0
_MIN_CUT_BONE_CM3 = 0.5  # dense tissue this large cut by the field of view's edge is bone (sternum, ribs)
_MARGIN_MM = 8.0
_HULL_INSET_MM = 10.0
ENHANCED_HU70 = 130.0
PHANTOM_Z_CHANGE = 0.04  # below this ``z_change`` the exam's cross-section repeats along z: a phantom
_Z_APART_MM = 30.0
_Z_CHANGE_HU = 150.0
_MIN_SECTION_CM2 = 25.0
CARINA_MARGIN_MM = 10.0  # the region ends this far beyond the carina, on the trachea's side
#: the region ends this far below the carina: the heart's diaphragmatic surface lies 120-150 mm below it (a
#: calcium-scoring scan covers the carina to the bottom of the heart in 12-15 cm), the coeliac trunk and the
#: splenic artery 180-230 mm (T12-L1); 50 mm beyond the usual coverage for large, low or hyperinflated chests
HEART_BELOW_CARINA_MM = 200.0
BACK_BAND_MM = 30.0  # a support under the patient is looked for within this distance of the spine's x
_MIN_VERTEBRA_CM2 = 5.0  # bone in that band, per slice, for it to be the spine (a vertebral body: 10-20 cm^2)
_AIRWAY_MM = 2.0  # in-plane cell of the airway search
_TRACHEA_CM2 = (0.9, 8.0)  # lumen cross-section below -700 HU: adult tracheae are 12-25 mm across
_MIN_TRACHEA_MM = 40.0
#: one lung airless or gone in part or whole (collapse, an effusion, pneumonectomy): in a slice holding lung
#: (at least a fifth of the widest slice's), one side of the spine holds under this share of the other
#: side's; there the lungs are mirrored about the spine for the hull (0: never)
_SIDE_EMPTY = 0.1
_EDGE_CELLS = 3  # the spine's column this close to the grid's edge: no midline (the field cuts the spine off)
#: one side empty in at least this share of the lung slices, with no vertebra traced: a field off the chest's middle
_ONE_SIDED_FIELD = 0.5
#: a field of view narrower than this (mm) cuts the lungs around the heart (an adult heart is 120-140 mm wide,
#: the lungs border it in front and at the sides): there the lungs' cells at the field's edge are taken to go on
#: beyond it for the hull (synthetic 160 mm fields: the hull of the lungs seen alone left out 6-30 % of the
#: coronary calcium in 3 of 20 exams; the generator's cardiac fields of 170-240 mm lose none without it)
SMALL_FIELD_MM = 170.0
_BEYOND_FIELD_MM = 1000.0  # how far beyond: far enough that the hull reaches the field's edge between cut lungs


@dataclasses.dataclass(frozen=True, eq=False)
class ChestRegion:
    """Where coronary calcium can be in one exam.

    Attributes:
        found: False when no lungs were found; then ``region`` is None and nothing may be discarded.
        region: bool (z, y, x) on the exam's grid, or None: True where coronary calcium can lie.
        box: (slice, slice, slice) bounding box of ``region`` on the exam's grid, or None.
        lung_cm3: volume of the lungs found (cm^3).
        note: one line on what was found (for reports and logs).
        mediastinum_hu70: 70th percentile of the mediastinum's local mean HU between -50 and 700 (fat
            left out): 50-90 HU without contrast, far higher when the blood is enhanced; NaN if not found.
        z_change: the share of the body's cross-section that changes by more than 150 HU over 30 mm along
            z (lower quartile over the pairs of slices; synthetic patients: 0.12 or more; the real QRM
            phantom: 0.015); NaN where the exam is too short or holds no body to tell.
        carina_slice: the slice (index along z, fractional) where the trachea divides, when a trachea was
            traced over at least 40 mm; the region then stops ``CARINA_MARGIN_MM`` beyond it on the
            trachea's side (coronary arteries lie 20 mm or more below the carina, and a calcium-scoring scan
            starts there) and ``HEART_BELOW_CARINA_MM`` below it (the upper abdomen). NaN when no trachea was
            traced (nothing cut along z).
    """

    found: bool
    region: np.ndarray | None
    box: tuple[slice, slice, slice] | None
    lung_cm3: float
    note: str
    mediastinum_hu70: float = float("nan")
    z_change: float = float("nan")
    carina_slice: float = float("nan")

    @property
    def contrast_enhanced(self) -> bool:
        """True when the mediastinum looks contrast-enhanced (``mediastinum_hu70`` > 130 HU): calcium
        scoring needs a non-contrast scan, and enhanced blood would pass for calcium (or for bone)."""
        return bool(self.found and self.mediastinum_hu70 > ENHANCED_HU70)

    @property
    def phantom_like(self) -> bool:
        """True when the cross-section repeats along z (``z_change`` < ``PHANTOM_Z_CHANGE``): a phantom, not
        a patient. The networks find coronary calcium by a heart's anatomy, which a phantom does not have."""
        return bool(self.z_change < PHANTOM_Z_CHANGE)  # False for NaN

    def to_dict(self) -> dict:
        """JSON-safe summary (no arrays)."""
        box = None if self.box is None else [[s.start, s.stop] for s in self.box]
        hu70 = None if not np.isfinite(self.mediastinum_hu70) else round(self.mediastinum_hu70, 1)
        z_change = None if not np.isfinite(self.z_change) else round(self.z_change, 3)
        carina = None if not np.isfinite(self.carina_slice) else round(self.carina_slice, 1)
        return {"found": self.found, "box_zyx": box, "lung_cm3": round(self.lung_cm3, 1), "note": self.note,
                "mediastinum_hu70": hu70, "z_change": z_change, "carina_slice": carina}


def _factors(spacing) -> tuple[int, int, int]:
    return tuple(max(1, int(round(_COARSE_MM / float(s)))) for s in spacing)  # type: ignore[return-value]


def _block_mean(hu: np.ndarray, f: tuple[int, int, int], *, chunk_voxels: int = 1 << 24) -> np.ndarray:
    """Mean over f-blocks (edge-padded to a multiple of f), float32; HU below -1000 counted as -1000.

    Computed a few block rows at a time, so the extra memory stays ~``chunk_voxels`` x 4 bytes whatever the
    exam's size."""
    shape = [-(-n // k) for n, k in zip(hu.shape, f)]
    out = np.empty(shape, np.float32)
    rows = max(1, chunk_voxels // max(1, f[0] * hu.shape[1] * hu.shape[2]))
    for b0 in range(0, shape[0], rows):
        b1 = min(shape[0], b0 + rows)
        part = np.maximum(hu[b0 * f[0]: b1 * f[0]].astype(np.float32, copy=False), np.float32(-1000.0))
        pads = [((b1 - b0) * f[0] - part.shape[0])] + [(-n) % k for n, k in zip(hu.shape[1:], f[1:])]
        if any(pads):
            part = np.pad(part, [(0, q) for q in pads], mode="edge")
        out[b0:b1] = part.reshape(b1 - b0, f[0], shape[1], f[1], shape[2], f[2]).mean(axis=(1, 3, 5),
                                                                                      dtype=np.float32)
    return out


def _padding_value(hu: np.ndarray) -> float | None:
    """The value written outside the reconstruction circle (-1024, -2048, -3024, ...): the first slice's four
    corners, where they hold one value below -1000 HU; None otherwise (a field without a circle, or cut
    inside it)."""
    corners = np.asarray(hu[0])[[0, 0, -1, -1], [0, -1, 0, -1]]
    return float(corners[0]) if corners[0] < -1000.0 and (corners == corners[0]).all() else None


def _padding_share(hu: np.ndarray, f, shape) -> np.ndarray:
    """float32 ``shape`` (the coarse grid): each cell's share of padding voxels (``_padding_value``) in every
    one of five slices spread over the series (the reconstruction circle is the series'; air that a scanner
    clips to the same value changes from slice to slice), the same in every slice; zeros where that would
    cover half of a slice or more (a blank slice, no circle)."""
    value = _padding_value(hu)
    if value is None:
        return np.zeros(shape, np.float32)
    every = np.ones(hu.shape[1:], bool)
    for k in np.unique(np.linspace(0, hu.shape[0] - 1, 5).round().astype(int)):
        every &= np.asarray(hu[k]) == value
    if every.mean() >= 0.5:
        return np.zeros(shape, np.float32)
    share = _block_mean(every[None].astype(np.float32), (1, f[1], f[2]))[0]
    return np.broadcast_to(share, shape)


def _components(mask: np.ndarray, min_voxels: float) -> np.ndarray:
    lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return np.zeros_like(mask)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[lab]


def _inside_hull(points_mm: np.ndarray, shape, step_mm) -> np.ndarray:
    """bool ``shape``: coarse voxel centres inside the convex hull of ``points_mm`` (N, 3)."""
    try:
        hull = spatial.ConvexHull(points_mm)
        tri = spatial.Delaunay(points_mm[hull.vertices])
    except (spatial.QhullError, ValueError):
        return np.zeros(shape, bool)
    grid = np.indices(shape).reshape(3, -1).T * np.asarray(step_mm)
    return (tri.find_simplex(grid) >= 0).reshape(shape)


def _z_change(m: np.ndarray, step) -> float:
    """How much of the body changes along z: for every pair of coarse slices ``_Z_APART_MM`` apart that both
    hold at least half the largest body section (and >= ``_MIN_SECTION_CM2``), the share of the body (local
    mean > -500 HU in either) whose local mean changes by more than ``_Z_CHANGE_HU``; the lower quartile
    of those shares. A patient's anatomy changes along z (100 synthetic exams of both protocols: 0.12 or
    more); a phantom's cross-section repeats (the real QRM phantom: 0.015). NaN where no such pair exists
    (short or empty volumes)."""
    apart = int(np.ceil(_Z_APART_MM / step[0] - 1e-6))
    body = m > -500.0
    area = body.sum(axis=(1, 2)) * float(step[1] * step[2]) / 100.0  # cm^2 per coarse slice
    if m.shape[0] <= apart or area.max() < _MIN_SECTION_CM2:
        return float("nan")
    full = area >= 0.5 * area.max()
    shares = []
    for k in np.nonzero(full[:-apart] & full[apart:])[0]:
        either = body[k] | body[k + apart]
        changed = either & (np.abs(m[k] - m[k + apart]) > _Z_CHANGE_HU)
        shares.append(changed.sum() / either.sum())
    return float(np.percentile(shares, 25)) if shares else float("nan")


def _air_parts(a: np.ndarray, cell_cm2: float):
    """2D components of air (< -700 HU) in one slice of cell means: (labels, [(index, area cm^2, (y, x)
    centroid in cells, mean HU, lowest cell HU)])."""
    lab, n = ndimage.label(a < -700.0)
    if n == 0:
        return lab, []
    idx = np.arange(1, n + 1)
    size = ndimage.sum_labels(np.ones_like(a), lab, idx)
    mean = ndimage.mean(a, lab, idx)
    low = ndimage.minimum(a, lab, idx)
    cen = ndimage.center_of_mass(np.ones_like(a), lab, idx)
    return lab, [(int(i), float(c) * cell_cm2, tuple(map(float, p)), float(m), float(lo))
                 for i, c, p, m, lo in zip(idx, size, cen, mean, low)]


def _find_carina(hu: np.ndarray, spacing, fz: int, spine_x: float | None) -> tuple[float, int]:
    """The slice (fractional index on the exam's grid) where the trachea divides and the side of it the
    trachea lies on (+1: higher indices), or (NaN, 0).

    The trachea: a round air lumen (0.9-8 cm^2 below -700 HU, mean < -850 HU) in a wall of soft tissue (the
    4 mm ring around it mostly above -300 HU: not lung), within 25 mm of the spine's x, followed slice to slice
    (centroids within 10 mm) over at least 40 mm. The carina is the end of that run beyond which, within
    30 mm, two air lumens lie on either side of it (the main bronchi); where neither end or both ends show
    that, no carina is given."""
    f = (fz,) + tuple(max(1, int(round(_AIRWAY_MM / float(s)))) for s in spacing[1:])
    step = np.array([s * k for s, k in zip(spacing, f)])
    a = _block_mean(hu, f)
    cell_cm2 = float(step[1] * step[2]) / 100.0
    ring_it = max(1, int(round(4.0 / step[1])))
    found = []  # per slice: trachea-like lumens (centroid y, x in mm)
    parts = []
    for k in range(a.shape[0]):
        lab, comps = _air_parts(a[k], cell_cm2)
        parts.append(comps)
        here = []
        for i, area, (cy, cx), mean, _ in comps:
            if not (_TRACHEA_CM2[0] <= area <= _TRACHEA_CM2[1] and mean < -850.0):
                continue
            if spine_x is not None and abs(cx * step[2] - spine_x) > 25.0:
                continue
            m = lab == i
            ring = ndimage.binary_dilation(m, iterations=ring_it) & ~m
            if not ring.any() or np.median(a[k][ring]) < -300.0:
                continue
            ys, xs = np.nonzero(m)
            extent = (np.ptp(ys) + 1) * (np.ptp(xs) + 1)
            if m.sum() < 0.45 * extent:  # not round: a bronchus seen along its length
                continue
            here.append((cy * step[1], cx * step[2]))
        found.append(here)

    def sides(k, ty, tx):
        """Air lumens (0.2-8 cm^2, not the air around the body; a core cell below -900 HU: not lung, whose
        2 mm cells stay above it) on both sides of (ty, tx) within 50 mm in slice k: the main bronchi (an
        oblique bronchus in a thick slice holds air only along its core, so its mean can be lung-like)."""
        near = [cx * step[2] for _, area, (cy, cx), mean, low in parts[k]
                if 0.2 <= area <= _TRACHEA_CM2[1] and low < -900.0
                and np.hypot(cy * step[1] - ty, cx * step[2] - tx) <= 50.0]
        return any(x < tx - 4.0 for x in near), any(x > tx + 4.0 for x in near)

    def two_sides(k, ty, tx):
        return all(sides(k, ty, tx))

    # the longest run of slices with a trachea-like lumen, centroids within 10 mm slice to slice; its ends
    # are trimmed while they lie over 6 mm from the run's median centroid (the trachea's axis: it runs
    # straight) or hold lumens on both sides of it: there the run has followed a main bronchus
    best, run = [], []
    for k in range(a.shape[0]):
        if run and found[k]:
            d = [np.hypot(y - run[-1][1][0], x - run[-1][1][1]) for y, x in found[k]]
            run = run + [(k, found[k][int(np.argmin(d))])] if min(d) <= 10.0 else [(k, found[k][0])]
        else:
            run = [(k, found[k][0])] if found[k] else []
        if len(run) > len(best):
            best = run
    if not best:
        return float("nan"), 0
    axis = tuple(np.median([c for _, c in best], axis=0))

    def off_axis(item):  # a main bronchus leaves the trachea's straight axis, or the slice shows both
        k, (y, x) = item
        return np.hypot(y - axis[0], x - axis[1]) > 6.0 or two_sides(k, *axis)

    while best and off_axis(best[0]):
        best = best[1:]
    while best and off_axis(best[-1]):
        best = best[:-1]
    if len(best) * step[0] < _MIN_TRACHEA_MM:
        return float("nan"), 0
    k0, k1 = best[0][0], best[-1][0]

    def divides(k_end, direction):
        """The main bronchi within 30 mm beyond ``k_end``: lumens on both sides of the axis, in one slice or
        in different ones (the right main bronchus is short and steep, the left one long and flat: in thick
        slices each may show where the other does not)."""
        left = right = False
        for j in range(1, int(30.0 / step[0]) + 1):
            k = k_end + direction * j
            if not 0 <= k < a.shape[0]:
                break
            l, r = sides(k, *axis)
            left, right = left or l, right or r
        return left and right

    low, high = divides(k0, -1), divides(k1, +1)
    if low == high:
        return float("nan"), 0
    k = k0 if low else k1 + 1  # the boundary between the last trachea cell and the first divided one
    return float(k * fz - 0.5), (1 if low else -1)


def _spine_x(bone: np.ndarray, step) -> float | None:
    """x (mm, on the coarse grid) of the vertebral column: the column of the coarse grid holding the most
    bone in either half of the bone's extent along y (the spine is the one bone that every slice holds in
    the middle, and it outweighs the sternum: either way up); None when there is no bone."""
    if not bone.any():
        return None
    ys = np.nonzero(bone.any(axis=(0, 2)))[0]
    mid = (ys[0] + ys[-1]) // 2
    counts = [ndimage.uniform_filter1d(half.sum(axis=(0, 1)).astype(np.float64), size=5)
              for half in (bone[:, mid:, :], bone[:, :mid, :])]
    best = max(counts, key=lambda c: c.max())
    return float(np.argmax(best) * step[2])


def _soft_walled_gas(gas: np.ndarray, m: np.ndarray) -> np.ndarray:
    """The pockets of ``gas`` (bool, coarse cells below -960 HU inside the body) that are bowel under the
    lungs, not lung: the stomach's and the colon's gas under the diaphragm. A pocket (3D component) goes when
    all three hold:

    - soft tissue surrounds it: under ``_GAS_SHELL_LUNG`` of the cells 4-8 mm from it (its second ring)
      hold aerated lung (-960 to -700 HU); a bowel's wall and the organs around it are soft tissue or fat
      (synthetic bowel gas 0.00-0.24, the trachea 0.00-0.18, bullae inside lung 0.36-0.66);
    - it lies under the lungs' bulk: in its middle slice the lung-like cells (-960 to -400 HU) cover under
      ``_GAS_UNDER_LUNGS`` of the largest such slice's area (a pneumothorax in front of the heart, a bulla
      against the chest wall, lie where the lungs are wide, and stay lung);
    - it is small beside the lungs: under ``_GAS_SMALL`` of the lung-like cells and gas together (bases
      destroyed by emphysema stay lung).

    A pocket that goes takes its rim with it (the cells next to it: partial volume of gas and wall, lung-like
    in HU, which across a diaphragm thinner than a cell would join the gas to the lung above it). The
    trachea may go or stay: it lies between the lungs and widens no hull. Returns bool like ``gas``."""
    cube = np.ones((3, 3, 3), bool)
    lab, n = ndimage.label(gas, structure=cube)
    out = np.zeros(gas.shape, bool)
    if n == 0:
        return out
    lunglike = (m > _LUNG_HU[0]) & (m < _LUNG_HU[1])
    area = lunglike.sum(axis=(1, 2))
    total = float(lunglike.sum() + gas.sum())
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        middle = (sl[0].start + sl[0].stop - 1) // 2
        if area[middle] >= _GAS_UNDER_LUNGS * area.max() or sizes[i] >= _GAS_SMALL * total:
            continue
        box = tuple(slice(max(s.start - 2, 0), s.stop + 2) for s in sl)
        pocket = lab[box] == i
        near = ndimage.binary_dilation(pocket, structure=cube)
        ring = ndimage.binary_dilation(near, structure=cube) & ~near
        v = m[box][ring]
        if v.size and float(((v > _LUNG_HU[0]) & (v < -700.0)).mean()) < _GAS_SHELL_LUNG:
            out[box] |= near
    return out


def _vertebra_slices(bone: np.ndarray, at_edge: np.ndarray, spine_x: float, step) -> np.ndarray:
    """bool (z,) coarse slices whose band of ``BACK_BAND_MM`` around ``spine_x`` (mm) holds a vertebra: at
    least ``_MIN_VERTEBRA_CM2`` of ``bone``, clear of ``at_edge`` (not a rib the field of view cuts)."""
    c0, w = int(round(spine_x / step[2])), int(np.ceil(BACK_BAND_MM / step[2]))
    band = slice(max(c0 - w, 0), c0 + w + 1)
    vertebra = bone[:, :, band]
    return ((vertebra.sum(axis=(1, 2)) * float(step[1] * step[2]) / 100.0 >= _MIN_VERTEBRA_CM2)
            & ~(vertebra & at_edge[:, :, band]).any(axis=(1, 2)))


def _one_lung(lungs: np.ndarray, bone: np.ndarray, at_edge: np.ndarray, spine_x: float | None, step):
    """(points, note) where one side's lung is airless or gone in some slices: those slices' lung cells
    mirrored about the spine's column (mm, (n, 3) on the coarse grid, inside it), so that the hull spans the
    mediastinum there as if both lungs were present (from one lung alone it stops at that lung's medial
    surface and leaves the heart out); else (None, ""). A slice is one-sided when it holds at least a fifth
    of the widest slice's lung cells and one side holds under ``_SIDE_EMPTY`` of the other's. ``spine_x`` is
    ``_spine_x``'s column (the most bone): the spine where a vertebra is traced, a rough midline (the
    sternum) where the field cuts it; none within ``_EDGE_CELLS`` of the grid's edge (then the sides are
    split at the image's middle column, and nothing is mirrored). Where no vertebra is traced and one side
    is empty in at least ``_ONE_SIDED_FIELD`` of the lung slices (a field off the chest's middle, showing
    one lung), the points instead make the hull span those slices whole."""
    if not lungs.any():
        return None, ""
    c0 = None if spine_x is None else int(round(spine_x / step[2]))
    midline = c0 is not None and _EDGE_CELLS <= c0 < lungs.shape[2] - _EDGE_CELLS
    if not midline:
        c0 = lungs.shape[2] // 2
    low = lungs[:, :, :c0].sum(axis=(1, 2))
    high = lungs[:, :, c0 + 1:].sum(axis=(1, 2))
    total = low + high
    one_sided = (total >= 0.2 * total.max()) & (np.minimum(low, high) < _SIDE_EMPTY * np.maximum(low, high))
    traced = midline and _vertebra_slices(bone, at_edge, spine_x, step)[lungs.any(axis=(1, 2))].mean() >= 0.5
    n_one, n_lung = int(one_sided.sum()), int((total > 0).sum())
    if not traced and n_one >= _ONE_SIDED_FIELD * n_lung:
        # no vertebra to mirror about, and one side empty in most slices: a field placed off the chest's middle
        # that shows one lung only; the region spans those slices whole (less the lungs, bone and inset)
        ny, nx = lungs.shape[1:]
        far = _BEYOND_FIELD_MM
        corners = np.array([(-far, -far), (-far, (nx - 1) * step[2] + far), ((ny - 1) * step[1] + far, -far),
                            ((ny - 1) * step[1] + far, (nx - 1) * step[2] + far)])
        zs = np.flatnonzero(one_sided) * float(step[0])
        pts = np.concatenate([np.column_stack([np.full(4, z), corners]) for z in zs])
        return pts, (f"; in {n_one} of the lungs' {n_lung} slices (4 mm cells) one side of the image holds almost no "
                     "aerated lung and no vertebra is seen to mirror the other about (a field placed off the chest's "
                     "middle, showing one lung), so the region spans the whole field there")
    if not midline:
        return None, ""
    cells = np.argwhere(lungs & one_sided[:, None, None])
    cells[:, 2] = 2 * c0 - cells[:, 2]
    cells = cells[(cells[:, 2] >= 0) & (cells[:, 2] < lungs.shape[2])]
    if not len(cells):
        return None, ""
    return cells * step, (f"; in {n_one} of the lungs' {n_lung} slices (4 mm cells) one "
                          "side holds almost no aerated lung (an apex or base reaching further on one side, a field "
                          "cutting one lung, or a lung airless: collapsed, an effusion, removed), so the lungs are "
                          f"mirrored there about the {'spine' if traced else 'bone midline'} for the region")


def _beyond_field(lungs: np.ndarray, rim: np.ndarray, step) -> np.ndarray | None:
    """Points (mm, (n, 3) on the coarse grid's frame) ``_BEYOND_FIELD_MM`` beyond the field of view's edge
    (``rim``: the image's border and the padding outside the reconstruction circle, one cell in), out from
    the image's centre in-plane, from each lung cell at that edge: the lung the field cuts goes on beyond
    it; None where no lung reaches the edge."""
    cells = np.argwhere(lungs & rim)
    if not len(cells):
        return None
    pts = cells * np.asarray(step, float)
    out = pts[:, 1:] - (np.array(lungs.shape[1:]) - 1) / 2.0 * np.asarray(step[1:], float)
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)
    pts[:, 1:] += _BEYOND_FIELD_MM * out
    return pts


def _outside_the_patient(lungs: np.ndarray, m: np.ndarray, bone: np.ndarray, at_edge: np.ndarray,
                         spine_x: float | None, step) -> tuple[np.ndarray, int]:
    """``lungs`` without the lung-like components that lie outside the patient along y: the foam pad and the
    table top's foam core under a patient (-990 to -780 HU, enclosed by the patient and the table's skins)
    read as aerated tissue inside the body, and would widen the lungs' hull to the back muscles and ribs.

    The patient's extent along y, per slice: its first and last rows (the largest 3D component above -500 HU)
    within ``BACK_BAND_MM`` of the spine's x (``spine_x``, mm; None: nothing goes), in slices where that band
    holds the vertebra (at least ``_MIN_VERTEBRA_CM2`` of ``bone``, clear of ``at_edge``, the image's edge
    and padding: not a rib the field of view cuts, as when the spine lies outside a small field), each end
    where the image shows what lies beyond it (not ``at_edge``). A component goes when more than half of its
    cells in slices with such an end lie beyond it, in any column: lungs lie between the chest's skin and the
    back's (synthetic exams: none of their cells beyond), a pad under the back (supine) or the chest (prone)
    beyond. Returns (lungs, cells taken out)."""
    if spine_x is None or not lungs.any():
        return lungs, 0
    cube = np.ones((3, 3, 3), bool)
    lab, n = ndimage.label(m > -500.0, structure=cube)
    if n == 0:
        return lungs, 0
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    patient = lab == sizes.argmax()
    c0, w = int(round(spine_x / step[2])), int(np.ceil(BACK_BAND_MM / step[2]))
    band = slice(max(c0 - w, 0), c0 + w + 1)
    cut = at_edge[:, :, band]  # (z, y, band)
    has = _vertebra_slices(bone, at_edge, spine_x, step)
    rows_with = patient[:, :, band].any(axis=2)  # (z, y)
    has &= rows_with.any(axis=1)
    first = np.argmax(rows_with, axis=1)
    last = m.shape[1] - 1 - np.argmax(rows_with[:, ::-1], axis=1)
    rows = np.arange(m.shape[1])[None, :]
    zi = np.arange(m.shape[0])
    # an end is seen where the band's cells just beyond it are neither the image's edge nor padding
    front_seen = has & (first > 1) & ~cut[zi, np.maximum(first - 1, 0)].any(axis=1)
    back_seen = has & (last < m.shape[1] - 2) & ~cut[zi, np.minimum(last + 1, m.shape[1] - 1)].any(axis=1)
    beyond = ((rows < first[:, None]) & front_seen[:, None]) | ((rows > last[:, None]) & back_seen[:, None])
    comp, k = ndimage.label(lungs, structure=cube)
    total = np.bincount((comp * (front_seen | back_seen)[:, None, None]).ravel(), minlength=k + 1)
    out = np.bincount((comp * beyond[:, :, None]).ravel(), minlength=k + 1)
    drop = out > 0.5 * total
    drop[0] = False
    if not drop.any():
        return lungs, 0
    gone = drop[comp]
    return lungs & ~gone, int(gone.sum())


def localise_chest(hu, spacing) -> ChestRegion:
    """Find the lungs and the region between them where coronary calcium can be.

    Args:
        hu: (z, y, x) HU (any real dtype), in any axial orientation (the rule is symmetric).
        spacing: (dz, dy, dx) mm.
    Returns:
        ChestRegion (``region`` bool (z, y, x) on the exam's grid, its bounding box, lung volume, a note).
    """
    hu = np.asarray(hu)
    spacing = tuple(float(s) for s in spacing)
    f = _factors(spacing)
    step = np.array([s * k for s, k in zip(spacing, f)])
    voxel_cm3 = float(np.prod(step)) / 1000.0
    if hu.ndim != 3 or any(n < 2 * k for n, k in zip(hu.shape, f)):
        return ChestRegion(False, None, None, 0.0, f"volume {hu.shape} too small to localise the chest")
    m = _block_mean(hu, f)
    pad_share = _padding_share(hu, f, m.shape)
    padding = pad_share >= 1.0  # the reconstruction circle's outside: cells wholly padding
    z_change = _z_change(m, step)
    plane = np.zeros((1, 3, 3), bool)
    plane[0] = ndimage.generate_binary_structure(2, 1)

    # bone's density from what the field shows: in cells the reconstruction circle cuts, the padding (read as
    # -1000 HU in m) is left out of the mean, else a rib or vertebra along the circle reads as soft tissue
    # (even where a few voxels are shown: a rib along the circle lies there; noise read as bone there only
    # takes a cell at the field's edge out of the region)
    shown = np.where(padding | (pad_share == 0.0), m,
                     (m + 1000.0 * pad_share) / np.maximum(1.0 - pad_share, 1e-3))
    dense = (shown >= _BONE_HU) & ~padding
    dense = np.stack([ndimage.binary_fill_holes(s) for s in dense])
    # bone is thick: seeds survive an in-plane erosion (plaques, 1-2 coarse voxels thick, do not); the bone
    # is every face-connected dense component that holds a large seed
    seeds = _components(ndimage.binary_erosion(dense, structure=plane), _MIN_BONE_CM3 / voxel_cm3)
    lab, _ = ndimage.label(dense)  # face-connected: a plaque merges with bone only where they touch
    bone = np.isin(lab, np.unique(lab[seeds]))
    # bone the field of view cuts (a cardiac field's sternum and ribs at the image border or the
    # reconstruction circle) can be too thin there to hold a core; the coronaries never reach that edge
    rim = np.zeros(dense.shape, bool)
    rim[:, [0, -1], :] = rim[:, :, [0, -1]] = True
    rim = ndimage.binary_dilation(rim | padding, structure=plane)  # the field's edge, one cell in
    at_edge = ndimage.binary_dilation(rim, structure=plane)
    sizes = np.bincount(lab.ravel()) * voxel_cm3
    cube = np.ones((3, 3, 3), bool)
    # (beside soft tissue: the skins of a table the reconstruction circle cuts border only foam and air)
    soft = ndimage.binary_dilation((shown > -300.0) & (shown < 100.0) & ~padding, structure=cube)
    cut = np.intersect1d(np.unique(lab[dense & at_edge]), np.unique(lab[dense & soft]))
    bone |= np.isin(lab, cut[(cut > 0) & (sizes[cut] >= _MIN_CUT_BONE_CM3)])
    bone |= ndimage.binary_dilation(bone, structure=cube) & ~dense  # its partial-volume rim
    spine_x = _spine_x(bone, step)

    # air outside the body: 3D components at air density that reach the in-plane border (padding too);
    # air at that density inside the body counts as lung (bullae of emphysema, a pneumothorax, the airways),
    # but for the bowel's gas under the lungs
    air = m <= _LUNG_HU[0]
    lab, _ = ndimage.label(air, structure=np.ones((3, 3, 3), bool))
    edge = np.unique(np.concatenate([lab[:, 0].ravel(), lab[:, -1].ravel(), lab[:, :, 0].ravel(),
                                     lab[:, :, -1].ravel()]))
    exterior = np.isin(lab, edge[edge > 0])
    gut = _soft_walled_gas(air & ~exterior, m)
    aerated = (m < _LUNG_HU[1]) & ~exterior & ~gut
    opened = ndimage.binary_opening(aerated, structure=plane, iterations=2)
    lungs = _components(opened, _MIN_LUNG_CM3 / voxel_cm3)
    lungs, support = _outside_the_patient(lungs, m, bone, at_edge, spine_x, step)
    lung_cm3 = float(lungs.sum()) * voxel_cm3
    if lung_cm3 < MIN_LUNGS_CM3:
        return ChestRegion(False, None, None, lung_cm3,
                           f"no lungs found ({lung_cm3:.0f} cm^3 of lung-like tissue): calcium not restricted",
                           z_change=z_change)

    pts = np.argwhere(lungs) * step
    mirrored, sides_note = _one_lung(lungs, bone, at_edge, spine_x, step)
    if mirrored is not None:
        pts = np.concatenate([pts, mirrored])
    field_mm = min(hu.shape[1] * spacing[1], hu.shape[2] * spacing[2])
    beyond, field_note = None, ""
    if field_mm < SMALL_FIELD_MM:
        beyond = _beyond_field(lungs, rim, step)
    if beyond is not None:
        pts = np.concatenate([pts, beyond])
        field_note = (f"; the {field_mm:.0f} mm field cuts the lungs around the heart, so the lungs at its edge are "
                      "taken to go on beyond it for the region")
    hull = _inside_hull(pts, m.shape, step)
    # the hull's rim runs along the outer lung surface, where the ribs are: keep its inner part only. Where the
    # scan's first or last slice cuts the hull, that face is the scan's end, not a lung surface: the distance
    # is measured within the scan's slices (else a tight scan's lowest centimetre, the distal RCA's, is lost)
    inner = ndimage.distance_transform_edt(np.pad(hull, ((0, 0), (1, 1), (1, 1))), sampling=step)[:, 1:-1, 1:-1]
    hull &= inner > _HULL_INSET_MM
    margin = max(1, int(round(_MARGIN_MM / step[1])))
    core_lung = ndimage.binary_erosion(lungs, structure=plane, iterations=margin)
    medi = hull & ~lungs
    medi = ndimage.binary_dilation(medi, structure=plane, iterations=margin) & ~core_lung

    region_c = medi & ~bone
    # the contrast statistic is read away from the scan's first and last 10 mm, as it was calibrated (the liver
    # dome or the great vessels at a scan's end would dilute it)
    k = np.arange(m.shape[0])
    away = (np.minimum(k + 1, m.shape[0] - k) * step[0] > _HULL_INSET_MM)[:, None, None]
    soft = m[medi & away & (m > -50.0) & (m < 700.0)]
    hu70 = float(np.percentile(soft, 70)) if soft.size else float("nan")
    if not region_c.any():
        return ChestRegion(False, None, None, lung_cm3,
                           "lungs found but no mediastinum between them: calcium not restricted", hu70, z_change)

    # back to the exam's grid: z and y by repetition (small arrays), x written block-wise into the one
    # full-size array
    nz, ny, nx = hu.shape
    rows = np.repeat(np.repeat(region_c, f[0], axis=0)[:nz], f[1], axis=1)[:, :ny]
    whole = nx // f[2]
    region = np.empty((nz, ny, nx), bool)
    region[:, :, : whole * f[2]].reshape(nz, ny, whole, f[2])[...] = rows[:, :, :whole, None]
    if nx > whole * f[2]:
        region[:, :, whole * f[2]:] = rows[:, :, whole: whole + 1]
    carina, side = _find_carina(hu, spacing, f[0], spine_x)
    carina_note = "no trachea traced over 40 mm: the region is not cut along z"
    if np.isfinite(carina):
        # above the carina (on the trachea's side, + the margin) lie the arch, the great vessels, the
        # trachea and the lung apices, never a coronary artery
        edge = carina + side * CARINA_MARGIN_MM / spacing[0]
        cut = np.arange(region.shape[0]) > edge if side > 0 else np.arange(region.shape[0]) < edge
        removed = int(region[cut].sum())
        if removed < region.sum() - removed:
            region[cut] = False
            carina_note = (f"carina at slice {carina:.0f}: the region ends {CARINA_MARGIN_MM:.0f} mm "
                           f"{'above' if side > 0 else 'below'} it (index order)")
            # far below the carina lies the upper abdomen (the abdominal aorta, the coeliac trunk, the splenic
            # artery), never a coronary artery
            edge = carina - side * HEART_BELOW_CARINA_MM / spacing[0]
            low = np.arange(region.shape[0]) < edge if side > 0 else np.arange(region.shape[0]) > edge
            below = int(region[low].sum())
            if 0 < below < region.sum() - below:
                region[low] = False
                carina_note += (f" and {HEART_BELOW_CARINA_MM:.0f} mm from it on the heart's side (the upper "
                                "abdomen beyond)")
            elif below:
                carina_note += (f"; most of the region lies over {HEART_BELOW_CARINA_MM:.0f} mm below it, so it is "
                                "not cut there")
        else:
            carina_note = (f"a trachea-like tube divides at slice {carina:.0f}, but most of the region lies beyond "
                           "it: not cut")
            carina = float("nan")
    if not region.any():
        return ChestRegion(False, None, None, lung_cm3, "lungs found but no mediastinum between them: calcium not "
                           "restricted", hu70, z_change)
    nz = [np.nonzero(region.any(axis=tuple(a for a in range(3) if a != ax)))[0] for ax in range(3)]
    box = tuple(slice(int(i[0]), int(i[-1]) + 1) for i in nz)
    frac = float(region.mean())
    support_note = (f" ({support * voxel_cm3:.0f} cm^3 of aerated material outside the patient, behind the back or "
                    "in front of the chest (a pad or the table), not taken for lung)" if support else "")
    return ChestRegion(True, region, box, lung_cm3,
                       f"lungs {lung_cm3:.0f} cm^3{support_note}{sides_note}{field_note}; calcium searched in "
                       f"{100 * frac:.0f} % of the volume; {carina_note}", hu70, z_change, carina)
