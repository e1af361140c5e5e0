"""Shared pieces of the benchmarks: the model under test, step timing, peak memory, subprocess workers, tables.

Nothing here is a test: the benchmarks time things, the test suite must not. Run the scripts directly (see
``benchmarks/README.md``); each one sets ``OMP_NUM_THREADS=1`` and ``HF_HUB_OFFLINE=1`` for every process it starts.

**Step time.** A step is timed from the moment its batch is ready (our loop: the step function is called; a TRL
trainer: ``on_step_begin``) to the end of ``optimizer.step()`` (a global ``torch.optim`` post-step hook, the same
for both sides). So a step covers forward, loss, backward, gradient clipping and the AdamW update; fetching and
collating the batch, the learning-rate scheduler, ``zero_grad`` and logging are outside it on both sides.

Both the wall time (``time.perf_counter``) and the CPU time of the training thread (``time.thread_time``) are
recorded. With ``OMP_NUM_THREADS=1`` all of torch's work runs on that thread, so the CPU time counts the same work
and is less disturbed than the wall time when other processes compete for the cores (it still is not immune: caches
and memory bandwidth are shared).

**Peak memory** (CPU). ``tracemalloc`` does not see torch's allocations, so memory is the process's resident set
size. Every measured run is its own subprocess. Just before training starts the kernel's high-water mark is reset
(``echo 5 > /proc/self/clear_refs``, which also resets ``getrusage().ru_maxrss``), and after training it is read
back (``VmHWM``): ``train_peak_mb`` is the largest RSS during training, ``train_delta_mb`` that minus the RSS when
training began (what training added: activations, gradients, optimiser state, allocator slack). ``peak_rss_mb``
is ``ru_maxrss`` of the whole subprocess before the reset (imports, model, data preparation). Where
``clear_refs`` cannot be written, the high-water mark is not reset and the figures are marked ``hwm_reset=False``.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT_PREFIX = "BENCH_RESULT "


# --------------------------------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------------------------------


def bench_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment every benchmark process runs in: one thread, offline, no tokenizer threads, no progress bars."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1", "TRANSFORMERS_VERBOSITY": "error",
                "PYTHONWARNINGS": "ignore", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                                       env.get("PYTHONPATH")]))})
    env.update(extra or {})
    return env


def single_thread() -> None:
    """Apply the benchmark environment to this process (call before importing torch does the heavy lifting)."""
    for key, value in bench_env().items():
        if key != "PYTHONPATH":
            os.environ.setdefault(key, value)
    if os.environ.get("OMP_NUM_THREADS") != "1":
        print(f"warning: OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, the figures assume 1", file=sys.stderr)
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def versions() -> dict[str, str]:
    """When and where a report was measured: the date and time of this run (UTC), the versions, the machine."""
    from datetime import datetime, timezone
    from importlib.metadata import PackageNotFoundError, version

    out = {"measured": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "accelerate", "datasets", "trl"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    cpu = platform.processor() or "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    out["cpu"] = f"{cpu}, {os.cpu_count()} cores visible"
    out["machine"] = f"{platform.node()} ({platform.machine()}, {platform.system()} {platform.release()})"
    out["threads"] = os.environ.get("OMP_NUM_THREADS", "unset")
    return out


def print_header(title: str) -> None:
    print(f"# {title}")
    print("  " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    print()


# --------------------------------------------------------------------------------------------------------------------
# The model under test
# --------------------------------------------------------------------------------------------------------------------


def build_model_dir(path: str | Path, profile=None, dialogues: int | None = None) -> Path:
    """The tiny profile's Llama (random weights) and its tokenizer, saved with ``save_pretrained`` into ``path``.

    The same recipe as ``tests/conftest.py`` (``save_small_model``) at the tiny profile's size: a byte-level BPE
    tokenizer trained on the world's dialogues, and a freshly initialised ``LlamaForCausalLM``. Random weights are
    fine for timing: every side loads the same checkpoint and does the same arithmetic.
    """
    from rrhf_lite.core.models import build_tokenizer
    from rrhf_lite.course.pretrain import build_tiny_model
    from rrhf_lite.course.profiles import get_profile
    from rrhf_lite.course.world import TinyWorld

    profile = profile or get_profile("tiny")
    path = Path(path)
    marker = path / "bench_model.json"
    fields = {k: getattr(profile, k) for k in ("seed", "tokenizer_vocab_size", "n_layer", "n_head", "hidden_size",
                                                "intermediate_size", "max_length")}
    if marker.exists() and json.loads(marker.read_text()) == fields:
        return path
    texts = TinyWorld(seed=profile.seed).dialogues(dialogues or profile.pretrain_dialogues)
    tokenizer = build_tokenizer(texts, vocab_size=profile.tokenizer_vocab_size)
    build_tiny_model(tokenizer, profile).save_pretrained(path)
    tokenizer.save_pretrained(path)
    marker.write_text(json.dumps(fields))
    return path


def save_random_qwen2(path: str | Path, shapes: dict, *, tokens: int, dialogues: int, pad: str | None = None,
                      dtype: str | None = None) -> Path:
    """A ``Qwen2ForCausalLM`` of ``shapes`` (its config's fields) with random weights, and a byte-level BPE tokenizer
    of ``tokens`` tokens trained on ``dialogues`` of the tiny world's dialogues, with Qwen's ``<|endoftext|>`` as eos
    and ``pad`` as pad token (None: no pad token, as Qwen's), saved with ``save_pretrained`` into ``path``. The
    tokenizer's ids stay below the model's vocabulary, whose size ``shapes`` sets. ``dtype``: the weights' on disk."""
    import torch
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    from rrhf_lite.core.models import train_byte_level_bpe
    from rrhf_lite.course.standins import ENDOFTEXT
    from rrhf_lite.course.world import TinyWorld

    special = [ENDOFTEXT] + ([pad] if pad else [])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_byte_level_bpe(TinyWorld(seed=0).dialogues(dialogues), tokens, special),
        eos_token=ENDOFTEXT, pad_token=pad, clean_up_tokenization_spaces=False, model_max_length=32_768)
    eos = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**shapes, bos_token_id=eos, eos_token_id=eos))
    (model.to(getattr(torch, dtype)) if dtype else model).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)


