"""Synthetic non-contrast chest anatomy for cardiac CT: scanner grid, tissues and their HU.

Patient frame (mm): X toward the patient's left, Y toward the back, Z toward the head (DICOM LPS), origin at
the middle of the thorax in-plane and at the centre of the ventricles along Z. Array axes are (z, y, x) with
x = columns (patient left), y = rows (posterior), z increasing toward the head.

Speed: z-invariant structures (body wall, lungs, spine, sternum, descending aorta) are drawn once as a 2D
template and broadcast along z; structures that change along z (heart, great vessels, liver dome, ribs,
discs, vessels) are painted only inside their bounding boxes. Edges are soft (a linear ramp about one
PSF wide), which stands in for the scanner's blur of tissue boundaries.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

__all__ = ["TISSUES", "TISSUE_HU", "ScannerParams", "Grid", "Heart", "sample_scanner", "make_grid", "build_anatomy",
           "PROTOCOLS"]

# Tissue classes (codes of the optional tissue map) and nominal non-contrast HU at 120 kV.
TISSUES = {
    "air": 0, "fat": 1, "muscle": 2, "lung": 3, "cortical_bone": 4, "trabecular_bone": 5, "myocardium": 6,
    "blood": 7, "pericardium": 8, "epicardial_fat": 9, "liver": 10, "csf": 11, "disc": 12, "cartilage": 13,
    "airway": 14, "lung_vessel": 15, "coronary": 16, "spleen": 17, "cardiac_vein": 18, "bowel_gas": 19,
    "bowel_content": 20,
}
TISSUE_HU = {
    "air": -1000.0, "fat": -100.0, "muscle": 50.0, "lung": -860.0, "cortical_bone": 1000.0,
    "trabecular_bone": 260.0, "myocardium": 45.0, "blood": 40.0, "pericardium": 30.0,
    "epicardial_fat": -95.0, "liver": 58.0, "csf": 10.0, "disc": 85.0, "cartilage": 110.0,
    "airway": -990.0, "lung_vessel": 40.0, "coronary": 40.0, "spleen": 48.0, "cardiac_vein": 40.0,
    "bowel_gas": -1000.0, "bowel_content": 20.0,
}

#: how far the heart's long axis turns from patient to patient, as a multiple of an SD of 0.06 per component of
#: its direction (about 5 degrees): 95 % of axes 31-70 degrees left of anterior and 30-57 below the axial plane
#: (generator version 9; 1 before it: 41-60 and 37-51; real hearts turn from about 30 to 60 degrees off the
#: sagittal plane with build, experiments/REALISM.md)
HEART_AXIS_SPREAD = 2.0


@dataclasses.dataclass(frozen=True)
class ScannerParams:
    """Acquisition and reconstruction settings of one synthetic exam.

    matrix: in-plane pixels (square); fov_mm: reconstruction field of view (pixel = fov / matrix);
    slice_increment_mm, slice_thickness_mm: distance between slice centres and nominal thickness;
    n_slices; noise_sigma_hu: image noise standard deviation; sharpness in [-0.5, 1] (1 = sharp kernel;
    drawn in [0, 1]), giving psf_sigma_mm (in-plane Gaussian PSF); hu_offset: calibration offset added to every voxel;
    fov_center_mm: (X, Y) of the FOV centre in the patient frame; protocol: "cardiac" (gated, 160-260 mm
    field centred on the heart: body cut at the border) or "chest" (non-gated, 320-420 mm field with the
    whole rib cage, scapulae and often the arms); padding_hu: value outside the reconstruction circle
    (-1024, -2048, -3024 as scanners write it) or None for an image filled to its corners; noise_streak:
    share of the noise variance in horizontal streaks everywhere (0 = isotropic grain, the real phantom's
    near its centre; 0.3 fits its whole-body anisotropy, which comes from streaks along its edge:
    experiments/REALISM.md), a stress test, not drawn: 0 unless given; noise_profile: the noise SD across
    each slice is noise_sigma_hu x (1 + noise_profile (r / R)^2), r from the image centre, R half the field of
    view (``exam.noise_profile_map``; the real phantom's edge is ~1.3x its centre), a stress test, not drawn: 0 unless given;
    table: the patient lies on a foam pad on the scanner's table (a carbon-fibre sandwich: two dense skins
    round a foam core), drawn below the back where the field of view reaches it (``exam._add_table``), not
    drawn: False unless given; abdomen: the upper abdomen's hollow organs are drawn under the diaphragm (the
    stomach with its gas, the colon with gas and stool, the splenic artery: ``anatomy._paint_abdomen``) and a
    chest exam reaches 40-100 mm further down to show them; not drawn: False unless given; tissue_texture: strength
    in [0, 1] of the septa, small vessels and slow drift drawn in fat and soft tissue (``texture.tissue_texture``),
    not drawn: 0 unless given; heart_axis_spread: how far the heart's long axis turns from patient to patient
    (``HEART_AXIS_SPREAD`` unless given; ``sample_heart``); heart_roll_deg: SD (degrees) of a random roll of
    the arteries about the heart's long axis (``calcium.coronary_tree``), a stress test: 0 unless given;
    heart_tilt_spread: where given, the axis' tilt below the axial plane is drawn at this spread and its angle
    within the plane at ``heart_axis_spread`` (``sample_heart``), a stress test: None unless given.
    """

    matrix: int
    fov_mm: float
    slice_increment_mm: float
    slice_thickness_mm: float
    n_slices: int
    noise_sigma_hu: float
    sharpness: float
    hu_offset: float
    fov_center_mm: tuple[float, float]
    kvp: float = 120.0
    protocol: str = "cardiac"
    padding_hu: float | None = None
    noise_streak: float = 0.0
    noise_profile: float = 0.0
    table: bool = False
    abdomen: bool = False
    tissue_texture: float = 0.0
    heart_axis_spread: float = HEART_AXIS_SPREAD
    heart_roll_deg: float = 0.0
    heart_tilt_spread: float | None = None

    @property
    def pixel_mm(self) -> float:
        return self.fov_mm / self.matrix

    @property
    def psf_sigma_mm(self) -> float:
        """In-plane PSF sigma: 0.30 mm (sharpness 1) to 0.60 mm (0: the draws' range), 0.75 mm at -0.5 (the
        real QRM phantom's Canon FC12 fits 0.55-0.75 mm, experiments/insert_psf.py)."""
        return 0.30 + 0.30 * (1.0 - self.sharpness)

    @property
    def z_psf_sigma_mm(self) -> float:
        return 0.35


PROTOCOLS = ("cardiac", "chest")
CHEST_SHARE = 0.2  # share of chest-protocol exams when the protocol is drawn
PADDING_VALUES = (-1024.0, -2048.0, -3024.0)


def sample_scanner(rng: np.random.Generator, **given) -> ScannerParams:
    """Draw scanner settings; ``given`` values (same names as ScannerParams) are kept as they are.

    cardiac (80 %): 512 x 512 over 170-240 mm centred near the heart, slices of 2.5 or 3 mm; chest (20 %):
    320-420 mm centred on the body, slices of 3 or 5 mm. Both cover ~125-165 mm along z (the heart and
    above); 60 % of exams have padding outside the reconstruction circle.
    """
    protocol = str(given.pop("protocol", "chest" if rng.random() < CHEST_SHARE else "cardiac"))
    if protocol not in PROTOCOLS:
        raise TypeError(f"protocol must be one of {PROTOCOLS}; got {protocol!r}")
    chest = protocol == "chest"
    matrix = int(given.pop("matrix", 512))
    fov = float(given.pop("fov_mm", rng.uniform(320.0, 420.0) if chest else rng.uniform(170.0, 240.0)))
    inc = float(given.pop("slice_increment_mm", rng.choice([3.0, 5.0] if chest else [2.5, 3.0])))
    thick = float(given.pop("slice_thickness_mm", inc))
    if "n_slices" in given:
        n = int(given.pop("n_slices"))
    else:  # cover ~125-165 mm: carina to below the apex
        n = int(rng.integers(math.ceil(125.0 / inc), math.floor(165.0 / inc) + 1))
    noise = float(given.pop("noise_sigma_hu", rng.uniform(10.0, 40.0)))
    sharp = float(given.pop("sharpness", rng.uniform(0.0, 1.0)))
    offset = float(given.pop("hu_offset", rng.uniform(-6.0, 6.0)))
    if chest:
        c_default = (rng.uniform(-10.0, 10.0), rng.uniform(-10.0, 10.0))
    else:
        c_default = (rng.uniform(5.0, 25.0), rng.uniform(-15.0, 5.0))
    center = tuple(float(c) for c in given.pop("fov_center_mm", c_default))
    kvp = float(given.pop("kvp", 120.0))
    pad_draw = PADDING_VALUES[int(rng.integers(len(PADDING_VALUES)))] if rng.random() < 0.6 else None
    padding = given.pop("padding_hu", pad_draw)
    padding = None if padding is None else float(padding)
    streak = float(given.pop("noise_streak", 0.0))
    profile = float(given.pop("noise_profile", 0.0))
    table = bool(given.pop("table", False))
    abdomen = bool(given.pop("abdomen", False))
    texture = float(given.pop("tissue_texture", 0.0))
    axis_spread = float(given.pop("heart_axis_spread", HEART_AXIS_SPREAD))
    roll = float(given.pop("heart_roll_deg", 0.0))
    tilt = given.pop("heart_tilt_spread", None)
    tilt = None if tilt is None else float(tilt)
    if given:
        raise TypeError(f"unknown scanner parameter(s): {sorted(given)}")
    return ScannerParams(matrix, fov, inc, thick, n, noise, sharp, offset, center, kvp, protocol,  # type: ignore[arg-type]
                         padding, streak, profile, table, abdomen, texture, axis_spread, roll, tilt)


@dataclasses.dataclass(frozen=True)
class Grid:
    """Voxel centres in the patient frame: z_mm (nz,), y_mm (ny,), x_mm (nx,); spacing (dz, dy, dx) mm."""

    z_mm: np.ndarray
    y_mm: np.ndarray
    x_mm: np.ndarray
    spacing: tuple[float, float, float]

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.z_mm.size, self.y_mm.size, self.x_mm.size)

    @property
    def affine(self) -> np.ndarray:
        """(z, y, x, 1) indices -> LPS mm (the patient frame)."""
        a = np.zeros((4, 4))
        a[3, 3] = 1.0
        a[2, 0], a[1, 1], a[0, 2] = self.spacing
        a[:3, 3] = (self.x_mm[0], self.y_mm[0], self.z_mm[0])
        return a

    def to_index(self, zyx_mm: np.ndarray) -> np.ndarray:
        """(..., 3) patient mm (Z, Y, X) -> (..., 3) fractional voxel indices (z, y, x)."""
        p = np.asarray(zyx_mm, dtype=np.float64)
        origin = np.array([self.z_mm[0], self.y_mm[0], self.x_mm[0]])
        return (p - origin) / np.asarray(self.spacing)

    def to_mm(self, zyx_index: np.ndarray) -> np.ndarray:
        p = np.asarray(zyx_index, dtype=np.float64)
        origin = np.array([self.z_mm[0], self.y_mm[0], self.x_mm[0]])
        return p * np.asarray(self.spacing) + origin

    def box(self, lo_mm, hi_mm) -> tuple[slice, slice, slice] | None:
        """Index box covering [lo_mm, hi_mm] (Z, Y, X), clipped to the grid; None when outside."""
        lo = np.floor(self.to_index(lo_mm)).astype(int)
        hi = np.ceil(self.to_index(hi_mm)).astype(int) + 1
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, self.shape)
        if np.any(hi <= lo):
            return None
        return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))  # type: ignore[return-value]


