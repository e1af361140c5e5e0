"""Every lesson executed on the ``rehearsal`` profile: the real track's code path, offline, in CI.

nbmake executes the notebooks on the default (tiny) profile; this runs each one again with
``RRHF_LITE_PROFILE=rehearsal`` in the kernel's environment. Executed copies are written to
``runs/rehearsal/notebooks/`` for reading. A lesson prints what teaches and nothing else: anything on stderr but a
progress bar (a library's warning or report, ours included) fails the test.
"""

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from rrhf_lite.profiles import get_profile

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
PROGRESS_BAR = re.compile(r"\d+%\|.*\|")  # what tqdm draws on stderr


def unexpected_stderr(notebook) -> list[str]:
    """Every line a notebook's cells wrote to stderr that is not a progress bar."""
    return [line for cell in notebook.cells for output in cell.get("outputs", [])
            if output.get("output_type") == "stream" and output.get("name") == "stderr"
            for line in output["text"].splitlines() if line.strip() and not PROGRESS_BAR.search(line)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_lesson_runs_on_the_rehearsal_profile(path, monkeypatch):
    monkeypatch.setenv("RRHF_LITE_PROFILE", "rehearsal")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    finally:
        out = get_profile("rehearsal").runs_path / "notebooks"
        out.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, out / path.name)
    said = unexpected_stderr(notebook)
    assert not said, f"{path.name} wrote to stderr what the lesson does not expect:\n" + "\n".join(said[:10])
