"""Batch scoring rate: exams per minute through ``agatax score`` against what the pipeline alone allows.

    python benchmarks/bench_batch.py [--exams 6] [--matrix 512] [--weights FILE] [--no-png]

Writes ``--exams`` synthetic exams of one shape (so one compilation serves them all) as DICOM series,
then measures, after a warm-up compile:

1. compute alone: ``run_pipeline`` on each exam already in memory (the device part of an exam);
2. the parts the batch overlaps with it: ``read_volume`` and ``write_report`` per exam;
3. the whole command, ``agatax score FOLDER --report OUT`` in this process, with ``--jobs 1`` (read the
   next exam while this one is scored, write reports behind) and ``--jobs 0`` (no read-ahead).

Rate = exams / wall time x 60. Target: the ``--jobs 1`` rate within 20 % of 60 / (compute per exam).
Without ``--weights`` the shipped default ensemble is used when present, else a freshly initialised
ensemble of the same architecture (five paper-sized U-Nets: the same arithmetic).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def _ensemble_file(path: str | None, folder: Path) -> tuple[Path, str]:
    if path:
        return Path(path), f"weights {path}"
    from agatax.defaults import default_weights_path

    default = default_weights_path()
    if default.is_file():
        return default, "shipped default ensemble"
    import jax

    from agatax import UNetConfig, init_ensemble, save_ensemble

    out = folder / "init.msgpack"
    save_ensemble(out, init_ensemble(jax.random.key(0), UNetConfig(), members=5))
    return out, "freshly initialised 5 x UNetConfig() (default weights not present)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exams", type=int, default=6)
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--slices", type=int, default=56)
    parser.add_argument("--weights")
    parser.add_argument("--no-png", action="store_true")
    args = parser.parse_args()

    import jax

    from agatax import load_ensemble, read_volume, write_dicom_series, write_report
    from agatax.cli import main as cli_main
    from agatax.pipeline import run_pipeline
    from agatax.synthetic import generate_exam

    tmp = Path(tempfile.mkdtemp(prefix="agatax-bench-batch-"))
    weights, which = _ensemble_file(args.weights, tmp)
    ensemble = load_ensemble(weights)
    exams = tmp / "exams"
    for i in range(args.exams):
        exam = generate_exam(100 + i, matrix=args.matrix, n_slices=args.slices, slice_increment_mm=2.5,
                             slice_thickness_mm=2.5, fov_mm=200.0, target_category="CDEBC"[i % 5])
        write_dicom_series(exams / f"exam{i}", exam.volume, patient_id=f"exam{i}")
    folders = sorted(exams.iterdir())

    t0 = time.perf_counter()
    volumes = [read_volume(f) for f in folders]
    read_total = time.perf_counter() - t0
    shape = volumes[0].shape
    t0 = time.perf_counter()
    run_pipeline(ensemble, volumes[0])
    compile_s = time.perf_counter() - t0

    compute = []
    results = []
    for volume in volumes:
        t0 = time.perf_counter()
        results.append(run_pipeline(ensemble, volume))
        compute.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i, (volume, result) in enumerate(zip(volumes, results)):
        write_report(tmp / "direct", volume, result.scores, result.mask, votes=result.votes, members=5,
                     exam_id=f"exam{i}", png=not args.no_png)
    write_total = time.perf_counter() - t0
    del volumes, results

    rates = {}
    for jobs in (1, 0, 1):
        out = tmp / f"report-jobs{jobs}-{len(rates)}"
        argv = ["score", str(exams), "--weights", str(weights), "--report", str(out), "--jobs", str(jobs), "--quiet"]
        if args.no_png:
            argv.append("--no-png")
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            code = cli_main(argv)
        wall = time.perf_counter() - t0
        assert code == 0, f"agatax score exited {code}"
        rates.setdefault(jobs, []).append(args.exams / wall * 60.0)

    per_exam = statistics.median(compute)
    allowed = 60.0 / per_exam
    best = max(rates[1])
    print(f"device: {platform.processor() or platform.machine()}, JAX {jax.__version__}, backend {jax.default_backend()}")
    print(f"ensemble: {which}; {args.exams} exams of {shape[0]} x {shape[1]} x {shape[2]} (z, y, x), 2.5 mm;"
          f" report PNG {'off' if args.no_png else 'on'}")
    print(f"compile + first exam       {compile_s:.2f} s")
    print(f"pipeline per exam          median {per_exam:.2f} s (min {min(compute):.2f}, max {max(compute):.2f})")
    print(f"read_volume per exam       {read_total / args.exams:.2f} s")
    print(f"write_report per exam      {write_total / args.exams:.2f} s")
    print(f"compute alone allows       {allowed:.2f} exams/min")
    print(f"agatax score --jobs 1      {', '.join(f'{r:.2f}' for r in rates[1])} exams/min "
          f"(best {best:.2f} = {best / allowed:.0%} of compute alone)")
    print(f"agatax score --jobs 0      {rates[0][0]:.2f} exams/min ({rates[0][0] / allowed:.0%})")
    print(f"target (>= 80 % of compute alone): {'met' if best >= 0.8 * allowed else 'NOT met'}")


if __name__ == "__main__":
    main()
