"""Run mongoeco's MongoDB wire-protocol server for tests that need a real socket.

mongoeco (https://pypi.org/project/mongoeco/) needs Python >= 3.13, while this
project supports 3.11+, so the server runs in its own cached Python 3.13 venv
as a subprocess.  mongoeco ships no server CLI; the subprocess runs a small
launcher (``_SERVER_SCRIPT``) around its public ``AsyncMongoEcoProxyServer``
with the ``SQLiteEngine``.  The launcher binds port 0 on 127.0.0.1, prints the
chosen port, and stops on SIGTERM/SIGINT or when its stdin closes (so it
never outlives the test process that started it).
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pymongo
from pymongo.errors import PyMongoError

MONGOECO_REQUIREMENT = "mongoeco[wire]>=4.11"
MONGOECO_MIN_VERSION = (4, 11)
PYTHON313_ENV = "PROFILESTORE_PYTHON313"
VENV_NAME = "mongoeco-venv-py313"
STARTUP_TIMEOUT_S = 30.0
READY_MARKER = "MONGOECO_LISTENING"

_ENABLE_HINT = (
    "Install Python 3.13 (e.g. `pyenv install 3.13`) or set "
    f"{PYTHON313_ENV}=/path/to/python3.13; or set PROFILESTORE_TEST_MONGO_URI "
    "to a real MongoDB."
)

# Runs inside the Python 3.13 venv.  argv: <sqlite file> <host>
_SERVER_SCRIPT = f"""
import asyncio, signal, sys, threading
from mongoeco.engines.sqlite import SQLiteEngine
from mongoeco.wire.proxy import AsyncMongoEcoProxyServer

async def main(path, host):
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def watch_stdin():
        try:
            sys.stdin.buffer.read()
        finally:
            loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, daemon=True).start()
    server = AsyncMongoEcoProxyServer(engine=SQLiteEngine(path), host=host, port=0)
    async with server:
        print("{READY_MARKER}", server.address.port, flush=True)
        await stop.wait()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


_SCRIPT_LABEL = "<mongo_wire._SERVER_SCRIPT>"


class MongoWireUnavailable(Exception):
    """The mongoeco wire server cannot be provided on this machine."""


