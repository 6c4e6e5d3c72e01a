"""Per-exam time of the five-model pipeline on a realistic exam, split by stage, with the PyTorch peer.

Exam: 56 x 512 x 512 voxels at 3 x 0.4 x 0.4 mm -> 56 x 72 x 72 network grid. Stages (each jitted on its
own, compile time reported apart, median of --repeats): pre-processing, five-model inference (each
strategy / convolution form), post-processing (back to the original grid, HU >= 130, vote), scoring
(scores_jax on the device; compute_scores on the host), and the whole pipeline (scores on the host / in
the one jit). Inference variants (fused = BatchNorm folded, concatenation-free decoder; unfused = the Flax
module), the matmul probe and the PyTorch peer are timed round-robin in one process, so that load from
other jobs on a shared machine hits all alike; ratios are taken run by run.
Rates: network GFLOP (counted layer by layer) per second, against this machine's float32 matmul rate
(a 4096^2 jnp.dot). The PyTorch peer: the same network in torch, eager, five members in sequence.

    python benchmarks/bench_inference.py [--repeats 5] [--no-torch] [--impls fold,xla] [--strategies sequential,vmap]
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np

import agatax
from agatax.ensemble import ensemble_votes
from agatax.model import UNetConfig, fold_batchnorm, infer
from agatax.pipeline import segment_and_score
from agatax.preprocess import _preprocess_kernel, _restore_kernel, grid_shape

SHAPE, SPACING = (56, 512, 512), (3.0, 0.4, 0.4)


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def first_call(fn):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def network_flops(config: UNetConfig, grid) -> float:
    """Multiply-adds x 2 of one forward pass, layer by layer (convolutions, projections, up-sampling, head)."""
    vox = float(np.prod(grid))
    f = [config.filters(l) for l in range(config.levels)]
    total = 0.0

    def block(cin, cout, v):
        return 27 * cin * cout * v + 27 * cout * cout * v + (cin * cout * v if cin != cout else 0)

    for l in range(config.levels):
        total += block(1 if l == 0 else f[l - 1], f[l], vox / 8**l)
    for l in range(config.levels - 1):
        total += 8 * f[l + 1] * f[l] * vox / 8 ** (l + 1) + block(2 * f[l], f[l], vox / 8**l)
    total += f[0] * vox
    return 2 * total


def synthetic_exam(seed=0):
    rng = np.random.default_rng(seed)
    hu = rng.normal(40.0, 20.0, SHAPE).astype(np.float32)
    hu[:, :60] = -1000.0
    for _ in range(12):
        z, y, x = rng.integers(5, 50), rng.integers(150, 350), rng.integers(150, 350)
        hu[z, y : y + 4, x : x + 4] = rng.uniform(200, 900)
    return hu


def cpu_name():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name"))
    except Exception:
        return platform.processor() or "unknown"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--impls", default="fold")
    parser.add_argument("--strategies", default="sequential")
    args = parser.parse_args()
    r = args.repeats
    backend = jax.default_backend()
    print(f"device: {backend}, {jax.devices()[0].device_kind}, {cpu_name()}, jax {jax.__version__}")

    a = jnp.asarray(np.random.default_rng(0).standard_normal((4096, 4096)).astype(np.float32))
    dot = jax.jit(jnp.dot)
    first_call(lambda: dot(a, a))
    matmul = 2 * 4096**3 / median_time(lambda: dot(a, a), max(r, 3)) / 1e9
    print(f"float32 matmul rate: {matmul:.1f} GFLOP/s")

    hu_np = synthetic_exam()
    hu = jnp.asarray(hu_np)
    spacing = jnp.asarray(SPACING, jnp.float32)
    target = jnp.float32(SPACING[0])
    thr = jnp.float32(130.0)
    base = UNetConfig()
    grid = grid_shape(SHAPE, SPACING, multiple=base.multiple)
    gflop = network_flops(base, grid) / 1e9
    print(f"exam {SHAPE} at {SPACING} mm -> grid {grid}; one forward pass {gflop:.1f} GFLOP, "
          f"{args.members} members {args.members * gflop:.1f} GFLOP")

    ens = agatax.init_ensemble(jax.random.key(0), base, members=args.members)
    # BatchNorm statistics as after training (not the identity): keeps activations in a realistic range
    ens = ens.replace(variables={**ens.variables, "batch_stats": jax.tree.map(lambda v: v * 0.5 + 0.1, ens.variables["batch_stats"])})

    pre = jax.jit(lambda h: _preprocess_kernel(h, spacing, target, thr, out_shape=grid, window=(-300.0, 800.0)))
    c = first_call(lambda: pre(hu))
    t = median_time(lambda: pre(hu), r)
    print(f"preprocess: {t * 1e3:.1f} ms (compile+first {c:.2f} s)")
    x = pre(hu)[None, ..., None]

    # the PyTorch peer, built first so that its runs interleave with ours
    run_torch = None
    if not args.no_torch:
        import torch

        from torch_unet import from_flax

        torch.set_num_threads(len(__import__("os").sched_getaffinity(0)))
        nets = [from_flax(jax.tree.map(lambda v: np.asarray(v[k]), ens.variables)) for k in range(args.members)]
        xt = torch.from_numpy(np.asarray(x)).permute(0, 4, 1, 2, 3).contiguous()
        with torch.inference_mode():
            out0 = nets[0](xt)[0, 0].numpy()
        member0 = jax.tree.map(lambda v: v[0], ens.variables)
        ref0 = np.asarray(jax.jit(lambda v, x: ens.model.apply(v, x))(member0, x))[0, ..., 0]
        fused0 = np.asarray(jax.jit(lambda v, x: infer(fold_batchnorm(v, base), x, base))(member0, x))[0, ..., 0]
        print(f"member 0, max |logit diff| (logit scale {np.abs(ref0).max():.1f}): torch vs agatax module "
              f"{np.abs(out0 - ref0).max():.2e}; agatax fused vs module {np.abs(fused0 - ref0).max():.2e}")

        def run_torch():
            with torch.inference_mode():
                votes = torch.zeros(xt.shape[2:], dtype=torch.int32)
                for net in nets:
                    votes += (net(xt)[0, 0] > 0).int()
                return votes

        run_torch()

    # every variant compiled first, then all timed round-robin with the matmul probe and the peer:
    # on a shared machine, load then hits every variant alike
    variants = {}
    for impl in args.impls.split(","):
        e = ens.replace(config=UNetConfig(conv_impl=impl))
        for strategy in args.strategies.split(","):
            if strategy == "vmap" and impl == "xla" and backend == "cpu":
                continue  # grouped 3D convolutions: minutes on CPU
            for fused in (True, False):
                f = jax.jit(lambda e, x, s=strategy, fu=fused: ensemble_votes(e, x, strategy=s, fused=fu))
                name = f"{impl}/{strategy}/{'fused' if fused else 'unfused'}"
                c = first_call(lambda: f(e, x))
                print(f"compile+first {name}: {c:.1f} s", flush=True)
                variants[name] = lambda f=f, e=e: f(e, x)
    results = {name: np.asarray(fn()[1]) for name, fn in variants.items()}
    times = {name: [] for name in ["matmul", *variants, "torch"]}

    def timed(name, fn):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times[name].append(time.perf_counter() - t0)

    for rep in range(r):
        timed("matmul", lambda: dot(a, a))
        for name, fn in variants.items():
            if not ("/vmap/" in name and backend == "cpu" and rep):  # ~30 s a run on CPU: once is enough
                timed(name, fn)
        if run_torch is not None:
            timed("torch", run_torch)
    rate = 2 * 4096**3 / float(np.median(times["matmul"])) / 1e9
    fmt = lambda ts: ", ".join(f"{t:.2f}" for t in ts)
    print(f"matmul rate during these runs: {rate:.1f} GFLOP/s (per run " + ", ".join(f"{2 * 4096**3 / t / 1e9:.0f}" for t in times["matmul"]) + ")")
    for name in variants:
        t = float(np.median(times[name]))
        print(f"inference {name}: {t:.3f} s for {args.members} members ({args.members * gflop / t:.1f} GFLOP/s = "
              f"{100 * args.members * gflop / t / rate:.0f} % of the matmul rate; runs {fmt(times[name])} s)", flush=True)
    if times["torch"]:
        t = float(np.median(times["torch"]))
        print(f"PyTorch {torch.__version__} eager, {args.members} members in sequence: {t:.3f} s "
              f"({args.members * gflop / t:.1f} GFLOP/s; runs {fmt(times['torch'])} s)")
        for name in variants:
            if len(times[name]) == len(times["torch"]):
                ratios = [ours / peer for ours, peer in zip(times[name], times["torch"])]
                print(f"  {name} / PyTorch: median {np.median(ratios):.2f} (per run {fmt(ratios)}); "
                      f"ratio of medians {np.median(times[name]) / t:.2f}")
    first_name = next(iter(results))
    first = results[first_name] * 2 > args.members
    differ = {name: int((first != (v * 2 > args.members)).sum()) for name, v in results.items() if name != first_name}
    print(f"mask voxels differing from {first_name} (logits within float rounding of 0): {differ} of {first.size}")

    coarse_votes = jnp.asarray(results[first_name][0])
    post = jax.jit(lambda v, h: (lambda votes: (votes * 2 > args.members, votes))(
        jnp.where(h >= thr, _restore_kernel(v, spacing, target, shape=SHAPE), 0)))
    c = first_call(lambda: post(coarse_votes, hu))
    t = median_time(lambda: post(coarse_votes, hu), r)
    print(f"postprocess: {t * 1e3:.1f} ms (compile+first {c:.2f} s)")
    mask = post(coarse_votes, hu)[0]
    # score a mask with calcium in it (random weights segment little): the bright spots
    mask = mask | (hu >= 200)

    score = jax.jit(lambda h, m: agatax.scores_jax(h, m, spacing))
    c = first_call(lambda: score(hu, mask))
    t = median_time(lambda: score(hu, mask), r)
    print(f"scoring (scores_jax, device): {t * 1e3:.1f} ms (compile+first {c:.2f} s)")
    mask_np = np.asarray(mask)
    t = median_time(lambda: agatax.compute_scores(hu_np, mask_np, SPACING), r)
    print(f"scoring (compute_scores, host, lesion table): {t * 1e3:.1f} ms")

    for where in ("host", "device"):
        run = lambda: segment_and_score(ens, hu, spacing=SPACING, score_on=where, allow_phantom=True)
        c = first_call(run)
        t = median_time(run, r)
        print(f"whole pipeline (auto strategy), scores on the {where}: {t:.3f} s per exam (compile+first {c:.1f} s)")


if __name__ == "__main__":
    main()
