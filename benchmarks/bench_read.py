"""Reading a DICOM series: agatax.read_volume against a plain pydicom loop, time and peak memory.

    python benchmarks/bench_read.py [--slices 60] [--size 512] [--repeats 7]

Writes an uncompressed 512 x 512 x 60 CT series (int16, explicit VR little endian) to a temporary folder,
then times (median of repeats, files in the page cache) both readers and measures read_volume's peak
traced memory (tracemalloc) against 3 x the float32 volume size.
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from agatax import Volume, read_volume, write_dicom_series
from agatax.io import axial_affine


def plain_loop(folder: Path) -> np.ndarray:
    """The baseline: read every file with pydicom and stack pixel_array."""
    return np.stack([pydicom.dcmread(path).pixel_array for path in sorted(folder.iterdir())])


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=60)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    shape = (args.slices, args.size, args.size)
    rng = np.random.default_rng(0)
    hu = rng.integers(-1024, 1500, shape).astype(np.float32)
    spacing = (3.0, 0.488, 0.488)
    volume = Volume(hu=hu, spacing=spacing, slice_thickness=3.0, affine=axial_affine(spacing, (-125.0, -125.0, 600.0)))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_dicom_series(folder, volume)
        del hu, volume
        plain_loop(folder)  # warm the page cache and imports
        read_volume(folder)
        loop_times, agatax_times = [], []
        for _ in range(args.repeats):  # interleave so both see the same machine state
            loop_times += timed(lambda: plain_loop(folder), 1)
            agatax_times += timed(lambda: read_volume(folder), 1)
        gc.collect()
        tracemalloc.start()
        result = read_volume(folder)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        del result
        gc.collect()
        tracemalloc.start()
        baseline = plain_loop(folder)
        _, loop_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        del baseline

    float_bytes = np.prod(shape) * 4
    print(f"platform: {platform.processor() or platform.machine()}, python {platform.python_version()}, "
          f"pydicom {pydicom.__version__}, numpy {np.__version__}")
    print(f"series: {shape[0]} files of {shape[1]} x {shape[2]} int16, uncompressed")
    print(f"plain pydicom loop (dcmread + pixel_array, np.stack): median {statistics.median(loop_times):.3f} s "
          f"(min {min(loop_times):.3f}, max {max(loop_times):.3f}, {args.repeats} runs)")
    print(f"agatax.read_volume (float32 HU, checks):             median {statistics.median(agatax_times):.3f} s "
          f"(min {min(agatax_times):.3f}, max {max(agatax_times):.3f}, {args.repeats} runs)")
    print(f"speed-up: {statistics.median(loop_times) / statistics.median(agatax_times):.2f}x")
    print(f"read_volume peak traced memory: {peak / 2**20:.1f} MiB = {peak / float_bytes:.2f} x the float32 volume "
          f"({float_bytes / 2**20:.1f} MiB; target < 3x)")
    print(f"plain loop peak traced memory: {loop_peak / 2**20:.1f} MiB (int16 result)")


if __name__ == "__main__":
    main()
