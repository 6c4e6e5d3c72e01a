"""Five U-Nets voted together: stacked parameters, one jitted inference, majority vote, checkpoint files.

The ensemble axis leads every variable: ``variables["params"]`` and ``variables["batch_stats"]`` hold
arrays of shape (members, ...). Two ways to run the members inside one jit:

- ``"vmap"``: ``jax.vmap`` over the stacked parameters (one batched program; best on GPU).
- ``"sequential"``: ``lax.map`` over the members (one member at a time; on CPU vmapped convolutions
  become slow grouped convolutions, so this wins there).

``"auto"`` picks sequential on CPU and vmap elsewhere. Both give the same masks.
"""

from __future__ import annotations

import dataclasses
import os
from fractions import Fraction
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import flax.serialization
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from agatax._atomic import atomic_write_bytes
from agatax.errors import CheckpointError, InputError
from agatax.model import UNet, UNetConfig, fold_batchnorm, infer

__all__ = [
    "Ensemble",
    "init_ensemble",
    "stack_members",
    "member",
    "ensemble_logits",
    "ensemble_votes",
    "majority_vote",
    "object_majority",
    "resolve_strategy",
    "save_ensemble",
    "load_ensemble",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "STRATEGIES",
]

STRATEGIES = ("auto", "vmap", "sequential")
CHECKPOINT_FORMAT = "agatax-ensemble"
CHECKPOINT_VERSION = 1
_STORE_DTYPES = ("float32", "float16", "bfloat16")
# object_majority's dense line: objects peaking in [low, high) HU (120 kVp): above the networks' input clip at
# 800 HU (they cannot see how dense such an object is), below coronary stents (1500-2600 HU) and other metal
DENSE_VOTE_HU = (800.0, 1500.0)


@flax.struct.dataclass
class Ensemble:
    """Stacked U-Net variables: a pytree whose leaves carry a leading (members,) axis; ``config`` is static.

    Attributes:
        variables: {"params": ..., "batch_stats": ...}, each leaf (members, ...) float32.
        config: the members' shared UNetConfig.
    """

    variables: Any
    config: UNetConfig = flax.struct.field(pytree_node=False, default=UNetConfig())

    @property
    def members(self) -> int:
        """Number of member networks."""
        return int(jax.tree.leaves(self.variables)[0].shape[0])

    @property
    def model(self) -> UNet:
        """The (parameter-free) Flax module shared by all members."""
        return UNet(self.config)


def init_ensemble(rng: jax.Array, config: UNetConfig = UNetConfig(), members: int = 5) -> Ensemble:
    """Fresh, independently initialised members (each from its own key split from ``rng``).

    Each member's key seeds an "rbg" generator for the weight draws: XLA compiles its normal sampler
    several times faster than threefry's on CPU, and the draws stay a pure function of ``rng``.
    """
    if not (isinstance(members, int) and members >= 1):
        raise InputError(f"members must be an int >= 1; got {members!r}", code="BAD_CONFIG")
    keys = jax.random.split(rng, members)
    init = _member_init(config)
    return stack_members([init(k) for k in keys], config)


@lru_cache(maxsize=16)
def _member_init(config: UNetConfig):
    model = UNet(config)
    m = config.multiple
    dummy = jnp.zeros((1, m, m, m, 1), jnp.float32)

    def init(key: jax.Array) -> Any:
        rbg = jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl="rbg")
        return dict(model.init(rbg, dummy, train=False))

    return jax.jit(init)


def stack_members(variables_list: list[Any], config: UNetConfig) -> Ensemble:
    """Stack per-member variable trees (each {"params", "batch_stats"}) into an Ensemble."""
    if not variables_list:
        raise InputError("stack_members needs at least one member's variables; got none", code="BAD_CONFIG")
    structures = {jax.tree.structure(dict(v)) for v in variables_list}
    if len(structures) != 1:
        raise InputError(
            "member variable trees differ in structure; all members must share one UNetConfig", code="CONFIG_MISMATCH"
        )
    stacked = jax.tree.map(lambda *v: jnp.stack([jnp.asarray(a) for a in v]), *[dict(v) for v in variables_list])
    _check_variables(stacked, config, len(variables_list), error=InputError)
    return Ensemble(variables=stacked, config=config)


def member(ensemble: Ensemble, k: int) -> Any:
    """The variables of member ``k`` (no members axis), ready for ``UNet(config).apply``."""
    return jax.tree.map(lambda a: a[k], ensemble.variables)


def resolve_strategy(strategy: str) -> str:
    """"auto" -> "sequential" on CPU, "vmap" on GPU/TPU; others checked and passed through."""
    if strategy not in STRATEGIES:
        raise InputError(f"strategy must be one of {STRATEGIES}; got {strategy!r}", code="BAD_STRATEGY")
    if strategy == "auto":
        return "sequential" if jax.default_backend() == "cpu" else "vmap"
    return strategy


