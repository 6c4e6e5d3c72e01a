"""Ensembles with known outputs for pipeline tests, and an oracle of the object vote."""

import jax
import jax.numpy as jnp
from fractions import Fraction

import numpy as np
from scipy import ndimage

from agatax.ensemble import stack_members
from agatax.model import UNet, UNetConfig


def all_calcium_ensemble():
    """Tiny networks whose output bias is +50: every voxel gets a calcium vote."""
    cfg = UNetConfig.tiny()
    shapes = jax.eval_shape(lambda: UNet(cfg).init(jax.random.key(0), jnp.zeros((1, 2, 2, 2, 1))))

    def value(path, s):
        key = jax.tree_util.keystr(path)
        if "['head']['bias']" in key:
            return jnp.full(s.shape, 50.0, jnp.float32)
        if "var" in key:
            return jnp.ones(s.shape, jnp.float32)
        return jnp.zeros(s.shape, jnp.float32)

    members = [jax.tree_util.tree_map_with_path(value, dict(shapes)) for _ in range(3)]
    return stack_members(members, cfg)


def object_majority_oracle(votes, candidates, members, split=True, hu=None, dense_vote=None, dense_hu=(800.0, 1500.0)):
    """Each 26-connected object of ``candidates`` whole where the mean of its votes is over members / 2 (or,
    with ``hu`` and ``dense_vote``, at least dense_vote * members where its peak HU lies in [dense_hu)); in
    each other object (``split``, 3 or more members), each 26-connected part of its voxels voted over
    members / 2 whose mean vote is at least members - 1; one object at a time with scipy (the reference
    for ``agatax.ensemble.object_majority``)."""
    labels, n = ndimage.label(candidates, structure=np.ones((3, 3, 3), bool))
    out = np.zeros(np.shape(candidates), bool)
    for k in range(1, n + 1):
        obj = labels == k
        mean = Fraction(int(votes[obj].sum()), int(obj.sum()))
        if mean > Fraction(members, 2) or (dense_vote is not None and dense_hu[0] <= hu[obj].max() < dense_hu[1]
                                             and mean >= Fraction(dense_vote).limit_denominator(1000) * members):
            out[obj] = True
        elif split and members >= 3:
            parts, m = ndimage.label(obj & (2 * votes > members), structure=np.ones((3, 3, 3), bool))
            for j in range(1, m + 1):
                part = parts == j
                out[part] = votes[part].sum() >= (members - 1) * part.sum()
    return out
