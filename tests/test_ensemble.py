"""Ensemble: stacking, vmapped members equal single members, both strategies agree, majority vote,
checkpoint round trips and every checkpoint error."""

import json

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agatax import CheckpointError, InputError
from agatax.ensemble import (
    Ensemble,
    ensemble_logits,
    ensemble_votes,
    init_ensemble,
    load_ensemble,
    majority_vote,
    member,
    object_majority,
    save_ensemble,
    stack_members,
)
from agatax.model import UNet, UNetConfig, count_params

TINY = UNetConfig.tiny()


def numpy_variables(config: UNetConfig, seed: int, scale: float = 0.5):
    """One member's variables drawn with NumPy (fast: no PRNG kernels to compile)."""
    m = config.multiple
    shapes = jax.eval_shape(lambda: UNet(config).init(jax.random.key(0), jnp.zeros((1, m, m, m, 1))))
    rng = np.random.default_rng(seed)

    def draw(path, s):
        name = jax.tree_util.keystr(path)
        if "var" in name:
            return jnp.asarray(rng.uniform(0.5, 1.5, s.shape).astype(np.float32))
        return jnp.asarray((scale * rng.standard_normal(s.shape)).astype(np.float32))

    return jax.tree_util.tree_map_with_path(draw, dict(shapes))


@pytest.fixture(scope="module")
def tiny_members():
    return [numpy_variables(TINY, seed) for seed in range(5)]


@pytest.fixture(scope="module")
def tiny_ensemble(tiny_members):
    return stack_members(tiny_members, TINY)


@pytest.fixture(scope="module")
def x():
    return jnp.asarray(np.random.default_rng(3).uniform(size=(1, 4, 8, 8, 1)).astype(np.float32))


def test_init_ensemble_shapes_and_distinct_members():
    ens = init_ensemble(jax.random.key(0), TINY, members=2)
    assert ens.members == 2 and ens.config == TINY
    single = jax.eval_shape(lambda: UNet(TINY).init(jax.random.key(0), jnp.zeros((1, 2, 2, 2, 1))))
    assert count_params(ens.variables["params"]) == 2 * count_params(single["params"])
    k = ens.variables["params"]["down0"]["Conv3_0"]["kernel"]
    assert k.shape == (2, 3, 3, 3, 1, 4)
    assert not np.allclose(k[0], k[1])
    again = init_ensemble(jax.random.key(0), TINY, members=2)
    np.testing.assert_array_equal(k, again.variables["params"]["down0"]["Conv3_0"]["kernel"])


def test_ensemble_is_a_pytree_with_static_config(tiny_ensemble):
    leaves, treedef = jax.tree.flatten(tiny_ensemble)
    rebuilt = jax.tree.unflatten(treedef, leaves)
    assert isinstance(rebuilt, Ensemble) and rebuilt.config == TINY
    assert all(leaf.shape[0] == 5 for leaf in leaves)


def test_vmapped_member_equals_member_alone(tiny_ensemble, tiny_members, x):
    logits = jax.jit(ensemble_logits, static_argnames="strategy")(tiny_ensemble, x, strategy="vmap")
    assert logits.shape == (5, 1, 4, 8, 8, 1)
    apply = jax.jit(UNet(TINY).apply)
    for k in (0, 3):
        alone = apply(tiny_members[k], x)
        scale = float(jnp.abs(alone).max())
        np.testing.assert_allclose(logits[k], alone, rtol=1e-5, atol=1e-5 * scale)
        for a, b in zip(jax.tree.leaves(member(tiny_ensemble, k)), jax.tree.leaves(tiny_members[k])):
            np.testing.assert_array_equal(a, b)


