"""Install the package the way Colab does and run one lesson from a scratch folder.

On Colab a notebook's set-up cell runs ``%pip install "rrhf-lite @ git+https://..."``: a normal (not editable) install
of a wheel built from the repository, used from ``/content`` with no checkout on ``sys.path``; the stage cache then
goes to ``./runs`` (see :func:`rrhf_lite.course.profiles.default_runs_dir`). This test does the same offline:

1. builds the wheel from the files a clone of the repository has, and checks that every file of the package is in it;
2. makes a fresh virtual environment that sees the already-installed third-party libraries (torch, transformers...)
   through a ``.pth`` line naming this environment's site-packages, but not the checkout (a path line in a ``.pth``
   only appends that folder to ``sys.path``; the ``.pth`` files inside it, among them the editable install's import
   hook, are not processed), and installs the wheel into it;
3. copies one lesson notebook, and nothing else, into a scratch folder and executes it there with a kernel that
   runs the fresh environment's interpreter, then checks where ``rrhf_lite`` came from and where the stages went.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "notebooks/01_sft.ipynb"  # the lesson executed from the scratch folder
# The real track's code path on local stand-ins (built on first use, in the scratch folder's runs/): small and quick.
PROFILE = "rehearsal"
KERNEL = "rrhf-wheel"  # kernelspec written for the fresh environment's interpreter
MARKER = "RRHF_WHEEL_CHECK "  # prefix of the line printed by the cell appended to the notebook
IGNORED = (".git", ".venv", ".venv-*", "runs", "build", "dist", "*.egg-info", "__pycache__", "*.pyc",
           ".pytest_cache", ".hypothesis", ".ruff_cache", ".ipynb_checkpoints")

# Where rrhf_lite was imported from, what the kernel runs, and where the stage cache goes, seen from the inside.
PROBE = """\
import json, os, sys
import rrhf_lite
from rrhf_lite.course.profiles import default_runs_dir, get_profile
finders = [f if isinstance(f, type) else type(f) for f in sys.meta_path]  # classes or instances
print({marker!r} + json.dumps({{
    "file": rrhf_lite.__file__,
    "executable": sys.executable,
    "prefix": sys.prefix,
    "cwd": os.getcwd(),
    "sys_path": sys.path,
    "meta_path": [f"{{f.__module__}}.{{f.__qualname__}}" for f in finders],
    "runs_dir": str(default_runs_dir()),
    "runs_path": str(get_profile().runs_path),
}}))
"""


def _run(cmd, *, cwd=None, env=None, timeout=300) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, check=False, capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        output = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + "\n" + result.stderr)  # tracebacks' colours
        tail = "\n".join(output.strip().splitlines()[-40:])
        pytest.fail(f"exit {result.returncode}: {' '.join(map(str, cmd))}\n{tail}", pytrace=False)
    return result


def _source_files() -> list[str]:
    """Files a clone of the repository has: tracked, plus new ones not yet committed (but not ignored ones)."""
    if (ROOT / ".git").exists() and shutil.which("git"):
        listed = _run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT).stdout
        return [f for f in listed.split("\0") if f and (ROOT / f).is_file()]
    ignore = shutil.ignore_patterns(*IGNORED)
    files = []
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = sorted(set(dirs) - ignore(folder, dirs))
        files += [os.path.relpath(os.path.join(folder, n), ROOT) for n in sorted(set(names) - ignore(folder, names))]
    return files


def _probe(output: str) -> dict:
    lines = [line for line in output.splitlines() if line.startswith(MARKER)]
    assert len(lines) == 1, f"expected one {MARKER.strip()} line in:\n{output[-2000:]}"
    return json.loads(lines[0][len(MARKER):])


def _same(a, b) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _inside(path, folder) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def test_wheel_installs_and_runs_a_lesson_from_a_scratch_folder(tmp_path):
    # 1. Build the wheel from a copy of what a clone has: an in-tree build would write build/ and *.egg-info into
    #    the checkout (while other tests use it), and a stale build/lib can smuggle deleted modules into a wheel.
    files = _source_files()
    src = tmp_path / "src"
    for f in files:
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, src / f)
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "--disable-pip-version-check", "-w", dist, src])
    wheels = sorted(dist.glob("rrhf_lite-*.whl"))
    assert len(wheels) == 1, f"expected one rrhf_lite wheel, got {[w.name for w in sorted(dist.iterdir())]}"
    wheel = wheels[0]
    with zipfile.ZipFile(wheel) as zf:
        in_wheel = set(zf.namelist())
    package_files = {f for f in files if f.startswith("rrhf_lite/")}
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "rrhf_lite").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert modules <= package_files, f"modules a clone would not have (git-ignored?): {sorted(modules - package_files)}"
    missing = sorted(package_files - in_wheel)
    assert not missing, f"files of the package left out of the wheel: {missing}"
    stray = sorted(n for n in in_wheel if not n.startswith(("rrhf_lite/", "rrhf_lite-")))
    assert not stray, f"the wheel installs files outside the package: {stray}"

    # 2. A fresh environment: this environment's third-party libraries via a .pth line, then the wheel.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    outer = dict.fromkeys(sysconfig.get_path(k) for k in ("purelib", "platlib"))
    (site / "_outer_libraries.pth").write_text("".join(f"{p}\n" for p in outer))
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check",
          "--target", site, wheel])

    scratch = tmp_path / "content"
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "RRHF_LITE_RUNS")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", RRHF_LITE_PROFILE=PROFILE, VIRTUAL_ENV=str(venv),
               PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
               JUPYTER_PATH=str(tmp_path / "jupyter"), JUPYTER_RUNTIME_DIR=str(tmp_path / "jupyter-runtime"),
               IPYTHONDIR=str(tmp_path / "ipython"))

    # 3. The fresh interpreter imports the installed copy, and importing it puts no checkout on sys.path.
    seen = _probe(_run([python, "-c", PROBE.format(marker=MARKER)], cwd=scratch, env=env).stdout)
    _check_interpreter(seen, python, site, scratch)

    # 4. One lesson, alone in the scratch folder, run by a kernel on the fresh interpreter (an absolute path in
    #    its kernelspec, so no `python3` kernelspec found elsewhere can substitute another interpreter).
    kernel_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    kernel_dir.mkdir(parents=True)
    (kernel_dir / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "rrhf-lite wheel", "language": "python"}))
    notebook = json.loads((ROOT / NOTEBOOK).read_text(encoding="utf-8"))
    probe_cell = {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
                  "source": PROBE.format(marker=MARKER)}
    if (notebook["nbformat"], notebook["nbformat_minor"]) >= (4, 5):  # cell ids exist from nbformat 4.5 on
        probe_cell["id"] = "rrhf-wheel-check"
    notebook["cells"].append(probe_cell)
    name = Path(NOTEBOOK).name
    (scratch / name).write_text(json.dumps(notebook, indent=1), encoding="utf-8")
    _run([python, "-m", "nbconvert", "--to", "notebook", "--execute", "--ExecutePreprocessor.timeout=600",
          f"--ExecutePreprocessor.kernel_name={KERNEL}", "--output", "executed.ipynb", name],
         cwd=scratch, env=env, timeout=1800)

    # 5. No errors; the kernel used the installed copy; the stages went to ./runs of the scratch folder.
    executed = json.loads((scratch / "executed.ipynb").read_text(encoding="utf-8"))
    errors = [(i, o.get("ename"), o.get("evalue")) for i, cell in enumerate(executed["cells"])
              for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"error outputs in the executed notebook: {errors}"
    last = executed["cells"][-1]
    source = last["source"] if isinstance(last["source"], str) else "".join(last["source"])  # nbformat: str or lines
    assert source == probe_cell["source"], "the appended check cell is not the last cell"
    seen = _probe("".join("".join(o.get("text", "")) for o in last["outputs"] if o.get("output_type") == "stream"))
    _check_interpreter(seen, python, site, scratch)
    assert _same(seen["cwd"], scratch)

    runs = scratch / "runs" / PROFILE
    assert _same(seen["runs_path"], runs)
    assert runs.is_dir() and any(runs.iterdir()), f"no stage cache in {runs}"
    assert list(runs.glob("sft/*/stage.json")), f"no finished SFT stage under {runs}: {sorted(os.listdir(runs))}"
    assert (runs / "figures" / "01_sft_loss.png").is_file()
    assert sorted(os.listdir(scratch)) == sorted([name, "executed.ipynb", "runs"])


def _check_interpreter(seen: dict, python: Path, site: Path, scratch: Path) -> None:
    """``seen`` (a PROBE's output) comes from the fresh environment, with rrhf_lite from its site-packages."""
    assert _same(seen["prefix"], python.parent.parent), seen["prefix"]
    # Not resolved: every venv's python is a link to the same base interpreter.
    assert os.path.abspath(seen["executable"]) == os.path.abspath(python), seen["executable"]
    assert _inside(seen["file"], site) and not _inside(seen["file"], ROOT / "rrhf_lite"), seen["file"]
    assert _same(seen["runs_dir"], scratch / "runs"), seen["runs_dir"]
    # The checkout is on no path entry, and no import hook of the editable install is active.
    on_path = [p for p in seen["sys_path"] if p and (_same(p, ROOT) or _inside(p, ROOT / "rrhf_lite")
                                                     or (Path(p) / "rrhf_lite").is_dir() and not _same(p, site))]
    assert not on_path, f"another rrhf_lite is reachable from sys.path: {on_path}"
    assert not [f for f in seen["meta_path"] if "editable" in f.lower()], seen["meta_path"]
