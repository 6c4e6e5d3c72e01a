"""A resident scorer: ``agatax serve`` keeps JAX imported, the weights read and the compiled code warm, and
``agatax score`` started while it runs hands its whole command over to it instead of paying the start again
(importing JAX, reading the weights and tracing the networks: 2-4 s per invocation on a CPU).

    agatax serve [--idle-minutes 30]     # in a terminal of its own, or in the background (&)
    agatax score EXAM ...                # from any shell of the same user: runs inside the server
    agatax serve --stop                  # stops it (so does Ctrl-C in its terminal, or the idle time)

The server listens on a Unix socket in a folder only its user can enter (``$AGATAX_SERVER`` names the
socket; default ``$XDG_RUNTIME_DIR/agatax/serve.sock``, else ``~/.cache/agatax/serve.sock``). It runs one
command at a time, in its main thread, exactly as ``agatax score`` would (the same parser, checks, files,
output and exit status) in the client's working folder and with the client's ``AGATAX_*`` variables; the
client relays the output and exits with the command's status. A Ctrl-C in the client interrupts the command
as it would a local one. Where no server answers, or it runs another agatax version or code or other JAX device
settings (``JAX_PLATFORMS``, ``CUDA_VISIBLE_DEVICES``, ``XLA_FLAGS``, ...), or ``--no-server`` is given,
``agatax score`` runs in its own process as always.

Protocol (one JSON object per line): server -> ``{"pid"}`` when it takes the connection (a client whose
user gives up before that has sent nothing, so nothing runs); client -> ``{"version", "argv", "cwd", "env",
"umask"}``; server -> ``{"out": text}`` / ``{"err": text}`` as the command writes, then ``{"exit": status}``;
or ``{"refused": reason}`` (another version), after which the client runs the command itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from agatax.errors import InputError

__all__ = ["socket_path", "serve", "try_remote", "stop_server"]

ENV_SOCKET = "AGATAX_SERVER"
ENV_PREFIX = "AGATAX_"
#: Variables that choose JAX's devices and compiler: fixed when the server starts, so a client whose values
#: differ runs its command itself.
ENV_FIXED = ("JAX_PLATFORMS", "JAX_PLATFORM_NAME", "CUDA_VISIBLE_DEVICES", "XLA_FLAGS", "JAX_ENABLE_X64")
SERVED_COMMANDS = ("score",)


def _fixed_settings() -> dict:
    """This process's values of the ENV_FIXED variables (None where unset)."""
    return {k: os.environ.get(k) for k in ENV_FIXED}


def socket_path() -> Path:
    """Where the server listens: ``$AGATAX_SERVER``, else ``$XDG_RUNTIME_DIR/agatax/serve.sock``, else
    ``~/.cache/agatax/serve.sock``."""
    explicit = os.environ.get(ENV_SOCKET, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) / "agatax" if runtime else Path.home() / ".cache" / "agatax"
    return base / "serve.sock"


def _version() -> str:
    """The agatax version and code fingerprint (``agatax.cli.code_fingerprint``) of this process: a server
    serves only clients of the same code (the server's is fixed when it starts)."""
    from agatax import __version__
    from agatax.cli import code_fingerprint

    return f"{__version__}+{code_fingerprint()}"


def _private_folder(folder: Path) -> None:
    """Create ``folder`` (mode 0700) or check that an existing one is this user's and closed to others."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = folder.stat()
    if st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o077:
        raise InputError(f"{folder} is not a private folder of this user (mode {oct(stat.S_IMODE(st.st_mode))})",
                         code="SERVER_FOLDER_UNSAFE",
                         hint=f"chmod 700 {folder}, or set {ENV_SOCKET} to a socket path in a private folder")


class _Stream:
    """A text stream that sends what is written to the client as ``{kind: text}`` lines."""

    def __init__(self, conn: socket.socket, kind: str):
        self.conn, self.kind = conn, kind
        self.encoding, self.errors = "utf-8", "replace"

    def write(self, text: str) -> int:
        if text:
            _send(self.conn, {self.kind: text})  # a client gone mid-command: the command still finishes
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def _send(conn: socket.socket, message: dict) -> None:
    with contextlib.suppress(OSError):
        conn.sendall((json.dumps(message) + "\n").encode())


class _Lines:
    """Reads one JSON object per line from a socket; ``next()`` gives None once the other end has closed."""

    def __init__(self, conn: socket.socket, limit: int = 1 << 20):
        self.conn, self.buffer, self.limit = conn, b"", limit

    def next(self) -> dict | None:
        while b"\n" not in self.buffer:
            chunk = self.conn.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
            if len(self.buffer) > self.limit:
                raise ValueError("message too long")
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)


@contextlib.contextmanager
def _job_context(cwd: str, env: dict, umask: int, conn: socket.socket):
    """The client's working folder, AGATAX_* variables, umask and output streams, for one command."""
    from agatax import _atomic

    old_env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
    old_out, old_err = sys.stdout, sys.stderr
    old_umask = os.umask(umask & 0o777)
    try:
        _atomic._UMASK = umask & 0o777  # files the command writes get the client's permissions
        os.chdir(cwd)
        for k in old_env:
            if k != ENV_SOCKET:
                del os.environ[k]
        os.environ.update({k: str(v) for k, v in env.items() if k.startswith(ENV_PREFIX) and k != ENV_SOCKET})
        sys.stdout, sys.stderr = _Stream(conn, "out"), _Stream(conn, "err")
        yield
    finally:
        sys.stdout, sys.stderr = old_out, old_err
        for k in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
            del os.environ[k]
        os.environ.update(old_env)
        os.chdir("/")  # the server's own folder may be gone by the next command
        os.umask(old_umask)
        _atomic._UMASK = old_umask