def ensemble_logits(ensemble: Ensemble, x: jax.Array, *, strategy: str = "auto", fused: bool = True) -> jax.Array:
    """Every member's logits. x (batch, z, y, x, 1) in [0, 1] -> float32 (members, batch, z, y, x, 1).

    Jittable (``strategy``, ``fused`` static); eval mode (running BatchNorm statistics). ``fused`` runs
    :func:`agatax.model.infer` (BatchNorm folded into the convolutions, once per member per call, before
    the network); False runs the Flax module as trained (same logits up to float32 rounding).
    """
    strategy = resolve_strategy(strategy)
    config = ensemble.config
    if fused:
        apply = lambda v, x: infer(fold_batchnorm(v, config), x, config)
    else:
        apply = partial(ensemble.model.apply, train=False)
    if strategy == "vmap":
        return jax.vmap(apply, in_axes=(0, None))(ensemble.variables, x)
    return jax.lax.map(lambda v: apply(v, x), ensemble.variables)


def majority_vote(votes: jax.Array, members: int) -> jax.Array:
    """True where more than half of ``members`` voted (>= 3 of 5)."""
    return votes * 2 > members


def object_majority(votes, candidates, members: int, *, split: bool = True, hu=None,
                    dense_vote: float | None = None, dense_hu: tuple[float, float] = DENSE_VOTE_HU):
    """Keep or drop each candidate object whole by the members' votes over all its voxels, and keep the
    strongly voted parts of the objects dropped.

    Args:
        votes: (z, y, x) members voting for calcium per voxel (int; any real values on the host path).
        candidates: bool (z, y, x) voxels that may be calcium (HU >= threshold inside the chest region).
        members: number of voting members.
        split: also keep, in each dropped object, every 26-connected part of its voxels voted by a majority
            (vote > members / 2) whose own mean vote is at least ``members - 1``: calcium the networks agree
            on that touches a larger object they do not (a left main plaque fused with aortic-root
            calcium). Ensembles of one or two members: no split.
        hu: float (z, y, x) HU, needed by ``dense_vote`` only.
        dense_vote: with ``hu``, an object whose peak lies in ``dense_hu`` [low, high) HU is also kept whole
            where its mean vote is at least this share of the members (0.4: 2 of 5): the networks see HU
            clipped at 800, and split their votes on dense plaques more often than on faint ones; from 1500
            HU on an object may be a stent, and keeps the majority line. None: one line for all.

    Returns:
        bool (z, y, x): every 3D object of ``candidates`` (26-connected) whose mean vote over its voxels
        is more than half of ``members`` (or reaches the dense line), whole, and (``split``) the parts above
        of the others. With one voxel per object this is ``majority_vote``. NumPy in: host labelling; JAX
        arrays or tracers in: jittable (JAX labelling).
    """
    from agatax.scoring.components import label_volume

    split = split and members >= 3
    dense = None
    if dense_vote is not None:
        if hu is None:
            raise InputError("dense_vote needs the exam's HU (hu=) to find each object's peak", code="BAD_ARGUMENT")
        share = Fraction(dense_vote).limit_denominator(1000)  # exact integer comparisons on both paths
        if not 0 < share <= Fraction(1, 2):
            raise InputError(f"dense_vote must lie in (0, 0.5] (a share of the members); got {dense_vote}",
                             code="BAD_ARGUMENT")
        dense = (share.numerator * members, share.denominator)

    def whole(total, count, peak):
        keep = 2 * total > members * count
        if dense is not None:
            keep = keep | ((peak >= dense_hu[0]) & (peak < dense_hu[1]) & (dense[1] * total >= dense[0] * count))
        return keep

    if any(isinstance(a, jax.Array) for a in (votes, candidates, hu)):
        candidates = jnp.asarray(candidates)
        votes = jnp.asarray(votes, jnp.int32)
        peak_of = None if dense is None else jnp.asarray(hu, jnp.float32).reshape(-1)

        def kept(which, enough):
            labels = label_volume(which, connectivity=26, backend="jax").reshape(-1)
            n = labels.size + 1  # static cap: labels are 0..number of voxels
            total = jax.ops.segment_sum(votes.reshape(-1), labels, n)
            count = jax.ops.segment_sum(jnp.ones_like(labels), labels, n)
            peak = None if peak_of is None else jax.ops.segment_max(peak_of, labels, n)
            return enough(total, count, peak).at[0].set(False)[labels].reshape(which.shape)

        mask = kept(candidates, whole)
        if split:
            voted = candidates & ~mask & (2 * votes > members)
            mask = mask | kept(voted, lambda total, count, _: total >= (members - 1) * count)
        return mask
    candidates = np.asarray(candidates, bool)
    votes = np.asarray(votes)
    hu = None if dense is None else np.asarray(hu)
    out = np.zeros(candidates.shape, bool)
    _keep_objects(out, candidates, votes, whole, hu)
    if split:
        _keep_objects(out, candidates & ~out & (2 * votes > members), votes,
                      lambda total, count, _: total >= (members - 1) * count)
    return out


