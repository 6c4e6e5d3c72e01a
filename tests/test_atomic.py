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


def test_replacing_keeps_a_restricted_mode(tmp_path):
    import os

    target = tmp_path / "summary.csv"
    atomic_write_bytes(target, b"a")
    os.chmod(target, 0o600)
    atomic_write_bytes(target, b"b")
    assert os.stat(target).st_mode & 0o777 == 0o600 and target.read_bytes() == b"b"


def test_a_symlink_at_the_target_is_replaced_not_followed(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious")
    folder = tmp_path / "report"
    folder.mkdir()
    (folder / "r.json").symlink_to(outside)
    atomic_write_bytes(folder / "r.json", b"new")
    assert outside.read_bytes() == b"precious"
    assert not (folder / "r.json").is_symlink() and (folder / "r.json").read_bytes() == b"new"


def test_temporary_files_are_named_by_pid_and_stale_ones_removed(tmp_path):
    import os
    import subprocess
    import sys

    from agatax._atomic import remove_stale_temps

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".a.json.{dead_pid}.0.tmp"
    live = tmp_path / f".b.json.{os.getpid()}.0.tmp"
    other = tmp_path / ".hidden.tmp"
    for path in (stale, live, other):
        path.write_bytes(b"x")
    assert remove_stale_temps(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])

    with pytest.raises(KeyboardInterrupt):
        with atomic_open(tmp_path / "c.bin") as handle:
            seen = [p.name for p in tmp_path.iterdir() if p.name.startswith(".c.bin.")]
            handle.write(b"x")
            raise KeyboardInterrupt
    assert len(seen) == 1 and seen[0].startswith(f".c.bin.{os.getpid()}.") and seen[0].endswith(".tmp")
    assert not (tmp_path / "c.bin").exists() and not any(p.name.startswith(".c.bin") for p in tmp_path.iterdir())


def test_a_held_folder_lock_refuses_a_second_holder_and_dies_with_its_process(tmp_path):
    import subprocess
    import sys

    from agatax import InputError
    from agatax._atomic import folder_lock

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from agatax._atomic import folder_lock\n"
         f"with folder_lock({str(tmp_path)!r}):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(InputError) as err:
            with folder_lock(tmp_path):
                pass
        assert err.value.code == "REPORT_BUSY" and str(holder.pid) in err.value.message
    finally:
        holder.kill()
        holder.wait()
    with folder_lock(tmp_path):  # the dead holder's lock is taken over
        pass


def test_a_pipe_or_device_target_is_written_in_place_not_replaced(tmp_path):
    import os
    import stat
    import threading

    from agatax._atomic import atomic_write_text

    fifo = tmp_path / "stream"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    atomic_write_text(fifo, "result\n")
    reader.join(timeout=30)
    assert got == ["result\n"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # still the pipe, not a file renamed over it