def _handle(conn: socket.socket) -> None:
    from agatax import cli

    _send(conn, {"pid": os.getpid()})
    request = _Lines(conn).next()
    if request is None:  # the client gave up before sending its command
        return
    if not isinstance(request, dict):
        raise ValueError("the request is not a JSON object")
    if request.get("stop"):
        _send(conn, {"stopping": os.getpid()})
        raise SystemExit(0)
    if request.get("version") != _version():
        _send(conn, {"refused": f"the server runs agatax {_version()}, the client {request.get('version')}"})
        return
    fixed = _fixed_settings()
    if request.get("fixed", fixed) != fixed:
        _send(conn, {"refused": "the client's JAX settings (" + ", ".join(ENV_FIXED) + ") differ from the server's"})
        return
    argv = [str(a) for a in request.get("argv", [])]
    if not argv or argv[0] not in SERVED_COMMANDS:
        _send(conn, {"refused": f"the server runs only {', '.join(SERVED_COMMANDS)}"})
        return
    start = time.perf_counter()
    with _job_context(str(request["cwd"]), dict(request.get("env", {})), int(request.get("umask", 0o022)), conn):
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse's --help and usage errors
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        except KeyboardInterrupt:
            code = 130
        except BaseException:  # --debug re-raises: the traceback goes to the client, as a local run prints it
            import traceback

            traceback.print_exc()
            code = 1
    _send(conn, {"exit": int(code)})
    print(f"agatax serve: agatax {' '.join(argv)} -> exit {code} ({time.perf_counter() - start:.2f} s)",
          file=sys.stderr, flush=True)


def serve(path: str | os.PathLike | None = None, *, idle_minutes: float = 30.0, ready=None) -> int:
    """Listen on ``path`` (default :func:`socket_path`) and run the commands clients hand over, one at a
    time, until ``idle_minutes`` pass without one, a stop request, or SIGINT/SIGTERM. Returns 0.

    ``ready``: called with the socket path once clients may connect (tests, ``--background``)."""
    path = (Path(path) if path is not None else socket_path()).absolute()
    _private_folder(path.parent)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise InputError(f"{path} exists and is not a socket", code="SERVER_SOCKET_TAKEN",
                             hint=f"move it away, or set {ENV_SOCKET} to another path")
        if _answers(path):
            raise InputError(f"a server already listens on {path}", code="SERVER_RUNNING",
                             hint="use it, or stop it with `agatax serve --stop`")
        path.unlink()  # left by a server that died
    # warm up: the imports and the weights a first command would pay for
    from agatax import cli

    _version()  # the code this server runs, fingerprinted now: a later edit of the files is not it
    cli.load_weights(None)
    os.chdir("/")  # commands run in their client's folder; the server's own may go away
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    terminated = []

    def on_term(signum, frame):  # stop: the command running (if any) is interrupted, then the server ends
        terminated.append(signum)
        raise KeyboardInterrupt

    previous_term = signal.signal(signal.SIGTERM, on_term)
    try:
        listener.bind(str(path))
        os.chmod(path, 0o600)
        listener.listen(8)
        listener.settimeout(max(float(idle_minutes), 0.01) * 60.0)
        print(f"agatax serve: listening on {path} (pid {os.getpid()}; stops after {idle_minutes:g} idle minutes, "
              "on `agatax serve --stop` or Ctrl-C)", file=sys.stderr, flush=True)
        if ready is not None:
            ready(path)
        while True:
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                print("agatax serve: idle, stopping", file=sys.stderr, flush=True)
                return 0
            with conn:
                conn.settimeout(None)
                try:
                    _handle(conn)
                except SystemExit:
                    print("agatax serve: stop requested", file=sys.stderr, flush=True)
                    return 0
                except (OSError, ValueError, KeyError, TypeError) as err:  # a client gone, or nonsense
                    print(f"agatax serve: request dropped ({type(err).__name__}: {err})", file=sys.stderr,
                          flush=True)
            if terminated:
                print("agatax serve: stopped", file=sys.stderr, flush=True)
                return 0
    except KeyboardInterrupt:
        print("agatax serve: stopped", file=sys.stderr, flush=True)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        listener.close()
        with contextlib.suppress(OSError):
            path.unlink()


