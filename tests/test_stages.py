"""The stage cache: build once, new key on new inputs, never half-written, safe across processes."""

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest

from rrhf_lite.profiles import get_profile
from rrhf_lite.stages import build_or_load, is_complete, stage_info, stage_path

FIELDS = ("seed", "pretrain_steps")


def profile(tmp_path, **overrides):
    return get_profile("tiny", runs_dir=str(tmp_path), **overrides)


def write_file(out: Path) -> None:
    (out / "weights.txt").write_text("trained")


def test_builds_once_then_loads(tmp_path):
    calls = []
    build = lambda out: (calls.append(1), write_file(out))  # noqa: E731
    first = build_or_load("base", profile(tmp_path), FIELDS, build)
    second = build_or_load("base", profile(tmp_path), FIELDS, build)
    assert first == second and len(calls) == 1
    assert (first / "weights.txt").read_text() == "trained"
    info = stage_info(first)
    assert info["stage"] == "base" and info["fields"] == {"seed": 0, "pretrain_steps": 300}
    assert "torch" in info["versions"]


def test_keys_follow_fields_and_upstream(tmp_path):
    p = profile(tmp_path)
    assert stage_path("sft", p, FIELDS) == stage_path("sft", profile(tmp_path, pretrain_lr=1.0), FIELDS)  # unlisted
    assert stage_path("sft", p, FIELDS) != stage_path("sft", profile(tmp_path, seed=1), FIELDS)
    assert stage_path("sft", p, FIELDS, [Path("a/base/111")]) != stage_path("sft", p, FIELDS, [Path("a/base/222")])
    assert stage_path("sft", p, FIELDS).parent == tmp_path / "tiny" / "sft"


def test_failed_build_leaves_nothing_and_next_call_builds(tmp_path):
    def broken(out):
        write_file(out)
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        build_or_load("base", profile(tmp_path), FIELDS, broken)
    parent = stage_path("base", profile(tmp_path), FIELDS).parent
    assert [p.name for p in parent.iterdir() if not p.name.endswith(".lock")] == []
    assert is_complete(build_or_load("base", profile(tmp_path), FIELDS, write_file))


def test_force_rebuilds_in_place(tmp_path):
    path = build_or_load("base", profile(tmp_path), FIELDS, write_file)
    again = build_or_load("base", profile(tmp_path), FIELDS, lambda out: (out / "weights.txt").write_text("v2"),
                          force=True)
    assert again == path and (path / "weights.txt").read_text() == "v2"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, path.name + ".lock"]


def test_folder_without_stage_json_is_rebuilt(tmp_path):
    path = stage_path("base", profile(tmp_path), FIELDS)
    path.mkdir(parents=True)
    (path / "weights.txt").write_text("half")
    assert not is_complete(path)
    build_or_load("base", profile(tmp_path), FIELDS, write_file)
    assert (path / "weights.txt").read_text() == "trained" and is_complete(path)


def slow_build_worker(runs_dir: str, counter: str, results: str) -> None:
    def build(out):
        with open(counter, "a") as f:
            f.write("built\n")
        time.sleep(1.0)
        write_file(out)

    path = build_or_load("base", get_profile("tiny", runs_dir=runs_dir), FIELDS, build)
    with open(results, "a") as f:
        f.write(f"{path}\n")


def test_two_processes_build_once(tmp_path):
    ctx = mp.get_context("spawn")
    counter, results = tmp_path / "counter", tmp_path / "results"
    procs = [ctx.Process(target=slow_build_worker, args=(str(tmp_path), str(counter), str(results))) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert counter.read_text().count("built") == 1
    paths = results.read_text().split()
    assert len(paths) == 2 and paths[0] == paths[1] and is_complete(Path(paths[0]))


def hanging_build_worker(runs_dir: str, started: str) -> None:
    def build(out):
        write_file(out)
        Path(started).write_text("in build")
        time.sleep(120)

    build_or_load("base", get_profile("tiny", runs_dir=runs_dir), FIELDS, build)


def test_killed_build_is_not_loaded_and_does_not_block(tmp_path):
    started = tmp_path / "started"
    proc = mp.get_context("spawn").Process(target=hanging_build_worker, args=(str(tmp_path), str(started)))
    proc.start()
    deadline = time.time() + 60
    while not started.exists() and time.time() < deadline:
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    path = stage_path("base", profile(tmp_path), FIELDS)
    assert not is_complete(path)  # the half-built stage never became visible
    rebuilt = build_or_load("base", profile(tmp_path), FIELDS, write_file)  # the dead process's lock is gone
    assert is_complete(rebuilt) and not list(rebuilt.parent.glob(".*tmp-*"))
