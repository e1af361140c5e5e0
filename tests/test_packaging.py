"""Packaging: environment.yml and pyproject.toml list the same requirements; the lock (constraints.txt) pins every one
of them within its range, and the tests run in the environment it describes; the README's commands exist."""

import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _normalise(requirement: str) -> str:
    name, spec = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", requirement).groups()
    return name.lower().replace("_", "-") + spec.replace(" ", "")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_normalise(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert {_normalise(r) for r in pip_section} == wanted


def test_readme_commands_are_makefile_targets_and_ci_runs_the_test_command():
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    commands = re.findall(r"^make (\w+)\s*(?:#.*)?$", readme, flags=re.MULTILINE)
    assert {"main", "test"} <= set(commands)
    commands += re.findall(r"`make ([\w-]+)", readme)  # and those named in the text (`make lab` opens ...)
    for target in commands:
        assert re.search(rf"^{target}:", makefile, flags=re.MULTILINE), f"README runs `make {target}`, not in Makefile"
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def _locked() -> dict[str, str]:
    """The lock's pins: canonical name -> exact version."""
    pins = {}
    for number, line in enumerate((ROOT / "constraints.txt").read_text().splitlines(), start=1):
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert spec.operator == "==", f"constraints.txt line {number}: {line!r} is not an exact pin"
            pins[canonicalize_name(requirement.name)] = spec.version
    return pins


def test_the_lock_pins_every_requirement_within_its_range():
    """Every package pyproject.toml names (dependencies and every extra) is pinned in constraints.txt, at a version
    its range admits; torch is not (the Makefile installs the build it is given)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    requirements += [Requirement(r) for r in project["dependencies"]]
    pins = _locked()
    assert "torch" not in pins
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        if name == "torch" or (requirement.marker and not requirement.marker.evaluate({"python_version": "3.11"})):
            continue
        assert name in pins, f"{requirement} is not in constraints.txt: run make lock"
        assert requirement.specifier.contains(pins[name]), f"constraints.txt pins {name}=={pins[name]}, " \
            f"outside pyproject.toml's {requirement}: run make lock"


@pytest.mark.skipif(Path(sys.prefix).resolve() != (ROOT / ".venv").resolve(),
                    reason="checks the environment make install builds (.venv), not one of one's own")
def test_make_install_installed_exactly_the_locked_versions():
    """In .venv (what make install built, and CI tests in), every installed package is pinned in the lock at the
    version installed, but torch, this package and pip's own tools; only the bench extra's packages are left out."""
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    pins = _locked()
    unlocked = set(installed) - set(pins) - {"torch", "rrhf-lite", "pip", "setuptools", "wheel"}
    assert not unlocked, f"installed but not in constraints.txt: {sorted(unlocked)}"
    differ = {name: (installed[name], pins[name]) for name in set(installed) & set(pins)
              if installed[name] != pins[name]}
    assert not differ, f"installed (left) is not the locked version (right): {differ}"