def make_grid(scanner: ScannerParams, z_start_mm: float) -> Grid:
    n, px = scanner.matrix, scanner.pixel_mm
    cx, cy = scanner.fov_center_mm
    offs = (np.arange(n) - (n - 1) / 2.0) * px
    z = z_start_mm + np.arange(scanner.n_slices) * scanner.slice_increment_mm
    return Grid(z.astype(np.float64), (cy + offs), (cx + offs), (scanner.slice_increment_mm, px, px))


# ------------------------------------------------------------------------------------------ heart frame
@dataclasses.dataclass(frozen=True)
class Heart:
    """Ventricles as a tilted ellipsoid: centre (Z, Y, X) mm, semi-axes (along u, v, w) mm and unit axes u
    (base -> apex), v (anterior), w (toward the patient's left); plus the landmarks the vessels need."""

    center: np.ndarray
    semi: np.ndarray
    u: np.ndarray
    v: np.ndarray
    w: np.ndarray
    fat_mm: float
    aortic_root: np.ndarray
    root_radius: float
    ascending_top: np.ndarray
    aorta_radius: float
    mitral_center: np.ndarray
    z_bottom: float
    z_top: float
    #: epicardial fat pattern: rows (amplitude, k, m, phase_phi, phase_t) of smooth harmonics in (phi, t),
    #: then (apex excess mm, acute-margin excess mm, acute margin's phi, 0, 0); None: uniform ``fat_mm``
    fat_pattern: np.ndarray | None = None
    #: how much deeper (mm, added to the body's half-depth) the chest must be drawn for this heart to keep
    #: 20 mm in front of the vertebral body
    chest_deeper_mm: float = 0.0

    def fat_at(self, t, phi) -> np.ndarray:
        """Epicardial fat thickness (mm) over the ventricles at long-axis position t (base -1 .. apex 1) and
        angle phi (rad; 0 anterior, +pi/2 patient left): ``fat_mm`` times a smooth pattern that varies along
        the heart and between patients (0.35-1.8 x), thicker toward the apex and over the acute margin
        (the right ventricle's inferior border). The grooves' fat is drawn around the arteries."""
        t, phi = np.asarray(t), np.asarray(phi)  # float32 in, float32 out (the painter's voxels)
        dtype = np.result_type(t, phi, np.float32)
        if self.fat_pattern is None:
            return np.full(np.broadcast(t, phi).shape, self.fat_mm, dtype)
        *harm, (apex, acute, acute_phi, _, _) = (tuple(float(c) for c in row) for row in self.fat_pattern)
        g = np.ones(np.broadcast(t, phi).shape, dtype)
        for amp, k, m, a, b in harm:
            g += amp * np.cos(k * phi + a) * np.cos(np.pi * m * t + b)
        np.clip(g, 0.35, 1.8, out=g)
        dphi = np.remainder(phi - acute_phi + np.pi, 2 * np.pi) - np.pi
        extra = apex * np.exp(-((np.minimum(t, 1.0) - 1.0) / 0.35) ** 2) + acute * np.exp(-(dphi / 0.5) ** 2)
        return self.fat_mm * g + extra

    @staticmethod
    def fat_bound(fat_mm: float, pattern: np.ndarray | None) -> float:
        """An upper bound (mm) of :meth:`fat_at` for a free-wall thickness and a pattern."""
        if pattern is None:
            return fat_mm
        return 1.8 * fat_mm + float(pattern[-1][0] + pattern[-1][1])

    @property
    def fat_max_mm(self) -> float:
        """An upper bound of :meth:`fat_at` (mm)."""
        return self.fat_bound(self.fat_mm, self.fat_pattern)

    def surface(self, t: np.ndarray, phi: np.ndarray, offset_mm=0.0) -> np.ndarray:
        """Points (N, 3) (Z, Y, X) on the ventricular surface at long-axis position t in [-1, 1] (base to
        apex) and angle phi (rad; 0 anterior, +pi/2 patient left), pushed ``offset_mm`` (scalar or per point) outward."""
        t, phi = np.broadcast_arrays(np.atleast_1d(np.asarray(t, np.float64)), np.atleast_1d(np.asarray(phi, np.float64)))
        s = np.sqrt(np.clip(1.0 - t**2, 0.0, 1.0))
        a, b, c = self.semi
        local = np.stack([a * t, b * s * np.cos(phi), c * s * np.sin(phi)], axis=-1)
        # outward normal of the ellipsoid in local coordinates
        nrm = local / np.array([a, b, c]) ** 2
        nrm /= np.linalg.norm(nrm, axis=-1, keepdims=True) + 1e-12
        local = local + np.asarray(offset_mm, np.float64)[..., None] * nrm
        axes = np.stack([self.u, self.v, self.w])  # rows: u, v, w in (Z, Y, X)
        return self.center + local @ axes


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


#: left atrium: centre (Z, Y, X mm from the ventricles' base; Y posterior) and semi-axes at heart scale 1; its
#: anteroposterior diameter 36 mm (normal adult LA 27-40 mm)
_LA_OFFSET = (14.0, 18.0, 4.0)
_LA_SEMI = (22.0, 18.0, 30.0)
#: the spine and sternum in the chest's cross-section (mm, along Y from the inner chest wall): the
#: vertebral body's centre this far in front of the inner posterior wall, its half-depth drawn from this
#: range; the sternum's centre this far in front of the inner anterior wall, its half-depth; the heart's
#: back keeps this far in front of the vertebral body (the oesophagus and the descending aorta between)
VB_CENTRE_MM = 42.0
VB_HALF_DEPTH_MM = (15.0, 18.0)
STERNUM_CENTRE_MM = 4.0
STERNUM_HALF_DEPTH_MM = 6.5
HEART_SPINE_MM = 20.0


