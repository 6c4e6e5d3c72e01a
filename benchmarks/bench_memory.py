"""Time and peak memory of scoring one exam (default ensemble, chest localisation) against its size.

Each size runs in a fresh process (peak resident memory = ru_maxrss of that process, which includes the
exam itself: 4 bytes per voxel as float32). The exam is a simple chest built from ellipses (body, two
lungs, spine, heart with a few calcified spots), enough for the localisation and the networks to do their
real work; the network grid is 3 mm (thin slices) or the slice increment.

    python3 benchmarks/bench_memory.py                       # the table in RESULTS.md
    python3 benchmarks/bench_memory.py --sizes 700x1024x1024:0.5x0.35x0.35
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

SIZES = ["56x512x512:3x0.39x0.39", "120x512x512:1.25x0.7x0.7", "280x512x512:0.5x0.7x0.7",
         "700x1024x1024:0.5x0.35x0.35"]


def chest(shape, spacing):
    """float32 (z, y, x) HU: body, lungs, spine, heart, calcium; built slice by slice (no full temporaries)."""
    import numpy as np

    nz, ny, nx = shape
    dz, dy, dx = spacing
    y = (np.arange(ny) - ny / 2) * dy
    x = (np.arange(nx) - nx / 2) * dx
    yy, xx = np.meshgrid(y, x, indexing="ij")
    r = 0.45 * min(ny * dy, nx * dx)
    body = (yy / (0.75 * r)) ** 2 + (xx / r) ** 2 < 1
    lungs = (((yy + 0.05 * r) / (0.55 * r)) ** 2 + ((np.abs(xx) - 0.42 * r) / (0.3 * r)) ** 2) < 1
    spine = (yy - 0.5 * r) ** 2 + xx ** 2 < (0.12 * r) ** 2
    heart = ((yy + 0.05 * r) / (0.35 * r)) ** 2 + ((xx - 0.05 * r) / (0.3 * r)) ** 2 < 1
    plaque = (yy + 0.05 * r + 0.3 * r) ** 2 + (xx - 0.15 * r) ** 2 < 4.0
    from agatax._memory import aligned_empty

    hu = aligned_empty(shape, np.float32)  # as agatax.io allocates exams
    rng = np.random.default_rng(0)
    z_mid = nz * dz / 2
    for k in range(nz):
        s = np.where(body, 40.0, -1000.0).astype(np.float32)
        s[lungs & body] = -850.0
        s[spine] = 500.0
        if abs(k * dz - z_mid) < 40:
            s[heart] = 45.0
            if abs(k * dz - z_mid) < 3:
                s[plaque] = 600.0
        s += rng.normal(0, 15, s.shape).astype(np.float32)
        hu[k] = s
    return hu


def one(size: str) -> dict:
    import jax
    import numpy as np

    import agatax

    dims, sp = size.split(":")
    shape = tuple(int(v) for v in dims.split("x"))
    spacing = tuple(float(v) for v in sp.split("x"))
    hu = chest(shape, spacing)
    volume = agatax.Volume(hu, spacing, slice_thickness=spacing[0])
    del hu
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    t0 = time.perf_counter()
    result = agatax.score_exam(volume, allow_phantom=True)  # the ellipse chest repeats along z: a phantom
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"size": size, "voxels": int(np.prod(shape)), "seconds_first_call": round(seconds, 2),
            "peak_gib": round(peak, 2), "volume_gib": round(4 * np.prod(shape) / 2**30, 2),
            "before_scoring_gib": round(base, 2), "agatston": round(float(result.scores.agatston), 1),
            "lungs_found": bool(result.chest.found), "device": str(jax.devices()[0])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="*", default=SIZES, help="ZxYxX:DZxDYxDX")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one(args.child)))
        return
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"load {os.getloadavg()[0]:.2f}")
    for size in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--child", size], capture_output=True, text=True)
        if out.returncode:
            print(json.dumps({"size": size, "failed": out.returncode, "stderr": out.stderr[-400:]}))
        else:
            print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
