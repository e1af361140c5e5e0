"""Pin the lessons to a release, so that a lesson opened on Colab runs the code it was written for.

A lesson's Colab badge opens the notebook as it is at the tag ``v<version>``, and its set-up cell installs the package
at the same tag: notebook and code come from one commit, whatever ``main`` holds by then. The lessons' worked
solutions (``solutions/``) are pinned the same way. ``__version__`` in
``rrhf_lite/__init__.py`` is the one place the version is written (pyproject.toml reads it from there).

    python tools/release.py --check        # every lesson pins v<__version__> (tests/test_notebook_format.py runs it)
    python tools/release.py 0.2.0          # 0.2.0 into __init__.py, every lesson's and solution's badge and set-up
                                           # cell, README

Then run ``make test``, commit, ``git tag -a v0.2.0 -m "rrhf-lite 0.2.0"`` on that commit and push the tag with the
branch (``git push origin main v0.2.0``). To run another version on Colab, open its notebook and put its tag, a branch
or a commit after the ``@`` of the set-up cell's ``%pip install`` line.
"""

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INIT = ROOT / "rrhf_lite" / "__init__.py"
REPOSITORY = "github.com/rrhf-lite/rrhf-lite"
VERSION_LINE = re.compile(r'^__version__ = "([^"]+)"$', flags=re.MULTILINE)
# what a lesson's first two cells pin: the badge's notebook and the set-up cell's install (the ref after blob/ or @)
BADGE = re.compile(r"(colab\.research\.google\.com/github/rrhf-lite/rrhf-lite/blob/)([^/\s)]+)"
                   r"(/(?:notebooks|solutions)/)")
INSTALL = re.compile(r"(rrhf-lite @ git\+https://github\.com/rrhf-lite/rrhf-lite)(@[^\s\"']+)?(\")")
README_RELEASE = re.compile(r"(in the release `)(v[^`]+)(`)")  # the README's Colab paragraph names the release
SEMVER = re.compile(r"^\d+\.\d+\.\d+(?:(?:a|b|rc)\d+)?$")


def version() -> str:
    return VERSION_LINE.search(INIT.read_text()).group(1)


def lessons() -> list[Path]:
    """The lessons, then their worked solutions: every notebook a badge opens."""
    return sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "solutions").glob("*.ipynb"))


def pins(path: Path) -> tuple[list[str], list[str]]:
    """The refs a lesson's badge and its set-up cell name (a badge: its blob ref; an install: its @ref, '' if none)."""
    text = "\n".join("".join(cell["source"]) for cell in json.loads(path.read_text())["cells"])
    return ([m.group(2) for m in BADGE.finditer(text)],
            [(m.group(2) or "")[1:] for m in INSTALL.finditer(text)])


def problems(tag: str) -> list[str]:
    """What keeps the lessons from pinning ``tag``: one line per lesson and pin."""
    found = []
    for path in lessons():
        badges, installs, name = *pins(path), f"{path.parent.name}/{path.name}"
        if badges != [tag]:
            found.append(f"{name}: its Colab badge opens {badges or 'no notebook'}, not the notebook at {tag}")
        if installs != [tag]:
            found.append(f"{name}: its set-up cell installs {installs or 'nothing'}, not {REPOSITORY}@{tag}")
    readme = README_RELEASE.findall((ROOT / "README.md").read_text())
    if [ref for _, ref, _ in readme] != [tag]:
        found.append(f"README.md: its Colab paragraph names {[ref for _, ref, _ in readme]}, not {tag}")
    return found


def pin(new_version: str) -> None:
    if not SEMVER.match(new_version):
        sys.exit(f"version {new_version!r}: expected MAJOR.MINOR.PATCH, e.g. 0.2.0")
    INIT.write_text(VERSION_LINE.sub(f'__version__ = "{new_version}"', INIT.read_text(), count=1))
    tag = f"v{new_version}"
    for path in lessons():
        notebook = json.loads(path.read_text())
        for cell in notebook["cells"][:2]:
            source = "".join(cell["source"])
            source = BADGE.sub(lambda m: m.group(1) + tag + m.group(3), source)
            source = INSTALL.sub(lambda m: m.group(1) + "@" + tag + m.group(3), source)
            cell["source"] = source.splitlines(keepends=True)
        path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
    readme = ROOT / "README.md"
    readme.write_text(README_RELEASE.sub(lambda m: m.group(1) + tag + m.group(3), readme.read_text()))
    print(f"pinned {len(lessons())} lessons and solutions to {tag}; now make test, commit, then: "
          f"git tag -a {tag} -m 'rrhf-lite {new_version}' && git push origin main {tag}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("version", nargs="?", help="the new version, e.g. 0.2.0")
    parser.add_argument("--check", action="store_true", help="check that every lesson pins v<__version__>")
    args = parser.parse_args()
    if args.check == bool(args.version):
        parser.error("give a version or --check")
    if args.version:
        pin(args.version)
    else:
        found = problems(f"v{version()}")
        if found:
            sys.exit("\n".join(found) + "\n(python tools/release.py <version> pins them all)")
        print(f"every lesson and solutions notebook pins v{version()}")


if __name__ == "__main__":
    main()
