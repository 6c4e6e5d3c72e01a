"""Connected-component labelling: both backends against scipy.ndimage.label, the oracle."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from agatax import InputError, label_slices, label_volume
from agatax.scoring.components import label_host

# Every JAX call uses this one shape (inputs are zero-padded), so each connectivity compiles once.
FIXED = (6, 12, 12)
SLICE_CONN = (4, 8)
VOLUME_CONN = (6, 18, 26)


def scipy_labels(mask, connectivity, *, slices):
    """The oracle: scipy.ndimage.label with the matching structuring element."""
    if slices:
        structure = np.zeros((3, 3, 3), bool)
        structure[1] = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    else:
        structure = ndimage.generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[connectivity])
    return ndimage.label(mask, structure)


def assert_same_partition(labels, reference):
    """Same foreground, and a bijection between label values (the partition is the same)."""
    labels, reference = np.asarray(labels), np.asarray(reference)
    assert labels.shape == reference.shape
    np.testing.assert_array_equal(labels > 0, reference > 0)
    pairs = set(zip(labels[reference > 0].tolist(), reference[reference > 0].tolist()))
    assert len({a for a, _ in pairs}) == len(pairs) == len({b for _, b in pairs})


def pad_to_fixed(mask):
    out = np.zeros(FIXED, bool)
    out[: mask.shape[0], : mask.shape[1], : mask.shape[2]] = mask
    return out


@st.composite
def masks(draw, max_shape=FIXED):
    shape = tuple(draw(st.integers(1, m)) for m in max_shape)
    density = draw(st.sampled_from([0.05, 0.2, 0.4, 0.55, 0.7, 0.95]))
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).random(shape) < density


# ------------------------------------------------------------------------------ adversarial shapes
def spiral(n):
    """One 4-connected square spiral, 1 pixel wide with 1 pixel gaps: a long path with bends."""
    m = np.zeros((n, n), bool)
    y = x = 0
    dirs = [(0, 1), (1, 0), (0, -1), (-1, 0)]
    d = 0
    m[0, 0] = True
    inside = lambda a, b: 0 <= a < n and 0 <= b < n  # noqa: E731
    while True:
        for _ in range(2):
            dy, dx = dirs[d]
            ny, nx, ay, ax = y + dy, x + dx, y + 2 * dy, x + 2 * dx
            if inside(ny, nx) and not m[ny, nx] and not (inside(ay, ax) and m[ay, ax]):
                y, x = ny, nx
                m[y, x] = True
                break
            d = (d + 1) % 4
        else:
            return m


def serpentine(n_rows, n_cols):
    """Rows joined alternately at the right and the left end: one path of about n_rows * n_cols / 2."""
    m = np.zeros((n_rows, n_cols), bool)
    m[::2] = True
    for r in range(1, n_rows, 2):
        m[r, n_cols - 1 if (r // 2) % 2 == 0 else 0] = True
    return m


def snake_3d():
    """A serpentine in every even slice, joined through one voxel in each odd slice: one 3D path."""
    vol = np.zeros(FIXED, bool)
    s = serpentine(FIXED[1] - 1, FIXED[2])  # path ends at (0, 0) and (FIXED[1] - 2, 0)
    end = FIXED[1] - 2
    for z in range(0, FIXED[0], 2):
        vol[z, :-1] = s if z % 4 == 0 else s[::-1]
        if z + 1 < FIXED[0]:
            vol[z + 1, end if z % 4 == 0 else 0, 0] = True
    return vol


ADVERSARIAL = {
    "spiral": np.stack([spiral(12)] * 6),
    "spiral_reversed": np.stack([spiral(12)[::-1, ::-1]] * 6),
    "serpentine": np.stack([serpentine(12, 12), serpentine(12, 12).T] * 3),
    "serpentine_flipped": np.stack([serpentine(12, 12)[::-1], serpentine(12, 12)[:, ::-1]] * 3),
    "snake_3d": snake_3d(),
    "snake_3d_reversed": snake_3d()[::-1, ::-1],
    "checkerboard": (np.indices(FIXED).sum(axis=0) % 2) == 0,
    "full": np.ones(FIXED, bool),
    "empty": np.zeros(FIXED, bool),
}


def test_adversarial_shapes_are_long_single_paths():
    # the fixtures really are what they claim: one component whose path length is most of its voxels
    assert scipy_labels(ADVERSARIAL["spiral"], 4, slices=True)[1] == 6
    assert scipy_labels(ADVERSARIAL["snake_3d"], 6, slices=False)[1] == 1
    assert ADVERSARIAL["snake_3d"].sum() > 200


# ------------------------------------------------------------------------------------ JAX backend
@pytest.mark.parametrize("connectivity", SLICE_CONN)
@given(mask=masks())
def test_jax_slices_match_scipy(connectivity, mask):
    reference, _ = scipy_labels(mask, connectivity, slices=True)
    labels = label_slices(jnp.asarray(pad_to_fixed(mask)), connectivity=connectivity)
    assert isinstance(labels, jax.Array) and labels.dtype == jnp.int32
    got = np.asarray(labels)[: mask.shape[0], : mask.shape[1], : mask.shape[2]]
    assert_same_partition(got, reference)
    np.testing.assert_array_equal(got, reference)  # scipy's numbering too (raster order of first voxel)


@pytest.mark.parametrize("connectivity", VOLUME_CONN)
@given(mask=masks())
def test_jax_volume_matches_scipy(connectivity, mask):
    reference, _ = scipy_labels(mask, connectivity, slices=False)
    labels = label_volume(jnp.asarray(pad_to_fixed(mask)), connectivity=connectivity, backend="jax")
    got = np.asarray(labels)[: mask.shape[0], : mask.shape[1], : mask.shape[2]]
    assert_same_partition(got, reference)
    np.testing.assert_array_equal(got, reference)


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_both_backends_on_adversarial_shapes(name):
    mask = ADVERSARIAL[name]
    for connectivity in SLICE_CONN:
        reference, _ = scipy_labels(mask, connectivity, slices=True)
        np.testing.assert_array_equal(np.asarray(label_slices(jnp.asarray(mask), connectivity=connectivity)), reference)
        np.testing.assert_array_equal(label_slices(mask, connectivity=connectivity), reference)
    for connectivity in VOLUME_CONN:
        reference, _ = scipy_labels(mask, connectivity, slices=False)
        np.testing.assert_array_equal(np.asarray(label_volume(jnp.asarray(mask), connectivity=connectivity)), reference)
        np.testing.assert_array_equal(label_volume(mask, connectivity=connectivity), reference)
        np.testing.assert_array_equal(label_host(mask, connectivity, slices=False, method="runs")[0], reference)
        np.testing.assert_array_equal(label_host(mask, connectivity, slices=False, method="scipy")[0], reference)


def test_jit_and_eager_agree():
    mask = jnp.asarray(ADVERSARIAL["serpentine_flipped"][:1, :6, :6] | ADVERSARIAL["checkerboard"][:1, :6, :6])
    jitted = jax.jit(lambda m: label_slices(m, connectivity=8, backend="jax"))(mask)
    with jax.disable_jit():
        eager = label_slices(mask, connectivity=8, backend="jax")
    np.testing.assert_array_equal(np.asarray(jitted), np.asarray(eager))
    np.testing.assert_array_equal(np.asarray(jitted), scipy_labels(np.asarray(mask), 8, slices=True)[0])


def test_jax_accepts_integer_masks_nonzero_is_foreground():
    mask = np.zeros(FIXED, np.uint8)
    mask[0, 1:3, 1:3] = 3
    mask[0, 5, 5] = 255
    labels = np.asarray(label_slices(jnp.asarray(mask)))
    np.testing.assert_array_equal(labels, scipy_labels(mask != 0, 8, slices=True)[0])


# ----------------------------------------------------------------------------------- host backend
@pytest.mark.parametrize("slices, conns", [(True, SLICE_CONN), (False, VOLUME_CONN)])
@settings(max_examples=40)
@given(mask=masks(max_shape=(9, 14, 14)), workers=st.integers(1, 4))
def test_host_matches_scipy_exactly(slices, conns, mask, workers):
    # both host methods; workers > 1 forces the threaded slab path with its stitching, even when small
    for connectivity in conns:
        reference, n = scipy_labels(mask, connectivity, slices=slices)
        for method in ("runs", "scipy", "auto"):
            labels, count = label_host(mask, connectivity, slices=slices, workers=workers, method=method)
            assert labels.dtype == np.int32 and count == n
            assert_same_partition(labels, reference)
            np.testing.assert_array_equal(labels, reference)


def test_host_public_functions_and_padding_crop():
    mask = np.zeros((5, 40, 40), bool)
    mask[1:4, 20:30, 5:9] = ADVERSARIAL["snake_3d"][:3, :10, :4]
    mask[4, 39, 39] = True
    for connectivity in SLICE_CONN:
        out = label_slices(mask, connectivity=connectivity)
        assert isinstance(out, np.ndarray) and out.dtype == np.int32
        np.testing.assert_array_equal(out, scipy_labels(mask, connectivity, slices=True)[0])
    for connectivity in VOLUME_CONN:
        out = label_volume(mask.astype(np.int16) * 7, connectivity=connectivity, backend="host")
        np.testing.assert_array_equal(out, scipy_labels(mask, connectivity, slices=False)[0])


def test_empty_mask_has_no_labels():
    assert label_slices(np.zeros((2, 3, 4), bool)).max() == 0
    assert int(label_volume(jnp.zeros((2, 3, 4), bool)).max()) == 0


# ----------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("backend", ["host", "jax"])
def test_bad_connectivity_and_rank(backend):
    mask = np.zeros((2, 3, 3), bool)
    for bad in (6, 26, 0, True, "8"):
        with pytest.raises(InputError) as err:
            label_slices(mask, connectivity=bad, backend=backend)
        assert err.value.code == "BAD_CONNECTIVITY"
    for bad in (4, 8, 27):
        with pytest.raises(InputError) as err:
            label_volume(mask, connectivity=bad, backend=backend)
        assert err.value.code == "BAD_CONNECTIVITY"
    for shape in [(3, 3), (1, 2, 3, 3)]:
        with pytest.raises(InputError) as err:
            label_slices(np.zeros(shape, bool), backend=backend)
        assert err.value.code == "BAD_RANK" and str(shape) in str(err.value)
    with pytest.raises(InputError) as err:
        label_slices(mask, backend="gpu")
    assert err.value.code == "BAD_BACKEND"
