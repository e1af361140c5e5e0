# rrhf-lite: two commands on a fresh machine.
#   make main   installs into .venv, then runs every lesson notebook on the tiny profile
#               (executed copies in runs/tiny/notebooks/, figures in runs/tiny/figures/, the side-by-side
#               results table of lesson 09 in runs/tiny/results.csv and results.json)
#   make test   installs into .venv if needed, then runs the unit tests and executes every notebook
#   make site   (optional, after make main) the executed lessons as a static website: runs/tiny/site/index.html
#   make lab    work through the lessons yourself: JupyterLab on notebooks/ (and solutions/), the project's kernel
#
# torch is installed first, pinned (TORCH=...), so that pip never swaps it for another build.
# torch==2.13.0 is a CPU build on the project's CI machines; on your own machine pass the build you want,
# e.g. `make main TORCH=torch` to keep whatever pip picks for your platform.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PROFILE ?= $(or $(RRHF_LITE_PROFILE),tiny)
PY := $(VENV)/bin/python

.PHONY: install lock main test test-unit site lab study lint clean

install: $(VENV)/.installed

# constraints.txt is the lock: the exact version of every package make install puts beside torch (the dev extra, the
# site's tools and the bench extra's trl included), as make test passed with them on Python 3.11, Linux x86_64.
# pyproject.toml keeps ranges, for installing into an environment of one's own (Colab's %pip install). A changed
# pyproject.toml or lock rebuilds .venv from empty, so that it holds what the lock says and nothing else.
LOCK := constraints.txt
$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv --clear $(VENV)
	$(PY) -m pip install --quiet -c $(LOCK) "$(TORCH)"
	$(PY) -m pip install --quiet -c $(LOCK) -e ".[dev]"
	touch $@

# Update the lock: resolve pyproject.toml's ranges afresh (the dev and bench extras) in a new virtualenv and write
# what pip installed there, torch and this package left out. Then run make test (it reinstalls .venv from the new
# lock) before committing constraints.txt.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet "$(TORCH)"
	.venv-lock/bin/python -m pip install --quiet -e ".[dev,bench]"
	{ echo "# The lock: written by \`make lock\` ($$(.venv-lock/bin/python -V), $$(uname -m), next to $(TORCH)); see the Makefile."; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable | grep -v '^torch=='; } > $(LOCK)
	rm -rf .venv-lock
	@echo "wrote $(LOCK): now run make test, then commit it"

# Lessons 00-03 each build on the one before (base model -> SFT -> reward model -> samples): one at a time, all
# cores. Lessons 04-09 only share what 00-03 built. On the tiny profile two processes then run at once, with one torch
# thread each (these small models keep one thread busy but not two: one lesson on two threads does ~0.7x the work of
# two lessons on one each): lessons 08, 07, 06, 05, 04 and 09 one after the other, and beside them
# python -m rrhf_lite.course.build builds lesson 08's GRPO on the gold reward, one of lesson 06's DPO runs and the
# stages that only lesson 09 needs (its KL sweep of PPO runs, the weak-KL run's held-out snapshots, RRHF and its online
# round) into the same stage cache. The
# two sides hold about the same work. A lesson that asks for a stage the builder is training waits for it and loads it
# (the stage's lock, stages.py), and builds itself one the builder has not begun: every stage is built once. The
# builder's log: runs/<profile>/notebooks/build.log.
# tools/run_lessons.py executes a series of lessons as nbconvert --execute does, but in one kernel that imports the
# libraries once and is reset to a fresh kernel's state before each lesson (~12 s saved per lesson); make test still
# runs every lesson in a kernel of its own. The kernel of lessons 04-09 starts (and imports) beside lessons 00-03's, and
# waits for them to finish.
# On a GPU profile one lesson at a time (JOBS=1): two processes would hold two models in the GPU's memory.
JOBS ?= $(if $(filter tiny,$(PROFILE)),2,1)
NOTEBOOKS := runs/$(PROFILE)/notebooks
LESSONS := env RRHF_LITE_PROFILE=$(PROFILE) $(PY) tools/run_lessons.py --output-dir $(NOTEBOOKS)
BUILD_LOG := $(NOTEBOOKS)/build.log
# where the lessons write figures and results: the stage cache's root ($RRHF_LITE_RUNS moves it)
RUNS := $(or $(RRHF_LITE_RUNS),runs)
PHASE_1_DONE := $(NOTEBOOKS)/.lessons-00-03-done
main: install
ifeq ($(JOBS),1)
	$(LESSONS) notebooks/0[0-3]_*.ipynb
	$(LESSONS) notebooks/0[4-9]_*.ipynb
