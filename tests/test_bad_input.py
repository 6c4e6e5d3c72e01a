"""Bad input on the reading side: every case is refused with its code (or read with a note), never scored as is.

Each test writes the bad file itself (DICOM through ``dicom_factory``, NIfTI through nibabel, .npy through
NumPy) and compares with values chosen here: error codes, file names, numbers planted in the files.
"""

import gzip
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pydicom
import pytest

import dicom_factory as factory
from agatax import CheckpointError, InputError, ReadError, Volume, compute_scores, read_mask, read_volume
from agatax.ensemble import load_ensemble, save_ensemble, stack_members
from agatax.model import UNet, UNetConfig
from agatax.volume import check_exam

SHAPE = (8, 64, 64)  # the smallest exam check_exam accepts


def chest(seed=0, shape=SHAPE) -> np.ndarray:
    """Integer HU: air (-1000) around a disc of soft tissue (20..60 HU) with a 300 HU spot; exact in int16."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    y, x = np.ogrid[:ny, :nx]
    disc = (y - ny / 2) ** 2 + (x - nx / 2) ** 2 < (0.35 * min(ny, nx)) ** 2
    hu = np.where(disc, rng.integers(20, 60, shape), -1000).astype(np.float64)
    hu[:, ny // 2 : ny // 2 + 3, nx // 2 : nx // 2 + 3] = 300.0
    return hu


def error(call, *args, kind=ReadError, **kw):
    with pytest.raises(kind) as info:
        call(*args, **kw)
    return info.value


def edit(path, **tags):
    """Rewrite DICOM tags of ``path``: value None deletes the tag; a str with letters is written as LO
    (garbage where numbers belong)."""
    ds = pydicom.dcmread(path)
    for name, value in tags.items():
        if value is None:
            delattr(ds, name)
        elif isinstance(value, str) and any(c.isalpha() for c in value):
            ds.add_new(name, "LO", value)
        else:
            setattr(ds, name, value)
    ds.save_as(path)


# --- 5. too small ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 64, 64), (7, 64, 64), (8, 63, 64), (8, 64, 48)])
def test_too_small_dicom_refused_with_what_an_exam_is(tmp_path, shape):
    factory.write_series(tmp_path, chest(7, shape))
    err = error(read_volume, tmp_path)
    assert err.code == "TOO_SMALL" and f"{shape[0]} x {shape[1]} x {shape[2]}" in err.message
    assert "40-80 slices of 512 x 512" in err.message and "allow_small=True" in err.hint
    assert read_volume(tmp_path, allow_small=True).shape == shape


def test_too_small_nifti_and_check_exam(tmp_path):
    nib.save(nib.Nifti1Image(np.full((2, 2, 2), -1000, np.int16), np.eye(4)), tmp_path / "t.nii")
    assert error(read_volume, tmp_path / "t.nii").code == "TOO_SMALL"
    assert error(check_exam, Volume(chest(8, (7, 64, 64)), (3.0, 0.5, 0.5)), kind=InputError).code == "TOO_SMALL"
    assert check_exam(Volume(chest(8), (3.0, 0.5, 0.5))) is None
    assert check_exam(Volume(np.zeros((2, 2, 2)), (1.0, 1.0, 1.0)), allow_small=True, allow_not_hu=True) is None


# --- 6. not HU ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["normalised", "mask", "no_air"])
def test_values_that_are_not_hu_refused(tmp_path, kind):
    hu = chest(9)
    data = {"normalised": (hu + 1000) / 1300, "mask": (hu > 200) * 3.0, "no_air": np.maximum(hu, -100.0)}[kind]
    nib.save(nib.Nifti1Image(data.transpose(2, 1, 0).astype(np.float32), np.diag([-0.5, -0.5, 3.0, 1.0])),
             tmp_path / "x.nii.gz")
    err = error(read_volume, tmp_path / "x.nii.gz")
    low, high = data.min(), data.max()
    assert err.code == "NOT_HU" and f"from {low:g} to {high:g}" in err.message and "allow_not_hu=True" in err.hint
    assert error(check_exam, Volume(data, (3.0, 0.5, 0.5)), kind=InputError).code == "NOT_HU"


def test_synthetic_exams_pass_the_exam_check():
    from agatax.synthetic import generate_exam

    for seed, protocol in ((0, "cardiac"), (1, "chest")):
        check_exam(generate_exam(seed, matrix=96, n_slices=24, protocol=protocol).volume)


# --- 15. ensemble weights -------------------------------------------------------------------------------


def test_ensemble_with_nan_weights_refused(tmp_path):
    config = UNetConfig.tiny()
    m = config.multiple
    shapes = jax.eval_shape(lambda: UNet(config).init(jax.random.key(0), jnp.zeros((1, m, m, m, 1))))
    members = [jax.tree.map(lambda s: np.full(s.shape, 0.5, np.float32), dict(shapes)) for _ in range(3)]
    keys = [k.key for k in jax.tree_util.tree_leaves_with_path(members[2]["params"])[-1][0]]  # the last parameter
    node = members[2]["params"]
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]].reshape(-1)[-1] = np.nan
    path = save_ensemble(tmp_path / "nan.msgpack", stack_members(members, config))
    err = error(load_ensemble, path, kind=CheckpointError)
    assert err.code == "NON_FINITE_WEIGHTS" and "member 2 " in err.message
    assert "['params']" + "".join(f"['{k}']" for k in keys) in err.message
