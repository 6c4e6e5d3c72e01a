"""Time the chest localisation (agatax.localise_chest) per exam, host side, on full-size synthetic exams.

    python3 benchmarks/bench_localise.py [--repeats 5]

Settings: a cardiac exam (512 x 512 x 56 at 2.5 mm), a chest field of view (512 x 512, 3 and 5 mm), a
thin reconstruction (512 x 512 x 240 at 0.625 mm), and a chest CT reaching into the upper abdomen
(``generate_exam(..., abdomen=True)``, where the agatax measured has it), and the 3 mm chest exam with its left
lung airless (30 HU). Rounds interleave the settings; prints the load
average before the run, then the minimum and median wall time of each (seconds). Refuses to run when the
1-minute load average is above 0.5 per core unless --force.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--force", action="store_true", help="run on a busy machine (figures then measure the load)")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    if load > 0.5 * cores and not args.force:
        print(f"machine busy (load {load:.2f} on {cores} cores): not measuring (--force to run anyway)")
        return 2
    import numpy as np

    from agatax import localise_chest
    from agatax.synthetic import TISSUES, ScannerParams, generate_exam

    settings = {
        "cardiac 56 x 512 x 512, 2.5 mm": generate_exam(1, target_category="C", protocol="cardiac",
                                                        slice_increment_mm=2.5, n_slices=56),
        "chest 3 mm (50 slices, 512 x 512)": generate_exam(2, target_category="C", protocol="chest",
                                                           slice_increment_mm=3.0, n_slices=50),
        "chest 5 mm (30 slices, 512 x 512)": generate_exam(3, target_category="C", protocol="chest",
                                                           slice_increment_mm=5.0, n_slices=30),
        "thin 240 x 512 x 512, 0.625 mm": generate_exam(4, target_category="C", protocol="cardiac",
                                                        slice_increment_mm=0.625, n_slices=240),
    }
    if "abdomen" in {f.name for f in dataclasses.fields(ScannerParams)}:  # a chest CT into the upper abdomen
        settings["chest into the abdomen, 5 mm (512 x 512)"] = generate_exam(
            3, target_category="C", protocol="chest", slice_increment_mm=5.0, abdomen=True)
    settings = {name: (ex.volume.hu, ex.volume.spacing) for name, ex in settings.items()}
    # the chest exam with its left lung airless (collapsed, an effusion): where the agatax measured has the
    # one-lung rule, the lungs are mirrored for the hull
    one = generate_exam(2, target_category="C", protocol="chest", slice_increment_mm=3.0, n_slices=50,
                        keep_tissue=True)
    x = one.volume.affine[0, 2] * np.arange(one.volume.shape[2]) + one.volume.affine[0, 3]
    hu = one.volume.hu.copy()
    hu[(one.tissue == TISSUES["lung"]) & (x > 0)[None, None, :]] = 30.0
    settings["chest 3 mm, left lung airless"] = (hu, one.volume.spacing)
    times = {k: [] for k in settings}
    for hu, spacing in settings.values():
        localise_chest(hu, spacing)  # warm-up
    for _ in range(args.repeats):
        for name, (hu, spacing) in settings.items():
            t = time.perf_counter()
            r = localise_chest(hu, spacing)
            times[name].append(time.perf_counter() - t)
            assert r.found
    print(f"# {platform.processor() or platform.machine()}, {cores} cores, load average before {load:.2f}, "
          f"python {sys.version.split()[0]}, repeats {args.repeats} (interleaved)")
    for name, t in times.items():
        print(f"{name}: min {min(t):.3f} s, median {statistics.median(t):.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