def _keep_objects(out: np.ndarray, which: np.ndarray, votes: np.ndarray, enough, hu=None) -> None:
    """Set in ``out`` every 26-connected object of ``which`` for which ``enough(total vote, voxels, peak HU)``
    holds (peak None without ``hu``; host; the work on the voxels of ``which`` only: few of a large exam)."""
    from agatax.scoring.components import label_volume

    where = np.flatnonzero(which)
    if not where.size:
        return
    labels = label_volume(which, connectivity=26, backend="host").ravel()[where]
    n = int(labels.max(initial=0)) + 1
    total = np.bincount(labels, weights=votes.ravel()[where].astype(np.float64), minlength=n)
    peak = None
    if hu is not None:
        peak = np.full(n, -np.inf)
        np.maximum.at(peak, labels, np.asarray(hu.ravel()[where], np.float64))
    keep = enough(total, np.bincount(labels, minlength=n), peak)
    keep[0] = False
    out.ravel()[where[keep[labels]]] = True


def ensemble_votes(
    ensemble: Ensemble, x: jax.Array, *, strategy: str = "auto", fused: bool = True
) -> tuple[jax.Array, jax.Array]:
    """Majority-vote mask and vote counts. x (batch, z, y, x, 1) -> (bool, int32), each (batch, z, y, x).

    A member votes for a voxel when its logit is > 0 (probability > 0.5). ``fused``: see ensemble_logits.
    """
    logits = ensemble_logits(ensemble, x, strategy=strategy, fused=fused)
    votes = jnp.sum(logits[..., 0] > 0, axis=0, dtype=jnp.int32)
    return majority_vote(votes, ensemble.members), votes


# ---------------------------------------------------------------------------------------------- checkpoints


def _expected_shapes(config: UNetConfig) -> Any:
    m = config.multiple
    return jax.eval_shape(
        lambda: UNet(config).init(jax.random.key(0), jnp.zeros((1, m, m, m, 1), jnp.float32), train=False)
    )


def _check_variables(variables: Any, config: UNetConfig, members: int, *, error: type = CheckpointError, path=None) -> None:
    expected = jax.tree.map(lambda s: (members,) + tuple(s.shape), dict(_expected_shapes(config)))
    try:
        got = jax.tree.map(lambda a: tuple(np.shape(a)), dict(variables))
    except Exception as err:  # pragma: no cover - defensive
        raise error(f"ensemble variables are not a tree of arrays: {err}", code="CONFIG_MISMATCH") from err
    if jax.tree.structure(expected) != jax.tree.structure(got) or expected != got:
        exp_leaves = jax.tree_util.tree_leaves_with_path(expected, is_leaf=lambda t: isinstance(t, tuple))
        got_flat = dict(jax.tree_util.tree_leaves_with_path(got, is_leaf=lambda t: isinstance(t, tuple)))
        diff = [
            f"{jax.tree_util.keystr(k)}: expected {s}, found {got_flat.get(k, 'nothing')}"
            for k, s in exp_leaves
            if got_flat.get(k) != s
        ][:3]
        raise error(
            f"ensemble variables do not match UNetConfig(levels={config.levels}, base_filters={config.base_filters}) "
            f"with {members} members" + (f" in {path}" if path else "") + ": " + ("; ".join(diff) or "tree structure differs"),
            code="CONFIG_MISMATCH",
            hint="load with the configuration the weights were trained with",
            paths=(path,) if path else (),
        )


def save_ensemble(path: str | os.PathLike, ensemble: Ensemble, *, dtype: str = "float32") -> Path:
    """Write ``ensemble`` to one msgpack file (header + variables), atomically (temp file, then rename).

    ``dtype`` "float16" or "bfloat16" stores the weights at half size; they load back as float32.
    Returns the path written.
    """
    if dtype not in _STORE_DTYPES:
        raise InputError(f"checkpoint dtype must be one of {_STORE_DTYPES}; got {dtype!r}", code="BAD_DTYPE")
    path = Path(path)
    store = jnp.dtype(dtype)
    variables = jax.tree.map(lambda a: np.asarray(jnp.asarray(a, jnp.float32).astype(store)), dict(ensemble.variables))
    if dtype == "bfloat16":  # msgpack knows no bfloat16: keep its raw 16-bit words
        variables = jax.tree.map(lambda a: a.view(np.uint16), variables)
    header = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": ensemble.config.to_dict(),
        "members": ensemble.members,
        "dtype": dtype,
    }
    payload = flax.serialization.msgpack_serialize({"header": header, "variables": variables})
    atomic_write_bytes(path, payload)
    return path


