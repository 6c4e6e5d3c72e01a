"""What the noise adaptation costs: ``agatax.run_pipeline`` with ``adapt_noise`` on (shipped) and off, and
choosing the sigma alone (``agatax.quality.input_smoothing_mm``).

    python3 benchmarks/bench_adapt_noise.py [--rounds 7] [--force]

Under benchmarks/protocol.py (refuses a busy machine; variants interleaved). Exams: synthetic, matrix 512, an
E-category cardiac exam at the generator's noise (seed 2: measured, not smoothed) and a C-category cardiac
exam at 46 HU of noise (seed 31: smoothed); the shipped default ensemble. The smoothed exam's first call
compiles the pipeline with the wider enhancement filter; every variant is warmed before timing.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from protocol import Session, command_line  # noqa: E402


def main() -> int:
    args = command_line(__doc__)
    session = Session("the noise adaptation beside run_pipeline", force=args.force)

    from agatax.defaults import load_default_ensemble
    from agatax.pipeline import run_pipeline
    from agatax.quality import input_smoothing_mm
    from agatax.synthetic import generate_exam

    ensemble = load_default_ensemble()
    for name, seed, cat, sd in (("cardiac E", 2, "E", None), ("cardiac C, 46 HU", 31, "C", 46.0)):
        noisy = {} if sd is None else {"noise_sigma_hu": sd}
        volume = generate_exam(seed, target_category=cat, matrix=512, **noisy).volume
        sigma, before, after = input_smoothing_mm(volume.hu, volume.spacing)
        times = session.interleave({
            "run_pipeline, adapt_noise on (shipped)": lambda: run_pipeline(ensemble, volume),
            "run_pipeline, adapt_noise off": lambda: run_pipeline(ensemble, volume, adapt_noise=False),
            "input_smoothing_mm alone": lambda: input_smoothing_mm(volume.hu, volume.spacing),
        }, rounds=args.rounds)
        session.report(times, baseline="run_pipeline, adapt_noise off",
                       shapes={name: volume.shape, "noise HU": round(before, 1),
                               "sigma mm": sigma, "noise after HU": round(after, 1)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
