"""The code in a stage's key: an edit to the source that builds a stage (or to what it imports) gives a new key."""

import shutil

import pytest

from rrhf_lite import pipeline
from rrhf_lite.profiles import get_profile
from rrhf_lite.provenance import PACKAGE_DIR, code_hash, imported_modules, module_closure
from rrhf_lite.stages import stage_path


@pytest.fixture
def package(tmp_path):
    """A copy of the package's source files, to edit."""
    copy = tmp_path / "rrhf_lite"
    copy.mkdir()
    for path in PACKAGE_DIR.glob("*.py"):
        shutil.copy(path, copy / path.name)
    return copy


def test_imports_are_read_from_the_source_function_local_ones_too(tmp_path):
    (tmp_path / "a.py").write_text("from .b import x\nfrom . import c\nimport os\n\ndef f():\n    from .d import y\n")
    (tmp_path / "e.py").write_text("import rrhf_lite.b\nfrom rrhf_lite.c import z\nfrom rrhf_lite import d\n")
    for name in "bcd":
        (tmp_path / f"{name}.py").write_text("")
    assert imported_modules("a", tmp_path) == imported_modules("e", tmp_path) == {"b", "c", "d"}
    assert module_closure(["a"], tmp_path) == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="no module 'nope'"):
        module_closure(["nope"], tmp_path)


def test_an_edit_changes_the_hash_of_exactly_the_stages_whose_code_imports_it(package):
    ranking, pretrain, ppo = ("ranking", "sources"), ("pretrain", "sources"), ("ppo", "sources")
    before = {code: code_hash(code, package) for code in (ranking, pretrain, ppo)}
    assert before[ranking] == code_hash(ranking)  # the content counts, not where the files are
    with open(package / "losses.py", "a") as f:
        f.write("\n# a student's edit to a loss\n")
    after = {code: code_hash(code, package) for code in (ranking, pretrain, ppo)}
    assert after[ranking] != before[ranking] and after[ppo] != before[ppo]  # both train with a loss from losses.py
    assert after[pretrain] == before[pretrain]  # pretraining imports nothing from losses.py
    with open(package / "ppo.py", "a") as f:
        f.write("\n# an edit to PPO\n")
    assert code_hash(ranking, package) == after[ranking] and code_hash(ppo, package) != after[ppo]


def test_the_profiles_and_the_cache_are_not_part_of_a_stage_s_code(package):
    before = code_hash(("ppo", "sources"), package)
    for name in ("profiles", "stages", "provenance"):
        with open(package / f"{name}.py", "a") as f:
            f.write("\n# edited\n")
    assert code_hash(("ppo", "sources"), package) == before  # profile fields are in the key one by one


def test_every_stage_names_modules_that_exist_and_its_code_enters_the_key(tmp_path):
    for stage, code in pipeline.STAGE_CODE.items():
        assert "sources" in module_closure(code), stage  # every stage depends on where its data comes from
    profile = get_profile("tiny", runs_dir=str(tmp_path))
    keys = {stage_path("x", profile, ["seed"], code=code) for code in pipeline.STAGE_CODE.values()}
    assert len(keys) == len({code_hash(code) for code in pipeline.STAGE_CODE.values()})
    assert stage_path("x", profile, ["seed"], code=("ranking",)) == stage_path("x", profile, ["seed"],
                                                                                 code=("ranking",))


def test_the_package_s_import_graph_has_no_cycles_not_even_through_function_local_imports():
    graph = {p.stem: imported_modules(p.stem) - {"__init__"} for p in PACKAGE_DIR.glob("*.py")}
    done, path = set(), []

    def visit(module):
        assert module not in path, f"import cycle: {' -> '.join(path[path.index(module):] + [module])}"
        if module in done:
            return
        path.append(module)
        for imported in sorted(graph[module]):
            visit(imported)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
    # lower modules never reach up into the pipeline: only the modules above it import it
    assert {m for m, imports in graph.items() if "pipeline" in imports} <= {"build", "compare", "study"}
