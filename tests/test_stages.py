"""The stage cache: built once, new key on new inputs, never half-written, safe across real processes."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest
from filelock import FileLock, Timeout

from rrhf_lite.course import stages
from rrhf_lite.course.profiles import get_profile
from rrhf_lite.course.stages import STAGE_FILE, build_or_load, incomplete_reason, is_complete, stage_info, stage_path

FIELDS = ("seed", "pretrain_steps")


def tiny(runs_dir, **overrides):
    return get_profile("tiny", runs_dir=str(runs_dir), **overrides)


def write_weights(out: Path, text: str = "trained") -> None:
    (out / "weights.txt").write_text(text)


def contents(folder: Path) -> list[str]:
    """What a stage's parent folder holds, lock files aside (they stay, by design)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


def test_builds_once_then_loads(tmp_path, capsys):
    calls = []

    def build(out):
        calls.append(out)
        write_weights(out)

    first = build_or_load("base", tiny(tmp_path), FIELDS, build)
    assert "building stage 'base'" in capsys.readouterr().out
    second = build_or_load("base", tiny(tmp_path), FIELDS, build)
    assert capsys.readouterr().out == ""  # this process built it and said so: nothing more to say
    stages._ANNOUNCED.clear()  # as in a new process
    for _ in range(3):
        build_or_load("base", tiny(tmp_path), FIELDS, build)
    # once, however often it is asked for, as runs/<profile>/<stage>/<key> (a page shows no machine's folders)
    assert capsys.readouterr().out == f"loaded stage 'base' from {first.relative_to(tmp_path.parent)}\n"
    assert first == second == stage_path("base", tiny(tmp_path), FIELDS) and len(calls) == 1
    assert calls[0] != first  # built elsewhere, then moved into place
    assert (first / "weights.txt").read_text() == "trained" and contents(first.parent) == [first.name]
    info = stage_info(first)
    assert info["stage"] == "base" and info["profile"] == "tiny"
    assert info["fields"] == {"seed": 0, "pretrain_steps": 200} and info["depends_on"] == []
    assert info["build_seconds"] >= 0 and info["created"][:2] == "20" and "python" in info["versions"]



def test_stage_json_records_a_config_field_as_its_values(tmp_path):
    """A stage that depends on a whole config (``"dpo_config"``) records it as the dict it trains with, as its key
    hashes it, not as the repr of a bound method."""
    folder = build_or_load("dpo", tiny(tmp_path), ["dpo_config", "seed"], write_weights)
    fields = stage_info(folder)["fields"]
    assert fields["seed"] == 0 and fields["dpo_config"]["beta"] == tiny(tmp_path).dpo_beta

def test_keys_follow_fields_and_upstream(tmp_path):
    p = tiny(tmp_path)
    assert stage_path("sft", p, FIELDS) == stage_path("sft", tiny(tmp_path), list(FIELDS))
    assert stage_path("sft", p, FIELDS) == stage_path("sft", tiny(tmp_path, pretrain_lr=1.0), FIELDS)  # unlisted
    assert stage_path("sft", p, FIELDS) != stage_path("sft", tiny(tmp_path, seed=1), FIELDS)
    assert stage_path("sft", p, FIELDS).parent == tmp_path / "tiny" / "sft"
    # the upstream's key, not where runs/ lives, enters the downstream key; so does the upstream's stage name
    assert stage_path("sft", p, FIELDS, [Path("a/base/111")]) == stage_path("sft", p, FIELDS, [Path("b/base/111")])
    assert stage_path("sft", p, FIELDS, [Path("a/base/111")]) != stage_path("sft", p, FIELDS, [Path("a/base/222")])
    assert stage_path("sft", p, FIELDS, [Path("a/base/111")]) != stage_path("sft", p, FIELDS, [Path("a/other/111")])
    assert stage_path("sft", p, FIELDS, ["Qwen/A"]) != stage_path("sft", p, FIELDS, ["Qwen/B"])  # hub ids


def test_upstream_change_gives_new_downstream(tmp_path):
    def sft_for(profile):
        base = build_or_load("base", profile, FIELDS, write_weights)
        return build_or_load("sft", profile, ["seed"], write_weights, depends_on=[base])

    sft = sft_for(tiny(tmp_path))
    retrained = sft_for(tiny(tmp_path, pretrain_steps=5))  # the SFT stage does not list pretrain_steps itself...
    assert retrained != sft and is_complete(sft) and is_complete(retrained)  # ...but its base changed
    base = stage_path("base", tiny(tmp_path, pretrain_steps=5), FIELDS)
    assert stage_info(retrained)["depends_on"] == [f"base/{base.name}"]  # <stage>/<key>: no path of this machine


def test_failed_build_leaves_nothing_and_next_call_builds(tmp_path):
    def broken(out):
        write_weights(out)
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        build_or_load("base", tiny(tmp_path), FIELDS, broken)
    path = stage_path("base", tiny(tmp_path), FIELDS)
    assert contents(path.parent) == []  # no final folder, no temporary folder
    assert build_or_load("base", tiny(tmp_path), FIELDS, write_weights) == path and is_complete(path)


