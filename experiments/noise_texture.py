"""Does the real scanner's noise texture change the scores? Lateral streaks (``noise_streak``) against the
isotropic grain the networks were trained on, same exams otherwise. With ``--texture T``: the structure of
fat and soft tissue instead (``tissue_texture``: septa, small vessels, a slow drift) against flat tissue.

The real phantom's noise is correlated along the patient's width far longer than across it (its fit:
``noise_streak=0.3``, experiments/REALISM.md); the generator draws isotropic grain unless asked. This draws
the same J3 exams (seed, matrix) and calcium-free exams of both protocols twice, with the texture as drawn
and with the streak share given, at the same noise SD, and scores both with the same ensemble:

    python experiments/noise_texture.py --weights agatax/weights/default_ensemble.msgpack --seed 10 --matrix 512
    python experiments/noise_texture.py --weights agatax/weights/default_ensemble.msgpack --seed 48 --texture 1
    python experiments/noise_texture.py --weights agatax/weights/default_ensemble.msgpack --seed 48 --exams 49 \
        --variant heart_axis_spread=1,heart_tilt_spread=2.5 --skip-plain   # the heart's tilt alone

J3 goes through experiments/table1.py's evaluation (chest localisation on, the object rule, host scoring),
the calcium-free exams through ``agatax.run_pipeline`` (experiments/false_calcium.py). Prints Markdown rows
and writes <workdir>/noise_texture.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

import false_calcium  # noqa: E402
import table1  # noqa: E402

from agatax._atomic import atomic_write_text  # noqa: E402
from agatax.ensemble import load_ensemble  # noqa: E402
from agatax.synthetic import generate_exam  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True, help="ensemble file")
    ap.add_argument("--seed", type=int, default=10, help="J3 draw")
    ap.add_argument("--scale", type=float, default=1.0, help="J3 size factor (1 = 98 exams)")
    ap.add_argument("--matrix", type=int, default=512)
    ap.add_argument("--streak", type=float, default=0.3, help="share of the noise variance in horizontal streaks")
    ap.add_argument("--texture", type=float, default=None,
                    help="instead of streaks: tissue_texture (0-1; septa, small vessels, drift in fat and soft tissue)")
    ap.add_argument("--variant", default=None,
                    help="NAME=VALUE[,NAME=VALUE...]: instead of streaks, any generate_exam options (e.g. "
                         "heart_axis_spread=2.5 or heart_axis_spread=1,heart_tilt_spread=2.5)")
    ap.add_argument("--plain", type=float, default=None,
                    help="the options' value in the first row (default: what the shipped networks were trained on)")
    ap.add_argument("--skip-plain", action="store_true",
                    help="score only the variant (the draws as trained were scored by an earlier run: same seeds)")
    ap.add_argument("--exams", type=int, default=None, help="only the first N exams of the J3 draw")
    ap.add_argument("--calcium-free", type=int, default=8, help="calcium-free exams per protocol")
    ap.add_argument("--first-seed", type=int, default=7900, help="calcium-free seeds first-seed ..")
    ap.add_argument("--workdir", default=str(ROOT / "experiments" / "_table1_work"))
    args = ap.parse_args(argv)
    n = table1.cohort_size("J3", args.scale)
    first = n if args.exams is None else min(n, args.exams)
    if args.variant is not None:  # NAME=VALUE[,NAME=VALUE...]
        pairs = [item.partition("=") for item in args.variant.split(",")]
        if not all(k.strip() and eq for k, eq, _ in pairs):
            ap.error(f"--variant takes NAME=VALUE[,NAME=VALUE...], got {args.variant!r}")
        variant = {k.strip(): float(v) for k, _, v in pairs}
    else:
        variant = {"noise_streak": args.streak} if args.texture is None else {"tissue_texture": args.texture}
    # the options' values in the draws the networks were trained on (generator version 8's turn of the heart)
    trained = {"heart_axis_spread": 1.0, "heart_tilt_spread": 1.0}
    plain = {k: trained.get(k, 0.0) if args.plain is None else args.plain for k in variant}
    ens = load_ensemble(args.weights)
    results = {}
    print(f"device {table1.device_description()}; J3 seed {args.seed}, {first} of {n} exams, matrix {args.matrix}",
          flush=True)
    print("| texture | J3 C-index | J3 accuracy | lesion sens / PPV / F1 | planted lesions found | calcium-free >= 10: "
          "cardiac / chest |")
    print("|---|---|---|---|---|---|")
    for extra in ((variant,) if args.skip_plain else (plain, variant)):
        t0 = time.perf_counter()
        exams = table1.generate("J3", n, args.seed, {"matrix": args.matrix, **extra})
        ev = table1.evaluate(ens, [next(exams) for _ in range(first)])
        free = {}
        for protocol in ("cardiac", "chest"):
            exams = (generate_exam(args.first_seed + i, target_category="A", protocol=protocol, matrix=args.matrix,
                                   **extra) for i in range(args.calcium_free))
            free[protocol] = false_calcium.score(ens, exams)
        les, pl = ev["lesions"], ev["planted_lesions"]
        label = ", ".join(f"{k} {v:g}" for k, v in extra.items())
        tag = ("as trained" if extra == plain else f"horizontal streaks, share {extra['noise_streak']:g}"
               if "noise_streak" in extra else label)
        print(f"| {tag} | {ev['ensemble_c_index']:.3f} | {ev['ensemble_accuracy']:.3f} | {les['sensitivity']:.3f} / "
              f"{les['ppv']:.3f} / {les['f1']:.3f} | {pl['found']} of {pl['planted']} | "
              f"{free['cardiac']['at_least_10']} / {free['chest']['at_least_10']} "
              f"(of {args.calcium_free} each) |", flush=True)
        results[label] = {"J3": ev, "calcium_free": free, "seconds": time.perf_counter() - t0}
    out = Path(args.workdir)
    out.mkdir(parents=True, exist_ok=True)
    name = "noise_texture.json" if "noise_streak" in variant else "+".join(variant) + ".json"
    atomic_write_text(out / name, json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