def sample_heart(rng: np.random.Generator, body_b_inner: float, scale: float = 1.0,
                 axis_spread: float = HEART_AXIS_SPREAD, tilt_spread: float | None = None) -> Heart:
    """Heart size, position and orientation for one patient (Z, Y, X mm). ``axis_spread`` scales the random
    turn of the long axis (``HEART_AXIS_SPREAD``; 2.5: 95 % of axes 26-75 degrees left of anterior and 26-60
    below the axial plane); ``tilt_spread``, where given, draws the axis' angle below the axial plane as at
    that spread and keeps its angle within the plane (a stress test of the tilt alone)."""
    s = scale * rng.uniform(0.9, 1.08)
    semi = np.array([52.0, 40.0, 44.0]) * s
    mean = np.array([-0.68, -0.45, 0.55])  # base -> apex: inferior, anterior, to the left
    turn = rng.normal(0.0, 0.06, 3)
    u = _unit(mean + axis_spread * turn)
    if tilt_spread is not None:  # the angle below the axial plane as at tilt_spread, the one within it kept
        tilted = _unit(mean + tilt_spread * turn)
        flat, keep = np.hypot(u[1], u[2]), np.hypot(tilted[1], tilted[2])
        u = np.array([tilted[0], u[1] / flat * keep, u[2] / flat * keep])
    anterior = np.array([0.0, -1.0, 0.0])
    v = _unit(anterior - (anterior @ u) * u)
    w = np.cross(u, v)
    if w[2] < 0:
        w = -w
    fat = float(rng.uniform(0.8, 9.0))  # epicardial fat over the free walls: lean to obese
    # ... varying along the heart: 3 smooth harmonics around and along it, more fat toward the apex and over
    # the acute margin (phi ~ -2 rad: the right ventricle's inferior border)
    harm = [(rng.uniform(0.1, 0.35), int(rng.integers(1, 4)), int(rng.integers(0, 3)), rng.uniform(0, 2 * np.pi),
             rng.uniform(0, 2 * np.pi)) for _ in range(3)]
    pattern = np.array(harm + [(rng.uniform(0.0, 0.6) * (1.0 + fat), rng.uniform(0.0, 0.6) * (1.0 + fat),
                                rng.uniform(-2.4, -1.6), 0.0, 0.0)])
    fat_max = Heart.fat_bound(fat, pattern)
    axes = np.stack([u, v, w])
    half = np.sqrt(((semi[:, None] * axes) ** 2).sum(axis=0))  # half extents along Z, Y, X
    # anterior surface ~10-16 mm behind the inner chest wall; the posterior heart (the left atrium and the
    # atrioventricular groove behind the ventricles) keeps >= 20 mm from the vertebral body, whose front
    # lies ~60 mm in front of the inner posterior wall, so that the oesophagus and the descending aorta lie
    # between them: shrink the heart (to 80 % at most: no child's heart) if needed, and where even that does
    # not fit, the chest is drawn deeper (``chest_deeper_mm``) instead of the heart painted over them
    gap = rng.uniform(10.0, 16.0)

    def posterior(k):  # Y of the heart's back (ventricles or left atrium, as _paint_heart draws them)
        cy_k = -body_b_inner + gap + k * half[1] + fat
        la_back = -0.78 * k * semi[0] * u[1] + (_LA_OFFSET[1] + _LA_SEMI[1]) * k * semi[0] / 52.0
        return cy_k + max(k * half[1], la_back) + min(fat_max, fat + 4.0)

    k = 1.0
    spine = VB_CENTRE_MM + VB_HALF_DEPTH_MM[1] + HEART_SPINE_MM  # the heart's back keeps this far from the wall
    while k > 0.8 + 1e-9 and posterior(k) > body_b_inner - spine:
        k -= 0.02
    # a deeper chest moves the sternum forward and the spine back by the same amount
    deeper = max(0.0, (posterior(k) - (body_b_inner - spine)) / 2.0)
    body_b_inner += deeper
    semi, half = semi * k, half * k
    s = s * k
    cy = -body_b_inner + gap + half[1] + fat
    cx = rng.uniform(22.0, 34.0)
    center = np.array([0.0, cy, cx])
    base = center - 0.78 * semi[0] * u
    root_r = float(rng.uniform(12.0, 15.0)) * s
    aortic_root = base + np.array([8.0, 4.0, -16.0]) * s
    aorta_r = float(rng.uniform(14.0, 17.5))
    ascending_top = aortic_root + np.array([90.0, -6.0, -12.0])
    mitral = base + np.array([-2.0, 10.0, 10.0]) * s
    z_top = float(aortic_root[0] + root_r)
    heart = Heart(center, semi, u, v, w, fat, aortic_root, root_r, ascending_top, aorta_r, mitral, 0.0, z_top, pattern,
                  deeper)
    phi = np.linspace(-np.pi, np.pi, 24, endpoint=False)
    z_bottom = float(center[0] - half[0] - heart.fat_at(np.full(24, 0.9), phi).max())  # fat under the apex
    return dataclasses.replace(heart, z_bottom=z_bottom)


# ---------------------------------------------------------------------------------------- painting
def _ramp(r: np.ndarray, edge: float, e: float) -> np.ndarray:
    """Coverage alpha in [0, 1]: 1 well inside (r < edge - e), 0 outside (r > edge + e), linear between."""
    a = (edge + e - r) * (0.5 / e)
    np.clip(a, 0.0, 1.0, out=a)
    return a


def _blend(img: np.ndarray, alpha: np.ndarray, value: float, tissue: np.ndarray | None = None, code: int = 0,
           where: np.ndarray | None = None) -> None:
    """img += alpha * (value - img) in place (optionally only where ``where``); tissue code where alpha > 1/2."""
    if where is not None:
        alpha = alpha * where
    img += alpha * (np.float32(value) - img)
    if tissue is not None:
        tissue[alpha > 0.5] = code


def _tissue_hu(rng: np.random.Generator) -> dict[str, float]:
    """Per-patient tissue HU around the nominal values (hematocrit, fat content, bone density)."""
    jitter = {"fat": 8.0, "muscle": 5.0, "lung": 25.0, "cortical_bone": 150.0, "trabecular_bone": 60.0,
              "myocardium": 4.0, "blood": 5.0, "epicardial_fat": 8.0, "liver": 6.0, "disc": 8.0,
              "cartilage": 15.0, "spleen": 4.0}
    out = dict(TISSUE_HU)
    for k, s in jitter.items():
        out[k] = float(TISSUE_HU[k] + rng.uniform(-s, s))
    out["lung_vessel"] = out["blood"]
    out["coronary"] = out["blood"]
    out["cardiac_vein"] = out["blood"]
    return out


def _ellipse_r(X, Y, cx, cy, a, b, angle=0.0):
    """Normalised elliptic radius (1 on the outline) of points X, Y (broadcastable arrays, mm)."""
    dx, dy = X - cx, Y - cy
    if angle:
        c, s = math.cos(angle), math.sin(angle)
        dx, dy = c * dx + s * dy, -s * dx + c * dy
    return np.sqrt((dx / a) ** 2 + (dy / b) ** 2, dtype=np.float32)


