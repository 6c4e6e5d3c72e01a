"""The 3D U-Net of Gogin et al. 2021 as a Flax module, and its configuration.

Levels ``l = 0 .. levels-1`` carry ``base_filters * 2**l`` channels. The encoder applies a residual block at
each level and a 2x max-pool between levels; the decoder up-samples with a stride-2 transposed convolution
(halving the channels), concatenates the encoder's skip tensor and applies a residual block. A 1x1x1
convolution gives one output channel: the calcification logit.

Residual block (``c_in -> c_out``)::

    h = ELU(BN(conv3x3x3(x)));  h = BN(conv3x3x3(h))
    out = ELU(h + (x if c_in == c_out else conv1x1x1(x)))

Parameters are stored in the usual Flax layout (``kernel`` (kz, ky, kx, c_in, c_out), ``bias``) whatever the
convolution implementation, so one checkpoint runs with every ``conv_impl``:

- ``"xla"``: XLA's native 3D convolution and transposed convolution (``lax.conv_general_dilated``, the
  reference; fastest with cuDNN on GPU, slow on CPU).
- ``"fold"``: each 3x3x3 convolution becomes ONE 2D convolution over (y, x) with depth folded into the batch
  and the three depth taps folded into the channels (into the input channels when they are few, else into
  the output channels followed by a shift-add along z); the stride-2 transposed convolution becomes one
  matrix product and a reshape (its 2x2x2 output cells do not overlap). Same arithmetic, 3-8x faster on CPU.

"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from agatax.errors import InputError
from agatax.preprocess import ENHANCE_BOX_MM
from agatax.quality import TRAINED_NOISE_HU

__all__ = ["UNetConfig", "UNet", "count_params", "conv3x3x3", "upsample2x", "fold_batchnorm", "infer", "CONV_IMPLS"]

CONV_IMPLS = ("xla", "fold")
_DN3 = ("NDHWC", "DHWIO", "NDHWC")
_DN2 = ("NHWC", "HWIO", "NHWC")


def resolve_conv_impl(impl: str) -> str:
    """"auto" -> "fold" on CPU, "xla" on other backends; other names pass through."""
    if impl == "auto":
        return "fold" if jax.default_backend() == "cpu" else "xla"
    return impl


def conv3x3x3(x: jax.Array, kernel: jax.Array, *, impl: str = "xla") -> jax.Array:
    """'Same' 3x3x3 convolution (cross-correlation, zero padding), no bias.

    x (b, z, y, x, c_in), kernel (3, 3, 3, c_in, c_out) -> (b, z, y, x, c_out), in x's dtype.
    """
    if impl == "xla":
        return lax.conv_general_dilated(x, kernel, (1, 1, 1), "SAME", dimension_numbers=_DN3)
    if impl != "fold":
        raise InputError(f"unknown convolution implementation {impl!r}; expected one of {CONV_IMPLS}", code="BAD_CONFIG")
    b, z, y, w, c = x.shape
    co = kernel.shape[-1]
    if c <= 16:
        # depth taps into the input channels: (b*z, y, x, 3c) * (3, 3, 3c, co)
        p = jnp.pad(x, ((0, 0), (1, 1), (0, 0), (0, 0), (0, 0)))
        stacked = jnp.concatenate([p[:, 0:z], p[:, 1 : z + 1], p[:, 2 : z + 2]], axis=-1)
        k2 = jnp.transpose(kernel, (1, 2, 0, 3, 4)).reshape(3, 3, 3 * c, co)
        out = lax.conv_general_dilated(stacked.reshape(b * z, y, w, 3 * c), k2, (1, 1), "SAME", dimension_numbers=_DN2)
        return out.reshape(b, z, y, w, co)
    # depth taps into the output channels: (b*z, y, x, c) * (3, 3, c, 3co), then shift-add along z
    k2 = jnp.transpose(kernel, (1, 2, 3, 0, 4)).reshape(3, 3, c, 3 * co)
    out = lax.conv_general_dilated(x.reshape(b * z, y, w, c), k2, (1, 1), "SAME", dimension_numbers=_DN2)
    out = jnp.pad(out.reshape(b, z, y, w, 3, co), ((0, 0), (1, 1), (0, 0), (0, 0), (0, 0), (0, 0)))
    return out[:, 0:z, :, :, 0] + out[:, 1 : z + 1, :, :, 1] + out[:, 2 : z + 2, :, :, 2]


def upsample2x(x: jax.Array, kernel: jax.Array, *, impl: str = "xla") -> jax.Array:
    """Stride-2 2x2x2 transposed convolution, no bias, with ``flax.linen.ConvTranspose`` semantics.

    x (b, z, y, x, c_in), kernel (2, 2, 2, c_in, c_out) -> (b, 2z, 2y, 2x, c_out). Output voxel
    (2i+a, 2j+b, 2k+c) = x[i, j, k] @ kernel[1-a, 1-b, 1-c].
    """
    if impl == "xla":
        return lax.conv_transpose(x, kernel, (2, 2, 2), "VALID", dimension_numbers=_DN3)
    if impl != "fold":
        raise InputError(f"unknown convolution implementation {impl!r}; expected one of {CONV_IMPLS}", code="BAD_CONFIG")
    b, z, y, w, c = x.shape
    co = kernel.shape[-1]
    k = jnp.transpose(kernel[::-1, ::-1, ::-1], (3, 0, 1, 2, 4)).reshape(c, 8 * co)
    out = jnp.dot(x.reshape(b * z * y * w, c), k).reshape(b, z, y, w, 2, 2, 2, co)
    return jnp.transpose(out, (0, 1, 4, 2, 5, 3, 6, 7)).reshape(b, 2 * z, 2 * y, 2 * w, co)


#: The pre-processing the weights were trained on: (keyword of ``agatax.preprocess`` and ``TrainingSet`` field,
#: UNetConfig field, how a value reads in a message).
INPUT_SETTINGS = (("box_mm", "input_box_mm", "an enhancement box of {} mm"),
                  ("dense_gain", "input_dense_gain", "dense_gain {}"))


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Architecture and numerics of the U-Net (hashable: used as a static argument under jit).

    Attributes:
        levels: resolution levels (paper: 4); inputs must be multiples of ``2**(levels-1)`` per axis.
        base_filters: channels at the first level (paper: 16), doubled per level.
        dtype: compute dtype (float32; bfloat16 halves memory traffic on GPU).
        param_dtype: parameter dtype (float32).
        conv_impl: "auto" (matrix-product form on CPU, XLA's native convolution elsewhere), "xla",
            or one of :data:`agatax.convolution.CONV_IMPLS`. Does not change the parameters.
        bn_momentum: BatchNorm running-average momentum.
        bn_epsilon: BatchNorm epsilon.
        input_box_mm: the input the weights were trained on: the pre-processing's in-plane box (mm) averaging
            the HU that enter its enhancement (:func:`agatax.preprocess`, ``box_mm``); 0 for ensembles saved
            before it existed (2026-12-02), which saw the fine voxels as they are.
        input_dense_gain: the input the weights were trained on: above 800 HU the pre-processing's input
            rises this many times as steeply up to 2000 HU (:func:`agatax.preprocess`, ``dense_gain``), so
            that dense calcium is told from metal; 0 (ensembles saved before it existed): clipped at 800 HU.
        trained_noise_hu: (low, high) image noise SD (HU) of the exams the weights were trained on; the
            pipeline warns above ``high`` (``agatax.quality.noise_note``). Ensembles saved before it existed
            were all trained on 10-40 HU.
    """

    levels: int = 4
    base_filters: int = 16
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    conv_impl: str = "auto"
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    input_box_mm: float = ENHANCE_BOX_MM
    input_dense_gain: float = 0.0
    # not in repr: a training run's checkpoint identity (agatax.train) does not depend on it
    trained_noise_hu: tuple = dataclasses.field(default=TRAINED_NOISE_HU, repr=False)

    def __post_init__(self) -> None:
        try:
            noise = tuple(float(v) for v in self.trained_noise_hu)
        except (TypeError, ValueError):
            noise = ()
        if not (len(noise) == 2 and all(math.isfinite(v) for v in noise) and 0 <= noise[0] <= noise[1]):
            raise InputError(f"UNetConfig.trained_noise_hu must be (low, high) HU with 0 <= low <= high; got "
                             f"{self.trained_noise_hu!r}", code="BAD_CONFIG")
        object.__setattr__(self, "trained_noise_hu", noise)
        for name, what in (("input_box_mm", "a number of mm >= 0"), ("input_dense_gain", "a number >= 0")):
            try:
                value = float(getattr(self, name))
            except (TypeError, ValueError):
                value = float("nan")
            if not (math.isfinite(value) and value >= 0):
                raise InputError(f"UNetConfig.{name} must be {what}; got {getattr(self, name)!r}", code="BAD_CONFIG")
            object.__setattr__(self, name, value)
        if not (isinstance(self.levels, int) and self.levels >= 1):
            raise InputError(f"UNetConfig.levels must be an int >= 1; got {self.levels!r}", code="BAD_CONFIG")
        if not (isinstance(self.base_filters, int) and self.base_filters >= 1):
            raise InputError(
                f"UNetConfig.base_filters must be an int >= 1; got {self.base_filters!r}", code="BAD_CONFIG"
            )
        if self.conv_impl not in ("auto",) + CONV_IMPLS:
            raise InputError(
                f"UNetConfig.conv_impl must be one of {('auto',) + CONV_IMPLS}; got {self.conv_impl!r}",
                code="BAD_CONFIG",
            )
        for name in ("dtype", "param_dtype"):
            try:
                object.__setattr__(self, name, jnp.dtype(getattr(self, name)).type)
            except TypeError as err:
                raise InputError(f"UNetConfig.{name} is not a dtype: {getattr(self, name)!r}", code="BAD_CONFIG") from err

    @classmethod
    def tiny(cls, **overrides: Any) -> "UNetConfig":
        """A two-level, four-filter variant for tests (inputs: multiples of 2)."""
        return cls(**{"levels": 2, "base_filters": 4, **overrides})

    @property
    def input_options(self) -> dict[str, float]:
        """The pre-processing of the input the weights were trained on, as keyword arguments of
        :func:`agatax.preprocess` and ``agatax.train.prepare_pairs``: ``box_mm`` and ``dense_gain``."""
        return {name: getattr(self, field) for name, field, _ in INPUT_SETTINGS}

    @property
    def multiple(self) -> int:
        """Each spatial input size must be a multiple of this: ``2**(levels-1)``."""
        return 2 ** (self.levels - 1)

    def filters(self, level: int) -> int:
        """Channels at ``level`` (0-based)."""
        return self.base_filters * 2**level

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe fields (dtypes by name)."""
        out = dataclasses.asdict(self)
        out["trained_noise_hu"] = list(self.trained_noise_hu)
        out["dtype"] = jnp.dtype(self.dtype).name
        out["param_dtype"] = jnp.dtype(self.param_dtype).name
        return out


class Conv3(nn.Module):
    """3x3x3 'same' convolution, no bias (a BatchNorm follows). x (b, z, y, x, c_in) -> (b, z, y, x, c_out)."""

    features: int
    config: UNetConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel", nn.initializers.he_normal(), (3, 3, 3, x.shape[-1], self.features), self.config.param_dtype
        )
        impl = resolve_conv_impl(self.config.conv_impl)
        return conv3x3x3(x.astype(self.config.dtype), kernel.astype(self.config.dtype), impl=impl)


class Dense1(nn.Module):
    """1x1x1 convolution with bias: a matrix product over channels."""

    features: int
    config: UNetConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features), cfg.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), cfg.param_dtype)
        y = jnp.einsum("...c,cd->...d", x.astype(cfg.dtype), kernel.astype(cfg.dtype))
        return y + bias.astype(cfg.dtype).reshape((1,) * (y.ndim - 1) + (-1,))


class Up2(nn.Module):
    """Stride-2, 2x2x2 transposed convolution with bias: (b, z, y, x, c) -> (b, 2z, 2y, 2x, features)."""

    features: int
    config: UNetConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (2, 2, 2, x.shape[-1], self.features), cfg.param_dtype
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,), cfg.param_dtype)
        impl = resolve_conv_impl(cfg.conv_impl)
        y = upsample2x(x.astype(cfg.dtype), kernel.astype(cfg.dtype), impl=impl)
        return y + bias.astype(cfg.dtype).reshape(1, 1, 1, 1, -1)


class ResBlock(nn.Module):
    """Residual block ``c_in -> features`` (see the module docstring)."""

    features: int
    config: UNetConfig

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        cfg = self.config
        norm = partial(
            nn.BatchNorm,
            use_running_average=not train,
            momentum=cfg.bn_momentum,
            epsilon=cfg.bn_epsilon,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
        )
        h = nn.elu(norm()(Conv3(self.features, cfg)(x)))
        h = norm()(Conv3(self.features, cfg)(h))
        skip = x if x.shape[-1] == self.features else Dense1(self.features, cfg)(x)
        return nn.elu(h + skip.astype(h.dtype))


def max_pool2(x: jax.Array) -> jax.Array:
    """2x2x2 max-pool, stride 2: (b, z, y, x, c) -> (b, z/2, y/2, x/2, c)."""
    b, z, y, w, c = x.shape
    return x.reshape(b, z // 2, 2, y // 2, 2, w // 2, 2, c).max(axis=(2, 4, 6))


class UNet(nn.Module):
    """The paper's 3D U-Net.

    ``__call__(x, train=False)``: x float (batch, z, y, x, 1), values in [0, 1], each spatial size a multiple
    of ``config.multiple`` -> float32 logits (batch, z, y, x, 1). ``train=True`` uses batch statistics and
    updates the ``batch_stats`` collection (apply with ``mutable=["batch_stats"]``).
    """

    config: UNetConfig = UNetConfig()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        cfg = self.config
        check_input_shape(x.shape, cfg)
        h = x.astype(cfg.dtype)
        skips = []
        for level in range(cfg.levels):
            h = ResBlock(cfg.filters(level), cfg, name=f"down{level}")(h, train)
            if level < cfg.levels - 1:
                skips.append(h)
                h = max_pool2(h)
        for level in reversed(range(cfg.levels - 1)):
            h = Up2(cfg.filters(level), cfg, name=f"up{level}")(h)
            h = jnp.concatenate([h, skips[level].astype(h.dtype)], axis=-1)
            h = ResBlock(cfg.filters(level), cfg, name=f"dec{level}")(h, train)
        logits = Dense1(1, cfg, name="head")(h)
        return logits.astype(jnp.float32)


def check_input_shape(shape: tuple[int, ...], config: UNetConfig) -> None:
    """Raise InputError(BAD_SHAPE) unless ``shape`` is (batch, z, y, x, 1) with z, y, x multiples of 2**(levels-1)."""
    m = config.multiple
    if len(shape) != 5 or shape[-1] != 1:
        raise InputError(
            f"U-Net input must have rank 5 (batch, z, y, x, 1); got shape {tuple(shape)}",
            code="BAD_SHAPE",
            hint="add batch and channel axes: x[None, ..., None]",
        )
    if any(s % m or s == 0 for s in shape[1:4]):
        raise InputError(
            f"U-Net spatial sizes must be positive multiples of 2**(levels-1) = {m} for levels={config.levels}; "
            f"got (z, y, x) = {tuple(shape[1:4])}",
            code="BAD_SHAPE",
            hint=f"pad each axis up to a multiple of {m} (agatax.preprocess does this)",
        )


def count_params(tree: Any) -> int:
    """Number of scalars in a parameter tree (arrays or ShapeDtypeStructs)."""
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))


# ------------------------------------------------------------------------------------- fused inference
#
# Eval-mode BatchNorm is an affine map per channel, so it folds into the preceding convolution:
# kernel' = kernel * s, bias' = beta - mean * s with s = gamma / sqrt(var + eps). ``fold_batchnorm`` does
# this once per call (outside the convolutions), ``infer`` then runs each layer as convolution + bias +
# ELU (XLA fuses the bias, ELU and residual add into one pass). Same function as ``UNet.apply(train=False)``
# up to float32 rounding; the parameter layout is untouched.


def fold_batchnorm(variables: Any, config: UNetConfig) -> dict[str, Any]:
    """Eval-mode weights with every BatchNorm folded into its convolution.

    variables: one member's {"params", "batch_stats"} (Flax layout) -> {layer: {"k0", "b0", "k1", "b1"
    [, "kp", "bp"]} for residual blocks, {"k", "b"} for up-sampling and the head}, float32.
    """
    params, stats = variables["params"], variables["batch_stats"]
    eps = config.bn_epsilon
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    out: dict[str, Any] = {}

    def block(name: str) -> dict[str, jax.Array]:
        p, s = params[name], stats[name]
        folded = {}
        for i in (0, 1):
            bn, st = p[f"BatchNorm_{i}"], s[f"BatchNorm_{i}"]
            scale = f32(bn["scale"]) * lax.rsqrt(f32(st["var"]) + eps)
            folded[f"k{i}"] = f32(p[f"Conv3_{i}"]["kernel"]) * scale.reshape(1, 1, 1, 1, -1)
            folded[f"b{i}"] = f32(bn["bias"]) - f32(st["mean"]) * scale
        if "Dense1_0" in p:
            folded["kp"], folded["bp"] = f32(p["Dense1_0"]["kernel"]), f32(p["Dense1_0"]["bias"])
        return folded

    for level in range(config.levels):
        out[f"down{level}"] = block(f"down{level}")
    for level in range(config.levels - 1):
        out[f"up{level}"] = {"k": f32(params[f"up{level}"]["kernel"]), "b": f32(params[f"up{level}"]["bias"])}
        out[f"dec{level}"] = block(f"dec{level}")
    out["head"] = {"k": f32(params["head"]["kernel"]), "b": f32(params["head"]["bias"])}
    return out


def _conv3_fast(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """3x3x3 'same' convolution for inference: depth taps into the input channels for c_in < 16 (few
    channels: one deeper contraction), else into the output channels + shift-add (wider matrix product,
    the faster shape for XLA's CPU convolution at 16 output channels)."""
    return conv3x3x3(x, kernel, impl="fold") if x.shape[-1] < 16 else _conv3_out_taps(x, kernel)


def _conv3_out_taps(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Depth taps into the output channels: (b*z, y, x, c) * (3, 3, c, 3co), then a shift-add along z."""
    b, z, y, w, c = x.shape
    co = kernel.shape[-1]
    k2 = jnp.transpose(kernel, (1, 2, 3, 0, 4)).reshape(3, 3, c, 3 * co)
    out = lax.conv_general_dilated(x.reshape(b * z, y, w, c), k2, (1, 1), "SAME", dimension_numbers=_DN2)
    return _depth_tap_sum(out.reshape(b, z, y, w, 3, co))


def _depth_tap_sum(taps: jax.Array) -> jax.Array:
    """taps (b, z, y, x, 3, co), tap d of slice i feeding output slice i + 1 - d -> (b, z, y, x, co).

    Shifted copies joined with a zero slice (one fused pass); XLA's CPU code for the equivalent
    pad-then-slice form is ~5x slower.
    """
    b, z, y, w, _, co = taps.shape
    zero = jnp.zeros((b, 1, y, w, co), taps.dtype)
    below = jnp.concatenate([zero, taps[:, :-1, :, :, 0]], axis=1)
    above = jnp.concatenate([taps[:, 1:, :, :, 2], zero], axis=1)
    return taps[:, :, :, :, 1] + below + above


def _conv3_sum_fast(xs: tuple[jax.Array, ...], kernels: tuple[jax.Array, ...]) -> jax.Array:
    """sum_i conv3x3x3(xs[i], kernels[i]) = the convolution of the channel concatenation of ``xs``, without
    building it (a minor-axis concatenation is a slow copy on CPU): per-input convolutions with the depth
    taps in the output channels, summed before one depth shift-add."""
    b, z, y, w, _ = xs[0].shape
    co = kernels[0].shape[-1]
    taps = None
    for x, kernel in zip(xs, kernels):
        k2 = jnp.transpose(kernel, (1, 2, 3, 0, 4)).reshape(3, 3, x.shape[-1], 3 * co)
        out = lax.conv_general_dilated(x.reshape(b * z, y, w, x.shape[-1]), k2, (1, 1), "SAME", dimension_numbers=_DN2)
        taps = out if taps is None else taps + out
    return _depth_tap_sum(taps.reshape(b, z, y, w, 3, co))


def _bias(b: jax.Array) -> jax.Array:
    return b.reshape(1, 1, 1, 1, -1)


def _dense(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jnp.einsum("...c,cd->...d", x, kernel)


def _block_infer(p: dict[str, jax.Array], x: jax.Array, conv) -> jax.Array:
    """Residual block from folded weights: elu(conv1(elu(conv0(x) + b0)) + b1 + skip(x))."""
    h = nn.elu(conv(x, p["k0"]) + _bias(p["b0"]))
    h = conv(h, p["k1"]) + _bias(p["b1"])
    skip = x if "kp" not in p else _dense(x, p["kp"]) + _bias(p["bp"])
    return nn.elu(h + skip)


def _decoder_block_infer(p: dict[str, jax.Array], up: jax.Array, skip: jax.Array, conv) -> jax.Array:
    """The decoder's residual block on concatenate([up, skip]) without the concatenation: the first
    convolution and the projection split by input channels and summed."""
    cu = up.shape[-1]
    k0, kp = p["k0"], p["kp"]
    h = _conv3_sum_fast((up, skip), (k0[..., :cu, :], k0[..., cu:, :]))
    h = nn.elu(h + _bias(p["b0"]))
    h = conv(h, p["k1"]) + _bias(p["b1"])
    proj = _dense(up, kp[:cu]) + _dense(skip, kp[cu:]) + _bias(p["bp"])
    return nn.elu(h + proj)


def infer(
    folded: dict[str, Any], x: jax.Array, config: UNetConfig, *, conv_impl: str | None = None, split_concat: bool = True
) -> jax.Array:
    """Eval-mode forward pass from :func:`fold_batchnorm` weights, computed in ``config.dtype``.

    x (batch, z, y, x, 1) in [0, 1] -> logits float32 (batch, z, y, x, 1), equal to
    ``UNet(config).apply(variables, x)`` up to float32 rounding. ``conv_impl`` (default
    ``config.conv_impl``): "fold" (or "auto" on CPU) runs the matrix-product forms, "xla" the native ones.
    ``split_concat`` (fold forms only): decoder blocks convolve the up-sampled and skip tensors apart and
    sum, instead of concatenating them.
    """
    check_input_shape(x.shape, config)
    dtype = config.dtype
    folded = jax.tree.map(lambda a: a.astype(dtype), folded)
    impl = resolve_conv_impl(config.conv_impl if conv_impl is None else conv_impl)
    if impl == "xla":
        conv, up = partial(conv3x3x3, impl="xla"), partial(upsample2x, impl="xla")
        split_concat = False
    else:
        conv, up = _conv3_fast, partial(upsample2x, impl="fold")
    h = x.astype(dtype)
    skips = []
    for level in range(config.levels):
        h = _block_infer(folded[f"down{level}"], h, conv)
        if level < config.levels - 1:
            skips.append(h)
            h = max_pool2(h)
    for level in reversed(range(config.levels - 1)):
        p = folded[f"up{level}"]
        h = up(h, p["k"]) + _bias(p["b"])
        if split_concat:
            h = _decoder_block_infer(folded[f"dec{level}"], h, skips[level], conv)
        else:
            h = _block_infer(folded[f"dec{level}"], jnp.concatenate([h, skips[level]], axis=-1), conv)
    p = folded["head"]
    return (_dense(h, p["k"]) + _bias(p["b"])).astype(jnp.float32)
