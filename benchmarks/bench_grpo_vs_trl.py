"""One GRPO step of ours (``rrhf_lite.methods.grpo.train_grpo``) against TRL's ``GRPOTrainer`` (trl 1.16), on CPU.

**What a step is, on both sides**: one generation batch and the one optimiser step it feeds. 4 prompts of the tiny
world's train split x G = 4 sampled replies = 16 completions; generate them, score them, compute the reference
log-probs (the same model with its LoRA adapters disabled, since beta > 0), standardise the rewards within each
group, then one forward + backward over the 16 completions with the clipped-ratio loss and the KL term, clip the
gradient, ``AdamW.step()``.

**Same on both sides**: the same saved checkpoint (the tiny profile's Llama with random weights,
``common.build_model_dir``) and tokenizer, the same LoRA adapters (``rrhf_lite.core.models.lora_config``: r 16,
alpha 32, dropout 0, all seven linear layers), float32, no gradient checkpointing, one thread. The same prompts in
the same order (``rrhf_lite.course.sources.rollout_prompts``; TRL gets ``shuffle_dataset=False``; the driver checks
that both sides saw the same prompts at every step). Every number comes from one ``GRPOConfig`` of ours
(``grpo_config`` below: the tiny profile's ``grpo_*`` settings with ``prompts_per_iteration = prompts_per_step = 4``,
``epochs=1``), and TRL's config is filled from it:

* group size: ``group_size=4`` / ``num_generations=4``; completions per step: ours 4 prompts per iteration and per
  step / TRL ``per_device_train_batch_size=16`` (counted in completions), ``gradient_accumulation_steps=1``,
  ``steps_per_generation=1`` (so ``generation_batch_size=16``: one generation feeds exactly one optimiser step),
  ``num_iterations=1``; both generate the 16 replies in one ``generate`` call and compute the reference log-probs
  in one forward pass of 16 rows;
* sampling: ``max_new_tokens`` / ``max_completion_length`` 64, temperature 0.7, top-p 1, top-k off (0),
  repetition penalty 1, sampling with transformers' ``model.generate``, a static KV cache (ours always uses
  ``cache_implementation="static"``; TRL gets the same; the extra side ``trl-dynamic-cache`` keeps TRL's default,
  ``cache_implementation=None``, a dynamic cache); no vLLM;
* loss: beta 0.04 (k3 KL estimator in the loss, both), clip epsilon 0.2, per-reply token means then the mean over
  replies (ours ``normalisation="per_reply"``, TRL ``loss_type="grpo"``), rewards divided by the group's standard
  deviation (ours ``scale_rewards=True``, TRL ``scale_rewards="group"``), eps 1e-4 in both;
* optimiser: ``torch.optim.AdamW`` (non-fused; TRL ``optim="adamw_torch"``), lr 5e-4 decaying linearly to 0 over the
  run (TRL ``lr_scheduler_type="linear"``, no warm-up), weight decay 0.01, gradient clipped at norm 1.0;
* reward: the tiny world's gold judge, ``rrhf_lite.course.world.gold_rewards(prompts, replies)``, a plain rule; TRL
  calls it as ``f(prompts=..., completions=..., **kwargs)`` and, the prompts being plain strings (not
  conversational), passes decoded strings, which the wrapper checks.

TRL's logging, saving and evaluation are off (``logging_strategy="no"``, ``save_strategy="no"``,
``eval_strategy="no"``, ``report_to="none"``, ``log_completions=False``).

**What differs** (it is each library's own way of doing the same step):

* the old log-probs: with one step per rollout, both take the training forward's detached log-probs as the old ones
  (identical numbers: the ratio is 1 at the first and only step), ours since commit 06a93e8 (``collect_groups``'s
  ``first_step_rows``; before it, ours ran one more no-grad forward over the 16 completions per step);
* TRL's training forward also computes the per-token entropy (for its logs), and its LM head is TRL's fused head
  (``add_fused_lm_head``), ours ``rrhf_lite.core.logprobs.head_logprobs``; TRL also computes clip-ratio and reward
  statistics every step even with logging off;
* replies that never emit ``<|eos|>``: ours scores them ``no_eos_penalty`` (-1) instead of the judge's score, TRL
  gives them the judge's score. Different rewards, same arithmetic;
* the samples differ (each side seeds its own sampler), so reply lengths may differ: the table reports the tokens
  generated per step and the longest reply (the number of decoding steps) on each side. With random weights almost
  no reply ends before 64 tokens, so both sides decode 64 steps for 16 rows.

**Span timed** (``common.StepTimer``): ours from the call of ``collect_groups`` (the start of an iteration of
``train_grpo``, wrapped here without changing it) to the end of ``optimizer.step()``; TRL from its ``on_step_begin``
callback (just before ``training_step``, which generates inside ``_prepare_inputs``) to the end of
``optimizer.step()``. Both spans hold the generation, the log-prob passes, the scoring, the advantages, the loss,
backward, clipping and the AdamW update; the learning-rate scheduler, ``zero_grad`` and each side's bookkeeping after
the step are outside. Wall and CPU time of the training thread are both recorded (use CPU when they disagree on this
shared machine). The columns *generate*, *rest of rollout* and *update* split the CPU time of a step: ``generate``
(ours ``generate_tokens``; TRL ``_generate_single_turn``), the rest of the rollout (ours the rest of
``collect_groups``: log-prob passes of policy and reference, decoding, scoring; TRL the rest of
``_generate_and_score_completions``: reference pass, decoding, rewards, advantages, statistics), and the update (the
rest of the step).

Every run is a fresh subprocess; runs alternate ours / trl / trl-dynamic-cache within every repeat,
``--repeats`` times; the first ``--warmup`` steps of each run are dropped; medians over all remaining steps of all
repeats; ratio TRL / ours (> 1: ours is faster).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from bench_vs_trl import pooled  # noqa: E402

SIDES = ("ours", "trl", "trl-dynamic-cache")
PROMPTS_PER_STEP = 4  # 4 prompts x group_size 4 = 16 completions per optimiser step


# --------------------------------------------------------------------------------------------------------------------
# Worker: one side, in its own process
# --------------------------------------------------------------------------------------------------------------------


def grpo_config(profile, steps: int):
    """Our GRPOConfig for the benchmark: the tiny profile's, one optimiser step per iteration of 4 prompts."""
    return dataclasses.replace(profile.grpo_config("grpo"), iterations=steps, prompts_per_iteration=PROMPTS_PER_STEP,
                               prompts_per_step=PROMPTS_PER_STEP, epochs=1, checkpoint_every=0)