def load_ensemble(path: str | os.PathLike, *, config: UNetConfig | None = None) -> Ensemble:
    """Read an ensemble written by :func:`save_ensemble`; weights come back as float32.

    ``config``: if given, the file's architecture must match it (CONFIG_MISMATCH otherwise); the file's
    ``conv_impl``/``dtype`` numerics choices are replaced by those of ``config`` (its ``input_box_mm``,
    ``input_dense_gain`` and ``trained_noise_hu`` are the file's: what the weights were trained on).
    Raises CheckpointError with code NOT_FOUND, CORRUPT_CHECKPOINT, VERSION_MISMATCH, CONFIG_MISMATCH or
    NON_FINITE_WEIGHTS.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"no ensemble checkpoint at {path}", code="NOT_FOUND", hint="check the path", paths=(str(path),)
        )
    try:
        state = flax.serialization.msgpack_restore(path.read_bytes())
        header = state["header"]
        variables = state["variables"]
        fmt = header["format"]
    except Exception as err:
        raise CheckpointError(
            f"{path} is not a readable agatax ensemble checkpoint ({type(err).__name__}: {err})",
            code="CORRUPT_CHECKPOINT",
            hint="the file is truncated or not a checkpoint: save it again with agatax.save_ensemble",
            paths=(str(path),),
        ) from err
    if fmt != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} has format {fmt!r}, expected {CHECKPOINT_FORMAT!r}", code="CORRUPT_CHECKPOINT", paths=(str(path),)
        )
    if header.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {header.get('version')!r}; this agatax reads version {CHECKPOINT_VERSION}",
            code="VERSION_MISMATCH",
            hint="re-save the ensemble with the agatax version that reads it",
            paths=(str(path),),
        )
    try:
        fields = dict(header["config"])
        fields.setdefault("input_box_mm", 0.0)  # saved before the enhancement's box existed
        fields.setdefault("input_dense_gain", 0.0)  # saved before the input rose above 800 HU
        members = int(header["members"])
        stored = header["dtype"]
        file_config = UNetConfig(**fields)
    except Exception as err:
        raise CheckpointError(
            f"{path} has an unreadable header {header!r} ({err})", code="CORRUPT_CHECKPOINT", paths=(str(path),)
        ) from err
    if config is not None:
        if (config.levels, config.base_filters) != (file_config.levels, file_config.base_filters):
            raise CheckpointError(
                f"{path} holds UNetConfig(levels={file_config.levels}, base_filters={file_config.base_filters}); "
                f"expected levels={config.levels}, base_filters={config.base_filters}",
                code="CONFIG_MISMATCH",
                hint="load without config= to use the file's own configuration",
                paths=(str(path),),
            )
        # the numerics are the caller's to choose; the input the weights were trained on is not
        file_config = dataclasses.replace(config, input_box_mm=file_config.input_box_mm,
                                          input_dense_gain=file_config.input_dense_gain,
                                          trained_noise_hu=file_config.trained_noise_hu)
    if stored not in _STORE_DTYPES:
        raise CheckpointError(f"{path} stores unknown dtype {stored!r}", code="CORRUPT_CHECKPOINT", paths=(str(path),))

    def to_f32(a: Any) -> np.ndarray:
        a = np.asarray(a)
        if stored == "bfloat16":
            a = a.view(jnp.bfloat16)
        return a.astype(np.float32)

    try:
        variables = jax.tree.map(to_f32, variables)
    except Exception as err:
        raise CheckpointError(f"{path}: variables unreadable ({err})", code="CORRUPT_CHECKPOINT", paths=(str(path),)) from err
    _check_variables(variables, file_config, members, path=str(path))
    _check_finite(variables, path)
    # checked on the host, then moved in one transfer (jnp.asarray per leaf dispatches a conversion each)
    return Ensemble(variables=dict(jax.device_put(variables)), config=file_config)


def _check_finite(variables: Any, path: Path) -> None:
    """NON_FINITE_WEIGHTS naming the first member and parameter holding NaN or infinity."""
    for key, leaf in jax.tree_util.tree_leaves_with_path(variables):
        finite = np.isfinite(np.asarray(leaf)).reshape(leaf.shape[0], -1).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            raise CheckpointError(
                f"{path}: member {int(bad[0])} (of members {bad.tolist()}) holds NaN or infinite values in "
                f"{jax.tree_util.keystr(key)}",
                code="NON_FINITE_WEIGHTS",
                hint="the training diverged or the file was damaged; save the ensemble again from a good checkpoint",
                paths=(str(path),),
            )
