"""`agatax serve`: a command handed over to the resident scorer gives what the same command gives locally."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import dicom_factory as factory
from agatax import serve

REPO = Path(__file__).resolve().parents[1]


def _env(sock):
    return dict(os.environ, PYTHONPATH=str(REPO), AGATAX_SERVER=str(sock))


def _agatax(args, sock, cwd=REPO, **kw):
    return subprocess.run([sys.executable, "-m", "agatax"] + args, cwd=cwd, env=_env(sock), capture_output=True,
                          text=True, timeout=300, **kw)


def _wait_for_socket(sock, proc, timeout=180.0):
    deadline = time.monotonic() + timeout
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)


@pytest.fixture(scope="module")
def exam(tmp_path_factory):
    """A small DICOM series with one planted lesion and its mask (no networks needed: --mask)."""
    root = tmp_path_factory.mktemp("serve_exam")
    hu = np.full((8, 64, 64), -1000.0)
    hu[:, 2:30, 2:40] = -50.0
    mask = np.zeros(hu.shape, np.uint8)
    hu[2, 6:10, 6:10] = 320.0
    mask[2, 6:10, 6:10] = 1
    factory.write_series(root / "dicom", hu, spacing=(2.5, 0.5, 0.5), thickness=2.5, series_uid="1.2.3.4.6")
    np.save(root / "mask.npy", mask)
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sock")
    folder.chmod(0o700)
    sock = folder / "serve.sock"
    proc = subprocess.Popen([sys.executable, "-m", "agatax", "serve", "--idle-minutes", "10"], cwd=REPO,
                            env=_env(sock), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_socket(sock, proc)
    yield sock, proc
    if proc.poll() is None:
        proc.terminate()
        proc.communicate(timeout=60)


def test_a_served_command_prints_and_writes_what_a_local_one_does(server, exam, tmp_path):
    sock, proc = server
    args = ["score", "dicom", "--mask", "mask.npy", "--json", str(tmp_path / "remote.json")]
    remote = _agatax(args, sock, cwd=exam)  # relative paths: the client's working folder
    local = _agatax(args[:-1] + [str(tmp_path / "local.json"), "--no-server"], sock, cwd=exam)
    assert remote.returncode == local.returncode == 0, (remote.stderr, local.stderr)
    assert remote.stdout == local.stdout and "Agatston" in remote.stdout
    got, want = (json.loads((tmp_path / f"{k}.json").read_text()) for k in ("remote", "local"))
    assert got == want
    assert got["agatston"] == pytest.approx(16 * 0.25 * 3 * 2.5 / 3)  # 16 pixels of 0.25 mm^2, weight 3
    # it really ran in the server: the client never imported JAX
    probe = subprocess.run(
        [sys.executable, "-c", "import sys\nfrom agatax import cli\nrc = cli.main()\n"
         "print('jax' in sys.modules, file=sys.stderr)\nsys.exit(rc)"] + args[:-1] + [str(tmp_path / "probe.json")],
        cwd=exam, env=_env(sock), capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr
    assert probe.stderr.strip().splitlines()[-1] == "False"
    assert json.loads((tmp_path / "probe.json").read_text()) == want


def test_a_refused_command_has_the_same_error_line_and_status(server, exam):
    sock, _ = server
    args = ["score", str(exam / "missing"), "--mask", str(exam / "mask.npy")]
    remote, local = _agatax(args, sock), _agatax(args + ["--no-server"], sock)
    assert remote.returncode == local.returncode == 2
    assert remote.stderr == local.stderr and remote.stderr.startswith("error [")


def test_other_versions_and_commands_are_refused_and_run_locally(server, monkeypatch):
    sock, _ = server
    from agatax import __version__

    # the same version number with other code (a pull that kept 0.2.0) is another version too
    other_code = f"{__version__}+{'0' * 16}"
    assert serve._version().startswith(f"{__version__}+") and serve._version() != other_code
    for request in ({"version": "0.0.0-other", "argv": ["score", "x"], "cwd": "/", "env": {}},
                    {"version": other_code, "argv": ["score", "x"], "cwd": "/", "env": {}},
                    {"version": serve._version(), "argv": ["train", "x"], "cwd": "/", "env": {}}):
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(str(sock))
        lines = serve._Lines(conn)
        assert "pid" in lines.next()  # the greeting
        conn.sendall((json.dumps(request) + "\n").encode())
        reply = lines.next()
        conn.close()
        assert "refused" in reply, reply
    monkeypatch.setenv("AGATAX_SERVER", str(sock))
    assert serve.try_remote(["train", "x"]) is None  # never sent: only score is served
    # other JAX device settings than the server's: refused, so the command runs in the client
    monkeypatch.setenv("XLA_FLAGS", (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_use_thunk_runtime=true").strip())
    assert serve.try_remote(["score", "x"]) is None
    assert serve.try_remote(["score", "x", "--no-server"]) is None


def test_no_server_or_a_stale_socket_means_local(tmp_path, monkeypatch):
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()  # the file stays, nobody listens
    for path in (tmp_path / "absent.sock", stale):
        monkeypatch.setenv("AGATAX_SERVER", str(path))
        assert serve.try_remote(["score", "anything"]) is None


def test_a_socket_folder_open_to_others_is_refused(tmp_path):
    from agatax.errors import InputError

    folder = tmp_path / "open"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    with pytest.raises(InputError) as err:
        serve.serve(folder / "s.sock", idle_minutes=0.01)
    assert err.value.code == "SERVER_FOLDER_UNSAFE"


def test_stop_ends_the_server_and_removes_its_socket(tmp_path):
    folder = tmp_path / "sock"
    folder.mkdir(mode=0o700)
    sock = folder / "serve.sock"
    proc = subprocess.Popen([sys.executable, "-m", "agatax", "serve"], cwd=REPO, env=_env(sock),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_socket(sock, proc)
    stop = _agatax(["serve", "--stop"], sock)
    assert stop.returncode == 0 and "stopped" in stop.stderr
    assert proc.wait(timeout=60) == 0
    assert not sock.exists()
    again = _agatax(["serve", "--stop"], sock)
    assert again.returncode == 0 and "no server was running" in again.stderr


@pytest.mark.parametrize("ignored", [False, True], ids=["sigint", "sigint-ignored-by-the-parent"])
def test_ctrl_c_in_the_client_stops_the_served_command_and_the_server_serves_on(exam, tmp_path, ignored):
    """Also where the client starts with SIGINT ignored (a command started in the background by a
    non-interactive shell), as a local run handles it."""
    import csv
    import signal

    import jax

    from agatax import UNetConfig, init_ensemble, save_ensemble

    save_ensemble(tmp_path / "tiny.msgpack", init_ensemble(jax.random.key(0), UNetConfig.tiny(), members=3))
    exams = tmp_path / "exams"
    hu = np.full((8, 64, 64), -1000.0)
    hu[:, 2:30, 2:40] = -50.0
    for k in range(6):
        factory.write_series(exams / f"e{k}", hu, spacing=(2.5, 0.5, 0.5), thickness=2.5, series_uid=f"1.2.3.9.{k}")
    folder = tmp_path / "sock"
    folder.mkdir(mode=0o700)
    sock = folder / "serve.sock"
    slow = ("import time\nfrom agatax import cli, serve\nscore = cli.ExamScorer.score\n"
            "cli.ExamScorer.score = lambda self, v: (time.sleep(1.0), score(self, v))[1]\n"
            "raise SystemExit(serve.serve(idle_minutes=10))\n")
    server = subprocess.Popen([sys.executable, "-c", slow], cwd=REPO, env=_env(sock), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_socket(sock, server)
        report = tmp_path / "report"
        args = ["score", str(exams), "--weights", str(tmp_path / "tiny.msgpack"), "--report", str(report),
                "--no-png", "--no-localise"]
        command = [sys.executable, "-m", "agatax"]
        if ignored:  # SIG_IGN survives exec, as a background shell's does
            command = [sys.executable, "-c", "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                       "os.execv(sys.executable, [sys.executable, '-m', 'agatax'] + sys.argv[1:])"]
        client = subprocess.Popen(command + args, cwd=REPO, env=_env(sock), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        summary = report / "summary.csv"
        deadline = time.monotonic() + 180
        while not (summary.is_file() and len(list(csv.DictReader(summary.open()))) >= 1):
            assert client.poll() is None and time.monotonic() < deadline, client.communicate()
            time.sleep(0.02)
        client.send_signal(signal.SIGINT)
        out, err = client.communicate(timeout=120)
        assert client.returncode == 130, err
        assert "Traceback" not in err
        done = int(err.strip().splitlines()[-1].split()[1])  # "interrupted: N of 6 exams scored; ..."
        assert 1 <= done < 6, (err, summary.read_text())
        # the server is still there; the same command finishes the batch
        again = _agatax(args, sock)
        assert again.returncode == 0, again.stderr
        assert len(list(csv.DictReader(summary.open()))) == 6
        assert server.poll() is None
    finally:
        server.terminate()
        server.communicate(timeout=60)


def test_debug_tracebacks_reach_the_client_and_the_server_serves_on(server, exam, tmp_path):
    sock, proc = server
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(b"not an ensemble")
    for args in (["score", str(exam / "missing"), "--mask", str(exam / "mask.npy"), "--debug"],
                 ["score", str(exam / "dicom"), "--weights", str(bad), "--debug"]):
        remote, local = _agatax(args, sock), _agatax(args + ["--no-server"], sock)
        assert remote.returncode == local.returncode == 1, (remote.stderr, local.stderr)
        assert "Traceback" in remote.stderr and remote.stderr.strip().splitlines()[-1] == \
            local.stderr.strip().splitlines()[-1]
    assert proc.poll() is None
    ok = _agatax(["score", str(exam / "dicom"), "--mask", str(exam / "mask.npy")], sock)
    assert ok.returncode == 0, ok.stderr


def test_files_written_for_the_client_get_the_client_umask(server, exam, tmp_path):
    import stat

    sock, _ = server
    out = tmp_path / "private.json"
    served = subprocess.run(["/bin/sh", "-c", f"umask 077 && exec {sys.executable} -m agatax score dicom "
                             f"--mask mask.npy --json {out}"], cwd=exam, env=_env(sock), capture_output=True,
                            text=True, timeout=300)
    assert served.returncode == 0, served.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_own_streams_and_a_taken_socket_path_are_not_served(tmp_path, monkeypatch):
    from agatax.errors import InputError

    folder = tmp_path / "private"
    folder.mkdir(mode=0o700)
    taken = folder / "s.sock"
    taken.write_text("a user's file")
    with pytest.raises(InputError) as err:
        serve.serve(taken, idle_minutes=0.01)
    assert err.value.code == "SERVER_SOCKET_TAKEN" and taken.read_text() == "a user's file"
    monkeypatch.setenv("AGATAX_SERVER", str(taken))
    assert serve.try_remote(["score", "x", "--json", "/dev/stdout"]) is None
