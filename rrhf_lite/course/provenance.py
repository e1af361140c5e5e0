"""Which code built a stage: a hash of the package's source files that the stage's build depends on.

A stage's cache key (:mod:`rrhf_lite.course.stages`) holds the profile fields it depends on and its upstream stages.
That alone would hand back a stale stage after an edit to the code: change a loss in ``core/losses.py`` (the exercises
invite it) and ``runs/`` would still hold the adapters trained with the old one. So the key also holds
:func:`code_hash` of the modules that build the stage, *and every module of the package that they import*, directly
or through others. The imports are read from the source files (``ast``), not executed, so the hash is cheap and needs
no torch. A module is named by its path in the package: ``"core.losses"``, ``"methods.ppo"``.

The granularity is the module: an edit to ``core/losses.py`` rebuilds every stage whose code imports it (SFT and the
reward model use its losses too, and every stage after them depends on those), while an edit to ``methods/ppo.py``
rebuilds PPO and nothing else. Whitespace and comments count as edits: a hash cannot tell a harmless change from
another. A process that imported a module before its file was edited would run the old code under the new key: the
hash refuses (:func:`check_unchanged`), and the kernel is restarted.
"""

from __future__ import annotations

import ast
import hashlib
import sys
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
PACKAGE = PACKAGE_DIR.name  # "rrhf_lite"
# Not part of what builds a stage: the profiles are in the key field by field, and these two are the cache itself.
NOT_HASHED = frozenset({"course.profiles", "course.stages", "course.provenance"})


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


# Every source file of the package as this process found it (size, modification time), taken when the cache's code
# is first imported: a module this process has imported and whose file has changed since runs other code than the key
# would name (see check_unchanged)
LOADED = {p: _stamp(p) for p in PACKAGE_DIR.rglob("*.py")}


class CodeChangedError(RuntimeError):
    """A module of the package changed on disk after this process imported it."""


def check_unchanged(modules: Iterable[str], root: Path = PACKAGE_DIR) -> None:
    """Raise :class:`CodeChangedError` if one of ``modules`` that this process has imported changed on disk since: a
    stage built now would run the old code under the key of the new one. (Restart the kernel or process.)"""
    if Path(root) != PACKAGE_DIR:
        return
    for name in modules:
        file = module_file(name, root)
        if f"{PACKAGE}.{name}" in sys.modules and file in LOADED and file.is_file() and _stamp(file) != LOADED[file]:
            raise CodeChangedError(f"{file} changed after this process imported it: restart the kernel (or the "
                                   f"process) so that the code that builds a stage is the code its key names")


def module_file(name: str, root: Path = PACKAGE_DIR) -> Path:
    """The source file of module ``name`` (``"core.losses"`` -> ``<root>/core/losses.py``)."""
    return root.joinpath(*name.split(".")).with_suffix(".py")


def imported_modules(name: str, root: Path = PACKAGE_DIR) -> set[str]:
    """The package's modules that module ``name`` (e.g. ``"methods.ranking"``) imports anywhere in its file,
    function-local imports included: ``from rrhf_lite.core.losses import ...``, ``from rrhf_lite.core import losses``,
    ``import rrhf_lite.core.losses``, and the relative forms (``from .losses import ...``, ``from ..core import
    losses``)."""
    tree = ast.parse(module_file(name, root).read_text(encoding="utf-8"))
    here = name.split(".")[:-1]  # the sub-package the module is in
    candidates = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: level 1 is the module's own sub-package
                base = here[:len(here) - node.level + 1] if node.level <= len(here) + 1 else None
                if base is None:
                    continue
                parts = base + (node.module.split(".") if node.module else [])
            elif (node.module or "").split(".")[0] == PACKAGE:
                parts = node.module.split(".")[1:]
            else:
                continue
            candidates.add(".".join(parts))
            candidates.update(".".join([*parts, alias.name]) for alias in node.names)
        elif isinstance(node, ast.Import):
            candidates.update(alias.name.split(".", 1)[1] for alias in node.names
                              if alias.name.startswith(f"{PACKAGE}."))
    return {m for m in candidates if m and module_file(m, root).is_file()}


def package_modules(root: Path = PACKAGE_DIR) -> list[str]:
    """Every module of the package, by name (``"core.losses"``), ``__init__`` files left out."""
    return sorted(".".join(p.relative_to(root).with_suffix("").parts) for p in root.rglob("*.py")
                  if p.name != "__init__.py")


def module_closure(modules: Iterable[str], root: Path = PACKAGE_DIR) -> list[str]:
    """``modules`` and every package module they import, directly or not, except :data:`NOT_HASHED`; sorted."""
    seen, todo = set(), list(modules)
    while todo:
        name = todo.pop()
        if name not in seen and name not in NOT_HASHED:
            if not module_file(name, root).is_file():
                raise ValueError(f"no module {name!r} in {root}")
            seen.add(name)
            todo.extend(imported_modules(name, root))
    return sorted(seen)


def code_hash(modules: Iterable[str], root: Path = PACKAGE_DIR) -> str:
    """A short hash of the source of :func:`module_closure` of ``modules``: it changes exactly when one of those
    files does."""
    # every file's size and modification time, so that the cached hash is recomputed after any edit to the package
    stamps = tuple((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                   for p in sorted(root.rglob("*.py")))
    digest, closure = _hash(tuple(sorted(set(modules))), str(root), stamps)
    check_unchanged(closure, root)
    return digest


@lru_cache(maxsize=256)
def _hash(modules: tuple[str, ...], root: str, stamps: tuple) -> tuple[str, tuple[str, ...]]:
    digest, closure = hashlib.sha256(), module_closure(modules, Path(root))
    for name in closure:
        digest.update(name.encode() + b"\0" + module_file(name, Path(root)).read_bytes() + b"\0")
    return digest.hexdigest()[:12], tuple(closure)
