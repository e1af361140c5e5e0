"""The code in a stage's key: an edit to the source that builds a stage (or to what it imports) gives a new key; and
the package's three floors, each importing only from the floors below it."""

import shutil

import pytest

from rrhf_lite.course import pipeline, provenance
from rrhf_lite.course.profiles import get_profile
from rrhf_lite.course.provenance import PACKAGE_DIR, code_hash, imported_modules, module_closure, package_modules
from rrhf_lite.course.stages import stage_path

FLOORS = ("core", "methods", "course")  # from the bottom up


@pytest.fixture
def package(tmp_path):
    """A copy of the package's source files, to edit."""
    copy = tmp_path / "rrhf_lite"
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_imports_are_read_from_the_source_function_local_ones_too(tmp_path):
    (tmp_path / "floor").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "floor" / "a.py").write_text("from .b import x\nfrom . import c\nimport os\n\n"
                                             "def f():\n    from ..other.d import y\n")
    (tmp_path / "floor" / "e.py").write_text("import rrhf_lite.floor.b\nfrom rrhf_lite.floor.c import z\n"
                                             "from rrhf_lite.other import d\n")
    for name in ("floor/b", "floor/c", "other/d"):
        (tmp_path / f"{name}.py").write_text("")
    expected = {"floor.b", "floor.c", "other.d"}
    assert imported_modules("floor.a", tmp_path) == imported_modules("floor.e", tmp_path) == expected
    assert module_closure(["floor.a"], tmp_path) == ["floor.a", *sorted(expected)]
    with pytest.raises(ValueError, match="no module 'nope'"):
        module_closure(["nope"], tmp_path)


def test_an_edit_changes_the_hash_of_exactly_the_stages_whose_code_imports_it(package):
    ranking, pretrain = ("methods.ranking", "course.sources"), ("course.pretrain", "course.sources")
    ppo = ("methods.ppo", "course.sources")
    before = {code: code_hash(code, package) for code in (ranking, pretrain, ppo)}
    assert before[ranking] == code_hash(ranking)  # the content counts, not where the files are
    with open(package / "core" / "losses.py", "a") as f:
        f.write("\n# a student's edit to a loss\n")
    after = {code: code_hash(code, package) for code in (ranking, pretrain, ppo)}
    assert after[ranking] != before[ranking] and after[ppo] != before[ppo]  # both train with a loss from losses.py
    assert after[pretrain] == before[pretrain]  # pretraining imports nothing from losses.py
    with open(package / "methods" / "ppo.py", "a") as f:
        f.write("\n# an edit to PPO\n")
    assert code_hash(ranking, package) == after[ranking] and code_hash(ppo, package) != after[ppo]


def test_the_profiles_and_the_cache_are_not_part_of_a_stage_s_code(package):
    before = code_hash(("methods.ppo", "course.sources"), package)
    for name in ("profiles", "stages", "provenance"):
        with open(package / "course" / f"{name}.py", "a") as f:
            f.write("\n# edited\n")
    assert code_hash(("methods.ppo", "course.sources"), package) == before  # profile fields are in the key one by one


def test_every_stage_names_modules_that_exist_and_its_code_enters_the_key(tmp_path):
    for stage, code in pipeline.STAGE_CODE.items():
        assert "course.sources" in module_closure(code), stage  # every stage depends on where its data comes from
    profile = get_profile("tiny", runs_dir=str(tmp_path))
    keys = {stage_path("x", profile, ["seed"], code=code) for code in pipeline.STAGE_CODE.values()}
    assert len(keys) == len({code_hash(code) for code in pipeline.STAGE_CODE.values()})
    assert stage_path("x", profile, ["seed"], code=("methods.ranking",)) == stage_path(
        "x", profile, ["seed"], code=("methods.ranking",))


def import_graph() -> dict[str, set[str]]:
    return {module: imported_modules(module) for module in package_modules()}


def test_every_module_lives_on_one_of_the_three_floors():
    assert {module.split(".")[0] for module in package_modules()} == set(FLOORS)


def test_each_floor_imports_only_from_the_floors_below_it():
    """core knows no method and no course; methods know no course: a learner can lift a method and the core out."""
    wrong = [f"{module} imports {imported}" for module, imports in import_graph().items() for imported in imports
             if FLOORS.index(imported.split(".")[0]) > FLOORS.index(module.split(".")[0])]
    assert not wrong, wrong


def test_the_package_s_import_graph_has_no_cycles_not_even_through_function_local_imports():
    graph = import_graph()
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
    assert {m for m, imports in graph.items() if "course.pipeline" in imports} <= {"course.build", "course.compare",
                                                                                    "course.study"}


def test_the_pipeline_is_a_table_of_stages_that_loads_trains_and_samples_nothing_itself():
    """How a stage trains is course/training.py, how the course measures course/scoring.py: the pipeline says which
    stage depends on what and calls them, and imports no model loader, trainer, sampler or scorer of its own."""
    import ast

    tree = ast.parse((PACKAGE_DIR / "course" / "pipeline.py").read_text())
    imported = {(node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                for alias in node.names}
    doing = {(module, name) for module, name in imported if (module or "").startswith(("rrhf_lite.core",
                                                                                        "rrhf_lite.methods"))
             and (name.startswith(("train", "load", "generate", "sample_", "score", "judge_", "merge"))
                  or module in ("rrhf_lite.core.sampling", "rrhf_lite.core.models", "rrhf_lite.methods.reward"))}
    assert not doing, f"pipeline.py does work of its own: {sorted(doing)}"
    stages = [node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.endswith("_stage")]
    assert len(stages) >= 7, stages  # sft, reward, judge, samples, method, online, trajectory


def test_a_module_edited_after_this_process_imported_it_refuses_to_key_a_stage(monkeypatch):
    """The key would name the file's new code while the process runs the old: refused, naming the file."""
    losses = provenance.module_file("core.losses")
    assert provenance.code_hash(["core.losses"])  # unchanged: fine
    size, mtime = provenance.LOADED[losses]
    monkeypatch.setitem(provenance.LOADED, losses, (size, mtime - 1))  # as if the file were written after the import
    with pytest.raises(provenance.CodeChangedError, match="losses.py changed after this process imported it"):
        provenance.code_hash(["methods.dpo"])  # dpo imports core.losses
