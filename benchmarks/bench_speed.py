"""CPU speed under the protocol (benchmarks/protocol.py): agatax against the PyTorch peer, and the start.

1. Inference: ``agatax.segment`` on a 56 x 512 x 512 exam at 3 x 0.4 x 0.4 mm (read nothing: the Volume is
   in memory; pre-processing, five networks, post-processing, with and without the chest localisation)
   against the paper's network in PyTorch eager, five members one after another, network only, on the
   56 x 72 x 72 grid (benchmarks/torch_unet.py, weights of the shipped ensemble). Skipped without torch.
2. Start: ``agatax score EXAM --json FILE`` as a new process (the compilation cache warm from an earlier
   call; ``--no-server``), the same command handed over to a running ``agatax serve`` (warm from one earlier
   call), against the warm in-process ``agatax.score_exam`` of the same exam (the issue's target: at most 2x).
3. Box: ``agatax.segment`` with the shipped ensemble, its enhancement through the 1 mm box against none.
4. Crop: ``agatax.segment`` on a chest CT (512 x 512, 3 mm, ~380 mm field of view) with the networks on the
   chest region's box (as shipped) against the whole grid, and the PyTorch peer on the whole grid.

    python benchmarks/bench_speed.py [--rounds 5] [--force] [--part inference|start|box|crop|all]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from protocol import Session  # noqa: E402


def exam(matrix=512):
    from agatax.synthetic import generate_exam

    return generate_exam(0, target_category="C", matrix=matrix).volume


def inference(args, session) -> None:
    import jax

    import agatax

    volume = exam()
    shipped = agatax.load_default_ensemble()
    paper = agatax.init_ensemble(jax.random.key(0), agatax.UNetConfig(), members=5)  # 4 levels, 16 filters
    try:
        import torch

        from torch_unet import from_flax
    except ImportError:
        torch = None
        print("torch not installed: the PyTorch peer is skipped", file=sys.stderr)
    for label, ensemble in (("shipped 3 levels / 8 filters", shipped), ("paper 4 levels / 16 filters", paper)):
        variants = {}
        grid = agatax.grid_shape(volume.shape, volume.spacing, multiple=ensemble.config.multiple)
        variants[f"agatax segment, {label}"] = (
            lambda e=ensemble: jax.block_until_ready(agatax.segment(e, volume)))
        variants[f"agatax segment no localise, {label}"] = (
            lambda e=ensemble: jax.block_until_ready(agatax.segment(e, volume, localise=False)))
        if torch is not None:
            variants[f"torch eager network only, {label}"] = _torch_peer(torch, from_flax, ensemble, volume)
        times = session.interleave(variants, rounds=args.rounds)
        session.report(times, baseline=f"torch eager network only, {label}" if torch is not None else None,
                       shapes={"exam": volume.shape, "spacing_mm": volume.spacing, "network_grid": grid},
                       title=f"inference, {label}, 56 x 512 x 512 exam, five members, CPU")


def box_cost(args, session) -> None:
    """``agatax.segment`` with the shipped ensemble as it is (the enhancement through its 1 mm box) against
    the same weights fed the fine voxels as they are (``input_box_mm=0``): what the box costs."""
    import dataclasses

    import jax

    import agatax

    volume = exam()
    shipped = agatax.load_default_ensemble()
    raw = shipped.replace(config=dataclasses.replace(shipped.config, input_box_mm=0.0))
    variants = {f"agatax segment, box {e.config.input_box_mm:g} mm": (
        lambda e=e: jax.block_until_ready(agatax.segment(e, volume))) for e in (raw, shipped)}
    times = session.interleave(variants, rounds=args.rounds)
    session.report(times, baseline="agatax segment, box 0 mm",
                   shapes={"exam": volume.shape, "spacing_mm": volume.spacing},
                   title="the enhancement's box, shipped ensemble, 56 x 512 x 512 exam, CPU")


def crop_cost(args, session) -> None:
    """A chest CT, shipped ensemble: the networks on the chest region's box (``agatax.pipeline.network_crop``,
    as shipped) against the whole grid; the PyTorch peer runs the whole grid."""
    import jax

    import agatax
    import agatax.pipeline as pipeline
    from agatax.synthetic import generate_exam

    volume = generate_exam(3, target_category="C", protocol="chest", matrix=512).volume
    shipped = agatax.load_default_ensemble()
    grid = agatax.grid_shape(volume.shape, volume.spacing, multiple=shipped.config.multiple)
    share = pipeline.CROP_MAX_SHARE

    def run(limit):
        pipeline.CROP_MAX_SHARE = limit
        try:
            return jax.block_until_ready(agatax.segment(shipped, volume))
        finally:
            pipeline.CROP_MAX_SHARE = share

    variants = {"agatax segment, networks on the region's box": lambda: run(share),
                "agatax segment, networks on the whole grid": lambda: run(-1.0)}
    try:
        import torch

        from torch_unet import from_flax

        variants["torch eager network only, whole grid"] = _torch_peer(torch, from_flax, shipped, volume)
    except ImportError:
        print("torch not installed: the PyTorch peer is skipped", file=sys.stderr)
    times = session.interleave(variants, rounds=args.rounds)
    session.report(times, baseline="agatax segment, networks on the whole grid",
                   shapes={"exam": volume.shape, "spacing_mm": volume.spacing, "network_grid": grid},
                   title="networks on the chest region's box, shipped ensemble, chest CT, CPU")


def _torch_peer(torch, from_flax, ensemble, volume):
    """The same five networks in PyTorch eager on the same network input: votes (z, y, x)."""
    import jax

    import agatax

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    nets = [from_flax(jax.tree.map(lambda v, k=k: np.asarray(v[k], np.float32), ensemble.variables),
                      ensemble.config.levels, ensemble.config.base_filters) for k in range(ensemble.members)]
    x = torch.from_numpy(np.asarray(agatax.preprocess(volume.hu, volume.spacing, multiple=ensemble.config.multiple,
                                                      **ensemble.config.input_options)))[None, None]

    def run_torch(nets=nets, x=x):
        with torch.inference_mode():
            votes = torch.zeros(x.shape[2:], dtype=torch.int32)
            for net in nets:
                votes += (net(x)[0, 0] > 0).int()
        return votes

    return run_torch


def start(args, session) -> None:
    import agatax

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "exam"
        volume = exam()
        agatax.write_dicom_series(folder, volume)
        ensemble = agatax.load_default_ensemble()
        read = agatax.read_volume(folder)
        out = Path(tmp) / "out.json"
        command = [sys.executable, "-m", "agatax", "score", str(folder), "--json", str(out), "--quiet"]
        subprocess.run(command + ["--no-server"], check=True, capture_output=True)  # fills the compilation cache
        sock = Path(tmp) / "serve" / "serve.sock"
        sock.parent.mkdir(mode=0o700)
        served_env = dict(os.environ, AGATAX_SERVER=str(sock))
        server = subprocess.Popen([sys.executable, "-m", "agatax", "serve", "--idle-minutes", "30"],
                                  env=served_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while not sock.exists():
                if server.poll() is not None:
                    raise SystemExit("agatax serve did not start")
                time.sleep(0.05)
            subprocess.run(command, check=True, capture_output=True, env=served_env)  # the server's first call

            def new_process():
                subprocess.run(command + ["--no-server"], check=True, capture_output=True)

            def served():
                subprocess.run(command, check=True, capture_output=True, env=served_env)

            def warm_in_process():
                agatax.score_exam(agatax.read_volume(folder), ensemble)

            times = session.interleave({"agatax score (new process, cache warm)": new_process,
                                        "agatax score (handed to a running agatax serve)": served,
                                        "score_exam in process (warm, read included)": warm_in_process},
                                       rounds=args.rounds)
        finally:
            server.terminate()
            server.wait(timeout=60)
        session.report(times, baseline="score_exam in process (warm, read included)",
                       shapes={"exam": read.shape, "spacing_mm": read.spacing},
                       title="start: a second agatax score against the warm in-process score_exam")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--force", action="store_true", help="measure on a busy machine (figures flagged BUSY)")
    parser.add_argument("--part", choices=("inference", "start", "box", "crop", "all"), default="all")
    args = parser.parse_args()
    session = Session("bench_speed", force=args.force)  # before any set-up work of ours
    if args.part in ("inference", "all"):
        inference(args, session)
    if args.part in ("start", "all"):
        start(args, session)
    if args.part in ("box", "all"):
        box_cost(args, session)
    if args.part in ("crop", "all"):
        crop_cost(args, session)


if __name__ == "__main__":
    main()
