"""tools/run_lessons.py, what `make main` executes the lessons with: several lessons in one kernel, each from the state
a fresh kernel starts in, its executed copy as `jupyter nbconvert --execute` writes it."""

import subprocess
import sys
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "tools" / "run_lessons.py"

# A library that warns (Python shows a warning once per process and place unless told otherwise).
HELPER = "import warnings\n\ndef warn():\n    warnings.warn('from a library', UserWarning)\n"
# A lesson that leaves traces behind in every kind of state the runner restores, and prints that state.
POLLUTER = ("x = 41\nimport os, warnings, matplotlib, matplotlib.pyplot as plt, torch, helper\n"
            "import rrhf_lite.course.stages\n"
            "os.environ['LEFT_BEHIND'] = '1'\nmatplotlib.rcParams['lines.linewidth'] = 9\nplt.figure()\n"
            "warnings.simplefilter('ignore')\ntorch.set_num_threads(1)\nhelper.warn()")
PROBE = ("import os, sys, matplotlib, matplotlib.pyplot as plt, torch, helper\nhelper.warn()\n"
         "print(matplotlib.rcParams['lines.linewidth'], plt.get_fignums(), 'LEFT_BEHIND' in os.environ,"
         " torch.get_num_threads(), [name for name in ('x', 'warnings', 'In') if name in globals()], len(In),\n"
         "      [name for name in sys.modules if name.startswith('rrhf_lite')])")


def notebook(path: Path, *sources: str) -> Path:
    nb = new_notebook(cells=[new_code_cell(source) for source in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def outputs(path: Path) -> list:
    """What a reader sees: per cell its execution count and outputs."""
    return [(cell.execution_count, [dict(o) for o in cell.outputs]) for cell in nbformat.read(path, as_version=4).cells]


def test_lessons_run_in_one_kernel_as_in_fresh_ones(tmp_path):
    """Run after the polluter in the same kernel, the probe gives exactly nbconvert's output in a fresh kernel; a
    failing lesson then stops the run, written with its error. (One runner: each start imports torch and the rest.)"""
    (tmp_path / "helper.py").write_text(HELPER)
    polluter = notebook(tmp_path / "a.ipynb", POLLUTER, "print(open('helper.py').readline().strip())")
    probe = notebook(tmp_path / "b.ipynb", PROBE, "print('second cell')")
    failing = notebook(tmp_path / "c.ipynb", "print('before')", "raise ValueError('row 3: no reply')")
    never = notebook(tmp_path / "d.ipynb", "print('never')")
    # --after: the kernel starts and imports, then waits for the file before the first lesson
    marker, out = tmp_path / "lessons-before-done", tmp_path / "shared"
    runner = subprocess.Popen([sys.executable, str(RUNNER), *map(str, (polluter, probe, failing, never)),
                               "--output-dir", str(out), "--after", str(marker)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert runner.stdout.readline().startswith("kernel started")
        time.sleep(2)
        assert runner.poll() is None and not (out / "a.ipynb").exists()
        marker.touch()
        _, stderr = runner.communicate(timeout=600)
    finally:
        runner.kill()
    assert runner.returncode == 1 and "row 3: no reply" in stderr
    assert any(o.get("ename") == "ValueError" for o in nbformat.read(out / "c.ipynb", as_version=4).cells[1].outputs)
    assert not (out / "d.ipynb").exists()

    fresh = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                            str(probe), "--output-dir", str(tmp_path / "fresh")], capture_output=True, text=True,
                           timeout=600, cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr
    shared = outputs(out / "b.ipynb")
    assert shared == outputs(tmp_path / "fresh" / "b.ipynb")
    assert [count for count, _ in shared] == [1, 2]
    assert any(o.get("name") == "stderr" and "from a library" in o["text"] for o in shared[0][1])  # shown again
    probed = next(o["text"] for o in shared[0][1] if o.get("name") == "stdout")
    # matplotlib's default line width; no figure, environment variable or name left; the package not imported
    assert probed.startswith("1.5 [] False ") and probed.endswith(" ['In'] 2 []\n")
    first = outputs(out / "a.ipynb")
    assert first[1][1][0]["text"] == "import warnings\n"  # the working directory: the notebooks' folder
    executed = nbformat.read(out / "b.ipynb", as_version=4)
    assert all("execution" in cell.metadata for cell in executed.cells)  # cell timings, as nbconvert records them
