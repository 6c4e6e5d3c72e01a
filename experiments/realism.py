"""Realism check of agatax.synthetic: HU of each tissue class beside published non-contrast values, and where
the voxels >= 130 HU come from (coronary calcium vs bone, aorta, valves, noise).

    python3 experiments/realism.py [--exams 10] [--out experiments]

Writes realism_table.md (pasted into REALISM.md), realism_histograms.png and example_montage.png.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--exams", type=int, default=10)
    ap.add_argument("--out", default=str(Path(__file__).parent))
    args = ap.parse_args()
    out = Path(args.out)
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
