"""Average two ensembles' weights member by member: (1 - alpha) * A + alpha * B (weight-space ensembling).

For two ensembles fine-tuned from the same weights (member k of B started from member k of A, so the two
lie close: the script prints every pair's distance), the average of each member's variables (parameters and
BatchNorm statistics alike) is one network that often keeps what each fine-tune gained (WiSE-FT,
Wortsman et al. 2022, interpolating zero-shot and fine-tuned weights). The result is an ensemble file as
any other, tested like one:

    python experiments/weight_average.py --a agatax/weights/default_ensemble.msgpack --b W/finetuned.msgpack \
        --alpha 0.5 --out W/average.msgpack
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agatax.ensemble import Ensemble, load_ensemble, save_ensemble  # noqa: E402
from agatax.errors import InputError  # noqa: E402


def member_distances(a: Ensemble, b: Ensemble) -> np.ndarray:
    """(members, members) relative L2 distance of A's member i to B's member j over all parameters:
    ||a_i - b_j|| / ||a_i||."""
    def flat(e):  # (members, all parameters)
        return np.concatenate([np.reshape(x, (e.members, -1)) for x in jax.tree.leaves(e.variables["params"])], axis=1)

    fa, fb = flat(a), flat(b)
    return np.linalg.norm(fa[:, None, :] - fb[None, :, :], axis=-1) / np.linalg.norm(fa, axis=1)[:, None]


def average(a: Ensemble, b: Ensemble, alpha: float) -> Ensemble:
    """Member by member (1 - alpha) * a + alpha * b over every variable (float64 sum, float32 result)."""
    if a.config != b.config or a.members != b.members:
        raise InputError(f"the two ensembles differ ({a.members} and {b.members} members; configs equal: "
                         f"{a.config == b.config}): only ensembles of one architecture can be averaged",
                         code="CONFIG_MISMATCH")
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must lie in [0, 1], got {alpha}", code="BAD_ALPHA")
    mixed = jax.tree.map(lambda x, y: ((1.0 - alpha) * np.asarray(x, np.float64)
                                       + alpha * np.asarray(y, np.float64)).astype(np.float32),
                         a.variables, b.variables)
    return Ensemble(mixed, a.config)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, help="ensemble file A (alpha 0)")
    ap.add_argument("--b", required=True, help="ensemble file B (alpha 1)")
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--out", required=True, help="ensemble file to write (refused if it exists)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        ap.error(f"{out} exists: name a new file")
    a, b = load_ensemble(args.a), load_ensemble(args.b)
    d = member_distances(a, b)
    print("relative distance of A's member i to B's member j (rows i):")
    for row in d:
        print("  " + " ".join(f"{v:.3f}" for v in row))
    save_ensemble(out, average(a, b, args.alpha))
    print(f"wrote {out} ({1 - args.alpha:g} A + {args.alpha:g} B)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