def _connect(path: Path, timeout: float | None = 2.0) -> socket.socket | None:
    if not path.exists():
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(timeout)
    try:
        conn.connect(str(path))
    except OSError:
        conn.close()
        return None
    return conn


def _peer_uid(conn: socket.socket) -> int | None:
    """The user id of the process at the other end of a Unix socket (None where the system does not say)."""
    import struct

    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None
    return struct.unpack("3i", creds)[1]


def _answers(path: Path) -> bool:
    conn = _connect(path, timeout=1.0)
    if conn is None:
        return False
    conn.close()
    return True


def try_remote(argv: Sequence[str]) -> int | None:
    """Run ``agatax <argv>`` inside a running server; returns its exit status, or None when no server
    takes it (none listening, another version, a command it does not serve): then run it locally."""
    if not argv or argv[0] not in SERVED_COMMANDS or any(a.startswith("--no-s") for a in argv):
        return None
    if any(a.startswith(("/dev/", "/proc/")) for a in argv):  # this process's own streams: only it can open them
        return None
    path = socket_path()
    conn = _connect(path)
    if conn is None:
        return None
    if _peer_uid(conn) not in (None, os.getuid()):
        conn.close()
        return None
    env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
    umask = os.umask(0)
    os.umask(umask)
    with conn:
        lines = _Lines(conn)
        try:
            conn.settimeout(5.0)
            try:
                first = lines.next()
            except socket.timeout:
                print("agatax: waiting for the agatax server (busy with another command; Ctrl-C gives up, "
                      "--no-server runs here)", file=sys.stderr, flush=True)
                conn.settimeout(None)
                first = lines.next()
            conn.settimeout(None)
            if first is None or "pid" not in first:
                return None
            pid = int(first["pid"])
            conn.sendall((json.dumps({"version": _version(), "argv": list(argv), "cwd": os.getcwd(),
                                      "env": env, "umask": umask,
                                      "fixed": _fixed_settings()}) + "\n").encode())
        except OSError:
            return None
        except KeyboardInterrupt:  # the command was not sent: nothing ran
            print("error [INTERRUPTED]: stopped by the user", file=sys.stderr)
            return 130
        while True:
            try:
                message = lines.next()
                if message is None:
                    print("error [SERVER_LOST]: the agatax server stopped during the command (hint: run it "
                          "again; it runs locally when no server answers)", file=sys.stderr)
                    return 1
                if "refused" in message:
                    return None
                if "exit" in message:
                    return int(message["exit"])
                stream = sys.stdout if "out" in message else sys.stderr
                stream.write(message.get("out", message.get("err", "")))
                stream.flush()
            except KeyboardInterrupt:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGINT)  # the command stops as a local one would, and says so


def stop_server(path: str | os.PathLike | None = None) -> bool:
    """Ask the server on ``path`` (default :func:`socket_path`) to stop; True when one answered."""
    path = Path(path) if path is not None else socket_path()
    conn = _connect(path)
    if conn is None:
        return False
    with conn:
        conn.settimeout(None)  # a server busy with a command answers when it is done
        lines = _Lines(conn)
        lines.next()  # the greeting
        conn.sendall(b'{"stop": true}\n')
        reply = lines.next()
    deadline = time.monotonic() + 10.0
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return reply is not None


# ---------------------------------------------------------------------------------------------- command


def add_serve_command(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="keep a warm scorer running so that `agatax score` starts at once",
        description="Keep JAX, the default weights and the compiled code warm; `agatax score` run by the same "
        "user while this runs hands its command over (the same output, files and exit status). Stop it "
        "with --stop, Ctrl-C or the idle time.",
    )
    p.add_argument("--idle-minutes", type=float, default=30.0, help="stop after this long without a command")
    p.add_argument("--stop", action="store_true", help="stop the running server and exit")
    p.add_argument("--socket", default=None, help=f"socket path (default ${ENV_SOCKET}, else {socket_path()}); "
                   f"`agatax score` looks for the server at ${ENV_SOCKET} or that default")
    p.set_defaults(run=run_serve)


def run_serve(args) -> int:
    if args.stop:
        stopped = stop_server(args.socket)
        print("agatax serve: stopped" if stopped else "agatax serve: no server was running", file=sys.stderr)
        return 0
    if args.idle_minutes <= 0:
        raise InputError(f"--idle-minutes must be > 0, got {args.idle_minutes}", code="BAD_ARGUMENT")
    return serve(args.socket, idle_minutes=args.idle_minutes)