def _template(grid: Grid, rng: np.random.Generator, hu: dict[str, float], body: dict, e_mm: float,
              keep: bool):
    """2D (ny, nx) HU image and tissue map of the z-invariant anatomy, plus named pixel sets."""
    X = grid.x_mm[None, :].astype(np.float32)
    Y = grid.y_mm[:, None].astype(np.float32)
    ny, nx = grid.shape[1:]
    img = np.full((ny, nx), hu["air"], np.float32)
    tis = np.zeros((ny, nx), np.uint8) if keep else None
    T = TISSUES
    a0, b0 = body["a"], body["b"]
    sub, wall = body["subcut"], body["wall"]

    def paint(r, value, code, edge=1.0, scale=None, where=None):
        e = e_mm / (scale if scale else 1.0)
        _blend(img, _ramp(r, edge, e), hu[value] if isinstance(value, str) else value, tis, code, where)

    # skin + subcutaneous fat + chest wall muscle + thoracic cavity (lung)
    paint(_ellipse_r(X, Y, 0, 0, a0, b0), "muscle", T["muscle"], scale=b0)
    paint(_ellipse_r(X, Y, 0, 0, a0 - 1.5, b0 - 1.5), "fat", T["fat"], scale=b0)
    ai, bi = a0 - sub - wall, b0 - sub * 0.8 - wall
    paint(_ellipse_r(X, Y, 0, 0, a0 - sub, b0 - sub * 0.8), "muscle", T["muscle"], scale=b0)
    # breast / pectoral fat planes: a fat lens inside the anterior wall
    paint(_ellipse_r(X, Y, 0, -b0 + sub * 0.8 + wall * 0.55, a0 * 0.55, wall * 0.18), "fat", T["fat"], scale=wall)
    r_thorax = _ellipse_r(X, Y, 0, 0, ai, bi)
    paint(r_thorax, "lung", T["lung"], scale=bi)
    # posterior: spine block and paraspinal muscles bulge into the thorax
    y_vb = bi - VB_CENTRE_MM  # vertebral body centre
    paint(_ellipse_r(X, Y, 0, bi - 8.0, 48.0, 26.0), "muscle", T["muscle"], scale=26.0)
    # mediastinum: fat band between the lungs (heart is painted over it later)
    paint(_ellipse_r(X, Y, 6.0, -bi * 0.25, 38.0, bi * 0.8), "fat", T["fat"], scale=38.0, where=(r_thorax < 1.0))
    paint(_ellipse_r(X, Y, 6.0, y_vb - 10.0, 36.0, 36.0), "fat", T["fat"], scale=36.0)
    # vertebral body: cortical shell + trabecular core; canal; posterior arch; spinous process
    vb_a, vb_b = rng.uniform(19.0, 23.0), rng.uniform(*VB_HALF_DEPTH_MM)
    r_vb = _ellipse_r(X, Y, 0, y_vb, vb_a, vb_b)
    paint(r_vb, "cortical_bone", T["cortical_bone"], scale=vb_b)
    paint(r_vb, "trabecular_bone", T["trabecular_bone"], edge=1.0 - 1.6 / vb_b, scale=vb_b)
    y_canal = y_vb + vb_b + 9.0
    r_arch = _ellipse_r(X, Y, 0, y_canal + 1.0, 17.0, 15.0)
    paint(r_arch, "cortical_bone", T["cortical_bone"], scale=15.0)
    paint(r_arch, "trabecular_bone", T["trabecular_bone"], edge=0.8, scale=15.0)
    paint(_ellipse_r(X, Y, 0, y_canal, 8.5, 7.5), "csf", T["csf"], scale=7.5)
    r_sp = _ellipse_r(X, Y, 0, y_canal + 24.0, 4.0, 12.0)
    paint(r_sp, "cortical_bone", T["cortical_bone"], scale=4.0)
    paint(r_sp, "trabecular_bone", T["trabecular_bone"], edge=0.55, scale=4.0)
    # descending aorta (left-anterior of the spine) with a thin fat rim, esophagus
    da_r = rng.uniform(10.5, 13.5)
    da = (rng.uniform(20.0, 28.0), y_vb - vb_b - da_r + 4.0)
    paint(_ellipse_r(X, Y, da[0], da[1], da_r + 3.0, da_r + 3.0), "fat", T["fat"], scale=da_r)
    paint(_ellipse_r(X, Y, da[0], da[1], da_r, da_r), "blood", T["blood"], scale=da_r)
    eso = (rng.uniform(0.0, 8.0), y_vb - vb_b - 9.0)
    paint(_ellipse_r(X, Y, eso[0], eso[1], 9.0, 7.0), "muscle", T["muscle"], scale=7.0)
    if rng.random() < 0.5:
        paint(_ellipse_r(X, Y, eso[0], eso[1], 2.5, 1.5), "airway", T["airway"], scale=1.5)
    # sternum (body): anterior midline, inside the chest wall
    y_st, st_b = -bi - STERNUM_CENTRE_MM, STERNUM_HALF_DEPTH_MM
    r_st = _ellipse_r(X, Y, rng.uniform(-3.0, 3.0), y_st, rng.uniform(13.0, 17.0), st_b)
    paint(r_st, "cortical_bone", T["cortical_bone"], scale=st_b)
    paint(r_st, "trabecular_bone", T["trabecular_bone"], edge=1.0 - 1.5 / st_b, scale=st_b)
    # scapulae: thin bone plates in the posterolateral chest wall, outside the ribs (not in every field)
    if body.get("scapulae", True):
        rn = np.sqrt((X / ai) ** 2 + (Y / bi) ** 2)
        rad_mm = (rn - 1.0) * (0.5 * (ai + bi))
        theta = np.arctan2(Y, X)  # +pi/2 posterior
        depth = min(14.5, 0.8 * sub + wall - 3.0)
        half_t = body.get("scapula_half_mm", 2.0)
        lateral = np.abs(np.abs(theta) - math.pi / 2)
        span = (lateral > 0.45) & (lateral < 1.05) & (Y > 0)
        alpha = np.clip((half_t + e_mm - np.abs(rad_mm - depth)) / (2 * e_mm), 0.0, 1.0) * span
        _blend(img, alpha.astype(np.float32), hu["cortical_bone"], tis, T["cortical_bone"])
    # arms beside the chest (chest protocol, arms down): skin and fat, muscle, humerus with fatty marrow
    for side in ((-1.0, 1.0) if body.get("arms") else ()):
        ra, rb = body["arm_r"]
        cx, cy = side * (a0 + body["arm_gap"] + ra), body["arm_y"]
        paint(_ellipse_r(X, Y, cx, cy, ra, rb), "fat", T["fat"], scale=rb)
        paint(_ellipse_r(X, Y, cx, cy, ra - body["arm_fat"], rb - body["arm_fat"]), "muscle", T["muscle"], scale=rb)
        hx, hy = cx - side * 0.25 * ra, cy + 0.1 * rb
        r_h = _ellipse_r(X, Y, hx, hy, 12.0, 11.0)
        paint(r_h, "cortical_bone", T["cortical_bone"], scale=11.0)
        paint(r_h, hu["fat"] + 60.0, T["trabecular_bone"], edge=1.0 - 3.0 / 11.0, scale=11.0)
    sets = {
        "vertebral_body": r_vb < 1.02,
        "sternum": r_st < 1.05,
        "thorax_r": r_thorax,
        "descending_aorta": np.array([0.0, da[1], da[0]]),
        "descending_aorta_r": da_r,
        "y_vb": y_vb,
        "inner": (ai, bi),
        "esophagus": eso,
    }
    return img, tis, sets


def _ellipsoid_f(grid: Grid, box, center, semi, axes) -> np.ndarray:
    """Squared normalised radius (z, y, x) of an ellipsoid (semi-axes along rows of ``axes``) inside box."""
    z = (grid.z_mm[box[0]] - center[0]).astype(np.float32)[:, None, None]
    y = (grid.y_mm[box[1]] - center[1]).astype(np.float32)[None, :, None]
    x = (grid.x_mm[box[2]] - center[2]).astype(np.float32)[None, None, :]
    M = (axes.T / np.asarray(semi) ** 2) @ axes  # quadratic form in (Z, Y, X)
    M = M.astype(np.float32)
    zz = M[0, 0] * z * z + 2 * M[0, 1] * z * y + M[1, 1] * y * y  # (nz, ny, 1)
    zx = 2 * M[0, 2] * z * x  # (nz, 1, nx)
    yx = M[2, 2] * x * x + 2 * M[1, 2] * y * x  # (1, ny, nx)
    f = zz + zx
    f += yx
    return f


def _ellipsoid_box(grid: Grid, center, semi, axes, pad: float):
    half = np.sqrt(((np.asarray(semi)[:, None] * axes) ** 2).sum(axis=0)) + pad
    return grid.box(center - half, center + half)


def _paint_heart(vol, tis, grid: Grid, heart: Heart, hu: dict, e_mm: float) -> None:
    """Pericardial sac with epicardial fat, pericardium, ventricles (myocardium + blood), atria."""
    T = TISSUES
    axes_v = np.stack([heart.u, heart.v, heart.w])
    eye = np.eye(3)
    base = heart.center - 0.78 * heart.semi[0] * heart.u
    s = heart.semi[0] / 52.0
    la_c = base + np.array(_LA_OFFSET) * s
    la_semi = np.array(_LA_SEMI) * s
    ra_c = base + np.array([2.0, 4.0, -34.0]) * s
    ra_semi = np.array([30.0, 24.0, 22.0]) * s
    R = float(np.mean(heart.semi))
    pad = heart.fat_max_mm + 3.0
    box = _ellipsoid_box(grid, heart.center, heart.semi + pad, axes_v, 0.0)
    for c, sm in ((la_c, la_semi), (ra_c, ra_semi)):
        b2 = _ellipsoid_box(grid, c, sm + pad, eye, 0.0)
        if b2 is not None:
            box = b2 if box is None else tuple(slice(min(p.start, q.start), max(p.stop, q.stop)) for p, q in zip(box, b2))
    if box is None:
        return
    f = _ellipsoid_f(grid, box, heart.center, heart.semi, axes_v)
    for c, sm in ((la_c, la_semi), (ra_c, ra_semi)):
        np.minimum(f, _ellipsoid_f(grid, box, c, sm, eye), out=f)
    r = np.sqrt(f)
    sub = vol[box]
    tsub = tis[box] if tis is not None else None
    e = e_mm / R
    # the sac's normalised radius from the fat thickness where each voxel lies around the ventricles
    d = [(g[b] - c0).astype(np.float32).reshape(shape) for g, b, c0, shape in
         zip((grid.z_mm, grid.y_mm, grid.x_mm), box, heart.center, ((-1, 1, 1), (1, -1, 1), (1, 1, -1)))]
    local = [sum(d[i] * np.float32(ax[i]) for i in range(3)) / np.float32(sm) for ax, sm in
             zip((heart.u, heart.v, heart.w), heart.semi)]  # (t, v, w) in semi-axis units
    r_sac = 1.0 + heart.fat_at(local[0], np.arctan2(local[2], local[1])) / np.float32(R)
    _blend(sub, _ramp(r, r_sac + 1.2 / R, e), hu["pericardium"], tsub, T["pericardium"])
    _blend(sub, _ramp(r, r_sac, e), hu["epicardial_fat"], tsub, T["epicardial_fat"])
    _blend(sub, _ramp(r, 1.0, e), hu["myocardium"], tsub, T["myocardium"])
    if tsub is not None:  # chambers: blood and myocardium differ by a few HU only without contrast
        tsub[r < 0.72] = T["blood"]