def _probe_version(python: str) -> tuple[tuple[int, int], str] | None:
    """Return ((major, minor), sys.executable) of *python*, or None if it fails."""
    try:
        proc = subprocess.run(
            [python, "-c", "import sys; print(sys.version_info[:2]); print(sys.executable)"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or len(lines) != 2:
        return None
    try:
        major, minor = (int(part) for part in lines[0].strip("()").split(","))
    except ValueError:
        return None
    return (major, minor), lines[1].strip() or python


def _candidates() -> list[str]:
    found: list[str] = []
    which = shutil.which("python3.13")
    if which:
        found.append(which)
    pyenv_roots = [os.environ.get("PYENV_ROOT", ""), str(Path.home() / ".pyenv")]
    for root in filter(None, pyenv_roots):
        found.extend(
            sorted(
                glob.glob(os.path.join(root, "versions", "3.13*", "bin", "python3.13")),
                reverse=True,
            )
        )
    found += ["/usr/local/bin/python3.13", "/usr/bin/python3.13"]
    if sys.version_info[:2] == (3, 13):
        found.insert(0, sys.executable)
    return list(dict.fromkeys(found))


def find_python313() -> str | None:
    """Locate a working Python 3.13 interpreter (real path, not a pyenv shim).

    ``$PROFILESTORE_PYTHON313`` wins when set (and is then the only candidate).
    """
    override = os.environ.get(PYTHON313_ENV)
    candidates = [override] if override else _candidates()
    for candidate in candidates:
        probed = _probe_version(candidate)
        if probed is not None and probed[0] == (3, 13):
            return probed[1]
    return None


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "profilestore"


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _venv_ready(venv: Path) -> bool:
    python = _venv_python(venv)
    if not python.exists():
        return False
    check = (
        "import bson, mongoeco.engines.sqlite, mongoeco.wire.proxy; "
        "from importlib.metadata import version; print(version('mongoeco'))"
    )
    try:
        proc = subprocess.run(
            [str(python), "-I", "-c", check],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    if proc.returncode != 0:
        return False
    try:
        installed = tuple(int(part) for part in proc.stdout.strip().split(".")[:2])
    except ValueError:
        return False
    return installed >= MONGOECO_MIN_VERSION


def ensure_mongoeco_venv() -> Path:
    """Create (once, cached, under a file lock) a Python 3.13 venv with mongoeco.

    Returns the venv directory.  Raises MongoWireUnavailable when Python 3.13
    is missing or mongoeco cannot be installed.
    """
    root = _cache_root()
    root.mkdir(parents=True, exist_ok=True)
    venv = root / VENV_NAME
    with open(root / f"{VENV_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if _venv_ready(venv):
                return venv
            python313 = find_python313()
            if python313 is None:
                raise MongoWireUnavailable(
                    f"mongoeco needs Python 3.13, which was not found. {_ENABLE_HINT}"
                )
            shutil.rmtree(venv, ignore_errors=True)
            steps = [
                [python313, "-m", "venv", str(venv)],
                [str(_venv_python(venv)), "-m", "pip", "install", "--quiet", MONGOECO_REQUIREMENT],
            ]
            for step in steps:
                proc = subprocess.run(
                    step, capture_output=True, text=True, timeout=900, check=False
                )
                if proc.returncode != 0:
                    shutil.rmtree(venv, ignore_errors=True)
                    raise MongoWireUnavailable(
                        f"Could not build the mongoeco venv ({' '.join(step)} exited "
                        f"{proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
                    )
            if not _venv_ready(venv):
                raise MongoWireUnavailable(
                    f"mongoeco venv at {venv} was built but does not import mongoeco"
                )
            return venv
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_port(stdout_path: Path) -> int | None:
    try:
        text = stdout_path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == READY_MARKER and parts[1].isdigit():
            return int(parts[1])
    return None


def _ping(uri: str) -> bool:
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
        uri, serverSelectionTimeoutMS=500, connectTimeoutMS=500
    )
    try:
        client.admin.command("ping")
    except PyMongoError:
        return False
    finally:
        client.close()
    return True


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()  # the launcher exits cleanly on stdin EOF
    try:
        proc.wait(timeout=10)
        return
    except subprocess.TimeoutExpired:
        pass
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def run_mongoeco_server(
    data_dir: Path, *, startup_timeout: float = STARTUP_TIMEOUT_S
) -> Iterator[str]:
    """Run mongoeco's wire server (SQLite engine, data in *data_dir*) on 127.0.0.1.

    Yields ``mongodb://127.0.0.1:PORT/``.  The server's stdout/stderr go to
    ``data_dir/mongoeco.{stdout,stderr}.log``.
    """
    venv = ensure_mongoeco_venv()
    data_dir.mkdir(parents=True, exist_ok=True)
    stdout_path = data_dir / "mongoeco.stdout.log"
    stderr_path = data_dir / "mongoeco.stderr.log"
    cmd = [
        str(_venv_python(venv)),
        "-I",
        "-c",
        _SERVER_SCRIPT,
        str(data_dir / "mongoeco.sqlite"),
        "127.0.0.1",
    ]
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=data_dir)
    try:
        uri = _wait_ready(proc, stdout_path, stderr_path, startup_timeout)
        yield uri
    finally:
        _stop(proc)


def _wait_ready(
    proc: subprocess.Popen[bytes], stdout_path: Path, stderr_path: Path, timeout: float
) -> str:
    deadline = time.monotonic() + timeout
    port: int | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if port is None:
            port = _read_port(stdout_path)
        if port is not None and _ping(f"mongodb://127.0.0.1:{port}/"):
            return f"mongodb://127.0.0.1:{port}/"
        time.sleep(0.1)
    state = (
        f"exited with code {proc.returncode}"
        if proc.poll() is not None
        else f"not ready after {timeout:.0f}s"
    )
    stderr = stderr_path.read_text(errors="replace")[-4000:] if stderr_path.exists() else ""
    args = proc.args if isinstance(proc.args, list) else [proc.args]
    shown = [_SCRIPT_LABEL if arg == _SERVER_SCRIPT else str(arg) for arg in args]
    raise RuntimeError(
        f"mongoeco wire server {state} (port={port}).\n"
        f"command: {shown!r}\nstderr:\n{stderr or '<empty>'}"
    )
