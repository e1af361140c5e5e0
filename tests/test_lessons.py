"""Every lesson executed, on the ``tiny`` profile (what ``make main`` runs) and on ``rehearsal`` (the real track's code
path, offline): each notebook runs top to bottom in a fresh kernel, from its own folder, with the profile in the
kernel's environment, as ``make main`` runs it. Every lesson's worked solutions (``solutions/``) likewise, on ``tiny``:
each checks its expected outcomes on its own run, so a solution cannot go stale.

A lesson prints what teaches and nothing else: anything on stderr but a progress bar (a library's warning or report,
ours included) fails the test. Executed copies are written to ``runs/<profile>/notebooks/`` for reading.
"""

import importlib.metadata
import re
import sysconfig
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from rrhf_lite.course.profiles import get_profile

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
PROGRESS_BAR = re.compile(r"\d+%\|.*\|")  # what tqdm draws on stderr
LESSONS = [(profile, path) for profile in ("tiny", "rehearsal") for path in NOTEBOOKS]


def unexpected_stderr(notebook) -> list[str]:
    """Every line a notebook's cells wrote to stderr that is not a progress bar."""
    return [line for cell in notebook.cells for output in cell.get("outputs", [])
            if output.get("output_type") == "stream" and output.get("name") == "stderr"
            for line in output["text"].splitlines() if line.strip() and not PROGRESS_BAR.search(line)]


SITE_PACKAGES = Path(sysconfig.get_paths()["purelib"])
OURS = Path(__file__).resolve().parents[1] / "rrhf_lite"
PATH_IN_LINE = re.compile(r"(?:site|dist)-packages[/\\]([A-Za-z0-9_]+)|[/\\](rrhf_lite)[/\\]")
OPENING_WORDS = re.compile(r"^[^'\"{}%0-9<>\[\]()]{16,}")  # a line's literal opening, before anything interpolated


def who_printed(line: str) -> str | None:
    """The package that wrote a stderr line, where it can be told: a path in the line (a warning's ``file:line:
    Category: message``, a traceback), else the package whose source holds the line's opening words verbatim (a
    logger's message). None when neither tells."""
    found = PATH_IN_LINE.search(line)
    if found:
        module = found.group(1) or found.group(2)
    else:
        opening = OPENING_WORDS.match(line.strip())
        sources = (*OURS.rglob("*.py"), *SITE_PACKAGES.rglob("*.py"))
        source = opening and next((f for f in sources if opening.group(0)[:60] in f.read_text(errors="ignore")), None)
        if not source:
            return None
        module = "rrhf_lite" if OURS in source.parents else source.relative_to(SITE_PACKAGES).parts[0]
    distributions = importlib.metadata.packages_distributions().get(module, [])
    return f"{module} (distribution {', '.join(distributions)})" if distributions else module


def execute(path: Path, profile: str, monkeypatch) -> None:
    """Run a notebook in a fresh kernel from its folder on ``profile``; keep the executed copy in the runs folder; fail
    on anything written to stderr but a progress bar."""
    monkeypatch.setenv("RRHF_LITE_PROFILE", profile)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    finally:
        out = get_profile(profile).runs_path / "notebooks" / ("solutions" if path in SOLUTIONS else "")
        out.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, out / path.name)
    said = unexpected_stderr(notebook)[:10]
    assert not said, f"{path.name} on {profile} wrote to stderr what it does not expect:\n" + "\n".join(
        f"{line}\n    (printed by {who_printed(line) or 'a package that cannot be told from the line'})"
        for line in said)


@pytest.mark.parametrize(("profile", "path"), LESSONS, ids=[f"{profile}-{path.stem}" for profile, path in LESSONS])
def test_lesson(profile, path, monkeypatch):
    execute(path, profile, monkeypatch)


@pytest.mark.parametrize("path", SOLUTIONS, ids=[path.stem for path in SOLUTIONS])
def test_solution(path, monkeypatch):
    execute(path, "tiny", monkeypatch)


@pytest.mark.parametrize("lesson", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_every_exercise_has_a_worked_solution(lesson):
    """A lesson ends with its exercises in three tiers and links its solutions notebook, which solves each of them
    under the same number and tier, and checks at least one expected outcome per exercise."""
    solution = ROOT / "solutions" / lesson.name
    cells = nbformat.read(lesson, as_version=4).cells
    exercises = "".join(cells[-1].source).split("## Exercises")[-1]
    tiers = re.findall(r"^(\d)\. \*\*(Quick check|Change and predict|Small project)\.\*\*", exercises, re.MULTILINE)
    assert tiers == [("1", "Quick check"), ("2", "Change and predict"), ("3", "Small project")], lesson.name
    assert f"(../solutions/{lesson.name})" in exercises, f"{lesson.name} does not link its solutions"
    assert solution.exists(), f"no worked solutions for {lesson.name}"
    sections = "\n".join("".join(c.source) for c in nbformat.read(solution, as_version=4).cells).split("## Exercise ")
    assert [s[:1] for s in sections[1:]] == ["1", "2", "3"], solution.name
    for number, (section, (_, tier)) in enumerate(zip(sections[1:], tiers), start=1):
        assert section.startswith(f"{number} · {tier.lower()}"), (solution.name, section[:40])
        assert re.search(r"\bassert\b|\bcheck\(", section), f"{solution.name}: exercise {number} checks nothing"


def test_the_stderr_check_names_the_package_that_printed_a_line():
    assert who_printed("Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes' because "
                       "Hugging Face Hub is in offline mode.").startswith("kernels")
    assert who_printed(f"{SITE_PACKAGES}/transformers/generation/utils.py:1: UserWarning: x").startswith("transformers")
    assert who_printed("x") is None
