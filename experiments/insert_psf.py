"""How the real scanner blurs calcium: the QRM phantom's inserts fitted with the generator's blur model.

The phantom's six larger calcium inserts are cylinders of known size (diameter = length: 5 mm "large", 3 mm
"medium") at three densities. On each insert's brightest slice the in-plane HU is fitted by a uniform disc
of free radius and height convolved with an isotropic Gaussian PSF (the generator's in-plane model,
``agatax.synthetic.anatomy.ScannerParams.psf_sigma_mm``); along z, the central pixels' HU per slice is
fitted by a rod of the insert's length averaged over the slice thickness and blurred by a Gaussian (the
generator's slice profile, ``calcium.render_atoms``: a box of the thickness and a 0.35 mm Gaussian). A
model that fits to within the image noise, and returns the inserts' true radii, measures the real PSF.

    python experiments/insert_psf.py

The phantom is read from $AGATAX_SHARED/data/qrm-phantom-canon, else ../shared beside the checkout.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage, optimize, special

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = Path(os.environ.get("AGATAX_SHARED") or ROOT.parent / "shared")
INSERT_MM = {"large": 5.0, "medium": 3.0}  # diameter = length of the QRM cardiac inserts


def disc_profile(r_mm: np.ndarray, radius_mm: float, psf_mm: float, fine_mm: float = 0.04) -> np.ndarray:
    """Share of a uniform disc's height at distances ``r_mm`` from its centre once blurred by an isotropic
    2D Gaussian of sigma ``psf_mm`` (numerical, on a ``fine_mm`` grid)."""
    half = radius_mm + 6.0 * psf_mm + 1.0
    x = np.arange(-half, half + fine_mm, fine_mm)
    disc = (x[:, None] ** 2 + x[None, :] ** 2 <= radius_mm**2).astype(np.float64)
    k = np.arange(-4.0 * psf_mm, 4.0 * psf_mm + fine_mm, fine_mm)
    g = np.exp(-0.5 * (k / psf_mm) ** 2)
    blurred = ndimage.convolve1d(ndimage.convolve1d(disc, g / g.sum(), axis=0), g / g.sum(), axis=1)
    mid = len(x) // 2
    return np.interp(r_mm, x[mid:], blurred[mid, mid:])


def fit_disc(patch: np.ndarray, pixel_mm: float, own: np.ndarray, avoid: np.ndarray | None = None,
             within_mm: float = 6.0) -> dict:
    """Fit background + height * disc(radius) blurred by a Gaussian PSF to one slice's ``patch`` (HU, (y, x)).

    own: bool (y, x) the insert's pixels >= 130 HU (its centre: their HU-weighted centroid above 130 HU);
    avoid: bool (y, x) pixels to leave out (other inserts). Background: the median 7-12 mm from the centre.
    Returns {"psf_mm", "radius_mm", "height_hu", "background_hu", "rms_hu", "noise_hu", "area_mm2"} (area:
    pixels >= 130 HU of ``own``)."""
    avoid = np.zeros(patch.shape, bool) if avoid is None else avoid
    w = np.clip(patch - 130.0, 0.0, None) * own
    yy, xx = np.mgrid[0:patch.shape[0], 0:patch.shape[1]]
    cy, cx = (w * yy).sum() / w.sum(), (w * xx).sum() / w.sum()
    r = np.hypot(yy - cy, xx - cx) * pixel_mm
    ring = patch[(r > 7.0) & (r < 12.0) & ~avoid]
    background = float(np.median(ring))
    use = (r < within_mm) & ~avoid

    def resid(t):
        height, psf, radius = t
        return background + height * disc_profile(r[use], radius, psf) - patch[use]

    start = float(patch[own].max()) - background
    fits = [optimize.least_squares(resid, [start, p0, r0], bounds=([0.0, 0.1, 0.3], [5000.0, 3.0, 5.0]),
                                   diff_step=0.05)
            for p0 in (0.3, 0.8, 1.5) for r0 in (1.0, 2.5)]
    best = min(fits, key=lambda f: f.cost)
    height, psf, radius = best.x
    return {"psf_mm": float(psf), "radius_mm": float(radius), "height_hu": float(height),
            "background_hu": background, "rms_hu": float(np.sqrt(np.mean(best.fun**2))),
            "noise_hu": float(np.std(ring)), "area_mm2": float((own & (patch >= 130.0)).sum() * pixel_mm**2)}


def rod_in_slices(z_mm: np.ndarray, centre_mm: float, length_mm: float, thickness_mm: float, sigma_mm: float) -> np.ndarray:
    """Share of a rod's height seen by slices centred at ``z_mm``: the rod [centre -+ length / 2] blurred by
    a Gaussian of ``sigma_mm`` and averaged over each slice's ``thickness_mm`` (closed form)."""
    def integral(u):  # integral of Phi(t / s) dt up to u
        return u * special.ndtr(u / sigma_mm) + sigma_mm * np.exp(-0.5 * (u / sigma_mm) ** 2) / np.sqrt(2.0 * np.pi)

    a = z_mm - centre_mm + length_mm / 2.0
    b = z_mm - centre_mm - length_mm / 2.0
    t = thickness_mm / 2.0
    return (integral(a + t) - integral(a - t) - integral(b + t) + integral(b - t)) / thickness_mm