else
	@mkdir -p $(NOTEBOOKS) && rm -f $(PHASE_1_DONE)
	OMP_NUM_THREADS=1 $(LESSONS) --after $(PHASE_1_DONE) $$(ls notebooks/0[4-8]_*.ipynb | sort -r) \
	  notebooks/09_side_by_side.ipynb & lessons=$$!; \
	  $(LESSONS) notebooks/0[0-3]_*.ipynb || { kill $$lessons; exit 1; }; \
	  echo "building stages for lessons 06, 08 and 09 in the background (log: $(BUILD_LOG))"; \
	  OMP_NUM_THREADS=1 RRHF_LITE_PROFILE=$(PROFILE) $(PY) -m rrhf_lite.course.build grpo-gold ppo-sweep ppo-trajectory \
	  dpo-random rrhf online \
	  > $(BUILD_LOG) 2>&1 & build=$$!; \
	  touch $(PHASE_1_DONE); \
	  wait $$lessons || { kill $$build; exit 1; }; \
	  wait $$build || { echo "background build failed: see $(BUILD_LOG)"; tail -20 $(BUILD_LOG); exit 1; }
	@rm -f $(PHASE_1_DONE)
endif
	$(PY) website/execution_record.py --profile $(PROFILE)
	@echo "Executed notebooks: $(NOTEBOOKS)/   figures: $(RUNS)/$(PROFILE)/figures/   results table: $(RUNS)/$(PROFILE)/results.csv"

# The lessons as make main executed them, as a website (website/make_site.py: MkDocs with mkdocs-jupyter).
# It refuses notebooks executed from another commit (or other uncommitted changes) than the working tree's.
site: install
	$(PY) website/make_site.py build --profile $(PROFILE)

# The lessons in JupyterLab, to work through on your own machine: the repository as Lab's root (a lesson's link to its
# solutions, in solutions/, opens), showing notebooks/ first; on the profile PROFILE
# (RRHF_LITE_PROFILE, else tiny). JupyterLab is installed in .venv beside the package, so its default kernel ("Python 3")
# runs .venv's python; a lesson loads the stages make main built (runs/, or $RRHF_LITE_RUNS) and builds any missing.
# LAB_ARGS goes to jupyter lab, e.g. `make lab LAB_ARGS="--no-browser --port 8890"` on a remote machine (add
# --allow-root as root, in a container: Jupyter refuses root otherwise).
LAB_ARGS ?=
lab: install
	RRHF_LITE_PROFILE=$(PROFILE) $(PY) -m jupyter lab --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/notebooks \
	  $(LAB_ARGS)

# Two pytest workers with one torch thread each: on a 2-core machine that is faster than two workers fighting
# over two threads each (OpenMP oversubscription slows tiny models down several-fold). Each worker takes one test at
# a time (--maxschedchunk 1), in the order tests/conftest.py sets: the long chain of tiny stages first on one worker,
# the tests that need none of it on the other.
test: install
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --maxschedchunk 1 --durations=15 tests

# The unit tests alone: what make test runs except the tests that train the course (tests marked `course` in
# tests/conftest.py: the lessons, the tiny stages, the rehearsal, the fresh install, the website).
test-unit: install
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 -m "not course" tests

# Every method trained with SEEDS training seeds on the same SFT and reward model: means and intervals over seeds,
# and which differences between methods are larger than their intervals (runs/$(PROFILE)/study.json; lesson 09 shows it).
SEEDS ?= 3
study: install
	RRHF_LITE_PROFILE=$(PROFILE) $(PY) -m rrhf_lite.course.study --seeds $(SEEDS)

lint: install
	$(PY) -m ruff check rrhf_lite tests tools website benchmarks notebooks solutions

clean:
	rm -rf runs .pytest_cache .hypothesis
