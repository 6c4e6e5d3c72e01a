"""Batch scoring rate: exams per minute through ``agatax score`` against what the pipeline alone allows.

    python benchmarks/bench_batch.py [--exams 6] [--matrix 512] [--weights FILE] [--no-png] [--rounds 2]

Writes ``--exams`` synthetic exams of one shape (so one compilation serves them all) as DICOM series,
then measures, after a warm-up compile:

1. the parts the batch overlaps with the device: ``read_volume`` and ``write_report`` per exam;
2. per round (``--rounds``, back to back, as the machine may be shared): compute alone (``run_pipeline`` on
   each exam already in memory), then the whole command, ``agatax score FOLDER --report OUT`` in this
   process, with ``--jobs 1`` (read the next exam while this one is scored, write reports behind) and
   ``--jobs 0`` (no read-ahead; reports are still written behind).

Rate = exams / wall time x 60. Target: the ``--jobs 1`` rate within 20 % of 60 / (mean compute per exam).
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
    parser.add_argument("--rounds", type=int, default=2)
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

    t0 = time.perf_counter()
    for i, volume in enumerate(volumes):
        result = run_pipeline(ensemble, volume)
        write_report(tmp / "direct", volume, result.scores, result.mask, votes=result.votes, members=ensemble.members,
                     exam_id=f"exam{i}", png=not args.no_png)
    del result
    direct_total = time.perf_counter() - t0

    rounds = []  # the machine may be shared: measure compute alone and the command back to back, per round
    for r in range(args.rounds):
        compute = []
        for volume in volumes:
            t0 = time.perf_counter()
            run_pipeline(ensemble, volume)
            compute.append(time.perf_counter() - t0)
        rates = {}
        for jobs in (1, 0):
            out = tmp / f"report-jobs{jobs}-round{r}"
            argv = ["score", str(exams), "--weights", str(weights), "--report", str(out), "--jobs", str(jobs), "--quiet"]
            if args.no_png:
                argv.append("--no-png")
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                code = cli_main(argv)
            wall = time.perf_counter() - t0
            assert code == 0, f"agatax score exited {code}"
            rates[jobs] = args.exams / wall * 60.0
        rounds.append((compute, rates))

    print(f"device: {platform.processor() or platform.machine()}, JAX {jax.__version__}, backend {jax.default_backend()}")
    print(f"ensemble: {which}; {args.exams} exams of {shape[0]} x {shape[1]} x {shape[2]} (z, y, x), 2.5 mm;"
          f" report PNG {'off' if args.no_png else 'on'}")
    print(f"compile + first exam            {compile_s:.2f} s")
    print(f"read_volume per exam            {read_total / args.exams:.2f} s")
    print(f"pipeline + write_report / exam  {direct_total / args.exams:.2f} s (sequential, no overlap)")
    ratios = []
    for r, (compute, rates) in enumerate(rounds):
        allowed = 60.0 / statistics.mean(compute)
        ratios.append(rates[1] / allowed)
        print(f"round {r}: pipeline per exam mean {statistics.mean(compute):.2f} s (min {min(compute):.2f}, max "
              f"{max(compute):.2f}) -> compute alone allows {allowed:.2f} exams/min; agatax score --jobs 1 "
              f"{rates[1]:.2f} exams/min ({rates[1] / allowed:.0%}), --jobs 0 {rates[0]:.2f} ({rates[0] / allowed:.0%})")
    ratio = statistics.median(ratios)
    print(f"median --jobs 1 rate / compute-alone rate: {ratio:.0%}; target (>= 80 %): {'met' if ratio >= 0.8 else 'NOT met'}")


if __name__ == "__main__":
    main()
