"""Every lesson opens the same way; lessons and their worked solutions are committed without outputs, and their code
passes the project's linter (tests/test_lessons.py runs them)."""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import rrhf_lite

ROOT = Path(__file__).parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
TAG = f"v{rrhf_lite.__version__}"
BADGE = f"https://colab.research.google.com/github/rrhf-lite/rrhf-lite/blob/{TAG}/{{}}"
INSTALL = f'%pip install --quiet "rrhf-lite @ git+https://github.com/rrhf-lite/rrhf-lite@{TAG}"'


def test_there_are_ten_lessons():
    assert [p.name[:2] for p in NOTEBOOKS] == [f"{i:02d}" for i in range(10)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_lesson_opens_with_title_badge_what_you_learn_then_the_set_up_cell(path):
    cells = json.loads(path.read_text())["cells"]
    title, setup = ("".join(c["source"]) for c in cells[:2])
    assert cells[0]["cell_type"] == "markdown" and title.startswith(f"# {path.name[:2]} · ")
    assert BADGE.format(f"notebooks/{path.name}") in title and "Open In Colab" in title
    assert "**You will learn:**" in title and "**Builds on:**" in title
    assert cells[1]["cell_type"] == "code" and setup.startswith("# Set-up:") and "google.colab" in setup
    assert INSTALL in setup  # the notebook the badge opens and the code the cell installs are one release


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_a_solutions_notebook_opens_with_title_badge_and_the_set_up_cell(path):
    cells = json.loads(path.read_text())["cells"]
    title, setup = ("".join(c["source"]) for c in cells[:2])
    assert title.startswith(f"# Solutions · {path.name[:2]} ") and f"(../notebooks/{path.name})" in title
    assert BADGE.format(f"solutions/{path.name}") in title and "Open In Colab" in title
    assert cells[1]["cell_type"] == "code" and setup.startswith("# Set-up:") and INSTALL in setup


def _release_tool():
    spec = importlib.util.spec_from_file_location("release", ROOT / "tools" / "release.py")
    release = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(release)
    return release


def test_the_release_tool_checks_and_moves_every_lessons_pin(tmp_path, monkeypatch):
    """tools/release.py --check passes on the checkout; pinning a new version rewrites the version and the two refs of
    every lesson, and nothing else, after which --check passes for the new version and names each stale lesson for the
    old one."""
    release = _release_tool()
    assert release.problems(TAG) == [] and release.version() == rrhf_lite.__version__
    (tmp_path / "rrhf_lite").mkdir()
    shutil.copy(ROOT / "rrhf_lite" / "__init__.py", tmp_path / "rrhf_lite" / "__init__.py")
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    shutil.copytree(ROOT / "solutions", tmp_path / "solutions")
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    monkeypatch.setattr(release, "ROOT", tmp_path)
    monkeypatch.setattr(release, "INIT", tmp_path / "rrhf_lite" / "__init__.py")
    release.pin("12.3.4")
    assert release.version() == "12.3.4" and release.problems("v12.3.4") == []
    assert len(release.problems(TAG)) == 2 * len(NOTEBOOKS + SOLUTIONS) + 1
    for path in NOTEBOOKS + SOLUTIONS:
        moved = (tmp_path / path.parent.name / path.name).read_text()
        assert moved.replace("v12.3.4", TAG) == path.read_text()
    assert (tmp_path / "README.md").read_text().replace("v12.3.4", TAG) == (ROOT / "README.md").read_text()
    with pytest.raises(SystemExit, match="expected MAJOR.MINOR.PATCH"):
        release.pin("latest")


@pytest.mark.parametrize("path", NOTEBOOKS + SOLUTIONS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_a_lesson_is_committed_without_outputs(path):
    cells = json.loads(path.read_text())["cells"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in cells if c["cell_type"] == "code")


def test_the_code_of_lessons_and_solutions_passes_the_linter():
    """The code a learner copies from a lesson is held to the library's rules (pyproject.toml's ruff settings):
    no unused import or name, imports sorted, lines of at most 120 characters."""
    lint = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", "notebooks",
                           "solutions"], cwd=ROOT, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
