"""Thin slices scored on 3 mm slabs (the clinical convention): slab means, geometry and masks against hand
computations; the command line scores a thin-slice exam on slabs by default and natively on request."""

import json

import numpy as np
import pytest

import dicom_factory as factory
from agatax import Volume, thick_slabs
from agatax.cli import main


def test_slabs_are_means_of_consecutive_slices_centred_on_the_exam():
    hu = np.arange(13 * 4 * 5, dtype=np.float32).reshape(13, 4, 5)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = (0, 0, 0.6), (0, 0.5, 0), (0.4, 0, 0)
    affine[:3, 3] = (1.0, 2.0, 50.0)
    files = [f"s{k}.dcm" for k in range(13)]
    v = Volume(hu, (0.6, 0.5, 0.4), slice_thickness=0.6, affine=affine, metadata={"files": files})
    mask = np.zeros(hu.shape, np.uint8)
    mask[3, 1, 1] = 2  # first slab (slices 1-5)
    mask[7, 2, 2] = 4  # second slab (slices 6-10)
    mask[8, 2, 2] = 1
    slab, labels = thick_slabs(v, mask)
    # 3 mm / 0.6 mm = 5 slices a slab; 13 slices = 2 slabs + 3 left over: 1 below, 2 above
    assert slab.shape == (2, 4, 5)
    np.testing.assert_allclose(slab.hu[0], hu[1:6].mean(0))
    np.testing.assert_allclose(slab.hu[1], hu[6:11].mean(0))
    assert slab.spacing == pytest.approx((3.0, 0.5, 0.4)) and slab.slice_thickness == pytest.approx(3.0)
    np.testing.assert_allclose(slab.affine[:3, 3], (1.0, 2.0, 50.0 + 0.6 * 3))  # centre of slices 1-5: slice 3
    np.testing.assert_allclose(slab.affine[:3, 0], (0, 0, 3.0))
    assert slab.metadata["files"] == ["s3.dcm", "s8.dcm"]
    assert labels[0, 1, 1] == 2 and labels[1, 2, 2] == 4 and labels.sum() == 6
    assert any("slabs of 5 slices" in w and "3 end slices" in w for w in slab.warnings)


@pytest.mark.parametrize("dz", [2.0, 2.5, 3.0, 5.0])
def test_exams_of_2_mm_and_more_are_left_alone(dz):
    v = Volume(np.zeros((6, 4, 4), np.float32), (dz, 0.5, 0.5))
    assert thick_slabs(v)[0] is v


def test_thin_slice_exam_is_scored_on_slabs_by_default_and_natively_on_request(tmp_path, capsys):
    """0.6 mm slices; a 4 x 4 lesion at 650 HU on 2 of the 5 slices of one slab, 0 HU on the other 3.
    Slab: mean 260 HU -> weight 2, 16 pixels of 0.25 mm^2, factor 3 mm / 3 mm: 8.0.
    Native: two slices, weight 4, factor 0.6 / 3: 2 x 16 x 0.25 x 4 x 0.2 = 6.4."""
    hu = np.full((20, 64, 64), -1000.0)
    hu[:, 2:40, 2:40] = 0.0
    hu[6:8, 10:14, 10:14] = 650.0  # slab 1 holds slices 5-9
    mask = np.zeros(hu.shape, np.uint8)
    mask[6:8, 10:14, 10:14] = 1
    factory.write_series(tmp_path / "thin", hu, spacing=(0.6, 0.5, 0.5), thickness=0.6)
    np.save(tmp_path / "mask.npy", mask)
    base = ["score", str(tmp_path / "thin"), "--mask", str(tmp_path / "mask.npy"), "--json", "-"]
    assert main(base) == 0
    slab = json.loads(capsys.readouterr().out)
    assert slab["agatston"] == pytest.approx(8.0)
    assert slab["spacing_mm"][0] == pytest.approx(3.0) and slab["shape"][0] == 4
    assert any("slabs" in w for w in slab["warnings"])
    assert not any(w.startswith("slices of") for w in slab["warnings"])  # 3 mm slabs: the Agatston thickness
    assert main(base + ["--thin-slices", "native"]) == 0
    native = json.loads(capsys.readouterr().out)
    assert native["agatston"] == pytest.approx(6.4)
    assert sum(w.startswith("slices of 0.6 mm") and "reads high" in w for w in native["warnings"]) == 1