class Phases:
    """CPU and wall time of a function's calls, and what ``record`` extracts from their results."""

    def __init__(self):
        self.cpu: list[float] = []
        self.wall: list[float] = []
        self.extra: list = []

    def wrap(self, fn, record=None):
        def timed(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.thread_time()
            out = fn(*args, **kwargs)
            self.cpu.append(time.thread_time() - cpu)
            self.wall.append(time.perf_counter() - wall)
            if record is not None:
                self.extra.append(record(args, kwargs, out))
            return out

        return timed


def run_ours(spec: dict, profile, prompts: list[str]) -> dict:
    from rrhf_lite.core.models import load_for_training
    from rrhf_lite.course.world import gold_rewards
    from rrhf_lite.methods import grpo

    config = grpo_config(profile, spec["steps"])
    model, tokenizer = load_for_training(spec["model_dir"], profile)
    timer, generation, rollout = common.StepTimer(), Phases(), Phases()

    def count(args, kwargs, out):  # generated tokens (eos included) and the longest reply: decoding steps
        return [sum(len(ids) for ids in out.reply_ids), max(len(ids) for ids in out.reply_ids)]

    def begin_then_collect(*args, **kwargs):  # an iteration starts with its rollout: start the step's clock
        timer.begin()
        return collect(*args, **kwargs)

    collect = rollout.wrap(grpo.collect_groups, lambda args, kwargs, out: list(args[3]))
    saved = grpo.collect_groups, grpo.generate_tokens
    grpo.collect_groups, grpo.generate_tokens = begin_then_collect, generation.wrap(grpo.generate_tokens, count)
    try:
        with timer, common.PeakMemory() as memory:
            history = grpo.train_grpo(model, tokenizer, gold_rewards, prompts, config, progress=False)
    finally:
        grpo.collect_groups, grpo.generate_tokens = saved
    return {"step_times": timer.times, "cpu_times": timer.cpu_times, **memory.as_dict(),
            "generate_cpu": generation.cpu, "rollout_cpu": rollout.cpu, "generated": generation.extra,
            "prompts_seen": rollout.extra, "config": dataclasses.asdict(config),
            "mean_score": sum(r["score"] for r in history) / len(history)}


def run_trl(spec: dict, profile, prompts: list[str]) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from rrhf_lite.core.models import lora_config
    from rrhf_lite.course.world import gold_rewards

    ours = grpo_config(profile, spec["steps"])
    rows = ours.prompts_per_step * ours.group_size
    seen: list[list[str]] = []

    def gold_reward(prompts, completions, **kwargs):
        if not all(isinstance(x, str) for x in [*prompts, *completions]):
            raise TypeError("TRL passed the reward function something other than plain strings")
        seen.append(list(prompts[::ours.group_size]))  # one per group, in order
        return gold_rewards(prompts, completions)

    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-grpo-bench-"), max_steps=spec["steps"],
        per_device_train_batch_size=rows, gradient_accumulation_steps=1, steps_per_generation=1,
        num_generations=ours.group_size, num_iterations=1, shuffle_dataset=False,
        max_completion_length=ours.max_new_tokens, temperature=ours.temperature, top_p=1.0, top_k=0, min_p=None,
        repetition_penalty=1.0, use_vllm=False,
        cache_implementation=None if spec["side"] == "trl-dynamic-cache" else "static",
        beta=ours.beta, epsilon=ours.clip_range, loss_type="grpo",
        scale_rewards="group" if ours.scale_rewards else "none", mask_truncated_completions=False,
        learning_rate=ours.lr, lr_scheduler_type="linear", warmup_steps=0, weight_decay=ours.weight_decay,
        max_grad_norm=ours.max_grad_norm, optim="adamw_torch", gradient_checkpointing=False, bf16=False, fp16=False,
        use_cpu=True, seed=profile.seed, logging_strategy="no", save_strategy="no", eval_strategy="no",
        report_to="none", disable_tqdm=True, log_completions=False, dataloader_num_workers=0,
        dataloader_pin_memory=False)
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    timer, generation, rollout = common.StepTimer(), Phases(), Phases()
    torch.manual_seed(profile.seed)
    with common.Stopwatch() as init:
        model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
        trainer = GRPOTrainer(model=model, reward_funcs=gold_reward, args=args,
                              train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=tokenizer,
                              peft_config=lora_config(profile, "CAUSAL_LM"), callbacks=[timer.trainer_callback()])

    def count(args, kwargs, out):
        completion_ids = out[0]
        return [sum(len(ids) for ids in completion_ids), max(len(ids) for ids in completion_ids)]

    trainer._generate_single_turn = generation.wrap(trainer._generate_single_turn, count)
    trainer._generate_and_score_completions = rollout.wrap(trainer._generate_and_score_completions)
    gen = trainer.generation_config
    settings = {k: getattr(gen, k) for k in ("max_new_tokens", "temperature", "top_p", "top_k", "min_p",
                                             "repetition_penalty", "do_sample", "cache_implementation")}
    settings.update(loss_type=trainer.loss_type, beta=trainer.beta, scale_rewards=trainer.scale_rewards,
                    generation_batch_size=args.generation_batch_size, steps_per_generation=args.steps_per_generation)
    lora = trainer.model.peft_config["default"]
    settings.update(lora=[lora.r, lora.lora_alpha, lora.lora_dropout, sorted(lora.target_modules)],
                    dtype=str(next(trainer.model.parameters()).dtype),
                    gradient_checkpointing=bool(getattr(trainer.model, "is_gradient_checkpointing", False)))
    with timer, common.PeakMemory() as memory:
        trainer.train()
    return {"step_times": timer.times, "cpu_times": timer.cpu_times, **memory.as_dict(),
            "generate_cpu": generation.cpu, "rollout_cpu": rollout.cpu, "generated": generation.extra,
            "prompts_seen": seen, "init_s": init.seconds, "trl_settings": settings,
            "optimizer": type(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer")
                              else trainer.optimizer).__name__}