def _polyline(nodes: np.ndarray, step: float = 0.5) -> np.ndarray:
    """Resample a polyline (K, 3) at ~``step`` mm (smooth enough for small K with Catmull-Rom-free linear)."""
    seg = np.linalg.norm(np.diff(nodes, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.arange(0.0, s[-1] + 1e-9, step)
    return np.stack([np.interp(t, s, nodes[:, i]) for i in range(3)], axis=1)


def _paint_vertical_vessel(vol, tis, grid, start, top, radius, value, code, e_mm, wall_fat=0.0, fat=-100.0):
    """A tube from ``start`` to ``top`` (mm) painted slice by slice as a soft disc (tube ~ along Z)."""
    z0, z1 = sorted((start[0], top[0]))
    ks = np.nonzero((grid.z_mm >= z0) & (grid.z_mm <= z1))[0]
    if ks.size == 0:
        return
    for k in ks:
        t = (grid.z_mm[k] - start[0]) / (top[0] - start[0])
        c = start + t * (top - start)
        rr = radius + wall_fat
        bx = grid.box(np.array([grid.z_mm[k], c[1] - rr - 3, c[2] - rr - 3]), np.array([grid.z_mm[k], c[1] + rr + 3, c[2] + rr + 3]))
        if bx is None:
            continue
        bx = (slice(k, k + 1), bx[1], bx[2])
        Y = grid.y_mm[bx[1]][:, None].astype(np.float32)
        X = grid.x_mm[bx[2]][None, :].astype(np.float32)
        r = np.sqrt((X - c[2]) ** 2 + (Y - c[1]) ** 2)[None]
        sub = vol[bx]
        tsub = tis[bx] if tis is not None else None
        if wall_fat:
            _blend(sub, _ramp(r, radius + wall_fat, e_mm), fat, tsub, TISSUES["fat"])
        _blend(sub, _ramp(r, radius, e_mm), value, tsub, code)


def build_anatomy(grid: Grid, heart: Heart, rng: np.random.Generator, body: dict, psf_sigma_mm: float,
                  keep_tissue: bool = False, abdomen_rng: np.random.Generator | None = None):
    """Paint the noise-free anatomy; the upper abdomen's hollow organs too when ``abdomen_rng`` is given
    (``_paint_abdomen``, with its own draws: every other structure stays as it was).

    Returns (hu float32 (z, y, x) HU, tissue uint8 (z, y, x) or None, bone bool (z, y, x), landmarks dict).
    """
    hu_of = _tissue_hu(rng)
    T = TISSUES
    e_mm = max(1.2 * psf_sigma_mm, 0.5 * grid.spacing[1])
    img, tis2, sets = _template(grid, rng, hu_of, body, e_mm, keep_tissue)
    nz = grid.shape[0]
    vol = np.empty(grid.shape, np.float32)
    vol[...] = img[None]
    tis = None
    if keep_tissue:
        tis = np.empty(grid.shape, np.uint8)
        tis[...] = tis2[None]
    ai, bi = sets["inner"]

    # intervertebral discs every ~26 mm; the sternum ends (xiphoid) low in the volume
    vb = sets["vertebral_body"]
    period, phase = rng.uniform(24.0, 28.0), rng.uniform(0.0, 28.0)
    x_end = heart.z_bottom + rng.uniform(10.0, 30.0)
    st = sets["sternum"]
    for k in range(nz):
        z = grid.z_mm[k]
        q = (z - phase) / period
        if abs(q - round(q)) * period < 3.0:
            vol[k][vb] = hu_of["disc"]
            if tis is not None:
                tis[k][vb] = T["disc"]
        if z < x_end:
            vol[k][st] = hu_of["muscle"]
            if tis is not None:
                tis[k][st] = T["muscle"]

    # liver dome (right) and spleen / stomach (left) under the diaphragm, replacing lung and fat
    liver_c = np.array([heart.z_bottom - rng.uniform(45.0, 65.0), 10.0, -35.0])
    liver_semi = np.array([75.0, bi * 0.95, ai * 0.95])
    bx = _ellipsoid_box(grid, liver_c, liver_semi, np.eye(3), 2.0)
    inside = sets["thorax_r"] < 1.0
    if bx is not None:
        f = np.sqrt(_ellipsoid_f(grid, bx, liver_c, liver_semi, np.eye(3)))
        _blend(vol[bx], _ramp(f, 1.0, e_mm / 70.0), hu_of["liver"], tis[bx] if tis is not None else None,
               T["liver"], where=inside[bx[1], bx[2]][None])
    sp_c = np.array([heart.z_bottom - rng.uniform(55.0, 80.0), 20.0, 70.0])
    sp_semi = np.array([60.0, bi * 0.8, 60.0])
    bx = _ellipsoid_box(grid, sp_c, sp_semi, np.eye(3), 2.0)
    if bx is not None:
        f = np.sqrt(_ellipsoid_f(grid, bx, sp_c, sp_semi, np.eye(3)))
        _blend(vol[bx], _ramp(f, 1.0, e_mm / 60.0), hu_of["spleen"], tis[bx] if tis is not None else None,
               T["spleen"], where=inside[bx[1], bx[2]][None])
    abdomen = None
    if abdomen_rng is not None:
        abdomen = _paint_abdomen(vol, tis, grid, heart, sets, hu_of, e_mm, abdomen_rng, sp_c, liver_c)

    # ribs: oblique bands in the chest wall, falling ~80 mm from back to front; cartilage in front
    _paint_ribs(vol, tis, grid, rng, hu_of, ai, bi, sets["vertebral_body"])

    # great vessels above the heart: ascending aorta (to the arch), pulmonary trunk, SVC (fat-sheathed)
    upper = _upper_chest(heart, sets, body["upper"]) if body.get("upper") else None
    if upper is not None:
        _paint_upper_chest(vol, tis, grid, upper, sets, hu_of, e_mm)
    top = heart.ascending_top if upper is None else upper["ascending_top"]
    _paint_vertical_vessel(vol, tis, grid, heart.aortic_root, top, heart.aorta_radius,
                           hu_of["blood"], T["blood"], e_mm, wall_fat=3.0, fat=hu_of["fat"])
    if upper is not None:
        _paint_arch_and_airways(vol, tis, grid, upper, hu_of, e_mm)
    s = heart.semi[0] / 52.0
    base = heart.center - 0.78 * heart.semi[0] * heart.u
    pa0 = base + np.array([10.0, -22.0, 14.0]) * s
    pa1 = pa0 + np.array([45.0, 25.0, 12.0])
    _paint_vertical_vessel(vol, tis, grid, pa0, pa1, 13.0 * s, hu_of["blood"], T["blood"], e_mm, wall_fat=2.5,
                           fat=hu_of["fat"])
    svc0 = heart.aortic_root + np.array([10.0, 8.0, -28.0])
    _paint_vertical_vessel(vol, tis, grid, svc0, svc0 + np.array([90.0, 4.0, -4.0]), 9.0, hu_of["blood"],
                           T["blood"], e_mm, wall_fat=2.0, fat=hu_of["fat"])

    _paint_heart(vol, tis, grid, heart, hu_of, e_mm)
    # aortic root sits in the heart base
    _paint_vertical_vessel(vol, tis, grid, heart.aortic_root - np.array([heart.root_radius, 0, 0]),
                           heart.aortic_root, heart.root_radius, hu_of["blood"], T["blood"], e_mm)

    # pulmonary vessels: short random tubes in the lungs, thicker toward the hila
    _paint_lung_vessels(vol, tis, grid, rng, hu_of, sets, heart, e_mm)

    bone = None
    landmarks = {
        "descending_aorta": sets["descending_aorta"],
        "descending_aorta_r": sets["descending_aorta_r"],
        "vertebral_body": sets["vertebral_body"],
        "hu_of": hu_of,
        "inner": (ai, bi),
        "pa0": pa0,
    }
    if upper is not None:
        landmarks.update({k: upper[k] for k in ("ascending_top", "carina", "arch", "arch_r", "da_top")})
    if abdomen is not None:
        landmarks.update(abdomen)
    return vol, tis, bone, landmarks


# ------------------------------------------------------------------------- upper abdomen
_DIAPHRAGM_MM = 6.0  # the diaphragm and a bowel's wall between the lungs and the stomach's or colon's content


def _paint_abdomen(vol, tis, grid: Grid, heart: Heart, sets: dict, hu_of: dict, e_mm: float,
                   rng: np.random.Generator, spleen_c: np.ndarray, liver_c: np.ndarray) -> dict:
    """The upper abdomen under the diaphragm, in place, inside the thorax's inner contour:

    - no lung below the posterior costophrenic recesses (0-15 mm below the liver's equator): what the liver
      and spleen leave there is abdominal fat;
    - the stomach under the left dome: a muscular wall of 6-9 mm (the diaphragm's and its own) round fluid at
      0-30 HU; in 85 % of exams a gas bubble (-1000 HU) above a flat gas-fluid level (the patient supine: gas in
      front, fluid behind), filling 10-60 % of the lumen's depth;
    - the colon: hepatic flexure, transverse colon, splenic flexure (high, under the left dome, in front of the
      spleen) and descending colon, a tube of radius 14-22 mm with a 2 mm wall whose pieces hold gas (45 %),
      stool (a mottle of gas bubbles of radius 1.5-4 mm in 20 HU; 45 %) or nothing (collapsed, 10 %);
    - between the stomach or colon and the lungs, at least ``_DIAPHRAGM_MM`` of muscle (the diaphragm and the
      bowel's wall): what they paint fades into muscle there;
    - the splenic artery: radius 2-3 mm, in a fat sheath, from the coeliac trunk in front of the aorta, 45-80 mm below
      the heart, tortuous, to the splenic hilum.

    Returns {"splenic_artery": (N, 3) centre line (Z, Y, X) mm, "splenic_artery_r": radius mm}."""
    T = TISSUES
    ai, bi = sets["inner"]
    zb = heart.z_bottom
    inside = sets["thorax_r"] < 1.0
    da, da_r = sets["descending_aorta"], sets["descending_aorta_r"]
    yy, xx = grid.y_mm[:, None], grid.x_mm[None, :]
    keep = inside & ((yy - da[1]) ** 2 + (xx - da[2]) ** 2 > (da_r + 4.0) ** 2) & ~sets["vertebral_body"]

    def tissue_of(bx):
        return tis[bx] if tis is not None else None

    recess = liver_c[0] - rng.uniform(0.0, 15.0)
    within = sets["thorax_r"] < 1.1  # the lungs' partial-volume edge too, never the air outside the body
    for k in np.nonzero(grid.z_mm < recess)[0]:
        aerated = within & (vol[k] < -150.0)  # lung and its partial volume with fat or soft tissue
        vol[k][aerated] = hu_of["fat"]
        if tis is not None:
            tis[k][aerated | (within & (tis[k] == T["lung"]))] = T["fat"]

    # a diaphragm: what the stomach and colon paint fades into muscle within 6 mm of the lungs
    from scipy import ndimage

    lung = within[None] & (vol < -500.0)
    clear_mm = ndimage.distance_transform_edt(~lung, sampling=grid.spacing).astype(np.float32)
    before = vol.copy()

    # the stomach, its top 5-15 mm under the left dome (the spleen's top), never over lung
    semi = np.array([rng.uniform(35.0, 55.0), rng.uniform(30.0, 45.0), rng.uniform(28.0, 42.0)])
    dome = spleen_c[0] + 60.0
    c = np.array([dome - rng.uniform(5.0, 15.0) - semi[0], rng.uniform(-0.55, -0.2) * bi, rng.uniform(0.3, 0.55) * ai])
    wall = rng.uniform(6.0, 9.0)
    fluid = rng.uniform(0.0, 30.0)
    gas_share = rng.uniform(0.1, 0.6) if rng.random() < 0.85 else 0.0
    bx = _ellipsoid_box(grid, c, semi, np.eye(3), 2.0)
    if bx is not None:
        where = keep[bx[1], bx[2]][None] & (vol[bx] > -500.0)
        f = np.sqrt(_ellipsoid_f(grid, bx, c, semi, np.eye(3)))
        _blend(vol[bx], _ramp(f, 1.0, e_mm / semi[1]), hu_of["muscle"], tissue_of(bx), T["muscle"], where=where)
        inner = semi - wall
        f = np.sqrt(_ellipsoid_f(grid, bx, c, inner, np.eye(3)))
        lumen = _ramp(f, 1.0, e_mm / inner[1])
        _blend(vol[bx], lumen, fluid, tissue_of(bx), T["bowel_content"], where=where)
        if gas_share > 0:
            level = c[1] - inner[1] + 2.0 * inner[1] * gas_share  # y of the gas-fluid level (front: smaller y)
            y = grid.y_mm[bx[1]].astype(np.float32)[None, :, None]
            gas = lumen * np.clip((level - y) / (2.0 * e_mm) + 0.5, 0.0, 1.0)
            _blend(vol[bx], gas, TISSUE_HU["bowel_gas"], tissue_of(bx), T["bowel_gas"], where=where)

    # the colon, drawn over soft tissue and fat (never over bone or lung)
    nodes = np.array([
        [zb - rng.uniform(70.0, 110.0), rng.uniform(-0.3, 0.0) * bi, -rng.uniform(0.45, 0.6) * ai],  # hepatic flexure
        [zb - rng.uniform(90.0, 130.0), -rng.uniform(0.45, 0.6) * bi, rng.uniform(-15.0, 15.0)],  # transverse colon
        [zb - rng.uniform(25.0, 60.0), -rng.uniform(0.1, 0.35) * bi, rng.uniform(0.55, 0.7) * ai],  # splenic flexure
        [zb - rng.uniform(110.0, 150.0), rng.uniform(0.1, 0.35) * bi, rng.uniform(0.55, 0.7) * ai],  # descending
    ])
    path = _smooth_path(nodes, 1.0)
    r_col = rng.uniform(14.0, 22.0)
    cuts = np.sort(rng.choice(np.arange(1, len(path) - 1), size=3, replace=False))
    for piece in np.split(path, cuts):
        kind = rng.choice(["gas", "stool", "collapsed"], p=[0.45, 0.45, 0.1])
        if len(piece) < 2:
            continue
        r = r_col if kind != "collapsed" else rng.uniform(5.0, 8.0)
        p0, p1, rad = polyline_segments(piece, np.full(len(piece), r), 3.0)
        _paint_capsules(vol, tis, grid, p0, p1, rad, hu_of["muscle"], T["muscle"], e_mm, only_hu_below=100.0,
                        only_hu_above=-500.0)
        if kind == "collapsed":
            continue
        gas = kind == "gas"
        _paint_capsules(vol, tis, grid, p0, p1, rad - 2.0, TISSUE_HU["bowel_gas" if gas else "bowel_content"],
                        T["bowel_gas" if gas else "bowel_content"], e_mm, only_hu_below=100.0, only_hu_above=-500.0)
        if not gas:  # bubbles of gas through the stool
            n = int(len(piece) * r * r / 60.0)
            at = piece[rng.integers(len(piece), size=n)]
            d = rng.normal(size=(n, 3))
            d *= ((r - 4.0) * rng.random(n) ** (1 / 3) / np.linalg.norm(d, axis=1))[:, None]
            b = rng.uniform(1.5, 4.0, size=n)
            _paint_capsules(vol, tis, grid, at + d, at + d, b, TISSUE_HU["bowel_gas"], T["bowel_gas"], e_mm,
                            only_hu_below=60.0)

    changed = vol != before
    fade = np.clip((clear_mm - _DIAPHRAGM_MM) / (2.0 * e_mm) + 0.5, 0.0, 1.0)  # 0 at the lungs, 1 beyond 6 mm
    vol[changed] = fade[changed] * vol[changed] + (1.0 - fade[changed]) * np.float32(hu_of["muscle"])
    if tis is not None:
        tis[changed & (fade < 0.5)] = T["muscle"]
    del before, clear_mm

    # the splenic artery: the coeliac trunk forward from the aorta, then tortuous to the splenic hilum
    zc = zb - rng.uniform(45.0, 80.0)
    start = np.array([zc, da[1] - da_r, da[2]])
    trunk = start + np.array([rng.uniform(-3.0, 3.0), -rng.uniform(12.0, 20.0), -rng.uniform(0.0, 8.0)])
    hilum = np.array([spleen_c[0] + rng.uniform(-10.0, 20.0), spleen_c[1] - rng.uniform(10.0, 25.0),
                      spleen_c[2] - rng.uniform(35.0, 45.0)])
    mids = [trunk + t * (hilum - trunk) + np.array([rng.normal(0, 5.0), rng.normal(0, 9.0), rng.normal(0, 6.0)])
            for t in (0.25, 0.5, 0.75)]
    artery = _smooth_path(np.array([start, trunk, *mids, hilum]), 0.5)
    r_sa = float(rng.uniform(2.0, 3.0))
    p0, p1, rad = polyline_segments(artery, np.full(len(artery), r_sa), 3.0)
    _paint_capsules(vol, tis, grid, p0, p1, rad + rng.uniform(2.0, 4.0), hu_of["fat"], T["fat"], e_mm,
                    only_hu_below=100.0, only_hu_above=-500.0)
    _paint_capsules(vol, tis, grid, p0, p1, rad, hu_of["blood"], T["blood"], e_mm, only_hu_below=100.0,
                    only_hu_above=-500.0)
    return {"splenic_artery": artery, "splenic_artery_r": r_sa}


# ------------------------------------------------------------------------- upper mediastinum and airways
def _upper_chest(heart: Heart, sets: dict, up: dict) -> dict:
    """Geometry (mm, (Z, Y, X)) of the upper mediastinum from the patient's draws ``up``: the trachea (just in
    front of the oesophagus) down to the carina at ``up["carina_z"]``, the two main bronchi, the ascending
    aorta's top (leaning forward enough to pass in front of the trachea), the arch over the left main
    bronchus to the descending aorta, and the three great vessels rising from the arch."""
    eso_x, eso_y = sets["esophagus"]
    r_t = float(up["trachea_r"])
    tx, ty = float(up["trachea_x"]), float(eso_y - 7.0 - 2.0 - r_t)
    cz = float(up["carina_z"])
    ar = heart.aorta_radius
    da, da_r = sets["descending_aorta"], sets["descending_aorta_r"]
    z0 = cz + float(up["arch_base"])  # where the arch leaves the ascending and joins the descending aorta
    h = float(up["arch_height"])
    root = heart.aortic_root
    a = root + (z0 - root[0]) * np.array([1.0, -6.0 / 90.0, -12.0 / 90.0])
    clear = ar + r_t + 5.0
    if abs(a[2] - tx) < clear:  # in front of the trachea, not through it
        a[1] = min(a[1], ty - math.sqrt(clear**2 - (a[2] - tx) ** 2))
    d = np.array([z0, da[1], da[2]])
    nodes = np.array([a, a + [8.0, 0, 0], [z0 + 0.8 * h, ty - clear, tx + 0.3 * clear],
                      [z0 + h, ty + 0.2 * clear, tx + clear], d + [8.0, 0, 0], d])
    arch = _smooth_path(nodes)
    arch_r = np.linspace(ar, da_r, len(arch))
    carina = np.array([cz, ty, tx])
    # main bronchi: the right one short and steep, then the bronchus intermedius; the left one long and
    # flatter, under the arch; a lobar branch each
    rb = carina + np.array([-18.0, 5.0, -17.0]) * up["bronchus_scale"]
    lb = carina + np.array([-22.0, 0.0, 36.0]) * up["bronchus_scale"]
    bronchi = [(carina, rb, 0.68 * r_t), (rb, rb + [-28.0, 8.0, -10.0], 0.5 * r_t),
               (rb, rb + [6.0, 4.0, -22.0], 0.42 * r_t), (carina, lb, 0.6 * r_t),
               (lb, lb + [-26.0, 10.0, 12.0], 0.45 * r_t), (lb, lb + [10.0, -2.0, 20.0], 0.42 * r_t)]
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(arch, axis=0), axis=1))])
    branches = []
    for frac, lean, r in ((0.3, -12.0, 6.5), (0.45, 0.0, 4.2), (0.6, 10.0, 5.0)):
        p = arch[int(np.searchsorted(s, frac * s[-1]))]
        branches.append((p, p + np.array([120.0, 0.0, lean]), r))
    return {"ascending_top": a, "carina": carina, "trachea_r": r_t, "arch": arch, "arch_r": arch_r,
            "bronchi": bronchi, "branches": branches, "apex_mm": float(up["apex_mm"]), "da_top": float(z0)}


