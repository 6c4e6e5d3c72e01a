"""One 3x3x3 convolution layer of the paper's network at its training shape, forward and backward, against
PyTorch: where agatax's training step loses its time on CPU.

Shape: batch 4 x 32 x 64 x 64 voxels (the training patch), 16 -> 16 channels (the first level). Variants,
interleaved under benchmarks/protocol.py: agatax's convolution forms ("fold": one 2D convolution with
depth folded into the channels, the CPU default; "xla": XLA's 3D convolution) forward and as a VJP (the
input and kernel gradients), the kernel gradient written as 9 in-plane shifted matrix products, and
PyTorch's conv3d forward and forward + backward. XLA options are taken from the environment, so a flag is
compared by running the script once with and once without it:

    python benchmarks/bench_conv_layer.py [--rounds 5] [--channels 16,16]
    XLA_FLAGS=--xla_cpu_use_onednn=true python benchmarks/bench_conv_layer.py
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from protocol import Session  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--channels", default="16,16", help="c_in,c_out")
    ap.add_argument("--shape", default="4,32,64,64", help="batch,z,y,x")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    session = Session("bench_conv_layer", force=args.force)

    import jax
    import jax.numpy as jnp

    from agatax.model import conv3x3x3

    b, z, y, x = (int(v) for v in args.shape.split(","))
    c, co = (int(v) for v in args.channels.split(","))
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.standard_normal((b, z, y, x, c)), jnp.float32)
    K = jnp.asarray(rng.standard_normal((3, 3, 3, c, co)) * 0.1, jnp.float32)
    G = jnp.asarray(rng.standard_normal((b, z, y, x, co)), jnp.float32)

    def vjp(impl):
        def f(a, k, g):
            _, pull = jax.vjp(lambda a_, k_: conv3x3x3(a_, k_, impl=impl), a, k)
            return pull(g)
        return jax.jit(f)

    @jax.jit
    def kernel_grad_taps(a, g):
        p = jnp.pad(a, ((0, 0), (1, 1), (1, 1), (1, 1), (0, 0)))
        stacked = jnp.concatenate([p[:, 0:z], p[:, 1:z + 1], p[:, 2:z + 2]], axis=-1)
        gg = g.reshape(-1, co)
        taps = [stacked[:, :, i:i + y, j:j + x, :].reshape(-1, 3 * c).T @ gg for i in range(3) for j in range(3)]
        return jnp.transpose(jnp.stack(taps).reshape(3, 3, 3, c, co), (2, 0, 1, 3, 4))

    reference = vjp("xla")(X, K, G)[1]
    err = float(jnp.abs(kernel_grad_taps(X, G) - reference).max() / jnp.abs(reference).max())
    fwd = {impl: jax.jit(lambda a, k, impl=impl: conv3x3x3(a, k, impl=impl)) for impl in ("fold", "xla")}
    back = {impl: vjp(impl) for impl in ("fold", "xla")}
    variants = {
        "agatax fold forward": lambda: jax.block_until_ready(fwd["fold"](X, K)),
        "agatax xla forward": lambda: jax.block_until_ready(fwd["xla"](X, K)),
        "agatax fold VJP (input + kernel gradients)": lambda: jax.block_until_ready(back["fold"](X, K, G)),
        "agatax xla VJP": lambda: jax.block_until_ready(back["xla"](X, K, G)),
        "kernel gradient as 9 matrix products": lambda: jax.block_until_ready(kernel_grad_taps(X, G)),
    }
    try:
        import torch

        xt = torch.randn(b, c, z, y, x, requires_grad=True)
        wt = torch.randn(co, c, 3, 3, 3, requires_grad=True)
        gt = torch.randn(b, co, z, y, x)

        def torch_forward():
            with torch.no_grad():
                torch.nn.functional.conv3d(xt, wt, padding=1)

        def torch_both():
            torch.nn.functional.conv3d(xt, wt, padding=1).backward(gt)

        variants["torch conv3d forward"] = torch_forward
        variants["torch conv3d forward + backward"] = torch_both
    except ImportError:
        pass
    times = session.interleave(variants, rounds=args.rounds)
    session.report(times, baseline="torch conv3d forward + backward" if "torch conv3d forward" in variants else None,
                   shapes={"x": (b, z, y, x, c), "kernel": (3, 3, 3, c, co)},
                   notes=f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; kernel gradient as matrix products: "
                         f"max error {err:.1e} of the largest entry")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
