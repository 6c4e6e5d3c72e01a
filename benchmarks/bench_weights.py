"""Per-exam time of ``agatax.run_pipeline`` with one or more ensemble files (e.g. five networks against ten).

    python benchmarks/bench_weights.py --weights A.msgpack [B.msgpack] [--dense-look 600] [--rounds 7] [--matrix 512] [--slices 56] [--force]

``--dense-look HU ...``: each file also with ``run_pipeline(dense_look=HU)`` (the networks' second look).

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
    ap.add_argument("--dense-look", nargs="+", type=float, default=[], metavar="HU",
                    help="also time each file with run_pipeline(dense_look=HU)")
    ap.add_argument("--force", action="store_true", help="measure on a busy machine (figures flagged BUSY)")
    args = ap.parse_args(argv)
    session = Session("run_pipeline per ensemble file", force=args.force)  # before any set-up work of ours

    from agatax import load_ensemble, run_pipeline
    from agatax.synthetic import generate_exam

    volume = generate_exam(7, target_category="D", protocol="cardiac", matrix=args.matrix, n_slices=args.slices,
                           slice_thickness_mm=3.0, slice_increment_mm=3.0).volume
    variants = {}
    for w in args.weights:
        e = load_ensemble(w)
        for look in [None] + args.dense_look:
            name = f"{Path(w).name} ({e.members} networks)" + ("" if look is None else f", dense look {look:g} HU")
            variants[name] = lambda e=e, look=look: run_pipeline(e, volume, dense_look=look)
    times = session.interleave(variants, rounds=args.rounds)
    session.report(times, baseline=next(iter(variants)),
                   shapes={"exam": volume.shape, "spacing_mm": tuple(round(s, 3) for s in volume.spacing)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
