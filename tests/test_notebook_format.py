"""Every lesson opens the same way and is committed without outputs (tests/test_lessons.py runs them)."""

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
BADGE = "https://colab.research.google.com/github/rrhf-lite/rrhf-lite/blob/main/notebooks/{}"


def test_there_are_ten_lessons():
    assert [p.name[:2] for p in NOTEBOOKS] == [f"{i:02d}" for i in range(10)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_lesson_opens_with_title_badge_what_you_learn_then_the_set_up_cell(path):
    cells = json.loads(path.read_text())["cells"]
    title, setup = ("".join(c["source"]) for c in cells[:2])
    assert cells[0]["cell_type"] == "markdown" and title.startswith(f"# {path.name[:2]} · ")
    assert BADGE.format(path.name) in title and "Open In Colab" in title
    assert "**You will learn:**" in title and "**Builds on:**" in title
    assert cells[1]["cell_type"] == "code" and setup.startswith("# Set-up:") and "google.colab" in setup


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_lesson_is_committed_without_outputs(path):
    cells = json.loads(path.read_text())["cells"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in cells if c["cell_type"] == "code")