def worker(spec: dict) -> None:
    common.single_thread()
    from rrhf_lite.course.profiles import get_profile
    from rrhf_lite.course.sources import rollout_prompts

    profile = get_profile("tiny")
    prompts = rollout_prompts(profile, spec["steps"] * PROMPTS_PER_STEP)
    result = run_ours(spec, profile, prompts) if spec["side"] == "ours" else run_trl(spec, profile, prompts)
    common.emit_result(result)


# --------------------------------------------------------------------------------------------------------------------
# Driver: interleave, summarise, print
# --------------------------------------------------------------------------------------------------------------------


def phase_medians(runs: list[dict], warmup: int) -> tuple[float, float, float]:
    """Median CPU seconds per step of generation, the rest of the rollout, and the update (the rest of the step)."""
    gen, rest, update = [], [], []
    for r in runs:
        for g, roll, step in list(zip(r["generate_cpu"], r["rollout_cpu"], r["cpu_times"]))[warmup:]:
            gen.append(g)
            rest.append(roll - g)
            update.append(step - roll)
    return common.median(gen), common.median(rest), common.median(update)


def summarise(runs: dict[str, list[dict]], warmup: int) -> list[list]:
    rows = []
    ours_wall = common.median(pooled(runs["ours"], "step_times", warmup))
    ours_cpu = common.median(pooled(runs["ours"], "cpu_times", warmup))
    for side, side_runs in runs.items():
        wall = common.median(pooled(side_runs, "step_times", warmup))
        cpu = common.median(pooled(side_runs, "cpu_times", warmup))
        per_run = [common.median(r["step_times"][warmup:]) for r in side_runs]
        generated = [g for r in side_runs for g in r["generated"][warmup:]]
        tokens = sum(g[0] for g in generated) / len(generated)
        longest = sum(g[1] for g in generated) / len(generated)
        gen, rest, update = phase_medians(side_runs, warmup)
        mem = functools.partial(lambda key, rs: common.median(r[key] for r in rs), rs=side_runs)
        note = "" if side == "ours" else f"trainer init {mem('init_s'):.2f} s"
        rows.append(["GRPO", side, common.ms(wall), f"{common.ms(min(per_run))}–{common.ms(max(per_run))}",
                     "1.00" if side == "ours" else f"{wall / ours_wall:.2f}", common.ms(cpu),
                     "1.00" if side == "ours" else f"{cpu / ours_cpu:.2f}", common.ms(gen), common.ms(rest),
                     common.ms(update), f"{tokens:.0f}", f"{longest:.1f}", f"{1e6 * cpu / tokens:.0f}",
                     f"{mem('train_peak_mb'):.0f}", f"{mem('train_delta_mb'):.0f}",
                     len(pooled(side_runs, "step_times", warmup)), note])
    return rows