def test_strategies_agree_and_vote_is_majority(tiny_ensemble, x):
    run = jax.jit(ensemble_votes, static_argnames="strategy")
    mask_v, votes_v = run(tiny_ensemble, x, strategy="vmap")
    mask_s, votes_s = run(tiny_ensemble, x, strategy="sequential")
    np.testing.assert_array_equal(mask_v, mask_s)
    np.testing.assert_array_equal(votes_v, votes_s)
    assert votes_v.dtype == jnp.int32 and mask_v.dtype == jnp.bool_
    # oracle: count positive logits member by member, on the host
    logits = np.asarray(ensemble_logits(tiny_ensemble, x, strategy="sequential"))
    votes = (logits[..., 0] > 0).sum(axis=0)
    np.testing.assert_array_equal(votes_s, votes)
    np.testing.assert_array_equal(mask_s, votes >= 3)
    assert 0 < int(mask_s.sum()) < mask_s.size  # the test is not vacuous
    # the unfused Flax module (BatchNorm as trained) votes the same: fused logits agree to float32 rounding
    unfused = np.asarray(jax.jit(ensemble_logits, static_argnames=("strategy", "fused"))(tiny_ensemble, x, fused=False))
    scale = float(np.abs(unfused).max())
    np.testing.assert_allclose(logits, unfused, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_array_equal(votes_s, (unfused[..., 0] > 0).sum(axis=0))


def test_majority_vote_rule():
    votes = jnp.arange(6, dtype=jnp.int32)
    np.testing.assert_array_equal(majority_vote(votes, 5), [False, False, False, True, True, True])
    np.testing.assert_array_equal(majority_vote(jnp.arange(5, dtype=jnp.int32), 4), [False, False, False, True, True])


def test_object_majority_keeps_or_drops_whole_objects_by_their_mean_vote():
    votes = np.zeros((3, 6, 6), np.int32)
    cand = np.zeros((3, 6, 6), bool)
    # object A: a row of votes 5, 1, 2 and a corner neighbour (26-connected only) of 4 votes: mean 3 > 2.5,
    # kept whole, its 1- and 2-vote voxels too
    cand[0, 0, 0:3] = True
    votes[0, 0, 0:3] = (5, 1, 2)
    cand[1, 1, 3] = True
    votes[1, 1, 3] = 4
    # object B: votes 3, 2 (mean 2.5, not more than half): dropped whole, its 3-vote voxel too
    cand[2, 4, 0:2] = True
    votes[2, 4, 0:2] = (3, 2)
    # single voxels: the voxel majority rule
    cand[0, 5, 5], votes[0, 5, 5] = True, 3
    cand[2, 0, 5], votes[2, 0, 5] = True, 2
    # votes outside the candidates count for nothing
    votes[1, 4, 4] = 5
    expected = np.zeros_like(cand)
    expected[0, 0, 0:3] = expected[1, 1, 3] = expected[0, 5, 5] = True
    np.testing.assert_array_equal(object_majority(votes, cand, 5), expected)
    np.testing.assert_array_equal(np.asarray(jax.jit(object_majority, static_argnums=2)(
        jnp.asarray(votes), jnp.asarray(cand), 5)), expected)
    # the corner voxel with 0 votes takes A's mean to 2: A drops, but for its 5-vote voxel, a part voted by
    # a majority with a mean vote of 5 >= 4 (the split); without the split A drops whole
    votes[1, 1, 3] = 0
    expected[0, 0, 1:3] = expected[1, 1, 3] = False
    np.testing.assert_array_equal(object_majority(votes, cand, 5), expected)
    expected[0, 0, 0] = False
    np.testing.assert_array_equal(object_majority(votes, cand, 5, split=False), expected)
    np.testing.assert_array_equal(np.asarray(jax.jit(object_majority, static_argnums=2, static_argnames="split")(
        jnp.asarray(votes), jnp.asarray(cand), 5, split=False)), expected)


@pytest.mark.parametrize("plaque, kept", [((5, 4, 4), True), ((5, 4, 3), True), ((5, 3, 3), False),
                                          ((5, 5, 2), True), ((4, 4, 2), True), ((4, 3, 3), False)])
def test_a_strongly_voted_part_of_a_dropped_object_is_kept(plaque, kept):
    """A plaque fused with a larger unvoted object (root calcium, 12 voxels at 0 votes): the object's mean
    is under 2.5, so it drops; the plaque's voxels voted by a majority (> 2.5) form one part, kept whole
    iff its mean vote is >= 4 (by hand: 4.33, 4, 3.67, 5, 4, 3.33); a 2-vote voxel is in no part and stays
    out either way."""
    votes = np.zeros((3, 8, 8), np.int32)
    cand = np.zeros((3, 8, 8), bool)
    cand[1, 1:4, 1:5] = True  # the root: 12 voxels, no votes
    cand[1, 4, 4:7] = True  # the plaque, touching it
    votes[1, 4, 4:7] = plaque
    expected = np.zeros_like(cand)
    majority = np.zeros_like(cand)
    majority[1, 4, 4:7] = np.asarray(plaque) > 2.5
    if kept:
        expected |= majority
    np.testing.assert_array_equal(object_majority(votes, cand, 5), expected)
    np.testing.assert_array_equal(np.asarray(jax.jit(object_majority, static_argnums=2)(
        jnp.asarray(votes), jnp.asarray(cand), 5)), expected)
    assert not object_majority(votes, cand, 5, split=False).any()


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0.2, 0.7), st.integers(1, 7), st.sampled_from([None, 0.4, 0.25, 0.5]))
def test_object_majority_matches_a_per_object_oracle_on_host_and_device(seed, fill, members, dense_vote):
    from ensembles import object_majority_oracle

    rng = np.random.default_rng(seed)
    cand = rng.random((4, 7, 6)) < fill
    votes = rng.integers(0, members + 1, cand.shape)
    hu = rng.uniform(130.0, 1400.0, cand.shape).astype(np.float32)
    expected = object_majority_oracle(votes, cand, members, hu=hu, dense_vote=dense_vote)
    np.testing.assert_array_equal(object_majority(votes, cand, members, hu=hu, dense_vote=dense_vote), expected)
    np.testing.assert_array_equal(np.asarray(object_majority(jnp.asarray(votes), jnp.asarray(cand), members,
                                                             hu=jnp.asarray(hu), dense_vote=dense_vote)), expected)


