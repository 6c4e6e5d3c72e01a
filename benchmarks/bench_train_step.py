"""One training step (forward, backward, Adam update) of the paper-size network on CPU: agatax (Flax, jitted)
against the same network in PyTorch eager, on the same fixed batch, under the protocol (protocol.py).

Both sides: batch of 4 patches of 32 x 64 x 64 voxels (the TrainConfig default), Dice loss on sigmoid
probabilities pooled over the batch, BatchNorm in training mode, Adam at 1e-3. agatax's step is the
library's loss and optimiser without its patch sampling and augmentation (a fixed batch, as torch's).

    python benchmarks/bench_train_step.py [--rounds 7] [--force] [--model paper|small]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from protocol import Session  # noqa: E402

MODELS = {"paper": (4, 16), "small": (3, 8)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--model", choices=sorted(MODELS), default="paper")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--patch", default="32,64,64")
    parser.add_argument("--impls", default="auto", help="agatax convolution forms to time, e.g. fold,xla")
    args = parser.parse_args()
    session = Session(f"training step, {args.model} network", force=args.force)  # before any set-up work
    levels, filters = MODELS[args.model]
    patch = tuple(int(v) for v in args.patch.split(","))

    import jax
    import jax.numpy as jnp

    import agatax
    from agatax.train import TrainConfig, init_state, segmentation_loss

    rng = np.random.default_rng(0)
    x = rng.random((args.batch, *patch, 1), np.float32)
    y = (rng.random((args.batch, *patch, 1)) > 0.97).astype(np.float32)
    config = TrainConfig(batch_size=args.batch, patch_zyx=patch, learning_rate=1e-3, clip_norm=0.0)
    states = {impl: init_state(agatax.UNetConfig(levels=levels, base_filters=filters, conv_impl=impl), config, 0)
              for impl in args.impls.split(",")}

    @jax.jit
    def step(state, x, y):
        def loss_fn(params):
            logits, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, x, train=True,
                                             mutable=["batch_stats"])
            return segmentation_loss(logits.astype(jnp.float32), y), updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return state.apply_gradients(grads=grads, batch_stats=updates["batch_stats"]), loss

    xj, yj = jnp.asarray(x), jnp.asarray(y)
    variants = {}
    for impl, state in states.items():
        box = {"state": state}

        def agatax_step(box=box):
            box["state"], loss = step(box["state"], xj, yj)
            jax.block_until_ready(loss)

        variants[f"agatax (jit, conv {impl}) {args.model}"] = agatax_step
    try:
        import torch

        from torch_unet import TorchUNet
    except ImportError:
        torch = None
        print("torch not installed: the PyTorch peer is skipped", file=sys.stderr)
    if torch is not None:
        torch.set_num_threads(len(os.sched_getaffinity(0)))
        net = TorchUNet(levels, filters).train()
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        xt = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))
        yt = torch.from_numpy(np.ascontiguousarray(np.moveaxis(y, -1, 1)))

        def torch_step():
            opt.zero_grad(set_to_none=True)
            p = torch.sigmoid(net(xt))
            loss = 1 - (2 * (p * yt).sum() + 1) / (p.sum() + yt.sum() + 1)
            loss.backward()
            opt.step()
            return float(loss)

        variants[f"torch eager {args.model}"] = torch_step
    times = session.interleave(variants, rounds=args.rounds)
    session.report(times, baseline=f"torch eager {args.model}" if torch is not None else None,
                   shapes={"batch": args.batch, "patch_zyx": patch, "levels": levels, "base_filters": filters},
                   title=f"training step, {args.model} network, batch {args.batch} x {patch}")


if __name__ == "__main__":
    main()
