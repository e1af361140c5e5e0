"""Every lesson executed, on the ``tiny`` profile (what ``make main`` runs) and on ``rehearsal`` (the real track's code
path, offline): each notebook runs top to bottom in a fresh kernel, from its own folder, with the profile in the
kernel's environment, as ``make main`` runs it.

A lesson prints what teaches and nothing else: anything on stderr but a progress bar (a library's warning or report,
ours included) fails the test. Executed copies are written to ``runs/<profile>/notebooks/`` for reading.
"""

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from rrhf_lite.profiles import get_profile

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
PROGRESS_BAR = re.compile(r"\d+%\|.*\|")  # what tqdm draws on stderr
LESSONS = [(profile, path) for profile in ("tiny", "rehearsal") for path in NOTEBOOKS]


def unexpected_stderr(notebook) -> list[str]:
    """Every line a notebook's cells wrote to stderr that is not a progress bar."""
    return [line for cell in notebook.cells for output in cell.get("outputs", [])
            if output.get("output_type") == "stream" and output.get("name") == "stderr"
            for line in output["text"].splitlines() if line.strip() and not PROGRESS_BAR.search(line)]


@pytest.mark.parametrize(("profile", "path"), LESSONS, ids=[f"{profile}-{path.stem}" for profile, path in LESSONS])
def test_lesson(profile, path, monkeypatch):
    monkeypatch.setenv("RRHF_LITE_PROFILE", profile)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    finally:
        out = get_profile(profile).runs_path / "notebooks"
        out.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, out / path.name)
    said = unexpected_stderr(notebook)
    assert not said, f"{path.name} on {profile} wrote to stderr what it does not expect:\n" + "\n".join(said[:10])