@pytest.mark.parametrize("votes_of, peak, kept", [((2, 2, 2), 1000.0, True), ((2, 2, 2), 800.0, True),
                                                  ((2, 2, 2), 900.0, True), ((2, 2, 2), 799.0, False),
                                                  ((3, 2, 1), 1499.0, True), ((2, 2, 2), 1500.0, False),
                                                  ((2, 2, 1), 1200.0, False), ((3, 3, 2), 400.0, True),
                                                  ((3, 3, 2), 2000.0, True)])
def test_dense_objects_are_kept_at_two_votes_of_five(votes_of, peak, kept):
    """An object of three voxels whose peak lies in 800-1500 HU (above the networks' clip, below stents) is
    kept at a mean vote of 2 of 5 (by hand: means 2, 2, 2, 2, 2, 2, 1.67, 2.67, 2.67); under 800 HU and from
    1500 HU the line stays above 2.5;
    without ``dense_vote`` nothing changes."""
    votes = np.zeros((3, 5, 5), np.int32)
    cand = np.zeros((3, 5, 5), bool)
    hu = np.full((3, 5, 5), 40.0, np.float32)
    cand[1, 2, 1:4] = True
    votes[1, 2, 1:4] = votes_of
    hu[1, 2, 1:4] = (300.0, peak, 500.0)
    expected = np.zeros_like(cand)
    expected[1, 2, 1:4] = kept
    for v, c, h in ((votes, cand, hu), (jnp.asarray(votes), jnp.asarray(cand), jnp.asarray(hu))):
        np.testing.assert_array_equal(np.asarray(object_majority(v, c, 5, hu=h, dense_vote=0.4)), expected)
        np.testing.assert_array_equal(np.asarray(object_majority(v, c, 5, hu=h)), expected & (sum(votes_of) > 7.5))
    for bad in ({"hu": hu, "dense_vote": 0.6}, {"dense_vote": 0.4}):  # over half; no HU to find the peaks in
        with pytest.raises(InputError):
            object_majority(votes, cand, 5, **bad)


def test_bad_strategy_and_bad_members(tiny_ensemble, tiny_members, x):
    with pytest.raises(InputError) as info:
        ensemble_votes(tiny_ensemble, x, strategy="parallel")
    assert info.value.code == "BAD_STRATEGY"
    with pytest.raises(InputError):
        init_ensemble(jax.random.key(0), TINY, members=0)
    with pytest.raises(InputError) as info:
        stack_members(tiny_members, UNetConfig(levels=2, base_filters=8))
    assert info.value.code == "CONFIG_MISMATCH"


def test_checkpoint_round_trip_float32_exact(tiny_ensemble, tmp_path):
    path = save_ensemble(tmp_path / "ens.msgpack", tiny_ensemble)
    loaded = load_ensemble(path)
    assert loaded.config == TINY and loaded.members == 5
    for a, b in zip(jax.tree.leaves(loaded.variables), jax.tree.leaves(tiny_ensemble.variables)):
        assert a.dtype == jnp.float32
        np.testing.assert_array_equal(a, b)
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("dtype,eps", [("float16", 2.0**-11), ("bfloat16", 2.0**-8)])
def test_checkpoint_half_precision(tiny_ensemble, tmp_path, dtype, eps):
    full = save_ensemble(tmp_path / "full.msgpack", tiny_ensemble)
    half = save_ensemble(tmp_path / "half.msgpack", tiny_ensemble, dtype=dtype)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded = load_ensemble(half)
    for a, b in zip(jax.tree.leaves(loaded.variables), jax.tree.leaves(tiny_ensemble.variables)):
        assert a.dtype == jnp.float32
        b = np.asarray(b)
        # round to nearest: relative error at most half a unit in the last place
        assert np.all(np.abs(np.asarray(a) - b) <= eps * np.abs(b) + 1e-7)


