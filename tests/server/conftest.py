"""Fixtures of the server tier: real ComfyUI servers (one per runtime) started as subprocesses on 127.0.0.1.

Each server runs ``main.py --cpu`` from its runtime folder with the venv's Python, on a free port, with output,
input and temp folders (and, where the version has the flags, the user folder and database) in a temporary
folder. Runtimes come from ``SUPIR_RUNTIMES`` (default ``<repo>/.runtime``); ``SUPIR_SERVER_RUNTIMES``
(space-separated) narrows the list.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
RUNTIMES = ("comfy-0.3.75", "comfy-2024.03")
START_TIMEOUT_S = float(os.environ.get("SUPIR_SERVER_START_TIMEOUT", "120"))


def _runtimes_dir() -> Path:
    return Path(os.environ.get("SUPIR_RUNTIMES") or REPO / ".runtime").expanduser().resolve()


def _selected_runtimes() -> list[str]:
    return os.environ.get("SUPIR_SERVER_RUNTIMES", " ".join(RUNTIMES)).split()


@dataclass
class ComfyServer:
    runtime: str
    root: Path
    url: str
    log_path: Path
    process: subprocess.Popen

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def get_json(self, route: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + route, timeout=timeout) as response:
            return json.load(response)

    def post_json(self, route: str, payload, timeout: float = 30):
        request = urllib.request.Request(self.url + route, data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _flags(root: Path) -> str:
    return (root / "comfy" / "cli_args.py").read_text()


def _models_yaml(path: Path, models_root: Path) -> Path:
    """An extra_model_paths config mapping every subfolder of ``models_root`` to the folder name it is called."""
    lines = ["fsupir_tests:", f"    base_path: {json.dumps(str(models_root))}"]
    lines += [f"    {json.dumps(p.name)}: {json.dumps(p.name)}" for p in sorted(models_root.iterdir()) if p.is_dir()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _die_with_parent() -> None:
    """In the child, before exec: on Linux, get SIGTERM when pytest dies, so a killed test run leaves no server."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)  # its own session: the server and anything it started
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)


def _wait_until_up(server: ComfyServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"{server.runtime} exited with {server.process.returncode} while starting:\n"
                        f"{server.log_tail()}")
        try:
            server.get_json("/object_info", timeout=10)
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            time.sleep(0.5)
    pytest.fail(f"{server.runtime} did not answer /object_info within {START_TIMEOUT_S:.0f} s:\n{server.log_tail()}")


def _launch(runtime: str, work: Path, started: list, models_root: Path | None = None, extra_args=()) -> ComfyServer:
    """Starts ``runtime``'s main.py with its folders in ``work``; the process is added to ``started`` at once, so
    the caller stops it even when it never comes up."""
    root = _runtimes_dir() / runtime
    if not (root / "main.py").is_file():
        pytest.fail(f"no ComfyUI at {root}: run scripts/setup_env.sh all")
    flags = _flags(root)
    port = _free_port()
    cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--output-directory", str(work / "output"), "--input-directory", str(work / "input"),
           "--temp-directory", str(work / "temp"), "--dont-print-server"]
    for name in ("output", "input", "temp", "user"):
        (work / name).mkdir()
    if '"--user-directory"' in flags:
        cmd += ["--user-directory", str(work / "user")]
    if '"--database-url"' in flags:
        cmd += ["--database-url", "sqlite:///:memory:"]
    if '"--disable-api-nodes"' in flags:
        cmd += ["--disable-api-nodes"]  # no partner API nodes: faster start, nothing tries the network
    if models_root is not None:
        cmd += ["--extra-model-paths-config", str(_models_yaml(work / "extra_model_paths.yaml", models_root))]
    cmd += list(extra_args)
    log_path = work / "server.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("SUPIR_COMFY_ROOT", None)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)
    started.append(process)
    server = ComfyServer(runtime, root, f"http://127.0.0.1:{port}", log_path, process)
    _wait_until_up(server)
    return server


@contextlib.contextmanager
def serving(runtime: str, tmp_path_factory, models_root: Path | None = None, extra_args=()) -> Iterator[ComfyServer]:
    """A real ComfyUI of ``runtime`` (its folders in a new temporary folder), stopped when the block ends, also when
    it never came up. ``models_root`` is a folder whose subfolders (``SUPIR/``, ``checkpoints/``...) are added
    through ``--extra-model-paths-config``."""
    started: list[subprocess.Popen] = []
    try:
        yield _launch(runtime, tmp_path_factory.mktemp(f"server-{runtime}"), started, models_root, extra_args)
    finally:
        for process in started:
            _stop(process)


@pytest.fixture
def start_comfy_server(tmp_path_factory):
    """Factory: ``start_comfy_server(runtime, models_root=None, extra_args=())`` -> a started ComfyServer
    (``serving``'s arguments). The servers a test starts are stopped when it ends.
    """
    with contextlib.ExitStack() as servers:
        def start(runtime: str, models_root: Path | None = None, extra_args=()) -> ComfyServer:
            return servers.enter_context(serving(runtime, tmp_path_factory, models_root, extra_args))

        yield start


@pytest.fixture(params=[pytest.param(r, id=r) for r in _selected_runtimes()])
def runtime(request) -> str:
    """Name of each selected runtime in turn, for tests that start their own server with start_comfy_server."""
    return request.param


@pytest.fixture(scope="module", params=[pytest.param(r, id=r) for r in _selected_runtimes()])
def comfy_server(request, tmp_path_factory) -> ComfyServer:
    """A server per runtime without test models, shared by the tests of one module and stopped after it."""
    with serving(request.param, tmp_path_factory) as server:
        yield server
