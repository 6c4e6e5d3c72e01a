"""Batches on a Dask cluster (--scheduler, --workers): the same files as the serial batch, a killed worker loses nothing."""

import csv
import json
import os
import signal
import threading
import time

import numpy as np
import pytest

from agatax import write_dicom_series
from agatax.cli import main

distributed = pytest.importorskip("distributed")

TIMING = {"seconds"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Four synthetic exams (24 x 96 x 96: one compilation per process), a missing one, a tiny ensemble."""
    import jax

    from agatax import UNetConfig, init_ensemble, save_ensemble
    from agatax.synthetic import generate_exam

    root = tmp_path_factory.mktemp("cluster-cohort")
    for seed in range(4):
        exam = generate_exam(seed, matrix=96, n_slices=24, slice_increment_mm=3.0, slice_thickness_mm=3.0,
                             fov_mm=200.0)
        write_dicom_series(root / "exams" / f"case{seed}", exam.volume, patient_id=f"case{seed}")
    (root / "exams.txt").write_text("".join(f"{root / 'exams' / f'case{s}'}\n" for s in range(4))
                                    + f"{root / 'exams' / 'missing'}\n")
    save_ensemble(root / "tiny.msgpack", init_ensemble(jax.random.key(0), UNetConfig.tiny(), members=3))
    return root


def _rows(path):
    """Summary rows without timing; the report column by file name (the folders differ)."""
    with open(path, newline="") as f:
        rows = {row["exam_id"]: {k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)}
    for row in rows.values():
        row["report"] = os.path.basename(row["report"])
    return rows


def _same_reports(serial, other):
    """Every file of the serial report folder is in ``other`` with the same content (JSON numbers equal,
    timing left out; masks compared voxel by voxel: gzip headers carry a time), and no other file."""
    import nibabel as nib

    names = sorted(p.name for p in serial.iterdir() if not p.name.startswith("."))
    assert names == sorted(p.name for p in other.iterdir() if not p.name.startswith("."))
    assert [p.name for p in other.iterdir() if p.name.endswith(".tmp")] == []
    for name in names:
        a, b = serial / name, other / name
        if name == "summary.csv":
            assert _rows(a) == _rows(b)
        elif name.endswith(".json"):
            left, right = json.loads(a.read_text()), json.loads(b.read_text())
            for data in (left, right):
                for key in TIMING:
                    data.pop(key, None)
            assert left == right, name
        elif name.endswith(".nii.gz"):
            x, y = nib.load(a), nib.load(b)
            assert np.array_equal(x.affine, y.affine) and np.array_equal(np.asarray(x.dataobj), np.asarray(y.dataobj))
        else:
            assert a.read_bytes() == b.read_bytes(), name
    return names


def test_cluster_batch_equals_the_serial_batch_although_a_worker_is_killed(cohort, tmp_path, capsys):
    from distributed import Client, LocalCluster

    common = ["score", "@" + str(cohort / "exams.txt"), "--weights", str(cohort / "tiny.msgpack"), "--no-png",
              "--no-localise", "--device", "cpu"]
    serial = tmp_path / "serial"
    assert main(common + ["--report", str(serial)]) == 3  # the missing exam fails, the others are scored
    capsys.readouterr()

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        pids = client.run(os.getpid)
        killed = {}

        def kill_one_mid_exam():
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                busy = {w: [k for k in keys if str(k).startswith("agatax-")] for w, keys in client.processing().items()}
                busy = {w: keys for w, keys in busy.items() if keys}
                if busy:
                    time.sleep(2.0)  # the exam is being read, or the worker is loading and compiling
                    worker, keys = sorted(busy.items())[0]
                    killed["exam"], killed["worker"] = keys, worker
                    os.kill(pids[worker], signal.SIGKILL)
                    return
                time.sleep(0.1)

        killer = threading.Thread(target=kill_one_mid_exam, daemon=True)
        killer.start()
        out = tmp_path / "cluster"
        assert main(common + ["--report", str(out), "--scheduler", cluster.scheduler_address]) == 3
        killer.join()
        captured = capsys.readouterr()
        assert killed, "no exam was seen running"
        assert "agatax: 5 exams: 4 scored, 1 failed" in captured.err
        assert "agatax: 5/5 exams" in captured.err  # progress lines as in a local batch
        names = _same_reports(serial, out)
        assert {"case0.json", "case3.json", "summary.csv"} <= set(names)
        # each worker process loaded the ensemble at most once (the restarted one: once, or not at all)
        from agatax.exam_job import loaded_scorers

        loads = client.run(loaded_scorers)
        assert all(n <= 1 for n in loads.values()) and sum(loads.values()) >= 1

        # a re-run on the cluster keeps every finished exam (provenance matches) and retries the failure
        assert main(common + ["--report", str(out), "--scheduler", cluster.scheduler_address]) == 3
        # one score line per exam scored (warning lines below them may name the Agatston score too)
        assert sum(" Agatston " in line and not line.startswith(" ") for line in captured.out.splitlines()) == 4
        assert capsys.readouterr().out.count("(kept from an earlier run)") == 4


def test_workers_start_a_local_cluster(cohort, tmp_path, capsys):
    exam = cohort / "exams" / "case1"
    from agatax import read_volume

    np.save(tmp_path / "mask.npy", (read_volume(exam).hu >= 300).astype(np.uint8))
    args = ["score", str(exam), "--mask", str(tmp_path / "mask.npy"), "--no-png", "--quiet"]
    assert main(args + ["--report", str(tmp_path / "here")]) == 0
    assert main(args + ["--report", str(tmp_path / "there"), "--workers", "1"]) == 0
    capsys.readouterr()
    _same_reports(tmp_path / "here", tmp_path / "there")


def test_cluster_options_are_checked(cohort, tmp_path, capsys):
    import dask

    base = ["score", str(cohort / "exams"), "--report", str(tmp_path / "r"), "--no-png", "--weights",
            str(cohort / "tiny.msgpack")]
    assert main(base + ["--workers", "0"]) == 2
    assert "error [BAD_ARGUMENT]: --workers must be 1 or more" in capsys.readouterr().err
    assert main(base + ["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"]) == 2
    assert "error [BAD_ARGUMENT]: --scheduler and --workers exclude each other" in capsys.readouterr().err
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        assert main(base + ["--scheduler", "tcp://127.0.0.1:1"]) == 2
    assert "error [SCHEDULER_UNREACHABLE]: --scheduler tcp://127.0.0.1:1" in capsys.readouterr().err


def test_a_worker_running_other_agatax_code_refuses_the_exam():
    """process_exam on a worker whose code fingerprint differs from the client's provenance: CODE_MISMATCH,
    before the exam is read (the report would carry a provenance that is not its own)."""
    from agatax.cluster import process_exam
    from agatax.errors import InputError

    with pytest.raises(InputError) as err:
        process_exam(None, None, {"agatax_code": "0" * 16})
    assert err.value.code == "CODE_MISMATCH" and "0" * 16 in err.value.message
