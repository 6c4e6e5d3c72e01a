"""The protocol every speed figure in RESULTS.md is measured under.

1. The machine must be idle before a run starts: the 1-minute load average per core at most
   ``MAX_LOAD_PER_CORE`` (refused otherwise; ``--force`` measures anyway and flags the figures BUSY).
2. Compared variants are interleaved round by round (the order rotates each round), after one warm-up
   call each, so that whatever else happens on the machine hits all of them alike.
3. Reported for each variant: minimum and median over the rounds, and the ratio of minima to the baseline
   (the minimum is the least disturbed measurement of the same work).
4. Recorded with the figures: date, device, CPU model and cores, load before and after, Python / JAX /
   NumPy (and PyTorch when used) versions, and the shapes.

    from protocol import Session
    s = Session("my benchmark", force=args.force)          # first thing: refuses a busy machine
    times = s.interleave({"a": fa, "b": fb}, rounds=7)      # {"a": [s, ...], "b": [...]}
    s.report(times, baseline="b", shapes={"exam": (56, 512, 512)})
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping

import numpy as np

MAX_LOAD_PER_CORE = 0.3


def command_line(doc: str, *, rounds: int = 7, argv=None) -> argparse.Namespace:
    """The options every protocol benchmark takes: ``--rounds N`` (interleaved rounds) and ``--force``
    (measure on a busy machine, figures flagged BUSY); ``doc``'s first line describes the script."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--force", action="store_true", help="measure on a busy machine (figures flagged BUSY)")
    return ap.parse_args(argv)


def cores() -> int:
    return len(os.sched_getaffinity(0))


def cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("jax", "jaxlib", "ml_dtypes", "numpy", "torch"):
        module = sys.modules.get(name)
        if module is not None:
            out[name] = getattr(module, "__version__", "?")
    return out


def device() -> str:
    if "jax" not in sys.modules:
        return "cpu"
    import jax

    d = jax.devices()[0]
    return f"{d.platform} ({getattr(d, 'device_kind', '')})"


class Session:
    """One benchmark run under the protocol (see the module docstring)."""

    def __init__(self, name: str, *, force: bool = False, max_load_per_core: float = MAX_LOAD_PER_CORE,
                 out=sys.stdout) -> None:
        self.name, self.out = name, out
        self.load_before = os.getloadavg()[0]
        self.busy = self.load_before > max_load_per_core * cores()
        if self.busy and not force:
            raise SystemExit(
                f"{name}: machine busy (load average {self.load_before:.2f} on {cores()} cores, limit "
                f"{max_load_per_core * cores():.2f}); wait until it is idle, or --force to measure anyway "
                "(figures flagged BUSY)")
        self.started = datetime.datetime.now(datetime.timezone.utc)

    def interleave(self, variants: Mapping[str, Callable[[], object]], *, rounds: int = 7,
                   warmup: int = 1) -> dict[str, list[float]]:
        """Seconds per call of each variant, ``rounds`` calls each, round by round in a rotating order.
        A variant's callable must block until its work is done (e.g. ``jax.block_until_ready``)."""
        names = list(variants)
        for name in names:
            for _ in range(warmup):
                variants[name]()
        times: dict[str, list[float]] = {name: [] for name in names}
        for r in range(rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                t0 = time.perf_counter()
                variants[name]()
                times[name].append(time.perf_counter() - t0)
        return times

    def report(self, times: Mapping[str, list[float]], *, baseline: str | None = None,
               shapes: Mapping[str, object] | None = None, notes: str = "", title: str | None = None) -> dict:
        """Print the table and one JSON record (returned) with the machine and the figures. The load
        "before" is the one checked when the session started (before the benchmark's own set-up work)."""
        load_after = os.getloadavg()[0]
        rows = {}
        base = min(times[baseline]) if baseline else None
        flag = " BUSY" if self.busy else ""
        print(f"## {title or self.name}{flag}: {self.started:%Y-%m-%d %H:%M} UTC, {device()}, {cpu_model()}, {cores()} cores, "
              f"load {self.load_before:.2f} -> {load_after:.2f}", file=self.out)
        print("| variant | min (s) | median (s) | rounds | min / min of " + (baseline or "-") + " |", file=self.out)
        print("|---|---|---|---|---|", file=self.out)
        for name, ts in times.items():
            lo, med = float(np.min(ts)), float(np.median(ts))
            ratio = lo / base if base else None
            rows[name] = {"min_s": lo, "median_s": med, "rounds": len(ts), "ratio_of_minima": ratio}
            print(f"| {name} | {lo:.4f} | {med:.4f} | {len(ts)} | {'-' if ratio is None else f'{ratio:.2f}'} |",
                  file=self.out)
        record = {"benchmark": title or self.name, "date": self.started.isoformat(timespec="seconds"), "device": device(),
                  "cpu": cpu_model(), "cores": cores(), "load_before": self.load_before, "load_after": load_after,
                  "busy": self.busy, "versions": versions(), "shapes": dict(shapes or {}), "baseline": baseline,
                  "figures": rows, "notes": notes}
        print(json.dumps(record, default=str), file=self.out)
        return record
