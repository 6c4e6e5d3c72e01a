"""What listing the calcium left out (agatax.pipeline.left_out_objects) and the category range
(agatax.category_range) cost, beside the pipeline itself (what the range adds to it: bench_object_rule.py).

    python3 benchmarks/bench_left_out.py [--rounds 7] [--force]

Under benchmarks/protocol.py (refuses a busy machine; variants interleaved). Exams: synthetic, matrix 512, a
cardiac exam (seed 0, category C) and a chest CT (seed 3, category C); the shipped default ensemble. Variants
per exam: ``agatax.run_pipeline`` (localisation, networks, object vote, metal rule, host scores) and
``left_out_objects`` on its result (what ``agatax score`` adds for the ``left_out`` list and picture), and
``category_range`` on its result (part of ``run_pipeline`` since it was added: the time it adds).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from protocol import Session, command_line  # noqa: E402


def main() -> int:
    args = command_line(__doc__)
    session = Session("left_out_objects and category_range beside run_pipeline", force=args.force)

    from agatax.defaults import load_default_ensemble
    from agatax.pipeline import left_out_objects, run_pipeline
    from agatax.uncertainty import category_range
    from agatax.synthetic import generate_exam

    ensemble = load_default_ensemble()
    for name, seed, protocol in (("cardiac", 0, "cardiac"), ("chest", 3, "chest")):
        volume = generate_exam(seed, target_category="C", protocol=protocol, matrix=512).volume
        result = run_pipeline(ensemble, volume)
        region = result.chest.region
        times = session.interleave({
            "run_pipeline": lambda: run_pipeline(ensemble, volume),
            "left_out_objects": lambda: left_out_objects(volume.hu, result.mask, region, volume.spacing),
            "category_range": lambda: category_range(volume.hu, result.mask, result.votes, region, volume.spacing,
                                                     ensemble.members, scores=result.scores),
        }, rounds=args.rounds)
        session.report(times, baseline="run_pipeline", shapes={name: volume.shape})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
