"""Exams reconstructed with a sharper kernel than calcium scoring's: what the noise line catches and what
it lets through.

A sharp (edge-enhancing) kernel raises the noise and puts an overshoot on every edge: calcium peaks rise,
bone and calcium get bright rims, and the Agatston score itself reads higher on the same calcium. The
pipeline refuses exams above 65 HU of noise (``agatax.quality.check_noise``); this draws J3 exams once and
sharpens each in-plane by an unsharp mask of strength ``a`` (``hu + a (hu - G_sigma * hu)``, sigma 0.8 mm,
rounded to whole HU), the edge boost of sharp kernels, then scores every version with the same ensemble
(experiments/table1.py's evaluation: chest localisation on, the object rule, host scoring). The reference
is each exam's Agatston on its own (standard) kernel, as clinical calcium scoring defines it; the Agatston
of the true mask on the sharpened exam shows what the kernel alone does to the score.

    python experiments/sharp_kernel.py --weights agatax/weights/default_ensemble.msgpack --seed 41 --scale 0.5

Prints one Markdown row per strength and writes <workdir>/sharp_kernel.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

import table1  # noqa: E402

from agatax._atomic import atomic_write_text  # noqa: E402
from agatax.ensemble import load_ensemble  # noqa: E402
from agatax.quality import image_noise_hu, refuse_noise_hu  # noqa: E402
from agatax.scoring import compute_scores, risk_category  # noqa: E402

SIGMA_MM = 0.8
ORDER = "ABCDE"


def sharpen(hu: np.ndarray, spacing, strength: float, sigma_mm: float = SIGMA_MM) -> np.ndarray:
    """(z, y, x) HU -> the same sharpened in-plane by an unsharp mask (``hu + strength (hu - G * hu)``, G a
    Gaussian of ``sigma_mm``, edges repeated), rounded to whole HU as scanners store them; float32."""
    from scipy import ndimage

    if strength == 0:
        return np.asarray(hu, np.float32)
    hu = np.asarray(hu, np.float64)
    blur = ndimage.gaussian_filter(hu, (0.0, sigma_mm / spacing[1], sigma_mm / spacing[2]), mode="nearest")
    return np.round(hu + strength * (hu - blur)).astype(np.float32)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True, help="ensemble file")
    ap.add_argument("--seed", type=int, default=41, help="J3 draw")
    ap.add_argument("--scale", type=float, default=0.5, help="J3 size factor (1 = 98 exams)")
    ap.add_argument("--matrix", type=int, default=512)
    ap.add_argument("--strengths", default="0,0.5,1,2", help="unsharp-mask strengths, comma-separated")
    ap.add_argument("--workdir", default=str(ROOT / "experiments" / "_table1_work"))
    args = ap.parse_args(argv)
    strengths = [float(v) for v in args.strengths.split(",")]
    ens = load_ensemble(args.weights)
    line = refuse_noise_hu(ens.config.trained_noise_hu)
    n = table1.cohort_size("J3", args.scale)
    t0 = time.perf_counter()
    exams = list(table1.generate("J3", n, args.seed, {"matrix": args.matrix}))
    print(f"{n} J3 exams (seed {args.seed}, matrix {args.matrix}) in {time.perf_counter() - t0:.0f} s; "
          f"device {table1.device_description()}", flush=True)
    print("| strength | noise measured (median, range) | refused (> {:.0f} HU) | C-index | accuracy | accuracy, exams "
          "not refused | 2+ categories off, not refused | lower / higher | true mask's Agatston / reference "
          "(median) | the true mask's category right | ensemble's category = the true mask's | lesion sens / PPV "
          "|".format(line))
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    results = {}
    for a in strengths:
        sharp = [dataclasses.replace(e, volume=e.volume.replace(hu=sharpen(e.volume.hu, e.volume.spacing, a)))
                 for e in exams]
        noise = np.array([image_noise_hu(e.volume.hu, e.volume.spacing) or np.nan for e in sharp])
        refused = noise > line
        ev = table1.evaluate(ens, sharp)
        ref = np.array(ev["reference_scores"])
        got = np.array(ev["ensemble_scores"])
        diff = np.array([ORDER.index(risk_category(p)) - ORDER.index(risk_category(r)) for p, r in zip(got, ref)])
        kept = ~refused
        own = np.array([compute_scores(e.volume.hu, e.mask, e.volume.spacing).agatston for e in sharp])
        ratio = float(np.median(own[ref > 0] / ref[ref > 0])) if (ref > 0).any() else float("nan")
        # the kernel alone (the true calcium scored on the sharpened exam), and the networks against that
        own_right = float(np.mean([risk_category(o) == risk_category(r) for o, r in zip(own, ref)]))
        agree_own = float(np.mean([risk_category(p) == risk_category(o) for p, o in zip(got, own)]))
        les = ev["lesions"]
        row = {"strength": a, "noise_hu": noise.tolist(), "refused": int(refused.sum()),
               "c_index": ev["ensemble_c_index"], "accuracy": ev["ensemble_accuracy"],
               "accuracy_not_refused": float(np.mean(diff[kept] == 0)) if kept.any() else None,
               "off2_not_refused": int((np.abs(diff[kept]) >= 2).sum()), "lower": int((diff[kept] < 0).sum()),
               "higher": int((diff[kept] > 0).sum()), "true_mask_ratio": ratio, "true_mask_accuracy": own_right,
               "ensemble_vs_true_mask_accuracy": agree_own, "lesions": les,
               "ensemble_scores": got.tolist(), "reference_scores": ref.tolist(), "true_mask_scores": own.tolist()}
        results[str(a)] = row
        acc_kept = "-" if row["accuracy_not_refused"] is None else f"{row['accuracy_not_refused']:.3f}"
        print(f"| {a:g} | {np.nanmedian(noise):.1f} ({np.nanmin(noise):.1f}-{np.nanmax(noise):.1f}) | "
              f"{row['refused']} of {n} | {ev['ensemble_c_index']:.3f} | {ev['ensemble_accuracy']:.3f} | {acc_kept} | "
              f"{row['off2_not_refused']} | {row['lower']} / {row['higher']} | {ratio:.2f} | {own_right:.3f} | "
              f"{agree_own:.3f} | "
              f"{les['sensitivity']:.3f} / {les['ppv']:.3f} |", flush=True)
        del sharp
    out = Path(args.workdir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "sharp_kernel.json", json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
