"""What the category range adds to agatax.run_pipeline: the pipeline with it and with it stubbed out.

    python3 benchmarks/bench_category_range.py [--rounds 7] [--force]

Under benchmarks/protocol.py (refuses a busy machine; variants interleaved). Exams: synthetic, matrix 512, a
cardiac exam (seed 0, category C) and a chest CT (seed 3, category C); the shipped default ensemble.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from protocol import Session  # noqa: E402


class _Nothing:
    """Stands in for a CategoryRange: no note."""

    def note(self):
        return ()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--force", action="store_true", help="measure on a busy machine (figures flagged BUSY)")
    args = ap.parse_args()
    session = Session("run_pipeline with and without category_range", force=args.force)

    import agatax.uncertainty as uncertainty
    from agatax.defaults import load_default_ensemble
    from agatax.pipeline import run_pipeline
    from agatax.synthetic import generate_exam

    real = uncertainty.category_range
    ensemble = load_default_ensemble()
    for name, seed, protocol in (("cardiac", 0, "cardiac"), ("chest", 3, "chest")):
        volume = generate_exam(seed, target_category="C", protocol=protocol, matrix=512).volume

        def without(volume=volume):
            uncertainty.category_range = lambda *a, **k: _Nothing()
            try:
                return run_pipeline(ensemble, volume)
            finally:
                uncertainty.category_range = real

        times = session.interleave({"with": lambda volume=volume: run_pipeline(ensemble, volume),
                                    "without": without}, rounds=args.rounds)
        session.report(times, baseline="without", shapes={name: volume.shape})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
