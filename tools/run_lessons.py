"""Execute lesson notebooks one after the other in one kernel, each from the state a fresh kernel starts in.

    python tools/run_lessons.py notebooks/0[0-3]_*.ipynb --output-dir runs/tiny/notebooks

``jupyter nbconvert --execute`` starts a kernel for every notebook, and every lesson's set-up cell then imports
torch, transformers, peft, datasets, matplotlib and pandas again: about 12 s of a 2-core machine per lesson, nine
times in ``make main``. Here the kernel is started once and those libraries are imported once; before each lesson the
kernel is put back where a fresh one starts:

* the namespace is emptied and a new history session begun (every name, ``In``/``Out``, the execution count 1);
* rrhf_lite itself is imported afresh by the lesson (its modules are dropped from ``sys.modules``: half a second), so
  whatever the package keeps per process (which stages it has announced, cached code hashes) starts empty;
* warning filters are restored and the "already shown" registries cleared, so a warning shows as in a new process;
* matplotlib's figures are closed and its settings restored;
* environment variables, the working directory and torch's thread count are restored, and torch draws a new random
  seed, as a new process does.

What stays is the third-party libraries, imported (modules are imported once per process either way). A lesson that
used a name left by the one before would fail, as it fails in a fresh kernel. The executed copies are what
``nbconvert --execute`` writes, cell for cell (``tests/test_run_lessons.py`` checks it; ``make main``'s lessons were
compared output by output with nbconvert's), with each cell's start and end time in ``metadata.execution``.
``make test`` still executes every lesson in its own fresh kernel (nbmake).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

# Drops rrhf_lite from the modules imported (the next ``import rrhf_lite...`` reads it again).
DROP_PACKAGE = """
    for name in [name for name in sys.modules if name == "rrhf_lite" or name.startswith("rrhf_lite.")]:
        del sys.modules[name]
"""
# Run once, when the kernel has started: import the libraries every set-up cell imports (through rrhf_lite, which is
# then dropped again), and note what a fresh kernel holds once they are imported (after pyplot: that is when the
# notebook backend sets matplotlib's defaults). Inside a function, so that no name is left behind; the notes live in a
# module of their own, where the reset does not reach.
SNAPSHOT = """
def _snapshot():
    import importlib, os, sys, types, warnings
    # peft through rrhf_lite.core.models, as the lessons import it: bitsandbytes without its hub lookup
    # (bitsandbytes_import)
    for module in ("torch", "transformers", "rrhf_lite.core.models", "datasets", "matplotlib.pyplot", "pandas",
                   "rrhf_lite.course.pipeline", "rrhf_lite.course.plots"):
        importlib.import_module(module)
""" + DROP_PACKAGE + """
    import matplotlib, torch
    fresh = types.ModuleType("_fresh_kernel")
    fresh.environ, fresh.cwd, fresh.filters = dict(os.environ), os.getcwd(), list(warnings.filters)
    fresh.rc, fresh.threads = matplotlib.rcParams.copy(), torch.get_num_threads()
    sys.modules[fresh.__name__] = fresh
_snapshot()
del _snapshot
"""

# Run before each lesson: back to the state SNAPSHOT noted. The reset comes last: it removes _restore itself.
RESTORE = """
def _restore():
    import gc, logging, os, sys, warnings
    import matplotlib, matplotlib.pyplot as plt, torch
    fresh = sys.modules["_fresh_kernel"]
""" + DROP_PACKAGE + """
    plt.close("all")
    matplotlib.rcParams.update(fresh.rc)
    os.environ.clear()
    os.environ.update(fresh.environ)
    os.chdir(fresh.cwd)
    warnings.filters[:] = fresh.filters
    for module in list(sys.modules.values()):  # forget which warnings were shown already
        registry = getattr(module, "__warningregistry__", None)
        if isinstance(registry, dict):
            registry.clear()
    for once in ("warning_once", "info_once"):  # transformers' loggers warn once per process
        cache_clear = getattr(getattr(logging.Logger, once, None), "cache_clear", None)
        if cache_clear is not None:
            cache_clear()
    torch.seed()  # a new random seed, as a new process draws
    torch.set_num_threads(fresh.threads)
    get_ipython().reset(new_session=True)  # %reset, and a new history session: In, Out, execution count
    gc.collect()
_restore()
"""
# nbclient's default for the kernels it starts: no IPython history database on disk.
KERNEL_ARGUMENTS = ["--HistoryManager.hist_file=:memory:"]


def run_code(manager: KernelManager, code: str, timeout: float = 600) -> None:
    """Execute ``code`` in the kernel without a trace in its history; raise if it fails."""
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=timeout)
        reply = client.execute_interactive(code, silent=True, store_history=False, timeout=timeout)
    finally:
        client.stop_channels()
    if reply["content"]["status"] != "ok":
        raise RuntimeError(f"preparing the kernel failed: {reply['content'].get('ename')}: "
                           f"{reply['content'].get('evalue')}")


def run(notebooks: list[Path], output_dir: Path, timeout: int, after: Path | None = None) -> None:
    """Execute ``notebooks`` in order into ``output_dir``; raises on the first lesson whose cell fails.

    ``after``: a file to wait for once the kernel is ready, before the first lesson (``make main`` starts the kernel of
    lessons 04-09 while lessons 00-03 run, and lets it begin when they are done)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    folders = {path.resolve().parent for path in notebooks}
    if len(folders) > 1:
        raise ValueError(f"the lessons must share a folder (the kernel's working directory), got {sorted(folders)}")
    manager = KernelManager(kernel_name="python3")
    manager.start_kernel(cwd=str(folders.pop()), extra_arguments=KERNEL_ARGUMENTS)
    try:
        start = time.perf_counter()
        run_code(manager, SNAPSHOT)
        print(f"kernel started, libraries imported: {time.perf_counter() - start:.0f} s", flush=True)
        while after is not None and not after.exists():
            time.sleep(0.5)
        for path in notebooks:
            run_code(manager, RESTORE)
            nb = nbformat.read(path, as_version=4)
            start = time.perf_counter()
            client = NotebookClient(nb, km=manager, timeout=timeout, resources={"metadata": {"path": str(path.parent)}})
            try:
                client.execute()
            finally:
                if client.kc is not None:
                    client.kc.stop_channels()
                nbformat.write(nb, output_dir / path.name)  # a failed lesson too: its error is in the cell's output
            print(f"{path.name}: {time.perf_counter() - start:.0f} s -> {output_dir / path.name}", flush=True)
    finally:
        manager.shutdown_kernel(now=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path, help="lessons, executed in this order")
    parser.add_argument("--output-dir", type=Path, required=True, help="where the executed copies are written")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds a cell may run (nbconvert's option)")
    parser.add_argument("--after", type=Path, default=None,
                        help="start the first lesson once this file exists (the kernel is started before)")
    args = parser.parse_args(argv)
    try:
        run(args.notebooks, args.output_dir, args.timeout, args.after)
    except CellExecutionError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