# --------------------------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------------------------


class StepTimer:
    """Per-step wall times: from :meth:`begin` to the end of the next ``optimizer.step()`` of any torch optimiser."""

    def __init__(self, cuda_sync: bool = False):
        self.times: list[float] = []  # wall seconds per step
        self.cpu_times: list[float] = []  # CPU seconds of this thread per step (all the work, at one thread)
        self._start: float | None = None
        self._cpu_start = 0.0
        self._handle = None
        self._sync = cuda_sync  # on a GPU, wait for the queued kernels at both ends (kernels run asynchronously)

    def _wait(self) -> None:
        if self._sync:
            import torch

            torch.cuda.synchronize()

    def begin(self) -> None:
        self._wait()
        self._start = time.perf_counter()
        self._cpu_start = time.thread_time()

    def _after_optimizer_step(self, optimizer, args, kwargs) -> None:
        if self._start is not None:  # wrappers (accelerate) may call the hook twice: count the first end only
            self._wait()
            self.times.append(time.perf_counter() - self._start)
            self.cpu_times.append(time.thread_time() - self._cpu_start)
            self._start = None

    def __enter__(self) -> StepTimer:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._handle = register_optimizer_step_post_hook(self._after_optimizer_step)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def wrap(self, step_fn: Callable) -> Callable:
        """``step_fn`` with :meth:`begin` called first: for our loop, whose step function receives a ready batch."""

        def timed(model, batch):
            self.begin()
            return step_fn(model, batch)

        return timed

    def trainer_callback(self):
        """A ``transformers.TrainerCallback`` that calls :meth:`begin` in ``on_step_begin``."""
        from transformers import TrainerCallback

        timer = self

        class _Begin(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                timer.begin()

        return _Begin()


class Stopwatch:
    """``with Stopwatch() as sw: ...``; then ``sw.seconds``."""

    def __enter__(self) -> Stopwatch:
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._t


# --------------------------------------------------------------------------------------------------------------------
# Memory (resident set size, in MiB)
# --------------------------------------------------------------------------------------------------------------------


def _status_mb(field: str) -> float | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mb() -> float:
    value = _status_mb("VmRSS")
    return value if value is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def maxrss_mb() -> float:
    """``getrusage(RUSAGE_SELF).ru_maxrss`` in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakMemory:
    """Largest RSS inside a ``with`` block, and how much it exceeds the RSS at the start of the block."""

    def __enter__(self) -> PeakMemory:
        import gc

        gc.collect()
        self.before_mb = maxrss_mb()  # peak of everything up to here (imports, model, data)
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the high-water mark (VmHWM and ru_maxrss) to the current RSS
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self.start_mb = rss_mb()
        return self

    def __exit__(self, *exc) -> None:
        hwm = _status_mb("VmHWM")
        self.peak_mb = hwm if hwm is not None else maxrss_mb()
        self.delta_mb = self.peak_mb - self.start_mb

    def as_dict(self) -> dict:
        return {"peak_rss_mb": self.before_mb, "train_peak_mb": self.peak_mb, "train_delta_mb": self.delta_mb,
                "hwm_reset": self.hwm_reset}


# --------------------------------------------------------------------------------------------------------------------
# Subprocess workers
# --------------------------------------------------------------------------------------------------------------------


def save_runs(path: str | None, args, raw: dict) -> None:
    """With ``--json PATH``, every raw step time of every run, with the versions and the arguments."""
    if path:
        Path(path).write_text(json.dumps({"versions": versions(), "args": vars(args), "runs": raw}, indent=1))


def emit_result(result: dict) -> None:
    """What a worker prints last: one line the parent parses."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def main_or_worker(main: Callable[[], None], worker: Callable[[dict], None]) -> None:
    """A script's entry point: ``script --worker '<spec json>'`` (how :func:`run_worker` starts it) runs one
    measurement; anything else runs ``main()``."""
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        worker(json.loads(sys.argv[2]))
    else:
        main()


def run_worker(script: str | Path, spec: dict, timeout: float = 900, extra_env: dict | None = None) -> dict:
    """Run ``python script --worker '<spec json>'`` in a fresh process with :func:`bench_env`; return its result."""
    cmd = [sys.executable, str(Path(script).resolve()), "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, env=bench_env(extra_env), capture_output=True, text=True, timeout=timeout,
                          cwd=str(ROOT))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stdout + "\n" + proc.stderr).splitlines()[-40:])
        raise RuntimeError(f"worker {spec} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


# --------------------------------------------------------------------------------------------------------------------
# Statistics and tables
# --------------------------------------------------------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def ms(seconds: float) -> str:
    return f"{1000 * seconds:.1f}"


def print_table(headers: Sequence[str], rows: Iterable[Sequence], file=None) -> str:
    """A Markdown table (pasteable into README.md), printed and returned."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    text = "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])
    print(text, file=file or sys.stdout, flush=True)
    return text
