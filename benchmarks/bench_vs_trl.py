"""Our SFT, reward-model and DPO steps against TRL's SFTTrainer, RewardTrainer and DPOTrainer, on the same work.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv-bench/bin/python benchmarks/bench_vs_trl.py [--repeats 3] [--steps 15]

Both sides get the same checkpoint (the tiny profile's Llama, random weights, saved once to a temp folder), the
same LoRA config (``rrhf_lite.core.models.lora_config``: r, alpha, dropout and target modules of the profile), the same
rows of the tiny world in the same order (no shuffling on either side), the same batch size, ``max_length``,
optimiser (``torch.optim.AdamW``, non-fused, same learning rate, weight decay and clipping) and number of steps.
Float32, no gradient checkpointing (TRL's configs default to bf16 and gradient checkpointing; both are turned off
here because our tiny profile uses neither). TRL's logging, saving and evaluation are off.

Every run is a fresh subprocess; runs alternate ours / TRL (A B A B ...), ``--repeats`` times. The first
``--warmup`` steps of each run are dropped; the table reports the median over all remaining steps of all repeats,
the spread of the per-run medians, and the ratio TRL / ours (> 1: ours is faster).

DPO is measured three ways:

* ``ours``: :func:`rrhf_lite.methods.dpo.add_reference_logprobs` caches the reference log-probs once before training
  (not in the step time; its one-off cost is printed), and chosen + rejected go through one forward pass;
* ``trl``: TRL's default, ``precompute_ref_log_probs=False``: every step runs the policy forward (chosen + rejected
  concatenated) *and* a second, no-grad forward of the reference (the same model with its adapters disabled);
* ``trl-precomputed``: ``precompute_ref_log_probs=True``, TRL's equivalent of our cache (a pass over the data when
  the trainer is built, timed as ``init``);
* ``trl-gc``: as ``trl``, with gradient checkpointing on, which is what ``DPOConfig()`` does when it is not told
  otherwise (bf16, TRL's other default, stays off: it would change the arithmetic, not only the speed). Not the same
  work as ours (activations are recomputed in the backward pass); shown because it is what TRL does out of the box.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

TASKS = {"sft": ("ours", "trl"), "reward": ("ours", "trl"), "dpo": ("ours", "trl", "trl-precomputed", "trl-gc")}
LABELS = {"sft": "SFT", "reward": "reward model", "dpo": "DPO"}


# --------------------------------------------------------------------------------------------------------------------
# Worker: one side of one task, in its own process
# --------------------------------------------------------------------------------------------------------------------


def task_settings(profile, task: str) -> dict:
    """Batch size, learning rate and warm-up of the task, from the tiny profile (both sides use the same)."""
    prefix = {"sft": "sft", "reward": "rm", "dpo": "dpo"}[task]
    return {"batch_size": getattr(profile, f"{prefix}_batch_size"), "lr": getattr(profile, f"{prefix}_lr"),
            "warmup_steps": getattr(profile, f"{prefix}_warmup_steps")}


def task_data(profile, task: str, n: int):
    """``n`` rows of the tiny world: prompt/completion (SFT) or prompt/chosen/rejected (reward, DPO)."""
    from rrhf_lite.course.world import TinyWorld

    world = TinyWorld.from_profile(profile)
    if task == "sft":
        return world.sft_dataset(n, "train").select_columns(["prompt", "completion"])
    return world.preference_dataset(n, "train").select_columns(["prompt", "chosen", "rejected"])


def run_ours(spec: dict, profile, data) -> dict:
    import torch

    from rrhf_lite.core.logprobs import pad_batch
    from rrhf_lite.core.loop import train
    from rrhf_lite.core.models import load_for_training
    from rrhf_lite.methods.dpo import add_reference_logprobs, collate_preferences, dpo_step, tokenize_preferences
    from rrhf_lite.methods.reward import collate_comparisons, reward_step, tokenize_comparisons
    from rrhf_lite.methods.sft import sft_step, tokenize_demonstrations

    task, settings = spec["task"], task_settings(profile, spec["task"])
    extra = {}
    model, tokenizer = load_for_training(spec["model_dir"], profile, head="reward" if task == "reward" else "lm")
    pad = tokenizer.pad_token_id
    if task == "sft":
        rows = tokenize_demonstrations(tokenizer, data, profile.max_length)
        collate, step = functools.partial(pad_batch, pad_token_id=pad), sft_step
        tokens = sum(len(r["input_ids"]) for r in rows)
    elif task == "reward":
        rows = tokenize_comparisons(tokenizer, data, profile.max_length)
        collate = functools.partial(collate_comparisons, pad_token_id=pad)
        step = functools.partial(reward_step, center_coef=profile.rm_center_coef)
        tokens = sum(len(r["chosen"]) + len(r["rejected"]) for r in rows)
    else:
        rows = tokenize_preferences(tokenizer, data, profile.max_length)
        with common.Stopwatch() as sw:
            add_reference_logprobs(model, rows, pad)  # fresh adapters: the model is the reference
        extra["ref_cache_s"] = sw.seconds
        collate = functools.partial(collate_preferences, pad_token_id=pad)
        step = functools.partial(dpo_step, beta=profile.dpo_beta, loss_type=profile.dpo_loss_type)
        tokens = sum(len(r["chosen"]["input_ids"]) + len(r["rejected"]["input_ids"]) for r in rows)
    batches = torch.utils.data.DataLoader(rows, batch_size=settings["batch_size"], shuffle=False, collate_fn=collate)
    with common.StepTimer() as timer, common.PeakMemory() as memory:
        train(model, batches, timer.wrap(step), steps=spec["steps"], lr=settings["lr"],
              warmup_steps=settings["warmup_steps"], weight_decay=profile.weight_decay,
              max_grad_norm=profile.max_grad_norm, log_every=profile.log_every, seed=profile.seed, progress=False)
    return {"step_times": timer.times, "cpu_times": timer.cpu_times, **memory.as_dict(),
            "tokens_per_step": tokens / len(batches), **extra}


def run_trl(spec: dict, profile, data) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from rrhf_lite.core.models import lora_config

    task, settings = spec["task"], task_settings(profile, spec["task"])
    out_dir = tempfile.mkdtemp(prefix="trl-bench-")
    common_args = dict(
        output_dir=out_dir, max_steps=spec["steps"], per_device_train_batch_size=settings["batch_size"],
        learning_rate=settings["lr"], lr_scheduler_type="cosine", warmup_steps=settings["warmup_steps"],
        weight_decay=profile.weight_decay, max_grad_norm=profile.max_grad_norm, optim="adamw_torch",
        gradient_checkpointing=spec["side"] == "trl-gc", bf16=False, fp16=False, use_cpu=True, seed=profile.seed,
        logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
        dataloader_num_workers=0, dataloader_pin_memory=False, train_sampling_strategy="sequential",
        max_length=profile.max_length)
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    timer = common.StepTimer()
    extra = {}
    torch.manual_seed(profile.seed)
    with common.Stopwatch() as init:
        if task == "sft":
            from trl import SFTConfig, SFTTrainer

            model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
            trainer = SFTTrainer(model=model, args=SFTConfig(**common_args, packing=False), train_dataset=data,
                                 processing_class=tokenizer, peft_config=lora_config(profile, "CAUSAL_LM"),
                                 callbacks=[timer.trainer_callback()])
            ds = trainer.train_dataset
            tokens = sum(len(ids) for ids in ds["input_ids"])
        elif task == "reward":
            from trl import RewardConfig, RewardTrainer

            model = AutoModelForSequenceClassification.from_pretrained(spec["model_dir"], num_labels=1,
                                                                       dtype=torch.float32)
            model.config.pad_token_id = tokenizer.pad_token_id
            config = RewardConfig(**common_args, center_rewards_coefficient=profile.rm_center_coef)
            trainer = RewardTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                                    peft_config=lora_config(profile, "SEQ_CLS"), callbacks=[timer.trainer_callback()])
            ds = trainer.train_dataset
            tokens = sum(len(c) + len(r) for c, r in zip(ds["chosen_ids"], ds["rejected_ids"]))
        else:
            from trl import DPOConfig, DPOTrainer

            precompute = spec["side"] == "trl-precomputed"
            model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
            config = DPOConfig(**common_args, beta=profile.dpo_beta, loss_type=[profile.dpo_loss_type],
                               precompute_ref_log_probs=precompute, precompute_ref_batch_size=32)
            trainer = DPOTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                                 peft_config=lora_config(profile, "CAUSAL_LM"), callbacks=[timer.trainer_callback()])
            ds = trainer.train_dataset
            tokens = sum(2 * len(p) + len(c) + len(r)
                         for p, c, r in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"]))
            extra["precompute_ref_log_probs"] = precompute
    extra["init_s"] = init.seconds
    n_batches = -(-len(trainer.train_dataset) // settings["batch_size"])
    with timer, common.PeakMemory() as memory:
        trainer.train()
    return {"step_times": timer.times, "cpu_times": timer.cpu_times, **memory.as_dict(),
            "tokens_per_step": tokens / n_batches, **extra}


def worker(spec: dict) -> None:
    common.single_thread()
    from rrhf_lite.course.profiles import get_profile

    profile = get_profile("tiny")
    data = task_data(profile, spec["task"], spec["steps"] * task_settings(profile, spec["task"])["batch_size"])
    result = run_ours(spec, profile, data) if spec["side"] == "ours" else run_trl(spec, profile, data)
    common.emit_result(result)


# --------------------------------------------------------------------------------------------------------------------
# Driver: interleave, summarise, print
# --------------------------------------------------------------------------------------------------------------------


def pooled(runs: list[dict], key: str, warmup: int) -> list[float]:
    """Every step after the warm-up, of every run."""
    return [t for r in runs for t in r[key][warmup:]]


def summarise(task: str, runs: dict[str, list[dict]], warmup: int) -> list[list]:
    rows = []
    ours_wall = common.median(pooled(runs["ours"], "step_times", warmup))
    ours_cpu = common.median(pooled(runs["ours"], "cpu_times", warmup))
    for side in TASKS[task]:
        side_runs = runs[side]
        wall = common.median(pooled(side_runs, "step_times", warmup))
        cpu = common.median(pooled(side_runs, "cpu_times", warmup))
        per_run = [common.median(r["step_times"][warmup:]) for r in side_runs]
        mem = functools.partial(lambda key, rs: common.median(r[key] for r in rs), rs=side_runs)
        note = ""
        if "ref_cache_s" in side_runs[0]:
            note = f"ref cache {common.median(r['ref_cache_s'] for r in side_runs):.2f} s once"
        elif side != "ours":
            note = f"trainer init {common.median(r['init_s'] for r in side_runs):.2f} s"
        rows.append([LABELS[task], side, common.ms(wall), f"{common.ms(min(per_run))}–{common.ms(max(per_run))}",
                     "1.00" if side == "ours" else f"{wall / ours_wall:.2f}", common.ms(cpu),
                     "1.00" if side == "ours" else f"{cpu / ours_cpu:.2f}", f"{mem('tokens_per_step'):.0f}",
                     f"{mem('train_peak_mb'):.0f}", f"{mem('train_delta_mb'):.0f}", f"{mem('peak_rss_mb'):.0f}",
                     len(pooled(side_runs, "step_times", warmup)), note])
    return rows


HEADERS = ["step", "side", "wall ms/step", "per-run medians", "TRL/ours (wall)", "CPU ms/step", "TRL/ours (CPU)",
           "tokens/step", "train peak MiB", "train Δ MiB", "setup peak MiB", "steps", "notes"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=4, help="A/B rounds per task (each run is a fresh process)")
    parser.add_argument("--steps", type=int, default=15, help="optimiser steps per run, warm-up included")
    parser.add_argument("--warmup", type=int, default=3, help="steps dropped at the start of every run")
    parser.add_argument("--tasks", default="sft,reward,dpo", help="comma-separated subset of sft,reward,dpo")
    parser.add_argument("--model-dir", default=None, help="reuse a saved model folder (default: a new temp dir)")
    parser.add_argument("--json", default=None, help="also write every raw step time to this JSON file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    if args.steps <= args.warmup:
        parser.error("--steps must exceed --warmup")

    common.single_thread()
    common.print_header(f"Ours vs TRL: {args.repeats} interleaved repeats x {args.steps} steps "
                        f"({args.warmup} warm-up dropped), tiny profile, OMP_NUM_THREADS=1")
    tmp = tempfile.TemporaryDirectory(prefix="rrhf-bench-")
    model_dir = Path(args.model_dir or Path(tmp.name) / "model")
    common.build_model_dir(model_dir)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    raw: dict[str, dict[str, list[dict]]] = {t: {s: [] for s in TASKS[t]} for t in tasks}
    with common.Stopwatch() as total:
        for r in range(args.repeats):
            for task in tasks:
                for side in TASKS[task]:  # A B C D A B C D ...: the sides alternate within every repeat
                    spec = {"task": task, "side": side, "steps": args.steps, "model_dir": str(model_dir)}
                    result = common.run_worker(__file__, spec)
                    raw[task][side].append(result)
                    times = result["step_times"][args.warmup:]
                    cpu = result["cpu_times"][args.warmup:]
                    print(f"  repeat {r + 1}/{args.repeats} {task:6s} {side:16s} median "
                          f"{common.ms(common.median(times))} ms/step wall, {common.ms(common.median(cpu))} CPU, "
                          f"over {len(times)} steps", flush=True)
    print()
    rows = [row for task in tasks for row in summarise(task, raw[task], args.warmup)]
    common.print_table(HEADERS, rows)
    print(f"\ntotal wall time {total.seconds / 60:.1f} min")
    common.save_runs(args.json, args, raw)
    tmp.cleanup()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
