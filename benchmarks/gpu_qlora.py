"""Peak GPU memory and tokens/s of SFT, DPO, RRHF (n = 4) and PPO with QLoRA, on the colab-t4 / gpu-24gb profiles.

    HF_HUB_OFFLINE=1 python benchmarks/gpu_qlora.py --profile colab-t4 [--model Qwen/Qwen2.5-0.5B] [--steps 8]
    python benchmarks/gpu_qlora.py --profile gpu-24gb --random-init      # no hub, no cache: the real shapes
    python benchmarks/gpu_qlora.py --smoke-cpu [--random-init]           # the code paths on a CPU

Needs a CUDA GPU (on a machine without one it says so and exits with status 0, having measured nothing) and either
the profile's base model in the Hugging Face cache or a local copy passed with ``--model`` (with ``HF_HUB_OFFLINE=1``
nothing is downloaded), or ``--random-init``: a model of the base model's exact shapes (``benchmarks/configs/``: the
layers, widths, heads and 151,936-row vocabulary of Qwen2.5-0.5B and -1.5B, from their hub configs) with random
weights and a tokenizer trained here, built on the spot (:func:`build_random_init`). Memory and speed depend on the
shapes, not on the weights, so a machine with no model hub measures what a Colab T4 would. The goal in issue 9 is a
peak below 15 GB for every method on both profiles.

What runs is the library's own code, as the notebooks run it: ``load_for_training`` (4-bit NF4 base + LoRA,
gradient checkpointing as the profile says), the shared loop ``rrhf_lite.core.loop.train`` with ``sft_step``,
``dpo_step`` (after ``add_reference_logprobs``) and ``ranking_step`` (RRHF), and for PPO one iteration of
``collect_rollout`` + ``ppo_update`` with a second 4-bit model as the reward model. Batch sizes and lengths are the
profile's (``--batch-size`` / ``--max-length`` override them). The data is the tiny world's text made long enough
that **every sequence fills max_length** (PPO: every prompt fills ``max_length - max_new_tokens``), so the figures are
the worst case for memory, not HH-RLHF's length distribution. Every method runs in its own subprocess, so one
method's allocator state does not leak into the next. ``peak alloc`` is ``torch.cuda.max_memory_allocated`` and
``peak reserved`` ``torch.cuda.max_memory_reserved`` (what ``nvidia-smi`` roughly shows), both over training only
(reset after the model is loaded and the data prepared; the model's own weights are included).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

TASKS = ("sft", "dpo", "rrhf", "ppo")
GB = 1024**3
CONFIGS = Path(__file__).resolve().parent / "configs"
SHAPES = {"colab-t4": "qwen2.5-0.5b", "gpu-24gb": "qwen2.5-1.5b"}  # each profile's base model, as a config file


def build_random_init(profile_name: str, out: Path) -> Path:
    """The shapes of ``profile_name``'s base model with random weights, saved with ``save_pretrained`` into ``out``.

    The architecture comes from ``benchmarks/configs/<model>.json`` (the values of the model's config on the hub).
    The tokenizer is a byte-level BPE of 4,096 tokens trained on the tiny world, with Qwen's ``<|endoftext|>`` as eos
    and no pad token (the library adds one, as it does for Qwen's); the embedding and the LM head keep the real
    151,936 rows, so the logits, the largest tensors of a step, have their real size. Weights are saved in bfloat16.
    """
    out = Path(out)
    values = {k: v for k, v in json.loads((CONFIGS / f"{SHAPES[profile_name]}.json").read_text()).items()
              if not k.startswith("_") and k != "model_type"}
    marker = out / "random_init.json"
    if marker.exists() and json.loads(marker.read_text()) == values:
        return out
    common.save_random_qwen2(out, values, tokens=4096, dialogues=2000, dtype="bfloat16")
    marker.write_text(json.dumps(values))
    return out


def long_text(world, tokenizer, n_tokens: int, rng) -> str:
    """World dialogue text of at least ``n_tokens`` tokens (whole turns, so it still reads like a dialogue)."""
    parts, count = [], 0
    while count < n_tokens:
        prompt = world.sample_prompts(1, "train", rng)[0]
        reply = world_reply(prompt, rng)
        parts.append(prompt + reply)
        count += len(tokenizer(prompt + reply, add_special_tokens=False)["input_ids"])
    return "".join(parts)


def world_reply(prompt: str, rng) -> str:
    from rrhf_lite.course.world import sample_response

    return sample_response(prompt, rng)


def full_length_pairs(world, tokenizer, n: int, max_length: int, rng) -> list[tuple[str, list[str]]]:
    """``n`` (prompt, [replies]) where prompt + any reply is longer than ``max_length`` (truncation keeps the end of
    the prompt and the whole reply, so every tokenised sequence is exactly ``max_length``)."""
    out = []
    for _ in range(n):
        prompt = long_text(world, tokenizer, max_length, rng) + world.sample_prompts(1, "train", rng)[0]
        replies = [world_reply(prompt, rng) for _ in range(4)]
        out.append((prompt, replies))
    return out


def fitting_prompts(world, tokenizer, n: int, room: int, rng) -> list[str]:
    """``n`` prompts of close to ``room`` tokens each (earlier turns, then a request)."""
    prompts = []
    for _ in range(n):
        turns, text = [], world.sample_prompts(1, "train", rng)[0]
        while True:
            request = world.sample_prompts(1, "train", rng)[0]
            candidate = "".join(turns) + request
            if len(tokenizer(candidate)["input_ids"]) > room:
                break
            text = candidate
            turns.append(request + world_reply(request, rng))
        prompts.append(text)
    return prompts


def cuda(name: str, *args):
    """``torch.cuda.<name>(*args)`` on a GPU; nothing (None) otherwise, so ``--smoke-cpu`` can run the same code."""
    import torch

    return getattr(torch.cuda, name)(*args) if torch.cuda.is_available() else None


def row_tokens(row: dict) -> int:
    """Tokens of one tokenised row of any method (a demonstration, a preference pair or a ranking)."""
    if "candidates" in row:
        return sum(len(c["input_ids"]) for c in row["candidates"])
    if "chosen" in row:
        return len(row["chosen"]["input_ids"]) + len(row["rejected"]["input_ids"])
    return len(row["input_ids"])


def measure(spec: dict) -> dict:
    import random

    import torch

    from rrhf_lite.core.logprobs import pad_batch, tokenize_pair
    from rrhf_lite.core.loop import train
    from rrhf_lite.core.models import load_for_training
    from rrhf_lite.course.profiles import get_profile
    from rrhf_lite.course.world import TinyWorld

    overrides = {k: v for k, v in (("base_model", spec.get("model")), ("max_length", spec.get("max_length"))) if v}
    profile = get_profile(spec["profile"], **overrides, **spec.get("profile_overrides", {}))
    task, batch_override = spec["task"], spec.get("batch_size")
    world, rng = TinyWorld(seed=0), random.Random(0)
    steps, warmup = spec["steps"], spec["warmup"]
    cuda("reset_peak_memory_stats")
    result = {"task": task, "profile": profile.name, "model": profile.base_model, "max_length": profile.max_length}

    if task == "ppo":
        from rrhf_lite.methods import ppo
        from rrhf_lite.methods.reward import normalised_scorer

        policy, tokenizer = load_for_training(profile.base_model, profile, head="lm")
        ppo.use_plain_sampling(policy)
        model = ppo.PolicyAndValue(policy)
        ppo.init_value_head(model.value_head, "zero")
        reward_model, reward_tokenizer = load_for_training(profile.base_model, profile, head="reward")
        reward_model.eval().requires_grad_(False)
        reward_fn = normalised_scorer(reward_model, reward_tokenizer, {"mean": 0.0, "std": 1.0}, profile.max_length)
        n = batch_override or profile.ppo_rollout_prompts
        prompts = fitting_prompts(world, tokenizer, n, profile.max_length - profile.max_new_tokens, rng)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=profile.ppo_lr, eps=1e-5)
        iterations = max(2, steps // 4)
        times, generated, update_tokens = [], 0, 0
        cuda("synchronize")
        cuda("reset_peak_memory_stats")
        for it in range(iterations):
            with common.Stopwatch() as roll:
                rollout = ppo.collect_rollout(model, tokenizer, reward_fn, prompts, profile.ppo_config(), seed=it)
                cuda("synchronize")
            rewards = ppo.token_rewards(rollout.logprobs, rollout.ref_logprobs, rollout.scores, rollout.mask,
                                        beta=profile.ppo_kl_coef)
            advantages, returns = ppo.advantages_and_returns(rewards, rollout.values, rollout.mask,
                                                             gamma=profile.ppo_gamma, lam=profile.ppo_lam)
            with common.Stopwatch() as upd:
                ppo.ppo_update(model, optimizer, rollout, advantages, returns, profile.ppo_config(), iteration=it,
                               generator=torch.Generator().manual_seed(it))
                cuda("synchronize")
            times.append((roll.seconds, upd.seconds))
            generated = sum(len(r) for r in rollout.reply_ids)
            update_tokens = profile.ppo_epochs * int(rollout.batch["attention_mask"].sum())
        rollout_s = common.median(t[0] for t in times[1:])
        update_s = common.median(t[1] for t in times[1:])
        result.update({"batch": f"{n} prompts", "step_s": rollout_s + update_s,
                       "tokens_per_s": (generated + update_tokens) / (rollout_s + update_s),
                       "detail": f"rollout {rollout_s:.2f} s ({generated / rollout_s:.0f} generated tok/s), "
                                 f"update {update_s:.2f} s ({update_tokens / update_s:.0f} tok/s)"})
    else:
        model, tokenizer = load_for_training(profile.base_model, profile, head="lm")
        if task == "sft":
            from rrhf_lite.methods.sft import sft_step

            batch_size = batch_override or profile.sft_batch_size
            pairs = full_length_pairs(world, tokenizer, batch_size * steps, profile.max_length, rng)
            rows = [tokenize_pair(tokenizer, p, r[0], profile.max_length) for p, r in pairs]
            collate = functools.partial(pad_batch, pad_token_id=tokenizer.pad_token_id)
            step, lr, seqs = sft_step, profile.sft_lr, batch_size
        elif task == "dpo":
            from rrhf_lite.methods.dpo import add_reference_logprobs, collate_preferences, dpo_step

            batch_size = batch_override or profile.dpo_batch_size
            pairs = full_length_pairs(world, tokenizer, batch_size * steps, profile.max_length, rng)
            rows = [{"chosen": tokenize_pair(tokenizer, p, r[0], profile.max_length),
                     "rejected": tokenize_pair(tokenizer, p, r[1], profile.max_length)} for p, r in pairs]
            add_reference_logprobs(model, rows, tokenizer.pad_token_id, batch_size=batch_size)
            collate = functools.partial(collate_preferences, pad_token_id=tokenizer.pad_token_id)
            step, lr, seqs = functools.partial(dpo_step, beta=profile.dpo_beta), profile.dpo_lr, 2 * batch_size
        else:
            from rrhf_lite.methods.ranking import collate_rankings, ranking_step

            batch_size = batch_override or profile.ranking_batch_size
            pairs = full_length_pairs(world, tokenizer, batch_size * steps, profile.max_length, rng)
            rows = [{"candidates": [tokenize_pair(tokenizer, p, r, profile.max_length) for r in replies],
                     "scores": [float(-i) for i in range(len(replies))]} for p, replies in pairs]
            collate = functools.partial(collate_rankings, pad_token_id=tokenizer.pad_token_id)
            step = functools.partial(ranking_step, loss_fn=profile.rrhf_config().loss())
            lr, seqs = profile.rrhf_lr, 4 * batch_size
        batches = torch.utils.data.DataLoader(rows, batch_size=batch_size, shuffle=False, collate_fn=collate)
        tokens = sum(row_tokens(r) for r in rows)
        cuda("synchronize")
        cuda("reset_peak_memory_stats")
        with common.StepTimer(cuda_sync=torch.cuda.is_available()) as timer:
            train(model, batches, timer.wrap(step), steps=steps, lr=lr, weight_decay=profile.weight_decay,
                  max_grad_norm=profile.max_grad_norm, log_every=steps, seed=profile.seed, progress=False)
        step_s = common.median(timer.times[warmup:])
        result.update({"batch": f"{batch_size} ({seqs} seqs)", "step_s": step_s,
                       "tokens_per_s": tokens / len(batches) / step_s, "detail": ""})
    config = (model.policy if task == "ppo" else model).config
    result["estimate_gb"] = estimate_gb(profile, config, task, batch_override)
    result["peak_alloc_gb"] = (cuda("max_memory_allocated") or 0) / GB
    result["peak_reserved_gb"] = (cuda("max_memory_reserved") or 0) / GB
    result["gpu"] = cuda("get_device_name") or "none (CPU smoke run)"
    return result


def estimate_gb(profile, config, task: str, batch: int | None) -> float:
    """What ``rrhf_lite.course.memory.estimate_memory`` predicts for this run (its batch size, every sequence full)."""
    import dataclasses

    from rrhf_lite.course.memory import GIB, estimate_memory

    field = {"sft": "sft_batch_size", "dpo": "dpo_batch_size", "rrhf": "ranking_batch_size",
             "ppo": "ppo_rollout_prompts"}[task]
    profile = dataclasses.replace(profile, **({field: batch} if batch else {}))
    return estimate_memory(profile, config, task).total / GIB


def worker(spec: dict) -> None:
    import torch

    try:
        result = measure(spec)
    except torch.cuda.OutOfMemoryError as e:
        result = {"task": spec["task"], "profile": spec["profile"], "oom": str(e).splitlines()[0]}
    common.emit_result(result)


def smoke_cpu(args) -> None:
    """Run every method once, small and in 4-bit on the CPU, through the same workers: a check that the script works
    (imports, data, the library calls), not a measurement. With ``--random-init``, the model is the profile's real
    shapes (a 0.5B or 1.5B model with a 151,936-row vocabulary), with batches of one short sequence; without it, the
    tiny profile's model."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="gpu-smoke-") as tmp:
        if args.random_init:
            model_dir = build_random_init(args.profile, Path(tmp) / "model")
            profile, sizes = args.profile, {"batch_size": 1, "max_length": 64}
            overrides = {"compute_dtype": "float32", "max_new_tokens": 8, "ppo_minibatch_size": 1, "ppo_epochs": 1}
        else:
            model_dir = common.build_model_dir(Path(tmp) / "model", dialogues=1000)
            profile, sizes = "tiny", {"batch_size": 2, "max_length": 96}
            overrides = {"load_in_4bit": True, "max_new_tokens": 16, "ppo_minibatch_size": 2, "ppo_epochs": 1}
        for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
            spec = {"task": task, "profile": profile, "model": str(model_dir), "steps": 3, "warmup": 1, **sizes,
                    "profile_overrides": overrides}
            result = common.run_worker(__file__, spec, timeout=1800)
            print(f"  {task}: {result}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="colab-t4", choices=["colab-t4", "gpu-24gb"])
    parser.add_argument("--model", default=None, help="hub id or local folder (default: the profile's base_model)")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of " + ",".join(TASKS))
    parser.add_argument("--steps", type=int, default=8, help="optimiser steps per method (PPO: steps // 4 iterations)")
    parser.add_argument("--warmup", type=int, default=2, help="steps dropped from the median")
    parser.add_argument("--batch-size", type=int, default=0, help="override the profile's batch size (PPO: prompts)")
    parser.add_argument("--max-length", type=int, default=0, help="override the profile's max_length")
    parser.add_argument("--limit-gb", type=float, default=15.0, help="the goal: peak reserved memory below this")
    parser.add_argument("--json", default=None)
    parser.add_argument("--random-init", action="store_true",
                        help="no hub: the base model's shapes with random weights (benchmarks/configs)")
    parser.add_argument("--random-init-dir", default=None,
                        help="where --random-init keeps the model (reused when its config matches; default: temporary)")
    parser.add_argument("--smoke-cpu", action="store_true",
                        help="check the code paths on a CPU in 4-bit, with the tiny model or --random-init's shapes")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))

    import torch

    if args.smoke_cpu:
        return smoke_cpu(args)
    if not torch.cuda.is_available():
        print("gpu_qlora.py measures GPU memory and needs a CUDA GPU; none is visible here, so nothing was measured.\n"
              "Run it on a CUDA machine (see benchmarks/README.md, section 'GPU: not measured yet').")
        return
    if args.random_init:
        import tempfile

        folder = Path(args.random_init_dir or tempfile.mkdtemp(prefix="random-init-"))
        args.model = str(build_random_init(args.profile, folder))
    common.print_header(f"QLoRA on {torch.cuda.get_device_name()}, profile {args.profile}"
                        + (f", random-init {SHAPES[args.profile]} shapes" if args.random_init else ""))
    rows, results = [], []
    for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        spec = {"task": task, "profile": args.profile, "model": args.model, "steps": args.steps,
                "warmup": args.warmup, "batch_size": args.batch_size or None, "max_length": args.max_length or None}
        r = common.run_worker(__file__, spec, timeout=3600, extra_env={"OMP_NUM_THREADS": "4"})
        results.append(r)
        if "oom" in r:
            rows.append([task, args.profile, "-", "-", "-", "OOM", "OOM", "-", "-", "no", r["oom"][:80]])
        else:
            rows.append([task, args.profile, r["batch"], r["max_length"], f"{r['estimate_gb']:.2f}",
                         f"{r['peak_alloc_gb']:.2f}", f"{r['peak_reserved_gb']:.2f}", f"{r['step_s']:.2f}",
                         f"{r['tokens_per_s']:.0f}",
                         "yes" if r["peak_reserved_gb"] < args.limit_gb else "NO", r["detail"]])
        print(f"  {task}: done", flush=True)
    print()
    common.print_table(["method", "profile", "batch", "max_length", "estimate GiB", "peak alloc GiB",
                        "peak reserved GiB", "s/step (PPO: s/iter)", "tokens/s", f"< {args.limit_gb:g} GiB", "notes"],
                       rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"versions": common.versions(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