def fit_slice_profile(z_mm: np.ndarray, profiles: list[np.ndarray], lengths_mm: list[float],
                      thickness_mm: float) -> dict:
    """One centre (the inserts lie in one plane) and one z blur for all rods, a height per rod, fitted to
    their per-slice HU above background. Returns {"z_sigma_mm", "centre_mm", "heights_hu", "rms_hu"}."""
    def resid(t):
        centre, sigma, *heights = t
        return np.concatenate([h * rod_in_slices(z_mm, centre, L, thickness_mm, sigma) - p
                               for h, L, p in zip(heights, lengths_mm, profiles)])

    c0 = float(z_mm[int(np.argmax(profiles[0]))])
    h0 = [float(p.max()) for p in profiles]
    fits = [optimize.least_squares(resid, [c0, s0, *h0],
                                   bounds=([z_mm[0], 0.05] + [0.0] * len(h0), [z_mm[-1], 5.0] + [5000.0] * len(h0)))
            for s0 in (0.3, 1.0, 2.0)]
    best = min(fits, key=lambda f: f.cost)
    return {"z_sigma_mm": float(best.x[1]), "centre_mm": float(best.x[0]),
            "heights_hu": [float(h) for h in best.x[2:]], "rms_hu": float(np.sqrt(np.mean(best.fun**2)))}


def find_inserts(hu: np.ndarray, *, min_voxels: int = 30, max_voxels: int = 5000, min_peak_hu: float = 250.0):
    """The phantom's larger inserts: 3D objects >= 130 HU (26-connected) of ``min_voxels``-``max_voxels``
    voxels peaking at ``min_peak_hu`` or more, as (labels, [(label, voxels, peak HU)]) largest first."""
    lab, n = ndimage.label(hu >= 130.0, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    peaks = ndimage.maximum(hu, lab, np.arange(n + 1))
    keep = [(k, int(sizes[k]), float(peaks[k])) for k in range(1, n + 1)
            if min_voxels <= sizes[k] <= max_voxels and peaks[k] >= min_peak_hu]
    return lab, sorted(keep, key=lambda t: -t[1])


def main(argv=None) -> int:
    import agatax

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phantom", default=str(SHARED / "data" / "qrm-phantom-canon" / "dicom"))
    args = ap.parse_args(argv)
    if not Path(args.phantom).is_dir():
        print(f"phantom series not found at {args.phantom}: set AGATAX_SHARED or --phantom", file=sys.stderr)
        return 2
    vol = agatax.read_volume(args.phantom)
    hu = np.asarray(vol.hu, np.float64)
    dz, px = vol.spacing[0], vol.spacing[1]
    meta = vol.metadata or {}
    print(f"{meta.get('manufacturer')} kernel {meta.get('kernel')}, pixel {px} mm, slices {dz} mm")
    lab, objects = find_inserts(hu)
    # the three largest are the 5 mm inserts, the next three the 3 mm ones (the rod and spine insert are
    # larger than max_voxels, the 1 mm inserts and noise smaller than min_voxels)
    named = [("large", o) for o in objects[:3]] + [("medium", o) for o in objects[3:6]]
    print("| insert (true diameter) | voxels >= 130 HU | peak HU | fitted PSF sigma | fitted radius (true) | "
          "height HU | fit rms / noise SD HU | area >= 130 HU, mm^2 (true) |")
    print("|---|---|---|---|---|---|---|---|")
    profiles, lengths, brightest = [], [], []
    for size, (k, voxels, peak) in named:
        obj = lab == k
        s = int(np.argmax(obj.sum(axis=(1, 2))))
        ys, xs = np.nonzero(obj[s])
        cy, cx = int(round(ys.mean())), int(round(xs.mean()))
        half = int(round(14.0 / px))
        win = (slice(max(cy - half, 0), cy + half), slice(max(cx - half, 0), cx + half))
        patch, own = hu[s][win], obj[s][win]
        others = ndimage.binary_dilation((lab[s][win] > 0) & ~own, iterations=int(round(3.0 / px)))
        f = fit_disc(patch, px, own, others)
        true_r = INSERT_MM[size] / 2.0
        print(f"| {size} ({INSERT_MM[size]:g} mm) | {voxels} | {peak:.0f} | {f['psf_mm']:.2f} mm | "
              f"{f['radius_mm']:.2f} ({true_r:.2f}) mm | {f['height_hu']:.0f} | {f['rms_hu']:.0f} / {f['noise_hu']:.0f} | "
              f"{f['area_mm2']:.1f} ({np.pi * true_r**2:.1f}) |")
        centre = (slice(None), slice(cy - 1, cy + 2), slice(cx - 1, cx + 2))
        profiles.append(hu[centre].mean(axis=(1, 2)) - f["background_hu"])
        lengths.append(INSERT_MM[size])
        brightest.append(s)
    # along z: the slices within 4 of the inserts' brightest (the phantom's ends, air, lie further out)
    near = np.arange(max(min(brightest) - 4, 0), min(max(brightest) + 5, hu.shape[0]))
    z = fit_slice_profile(near * dz, [p[near] for p in profiles], lengths,
                          thickness_mm=float(vol.slice_thickness or dz))
    print(f"slice profile: z blur sigma {z['z_sigma_mm']:.2f} mm on a {dz:g} mm box, rms {z['rms_hu']:.0f} HU "
          f"(heights {', '.join(f'{h:.0f}' for h in z['heights_hu'])} HU)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
