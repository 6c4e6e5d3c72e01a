"""Time synthetic exam generation (one CPU core): full-size 512 x 512 exams per category, and small ones.

    python3 benchmarks/bench_synthetic.py [--repeats 3]

Prints one line per setting: shape, category, best and median wall time over the repeats (seconds) and the
best process CPU time (less sensitive to other processes sharing the core).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    try:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    except (AttributeError, OSError):
        pass
    from agatax.synthetic import generate_exam

    generate_exam(0, target_category="C", matrix=128)  # imports, first-call costs
    print(f"# {platform.processor() or platform.machine()}, 1 core pinned, repeats={args.repeats}")
    only = os.environ.get("BENCH_ONLY")
    settings = [(512, {"slice_increment_mm": 3.0, "n_slices": 48}), (512, {"slice_increment_mm": 2.5, "n_slices": 56}),
                (512, {"slice_increment_mm": 2.5, "n_slices": 64}), (160, {"slice_increment_mm": 3.0, "n_slices": 48, "fov_mm": 180.0})]
    if only:
        settings = [settings[int(i)] for i in only.split(",")]
    for matrix, extra in settings:
        for cat in "ABCDE":
            times, cpu = [], []
            for r in range(args.repeats):
                t, c = time.perf_counter(), time.process_time()
                ex = generate_exam(100 + r, target_category=cat, matrix=matrix, **extra)
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
            print(f"{ex.volume.shape} {cat}: best {min(times):.3f} s, median {statistics.median(times):.3f} s, "
                  f"best CPU {min(cpu):.3f} s, "
                  f"lesions {len(ex.lesions)}, Agatston {ex.agatston:.1f}")


if __name__ == "__main__":
    main()
