"""Cluster batches: exams per minute against the number of Dask worker processes, and the overhead per exam.

    python benchmarks/bench_cluster.py [--exams 8] [--matrix 512] [--slices 56] [--workers 1,2] [--weights FILE]

Writes ``--exams`` synthetic exams of one shape as DICOM series, then times the whole command, in this
process, as a user runs it:

1. serial: ``agatax score COHORT --report OUT --no-png`` (the local batch: read-ahead, one scoring thread);
2. for each N of ``--workers``: the same with ``--workers N`` (a LocalCluster of N one-thread processes
   started by the command, each loading the ensemble and compiling once).

Each run starts cold (a fresh report folder; the serial run compiles once in this process, each worker once
in its own), as a batch does. Rate = exams / wall time x 60; overhead per exam = (wall time with
``--workers 1`` - serial wall time) / exams: what starting the cluster, its workers' imports, loads and
compilations, and the task traffic cost per exam at this cohort size (it shrinks as the cohort grows;
the numbers say how many exams a cluster batch needs to pay off). Without ``--weights`` the shipped
default ensemble is used when present, else a freshly initialised one of the same architecture.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_batch import _ensemble_file  # noqa: E402  (the same weights choice as the serial batch benchmark)


def _timed(argv: list[str]) -> float:
    from agatax.cli import main

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    seconds = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"agatax {' '.join(argv)} exited {code}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exams", type=int, default=8)
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--slices", type=int, default=56)
    parser.add_argument("--workers", default="1,2", help="worker counts, comma separated (default 1,2)")
    parser.add_argument("--weights")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", metavar="OUT", help="also write the figures as JSON")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",") if n.strip()]

    from agatax import write_dicom_series
    from agatax.synthetic import generate_exam

    with tempfile.TemporaryDirectory(prefix="agatax-bench-cluster-") as tmp:
        root = Path(tmp)
        weights, which = _ensemble_file(args.weights, root)
        for seed in range(args.exams):
            exam = generate_exam(seed, matrix=args.matrix, n_slices=args.slices, slice_increment_mm=3.0,
                                 slice_thickness_mm=3.0)
            write_dicom_series(root / "cohort" / f"exam{seed}", exam.volume, patient_id=f"exam{seed}")
        base = ["score", str(root / "cohort"), "--weights", str(weights), "--no-png", "--quiet",
                "--device", args.device]
        runs = {"serial": _timed(base + ["--report", str(root / "serial")])}
        for n in counts:
            runs[f"workers={n}"] = _timed(base + ["--report", str(root / f"workers{n}"), "--workers", str(n)])

    serial = runs["serial"]
    figures = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "ensemble": which, "exams": args.exams, "grid": [args.slices, args.matrix, args.matrix],
        "runs": {name: {"seconds": round(s, 2), "exams_per_min": round(args.exams / s * 60, 2)}
                 for name, s in runs.items()},
    }
    if "workers=1" in runs:
        figures["overhead_per_exam_s"] = round((runs["workers=1"] - serial) / args.exams, 2)
    print(f"{figures['machine']}; {which}; {args.exams} exams of {args.slices} x {args.matrix} x {args.matrix}")
    print("| run | wall s | exams/min | vs serial |")
    print("|---|---|---|---|")
    for name, s in runs.items():
        print(f"| {name} | {s:.1f} | {args.exams / s * 60:.2f} | {serial / s:.2f} x |")
    if "overhead_per_exam_s" in figures:
        print(f"overhead per exam, --workers 1 against serial: {figures['overhead_per_exam_s']:+.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
