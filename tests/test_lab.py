"""`make lab`: JupyterLab on the lessons with the project's kernel, started headless and asked over its REST API.

The test runs the Makefile's target itself (``make -o .venv/.installed lab LAB_ARGS=...``: ``-o`` keeps make from
rebuilding .venv even if pyproject.toml or the lock is newer than it) with the interpreter running the tests, on a free
port with a random token, then checks that the server opens on notebooks/ and lists the ten lessons and their
solutions, starts a kernel that runs that interpreter in notebooks/ with RRHF_LITE_PROFILE set to make's PROFILE, and
stops it: server and kernel are killed whatever happens.
"""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
LESSONS = [f"{n:02d}_" for n in range(10)]  # 00_ ... 09_
PROFILE = "rehearsal"  # not the default (tiny), so that the test sees make lab set RRHF_LITE_PROFILE for the kernel
STARTUP_S = 60  # at most, on a busy machine (about 5 s on an idle one)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    def __init__(self, process: subprocess.Popen, port: int, token: str, log: Path):
        self.process, self.port, self.token, self.log = process, port, token, log

    def api(self, path: str, method: str = "GET", body: dict | None = None, timeout: float = 10):
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/api/{path}", method=method,
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read()
        return json.loads(text) if text else None

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def wait_until_ready(self) -> dict:
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"make lab exited with {self.process.returncode}:\n{self.output()}")
            try:
                return self.api("status", timeout=2)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.25)
        pytest.fail(f"JupyterLab did not answer within {STARTUP_S} s:\n{self.output()}")


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to make's process group (make, jupyter lab), then SIGKILL to anything left, kernels included (a kernel
    runs in a session of its own)."""
    try:
        family = [psutil.Process(process.pid)] + psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    _, alive = psutil.wait_procs(family, timeout=10)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    process.wait(timeout=10)


@pytest.fixture
def lab(tmp_path):
    if not shutil.which("make"):
        pytest.skip("make is not installed")
    port, token = _free_port(), secrets.token_hex(16)
    lab_args = f"--no-browser --ip=127.0.0.1 --port={port} --ServerApp.port_retries=0 --ServerApp.token={token}"
    if os.geteuid() == 0:  # a container's root, as on CI: Jupyter refuses root unless told
        lab_args += " --allow-root"
    command = ["make", "--no-print-directory", "-o", ".venv/.installed", "lab", f"PY={sys.executable}",
               f"PROFILE={PROFILE}", f"LAB_ARGS={lab_args}"]
    # RRHF_LITE_PROFILE left out: the kernel has it only if make lab sets it
    env = {k: v for k, v in os.environ.items() if k not in ("RRHF_LITE_PROFILE", "MAKEFLAGS", "MFLAGS")}
    env["JUPYTER_RUNTIME_DIR"] = str(tmp_path / "runtime")
    log = tmp_path / "lab.log"
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        yield Lab(process, port, token, log)
    finally:
        _stop(process)


def test_make_lab_serves_the_lessons_with_the_projects_kernel(lab):
    lab.wait_until_ready()

    # the repository is Lab's root, so that a lesson's link to its solutions opens; Lab opens on notebooks/: the ten
    # lessons, 00_ to 09_, and solutions/ beside it with one notebook per lesson
    with urllib.request.urlopen(f"http://127.0.0.1:{lab.port}/?token={lab.token}", timeout=10) as response:
        assert response.url.split("?")[0].endswith("/lab/tree/notebooks"), response.url
    for folder in ("notebooks", "solutions"):
        listed = sorted(item["name"] for item in lab.api(f"contents/{folder}")["content"] if item["type"] == "notebook")
        for prefix in LESSONS:
            assert [name for name in listed if name.startswith(prefix)], f"no {folder}/{prefix}* in {listed}"

    # the default kernel is this interpreter: its spec names it, or names `python`, which jupyter_client runs as the
    # server's own interpreter (make lab runs jupyter with $(PY))
    specs = lab.api("kernelspecs")
    executable = Path(sys.executable)
    argv0 = specs["kernelspecs"][specs["default"]]["spec"]["argv"][0]
    assert argv0 in ("python", "python3", f"python{sys.version_info[0]}.{sys.version_info[1]}") \
        or Path(argv0).parent == executable.parent, f"default kernel {specs['default']} runs {argv0}"

    # ... and a kernel started on a lesson runs in notebooks/, on that interpreter, with the profile make lab was given
    session = lab.api("sessions", "POST", {"path": "notebooks/00_tiny_world.ipynb", "type": "notebook",
                                            "name": "00_tiny_world.ipynb", "kernel": {"name": specs["default"]}},
                      timeout=STARTUP_S)
    kernel_id = session["kernel"]["id"]
    deadline = time.monotonic() + STARTUP_S
    kernels = []
    while not kernels and time.monotonic() < deadline:
        kernels = [p for p in psutil.Process(lab.process.pid).children(recursive=True)
                   if kernel_id in " ".join(p.cmdline())]
        time.sleep(0.1)
    assert kernels, f"no process for kernel {kernel_id}:\n{lab.output()}"
    kernel = kernels[0]
    assert Path(kernel.cmdline()[0]).parent == executable.parent, f"kernel runs {kernel.cmdline()[0]}, not {executable}"
    assert Path(kernel.cwd()) == ROOT / "notebooks"
    assert kernel.environ().get("RRHF_LITE_PROFILE") == PROFILE
    lab.api(f"sessions/{session['id']}", "DELETE")