def _smooth_path(nodes: np.ndarray, step: float = 1.0) -> np.ndarray:
    """A smooth curve (N, 3) through ``nodes`` (K, 3), cubic in chord length, sampled every ~``step`` mm."""
    from scipy.interpolate import CubicSpline

    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(nodes, axis=0), axis=1))])
    t = np.linspace(0.0, s[-1], max(int(s[-1] / step), 2) + 1)
    return CubicSpline(s, nodes, axis=0)(t)


def _paint_upper_chest(vol, tis, grid, upper, sets, hu_of, e_mm) -> None:
    """Before the vessels: the lungs narrow toward their apices above the carina (chest wall and shoulder
    muscle take their place), and the descending aorta ends where the arch joins it."""
    T = TISSUES
    cz, span = upper["carina"][0], upper["apex_mm"]
    r_thorax = sets["thorax_r"]
    da, da_r = sets["descending_aorta"], sets["descending_aorta_r"]
    Y = grid.y_mm[:, None].astype(np.float32)
    X = grid.x_mm[None, :].astype(np.float32)
    r_da = np.sqrt((X - da[2]) ** 2 + (Y - da[1]) ** 2)
    for k in np.nonzero(grid.z_mm > upper["da_top"] + 4.0)[0]:
        _blend(vol[k], _ramp(r_da, da_r + 0.5, e_mm), hu_of["fat"], None if tis is None else tis[k], T["fat"])
    for k in np.nonzero(grid.z_mm > cz + 15.0)[0]:
        q = min(max((grid.z_mm[k] - cz - 15.0) / span, 0.0), 1.0)
        keep = 1.0 - 0.6 * q**1.2  # the lungs' outline shrinks to 40 % at the apex
        alpha = np.clip((r_thorax - keep) * 40.0, 0.0, 1.0) * (r_thorax < 1.0) * (vol[k] < -500.0)
        _blend(vol[k], alpha.astype(np.float32), hu_of["muscle"], None if tis is None else tis[k], T["muscle"])


