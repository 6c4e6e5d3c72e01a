"""Per-exam time of ``agatax.run_pipeline`` with two or more ensemble files (e.g. five networks against ten).

    python benchmarks/bench_weights.py --weights A.msgpack B.msgpack [--rounds 7] [--matrix 512] [--slices 56] [--force]

Under benchmarks/protocol.py (refuses a busy machine; one warm-up call each, which compiles; variants
interleaved round by round; the first file is the baseline). One synthetic cardiac exam (category D, seed 7,
``--slices`` x ``--matrix`` x ``--matrix``, 3 mm slices) held in memory; the whole pipeline per call.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from protocol import Session  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", nargs="+", required=True, help="ensemble files (the first is the baseline)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--matrix", type=int, default=512)
    ap.add_argument("--slices", type=int, default=56)
    ap.add_argument("--force", action="store_true", help="measure on a busy machine (figures flagged BUSY)")
    args = ap.parse_args(argv)
    session = Session("run_pipeline per ensemble file", force=args.force)  # before any set-up work of ours

    from agatax import load_ensemble, run_pipeline
    from agatax.synthetic import generate_exam

    volume = generate_exam(7, target_category="D", protocol="cardiac", matrix=args.matrix, n_slices=args.slices,
                           slice_thickness_mm=3.0, slice_increment_mm=3.0).volume
    ensembles = {f"{Path(w).name} ({e.members} networks)": e for w, e in ((w, load_ensemble(w)) for w in args.weights)}
    times = session.interleave({name: (lambda e=e: run_pipeline(e, volume)) for name, e in ensembles.items()},
                               rounds=args.rounds)
    session.report(times, baseline=next(iter(ensembles)),
                   shapes={"exam": volume.shape, "spacing_mm": tuple(round(s, 3) for s in volume.spacing)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
