"""The stage cache: build a stage once, load it from then on, safely across processes.

Each lesson produces something the next ones need (the base model, the SFT model, the reward model, samples...).
It is cached on disk as a *stage*::

    runs/<profile>/<stage>/<key>/        the stage's files, written by its build function
    runs/<profile>/<stage>/<key>/stage.json   written last: its presence means "complete"
    runs/<profile>/<stage>/<key>.lock    held while the stage is checked or built

``key`` is a short hash of the profile fields the stage depends on and of the upstream stages it was built from,
so changing a hyperparameter builds a new entry instead of reusing a stale one.

Guarantees:

* **Build once.** Two processes asking for the same stage at once (the test suite runs notebooks in parallel):
  one builds, the other waits on the lock and then loads.
* **Never half-written.** A stage is built in a temporary folder beside its final place and moved there with one
  atomic rename after ``stage.json`` is written. A crash leaves only a temporary folder, removed by the next build;
  a folder without ``stage.json`` is never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock

STAGE_FILE = "stage.json"


def stage_path(stage: str, profile, fields: Sequence[str], depends_on: Sequence[Path | str] = ()) -> Path:
    """Where ``stage`` lives for this profile: ``runs/<profile>/<stage>/<key>``, whether built or not."""
    upstream = [Path(p).name if isinstance(p, Path) else str(p) for p in depends_on]
    blob = json.dumps([profile.fingerprint(fields), upstream]).encode()
    return profile.runs_path / stage / hashlib.sha256(blob).hexdigest()[:10]


def is_complete(path: Path) -> bool:
    return (Path(path) / STAGE_FILE).is_file()


def stage_info(path: Path) -> dict:
    """What ``stage.json`` recorded: fields, upstream stages, when and how long the build took, versions."""
    return json.loads((Path(path) / STAGE_FILE).read_text())


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    return versions


def build_or_load(stage: str, profile, fields: Sequence[str], build: Callable[[Path], object], *,
                  depends_on: Sequence[Path | str] = (), force: bool = False) -> Path:
    """Return the folder of a complete ``stage``, building it with ``build(folder)`` first if needed.

    Args:
        stage: the stage's name, e.g. ``"sft"``.
        profile: the run's profile; ``fields`` names the fields of it that the stage depends on.
        build: writes the stage's files into the folder it is given.
        depends_on: folders of upstream stages (or hub ids): a new upstream gives a new key.
        force: rebuild even if a complete stage exists (it is replaced atomically).
    """
    final = stage_path(stage, profile, fields, depends_on)
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        for leftover in final.parent.glob(f".{final.name}.tmp-*"):  # from builds that crashed
            shutil.rmtree(leftover, ignore_errors=True)
        if is_complete(final) and not force:
            print(f"loaded stage '{stage}' from {final}")
            return final
        if final.exists() and not is_complete(final):
            print(f"warning: {final} has no {STAGE_FILE} (an incomplete copy?); removing it and rebuilding")
            shutil.rmtree(final)

        print(f"building stage '{stage}' -> {final} ...")
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        tmp.mkdir()
        start = time.time()
        try:
            build(tmp)
            info = {"stage": stage, "profile": profile.name, "fields": {f: getattr(profile, f) for f in fields},
                    "depends_on": [str(p) for p in depends_on], "created": datetime.now(timezone.utc).isoformat(),
                    "build_seconds": round(time.time() - start, 2), "versions": _versions()}
            (tmp / STAGE_FILE).write_text(json.dumps(info, indent=1, default=str))
            if final.exists():  # force: move the old one aside, the new one in, then delete the old one
                old = final.parent / f".{final.name}.tmp-old-{uuid.uuid4().hex[:6]}"
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old)
            else:
                os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        print(f"built stage '{stage}' in {time.time() - start:.0f} s")
        return final


def checkpoint_dir(stage: str, profile, fields: Sequence[str], depends_on: Sequence[Path | str] = ()) -> Path:
    """A stable folder for a stage's training checkpoints, so a build killed mid-way resumes where it stopped."""
    path = stage_path(stage, profile, fields, depends_on)
    return path.parent / f"{path.name}.checkpoint"