def _paint_arch_and_airways(vol, tis, grid, upper, hu_of, e_mm) -> None:
    """The aortic arch and great vessels (fat-sheathed blood), then the trachea and bronchi (air in a soft
    tissue wall) over them."""
    T = TISSUES
    arch = [(p, q, 0.5 * (r0 + r1)) for p, q, r0, r1 in
            zip(upper["arch"][:-1], upper["arch"][1:], upper["arch_r"][:-1], upper["arch_r"][1:])]
    vessels = arch + list(upper["branches"])  # one tube: the branches leave the arch without a seam
    p0, p1 = np.array([t[0] for t in vessels]), np.array([t[1] for t in vessels])
    r = np.array([t[2] for t in vessels])
    sheath = np.where(np.arange(len(r)) < len(arch), 3.0, 1.5)
    _paint_sections(vol, tis, grid, p0, p1, r + sheath, hu_of["fat"], T["fat"], e_mm)
    _paint_sections(vol, tis, grid, p0, p1, r, hu_of["blood"], T["blood"], e_mm)
    carina, r_t = upper["carina"], upper["trachea_r"]
    top = carina + np.array([400.0, 0.0, 0.0])
    tubes = [(carina, top, r_t)] + list(upper["bronchi"])
    a = np.array([t[0] for t in tubes])
    b = np.array([t[1] for t in tubes])
    rr = np.array([t[2] for t in tubes])
    _paint_sections(vol, tis, grid, a, b, rr + 2.0, hu_of["muscle"], T["cartilage"], e_mm)
    _paint_sections(vol, tis, grid, a, b, rr, hu_of["airway"], T["airway"], e_mm)


def _paint_ribs(vol, tis, grid, rng, hu_of, ai, bi, vb_mask) -> None:
    T = TISSUES
    X = grid.x_mm[None, :]
    Y = grid.y_mm[:, None]
    rn = np.sqrt((X / ai) ** 2 + (Y / bi) ** 2)
    rad_mm = (rn - 1.0) * (0.5 * (ai + bi))  # ~ mm outside the pleura
    rib_c, rib_t = 6.0, 5.5  # centre depth and half thickness (mm)
    ring = (rad_mm > rib_c - rib_t - 1) & (rad_mm < rib_c + rib_t + 1)
    theta = np.arctan2(Y, X)  # +pi/2 = posterior
    ring &= np.abs(theta - math.pi / 2) > 0.28  # none across the spine
    ring &= np.abs(theta + math.pi / 2) > 0.22  # sternum
    iy, ix = np.nonzero(ring)
    if iy.size == 0:
        return
    th = theta[iy, ix]
    dr = (rad_mm[iy, ix] - rib_c) / rib_t
    g = (1.0 - np.sin(th)) / 2.0  # 0 posterior, 1 anterior
    drop = rng.uniform(70.0, 95.0)
    period = rng.uniform(24.0, 30.0)
    phase = rng.uniform(0.0, period)
    half_h = 5.5
    cart = np.abs(th + math.pi / 2) < rng.uniform(0.55, 0.75)
    for k in range(grid.shape[0]):
        q = (grid.z_mm[k] + drop * g - phase) / period
        dz = (q - np.round(q)) * period / half_h
        rr = np.sqrt(dz**2 + dr**2)
        inb = rr < 1.05
        if not inb.any():
            continue
        yy, xx, r_in, c_in = iy[inb], ix[inb], rr[inb], cart[inb]
        a = np.clip((1.0 - r_in) * 4.0 + 0.5, 0.0, 1.0)  # soft outline
        shell = r_in > 0.7
        val = np.where(c_in, hu_of["cartilage"], np.where(shell, hu_of["cortical_bone"], hu_of["trabecular_bone"]))
        cur = vol[k, yy, xx]
        vol[k, yy, xx] = cur + a * (val - cur)
        if tis is not None:
            code = np.where(c_in, T["cartilage"], np.where(shell, T["cortical_bone"], T["trabecular_bone"]))
            sel = a > 0.5
            tis[k, yy[sel], xx[sel]] = code[sel]


