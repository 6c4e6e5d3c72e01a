"""Structure inside soft tissue and fat that is not image noise.

The generator paints each tissue at one HU per patient, so that between organs an exam is flat up to its
noise. A real chest is not: fat holds fibrous septa and small vessels (in the epicardial fat the small
branches of the coronary arteries and veins, in the mediastinum the pericardiophrenic and internal thoracic
vessels, in subcutaneous fat the septa), and a tissue's attenuation drifts across the body by a few HU (fat
content, perivascular fat denser than distant fat, hematocrit). ``tissue_texture`` draws all three from
smooth random fields of the noise-free anatomy:

- a slow drift in soft tissue and fat: SD ``DRIFT_HU`` x t HU, correlated over ~10-25 mm;
- septa in fat: sheets ~0.5-1 mm thick, up to ``SEPTUM_HU`` x t HU over the fat (fat-soft-tissue partial
  volume), where one field crosses zero;
- small vessels in fat: tortuous tubes of radius ~0.4-0.9 mm, up to ``VESSEL_HU`` x t HU over the fat
  (soft tissue at the core), where two fields cross zero together.

Nothing is added outside fat and soft tissue (air, lung, bone, calcium), and no voxel is raised to 130 HU or
above: the texture never makes calcium or bone. Sources and the look beside the real phantom:
experiments/REALISM.md.
"""

from __future__ import annotations

import numpy as np

__all__ = ["tissue_texture", "DRIFT_HU", "SEPTUM_HU", "VESSEL_HU"]

DRIFT_HU = 8.0  # SD of a tissue's slow drift across the body at t = 1
SEPTUM_HU = 45.0  # a septum's peak over the fat at t = 1 (a 0.5-1 mm sheet of soft tissue, partial volume)
VESSEL_HU = 120.0  # a small vessel's core over the fat at t = 1 (-100 HU fat -> ~20 HU)
_COARSE_MM = 1.0  # the fields are drawn on this in-plane grid, then interpolated (they vary over >= 3 mm)
_TOP_HU = 100.0  # no voxel is pushed above this (well under the 130 HU calcium threshold)


def _field(shape, sigma_vox, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-SD float32 Gaussian random field, smoothed by a Gaussian of ``sigma_vox`` (z, y, x)."""
    from scipy import ndimage

    f = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma_vox, mode="wrap")
    f -= np.float32(f.mean())
    f *= np.float32(1.0 / max(float(f.std()), 1e-12))
    return f


def _up(f: np.ndarray, shape) -> np.ndarray:
    """Coarse (z, ny, nx) -> (z, Y, X) by linear interpolation in-plane."""
    from scipy import ndimage

    zoom = (1.0, shape[1] / f.shape[1], shape[2] / f.shape[2])
    out = ndimage.zoom(f, zoom, order=1, mode="nearest", grid_mode=True)
    return out[:, :shape[1], :shape[2]]


def tissue_texture(vol: np.ndarray, spacing, t: float, rng: np.random.Generator) -> np.ndarray:
    """Texture to add to a noise-free anatomy (see the module's docstring).

    Args:
        vol: float32 (z, y, x) noise-free HU (the anatomy before noise and calcium).
        spacing: (dz, dy, dx) mm.
        t: strength in [0, 1] (0: nothing; every amplitude scales with it).
        rng: the exam's texture stream.

    Returns:
        float32 (z, y, x) HU to add: 0 outside fat (-250 to -20 HU) and soft tissue (-20 to 100 HU), and
        nowhere taking a voxel above 100 HU.
    """
    vol = np.asarray(vol, np.float32)
    out = np.zeros(vol.shape, np.float32)
    if t <= 0.0 or vol.size == 0:
        return out
    dz, dy, dx = (float(s) for s in spacing)
    coarse = (vol.shape[0], max(int(round(vol.shape[1] * dy / _COARSE_MM)), 4),
              max(int(round(vol.shape[2] * dx / _COARSE_MM)), 4))
    cy, cx = vol.shape[1] * dy / coarse[1], vol.shape[2] * dx / coarse[2]

    def sig(mm):
        return (mm / dz, mm / cy, mm / cx)

    # where fat is (full weight -200 to -60 HU) and where soft tissue is (-20 to 90 HU), ramps between
    fat = np.clip((vol + 250.0) / 50.0, 0.0, 1.0) * np.clip((-20.0 - vol) / 40.0, 0.0, 1.0)
    soft = np.clip((vol + 60.0) / 40.0, 0.0, 1.0) * np.clip((110.0 - vol) / 20.0, 0.0, 1.0)
    # a slow drift of every soft tissue and fat
    drift = _up(_field(coarse, sig(float(rng.uniform(5.0, 12.0))), rng), vol.shape)
    np.clip(drift, -3.0, 3.0, out=drift)
    out += np.float32(DRIFT_HU * t) * drift * np.maximum(fat, soft)
    # septa: a thin sheet where one field crosses zero
    # (a field smoothed by a Gaussian of sigma s mm changes by 1 SD over ~1.4 s mm: a profile
    # exp(-f^2 / 2w^2) is ~1.4 s w mm wide on either side of the zero)
    s = float(rng.uniform(4.5, 7.0))
    w = float(rng.uniform(0.25, 0.5)) / (1.41 * s)
    f = _up(_field(coarse, sig(s), rng), vol.shape)
    out += np.float32(SEPTUM_HU * t * rng.uniform(0.5, 1.0)) * np.exp(f * f * np.float32(-0.5 / w**2)) * fat
    # small vessels: tubes where two fields cross zero together
    s = float(rng.uniform(3.0, 4.5))
    w = float(rng.uniform(0.4, 0.9)) / (1.41 * s)
    f1 = _up(_field(coarse, sig(s), rng), vol.shape)
    f2 = _up(_field(coarse, sig(s), rng), vol.shape)
    f1 *= f1
    f1 += f2 * f2
    out += np.float32(VESSEL_HU * t * rng.uniform(0.6, 1.0)) * np.exp(f1 * np.float32(-0.5 / w**2)) * fat
    # no voxel raised above _TOP_HU (outside fat and soft tissue every term above is 0 already)
    np.minimum(out, np.maximum(np.float32(_TOP_HU) - vol, 0.0), out=out)
    return out