HEADERS = ["step", "side", "wall ms/step", "per-run medians", "TRL/ours (wall)", "CPU ms/step", "TRL/ours (CPU)",
           "generate CPU ms", "rest of rollout CPU ms", "update CPU ms", "generated tokens/step", "longest reply",
           "CPU µs/generated token", "train peak MiB", "train Δ MiB", "steps", "notes"]


def check_same_prompts(raw: dict[str, list[dict]]) -> None:
    """Every run of every side must have been given the same prompts, in the same order, step by step."""
    reference = raw["ours"][0]["prompts_seen"]
    for side, runs in raw.items():
        for r in runs:
            if r["prompts_seen"] != reference:
                raise RuntimeError(f"{side} saw other prompts than ours: {r['prompts_seen'][:2]} vs {reference[:2]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="A/B/C rounds (each run is a fresh process)")
    parser.add_argument("--steps", type=int, default=15, help="optimiser steps per run, warm-up included")
    parser.add_argument("--warmup", type=int, default=3, help="steps dropped at the start of every run")
    parser.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated subset of {','.join(SIDES)}")
    parser.add_argument("--model-dir", default=None, help="reuse a saved model folder (default: a new temp dir)")
    parser.add_argument("--json", default=None, help="also write every raw step time to this JSON file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    if args.steps <= args.warmup:
        parser.error("--steps must exceed --warmup")
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if "ours" not in sides or not set(sides) <= set(SIDES):
        parser.error(f"--sides: 'ours' and any of {SIDES[1:]}")

    common.single_thread()
    common.print_header(f"GRPO, ours vs TRL: {args.repeats} interleaved repeats x {args.steps} steps "
                        f"({args.warmup} warm-up dropped), tiny profile, 4 prompts x 4 replies per step, "
                        f"OMP_NUM_THREADS=1")
    tmp = tempfile.TemporaryDirectory(prefix="rrhf-bench-")
    model_dir = Path(args.model_dir or Path(tmp.name) / "model")
    common.build_model_dir(model_dir)
    raw: dict[str, list[dict]] = {s: [] for s in sides}
    with common.Stopwatch() as total:
        for r in range(args.repeats):
            for side in sides:  # A B C A B C ...: the sides alternate within every repeat
                spec = {"side": side, "steps": args.steps, "model_dir": str(model_dir)}
                result = common.run_worker(__file__, spec)
                raw[side].append(result)
                times, cpu = result["step_times"][args.warmup:], result["cpu_times"][args.warmup:]
                tokens = [g[0] for g in result["generated"][args.warmup:]]
                print(f"  repeat {r + 1}/{args.repeats} {side:18s} median {common.ms(common.median(times))} ms/step "
                      f"wall, {common.ms(common.median(cpu))} CPU, {sum(tokens) / len(tokens):.0f} generated "
                      f"tokens/step, over {len(times)} steps", flush=True)
    check_same_prompts(raw)
    for side in sides[1:]:
        print(f"  {side} settings as TRL read them: {raw[side][0]['trl_settings']}, optimizer "
              f"{raw[side][0]['optimizer']}")
    print()
    common.print_table(HEADERS, summarise(raw, args.warmup))
    print(f"\nsame prompts on every side at every step: yes; total wall time {total.seconds / 60:.1f} min")
    common.save_runs(args.json, args, raw)
    tmp.cleanup()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
