"""The U-Net: shapes, the paper's parameter count (by hand), input checks, and the fast convolutions
checked against XLA's native 3D (transposed) convolution."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agatax import InputError
from agatax.model import UNet, UNetConfig, conv3x3x3, count_params, upsample2x


def _block(cin: int, cout: int) -> int:
    """Residual block by hand: two bias-free 3x3x3 convs, two BatchNorms (scale + bias), 1x1x1 projection
    with bias when the channel counts differ."""
    convs = 27 * cin * cout + 27 * cout * cout
    norms = 2 * (2 * cout)
    projection = cin * cout + cout if cin != cout else 0
    return convs + norms + projection


def test_paper_parameter_count_by_hand():
    # Paper: 4 levels, 16 filters at level 0, doubled per level -> 16, 32, 64, 128.
    encoder = _block(1, 16) + _block(16, 32) + _block(32, 64) + _block(64, 128)
    # 7440 + 42144 + 168256 + 672384
    assert encoder == 7440 + 42144 + 168256 + 672384
    up = lambda cin, cout: 8 * cin * cout + cout  # 2x2x2 transposed conv with bias
    decoder = up(128, 64) + _block(128, 64) + up(64, 32) + _block(64, 32) + up(32, 16) + _block(32, 16)
    head = 16 * 1 + 1
    expected = encoder + decoder + head
    assert expected == 1_423_137
    shapes = jax.eval_shape(lambda: UNet(UNetConfig()).init(jax.random.key(0), jnp.zeros((1, 8, 8, 8, 1))))
    assert count_params(shapes["params"]) == expected
    # running mean and variance for each of the 14 BatchNorms
    assert count_params(shapes["batch_stats"]) == 2 * 2 * (16 + 32 + 64 + 128 + 64 + 32 + 16)


def test_paper_output_shape_at_exam_size():
    model = UNet(UNetConfig())
    x = jax.ShapeDtypeStruct((1, 56, 72, 72, 1), jnp.float32)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 8, 1))))
    out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
    assert out.shape == (1, 56, 72, 72, 1) and out.dtype == jnp.float32


@pytest.mark.parametrize("shape", [(1, 6, 8, 8, 1), (1, 8, 8, 8), (1, 8, 8, 8, 2), (1, 8, 10, 8, 1)])
def test_bad_shapes_raise(shape):
    model = UNet(UNetConfig(levels=3, base_filters=2))
    with pytest.raises(InputError) as info:
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
    assert info.value.code == "BAD_SHAPE"
    assert str(tuple(shape[1:4])) in str(info.value) or str(tuple(shape)) in str(info.value)


def test_bad_config_raises():
    with pytest.raises(InputError) as info:
        UNetConfig(levels=0)
    assert info.value.code == "BAD_CONFIG"
    with pytest.raises(InputError):
        UNetConfig(conv_impl="cudnn9")


def _small_ints(rng, shape):
    """Small integers: every partial sum is exact in float32, so any summation order gives the same bits."""
    return jnp.asarray(rng.integers(-3, 4, size=shape).astype(np.float32))


def _normal(rng, shape):
    return jnp.asarray(rng.standard_normal(shape).astype(np.float32))


def _variables(config, seed=0):
    """Variables drawn with NumPy (no PRNG kernels to compile); BatchNorm variances positive."""
    m = config.multiple
    shapes = jax.eval_shape(lambda: UNet(config).init(jax.random.key(0), jnp.zeros((1, m, m, m, 1))))
    rng = np.random.default_rng(seed)

    def draw(path, s):
        if "var" in jax.tree_util.keystr(path):
            return jnp.asarray(rng.uniform(0.5, 1.5, s.shape).astype(np.float32))
        return _normal(rng, s.shape) * 0.5

    return jax.tree_util.tree_map_with_path(draw, dict(shapes))


@pytest.mark.parametrize("cin,cout", [(1, 4), (4, 4), (24, 8), (20, 20)])
def test_fold_conv_equals_xla_conv(cin, cout):
    rng = np.random.default_rng(cin * 100 + cout)
    x, w = _small_ints(rng, (2, 4, 6, 8, cin)), _small_ints(rng, (3, 3, 3, cin, cout))
    ref = conv3x3x3(x, w, impl="xla")
    np.testing.assert_array_equal(np.asarray(jax.jit(conv3x3x3, static_argnames="impl")(x, w, impl="fold")), ref)
    # float data: same result up to summation order
    x, w = _normal(rng, x.shape), _normal(rng, w.shape)
    np.testing.assert_allclose(conv3x3x3(x, w, impl="fold"), conv3x3x3(x, w, impl="xla"), rtol=1e-5, atol=1e-4)


def test_fold_upsample_equals_xla_transposed_conv():
    rng = np.random.default_rng(7)
    x, w = _small_ints(rng, (2, 3, 4, 5, 6)), _small_ints(rng, (2, 2, 2, 6, 3))
    ref = upsample2x(x, w, impl="xla")
    assert ref.shape == (2, 6, 8, 10, 3)
    np.testing.assert_array_equal(np.asarray(upsample2x(x, w, impl="fold")), ref)


def test_upsample_semantics_by_hand():
    # one input voxel of value 1 at (0, 0, 0): output cell (a, b, c) = kernel[1-a, 1-b, 1-c]
    x = jnp.zeros((1, 1, 1, 1, 1)).at[0, 0, 0, 0, 0].set(1.0)
    w = jnp.arange(8.0).reshape(2, 2, 2, 1, 1)
    for impl in ("xla", "fold"):
        out = np.asarray(upsample2x(x, w, impl=impl))[0, ..., 0]
        np.testing.assert_array_equal(out, np.arange(8.0).reshape(2, 2, 2)[::-1, ::-1, ::-1])


def test_network_fold_equals_xla():
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(1, 4, 8, 8, 1)).astype(np.float32))
    fold, xla = UNet(UNetConfig.tiny(conv_impl="fold")), UNet(UNetConfig.tiny(conv_impl="xla"))
    variables = _variables(UNetConfig.tiny())
    out = jax.jit(fold.apply)(variables, x)
    assert out.shape == (1, 4, 8, 8, 1) and out.dtype == jnp.float32
    tol = 1e-5 * float(jnp.abs(out).max())
    np.testing.assert_allclose(out, jax.jit(xla.apply)(variables, x), rtol=1e-5, atol=tol)



def test_jit_equals_eager():
    # one level (a residual block and the head): op-by-op execution compiles every primitive separately
    config = UNetConfig(levels=1, base_filters=4)
    model = UNet(config)
    variables = _variables(config)
    x = jnp.asarray(np.random.default_rng(2).uniform(size=(1, 2, 4, 4, 1)).astype(np.float32))
    jitted = jax.jit(model.apply)(variables, x)
    with jax.disable_jit():
        eager = model.apply(variables, x)
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-5 * float(jnp.abs(eager).max()))


def test_train_mode_updates_batch_stats():
    model = UNet(UNetConfig.tiny())
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 2, 4, 4, 1)).astype(np.float32))
    variables = _variables(UNetConfig.tiny())
    out, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
    assert out.shape == x.shape
    before = jax.tree.leaves(variables["batch_stats"])
    after = jax.tree.leaves(updates["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(before, after))


def test_bfloat16_compute_close_to_float32():
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(1, 4, 8, 8, 1)).astype(np.float32))
    f32 = UNet(UNetConfig.tiny())
    variables = _variables(UNetConfig.tiny())
    bf16 = UNet(UNetConfig.tiny(dtype=jnp.bfloat16))
    out = jax.jit(bf16.apply)(variables, x)
    assert out.dtype == jnp.float32
    ref = jax.jit(f32.apply)(variables, x)
    assert float(jnp.abs(out - ref).max()) < 0.05 * float(jnp.abs(ref).max()) + 0.05


def test_out_tap_and_split_convolutions_equal_xla_conv():
    from agatax.model import _conv3_out_taps, _conv3_sum_fast

    rng = np.random.default_rng(11)
    x, w = _small_ints(rng, (2, 4, 6, 8, 16)), _small_ints(rng, (3, 3, 3, 16, 5))
    ref = conv3x3x3(x, w, impl="xla")
    np.testing.assert_array_equal(np.asarray(jax.jit(_conv3_out_taps)(x, w)), ref)
    # concatenation-free form: conv(concat([a, b])) == conv(a, w[:, :, :, :6]) + conv(b, w[:, :, :, 6:])
    a, b = x[..., :6], x[..., 6:]
    np.testing.assert_array_equal(np.asarray(jax.jit(_conv3_sum_fast)((a, b), (w[..., :6, :], w[..., 6:, :]))), ref)


@pytest.mark.parametrize("config", [UNetConfig.tiny(), UNetConfig(levels=3, base_filters=16)], ids=["tiny", "small"])
def test_fused_inference_equals_module(config):
    """BatchNorm folded into the kernels, fused ELU, concatenation-free decoder: the same logits as the
    unfused Flax module with XLA's reference convolutions, within float32 rounding."""
    from agatax.model import fold_batchnorm, infer

    x = jnp.asarray(np.random.default_rng(4).uniform(size=(1, 4, 8, 8, 1)).astype(np.float32))
    variables = _variables(config, seed=3)
    ref = np.asarray(jax.jit(UNet(dataclasses.replace(config, conv_impl="xla")).apply)(variables, x))
    scale = max(1.0, float(np.abs(ref).max()))
    forms = [("fold", True)] + ([("fold", False), ("xla", False)] if config.levels == 2 else [])
    for impl, split in forms:
        fused = jax.jit(lambda v, x: infer(fold_batchnorm(v, config), x, config, conv_impl=impl, split_concat=split))
        out = np.asarray(fused(variables, x))
        assert out.shape == ref.shape and out.dtype == np.float32
        assert np.abs(out - ref).max() < 1e-4 * scale, (impl, split, np.abs(out - ref).max(), scale)
