"""Calcium: coronary artery centre lines, calcified plaques and look-alike distractors, rendered through the
scanner's point spread function.

A calcification is a chain of Gaussian "atoms" (centre in mm, object sigma in mm, density in HU). Rendering
is analytic: in-plane the object Gaussian is convolved with the Gaussian PSF, along z it is averaged over
the slice thickness (slice sensitivity profile = rectangle convolved with a small Gaussian). This gives
partial-volume effects for free and costs only the voxels of each atom's bounding box.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy.special import ndtr

from agatax.synthetic.anatomy import Grid, Heart, _polyline, _unit

__all__ = ["ARTERY_CODES", "BRANCH_OF", "Vessel", "coronary_tree", "cardiac_veins", "surface_coords", "Atoms", "render_atoms", "atoms_box",
           "ostial_root_atoms"]

ARTERY_CODES = {"LM": 1, "LAD": 2, "LCX": 3, "RCA": 4}
#: Side branches and the artery whose territory (and mask label) they belong to: diagonals (LAD), obtuse
#: marginals (LCX), the posterior descending artery (RCA, right-dominant circulation).
BRANCH_OF = {"D1": "LAD", "D2": "LAD", "OM1": "LCX", "OM2": "LCX", "PDA": "RCA"}


@dataclasses.dataclass(frozen=True)
class Vessel:
    """A coronary artery or side branch: centre line (N, 3) (Z, Y, X) mm sampled every ~0.5 mm, lumen radius
    (N,) mm. ``artery``: the main artery it belongs to (LM, LAD, LCX, RCA; a branch's parent)."""

    name: str
    points: np.ndarray
    radius: np.ndarray

    @property
    def artery(self) -> str:
        return BRANCH_OF.get(self.name, self.name)

    @property
    def length_mm(self) -> float:
        return float(np.linalg.norm(np.diff(self.points, axis=0), axis=1).sum())

    def tangent(self, i: int) -> np.ndarray:
        a, b = max(i - 2, 0), min(i + 2, len(self.points) - 1)
        return _unit(self.points[b] - self.points[a])


def coronary_tree(heart: Heart, rng: np.random.Generator, roll: float = 0.0) -> dict[str, Vessel]:
    """LM, LAD, LCX and RCA running in the epicardial fat ~2.5 mm outside the ventricular surface, and their
    side branches (``BRANCH_OF``).

    LM: left aortic sinus -> bifurcation; LAD: anterior interventricular groove to the apex; LCX: left
    atrioventricular groove toward the back; RCA: right sinus -> right atrioventricular groove -> back.
    Branches: 1-2 diagonals from the LAD over the anterolateral wall, 1-2 obtuse marginals from the LCX down
    the lateral wall, the PDA from the RCA's end down the posterior interventricular groove. ``roll``
    (radians) turns every artery that far about the heart's long axis (the heart rolled; 0: as drawn).
    """
    off = 2.0
    t_av = rng.uniform(-0.72, -0.62)
    phi_lad = rng.uniform(0.15, 0.45) + roll
    junction = heart.surface(t_av, phi_lad + 0.25, off)[0]
    # left ostium on the aortic root wall, facing the junction
    root = heart.aortic_root
    to_j = junction - root
    to_j[0] = 0.0
    ostium_l = root + heart.root_radius * _unit(to_j) + np.array([2.0, 0.0, 0.0])
    lm_nodes = np.stack([ostium_l, 0.5 * (ostium_l + junction) + np.array([1.5, -2.0, 0.0]), junction])
    lm = _polyline(lm_nodes, 0.5)

    def wiggle(n, amp):  # tortuosity: 1.5-4 smooth bends along the artery, amplitude ``amp``
        k, ph = rng.uniform(1.5, 4.0), rng.uniform(0.0, 2 * np.pi)
        return amp * rng.uniform(0.3, 1.0) * np.sin(np.linspace(0.0, 2 * np.pi * k, n) + ph) * np.linspace(0.3, 1.0, n)

    t = np.linspace(t_av, rng.uniform(0.85, 0.97), 60)
    lad_phi = phi_lad + 0.25 * np.exp(-((t - t_av) * 6.0) ** 2) + wiggle(60, 0.08)
    lad = np.concatenate([junction[None], heart.surface(t, lad_phi, off)])
    phi_lcx = np.linspace(phi_lad + 0.35, rng.uniform(2.6, 3.3) + roll, 60)
    t_lcx = t_av + wiggle(60, 0.05)
    lcx = np.concatenate([junction[None], heart.surface(t_lcx, phi_lcx, off)])
    phi_rca = np.linspace(-0.55 + roll, -rng.uniform(2.7, 3.3) + roll, 70)
    t_rca = t_av + 0.03 + wiggle(70, 0.05)
    rca_ring = heart.surface(t_rca, phi_rca, off)
    to_r = rca_ring[0] - root
    to_r[0] = 0.0
    ostium_r = root + heart.root_radius * _unit(to_r) + np.array([-1.0, 0.0, 0.0])
    rca = np.concatenate([ostium_r[None], 0.5 * (ostium_r + rca_ring[0])[None] + np.array([[0.0, -2.0, -1.0]]), rca_ring])
    trees = [("LM", lm, 2.1, 2.0), ("LAD", lad, 1.8, 0.8), ("LCX", lcx, 1.7, 0.9), ("RCA", rca, 1.9, 1.0)]
    for k in range(int(rng.integers(1, 3))):  # diagonals: from the LAD toward the apex and the patient's left
        i = min(int(rng.uniform(0.1, 0.35) * len(t)) + 15 * k, len(t) - 10)
        tb = np.linspace(t[i], min(t[i] + rng.uniform(0.4, 0.8), 0.92), 30)
        pb = lad_phi[i] + rng.uniform(0.5, 1.0) * np.linspace(0.0, 1.0, 30) ** 0.7 + wiggle(30, 0.04)
        trees.append((f"D{k + 1}", np.concatenate([lad[i + 1][None], heart.surface(tb, pb, off)]), 1.2, 0.6))
    for k in range(int(rng.integers(1, 3))):  # obtuse marginals: from the LCX down the lateral wall
        i = min(int(rng.uniform(0.25, 0.55) * len(phi_lcx)) + 12 * k, len(phi_lcx) - 5)
        tb = np.linspace(t_lcx[i], rng.uniform(0.3, 0.75), 30)
        pb = phi_lcx[i] + rng.uniform(-0.25, 0.25) * np.linspace(0.0, 1.0, 30) + wiggle(30, 0.04)
        trees.append((f"OM{k + 1}", np.concatenate([lcx[i + 1][None], heart.surface(tb, pb, off)]), 1.2, 0.6))
    tb = np.linspace(t_rca[-1], rng.uniform(0.35, 0.7), 30)  # PDA: the crux toward the apex
    pb = phi_rca[-1] + wiggle(30, 0.05)
    trees.append(("PDA", np.concatenate([rca_ring[-1][None], heart.surface(tb, pb, off)]), 1.2, 0.6))
    vessels = {}
    for name, nodes, r0, r1 in trees:
        pts = _polyline(nodes, 0.5)
        s = rng.uniform(0.9, 1.1)
        vessels[name] = Vessel(name, pts, np.linspace(r0 * s, r1 * s, len(pts)))
    return vessels


def surface_coords(heart: Heart, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(t, phi) of points (N, 3) (Z, Y, X) mm on or near the ventricular surface: the inverse of
    ``Heart.surface`` (t base -1 .. apex 1; phi rad, 0 anterior, +pi/2 patient left)."""
    local = (np.asarray(points, np.float64) - heart.center) @ np.stack([heart.u, heart.v, heart.w]).T
    a, b, c = heart.semi
    return local[:, 0] / a, np.arctan2(local[:, 2] / c, local[:, 1] / b)


def _beside(heart: Heart, t, phi, off, dist_mm, along_t: bool) -> tuple[np.ndarray, np.ndarray]:
    """(t, phi) moved over the surface by ``dist_mm`` (per point; signed) along t (toward the apex) or phi."""
    h = 1e-3
    p0 = heart.surface(t, phi, off)
    p1 = heart.surface(t + h, phi, off) if along_t else heart.surface(t, phi + h, off)
    step = dist_mm * h / np.maximum(np.linalg.norm(p1 - p0, axis=1), 1e-6)
    return (t + step, phi) if along_t else (t, phi + step)


def cardiac_veins(heart: Heart, vessels: dict[str, Vessel], rng: np.random.Generator) -> dict[str, Vessel]:
    """The veins that run beside the arteries in the same fat-filled grooves, soft tissue like them without
    contrast (none carries calcium):

    - ``GCV``: the anterior interventricular vein beside the LAD (on its left in 80 % of patients) from near
      the apex to the base, the great cardiac vein on the atrial side of the LCX in the left
      atrioventricular groove, and the coronary sinus to the crux (radius 1.0-1.4 mm rising to 3.5-5.5 mm:
      the sinus is 7-11 mm across);
    - ``MCV``: the middle cardiac vein beside the PDA in the posterior interventricular groove, up to the
      crux (radius 1.0-1.4 -> 1.8-2.6 mm).

    Each lies 0.5-3 mm (edge to edge) from its artery, the gap reckoned with radii of 1.8 (beside the LAD),
    3.0 (the LCX) and 1.6 mm (the PDA), so the wider sinus comes up to 2.5 mm closer. Where the great
    cardiac vein turns from the LAD into the groove it runs straight across the arteries near the left
    main's bifurcation, as real ones cross there (``generate_exam`` paints the arteries' lumens first, so
    they stay whole). The arteries' tortuosity carries over. Centre lines sampled every ~0.5 mm, like
    ``coronary_tree``'s.
    """
    def beside(name, lo, hi, r_vein, along_t, sign):  # the vein's (t, phi) beside a stretch of an artery
        art = vessels[name]
        n = len(art.points)
        i0, i1 = int(lo * (n - 1)), int(hi * (n - 1))
        t, phi = surface_coords(heart, art.points[i0:i1 + 1])
        gap = art.radius[i0:i1 + 1] + r_vein + rng.uniform(0.5, 3.0)
        return _beside(heart, t, phi, 2.0, sign * gap, along_t)

    # anterior interventricular vein: beside the LAD from 85 % of its length up to the junction
    side = 1.0 if rng.random() < 0.8 else -1.0
    t_a, p_a = beside("LAD", 0.04, rng.uniform(0.75, 0.9), 1.8, False, side)
    t_a, p_a = t_a[::-1], p_a[::-1]
    # great cardiac vein: on the atrial side (toward the base) of the LCX, then the coronary sinus to the crux
    t_g, p_g = beside("LCX", 0.04, 1.0, 3.0, True, -1.0)
    p_g = np.unwrap(p_g)  # the LCX runs around the heart from the front (phi ~0.5) past the back (pi)
    _, crux = surface_coords(heart, vessels["RCA"].points[-1:])
    crux = float(p_g[0] + np.remainder(crux[0] - p_g[0], 2 * np.pi))  # the crux, further along the same way
    keep = p_g <= crux
    t_g, p_g = t_g[keep], p_g[keep]
    if p_g[-1] < crux:  # the sinus runs on along the groove to the crux
        k = max(int((crux - p_g[-1]) * 40), 2)
        t_g = np.concatenate([t_g, np.full(k, t_g[-1])])
        p_g = np.concatenate([p_g, np.linspace(p_g[-1], crux, k + 1)[1:]])
    nodes_a = heart.surface(t_a, p_a, 2.0)
    nodes_g = heart.surface(t_g, p_g, 2.0)
    r0, r1, r2 = rng.uniform(1.0, 1.4), rng.uniform(2.0, 2.6), rng.uniform(3.5, 5.5)
    gcv = _polyline(np.concatenate([nodes_a, nodes_g]), 0.5)
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(gcv, axis=0), axis=1))])
    s_a = float(np.linalg.norm(np.diff(nodes_a, axis=0), axis=1).sum())  # where the LAD's vein turns into the groove
    frac = np.clip((s - s_a) / max(s[-1] - s_a, 1e-6), 0.0, 1.0)
    radius = np.where(s <= s_a, r0 + (r1 - r0) * s / max(s_a, 1e-6),
                      r1 + (r2 - r1) * np.clip((frac - 0.55) / 0.45, 0.0, 1.0))
    veins = {"GCV": Vessel("GCV", gcv, radius)}
    # middle cardiac vein: beside the PDA from its distal part up to the crux
    t_m, p_m = beside("PDA", 0.05, rng.uniform(0.7, 0.95), 1.6, False, 1.0 if rng.random() < 0.5 else -1.0)
    mcv = _polyline(heart.surface(t_m[::-1], p_m[::-1], 2.0), 0.5)
    veins["MCV"] = Vessel("MCV", mcv, np.linspace(rng.uniform(1.0, 1.4), rng.uniform(1.8, 2.6), len(mcv)))
    return veins


@dataclasses.dataclass(frozen=True)
class Atoms:
    """Gaussian calcium atoms: centres (N, 3) (Z, Y, X) mm, object sigma (N,) mm, density (N,) HU."""

    centers: np.ndarray
    sigma: np.ndarray
    density: np.ndarray

    def scaled(self, factor: float) -> "Atoms":
        return Atoms(self.centers, self.sigma, self.density * factor)

    def __len__(self) -> int:
        return len(self.sigma)


def atoms_box(grid: Grid, atoms: Atoms, thickness_mm: float, psf_mm: float, reach: float = 3.5):
    """Index box (z, y, x slices) that holds every atom's rendered signal above ~exp(-reach^2/2)."""
    sxy = np.sqrt(atoms.sigma**2 + psf_mm**2) * reach
    sz = np.sqrt(atoms.sigma**2 + 0.35**2) * reach + 0.5 * thickness_mm
    lo = atoms.centers - np.stack([sz, sxy, sxy], 1)
    hi = atoms.centers + np.stack([sz, sxy, sxy], 1)
    return grid.box(lo.min(0), hi.max(0))


def render_atoms(grid: Grid, atoms: Atoms, box, thickness_mm: float, psf_mm: float, z_psf_mm: float = 0.35) -> np.ndarray:
    """HU added by the atoms inside ``box`` (float32 (bz, by, bx)), PSF and slice profile included.

    In-plane: object Gaussian (sigma s) * PSF (sigma p) = Gaussian of sigma sqrt(s^2 + p^2), peak scaled by
    s^2 / (s^2 + p^2). Along z: the slice average over thickness T of a Gaussian of sigma
    sqrt(s^2 + z_psf^2) with peak s / sqrt(s^2 + z_psf^2), i.e. s sqrt(2 pi) / T * [Phi(b) - Phi(a)].
    """
    s = atoms.sigma[:, None]
    sxy = np.sqrt(s**2 + psf_mm**2)
    sz = np.sqrt(s**2 + z_psf_mm**2)
    z = grid.z_mm[box[0]][None, :]
    y = grid.y_mm[box[1]][None, :]
    x = grid.x_mm[box[2]][None, :]
    c = atoms.centers
    half = 0.5 * thickness_mm
    gz = (s * math.sqrt(2 * math.pi) / thickness_mm) * (ndtr((z - c[:, :1] + half) / sz) - ndtr((z - c[:, :1] - half) / sz))
    gy = np.exp(-0.5 * ((y - c[:, 1:2]) / sxy) ** 2) * (s / sxy) ** 2 * atoms.density[:, None]
    gx = np.exp(-0.5 * ((x - c[:, 2:3]) / sxy) ** 2)
    gzy = (gz[:, :, None] * gy[:, None, :]).astype(np.float32)
    out = np.tensordot(gzy, gx.astype(np.float32), axes=([0], [0]))
    return np.ascontiguousarray(out, dtype=np.float32)


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cross product of (N, 3) arrays (np.cross has a large per-call cost)."""
    return np.stack([a[:, 1] * b[:, 2] - a[:, 2] * b[:, 1], a[:, 2] * b[:, 0] - a[:, 0] * b[:, 2],
                     a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]], axis=1)


def plaque_atoms(vessel: Vessel, s_mm: float, length_mm: float, thickness_mm: float, angle: float,
                 eccentric: float = 0.6) -> Atoms:
    """Atoms of one plaque centred at arclength ``s_mm`` along ``vessel``, ``length_mm`` long (0 = a spot),
    object sigma ~``thickness_mm`` / 2 tapering at both ends, sitting on the wall at ``angle`` (rad)."""
    pts = vessel.points
    n = len(pts)
    i0 = int(np.clip(round(s_mm / 0.5), 0, n - 1))
    sig0 = max(0.5 * thickness_mm, 0.15)
    half = 0.5 * length_mm
    step = max(0.5, 0.8 * sig0)
    offs = np.arange(-half, half + 1e-9, step) if half > 0 else np.zeros(1)
    idx = np.clip(np.rint(i0 + offs / 0.5).astype(int), 0, n - 1)
    a, b = np.clip(idx - 2, 0, n - 1), np.clip(idx + 2, 0, n - 1)
    tng = pts[b] - pts[a]
    tng /= np.linalg.norm(tng, axis=1, keepdims=True) + 1e-12
    ref = np.where(np.abs(tng[:, :1]) < 0.9, np.array([[1.0, 0.0, 0.0]]), np.array([[0.0, 1.0, 0.0]]))
    e1 = _cross(tng, ref)
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True) + 1e-12
    e2 = _cross(tng, e1)
    d = math.cos(angle) * e1 + math.sin(angle) * e2
    taper = np.sqrt(np.clip(1.0 - (offs / (half + step)) ** 2, 0.0, 1.0)) if half > 0 else np.ones(1)
    centers = pts[idx] + eccentric * vessel.radius[idx][:, None] * d
    sig = sig0 * (0.55 + 0.45 * taper)
    return Atoms(centers, sig, np.ones_like(sig))


def ostial_root_atoms(root_axis_mm: np.ndarray, lm: Vessel, rng: np.random.Generator) -> Atoms:
    """Aortic-root wall calcification around the left main ostium: an arc of the root wall through the
    ostium's lip, 4-12 mm around the root and 2-6 mm high, ending at the ostium (not inside the LM).

    ``root_axis_mm``: a point (Z, Y, X) on the root's axis; the arc lies on the circle through the ostium
    (``lm.points[0]``) around it, in the axial plane."""
    ost = lm.points[0]
    d = ost - np.asarray(root_axis_mm, float)
    d[0] = 0.0
    radius = float(np.linalg.norm(d))
    a_ost = math.atan2(d[1], d[2])
    span = rng.uniform(4.0, 12.0) / max(radius, 1.0)  # rad
    side = rng.choice([-1.0, 1.0])
    arc = a_ost + side * np.linspace(0.0, span, max(int(span * radius / 0.8), 3))  # from the ostium away
    height = rng.uniform(2.0, 6.0)
    zs = ost[0] - rng.uniform(0.0, 1.0) * height + np.linspace(0.0, height, 3)
    c = np.array([[z, root_axis_mm[1] + radius * math.sin(a), root_axis_mm[2] + radius * math.cos(a)]
                  for z in zs for a in arc])
    return Atoms(c, np.full(len(c), rng.uniform(0.5, 0.9)), np.ones(len(c)))


def place_beside(atoms: Atoms, vessel: Vessel, gap_mm: float, toward: np.ndarray) -> Atoms:
    """``atoms`` moved rigidly so that their closest approach to ``vessel`` is ``gap_mm`` (mm, edge to edge:
    centre distance less the vessel's lumen radius and the atom's sigma), along the line from the vessel's
    nearest point to the nearest atom (toward the point ``toward`` (Z, Y, X) mm where the two overlap)."""
    for _ in range(6):
        d = np.linalg.norm(atoms.centers[:, None, :] - vessel.points[None, :, :], axis=2)
        edge = d - vessel.radius[None, :] - atoms.sigma[:, None]
        i, j = np.unravel_index(int(np.argmin(edge)), edge.shape)
        if abs(edge[i, j] - gap_mm) < 0.05:
            break
        u = atoms.centers[i] - vessel.points[j]
        if np.linalg.norm(u) < 0.5:
            u = np.asarray(toward, float) - vessel.points[j]
        atoms = dataclasses.replace(atoms, centers=atoms.centers + (gap_mm - edge[i, j]) * _unit(u))
    return atoms


def blob_atoms(center: np.ndarray, sigma: float, direction: np.ndarray | None = None, length: float = 0.0) -> Atoms:
    """A spot (length 0) or a short bar of atoms along ``direction``."""
    if length <= 0 or direction is None:
        return Atoms(np.asarray(center, float)[None], np.array([sigma]), np.ones(1))
    offs = np.arange(-0.5 * length, 0.5 * length + 1e-9, max(0.5, 0.8 * sigma))
    c = np.asarray(center, float)[None] + offs[:, None] * _unit(direction)[None]
    return Atoms(c, np.full(len(offs), sigma), np.ones(len(offs)))


def concat(atoms: list[Atoms]) -> Atoms:
    if not atoms:
        return Atoms(np.zeros((0, 3)), np.zeros(0), np.zeros(0))
    return Atoms(np.concatenate([a.centers for a in atoms]), np.concatenate([a.sigma for a in atoms]),
                 np.concatenate([a.density for a in atoms]))


def _metal_atoms(heart: Heart, landmarks: dict, vessels: dict | None, rng: np.random.Generator,
                 stent_rate: float = 1.0) -> list[dict]:
    """Metal seen on calcium-scoring CT (2000-3071 HU): sternal wires, surgical clips, a pacemaker lead,
    a coronary stent. Items carry ``what`` and, for stents placed on the (already deformed) vessels,
    ``deformed=True``. ``stent_rate``: the share of stents drawn that are kept (a stent left out is drawn
    all the same, so the exam's other draws do not change; 0 and 1 draw nothing more)."""
    out = []
    ai, bi = landmarks["inner"]
    what = str(rng.choice(["sternal_wire", "clip", "lead", "stent"]))
    if what == "sternal_wire":  # loops around the sternum, one every ~25 mm
        z0 = heart.aortic_root[0] + rng.uniform(-40.0, 10.0)
        for k in range(int(rng.integers(2, 6))):
            ang = np.linspace(0, 2 * math.pi, 24, endpoint=False)
            c = np.stack([np.full(24, z0 - 25.0 * k), -bi - 4.0 + 8.5 * np.sin(ang), 17.0 * np.cos(ang)], 1)
            out.append({"kind": "metal", "what": what, "atoms": Atoms(c, np.full(24, 0.4), np.ones(24)),
                        "peak_hu": float(rng.uniform(2200, 3071))})
    elif what == "clip":  # short dense bars on the heart surface (bypass grafts)
        for _ in range(int(rng.integers(2, 7))):
            t, phi = rng.uniform(-0.7, 0.5), rng.uniform(-0.5, 1.8)
            c = heart.surface(t, phi, float(heart.fat_at(t, phi)) + 3.0)[0]
            out.append({"kind": "metal", "what": what,
                        "atoms": blob_atoms(c, 0.4, rng.normal(size=3), rng.uniform(3.0, 6.0)),
                        "peak_hu": float(rng.uniform(2200, 3071))})
    elif what == "lead":  # SVC -> right atrium -> right ventricular apex
        svc = heart.aortic_root + np.array([60.0, 8.0, -28.0])
        ra = heart.aortic_root + np.array([-10.0, 10.0, -35.0])
        apex = heart.center + 0.8 * heart.semi[0] * heart.u
        pts = _polyline(np.stack([svc, heart.aortic_root + np.array([10.0, 8.0, -30.0]), ra, apex]), 0.8)
        out.append({"kind": "metal", "what": what, "atoms": Atoms(pts, np.full(len(pts), 0.6), np.ones(len(pts))),
                    "peak_hu": float(rng.uniform(1800, 3071))})
    elif vessels:  # a stent: a mesh tube on the vessel wall, 10-25 mm long
        v = vessels[str(rng.choice(["LAD", "RCA", "LCX"]))]
        n = len(v.points)
        i0 = int(rng.integers(int(0.1 * n), max(int(0.5 * n), int(0.1 * n) + 1)))
        seg = v.points[i0: i0 + int(rng.uniform(20, 50))]
        cs = []
        for i, c in enumerate(seg[::2]):
            t = v.tangent(min(i0 + 2 * i, n - 1))
            e1 = _unit(np.cross(t, [1.0, 0.0, 0.0]) if abs(t[0]) < 0.9 else np.cross(t, [0.0, 1.0, 0.0]))
            e2 = np.cross(t, e1)
            for a in np.linspace(0, 2 * math.pi, 8, endpoint=False) + 0.4 * i:
                cs.append(c + v.radius[min(i0 + 2 * i, n - 1)] * (math.cos(a) * e1 + math.sin(a) * e2))
        if cs:
            cs, peak = np.array(cs), float(rng.uniform(1500, 2600))
            if stent_rate >= 1.0 or (stent_rate > 0.0 and rng.random() < stent_rate):
                out.append({"kind": "metal", "what": what, "deformed": True, "peak_hu": peak,
                            "atoms": Atoms(cs, np.full(len(cs), 0.3), np.ones(len(cs)))})
    return out


#: look-alikes drawn once per exam, whose probability ``generate_exam(lookalike_rates=...)`` can set
#: ("aortic_root": root calcium running into the left main ostium, drawn in the exam itself; "stent": the share
#: of the metal drawn as a coronary stent that is kept, 1 unless set)
LOOKALIKE_KINDS = ("aortic_valve", "mitral_annulus", "lymph_node", "pericardium", "metal", "aortic_root",
                   "lung_granuloma", "splenic_artery", "stent")
#: how often an exam has calcified granulomas in the lung beside the heart (healed granulomatous infection,
#: histoplasmosis or tuberculosis: a common incidental finding on chest CT; the rate is a modelling choice)
GRANULOMA_RATE = 0.25


def granuloma_atoms(heart: Heart, warp, vol: np.ndarray, grid: Grid, rng: np.random.Generator,
                    rates: dict | None = None) -> list[dict]:
    """Calcified granulomas: round nodules 3-8 mm across, 250-1200 HU, in aerated lung 2-25 mm outside the
    pericardium (where the chest localisation's region reaches into the lung). ``vol``: the noise-free
    anatomy after ``warp`` (HU, (z, y, x) on ``grid``); a nodule is placed only where it lies wholly in
    lung (noise-free HU < -600 over its radius + 1 mm), so it may touch the pleura but not sit in tissue.
    Items as ``distractor_atoms`` (centres already warped: ``"deformed": True``)."""
    rates = rates or {}
    if rng.random() >= rates.get("lung_granuloma", GRANULOMA_RATE):
        return []
    out = []
    for _ in range(1 + rng.poisson(0.7)):
        sigma = rng.uniform(0.8, 2.0)
        for _attempt in range(40):
            t, phi = rng.uniform(-0.7, 0.9), rng.uniform(-math.pi, math.pi)
            gap = 1.2 + 2.0 * sigma + rng.uniform(2.0, 25.0)
            c = warp.points(heart.surface(t, phi, heart.fat_at(t, phi) + gap))[0]
            if _in_air(vol, grid, c, 2.0 * sigma + 1.0):
                out.append({"kind": "lung_granuloma", "atoms": blob_atoms(c, sigma),
                            "peak_hu": float(rng.uniform(250, 1200)), "deformed": True})
                break
    return out


def _in_air(vol: np.ndarray, grid: Grid, center_mm: np.ndarray, radius_mm: float) -> bool:
    """Whether every voxel within ``radius_mm`` (a box) of ``center_mm`` lies inside the grid below -600 HU."""
    i = grid.to_index(center_mm)
    half = np.ceil(radius_mm / np.asarray(grid.spacing)).astype(int)
    lo, hi = np.floor(i).astype(int) - half, np.ceil(i).astype(int) + half + 1
    if (lo < 0).any() or (hi > np.asarray(vol.shape)).any():
        return False
    return bool((vol[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] < -600.0).all())


def distractor_atoms(heart: Heart, landmarks: dict, grid: Grid, rng: np.random.Generator, burden: float,
                     vessels: dict | None = None, rates: dict | None = None) -> list[dict]:
    """Calcium that is NOT coronary: aortic wall (descending and ascending), aortic valve, mitral annulus,
    costal cartilage, a calcified lymph node, pericardial calcification; and metal (sternal wires, clips, a
    pacemaker lead, a stent on ``vessels``). ``burden`` in [0, 1] scales how much calcium. ``rates``: the
    probability of each kind of ``LOOKALIKE_KINDS`` in place of its burden-dependent default (the same draws
    are made, so an exam changes only where a kind comes or goes). Each item: {"kind", "atoms", "peak_hu"}
    (peak_hu = wanted noise-free peak)."""
    rates = rates or {}
    out = []
    z_lo, z_hi = grid.z_mm[0], grid.z_mm[-1]
    # descending aorta wall: plaques along z
    da, da_r = landmarks["descending_aorta"], landmarks["descending_aorta_r"]
    n = rng.poisson(1.0 + 6.0 * burden) if rng.random() < 0.35 + 0.6 * burden else 0
    for _ in range(n):
        ang = rng.uniform(0, 2 * math.pi)
        z = rng.uniform(z_lo, z_hi)
        c = np.array([z, da[1] + da_r * math.sin(ang), da[2] + da_r * math.cos(ang)])
        tang = np.array([0.0, math.cos(ang), -math.sin(ang)])
        d = _unit(np.array([rng.uniform(0.3, 1.0), 0, 0]) + rng.uniform(0, 1) * tang)
        item = {"kind": "aortic_wall", "atoms": blob_atoms(c, rng.uniform(0.4, 1.0), d, rng.uniform(0, 10)),
                "peak_hu": float(rng.uniform(250, 1100))}
        if z <= landmarks.get("da_top", math.inf):  # the descending aorta starts where the arch joins it
            out.append(item)
    # ascending aorta wall
    n = rng.poisson(3.0 * burden) if rng.random() < 0.2 + 0.5 * burden else 0
    for _ in range(n):
        t = rng.uniform(0.15, 1.0)
        ax = heart.aortic_root + t * (heart.ascending_top - heart.aortic_root)
        ang = rng.uniform(0, 2 * math.pi)
        c = ax + heart.aorta_radius * np.array([0.0, math.sin(ang), math.cos(ang)])
        if not (z_lo <= c[0] <= z_hi):
            continue
        out.append({"kind": "aortic_wall", "atoms": blob_atoms(c, rng.uniform(0.4, 0.9), np.array([1.0, 0, 0]), rng.uniform(0, 6)),
                    "peak_hu": float(rng.uniform(200, 900))})
    # aortic valve: cusp calcification in the annulus plane (the paper's main failure mode)
    if rng.random() < rates.get("aortic_valve", 0.1 + 0.55 * burden):
        base_z = heart.aortic_root[0] - heart.root_radius + 3.0
        rot = rng.uniform(0, 2 * math.pi)
        for k in range(3):
            if rng.random() < 0.35 + 0.5 * burden:
                ang = rot + k * 2 * math.pi / 3
                r_max = 0.7 * heart.root_radius  # a small heart (a small body) has a root under 6 mm
                r = rng.uniform(4.0 if r_max > 4.0 else 0.5 * r_max, r_max)
                c = np.array([base_z + rng.uniform(-2, 3), heart.aortic_root[1] + r * math.sin(ang),
                              heart.aortic_root[2] + r * math.cos(ang)])
                d = np.array([0.0, math.cos(ang), -math.sin(ang)])
                out.append({"kind": "aortic_valve", "atoms": blob_atoms(c, rng.uniform(0.6, 1.5), d, rng.uniform(0, 8)),
                            "peak_hu": float(rng.uniform(300, 1300))})
    # mitral annulus: a C-shaped arc of the posterior annulus, close to the LCX
    if rng.random() < rates.get("mitral_annulus", 0.05 + 0.4 * burden):
        ring_r = rng.uniform(13.0, 17.0)
        e1 = heart.v
        e2 = heart.w
        a0 = rng.uniform(math.pi * 0.6, math.pi * 1.1)
        arc = np.linspace(a0, a0 + rng.uniform(0.6, 2.2), 12)
        c = heart.mitral_center[None] + ring_r * (np.cos(arc)[:, None] * e1[None] + np.sin(arc)[:, None] * e2[None])
        sig = rng.uniform(0.7, 1.4)
        out.append({"kind": "mitral_annulus", "atoms": Atoms(c, np.full(len(c), sig), np.ones(len(c))),
                    "peak_hu": float(rng.uniform(300, 1200))})
    # costal cartilage calcification (anterior chest wall)
    ai, bi = landmarks["inner"]
    for _ in range(rng.poisson(1.5 * burden)):
        side = rng.choice([-1.0, 1.0])
        ang = -math.pi / 2 + side * rng.uniform(0.3, 0.6)
        c = np.array([rng.uniform(z_lo, z_hi), (bi + 6.0) * math.sin(ang), (ai + 6.0) * math.cos(ang)])
        out.append({"kind": "costal_cartilage", "atoms": blob_atoms(c, rng.uniform(0.6, 1.4)),
                    "peak_hu": float(rng.uniform(200, 600))})
    # calcified mediastinal / hilar lymph node
    if rng.random() < rates.get("lymph_node", 0.12):
        c = heart.aortic_root + np.array([rng.uniform(5, 25), rng.uniform(15, 30), rng.uniform(-5, 25)])
        out.append({"kind": "lymph_node", "atoms": blob_atoms(c, rng.uniform(1.2, 2.5)),
                    "peak_hu": float(rng.uniform(300, 900))})
    # pericardial calcification: a patchy plate in the pericardium over the ventricles
    if rng.random() < rates.get("pericardium", 0.03 + 0.1 * burden):
        t = rng.uniform(-0.4, 0.6) + np.linspace(0.0, rng.uniform(0.1, 0.4), 8)
        phi = rng.uniform(-1.0, 2.5) + np.linspace(0.0, rng.uniform(0.2, 0.8), 8)
        t, phi = np.repeat(t, 8), np.tile(phi, 8)
        c = heart.surface(t, phi, heart.fat_at(t, phi) + 1.2)
        keep = rng.random(len(c)) < 0.6
        if keep.any():
            out.append({"kind": "pericardium", "atoms": Atoms(c[keep], np.full(int(keep.sum()), 0.7), np.ones(int(keep.sum()))),
                        "peak_hu": float(rng.uniform(200, 900))})
    if rng.random() < rates.get("metal", 0.12):
        out += _metal_atoms(heart, landmarks, vessels, rng, rates.get("stent", 1.0))
    return out


def arch_atoms(landmarks: dict, grid: Grid, rng: np.random.Generator, burden: float) -> list[dict]:
    """Calcified plaques on the wall of the aortic arch (``landmarks["arch"]``, (N, 3) mm, and its radius
    ``landmarks["arch_r"]``), most often on its top; more with ``burden``. Items as ``distractor_atoms``."""
    arch, arch_r = landmarks["arch"], landmarks["arch_r"]
    n = rng.poisson(1.0 + 5.0 * burden) if rng.random() < 0.25 + 0.6 * burden else 0
    out = []
    for _ in range(n):
        i = int(np.clip(rng.normal(0.55, 0.2), 0.05, 0.95) * (len(arch) - 1))
        tang = _unit(arch[min(i + 1, len(arch) - 1)] - arch[max(i - 1, 0)])
        up = np.array([1.0, 0.0, 0.0]) - tang[0] * tang
        up = _unit(up) if np.linalg.norm(up) > 1e-6 else np.array([0.0, 1.0, 0.0])
        side = np.cross(tang, up)
        ang = rng.normal(0.0, 1.0)  # around the wall, most often on top of the arch
        c = arch[i] + arch_r[i] * (math.cos(ang) * up + math.sin(ang) * side)
        if not grid.z_mm[0] <= c[0] <= grid.z_mm[-1]:
            continue
        out.append({"kind": "aortic_wall", "atoms": blob_atoms(c, rng.uniform(0.4, 1.0), tang, rng.uniform(0, 12)),
                    "peak_hu": float(rng.uniform(250, 1100))})
    return out


def splenic_atoms(landmarks: dict, grid: Grid, rng: np.random.Generator, burden: float,
                  rates: dict | None = None) -> list[dict]:
    """Calcified plaques on the splenic artery's wall (``landmarks["splenic_artery"]``, (N, 3) mm, radius
    ``landmarks["splenic_artery_r"]``; drawn with the upper abdomen, ``ScannerParams.abdomen``): in an exam with
    probability ``rates["splenic_artery"]`` or 0.1 + 0.5 ``burden`` (a modelling choice: such calcium is common
    from middle age on), 1 + Poisson(3 ``burden``) plaques, ring-like (an arc of the wall) or beaded (a short
    bar along it), 250-1000 HU. [] when the artery is not drawn. Items as ``distractor_atoms``."""
    if "splenic_artery" not in landmarks:
        return []
    path, r = landmarks["splenic_artery"], landmarks["splenic_artery_r"]
    if rng.random() >= (rates or {}).get("splenic_artery", 0.1 + 0.5 * burden):
        return []
    out = []
    for _ in range(1 + rng.poisson(3.0 * burden)):
        i = int(rng.integers(1, len(path) - 1))
        tang = _unit(path[i + 1] - path[i - 1])
        side = _unit(np.cross(tang, rng.normal(size=3)))
        other = np.cross(tang, side)
        peak = float(rng.uniform(250, 1000))
        if rng.random() < 0.4:  # ring-like: an arc of the wall
            ang = rng.uniform(0.0, 2 * math.pi) + np.linspace(0.0, rng.uniform(1.5, 5.0), 8)
            c = path[i][None] + r * (np.cos(ang)[:, None] * side[None] + np.sin(ang)[:, None] * other[None])
            atoms = Atoms(c, np.full(len(c), 0.5), np.ones(len(c)))
        else:  # beaded: a short bar along the wall
            atoms = blob_atoms(path[i] + r * side, rng.uniform(0.4, 0.9), tang, rng.uniform(0.0, 8.0))
        if grid.z_mm[0] <= atoms.centers[:, 0].mean() <= grid.z_mm[-1]:
            out.append({"kind": "splenic_artery", "atoms": atoms, "peak_hu": peak})
    return out
