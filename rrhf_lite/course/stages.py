"""The stage cache: build each lesson's output once, load it from then on, safely across processes.

Each notebook produces something later notebooks need (the base model, the SFT model, the reward model...).
That output is a *stage*, cached on disk so that any notebook can be opened on its own: it loads the earlier
stages it needs if they are cached and builds them otherwise. On disk::

    runs/<profile>/<stage>/<key>/            the stage's files, written by its build function
    runs/<profile>/<stage>/<key>/stage.json  written last: the build's record, with the size and SHA-256 of every file
    runs/<profile>/<stage>/<key>.lock        locked while the stage is checked or built
    runs/<profile>/<stage>/.<key>.tmp-*      a build in progress (or left behind by one that crashed)

``key`` is a short hash of the profile fields the stage depends on, of the upstream stage folders it was built
from (each of which ends in its own key) and of the source code that builds it (:mod:`rrhf_lite.course.provenance`).
Change a listed hyperparameter, the code, or anything upstream, and the stage gets a new key, so a stale result is
never reused; change a field the stage does not list, and the cache is reused.

Guarantees:

* **Built once.** Two processes asking for the same stage at once (the test suite runs notebooks in parallel)
  take turns on the lock file: one builds, the other waits and then loads the finished stage. The lock is an OS
  lock (``flock``), so the kernel releases it when its process dies, even by ``kill -9``.
* **Never half-written.** A stage is built in a temporary folder beside its final place; ``stage.json`` is written
  last and the folder is then moved into place with one atomic rename. A crash leaves only a temporary folder,
  removed by the next build. A folder without ``stage.json`` is never loaded: it is deleted and rebuilt.
* **Data-parallel builds.** Under ``accelerate launch --num_processes N`` every process asks for the same stages in
  the same order. Only the main process takes the lock; then all of them either load the stage or build it
  together (training is a collective: each process trains on its slice of every batch, see
  :mod:`rrhf_lite.core.loop`). Each process builds into a folder of its own; the main process's becomes the stage, the
  others' are deleted, and every process returns once the stage is in place. So the stage is written once, and no
  process waits on a lock held by a process that waits for it.
* **Checked before loading.** ``stage.json`` lists every file of the stage with its size and SHA-256. A folder whose
  ``stage.json`` is unreadable or of an older format, with a listed file missing, of another size or with other
  content (a copy or a cloud-drive sync cut short, a file deleted or edited by hand, bytes flipped on disk) is not
  complete either: :func:`is_complete` says no, naming the file, and
  ``build_or_load`` warns, deletes it and builds the stage again. Each process hashes a stage's files once, the
  first time it is asked for (docs/reliability.md: about 1 s per GiB on a 2-core CPU, 3 s for the largest real stage).

Example::

    base = build_or_load("base", profile, ["seed", "pretrain_steps"], lambda out: train_base(out))
    sft = build_or_load("sft", profile, ["seed", "sft_steps"], lambda out: train_sft(base, out), depends_on=[base])
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import secrets
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path, PurePosixPath

import pandas as pd
import torch
from accelerate import PartialState
from filelock import FileLock, Timeout

from rrhf_lite.course.profiles import Profile, shown
from rrhf_lite.course.provenance import code_hash, module_closure

STAGE_FILE = "stage.json"
RECORDED_LIBRARIES = ("torch", "transformers", "peft")


def _upstream_id(upstream: Path | str) -> str:
    """How an upstream stage enters a key: ``<stage>/<key>``, the same wherever runs/ lives.

    A plain string, such as the hub id of a base model that is downloaded rather than built, is used as it is.
    """
    if isinstance(upstream, Path):
        return f"{upstream.parent.name}/{upstream.name}"
    return upstream


def stage_path(stage: str, profile: Profile, fields: Sequence[str], depends_on: Sequence[Path | str] = (),
               code: Sequence[str] = ()) -> Path:
    """Where ``stage`` lives for this profile, ``runs/<profile>/<stage>/<key>``, whether it is built or not.

    ``code`` names the package modules that build the stage (e.g. ``("ranking", "evaluate")``): their source, and that
    of every module they import, enters the key (:func:`rrhf_lite.course.provenance.code_hash`)."""
    key = [profile.fingerprint(list(fields)), [_upstream_id(p) for p in depends_on]]
    if code:
        key.append(code_hash(code))
    return profile.runs_path / stage / hashlib.sha256(json.dumps(key).encode()).hexdigest()[:10]


def sha256(file: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest(folder: Path) -> dict[str, dict]:
    """``{relative path: {"bytes": size, "sha256": hash}}`` of every file under ``folder`` except ``stage.json``."""
    return {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256(p)}
            for p in sorted(folder.rglob("*")) if p.is_file() and p.relative_to(folder).as_posix() != STAGE_FILE}


# Stage folders whose every file this process has hashed and found as written, with each file's size and modification
# time then: a lesson asks for the same stage many times, and a stage of a real model holds gigabytes. A file written
# since (another mtime) is hashed again.
_VERIFIED: set[tuple] = set()


def _inside(folder: Path, name: str) -> bool:
    """Whether ``name``, as :func:`_manifest` writes it, is a relative path that stays in ``folder``: not absolute, no
    ``..``, and not through a symbolic link to elsewhere (a build writes none). A hand-edited or planted ``stage.json``
    must not make the cache read, or vouch for, a file outside the stage."""
    parts = PurePosixPath(name).parts
    if not parts or PurePosixPath(name).is_absolute() or "\\" in name or ".." in parts:
        return False
    return (folder / name).resolve().is_relative_to(folder.resolve())


def incomplete_reason(path: Path) -> str | None:
    """None if the stage folder is complete, else why not: no ``stage.json``, an unreadable one or one of an older
    format (without content hashes), a listed file missing, of another size or with other content (its SHA-256).
    (Files that are not listed are left alone: ``datasets`` writes its cache files beside a saved dataset.) A listed
    name that leads outside the folder (``../x``, an absolute path, a symbolic link to elsewhere) is never read: the
    stage is incomplete."""
    path = Path(path)
    record = path / STAGE_FILE
    if not record.is_file():
        return f"it has no {STAGE_FILE}"
    try:
        info = json.loads(record.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"its {STAGE_FILE} cannot be read ({type(e).__name__})"
    files = info.get("files") if isinstance(info, dict) else None
    if not isinstance(files, dict) or not all(isinstance(v, dict) and {"bytes", "sha256"} <= set(v)
                                              for v in files.values()):
        return f"its {STAGE_FILE} is of an older format, without the content hash of every file"
    if not files:  # every build writes something: a record that lists nothing vouches for nothing
        return f"its {STAGE_FILE} lists no file"
    for name, written in files.items():
        if not _inside(path, name):
            return f"its {STAGE_FILE} lists {name!r}, which is not a file inside the stage's folder"
        if isinstance(written["bytes"], bool) or not isinstance(written["bytes"], int) or not (
                isinstance(written["sha256"], str) and len(written["sha256"]) == 64):
            return f"its {STAGE_FILE} lists {name!r} with {written}, not a size in bytes and a SHA-256"
    stats = {}
    for name, written in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        stats[name] = file.stat()
        if stats[name].st_size != written["bytes"]:
            return f"{name} has {stats[name].st_size} bytes, {written['bytes']} were written"
    seen = (path.resolve(), record.stat().st_mtime_ns, tuple((n, st.st_mtime_ns) for n, st in stats.items()))
    if seen in _VERIFIED:
        return None
    for name, written in files.items():
        if sha256(path / name) != written["sha256"]:
            return f"{name} has other content than was written (its SHA-256 differs)"
    _VERIFIED.add(seen)
    return None


def is_complete(path: Path) -> bool:
    """Whether a stage folder was fully built and is intact: its ``stage.json`` (written last) can be read and every
    file it lists is there with the size and the SHA-256 it was written with."""
    return incomplete_reason(path) is None


def stage_info(path: Path) -> dict:
    """What ``stage.json`` recorded: fields, upstream stages, when and how long the build took, library versions."""
    return json.loads((Path(path) / STAGE_FILE).read_text())


def read_output(folder: Path | str, name: str) -> dict:
    """What a stage wrote in ``<folder>/<name>.json``: ``"eval"`` (a method's held-out report, replies and per-reply
    values), ``"history"`` (training curves), ``"cost"`` (wall time, memory, parameters), ``"normalisation"``,
    ``"sft_eval"`` (the SFT baseline, in the samples stage), ``"online"``, ``"trajectory"``; one reader for all."""
    path = Path(folder) / f"{name}.json"
    if not path.exists():
        written = sorted(p.stem for p in Path(folder).glob("*.json") if p.name != STAGE_FILE)
        raise FileNotFoundError(f"{folder} has no {name}.json; this stage wrote {written}")
    return json.loads(path.read_text())


@dataclass(frozen=True)
class TrainingRun:
    """What a training stage left, read back: the curves as a table, and, for a method measured on the held-out
    prompts, its report (gold and proxy reward, KL, win rate), its replies and the per-reply values behind them."""

    folder: Path  # the stage's folder: adapter/, history.json, cost.json, eval.json
    history: pd.DataFrame  # one row per logged step (PPO: per iteration)
    trainable_parameters: int | None
    report: dict | None  # the held-out means; None for SFT and the reward model, which are measured otherwise
    replies: list[str] | None  # the held-out replies, in the order of the evaluation prompts
    per_reply: dict[str, list[float]] | None  # each measured column, reply by reply (for intervals)
    cost: dict | None  # training wall time, peak memory


def training_run(folder: Path | str) -> TrainingRun:
    """The :class:`TrainingRun` a training stage wrote into ``folder``."""
    folder = Path(folder)
    summary = read_output(folder, "history")
    evaluation = read_output(folder, "eval") if (folder / "eval.json").exists() else {}
    return TrainingRun(folder=folder, history=pd.DataFrame(summary["history"]),
                       trainable_parameters=summary.get("trainable_parameters"), report=evaluation.get("report"),
                       replies=evaluation.get("replies"), per_reply=evaluation.get("per_reply"),
                       cost=read_output(folder, "cost") if (folder / "cost.json").exists() else None)


def checkpoint_dir(stage: str, profile: Profile, fields: Sequence[str], depends_on: Sequence[Path | str] = (),
                   code: Sequence[str] = ()) -> Path:
    """A stable folder for a stage's training checkpoints, so a build killed mid-way resumes where it stopped."""
    path = stage_path(stage, profile, fields, depends_on, code)
    return path.parent / f"{path.name}.checkpoint"