def test_force_rebuilds_and_replaces(tmp_path):
    path = build_or_load("base", tiny(tmp_path), FIELDS, write_weights)
    created = stage_info(path)["created"]
    (path / "stale.txt").write_text("from the old build")
    again = build_or_load("base", tiny(tmp_path), FIELDS, lambda out: write_weights(out, "v2"), force=True)
    assert again == path and (path / "weights.txt").read_text() == "v2" and not (path / "stale.txt").exists()
    assert stage_info(path)["created"] >= created and contents(path.parent) == [path.name]


def test_folder_without_stage_json_is_rebuilt(tmp_path, capsys):
    path = stage_path("base", tiny(tmp_path), FIELDS)
    path.mkdir(parents=True)
    write_weights(path, "half")
    assert not is_complete(path)
    assert build_or_load("base", tiny(tmp_path), FIELDS, write_weights) == path
    assert "warning" in capsys.readouterr().out
    assert (path / "weights.txt").read_text() == "trained" and is_complete(path)


def write_model(out: Path, text: str = "trained") -> None:
    write_weights(out, text)
    (out / "model").mkdir()
    (out / "model" / "model.safetensors").write_bytes(b"w" * 1000)


@pytest.mark.parametrize("damage, reason", [
    (lambda path: (path / "model" / "model.safetensors").write_bytes(b"w" * 400),  # a copy or a sync cut short
     "model/model.safetensors has 400 bytes, 1000 were written"),
    (lambda path: (path / "weights.txt").unlink(), "weights.txt is missing"),
    (lambda path: (path / STAGE_FILE).write_text((path / STAGE_FILE).read_text()[:40]),  # stage.json itself cut
     f"its {STAGE_FILE} cannot be read"),
    # the same size, other bytes: 64 zeroed bytes inside the weights, then a broken safetensors header
    (lambda path: zero_bytes(path / "model" / "model.safetensors", 500, 64),
     "model/model.safetensors has other content than was written"),
    (lambda path: zero_bytes(path / "model" / "model.safetensors", 0, 8),
     "model/model.safetensors has other content than was written"),
])
def test_a_damaged_stage_is_detected_and_rebuilt_not_loaded(tmp_path, capsys, damage, reason):
    path = build_or_load("base", tiny(tmp_path), FIELDS, write_model)
    assert stage_info(path)["files"] == {
        "model/model.safetensors": {"bytes": 1000, "sha256": hashlib.sha256(b"w" * 1000).hexdigest()},
        "weights.txt": {"bytes": 7, "sha256": hashlib.sha256(b"trained").hexdigest()}}
    assert is_complete(path)  # checked once, whole, in this process; the damage below comes after
    damage(path)
    assert not is_complete(path) and incomplete_reason(path).startswith(reason)
    builds = []

    def rebuild(out):
        builds.append(out)
        write_model(out, "rebuilt")

    assert build_or_load("base", tiny(tmp_path), FIELDS, rebuild) == path and len(builds) == 1
    assert f"is incomplete ({reason}" in capsys.readouterr().out
    assert is_complete(path) and (path / "weights.txt").read_text() == "rebuilt"
    assert (path / "model" / "model.safetensors").stat().st_size == 1000


def zero_bytes(file: Path, start: int, count: int) -> None:
    with open(file, "r+b") as f:
        f.seek(start)
        f.write(bytes(count))


@pytest.mark.parametrize("files", [None, {}, {"weights.txt": 7}],
                         ids=["no file list", "an empty record", "sizes only"])
def test_a_stage_recorded_in_an_older_format_is_rebuilt(tmp_path, capsys, files):
    """Records without the content hashes (``{}``, no file list, sizes only) cannot vouch for the files: rebuilt."""
    path = build_or_load("base", tiny(tmp_path), FIELDS, write_weights)
    info = {} if files == {} else {**stage_info(path), "files": files}
    if files is None:
        del info["files"]
    (path / STAGE_FILE).write_text(json.dumps(info))
    assert incomplete_reason(path) == f"its {STAGE_FILE} is of an older format, without the content hash of every file"
    assert build_or_load("base", tiny(tmp_path), FIELDS, lambda out: write_weights(out, "rebuilt")) == path
    assert "older format" in capsys.readouterr().out and (path / "weights.txt").read_text() == "rebuilt"


def test_a_record_that_lists_no_file_is_rebuilt(tmp_path, capsys):
    path = build_or_load("base", tiny(tmp_path), FIELDS, write_weights)
    (path / STAGE_FILE).write_text(json.dumps({**stage_info(path), "files": {}}))
    assert incomplete_reason(path) == f"its {STAGE_FILE} lists no file"
    assert build_or_load("base", tiny(tmp_path), FIELDS, lambda out: write_weights(out, "rebuilt")) == path
    assert (path / "weights.txt").read_text() == "rebuilt"


