"""Atomic writes: a failure part-way leaves the previous file whole and no temporary file behind."""

import pytest

from agatax._atomic import atomic_open, atomic_write_bytes


def test_atomic_write_replaces_the_whole_file(tmp_path):
    target = tmp_path / "sub" / "file.bin"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second version")
    assert target.read_bytes() == b"second version"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]


def test_failure_midway_keeps_the_old_file(tmp_path):
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as handle:
            handle.write(b"half of the new")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.bin"]


def test_new_files_get_ordinary_permissions(tmp_path):
    import os

    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"x")  # what open() gives under this process's umask
    target = tmp_path / "atomic.bin"
    atomic_write_bytes(target, b"x")
    assert os.stat(target).st_mode & 0o777 == os.stat(plain).st_mode & 0o777
