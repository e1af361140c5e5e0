"""Which code built a stage: a hash of the package's source files that the stage's build depends on.

A stage's cache key (:mod:`rrhf_lite.stages`) holds the profile fields it depends on and its upstream stages. That
alone would hand back a stale stage after an edit to the code: change a loss in ``losses.py`` (the exercises invite
it) and ``runs/`` would still hold the adapters trained with the old one. So the key also holds :func:`code_hash` of
the modules that build the stage, *and every module of the package that they import*, directly or through others.
The imports are read from the source files (``ast``), not executed, so the hash is cheap and needs no torch.

The granularity is the module: an edit to ``losses.py`` rebuilds every stage whose code imports it (SFT and the reward
model use its losses too, and every stage after them depends on those), while an edit to ``ppo.py`` rebuilds PPO and
nothing else. Whitespace and comments count as edits: a hash cannot tell a harmless change from another.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE = PACKAGE_DIR.name  # "rrhf_lite"
# Not part of what builds a stage: the profiles are in the key field by field, and these two are the cache itself.
NOT_HASHED = frozenset({"profiles", "stages", "provenance"})


def imported_modules(name: str, root: Path = PACKAGE_DIR) -> set[str]:
    """The package's modules that module ``name`` (e.g. ``"ranking"``) imports anywhere in its file, function-local
    imports included: ``from .losses import ...``, ``from . import losses``, ``from rrhf_lite.losses import ...``,
    ``import rrhf_lite.losses``."""
    tree = ast.parse((root / f"{name}.py").read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            absolute = node.level == 0 and (node.module or "").split(".")[0] == PACKAGE
            if node.level == 1 or absolute:
                parts = (node.module or "").split(".")[1 if absolute else 0:]
                found.update([parts[0]] if parts and parts[0] else [alias.name for alias in node.names])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[1] for alias in node.names if alias.name.startswith(f"{PACKAGE}."))
    return {m for m in found if (root / f"{m}.py").exists()}


def module_closure(modules: Iterable[str], root: Path = PACKAGE_DIR) -> list[str]:
    """``modules`` and every package module they import, directly or not, except :data:`NOT_HASHED`; sorted."""
    seen, todo = set(), list(modules)
    while todo:
        name = todo.pop()
        if name not in seen and name not in NOT_HASHED:
            if not (root / f"{name}.py").exists():
                raise ValueError(f"no module {name!r} in {root}")
            seen.add(name)
            todo.extend(imported_modules(name, root))
    return sorted(seen)


def code_hash(modules: Iterable[str], root: Path = PACKAGE_DIR) -> str:
    """A short hash of the source of :func:`module_closure` of ``modules``: it changes exactly when one of those
    files does."""
    # every file's size and modification time, so that the cached hash is recomputed after any edit to the package
    stamps = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.glob("*.py")))
    return _hash(tuple(sorted(set(modules))), str(root), stamps)


@lru_cache(maxsize=256)
def _hash(modules: tuple[str, ...], root: str, stamps: tuple) -> str:
    digest = hashlib.sha256()
    for name in module_closure(modules, Path(root)):
        digest.update(name.encode() + b"\0" + (Path(root) / f"{name}.py").read_bytes() + b"\0")
    return digest.hexdigest()[:12]
