"""One synthetic non-contrast cardiac CT exam with known coronary calcium: ``generate_exam``."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from scipy import ndimage

from agatax.errors import AgataxError, InputError
from agatax.synthetic.anatomy import (
    TISSUES, Grid, Heart, ScannerParams, _paint_capsules, build_anatomy, polyline_segments, make_grid, sample_heart,
    sample_scanner,
)
from agatax.synthetic.calcium import (
    ARTERY_CODES, BRANCH_OF, LOOKALIKE_KINDS, Atoms, Vessel, arch_atoms, atoms_box, cardiac_veins, coronary_tree, distractor_atoms,
    granuloma_atoms, ostial_root_atoms, place_beside, plaque_atoms, render_atoms, splenic_atoms,
)
from agatax.synthetic.texture import tissue_texture
from agatax.volume import Volume

__all__ = ["SyntheticExam", "generate_exam", "CATEGORIES", "CATEGORY_TARGETS", "DISTRACTOR_CODES",
           "REAL_WORLD_MIX", "category_of"]

CATEGORIES = ("A", "B", "C", "D", "E")
# Agatston ranges the planner aims at inside each category (A = 0, B (0, 10], C (10, 100], D (100, 400], E > 400).
CATEGORY_TARGETS = {"A": (0.0, 0.0), "B": (1.0, 9.0), "C": (14.0, 90.0), "D": (115.0, 380.0), "E": (430.0, 2500.0)}
REAL_WORLD_MIX = {"A": 0.45, "B": 0.15, "C": 0.18, "D": 0.12, "E": 0.10}
DISTRACTOR_CODES = {"bone": 1, "aortic_wall": 2, "aortic_valve": 3, "mitral_annulus": 4, "costal_cartilage": 5,
                    "lymph_node": 6, "pericardium": 7, "metal": 8, "aortic_root": 9, "lung_granuloma": 10,
                    "table": 11, "splenic_artery": 12}
ARTERY_NAMES = {v: k for k, v in ARTERY_CODES.items()}
FOOTPRINT_HU = 20.0  # a calcification's neighbourhood: where it adds at least this many HU
_ARTERY_P = {"LAD": 0.42, "RCA": 0.26, "LCX": 0.20, "LM": 0.12}
_BRANCH_P = {"LAD": 0.25, "LCX": 0.35, "RCA": 0.15}  # of an artery's plaques, the share on its side branches
_SCANNER_KEYS = ("matrix", "fov_mm", "slice_increment_mm", "slice_thickness_mm", "n_slices", "noise_sigma_hu",
                 "sharpness", "hu_offset", "fov_center_mm", "kvp", "protocol", "padding_hu", "noise_streak",
                 "noise_profile", "table", "abdomen", "tissue_texture", "heart_axis_spread",
                 "heart_roll_deg", "heart_tilt_spread")


#: Changes whenever the same seed and arguments give another exam (anatomy, calcium or scanner drawn
#: differently); caches of generated exams (experiments' training pairs) carry it in their names.
#: 2: epicardial fat varying along the heart, tortuous arteries (2026-12-03).
#: 3: side branches (diagonals, obtuse marginals, PDA) with plaques on them; plaques sit from inside the
#: lumen to beyond the wall, in the fat beside the vessel (2026-12-03).
#: 4: aortic-root calcium running into the left main ostium, touching an ostial LM plaque (2026-12-03).
#: 5: the mitral annulus placed 0.9-11.4 mm from the LCX and allowed to touch LCX calcium; the ostial LM
#: plaque checked with room to grow (2026-12-03).
#: 6: the heart keeps 20 mm in front of the vertebral body (oesophagus and descending aorta drawn whole
#: behind it; half the exams had it painted over them), shrunk to 80 % at most (was 65 %) and the chest
#: drawn deeper where it still does not fit; the left atrium 36 mm deep (was 40) (2026-12-04).
#: 7: calcified granulomas in the lung beside the heart in 25 % of exams (a stream of their own: the other
#: exams are those of version 6) (2026-12-04).
#: 8: the cardiac veins beside the arteries in their grooves (the anterior interventricular and great cardiac
#: veins and the coronary sinus; the middle cardiac vein), a stream of their own (2026-12-05).
#: 9: the heart's long axis turns twice as far from patient to patient (``anatomy.HEART_AXIS_SPREAD``: 95 % of
#: axes 31-70 degrees left of anterior, 30-57 below the axial plane; were 41-60 and 37-51) (2026-12-07).
GENERATOR_VERSION = 9


def category_of(score: float) -> str:
    """Risk category of an Agatston score (A 0, B (0, 10], C (10, 100], D (100, 400], E > 400)."""
    from agatax.scoring import risk_category

    return risk_category(score)


@dataclasses.dataclass(frozen=True, eq=False)
class SyntheticExam:
    """A synthetic exam and its truth.

    Attributes:
        volume: the CT (Volume: hu float32 (z, y, x) integer-valued HU, spacing (dz, dy, dx) mm, LPS affine).
        mask: uint8 (z, y, x) true coronary calcium, 1 LM, 2 LAD, 3 LCX, 4 RCA, 0 elsewhere.
        lesions: one dict per planted calcification: ``center_zyx`` (voxel indices of its brightest voxel,
            the annotation point), ``points_zyx`` (one point per 3D component), ``artery`` (LM, LAD, LCX,
            RCA: the mask label), ``vessel`` (the artery or its side branch: D1, D2, OM1, OM2, PDA),
            ``eccentric`` (lumen radii off the centre line), ``peak_hu`` (max HU inside its mask),
            ``density_hu`` (planned noise-free peak), ``length_mm``, ``thickness_mm``, ``voxels``,
            ``agatston`` (its own score measured alone).
        agatston: true Agatston score (agatax.compute_scores on ``volume.hu`` and ``mask``).
        category: risk category "A".."E" of ``agatston``.
        target_category: the category the planner aimed at.
        distractors: non-coronary calcium (dicts: ``kind``, ``center_zyx``, ``peak_hu``).
        distractor_mask: uint8 (z, y, x), DISTRACTOR_CODES (1 bone, 2 aortic wall, 3 aortic valve, 4 mitral
            annulus, 5 costal cartilage, 6 lymph node, 7 pericardium, 8 metal, 9 aortic root at the LM ostium,
            10 calcified granuloma in the lung, 11 the table's skins, 12 the splenic artery's calcium);
            only code 9 touches ``mask`` (where an ostial LM plaque meets it) and code 4 (an LCX plaque beside the
            annulus), never overlapping it.
        scores: the full agatax Scores of the true mask.
        tissue: uint8 (z, y, x) tissue classes (anatomy.TISSUES) when asked for (keep_tissue=True), else None.
        seed: the seed; params: every parameter used (scanner, patient).
    """

    volume: Volume
    mask: np.ndarray
    lesions: list[dict]
    agatston: float
    category: str
    target_category: str
    distractors: list[dict]
    distractor_mask: np.ndarray
    scores: Any
    tissue: np.ndarray | None
    seed: int
    params: dict

    @property
    def points(self) -> list[tuple[int, int, int]]:
        """Every annotation point (z, y, x) of every lesion."""
        return [tuple(p) for les in self.lesions for p in les["points_zyx"]]

    @property
    def n_lesions(self) -> int:
        return len(self.lesions)

    @property
    def look_alike_mask(self) -> np.ndarray:
        """bool (z, y, x): non-coronary calcium other than plain bone (aortic wall and valve, mitral annulus,
        costal cartilage, lymph nodes): the hard negatives of training (``agatax.prepare_pairs``)."""
        return self.distractor_mask > DISTRACTOR_CODES["bone"]


# ------------------------------------------------------------------------------------------ helpers
def _correlated_noise(shape, sigma: float, rng: np.random.Generator, passes: int) -> np.ndarray:
    """Zero-mean float32 noise of standard deviation ``sigma`` HU, correlated in-plane by ``passes``
    binomial [1, 2, 1] / 4 smoothings per axis (CT noise has a grain of ~1-2 pixels)."""
    n = int(np.prod(shape))
    raw = np.frombuffer(rng.bytes(2 * n), np.uint8)
    a = raw[:n].astype(np.float32).reshape(shape)
    a -= raw[n:].reshape(shape)  # triangular on -255..255, variance 2 * (256^2 - 1) / 12
    for _ in range(passes):
        for axis in (1, 2):
            lo = [slice(None)] * 3
            hi = [slice(None)] * 3
            lo[axis], hi[axis] = slice(None, -1), slice(1, None)
            s = a[tuple(lo)] + a[tuple(hi)]
            mid = [slice(None)] * 3
            mid[axis] = slice(1, -1)
            lo[axis], hi[axis] = slice(None, -1), slice(1, None)
            np.add(s[tuple(lo)], s[tuple(hi)], out=a[tuple(mid)])
            edge = [slice(None)] * 3
            for e in (0, -1):
                edge[axis] = e
                a[tuple(edge)] *= 4.0
    k = np.array([1.0])
    for _ in range(passes):
        k = np.convolve(k, [0.25, 0.5, 0.25])
    gain = math.sqrt(2.0 * (256.0**2 - 1.0) / 12.0) * float((k**2).sum()) * 16.0 ** passes
    a *= np.float32(sigma / gain)
    return a


STREAK_MM = 1.5  # correlation along x (Gaussian sigma) of the streak component, fitted to the real phantom


def _scanner_noise(shape, sc, rng: np.random.Generator, passes: int) -> np.ndarray:
    """The exam's noise (SD ``sc.noise_sigma_hu``): the isotropic grain of :func:`_correlated_noise` (the real
    phantom's near its centre), and where ``sc.noise_streak`` > 0 that share of the variance in horizontal
    streaks everywhere (white noise smoothed along x by a Gaussian of ``STREAK_MM``). The real phantom's
    whole body (Canon FC12, 0.49 mm pixels): autocorrelation along x of 0.77 / 0.41 / 0.17 / 0.12 at 1 / 2 /
    4 / 6 pixels against 0.58 / 0.00 / -0.01 / 0.02 along y, from streaks along its edge; share 0.3 gives
    0.76 / 0.38 / 0.19 / 0.11 along x (experiments/REALISM.md)."""
    noise = _correlated_noise(shape, sc.noise_sigma_hu, rng, passes)
    w = float(sc.noise_streak)
    if w > 0.0:
        noise = _with_streaks(noise, shape, sc, rng, w)
    if sc.noise_profile:
        noise *= noise_profile_map(shape[1:], sc.pixel_mm, sc.fov_mm, sc.noise_profile)[None]
    return noise


def noise_profile_map(shape, pixel_mm: float, fov_mm: float, gain: float) -> np.ndarray:
    """Noise SD across a slice relative to its centre's, float32 (y, x): 1 + ``gain`` (r / R)^2 with r the
    distance from the image centre and R half the field of view, at least 0.25. Real CT noise is not the same
    everywhere: it follows the attenuation along the rays and the bowtie filter (the real phantom: about 20 HU
    at its centre and 26 HU along its edge; a large patient's centre, starved of photons, is noisier than its
    edge: a gain below 0)."""
    ny, nx = shape
    y = (np.arange(ny, dtype=np.float32) - (ny - 1) / 2.0) * np.float32(pixel_mm)
    x = (np.arange(nx, dtype=np.float32) - (nx - 1) / 2.0) * np.float32(pixel_mm)
    r2 = (y[:, None] ** 2 + x[None, :] ** 2) / np.float32((fov_mm / 2.0) ** 2)
    return np.maximum(np.float32(1.0) + np.float32(gain) * r2, np.float32(0.25))


def _with_streaks(noise, shape, sc, rng, w):
    from scipy import ndimage

    streak = ndimage.gaussian_filter1d(rng.standard_normal(shape, dtype=np.float32), STREAK_MM / sc.pixel_mm,
                                       axis=2, mode="wrap")
    streak *= np.float32(sc.noise_sigma_hu * math.sqrt(w) / max(float(streak.std()), 1e-12))
    noise *= np.float32(math.sqrt(1.0 - w))
    noise += streak
    return noise


class _Warp:
    """A smooth random deformation of the whole anatomy: a sum of 4 plane waves per axis (wavelengths
    70-200 mm, amplitude ``amp_mm`` in all), so no two patients share organ shapes.

    ``image(vol)`` resamples a (z, y, x) volume (the anatomy moves by -d); ``points(q)`` moves (N, 3)
    patient points (Z, Y, X mm) the same way, so that vessels and calcium stay where the image puts them.
    """

    def __init__(self, rng: np.random.Generator, amp_mm: float):
        self.waves = []
        for _axis in range(3):
            for _ in range(4):
                k = rng.normal(size=3)
                k *= 2 * math.pi / (np.linalg.norm(k) * rng.uniform(70.0, 200.0))
                self.waves.append((_axis, k, rng.uniform(0, 2 * math.pi), amp_mm * rng.uniform(0.2, 0.5)))

    def displacement(self, z, y, x) -> list[np.ndarray]:
        """d (Z, Y, X) in mm at broadcastable coordinates z, y, x (mm)."""
        d = [np.zeros(np.broadcast_shapes(np.shape(z), np.shape(y), np.shape(x)), np.float32) for _ in range(3)]
        for axis, k, phase, a in self.waves:
            d[axis] += np.float32(a) * np.sin(np.float32(k[0]) * z + np.float32(k[1]) * y + np.float32(k[2]) * x
                                              + np.float32(phase)).astype(np.float32)
        return d

    def image(self, vol: np.ndarray, grid: Grid, order: int) -> np.ndarray:
        z = grid.z_mm.astype(np.float32)[:, None, None]
        y = grid.y_mm.astype(np.float32)[None, :, None]
        x = grid.x_mm.astype(np.float32)[None, None, :]
        d = self.displacement(z, y, x)
        coords = [np.arange(n, dtype=np.float32).reshape([-1 if i == a else 1 for i in range(3)]) + d[a] / np.float32(sp)
                  for a, (n, sp) in enumerate(zip(grid.shape, grid.spacing))]
        coords = [np.broadcast_to(c, grid.shape) for c in coords]
        return ndimage.map_coordinates(vol, coords, order=order, mode="nearest", prefilter=False).astype(vol.dtype)

    def points(self, q: np.ndarray) -> np.ndarray:
        """Where the image shows patient point q (N, 3): p with p + d(p) = q (fixed point, 3 steps)."""
        q = np.asarray(q, np.float64)
        p = q.copy()
        for _ in range(3):
            d = self.displacement(p[..., 0], p[..., 1], p[..., 2])
            p = q - np.stack(d, -1).astype(np.float64)
        return p


def _add_streaks(vol: np.ndarray, grid: Grid, atoms: Atoms, rng: np.random.Generator) -> None:
    """Streak artefact of a metal object: in each slice it crosses, 3-6 lines through its centre, bright
    and dark in turn (40-150 HU, ~1 mm wide, fading with distance), added to ``vol`` in place."""
    c = atoms.centers.mean(0)
    z_lo, z_hi = atoms.centers[:, 0].min() - 1.5, atoms.centers[:, 0].max() + 1.5
    ks = np.nonzero((grid.z_mm >= z_lo - 0.5 * grid.spacing[0]) & (grid.z_mm <= z_hi + 0.5 * grid.spacing[0]))[0]
    if ks.size == 0:
        return
    Y = (grid.y_mm[:, None] - c[1]).astype(np.float32)
    X = (grid.x_mm[None, :] - c[2]).astype(np.float32)
    r = np.sqrt(X * X + Y * Y)
    pattern = np.zeros(Y.shape[:1] + X.shape[1:], np.float32)
    for i, ang in enumerate(rng.uniform(0, math.pi, int(rng.integers(3, 7)))):
        perp = np.abs(X * math.cos(ang) - Y * math.sin(ang))
        amp = rng.uniform(40.0, 150.0) * (1 if i % 2 == 0 else -1)
        pattern += np.float32(amp) * np.exp(-0.5 * (perp / 0.8) ** 2) / (1.0 + r / 30.0)
    vol[ks] += pattern[None]


def _add_table(vol: np.ndarray, grid: Grid, psf: float, rng: np.random.Generator) -> np.ndarray:
    """Draw the patient's support below the back, in place: a foam pad (10-50 mm, -930 to -780 HU, 500 mm wide)
    on a table top curved up at its sides (radius 1.2-2.5 m, 420-470 mm wide): a carbon-fibre skin of 1.5-3 mm
    at 150-450 HU on each side of a foam core of 25-55 mm at -990 to -940 HU. Its edges are blurred by the
    PSF (``psf`` mm) across y. The pad's top touches the body's lowest point (the largest y of tissue above
    -500 HU), centred on the body's x; the tissue map keeps it as air. Returns bool (z, y, x): the table's
    skins (for the distractor mask)."""
    from scipy.special import erf

    body = vol > -500.0
    rows = np.nonzero(body.any(axis=(0, 2)))[0]
    cols = np.nonzero(body.any(axis=(0, 1)))[0]
    if not rows.size:
        return np.zeros(vol.shape, bool)
    y0 = float(grid.y_mm[rows[-1]]) + 0.5 * grid.spacing[1]
    xc = 0.5 * float(grid.x_mm[cols[0]] + grid.x_mm[cols[-1]])
    pad_mm, pad_hu = float(rng.uniform(10.0, 50.0)), float(rng.uniform(-930.0, -780.0))
    radius, width = float(rng.uniform(1200.0, 2500.0)), float(rng.uniform(420.0, 470.0))
    skin_mm, skin_hu = float(rng.uniform(1.5, 3.0)), float(rng.uniform(150.0, 450.0))
    core_mm, core_hu = float(rng.uniform(25.0, 55.0)), float(rng.uniform(-990.0, -940.0))
    dx = grid.x_mm - xc
    lift = dx ** 2 / (2.0 * radius)  # the table top curves up (to smaller y) at its sides
    y = grid.y_mm[:, None]

    def above(edge):  # share of each pixel beyond ``edge`` (mm, per column) along +y, blurred by the PSF
        return 0.5 * (1.0 + erf((y - edge[None, :]) / (math.sqrt(2.0) * psf)))

    # layers from the back down: (thickness mm, HU, half width mm, a skin)
    layers = [(pad_mm, pad_hu, 250.0, False), (skin_mm, skin_hu, 0.5 * width, True),
              (core_mm, core_hu, 0.5 * width, False), (skin_mm, skin_hu, 0.5 * width, True)]
    value = np.zeros(vol.shape[1:], np.float32)
    share = np.zeros(vol.shape[1:], np.float32)
    skins = np.zeros(vol.shape[1:], bool)
    start = y0 - lift
    for thick, hu, half, skin in layers:
        inside = (above(start) - above(start + thick)) * (np.abs(dx) <= half)[None, :]
        value += inside * np.float32(hu)
        share += inside
        if skin:
            skins |= inside > 0.5
        start = start + thick
    share = np.clip(share, 0.0, 1.0)
    # the support replaces air (outside the body) by its share of each pixel; the body is never overwritten
    mix = (value + (1.0 - share) * np.float32(-1000.0))[None]
    air = vol < -900.0
    vol[:] = np.where(air & (share > 1e-3)[None], mix, vol)
    return np.broadcast_to(skins[None], vol.shape) & air


def _far_apart(a: Atoms, b: Atoms, grid: Grid, thickness: float, psf: float) -> bool:
    """True when the footprints of atom sets a and b cannot touch (with two voxels to spare)."""
    if len(a) == 0 or len(b) == 0:
        return True
    d = a.centers[:, None, :] - b.centers[None, :, :]
    rxy = 3.2 * (np.sqrt(a.sigma**2 + psf**2)[:, None] + np.sqrt(b.sigma**2 + psf**2)[None, :]) + 2.5 * grid.spacing[1]
    rz = 3.2 * (np.sqrt(a.sigma**2 + 0.12)[:, None] + np.sqrt(b.sigma**2 + 0.12)[None, :]) + thickness + grid.spacing[0]
    close = (np.hypot(d[..., 1], d[..., 2]) < rxy) & (np.abs(d[..., 0]) < rz)
    return not bool(close.any())


def _lesion_mask(hu_crop: np.ndarray, signal: np.ndarray, foreign: np.ndarray | None = None):
    """The annotator's mask of one calcification inside its crop: voxels >= 130 HU inside its footprint
    (signal >= FOOTPRINT_HU) that are 3D-connected (26) to its core (signal >= half its maximum). Where
    non-coronary calcium touches it (``foreign``: that calcium's signal on the crop), only the voxels its own
    signal dominates."""
    cand = (hu_crop >= 130.0) & (signal >= FOOTPRINT_HU)
    if foreign is not None:
        cand &= signal >= foreign
    if not cand.any():
        return None
    lab, n = ndimage.label(cand, structure=np.ones((3, 3, 3), bool))
    core = signal >= 0.5 * float(signal.max())
    keep = np.unique(lab[core & cand])
    keep = keep[keep > 0]
    if keep.size == 0:
        return None
    return np.isin(lab, keep), lab, keep


@dataclasses.dataclass
class _Plan:
    artery: str  # the vessel (main artery or side branch) the plaque sits on
    s_mm: float
    size: float  # size knob: thickness and length grow with it
    angle: float
    density: float  # wanted noise-free peak HU
    speck: bool = False
    motion_mm: float = 0.0  # cardiac motion smear (RCA): the plaque drawn twice, this far apart in-plane
    eccentric: float = 0.6  # plaque centre off the centre line, in lumen radii (> 1: beyond the wall, in fat)
    atoms: Atoms | None = None
    box: tuple | None = None
    signal: np.ndarray | None = None

    def geometry(self) -> tuple[float, float]:
        """(thickness_mm, length_mm) of the size knob."""
        thick = min(0.3 + 0.55 * self.size, 2.6)
        length = max(0.0, 5.0 * (self.size - 2.0))
        return thick, min(length, 40.0)


def _plan_atoms(p: _Plan, vessels: dict[str, Vessel]) -> Atoms:
    thick, length = p.geometry()
    v = vessels[p.artery]
    length = min(length, max(0.0, v.length_mm - 4.0))
    s = float(np.clip(p.s_mm, 0.5 * length + 1.0, max(v.length_mm - 0.5 * length - 1.0, 0.5 * length + 1.0)))
    atoms = plaque_atoms(v, s, length, thick, p.angle, p.eccentric)
    if p.motion_mm > 0:
        d = 0.5 * p.motion_mm * np.array([0.0, math.cos(3 * p.angle), math.sin(3 * p.angle)])
        atoms = Atoms(np.concatenate([atoms.centers - d, atoms.centers + d]), np.tile(atoms.sigma, 2),
                      np.tile(0.5 * atoms.density, 2))
    return atoms


def _render_plan(p: _Plan, vessels: dict[str, Vessel], grid: Grid, sc: ScannerParams, base: np.ndarray) -> None:
    atoms = _plan_atoms(p, vessels)
    box = atoms_box(grid, atoms, sc.slice_thickness_mm, sc.psf_sigma_mm)
    if box is None:
        p.atoms, p.box, p.signal = atoms, None, None
        return
    unit = render_atoms(grid, atoms, box, sc.slice_thickness_mm, sc.psf_sigma_mm)
    peak_idx = np.unravel_index(int(np.argmax(unit)), unit.shape)
    bg = float(np.clip(base[box][peak_idx], -120.0, 60.0))
    amp = max(p.density - bg, 60.0) / max(float(unit.max()), 1e-6)
    p.atoms, p.box, p.signal = atoms.scaled(amp), box, unit * np.float32(amp)


def _score_crop(hu_crop, m, spacing) -> float:
    from agatax.scoring import agatston_score

    return agatston_score(hu_crop, m, spacing)


# ------------------------------------------------------------------------------------------ generate
def generate_exam(
    seed: int,
    *,
    target_category: str | None = None,
    target_agatston: tuple[float, float] | None = None,
    category_mix: dict[str, float] | None = None,
    n_lesions: int | None = None,
    calcium_burden: float | None = None,
    lookalike_rates: dict[str, float] | None = None,
    dense_plaque_rate: float = 0.0,
    keep_tissue: bool = False,
    **scanner: Any,
) -> SyntheticExam:
    """Generate one synthetic non-contrast, ECG-gated cardiac CT with known coronary calcium.

    Args:
        seed: non-negative int; the same seed and arguments give the same exam, bit for bit.
        target_category: "A".."E": the exam's true Agatston category (met exactly). Default: drawn from
            ``category_mix`` (default REAL_WORLD_MIX), unless ``target_agatston`` is given.
        target_agatston: (low, high) Agatston range; the score is aimed inside it (category exact).
        n_lesions: number of sized coronary plaques (default: drawn per category).
        calcium_burden: 0..1, how much non-coronary calcium (aorta, valves); default follows the category.
        lookalike_rates: {kind: probability in [0, 1]} for kinds of ``LOOKALIKE_KINDS`` ("aortic_valve",
            "mitral_annulus", "lymph_node", "pericardium", "metal", "aortic_root", "lung_granuloma", "splenic_artery": drawn
            only with ``abdomen=True``): how often the exam has one,
            in place of the burden-dependent default (e.g. ``{"pericardium": 0.5}`` for training data rich in a rare
            look-alike); "stent": the share of metal drawn as a coronary stent that is kept (default 1; 0: metal
            is wires, clips and leads only). Exams whose draws do not cross a changed rate stay bit-identical.
        dense_plaque_rate: probability in [0, 1] that the exam's largest plaque (by its share of the score) is
            planned dense, 900-1400 HU noise-free peak (the generator's own draw: 150-1300 HU, a third of its
            dense bin above 1000); as it keeps its share of the score it is drawn fewer mm^3, and in D-E exams
            long (training data rich in long dense plaques). 0 (default): exams as without it, bit for bit.
        keep_tissue: also return the tissue class map (uint8 (z, y, x)).
        **scanner: any ScannerParams field: ``matrix`` (512; e.g. 128 for fast tests), ``fov_mm``
            (170-240), ``slice_increment_mm`` (2.5 or 3), ``slice_thickness_mm``, ``n_slices`` (~125-165 mm
            of coverage), ``noise_sigma_hu`` (10-40), ``sharpness`` (0-1; down to -0.5 when given: a softer
            kernel, PSF sigma up to 0.75 mm), ``hu_offset`` (-6..6 HU),
            ``fov_center_mm``, ``kvp``, ``protocol`` ("cardiac" or "chest"; drawn: 20 % chest, with a
            320-420 mm field, the whole rib cage, scapulae and often the arms), ``padding_hu`` (value
            outside the reconstruction circle, or None; drawn: 60 % padded), ``table`` (True: the foam pad
            and table top under the back, ``_add_table``; not drawn: False unless given), ``abdomen`` (True:
            the stomach, colon and splenic artery under the diaphragm, with calcium on the artery, and a chest
            exam reaching 40-100 mm further down; not drawn: False unless given), ``tissue_texture`` (0-1:
            septa, small vessels and a slow drift in fat and soft tissue, ``texture.tissue_texture``; not
            drawn: 0 unless given), ``heart_axis_spread`` (how far the heart's long axis turns from its mean,
            ``anatomy.HEART_AXIS_SPREAD`` unless given; 1: generator versions up to 8), ``heart_roll_deg`` (SD
            of a random roll of the arteries about the heart's long axis, degrees; not drawn: 0 unless given),
            ``heart_tilt_spread`` (where given, the axis' tilt below the axial plane drawn at this spread and its
            angle within the plane at ``heart_axis_spread``; None unless given).

    Returns:
        SyntheticExam (volume in HU on a (n_slices, matrix, matrix) grid, artery-labelled true mask, lesion
        list, true Agatston score and category, distractors).

    Raises:
        InputError: bad seed / category / range / parameter; AgataxError(code="TARGET_UNREACHABLE") when the
        grid is too coarse for the wanted category (e.g. a 3-pixel lesion already scores above 10).
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative int; got {seed!r}", code="BAD_SEED")
    unknown = set(scanner) - set(_SCANNER_KEYS)
    if unknown:
        raise InputError(f"unknown generate_exam parameter(s): {sorted(unknown)}", code="BAD_PARAMETER",
                         hint=f"scanner parameters are {', '.join(_SCANNER_KEYS)}")
    _check_scanner(scanner)
    if target_category is not None and target_category not in CATEGORIES:
        raise InputError(f"target_category must be one of A-E; got {target_category!r}", code="BAD_CATEGORY")
    if target_agatston is not None:
        lo, hi = (float(v) for v in target_agatston)
        if not (0.0 <= lo <= hi) or not math.isfinite(hi):
            raise InputError(f"target_agatston must be (low, high) with 0 <= low <= high; got {target_agatston}",
                             code="BAD_TARGET")
    if isinstance(dense_plaque_rate, bool) or not isinstance(dense_plaque_rate, (int, float)) \
            or not 0.0 <= dense_plaque_rate <= 1.0:
        raise InputError(f"dense_plaque_rate must be a probability in [0, 1]; got {dense_plaque_rate!r}",
                         code="BAD_PARAMETER")
    if calcium_burden is not None and not (0.0 <= calcium_burden <= 1.0):
        raise InputError(f"calcium_burden must be in [0, 1]; got {calcium_burden}", code="BAD_PARAMETER")
    rates = dict(lookalike_rates or {})
    for kind, rate in rates.items():
        if kind not in LOOKALIKE_KINDS:
            raise InputError(f"lookalike_rates: unknown kind {kind!r}", code="BAD_PARAMETER",
                             hint=f"kinds are {', '.join(LOOKALIKE_KINDS)}")
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
            raise InputError(f"lookalike_rates[{kind!r}] must be a probability in [0, 1]; got {rate!r}",
                             code="BAD_PARAMETER")
    last_err = None
    for attempt in range(6):
        try:
            return _generate(int(seed), attempt, target_category, target_agatston, category_mix, n_lesions,
                             calcium_burden, keep_tissue, dict(scanner), rates, float(dense_plaque_rate))
        except _Retry as err:
            last_err = err
    raise AgataxError(
        f"could not reach the wanted calcium score for seed {seed} ({last_err})",
        code="TARGET_UNREACHABLE",
        hint="use a finer grid (matrix 512, smaller fov_mm, 2.5 mm slices) or another target category",
    )


def parse_lookalike_rates(text: str) -> dict[str, float]:
    """A command line's ``"KIND=P,KIND=P"`` as ``generate_exam``'s ``lookalike_rates`` ({kind: P}); kinds and
    probabilities are checked where the rates are used (``generate_exam``)."""
    rates = {}
    for item in text.split(","):
        kind, sep, value = (part.strip() for part in item.partition("="))
        try:
            if not (kind and sep):
                raise ValueError
            rates[kind] = float(value)
        except ValueError:
            hint = f"e.g. pericardium=0.5,mitral_annulus=1; kinds are {', '.join(LOOKALIKE_KINDS)}"
            raise InputError(f"look-alike rate {item.strip()!r} is not KIND=P", code="BAD_PARAMETER",
                             hint=hint) from None
    return rates


class _Retry(Exception):
    pass


def _check_scanner(sc: dict) -> None:
    checks = {
        "matrix": lambda v: int(v) == v and 32 <= v <= 2048,
        "fov_mm": lambda v: 60.0 <= v <= 500.0,
        "slice_increment_mm": lambda v: 0.3 <= v <= 10.0,
        "slice_thickness_mm": lambda v: 0.3 <= v <= 10.0,
        "n_slices": lambda v: int(v) == v and 4 <= v <= 400,
        "noise_sigma_hu": lambda v: 0.0 <= v <= 200.0,
        "sharpness": lambda v: -0.5 <= v <= 1.0,
        "hu_offset": lambda v: -50.0 <= v <= 50.0,
        "kvp": lambda v: 70.0 <= v <= 150.0,
        "protocol": lambda v: v in ("cardiac", "chest"),
        "padding_hu": lambda v: v is None or -4000.0 <= v <= -1000.0,
        "noise_streak": lambda v: 0.0 <= v <= 1.0,
        "noise_profile": lambda v: -0.9 <= v <= 3.0,
        "table": lambda v: isinstance(v, (bool, np.bool_)),
        "abdomen": lambda v: isinstance(v, (bool, np.bool_)),
        "tissue_texture": lambda v: 0.0 <= v <= 1.0,
        "heart_axis_spread": lambda v: 0.0 <= v <= 4.0,
        "heart_roll_deg": lambda v: 0.0 <= v <= 45.0,
        "heart_tilt_spread": lambda v: v is None or 0.0 <= v <= 4.0,
    }
    for k, ok in checks.items():
        if k in sc and not ok(sc[k]):
            raise InputError(f"{k}={sc[k]!r} is out of range", code="BAD_PARAMETER")


def _pick_category(rng, target_category, target_agatston, mix) -> tuple[str, float, float]:
    from agatax.scoring import risk_category

    if target_agatston is not None:
        lo, hi = (float(v) for v in target_agatston)
        cat = risk_category(hi) if target_category is None else target_category
        if risk_category(lo) != cat and lo > 0:
            # keep the planned range inside one category
            lo = {"A": 0.0, "B": 1e-3, "C": 10.01, "D": 100.01, "E": 400.01}[cat]
        return cat, max(lo, 0.0), hi
    if target_category is None:
        mix = mix or REAL_WORLD_MIX
        cats = [c for c in CATEGORIES if mix.get(c, 0) > 0]
        p = np.array([mix[c] for c in cats], float)
        target_category = cats[int(rng.choice(len(cats), p=p / p.sum()))]
    lo, hi = CATEGORY_TARGETS[target_category]
    return target_category, lo, hi


def sample_patient(r_pat: np.random.Generator, sc: ScannerParams) -> tuple[dict, Heart, float, float]:
    """The patient's body (outer half-width ``a`` and half-depth ``b``, subcutaneous fat and chest wall, mm)
    and heart, drawn from the patient stream, and the scan's z coverage and the coverage the heart needs (mm,
    from below the apex to above the coronary ostia); the heart is shrunk to fit a short scan."""
    body = {"a": r_pat.uniform(150.0, 185.0), "b": r_pat.uniform(100.0, 125.0), "subcut": r_pat.uniform(6.0, 28.0),
            "wall": r_pat.uniform(10.0, 16.0)}
    b_inner = body["b"] - body["subcut"] * 0.8 - body["wall"]
    heart_seed = int(r_pat.integers(2**31))
    heart = sample_heart(np.random.default_rng(heart_seed), b_inner, axis_spread=sc.heart_axis_spread,
                         tilt_spread=sc.heart_tilt_spread)
    coverage = sc.n_slices * sc.slice_increment_mm
    needed = heart.z_top + 18.0 - (heart.z_bottom - 6.0)
    if coverage < needed:
        heart = sample_heart(np.random.default_rng(heart_seed), b_inner, scale=max(0.7, coverage / needed),
                             axis_spread=sc.heart_axis_spread, tilt_spread=sc.heart_tilt_spread)
        needed = heart.z_top + 18.0 - (heart.z_bottom - 6.0)
    body["b"] += heart.chest_deeper_mm  # a chest deep enough for the heart (sample_heart)
    return body, heart, coverage, needed


def _generate(seed, attempt, target_category, target_agatston, category_mix, n_lesions, burden, keep_tissue, given,
              rates, dense_rate=0.0):
    from agatax.scoring import compute_scores, risk_category

    ss = np.random.SeedSequence([seed, attempt])
    # streams by purpose; a new one is appended (spawn keys are positional), so older draws stay the same
    (r_scan, r_pat, r_anat, r_noise, r_les, r_dis, r_warp, r_up, r_ost, r_lung, r_vein, r_table, r_abd, r_tex, r_roll,
     r_dense) = (np.random.default_rng(s) for s in ss.spawn(16))
    sc = sample_scanner(r_scan, **given)
    cat, lo, hi = _pick_category(r_les, target_category, target_agatston, category_mix)
    target = 0.0 if hi <= 0 else float(math.exp(r_les.uniform(math.log(max(lo, 0.5)), math.log(hi))))
    if burden is None:
        burden = float(np.clip({"A": 0.12, "B": 0.3, "C": 0.45, "D": 0.6, "E": 0.8}[cat] + r_dis.normal(0, 0.15), 0, 1))

    body, heart, coverage, needed = sample_patient(r_pat, sc)
    z_start = heart.z_bottom - 6.0 - max(coverage - needed, 0.0) * r_pat.uniform(0.15, 0.45)
    # the upper mediastinum: carina 25-45 mm above the coronary ostia, the arch around it, the trachea above
    upper = {"carina_z": heart.z_top + float(r_up.uniform(25.0, 45.0)), "arch_base": float(r_up.uniform(-10.0, 5.0)),
             "arch_height": float(r_up.uniform(18.0, 30.0)), "trachea_r": float(r_up.uniform(7.5, 10.5)),
             "trachea_x": float(r_up.uniform(-3.0, 4.0)), "bronchus_scale": float(r_up.uniform(0.85, 1.15)),
             "apex_mm": float(r_up.uniform(70.0, 110.0))}
    if sc.protocol == "chest" and "n_slices" not in given:
        # a chest CT covers the lungs from their apices to below the diaphragm, not only the heart
        top = upper["carina_z"] + float(r_up.uniform(0.6, 1.0)) * upper["apex_mm"]
        z_start -= float(r_up.uniform(10.0, 50.0))
        if sc.abdomen:  # and, asked to, into the upper abdomen
            z_start -= float(r_abd.uniform(40.0, 100.0))
        z_end = max(z_start + coverage, top)
        sc = dataclasses.replace(sc, n_slices=int(math.ceil((z_end - z_start) / sc.slice_increment_mm)) + 1)
    # arms in the field (chest protocol, patient unable to raise them), scapula thickness, groove fat
    body["arms"] = bool(sc.protocol == "chest" and r_pat.random() < 0.5)
    body["arm_r"] = (float(r_pat.uniform(38.0, 52.0)), float(r_pat.uniform(42.0, 58.0)))
    body["arm_gap"] = float(r_pat.uniform(4.0, 30.0))
    body["arm_y"] = float(r_pat.uniform(-20.0, 30.0))
    body["arm_fat"] = float(r_pat.uniform(4.0, 18.0))
    body["scapula_half_mm"] = float(r_pat.uniform(1.5, 3.5))
    body["upper"] = upper
    groove_fat = float(r_pat.uniform(1.5, 6.0))  # extra fat around the arteries: the grooves, lean to obese
    grid = make_grid(sc, z_start)
    psf = sc.psf_sigma_mm

    vol, tissue, _, landmarks = build_anatomy(grid, heart, r_anat, body, psf, keep_tissue,
                                              r_abd if sc.abdomen else None)
    heart = dataclasses.replace(heart, ascending_top=landmarks["ascending_top"])  # the ascending aorta ends at the arch
    vessels = coronary_tree(heart, r_anat, math.radians(float(r_roll.normal(0.0, sc.heart_roll_deg))))
    e_mm = max(1.2 * psf, 0.5 * grid.spacing[1])
    segs = [polyline_segments(v.points, v.radius, 2.0) for v in vessels.values()]
    p0, p1, radius = (np.concatenate([g[i] for g in segs]) for i in range(3))
    # the arteries run in fat-filled grooves (atrioventricular, interventricular): a fat sheath first, whose
    # thickness varies along the vessel (smoothly) and between patients
    along = np.concatenate([np.linspace(0.0, 1.0, len(g[0])) for g in segs])
    wobble = 1.0 + 0.35 * np.sin(2 * math.pi * (along * r_anat.uniform(0.7, 1.6) + r_anat.uniform(0.0, 1.0)))
    # side branches run over the free walls, under the epicardial fat, not in a groove: a thinner sheath
    sheath = np.concatenate([np.full(len(g[0]), 0.4 if name in BRANCH_OF else 1.0) for name, g in zip(vessels, segs)])
    _paint_capsules(vol, tissue, grid, p0, p1, radius + groove_fat * sheath * wobble * (1.25 - 0.5 * along),
                    landmarks["hu_of"]["epicardial_fat"], TISSUES["epicardial_fat"], e_mm, only_hu_below=100.0)
    # the cardiac veins beside the arteries, in the same grooves: their own fat sheath, then the arteries'
    # lumens, then theirs (in fat only, so that an artery crossing a vein stays whole)
    vsegs = [polyline_segments(v.points, v.radius, 2.0) for v in cardiac_veins(heart, vessels, r_vein).values()]
    vp0, vp1, vr = (np.concatenate([g[i] for g in vsegs]) for i in range(3))
    _paint_capsules(vol, tissue, grid, vp0, vp1, vr + 0.6 * groove_fat, landmarks["hu_of"]["epicardial_fat"],
                    TISSUES["epicardial_fat"], e_mm, only_hu_below=100.0)
    _paint_capsules(vol, tissue, grid, p0, p1, radius, landmarks["hu_of"]["coronary"], TISSUES["coronary"], e_mm,
                    only_hu_below=-20.0)
    _paint_capsules(vol, tissue, grid, vp0, vp1, vr, landmarks["hu_of"]["cardiac_vein"], TISSUES["cardiac_vein"], e_mm,
                    only_hu_below=-20.0)
    # every organ deformed smoothly (patient-to-patient shapes); vessels follow, so calcium stays on them
    warp = _Warp(r_warp, float(r_warp.uniform(2.0, 7.0)))
    vol = warp.image(vol, grid, order=1)
    if tissue is not None:
        tissue = warp.image(tissue, grid, order=0)
    vessels = {k: dataclasses.replace(v, points=warp.points(v.points)) for k, v in vessels.items()}
    if sc.tissue_texture > 0:  # septa, small vessels and drift in fat and soft tissue (never >= 130 HU)
        vol += tissue_texture(vol, grid.spacing, sc.tissue_texture, r_tex)
    bone = vol >= 130.0  # noise-free anatomy above 130 HU: bone only
    table = _add_table(vol, grid, psf, r_table) if sc.table else None
    granulomas = granuloma_atoms(heart, warp, vol, grid, r_lung, rates)  # placed in the noise-free lung

    passes = 2 if (sc.pixel_mm < 0.45 and sc.sharpness < 0.5) else 1
    if sc.noise_sigma_hu > 0:
        vol += _scanner_noise(grid.shape, sc, r_noise, passes)
    if sc.hu_offset:
        vol += np.float32(sc.hu_offset)

    # ---- coronary plaques: positions first (distractors keep clear of them)
    plans = _plan_lesions(cat, target, n_lesions, vessels, grid, sc, r_les, vol, dense_rate, r_dense)
    distractor_mask = np.zeros(grid.shape, np.uint8)
    distractor_mask[bone] = DISTRACTOR_CODES["bone"]
    if table is not None:
        distractor_mask[table] = DISTRACTOR_CODES["table"]
    distractors = []
    lookalikes = (distractor_atoms(heart, landmarks, grid, r_dis, burden, vessels, rates)
                  + arch_atoms(landmarks, grid, r_up, burden) + granulomas
                  + splenic_atoms(landmarks, grid, r_abd, burden, rates))
    # aortic-root calcium running into the left main ostium; an LM plaque, if there is one, moved to the
    # ostium so that the two touch. The annotator scores the coronary part only (where the plaque dominates)
    ostial = None
    if r_ost.random() < rates.get("aortic_root", 0.08 + 0.3 * burden):
        axis = warp.points(heart.aortic_root[None])[0]
        lookalikes.append({"kind": "aortic_root", "atoms": ostial_root_atoms(axis, vessels["LM"], r_ost),
                           "peak_hu": float(r_ost.uniform(250, 900)), "deformed": True})
        for p in plans:
            if p.artery == "LM" and not p.speck:
                moved = dataclasses.replace(p, s_mm=0.0)
                if _replace_if_roomy(plans, p, moved, vessels, grid, sc, vol):
                    ostial = moved
                break
    # the mitral annulus lies a few mm from the LCX in the left atrioventricular groove (closest edge-to-edge
    # distance: median 4.2 mm, range 0.9-11.4 mm, 17 % under 2 mm in surgical CT series); in half of the exams
    # with both, an LCX plaque sits at the LCX's point nearest the annulus, on the annulus side, so that the two
    # may touch (the annotator scores the LCX part)
    for item in lookalikes:
        if item["kind"] == "mitral_annulus":
            gap = float(np.clip(r_ost.lognormal(math.log(4.2), 0.7), 0.9, 11.4))
            atoms = dataclasses.replace(item["atoms"], centers=warp.points(item["atoms"].centers))
            item["atoms"] = atoms = place_beside(atoms, vessels["LCX"], gap, warp.points(heart.mitral_center[None])[0])
            item["deformed"] = True
            near = [p for p in plans if p.artery == "LCX" and not p.speck]
            if near and r_ost.random() < 0.5:
                _move_next_to(near[0], atoms, plans, vessels, grid, sc, vol)
    # which plaques a look-alike may touch: the root calcium the ostial LM plaque, the mitral annulus the LCX
    may_touch = {"aortic_root": lambda p: p is ostial, "mitral_annulus": lambda p: p.artery == "LCX"}
    contiguous = []  # (box, signal) of non-coronary calcium allowed to touch a plaque
    for item in lookalikes:
        atoms = item["atoms"]
        if not item.get("deformed"):
            atoms = dataclasses.replace(atoms, centers=warp.points(atoms.centers))
        touch = may_touch.get(item["kind"], lambda p: False)
        if any(not _far_apart(atoms, p.atoms, grid, sc.slice_thickness_mm, psf) for p in plans if not touch(p)):
            continue
        box = atoms_box(grid, atoms, sc.slice_thickness_mm, psf)
        if box is None:
            continue
        unit = render_atoms(grid, atoms, box, sc.slice_thickness_mm, psf)
        bg = 40.0
        if item["kind"] == "metal":
            # streaks (alternating bright and dark lines through the object) first, then the metal on top
            _add_streaks(vol, grid, atoms, r_dis)
        if item["kind"] in ("metal", "lung_granuloma"):
            # at its planned peak over whatever lies beneath (a clip or a granuloma in the lung is as dense as
            # one in fat)
            peak_idx = np.unravel_index(int(np.argmax(unit)), unit.shape)
            bg = float(np.clip(vol[box][peak_idx], -1000.0, 60.0))
        amp = (item["peak_hu"] - bg) / max(float(unit.max()), 1e-6)
        sig = unit * np.float32(amp)
        vol[box] += sig
        if item["kind"] in may_touch:
            contiguous.append((box, sig))
        dm = distractor_mask[box]
        dm[(sig >= FOOTPRINT_HU) & (dm == 0)] = DISTRACTOR_CODES[item["kind"]]
        c = grid.to_index(atoms.centers.mean(0))
        distractors.append({"kind": item["kind"], "center_zyx": tuple(float(v) for v in c),
                            "peak_hu": float(item["peak_hu"]), "atoms": len(atoms)}
                           | ({"what": item["what"]} if "what" in item else {}))
    np.clip(vol, -1024.0, 3071.0, out=vol)
    outside = None
    if sc.padding_hu is not None:  # padding outside the reconstruction circle, as scanners write it
        rr = (grid.y_mm[:, None] - sc.fov_center_mm[1]) ** 2 + (grid.x_mm[None, :] - sc.fov_center_mm[0]) ** 2
        outside = rr > (0.5 * sc.fov_mm) ** 2
        vol[:, outside] = np.float32(sc.padding_hu)
        distractor_mask[:, outside] = 0
        if tissue is not None:
            tissue[:, outside] = TISSUES["air"]

    # ---- size the plaques so that the exam lands in its category (exact)
    base = vol  # noisy anatomy + distractors, not yet rounded
    hu = np.rint(base)
    mask = np.zeros(grid.shape, np.uint8)
    lesions: list[dict] = []
    boxes: list = []
    total = 0.0
    cat_lo, cat_hi = {"A": (0.0, 0.0), "B": (0.0, 10.0), "C": (10.0, 100.0), "D": (100.0, 400.0),
                      "E": (400.0, math.inf)}[cat]
    if target_agatston is not None:
        want_lo, want_hi = max(lo, cat_lo), min(hi, cat_hi)
    else:  # aim near the drawn target so that scores spread over the category
        want_lo, want_hi = max(cat_lo, target / 1.6), min(cat_hi, target * 1.6)
    control = _SizeControl(plans)
    for it in range(24):
        lesions, boxes = _compose(plans, vessels, grid, sc, base, hu, mask, boxes, foreign=contiguous)
        crop = _union_box(boxes)
        total = compute_scores(hu[crop], mask[crop], grid.spacing).agatston if crop is not None else 0.0
        in_cat = risk_category(total) == cat
        if in_cat and (want_lo <= total <= want_hi or it >= 10):
            lesions, boxes = _compose(plans, vessels, grid, sc, base, hu, mask, boxes, describe=True,
                                      foreign=contiguous)
            scores = compute_scores(hu, mask, grid.spacing)
            break
        too_low = (total < want_lo or (total <= cat_lo and cat != "A")) if cat != "A" else False
        control.step(too_low, it)
        if not plans and cat != "A":
            raise _Retry("no plaque left")
    else:
        raise _Retry(f"category {cat} not reached (score {total:.1f})")
    touching = {DISTRACTOR_CODES["aortic_root"]: ARTERY_CODES["LM"],
                DISTRACTOR_CODES["mitral_annulus"]: ARTERY_CODES["LCX"]}
    if not _clear_of(mask, distractor_mask, touching):
        raise _Retry("a distractor touches a plaque")
    for code, label in touching.items():
        distractor_mask[(mask == label) & (distractor_mask == code)] = 0
    if outside is not None and mask[:, outside].any():
        raise _Retry("a plaque lies outside the reconstruction circle")

    volume = Volume(hu, grid.spacing, slice_thickness=sc.slice_thickness_mm, affine=grid.affine,
                    metadata={"patient_id": f"SYN{seed:06d}", "series_description": "synthetic calcium score",
                              "kvp": sc.kvp, "manufacturer": "agatax synthetic", "kernel": f"sharpness {sc.sharpness:.2f}"},
                    source=f"agatax.synthetic seed {seed}")
    params = {"scanner": dataclasses.asdict(sc), "psf_sigma_mm": psf, "body": body, "calcium_burden": burden,
              "lookalike_rates": rates,
              "target_agatston": target, "attempt": attempt, "heart_center_mm": heart.center.tolist(),
              "carina_mm": warp.points(landmarks["carina"][None])[0].tolist()}
    return SyntheticExam(volume, mask, lesions, float(scores.agatston), scores.category, cat, distractors,
                         distractor_mask, scores, tissue, int(seed), params)


def _move_next_to(p: _Plan, atoms: Atoms, plans: list, vessels, grid, sc, base) -> None:
    """Move plaque ``p`` (in ``plans``) to the point of its vessel nearest ``atoms``, on the side facing them,
    if it keeps room to grow clear of the other plaques; otherwise leave it."""
    v = vessels[p.artery]
    d = np.linalg.norm(atoms.centers[:, None, :] - v.points[None, :, :], axis=2)
    i, j = np.unravel_index(int(np.argmin(d)), d.shape)
    target = atoms.centers[i]

    def miss(angle):
        return float(np.linalg.norm(_plan_atoms(dataclasses.replace(p, s_mm=0.5 * j, angle=angle), vessels).centers
                                    - target, axis=1).min())

    angle = min(np.linspace(0.0, 2 * math.pi, 12, endpoint=False), key=miss)
    moved = dataclasses.replace(p, s_mm=0.5 * j, angle=float(angle), atoms=None, box=None, signal=None)
    _replace_if_roomy(plans, p, moved, vessels, grid, sc, base)


def _has_room(p: _Plan, others: list, vessels, grid, sc) -> bool:
    """``p`` grown as the size search may grow it (size x 1.8 + 1 mm) stays far apart from every plaque of
    ``others``."""
    grown = _plan_atoms(dataclasses.replace(p, size=p.size * 1.8 + 1.0, speck=False), vessels)
    return all(_far_apart(grown, q.atoms, grid, sc.slice_thickness_mm, sc.psf_sigma_mm) for q in others)


def _replace_if_roomy(plans: list, p: _Plan, moved: _Plan, vessels, grid, sc, base) -> bool:
    """Render ``moved`` and put it in ``p``'s place in ``plans`` if it lies on the grid with room to grow clear
    of the other plaques; True when replaced."""
    _render_plan(moved, vessels, grid, sc, base)
    if moved.box is None or not _has_room(moved, [q for q in plans if q is not p], vessels, grid, sc):
        return False
    plans[plans.index(p)] = moved
    return True


def _union_box(boxes):
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return None
    return tuple(slice(min(b[i].start for b in boxes), max(b[i].stop for b in boxes)) for i in range(3))


def _plan_lesions(cat, target, n_lesions, vessels, grid, sc, rng, base, dense_rate=0.0, r_dense=None) -> list[_Plan]:
    if cat == "A":
        return []
    if n_lesions is None:
        lo_n, hi_n = {"B": (1, 2), "C": (1, 4), "D": (2, 7), "E": (3, 12)}[cat]
        n_lesions = int(rng.integers(lo_n, hi_n + 1))
    n_specks = int(rng.integers(0, 3)) if rng.random() < 0.4 else 0
    shares = rng.dirichlet(np.full(n_lesions, 1.2)) * target
    # the largest plaque planned dense (its own stream: the other draws stay as they are)
    dense_i = int(np.argmax(shares)) if dense_rate > 0 and r_dense.random() < dense_rate else -1
    names = list(_ARTERY_P)
    probs = np.array([_ARTERY_P[k] for k in names])
    plans: list[_Plan] = []
    for i in range(n_lesions + n_specks):
        speck = i >= n_lesions
        for _try in range(30):
            art = names[int(rng.choice(len(names), p=probs))]
            side = [k for k in vessels if BRANCH_OF.get(k) == art]
            if side and rng.random() < _BRANCH_P.get(art, 0.0):
                art = str(rng.choice(side))
            v = vessels[art]
            s = v.length_mm * (rng.uniform(0.1, 0.9) if art == "LM" else rng.beta(1.4, 2.4))
            wbin = rng.choice(4, p=[0.22, 0.22, 0.2, 0.36])
            dens = float(rng.uniform(*[(150, 199), (205, 295), (305, 395), (420, 1300)][wbin]))
            if i == dense_i:
                wbin, dens = 3, float(r_dense.uniform(900.0, 1400.0))
            if speck:
                size = float(rng.uniform(0.2, 0.8))
            else:
                w = wbin + 1
                vol_mm3 = 3.0 * shares[i] / w
                size = float(np.clip(0.9 * vol_mm3 ** (1 / 3), 0.4, 6.0)) if vol_mm3 < 60 else 2.0 + vol_mm3 / 60.0
            motion = float(rng.uniform(0.0, 2.5)) if v.artery == "RCA" else 0.0
            p = _Plan(art, s, size, float(rng.uniform(0, 2 * math.pi)), dens, speck, motion,
                      float(rng.uniform(0.4, 1.6)))
            _render_plan(p, vessels, grid, sc, base)
            if p.box is None:
                continue
            if _has_room(p, plans, vessels, grid, sc):
                break
        else:
            continue
        if not speck:
            _fit_size(p, shares[i], vessels, grid, sc, base)
        plans.append(p)
    if not any(not p.speck for p in plans):
        raise _Retry("no room for a plaque")
    return plans


def _measure(p: _Plan, grid, sc, base) -> float:
    if p.box is None:  # the plaque lies off the grid (a coarse or small field of view): it scores nothing
        return 0.0
    hu_crop = np.rint(base[p.box] + p.signal)
    got = _lesion_mask(hu_crop, p.signal)
    if got is None:
        return 0.0
    return _score_crop(hu_crop, got[0], grid.spacing)


def _fit_size(p: _Plan, want: float, vessels, grid, sc, base) -> None:
    """A few secant-like steps on the size knob so that the plaque alone scores about ``want``."""
    for _ in range(4):
        got = _measure(p, grid, sc, base)
        if got <= 0:
            p.size *= 1.5
            p.density = min(p.density * 1.1, 1400.0)
        else:
            ratio = want / got
            if 0.7 < ratio < 1.4:
                return
            p.size *= float(np.clip(ratio ** (0.45 if p.size < 2 else 0.8), 0.4, 2.5))
        p.size = float(np.clip(p.size, 0.2, 10.0))
        _render_plan(p, vessels, grid, sc, base)


class _SizeControl:
    """Bisection on one size factor shared by all plaques (score grows with it); when the bracket
    collapses on a jump (a plaque crossing a density weight or the 3-pixel rule), specks go and the
    density moves, and the search restarts."""

    def __init__(self, plans: list[_Plan]):
        self.plans = plans
        self.base = [p.size for p in plans]
        self.f, self.lo, self.hi = 1.0, None, None

    def step(self, too_low: bool, it: int) -> None:
        if too_low:
            self.lo = self.f
        else:
            self.hi = self.f
        if self.lo is not None and self.hi is not None:
            if self.hi / self.lo < 1.04:
                self._jump(too_low)
            else:
                self.f = math.sqrt(self.lo * self.hi)
        else:
            self.f = self.f * 2.0 if too_low else self.f / 2.0
            if self.f < 0.02 or self.f > 50:
                self._jump(too_low)
        for p, b in zip(self.plans, self.base):
            p.size = b if p.speck else float(np.clip(b * self.f, 0.05, 12.0))
            p.signal = None

    def _jump(self, too_low: bool) -> None:
        if too_low:
            for p in self.plans:
                p.density = min(p.density * 1.25, 1400.0)
        else:
            specks = [p for p in self.plans if p.speck]
            if specks:
                for p in specks:
                    i = self.plans.index(p)
                    self.plans.pop(i)
                    self.base.pop(i)
            elif len(self.plans) > 1:
                i = int(np.argmax(self.base))
                self.plans.pop(i)
                self.base.pop(i)
            else:
                for p in self.plans:
                    p.density = max(p.density * 0.8, 150.0)
        self.lo = self.hi = None


def _compose(plans, vessels, grid, sc, base, hu, mask, prev_boxes, describe=False, foreign=()):
    """Render every plaque into ``hu`` (the previous round's boxes restored from ``base`` first) and
    build the artery-labelled mask. ``foreign``: (box, signal) of non-coronary calcium that may touch a
    plaque (already in ``base``); the mask keeps where the plaque's own signal dominates."""
    for b in prev_boxes:
        hu[b] = np.rint(base[b])
        mask[b] = 0
    for p in plans:
        if p.signal is None:
            _render_plan(p, vessels, grid, sc, base)
    for p in plans:
        if p.box is not None:
            hu[p.box] = np.rint(base[p.box] + _sum_signal([(q.box, q.signal) for q in plans], p.box))
    lesions = []
    spacing = grid.spacing
    for p in plans:
        if p.box is None:
            continue
        hu_crop = hu[p.box]
        got = _lesion_mask(hu_crop, p.signal, _sum_signal(foreign, p.box) if foreign else None)
        if got is None:
            continue
        m, lab, keep = got
        sub = mask[p.box]
        own = m & (sub == 0)
        sub[own] = ARTERY_CODES[vessels[p.artery].artery]
        if not describe:
            continue
        lo = np.array([s.start for s in p.box])
        pts = []
        for k in keep:
            comp = lab == k
            vals = np.where(comp, hu_crop, -np.inf)
            pts.append(tuple(int(i) for i in (np.unravel_index(int(np.argmax(vals)), vals.shape) + lo)))
        vals = np.where(m, hu_crop, -np.inf)
        centre = tuple(int(i) for i in (np.unravel_index(int(np.argmax(vals)), vals.shape) + lo))
        thick, length = p.geometry()
        lesions.append({
            "center_zyx": centre, "points_zyx": pts, "artery": vessels[p.artery].artery, "vessel": p.artery,
            "eccentric": float(p.eccentric),
            "peak_hu": float(hu_crop[m].max()), "density_hu": float(p.density), "length_mm": float(length),
            "thickness_mm": float(thick), "voxels": int(m.sum()), "speck": bool(p.speck),
            "agatston": float(_score_crop(hu_crop, m, spacing)),
            "center_mm": tuple(float(v) for v in grid.to_mm(np.array(centre))),
        })
    return lesions, [p.box for p in plans if p.box is not None]


def _sum_signal(items, box):
    """Sum over ``box`` of the signals of ``items`` ((box, signal) pairs; apart, but boxes may overlap)."""
    out = np.zeros(tuple(s.stop - s.start for s in box), np.float32)
    for q_box, q_signal in items:
        if q_box is None:
            continue
        lo = [max(a.start, b.start) for a, b in zip(box, q_box)]
        hi = [min(a.stop, b.stop) for a, b in zip(box, q_box)]
        if any(h <= l for l, h in zip(lo, hi)):
            continue
        out[tuple(slice(l - a.start, h - a.start) for l, h, a in zip(lo, hi, box))] += \
            q_signal[tuple(slice(l - b.start, h - b.start) for l, h, b in zip(lo, hi, q_box))]
    return out


def _clear_of(mask: np.ndarray, distractor_mask: np.ndarray, touching: dict[int, int] | None = None) -> bool:
    """No distractor within one voxel of the true mask, but code c of ``touching`` ({code: artery label})
    next to that artery's voxels."""
    if not mask.any():
        return True
    zz, yy, xx = np.nonzero(mask)
    crop = tuple(slice(max(int(a.min()) - 1, 0), int(a.max()) + 2) for a in (zz, yy, xx))
    m, dm = mask[crop], distractor_mask[crop]
    for label in np.unique(m[m > 0]):
        grown = ndimage.binary_dilation(m == label, structure=np.ones((3, 3, 3), bool))
        bad = (dm > 0) & ~np.isin(dm, [c for c, lab in (touching or {}).items() if lab == label])
        if (grown & bad).any():
            return False
    return True