@pytest.mark.parametrize("field,value,before", [
    ("input_box_mm", 0.7, 0.0),  # files saved before the box existed saw the fine voxels as they are
    ("input_dense_gain", 0.5, 0.0),  # ... before the gain existed, the input clipped at 800 HU
])
def test_checkpoint_keeps_the_input_its_networks_were_trained_on(tiny_members, tmp_path, field, value, before):
    import dataclasses

    ens = stack_members(tiny_members, dataclasses.replace(TINY, **{field: value}))
    path = save_ensemble(tmp_path / "ens.msgpack", ens)
    assert getattr(load_ensemble(path).config, field) == value
    # numerics may be chosen at load time; the input the weights expect may not
    assert getattr(load_ensemble(path, config=UNetConfig.tiny(conv_impl="xla")).config, field) == value
    old = tmp_path / "old.msgpack"
    old.write_bytes(path.read_bytes())
    _rewrite(old, lambda s: s["header"]["config"].pop(field))
    assert getattr(load_ensemble(old).config, field) == before
    for bad in (-1.0, float("nan"), "x"):
        with pytest.raises(InputError) as info:
            UNetConfig.tiny(**{field: bad})
        assert info.value.code == "BAD_CONFIG"


def test_checkpoint_keeps_the_noise_its_networks_were_trained_on(tiny_members, tmp_path):
    import dataclasses

    ens = stack_members(tiny_members, dataclasses.replace(TINY, trained_noise_hu=(10, 55)))
    path = save_ensemble(tmp_path / "ens.msgpack", ens)
    assert load_ensemble(path).config.trained_noise_hu == (10.0, 55.0)
    assert load_ensemble(path, config=UNetConfig.tiny(conv_impl="xla")).config.trained_noise_hu == (10.0, 55.0)
    old = tmp_path / "old.msgpack"  # saved before the field existed: every such ensemble saw 10-40 HU
    old.write_bytes(path.read_bytes())
    _rewrite(old, lambda s: s["header"]["config"].pop("trained_noise_hu"))
    assert load_ensemble(old).config.trained_noise_hu == (10.0, 40.0)
    for bad in ((40, 10), (-1, 5), (10,), "10-40", (10, float("nan"))):
        with pytest.raises(InputError) as info:
            UNetConfig.tiny(trained_noise_hu=bad)
        assert info.value.code == "BAD_CONFIG"


def _rewrite(path, mutate):
    state = flax.serialization.msgpack_restore(path.read_bytes())
    mutate(state)
    path.write_bytes(flax.serialization.msgpack_serialize(state))


def test_checkpoint_errors(tiny_ensemble, tmp_path):
    with pytest.raises(CheckpointError) as info:
        load_ensemble(tmp_path / "missing.msgpack")
    assert info.value.code == "NOT_FOUND"

    path = save_ensemble(tmp_path / "ens.msgpack", tiny_ensemble)
    truncated = tmp_path / "truncated.msgpack"
    truncated.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError) as info:
        load_ensemble(truncated)
    assert info.value.code == "CORRUPT_CHECKPOINT"
    (tmp_path / "text.msgpack").write_text(json.dumps({"not": "a checkpoint"}))
    with pytest.raises(CheckpointError) as info:
        load_ensemble(tmp_path / "text.msgpack")
    assert info.value.code == "CORRUPT_CHECKPOINT"

    old = tmp_path / "old.msgpack"
    old.write_bytes(path.read_bytes())
    _rewrite(old, lambda s: s["header"].update(version=99))
    with pytest.raises(CheckpointError) as info:
        load_ensemble(old)
    assert info.value.code == "VERSION_MISMATCH" and "99" in str(info.value)

    with pytest.raises(CheckpointError) as info:
        load_ensemble(path, config=UNetConfig())
    assert info.value.code == "CONFIG_MISMATCH"

    lying = tmp_path / "lying.msgpack"
    lying.write_bytes(path.read_bytes())
    _rewrite(lying, lambda s: s["header"]["config"].update(base_filters=8))
    with pytest.raises(CheckpointError) as info:
        load_ensemble(lying)
    assert info.value.code == "CONFIG_MISMATCH"
