"""Connected-component labelling throughput (voxels/s) on 512 x 512 x 64 masks.

Masks: smoothed random noise thresholded at a quantile, i.e. irregular random blobs a few voxels across,
at 0.1 % and 5 % foreground. Methods: the JAX kernel (jitted, timed after a warm-up compile), the host
path (``backend="host"``) and plain ``scipy.ndimage.label``; per-slice 8-connectivity and 3D
26-connectivity. Each result is checked against scipy before it is timed. Figures: median of repeats.

    python benchmarks/bench_labelling.py [--repeats 5] [--jax-repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from agatax import label_slices, label_volume

SHAPE = (64, 512, 512)  # (z, y, x)
FRACTIONS = (0.001, 0.05)


def blob_mask(fraction: float, seed: int = 0) -> np.ndarray:
    """Random blobs: Gaussian-smoothed noise (sigma 1.5 voxels) above its (1 - fraction) quantile."""
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).random(SHAPE, dtype=np.float32), 1.5)
    return noise > np.quantile(noise, 1.0 - fraction)


def median_seconds(fns, repeats: int) -> list[float]:
    """Median wall time of each function; the functions take turns, so load changes hit all alike."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, times):
            start = time.perf_counter()
            fn()
            t.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def cpu_name() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--jax-repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    voxels = int(np.prod(SHAPE))
    slice_structure = np.zeros((3, 3, 3), bool)
    slice_structure[1] = True
    cases = [
        ("slices, 8-conn", label_slices, 8, slice_structure),
        ("3D, 26-conn", label_volume, 26, np.ones((3, 3, 3), bool)),
    ]
    rows = []
    for fraction in FRACTIONS:
        mask = blob_mask(fraction)
        mask_jax = jax.device_put(jnp.asarray(mask))
        for name, fn, conn, structure in cases:
            reference, n = ndimage.label(mask, structure)
            host = fn(mask, connectivity=conn, backend="host")
            kernel = jax.jit(lambda m, fn=fn, conn=conn: fn(m, connectivity=conn, backend="jax"))
            device = kernel(mask_jax).block_until_ready()  # warm-up: compile
            assert np.array_equal(host, reference), "host path differs from scipy"
            assert np.array_equal(np.asarray(device), reference), "JAX kernel differs from scipy"
            t_scipy, t_host = median_seconds(
                [lambda: ndimage.label(mask, structure), lambda: fn(mask, connectivity=conn, backend="host")],
                args.repeats,
            )
            (t_jax,) = median_seconds([lambda: kernel(mask_jax).block_until_ready()], args.jax_repeats)
            for method, t in (("scipy.ndimage.label", t_scipy), ("host", t_host), ("jax (jit)", t_jax)):
                rows.append({"foreground": fraction, "case": name, "components": int(n), "method": method,
                             "seconds": t, "voxels_per_s": voxels / t})
                print(f"{fraction:>6.1%}  {name:<15} {method:<20} {t * 1e3:9.1f} ms  {voxels / t:10.3g} voxels/s",
                      flush=True)

    print()
    print(f"Device: CPU, {os.cpu_count()} cores, {cpu_name()}; JAX backend: {jax.default_backend()}; "
          f"load average at end: {os.getloadavg()[0]:.1f}")
    print(f"Shape (z, y, x) = {SHAPE}; medians of {args.repeats} (scipy, host) / {args.jax_repeats} (JAX) runs.")
    print()
    print("| foreground | labelling | components | scipy.ndimage.label | host | JAX kernel (jit, CPU) |")
    print("|---|---|---|---|---|---|")
    for fraction in FRACTIONS:
        for name, *_ in cases:
            sel = {r["method"]: r for r in rows if r["foreground"] == fraction and r["case"] == name}
            cell = lambda m: f"{sel[m]['voxels_per_s'] / 1e6:.0f} M/s ({sel[m]['seconds'] * 1e3:.0f} ms)"  # noqa: E731
            print(f"| {fraction:.1%} | {name} | {sel['host']['components']} | {cell('scipy.ndimage.label')} | "
                  f"{cell('host')} | {cell('jax (jit)')} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
