"""Realism check of agatax.synthetic: HU of each tissue class beside published non-contrast values, where
the voxels >= 130 HU come from (coronary calcium vs bone, aorta, valves, metal, noise), and the synthetic
exams side by side with the real phantom series as the network sees them (3 mm grid) with their noise
texture.

    python3 experiments/realism.py [--exams 10] [--out experiments] [--phantom ../shared/data/qrm-phantom-canon/dicom]

Writes realism_table.md and realism_texture.md (pasted into REALISM.md), realism_histograms.png,
example_montage.png and network_view.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from agatax.synthetic import CATEGORIES, DISTRACTOR_CODES, TISSUES, generate_exam, render_montage

# Published non-contrast CT attenuation ranges (HU, 120 kV), see REALISM.md for the sources.
PUBLISHED = {
    "fat": (-120, -50), "epicardial_fat": (-120, -50), "lung": (-900, -700), "muscle": (35, 60),
    "myocardium": (30, 50), "blood": (30, 50), "liver": (50, 70), "trabecular_bone": (150, 400),
    "cortical_bone": (700, 1900), "csf": (0, 15), "disc": (60, 110),
}


PHANTOM = Path(__file__).resolve().parents[2] / "shared" / "data" / "qrm-phantom-canon" / "dicom"


def noise_texture(patch: np.ndarray, pixel_mm: float) -> tuple[float, list[float]]:
    """Noise SD (HU) and its in-plane autocorrelation at 0.5, 1, 1.5, 2 and 3 mm of a uniform patch (y, x),
    after removing the slow trend (15-pixel box mean)."""
    from scipy import ndimage

    p = patch.astype(np.float64)
    p = (p - ndimage.uniform_filter(p, 15))[8:-8, 8:-8]
    acf = []
    for mm in (0.5, 1.0, 1.5, 2.0, 3.0):
        lag = max(1, int(round(mm / pixel_mm)))
        acf.append(float((p[:, lag:] * p[:, :-lag]).mean() / p.var()))
    return float(p.std()), acf


def compare_with_phantom(phantom_dir: Path, out: Path) -> None:
    """network_view.png (HU and network input, phantom and synthetic) and realism_texture.md."""
    from scipy import ndimage

    from agatax import preprocess, read_volume
    from agatax.preprocess import network_grid_mm

    vol = read_volume(phantom_dir)
    rows = ["| series | noise SD (HU) | autocorrelation at 0.5 / 1 / 1.5 / 2 / 3 mm |", "|---|---|---|"]
    for z in (8, 10, 12):  # slices of the phantom's uniform 'heart' cylinder without inserts
        sd, acf = noise_texture(vol.hu[z, 190:290, 200:310], vol.spacing[1])
        rows.append(f"| real phantom, slice {z} (Canon FC12, 0.49 mm) | {sd:.1f} | {' / '.join(f'{a:.2f}' for a in acf)} |")
    shown = [("real phantom (Canon, 3 mm)", vol, 23)]
    for seed, kw in ((1003, {"protocol": "cardiac", "padding_hu": -2048.0}), (1004, {"protocol": "cardiac"}),
                     (1005, {"protocol": "chest"})):
        ex = generate_exam(seed, target_category="D", keep_tissue=True, **kw)
        k = int(np.argmax((ex.mask > 0).sum((1, 2))))
        shown.append((f"synthetic {ex.params['scanner']['protocol']}, seed {seed}", ex.volume, k))
        # the largest square inside the heart (blood and myocardium: one uniform tissue without contrast)
        edt = ndimage.distance_transform_edt(np.isin(ex.tissue[k], [TISSUES["blood"], TISSUES["myocardium"]]))
        cy, cx = np.unravel_index(int(np.argmax(edt)), edt.shape)
        n = int(min(edt.max() / 1.45, 20.0 / ex.volume.spacing[1]))
        if n >= 16:
            sd, acf = noise_texture(ex.volume.hu[k, cy - n:cy + n, cx - n:cx + n], ex.volume.spacing[1])
            sc = ex.params["scanner"]
            rows.append(f"| synthetic seed {seed} (noise {sc['noise_sigma_hu']:.0f} HU, sharpness {sc['sharpness']:.2f}, "
                        f"{ex.volume.spacing[1]:.2f} mm) | {sd:.1f} | {' / '.join(f'{a:.2f}' for a in acf)} |")
    (out / "realism_texture.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(shown), figsize=(4.2 * len(shown), 8.6))
    for j, (title, v, k) in enumerate(shown):
        axes[0, j].imshow(v.hu[k], cmap="gray", vmin=-300, vmax=800)
        axes[0, j].set_title(f"{title}\nslice {k}, HU -300..800", fontsize=9)
        x = np.asarray(preprocess(v.hu, v.spacing))
        g = network_grid_mm(v.spacing[0])  # the networks' isotropic grid (3 mm for 5 mm slices)
        kz = min(int(round((k + 0.5) * v.spacing[0] / g - 0.5)), x.shape[0] - 1)
        axes[1, j].imshow(x[kz], cmap="gray", vmin=0, vmax=1)
        axes[1, j].set_title(f"network input ({g:g} mm grid, [0, 1])", fontsize=9)
    for a in axes.ravel():
        a.axis("off")
    fig.tight_layout()
    fig.savefig(out / "network_view.png", dpi=70)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--exams", type=int, default=10)
    ap.add_argument("--out", default=str(Path(__file__).parent))
    ap.add_argument("--phantom", default=str(PHANTOM), help="real CT series to compare with (skipped if absent)")
    args = ap.parse_args()
    out = Path(args.out)
    if Path(args.phantom).is_dir():
        compare_with_phantom(Path(args.phantom), out)
    stats = {k: [] for k in PUBLISHED}
    hist = {k: np.zeros(300, np.int64) for k in PUBLISHED}
    edges = np.linspace(-1100, 1900, 301)
    sources = {k: 0 for k in ["coronary", *DISTRACTOR_CODES, "noise / other"]}
    noise = []
    for i in range(args.exams):
        cat = CATEGORIES[i % 5]
        ex = generate_exam(1000 + i, target_category=cat, keep_tissue=True)
        hu, tis = ex.volume.hu, ex.tissue
        for name in PUBLISHED:
            v = hu[tis == TISSUES[name]]
            if v.size:
                stats[name].append(v)
                hist[name] += np.histogram(v, edges)[0]
        bright = hu >= 130
        sources["coronary"] += int((bright & (ex.mask > 0)).sum())
        rest = bright & (ex.mask == 0)
        for kind, code in DISTRACTOR_CODES.items():
            sources[kind] += int((rest & (ex.distractor_mask == code)).sum())
        sources["noise / other"] += int((rest & (ex.distractor_mask == 0)).sum())
        noise.append(ex.params["scanner"]["noise_sigma_hu"])
        if i == 3:
            render_montage(ex, path=out / "example_montage.png", max_slices=12)
        print(f"exam {i}: category {ex.category}, Agatston {ex.agatston:.1f}, {len(ex.lesions)} lesions, "
              f"{len(ex.distractors)} distractors, noise {noise[-1]:.1f} HU")
    lines = ["| tissue | synthetic mean HU | synthetic SD | 5-95 % | published range |", "|---|---|---|---|---|"]
    for name, (lo, hi) in PUBLISHED.items():
        if not stats[name]:
            continue
        v = np.concatenate(stats[name])
        p5, p95 = np.percentile(v, [5, 95])
        lines.append(f"| {name} | {v.mean():.0f} | {v.std():.0f} | {p5:.0f} to {p95:.0f} | {lo} to {hi} |")
    total = sum(sources.values())
    lines += ["", "| voxels >= 130 HU | share |", "|---|---|"]
    for k, n in sources.items():
        lines.append(f"| {k} | {100.0 * n / total:.2f} % |")
    lines.append(f"| not coronary calcium (all but the first row) | {100.0 * (total - sources['coronary']) / total:.2f} % |")
    lines.append("")
    lines.append(f"{args.exams} exams (seeds 1000..{999 + args.exams}, categories A-E in turn), image noise "
                 f"{min(noise):.0f}-{max(noise):.0f} HU.")
    text = "\n".join(lines)
    (out / "realism_table.md").write_text(text + "\n")
    print(text)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(3, 4, figsize=(14, 9))
    centers = 0.5 * (edges[1:] + edges[:-1])
    for ax, (name, (lo, hi)) in zip(axes.ravel(), PUBLISHED.items()):
        h = hist[name]
        if h.sum() == 0:
            continue
        sel = h > h.max() * 1e-3
        ax.plot(centers[sel], h[sel] / h.sum())
        ax.axvspan(lo, hi, color="orange", alpha=0.25, label="published")
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    axes.ravel()[0].legend(fontsize=7)
    axes.ravel()[-1].axis("off")
    fig.suptitle("Synthetic HU per tissue (line) vs published non-contrast range (band)")
    fig.tight_layout()
    fig.savefig(out / "realism_histograms.png", dpi=80)


if __name__ == "__main__":
    main()