def _versions() -> dict[str, str]:
    """Python's version and those of the installed libraries (read from package metadata: importing torch is slow)."""
    versions = {"python": platform.python_version()}
    for name in RECORDED_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _scratch(final: Path, kind: str) -> Path:
    """A fresh hidden name beside ``final``: ``.<key>.tmp-<pid>-<random>`` for a build, ``.old-`` for a replaced one."""
    return final.parent / f".{final.name}.{kind}-{os.getpid()}-{secrets.token_hex(3)}"


def data_parallel() -> PartialState | None:
    """accelerate's state of this process when it is one of several (``accelerate launch``), else None.

    With no GPU the processes are CPU processes (gloo): accelerate would otherwise run each one on its own."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    return PartialState(cpu=not torch.cuda.is_available())


@contextlib.contextmanager
def _locked(final: Path, stage: str, processes: PartialState | None) -> Iterator[None]:
    """Hold ``<key>.lock`` for the block, saying so when another process has it (and is building the stage).

    Of the processes of one data-parallel run, the main one holds the lock for all of them, and releases it once they
    have all left the block (an exception leaves at once: the launcher then stops the others)."""
    if processes is not None:
        with _locked(final, stage, None) if processes.is_main_process else contextlib.nullcontext():
            yield
            processes.wait_for_everyone()
        return
    lock = FileLock(final.parent / f"{final.name}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"waiting for another process to finish stage '{stage}' ...", flush=True)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


_ANNOUNCED: set[Path] = set()  # stages this process has already said it loaded or built


def build_or_load(stage: str, profile: Profile, fields: Sequence[str], build: Callable[[Path], object], *,
                  depends_on: Sequence[Path | str] = (), code: Sequence[str] = (), force: bool = False) -> Path:
    """The folder of a complete ``stage``, built first with ``build(folder)`` unless it is already cached.

    Args:
        stage: the stage's name, e.g. ``"sft"``: a folder under ``runs/<profile>/``.
        profile: the run's profile. ``fields`` names the fields of it the stage depends on.
        build: writes the stage's files into the (empty, temporary) folder it is given; its return value is ignored.
            If it raises, the temporary folder is deleted and the exception propagates.
        depends_on: folders of the upstream stages (or hub ids): a new upstream gives a new key.
        code: the package modules that build the stage: an edit to them, or to a module they import, gives a new key.
        force: rebuild even if the stage is complete; the old folder is replaced only once the new one is built.
    """
    final = stage_path(stage, profile, fields, depends_on, code)
    final.parent.mkdir(parents=True, exist_ok=True)
    where = shown(final, profile.runs_path.parent)  # runs/<profile>/<stage>/<key>: a page shows no machine's folders
    processes = data_parallel()
    main = processes is None or processes.is_main_process
    with _locked(final, stage, processes):
        if main:
            for leftover in [*final.parent.glob(f".{final.name}.tmp-*"), *final.parent.glob(f".{final.name}.old-*")]:
                _remove(leftover)  # from a build that crashed: nobody else can be using it while we hold the lock
            reason = incomplete_reason(final) if final.exists() else None
            if reason:
                print(f"warning: stage '{stage}' at {where} is incomplete ({reason}: half-written, half-copied or "
                      f"half-deleted?); removing it and building it again")
                _remove(final)
        if processes is not None:
            processes.wait_for_everyone()  # the others look at the stage once the main process has cleaned up
        if is_complete(final) and not force:
            if main and final not in _ANNOUNCED:  # one line per stage and process, however often a lesson asks
                print(f"loaded stage '{stage}' from {where}")
            _ANNOUNCED.add(final)
            return final

        if main:
            print(f"building stage '{stage}' -> {where} ...", flush=True)
        tmp = _scratch(final, "tmp")
        tmp.mkdir()
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():
                if not main:  # the same data gives the same warnings: the main process reports them
                    warnings.simplefilter("ignore")
                build(tmp)
            if not main:  # the main process's build becomes the stage
                shutil.rmtree(tmp)
                _ANNOUNCED.add(final)
                return final
            info = {"stage": stage, "profile": profile.name, "fields": profile.values(fields),
                    "depends_on": [_upstream_id(p) for p in depends_on],  # <stage>/<key>: no machine's path
                    "code": {"modules": module_closure(code), "hash": code_hash(code)} if code else None,
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "build_seconds": round(time.perf_counter() - start, 2), "versions": _versions(),
                    "files": _manifest(tmp)}
            (tmp / STAGE_FILE).write_text(json.dumps(info, indent=2, default=str))
            if final.exists():  # force: move the old stage aside, the new one in, then delete the old one
                old = _scratch(final, "old")
                os.replace(final, old)
                os.replace(tmp, final)
                _remove(old)
            else:
                os.replace(tmp, final)
        except BaseException:  # KeyboardInterrupt too: a student stopping a cell must not leave a temp folder
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        print(f"built in {time.perf_counter() - start:.1f} s")
        _ANNOUNCED.add(final)
        return final  # on several processes, _locked waits for all of them before the lock is released