def _paint_capsules(vol, tis, grid: Grid, p0: np.ndarray, p1: np.ndarray, radius: np.ndarray, value: float,
                    code: int, e_mm: float, only_hu_below: float | None = None,
                    only_hu_above: float | None = None) -> None:
    """Tubes made of straight segments p0[i] -> p1[i] ((M, 3) Z, Y, X mm) of radius (M,) mm.

    In each slice a segment shows as the 2D capsule swept by its part inside the slab (slice thickness +
    radius): thick slices smear oblique vessels, as a real slice profile does. Soft edges (ramp e_mm).
    ``only_hu_below``: paint only voxels whose current HU is below this (e.g. lung or fat); ``only_hu_above``:
    only those above it (e.g. not lung).
    """
    dz, dy, dx = grid.spacing
    half = 0.5 * dz
    z0 = grid.z_mm[0]
    for a, b, r in zip(p0, p1, radius):
        lo_z, hi_z = min(a[0], b[0]) - r - half, max(a[0], b[0]) + r + half
        k0 = max(int(math.ceil((lo_z - z0) / dz)), 0)
        k1 = min(int(math.floor((hi_z - z0) / dz)), grid.shape[0] - 1)
        d = b - a
        for k in range(k0, k1 + 1):
            zc = grid.z_mm[k]
            if abs(d[0]) > 1e-6:
                t0 = np.clip(((zc - half - r) - a[0]) / d[0], 0.0, 1.0)
                t1 = np.clip(((zc + half + r) - a[0]) / d[0], 0.0, 1.0)
                t0, t1 = min(t0, t1), max(t0, t1)
            else:
                t0, t1 = 0.0, 1.0
            A, B = a + t0 * d, a + t1 * d
            gap = max(abs(zc - A[0]) - half, abs(zc - B[0]) - half, 0.0) if abs(d[0]) <= 1e-6 else 0.0
            rr = math.sqrt(max(r * r - gap * gap, 0.0))
            if rr <= 0:
                continue
            ext = rr + e_mm
            box = grid.box(np.array([zc, min(A[1], B[1]) - ext, min(A[2], B[2]) - ext]),
                           np.array([zc, max(A[1], B[1]) + ext, max(A[2], B[2]) + ext]))
            if box is None:
                continue
            Y = (grid.y_mm[box[1]][:, None] - A[1]).astype(np.float32)
            X = (grid.x_mm[box[2]][None, :] - A[2]).astype(np.float32)
            ey, ex = B[1] - A[1], B[2] - A[2]
            L2 = ey * ey + ex * ex
            if L2 > 1e-9:
                t = np.clip((Y * ey + X * ex) / L2, 0.0, 1.0)
                dist = np.sqrt((Y - t * ey) ** 2 + (X - t * ex) ** 2)
            else:
                dist = np.sqrt(Y * Y + X * X)
            alpha = _ramp(dist.astype(np.float32), rr, e_mm)
            sub = vol[k, box[1], box[2]]
            if only_hu_below is not None:
                alpha *= sub < only_hu_below
            if only_hu_above is not None:
                alpha *= sub > only_hu_above
            sub += alpha * (np.float32(value) - sub)
            if tis is not None:
                tis[k, box[1], box[2]][alpha > 0.5] = code


def _paint_sections(vol, tis, grid: Grid, p0: np.ndarray, p1: np.ndarray, radius: np.ndarray, value: float,
                    code: int, e_mm: float) -> None:
    """One tube made of straight segments p0[i] -> p1[i] ((M, 3) Z, Y, X mm) of radius (M,) mm, drawn as its
    true section through each slice: the inside of the tube (the union of the segments' capsules) is
    measured in 3D at sub-planes ~0.75 mm apart across the slice's thickness and averaged over them (the
    partial volume of a slice profile), so an oblique tube shows as an oval of its own width, smeared along
    its course by what the slab holds of it. For wide tubes (airways, the aorta) at any angle; the
    capsule painter's sweep widens a tube by its radius along its course, which suits only small vessels.
    """
    dz = grid.spacing[0]
    half = 0.5 * dz
    n_sub = max(int(math.ceil(dz / 0.75)), 1)
    offsets = (np.arange(n_sub) + 0.5) / n_sub * dz - half
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    radius = np.broadcast_to(np.asarray(radius, float), (len(p0),))
    lo = np.minimum(p0, p1) - (radius + e_mm)[:, None]
    hi = np.maximum(p0, p1) + (radius + e_mm)[:, None]
    for k in range(grid.shape[0]):
        zc = float(grid.z_mm[k])
        near = np.nonzero((lo[:, 0] <= zc + half) & (hi[:, 0] >= zc - half))[0]
        if near.size == 0:
            continue
        box = grid.box(np.array([zc, lo[near, 1].min(), lo[near, 2].min()]),
                       np.array([zc, hi[near, 1].max(), hi[near, 2].max()]))
        if box is None:
            continue
        ys, xs = grid.y_mm[box[1]].astype(np.float32), grid.x_mm[box[2]].astype(np.float32)
        sd = np.full((n_sub, ys.size, xs.size), np.inf, np.float32)  # distance to the tube's surface (< 0 inside)
        for i in near:
            a, d, r = p0[i], p1[i] - p0[i], radius[i]
            sub = grid.box(np.array([zc, lo[i, 1], lo[i, 2]]), np.array([zc, hi[i, 1], hi[i, 2]]))
            if sub is None:
                continue
            yy = slice(sub[1].start - box[1].start, sub[1].stop - box[1].start)
            xx = slice(sub[2].start - box[2].start, sub[2].stop - box[2].start)
            Y = (ys[yy] - a[1])[None, :, None]
            X = (xs[xx] - a[2])[None, None, :]
            Z = (zc + offsets - a[0]).astype(np.float32)[:, None, None]
            L2 = float(d @ d)
            t = np.clip((Z * d[0] + Y * d[1] + X * d[2]) / L2, 0.0, 1.0) if L2 > 1e-12 else np.zeros((1, 1, 1))
            dist = np.sqrt((Z - t * d[0]) ** 2 + (Y - t * d[1]) ** 2 + (X - t * d[2]) ** 2) - np.float32(r)
            np.minimum(sd[:, yy, xx], dist, out=sd[:, yy, xx])
        if not np.isfinite(sd).any():
            continue
        alpha = _ramp(sd, 0.0, e_mm).mean(axis=0)
        img = vol[k, box[1], box[2]]
        img += alpha * (np.float32(value) - img)
        if tis is not None:
            tis[k, box[1], box[2]][alpha > 0.5] = code


def polyline_segments(points: np.ndarray, radius: np.ndarray, step_mm: float = 3.0):
    """Split a finely sampled centre line (N, 3) into ~``step_mm`` segments: (p0, p1, radius)."""
    n = len(points)
    stride = max(int(round(step_mm / 0.5)), 1)
    idx = np.unique(np.concatenate([np.arange(0, n, stride), [n - 1]]))
    return points[idx[:-1]], points[idx[1:]], 0.5 * (radius[idx[:-1]] + radius[idx[1:]])


def _paint_lung_vessels(vol, tis, grid, rng, hu_of, sets, heart, e_mm) -> None:
    ai, bi = sets["inner"]
    n = 70
    p0s, p1s, rads = [], [], []
    z0, z1 = grid.z_mm[0], grid.z_mm[-1]
    for side in (-1.0, 1.0):
        hilum = np.array([heart.aortic_root[0] - 10.0, 10.0, side * 45.0 + 10.0])
        for _ in range(n // 2):
            # from near the hilum outward, random direction in the lung
            d = _unit(np.array([rng.uniform(-0.6, 0.6), rng.uniform(-0.8, 0.8), side * rng.uniform(0.4, 1.0)]))
            start = hilum + rng.uniform(10.0, 60.0) * d + np.array([rng.uniform(-40, 40), 0, 0])
            length = rng.uniform(15.0, 45.0)
            r0 = rng.uniform(0.7, 2.6)
            mid = start + 0.5 * length * _unit(d + rng.normal(0, 0.15, 3))
            end = mid + 0.5 * length * _unit(d + rng.normal(0, 0.25, 3))
            if max(start[0], end[0]) < z0 or min(start[0], end[0]) > z1:
                continue
            p0s += [start, mid]
            p1s += [mid, end]
            rads += [r0, max(0.5, 0.7 * r0)]
    if p0s:
        _paint_capsules(vol, tis, grid, np.array(p0s), np.array(p1s), np.array(rads), hu_of["lung_vessel"],
                        TISSUES["lung_vessel"], e_mm, only_hu_below=-500.0)