def list_outside_file(path: Path, name_of) -> None:
    """Add to the stage's record a file outside the stage, with its true size and hash: what a planted record does."""
    outside = path.parents[3] / "outside.txt"
    outside.write_text("not the stage's")
    info = stage_info(path)
    info["files"][name_of(path, outside)] = {"bytes": 15, "sha256": hashlib.sha256(b"not the stage's").hexdigest()}
    (path / STAGE_FILE).write_text(json.dumps(info))


def link_outside(path: Path) -> None:
    """Replace a stage file by a symbolic link to a file outside, with the same bytes."""
    outside = path.parents[3] / "outside.txt"
    outside.write_text("trained")
    (path / "weights.txt").unlink()
    (path / "weights.txt").symlink_to(outside)


@pytest.mark.parametrize("plant, reason", [
    (lambda path: list_outside_file(path, lambda p, o: os.path.relpath(o, p)), "lists '../../../../outside.txt'"),
    (lambda path: list_outside_file(path, lambda p, o: str(o)), "lists '/"),
    (link_outside, "lists 'weights.txt', which is not a file inside"),
    (lambda path: (path / STAGE_FILE).write_text(json.dumps(
        {**stage_info(path), "files": {"weights.txt": {"bytes": "7", "sha256": None}}})), "lists 'weights.txt' with"),
], ids=["../", "absolute", "symlink out", "wrong types"])
def test_a_record_that_points_outside_the_stage_is_not_followed(tmp_path, capsys, plant, reason):
    """A hand-edited or planted stage.json cannot make the cache read (or vouch for) a file outside the stage folder;
    the stage is rebuilt, and the outside file is left as it was."""
    path = build_or_load("base", tiny(tmp_path / "runs"), FIELDS, write_weights)
    plant(path)
    assert reason in incomplete_reason(path)
    assert build_or_load("base", tiny(tmp_path / "runs"), FIELDS, write_weights) == path
    assert "is incomplete" in capsys.readouterr().out
    assert is_complete(path) and not (path / "weights.txt").is_symlink()
    outside = tmp_path / "outside.txt"
    assert not outside.exists() or outside.read_text() in ("not the stage's", "trained")  # no deletion followed it


# --- real processes: the functions they run must be importable, so they live at module level -----------------
def slow_build_worker(runs_dir: str, counter: str, results: str, barrier) -> None:
    def build(out):
        with open(counter, "a") as f:
            f.write("built\n")
        time.sleep(1.0)
        write_weights(out)

    barrier.wait()  # both processes ask for the stage at the same moment
    path = build_or_load("base", tiny(runs_dir), FIELDS, build)
    ok = is_complete(path) and (path / "weights.txt").read_text() == "trained"  # never half-written
    with open(results, "a") as f:
        f.write(f"{path} {ok}\n")


def test_two_processes_build_once(tmp_path):
    ctx = mp.get_context("spawn")
    counter, results, barrier = tmp_path / "counter", tmp_path / "results", ctx.Barrier(2)
    procs = [ctx.Process(target=slow_build_worker, args=(str(tmp_path), str(counter), str(results), barrier))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert counter.read_text().splitlines() == ["built"]  # exactly one build
    expected = stage_path("base", tiny(tmp_path), FIELDS)
    assert results.read_text().splitlines() == [f"{expected} True"] * 2  # both got the same, complete stage


def hanging_build_worker(runs_dir: str, started: str) -> None:
    def build(out):
        write_weights(out)
        Path(started).write_text(str(out))
        time.sleep(60)

    build_or_load("base", tiny(runs_dir), FIELDS, build)


def test_killed_build_is_not_loaded_and_does_not_block(tmp_path):
    started = tmp_path / "started"
    proc = mp.get_context("spawn").Process(target=hanging_build_worker, args=(str(tmp_path), str(started)))
    proc.start()
    deadline = time.time() + 30
    while not started.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert started.exists(), "the worker never entered build"
    path = stage_path("base", tiny(tmp_path), FIELDS)
    with pytest.raises(Timeout):  # the worker holds the lock while it builds
        FileLock(path.parent / f"{path.name}.lock").acquire(timeout=0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    assert proc.exitcode == -signal.SIGKILL

    assert not is_complete(path) and not path.exists()  # the half-built stage never became visible
    leftover = Path(started.read_text())
    assert leftover.exists() and leftover.parent == path.parent  # the crash left its temp folder behind
    lock = FileLock(path.parent / f"{path.name}.lock")  # the kernel released the dead process's lock
    lock.acquire(timeout=1)
    lock.release()
    rebuilt = build_or_load("base", tiny(tmp_path), FIELDS, write_weights)
    assert rebuilt == path and is_complete(path) and not leftover.exists() and contents(path.parent) == [path.name]


def test_one_reader_for_what_a_stage_wrote(tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps({"report": {"kl": 0.5}}))
    (tmp_path / STAGE_FILE).write_text("{}")
    assert stages.read_output(tmp_path, "eval") == {"report": {"kl": 0.5}}
    with pytest.raises(FileNotFoundError, match=r"no history\.json; this stage wrote \['eval'\]"):
        stages.read_output(tmp_path, "history")
