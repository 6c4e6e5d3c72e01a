"""Per-exam time of ``agatax.run_pipeline`` with two or more ensemble files, interleaved round by round.

    python benchmarks/bench_weights.py --weights A.msgpack B.msgpack [--rounds 7] [--matrix 512] [--slices 56]

One synthetic cardiac exam (category D, ``--slices`` x ``--matrix`` x ``--matrix``, 3 mm slices) is held in
memory; each ensemble is loaded once and compiled by a first call (reported apart), then every round runs
the whole pipeline once per ensemble, in turn, so that load from other work hits them alike. Prints per
ensemble: its members, compile + first call, and the median and range of the per-exam wall time, with the
median of the per-round ratios to the first ensemble. The machine's load average is printed before and
after: measure on an idle machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", nargs="+", required=True, help="ensemble files (the first is the reference)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--matrix", type=int, default=512)
    ap.add_argument("--slices", type=int, default=56)
    args = ap.parse_args(argv)

    import jax

    from agatax import load_ensemble, run_pipeline
    from agatax.synthetic import generate_exam

    print(f"device {jax.devices()[0].device_kind} ({jax.default_backend()}), {os.cpu_count()} cores, "
          f"{platform.processor() or platform.machine()}; load average before {os.getloadavg()}", flush=True)
    exam = generate_exam(7, target_category="D", protocol="cardiac", matrix=args.matrix,
                         n_slices=args.slices, slice_thickness_mm=3.0, slice_increment_mm=3.0)
    volume = exam.volume
    ensembles = {w: load_ensemble(w) for w in args.weights}
    first = {}
    for name, ens in ensembles.items():
        t0 = time.perf_counter()
        run_pipeline(ens, volume)
        first[name] = time.perf_counter() - t0
    times = {name: [] for name in ensembles}
    for _ in range(args.rounds):
        for name, ens in ensembles.items():
            t0 = time.perf_counter()
            run_pipeline(ens, volume)
            times[name].append(time.perf_counter() - t0)
    ref = args.weights[0]
    print(f"exam {volume.shape} at {tuple(round(s, 3) for s in volume.spacing)} mm; {args.rounds} rounds")
    print("| ensemble | members | compile + first call | per exam: median (range) | ratio to the first, median of rounds |")
    print("|---|---|---|---|---|")
    for name, ens in ensembles.items():
        t = times[name]
        ratio = statistics.median(a / b for a, b in zip(t, times[ref]))
        print(f"| {Path(name).name} | {ens.members} | {first[name]:.1f} s | {statistics.median(t):.2f} s "
              f"({min(t):.2f}-{max(t):.2f}) | {ratio:.2f} |")
    print(f"load average after {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
