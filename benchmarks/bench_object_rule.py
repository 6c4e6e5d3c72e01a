"""What this session's additions to the object rule cost in agatax.run_pipeline: the split rule and the
category range, each stubbed out in turn.

    python3 benchmarks/bench_object_rule.py [--rounds 7] [--force]

Under benchmarks/protocol.py (refuses a busy machine; variants interleaved). Exams: synthetic, matrix 512, a
cardiac exam (seed 0, category C) and a chest CT (seed 3, category C); the shipped default ensemble.
Variants: ``run_pipeline`` as shipped; without the category range; without the range and without the split.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from protocol import Session, command_line  # noqa: E402


class _Nothing:
    """Stands in for a CategoryRange: no note."""

    def note(self):
        return ()


def main() -> int:
    args = command_line(__doc__)
    session = Session("run_pipeline with and without the split rule and the category range", force=args.force)

    import agatax.pipeline as pipeline
    import agatax.uncertainty as uncertainty
    from agatax.defaults import load_default_ensemble
    from agatax.synthetic import generate_exam

    real_range, real_rule = uncertainty.category_range, pipeline.object_majority

    @contextmanager
    def stubbed(split: bool):
        uncertainty.category_range = lambda *a, **k: _Nothing()
        pipeline.object_majority = real_rule if split else partial(real_rule, split=False)
        try:
            yield
        finally:
            uncertainty.category_range, pipeline.object_majority = real_range, real_rule

    def run(volume, split=True, with_range=True):
        if with_range:
            return pipeline.run_pipeline(ensemble, volume)
        with stubbed(split):
            return pipeline.run_pipeline(ensemble, volume)

    ensemble = load_default_ensemble()
    for name, seed, protocol in (("cardiac", 0, "cardiac"), ("chest", 3, "chest")):
        volume = generate_exam(seed, target_category="C", protocol=protocol, matrix=512).volume
        times = session.interleave({
            "shipped": partial(run, volume),
            "no range": partial(run, volume, with_range=False),
            "no range, no split": partial(run, volume, split=False, with_range=False),
        }, rounds=args.rounds)
        session.report(times, baseline="no range, no split", shapes={name: volume.shape})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
