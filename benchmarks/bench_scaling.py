"""How our ranking steps scale, and where one PPO iteration spends its time.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv-bench/bin/python benchmarks/bench_scaling.py [--repeats 2] [--steps 6]

**RRHF and PRO vs candidates and length.** :func:`rrhf_lite.methods.ranking.ranking_step` puts the ``n`` candidates of
``B`` prompts through one forward pass of ``B * n`` sequences, so a step should cost about the same per token
whatever ``n`` and the length ``L`` are: linear in the tokens ``B * n * L`` (attention adds an ``L**2`` term
that is small at these lengths). Every candidate here is exactly ``L`` tokens (the world's prompt, then its reply's
tokens repeated up to ``L - 1``, then ``<|eos|>``), so there is no padding and ``B * n * L`` is the exact token
count. The table prints microseconds per token: flat (or falling, as fixed per-step costs are amortised) means
"grows with total tokens, not worse". RRHF and PRO alternate (A B A B) on every configuration, in one process,
configurations in order of increasing tokens. Peak memory is the RSS high-water mark of each run (reset before it,
see ``benchmarks/common.py``); as every run shares the process, it includes the models and whatever the allocator
kept from earlier runs, so read it as an upper bound that grows with the tokens per step, not as a per-run delta.

**PPO, one iteration** (:mod:`rrhf_lite.methods.ppo`, tiny profile: 64 prompts, 64 new tokens, 3 epochs of minibatches
of 16), split into the phases ``collect_rollout`` and ``train_ppo`` run, each timed with the library's own functions:
generation (``generate_tokens``), policy log-probs + values and reference log-probs (``policy_forward``,
``reference_logprobs``, in the rollout's chunks, no gradients), scoring by the reward model (``score_replies``),
per-token rewards and advantages, and the update (``ppo_update``). The model has random weights, so no reply ever
emits ``<|eos|>`` and every one runs the full ``max_new_tokens``: the slowest case for generation.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

# --------------------------------------------------------------------------------------------------------------------
# RRHF and PRO
# --------------------------------------------------------------------------------------------------------------------


def fixed_length_rankings(tokenizer, rankings, n: int, length: int) -> list[dict]:
    """Rows as :func:`rrhf_lite.methods.ranking.tokenize_rankings` makes them, with ``n`` candidates of exactly
    ``length``."""
    rows = []
    for row in rankings:
        prompt_ids = tokenizer(row["prompt"])["input_ids"][: length // 2]
        room = length - len(prompt_ids) - 1
        candidates = []
        for reply in row["responses"][:n]:
            reply_ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
            body = list(itertools.islice(itertools.cycle(reply_ids), room)) + [tokenizer.eos_token_id]
            candidates.append({"input_ids": prompt_ids + body, "response_mask": [0] * len(prompt_ids) + [1] * len(body),
                               "truncated": False})
        rows.append({"candidates": candidates, "scores": [float(s) for s in row["scores"][:n]]})
    return rows


def bench_ranking(args, model_dir: Path, profile) -> list[list]:
    import torch

    from rrhf_lite.core.loop import train
    from rrhf_lite.core.models import load_for_training
    from rrhf_lite.course.world import TinyWorld
    from rrhf_lite.methods.ranking import collate_rankings, ranking_step

    candidates = [int(x) for x in args.candidates.split(",")]
    lengths = [int(x) for x in args.lengths.split(",")]
    methods = ("rrhf", "pro")
    models = {m: load_for_training(model_dir, profile, head="lm") for m in methods}
    tokenizer = models["rrhf"][1]
    batch_size = args.batch or profile.ranking_batch_size
    rankings = TinyWorld.from_profile(profile).ranking_dataset(args.steps * batch_size, k=max(candidates))
    results: dict[tuple, dict] = {}
    configs = sorted(itertools.product(candidates, lengths), key=lambda c: (c[0] * c[1], c))
    for n, length in configs:
        rows = fixed_length_rankings(tokenizer, rankings, n, length)
        batches = torch.utils.data.DataLoader(
            rows, batch_size=batch_size, shuffle=False,
            collate_fn=functools.partial(collate_rankings, pad_token_id=tokenizer.pad_token_id))
        for rep in range(args.repeats):
            for method in methods:  # A B A B: the two methods alternate on every configuration
                model, loss = models[method][0], getattr(profile, f"{method}_config")().loss()
                with common.StepTimer() as timer, common.PeakMemory() as memory:
                    train(model, batches, timer.wrap(functools.partial(ranking_step, loss_fn=loss)),
                          steps=args.steps, lr=getattr(profile, f"{method}_lr"), warmup_steps=0,
                          weight_decay=profile.weight_decay, max_grad_norm=profile.max_grad_norm,
                          log_every=profile.log_every, seed=profile.seed, progress=False)
                entry = results.setdefault((method, n, length), {"times": [], "peak": []})
                entry["times"] += timer.times[args.warmup:]
                entry["peak"].append(memory.peak_mb)
            tokens = batch_size * n * length
            print(f"  n={n} L={length} ({tokens} tokens/step), after repeat {rep + 1}: " + ", ".join(
                f"{m} {common.ms(common.median(results[(m, n, length)]['times']))} ms" for m in methods), flush=True)
    table = []
    for method in methods:
        base = None
        for n, length in configs:
            entry = results[(method, n, length)]
            tokens = batch_size * n * length
            med = common.median(entry["times"])
            per_token = med / tokens
            base = base or per_token
            table.append([method.upper(), n, length, tokens, common.ms(med), f"{1e6 * per_token:.1f}",
                          f"{per_token / base:.2f}", f"{max(entry['peak']):.0f}", len(entry["times"])])
    return table


RANKING_HEADERS = ["method", "n", "L", "tokens/step", "median ms/step", "µs/token", "µs/token vs smallest",
                   "peak RSS MiB", "steps"]


# --------------------------------------------------------------------------------------------------------------------
# PPO
# --------------------------------------------------------------------------------------------------------------------


def ppo_stages(model_dir: Path, profile, root: Path) -> tuple[Path, Path]:
    """``root/sft/model`` (the policy's base) and ``root/reward`` (a reward adapter + normalisation.json)."""
    import shutil

    from rrhf_lite.core.models import load_for_training

    sft_dir, reward_dir = root / "sft", root / "reward"
    shutil.copytree(model_dir, sft_dir / "model", dirs_exist_ok=True)
    reward_model, reward_tokenizer = load_for_training(sft_dir / "model", profile, head="reward")
    reward_model.save_pretrained(reward_dir / "adapter")
    reward_tokenizer.save_pretrained(reward_dir / "adapter")
    (reward_dir / "normalisation.json").write_text(json.dumps({"mean": 0.0, "std": 1.0}))
    return sft_dir, reward_dir


def bench_ppo(args, model_dir: Path, profile, root: Path) -> tuple[list[list], dict]:
    import torch

    from rrhf_lite.core.logprobs import sampled_batch
    from rrhf_lite.core.sampling import generate_tokens
    from rrhf_lite.methods import ppo

    sft_dir, reward_dir = ppo_stages(model_dir, profile, root)
    from rrhf_lite.course.sources import rollout_prompts
    from rrhf_lite.course.training import ppo_models

    model, tokenizer, reward_fn = ppo_models(profile, sft_dir, reward_dir)
    n, temperature = profile.ppo_rollout_prompts, profile.sample_temperature
    prompts = ppo.fitting_prompts(tokenizer, rollout_prompts(profile, n * (args.ppo_iterations + 1)),
                                  n * (args.ppo_iterations + 1), profile.ppo_config())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=profile.ppo_lr, eps=1e-5,
                                  weight_decay=profile.weight_decay)
    controller = ppo.kl_controller(profile.ppo_config())
    phases: dict[str, list[float]] = {}
    info = {}
    for it in range(args.ppo_iterations):
        batch_prompts = prompts[it * n:(it + 1) * n]
        times = {}
        with torch.no_grad():
            with common.Stopwatch() as sw:
                generation = generate_tokens(model.policy, tokenizer, batch_prompts,
                                             max_new_tokens=profile.max_new_tokens, temperature=temperature,
                                             top_p=1.0, batch_size=profile.generation_batch_size, seed=it)
            times["generation (generate_tokens)"] = sw.seconds
            batch = sampled_batch(tokenizer, batch_prompts, generation.reply_ids)
            model.eval()
            parts: dict[str, list[torch.Tensor]] = {}
            policy_s = reference_s = 0.0
            for start in range(0, n, profile.ppo_minibatch_size):  # the chunks collect_rollout uses
                chunk = {k: v[start:start + profile.ppo_minibatch_size] for k, v in batch.items()}
                with common.Stopwatch() as sw:
                    ent, logprobs, values = ppo.policy_forward(model, chunk, temperature, with_entropy=True)
                policy_s += sw.seconds
                with common.Stopwatch() as sw:
                    ref = ppo.reference_logprobs(model, chunk, temperature)
                reference_s += sw.seconds
                for key, value in (("mask", ref.mask), ("logprobs", logprobs), ("ref_logprobs", ref.token_logps),
                                   ("values", values), ("entropy", ent)):
                    parts.setdefault(key, []).append(value)
            times["policy log-probs + values (policy_forward)"] = policy_s
            times["reference log-probs (reference_logprobs)"] = reference_s
            with common.Stopwatch() as sw:
                replies = [tokenizer.decode(ids, skip_special_tokens=True) for ids in generation.reply_ids]
                ended = torch.tensor(generation.ended)
                rm_scores, scores = ppo.score_replies(reward_fn, batch_prompts, replies, ended,
                                                      profile.ppo_no_eos_penalty)
            times["scoring (reward model, score_replies)"] = sw.seconds
            rollout = ppo.Rollout(prompts=list(batch_prompts), replies=replies, reply_ids=generation.reply_ids,
                                  ended=ended, batch=batch, rm_scores=rm_scores, scores=scores,
                                  **{k: torch.cat(v) for k, v in parts.items()})
            with common.Stopwatch() as sw:
                rewards = ppo.token_rewards(rollout.logprobs, rollout.ref_logprobs, rollout.scores, rollout.mask,
                                            beta=controller.beta, estimator=profile.ppo_kl_estimator)
                advantages, returns = ppo.advantages_and_returns(rewards, rollout.values, rollout.mask,
                                                                 gamma=profile.ppo_gamma, lam=profile.ppo_lam)
            times["rewards + advantages (token_rewards, GAE)"] = sw.seconds
        with common.Stopwatch() as sw:
            ppo.ppo_update(model, optimizer, rollout, advantages, returns, profile.ppo_config(), iteration=it,
                           generator=torch.Generator().manual_seed(it))
        times["update (ppo_update)"] = sw.seconds
        total = sum(times.values())
        print(f"  PPO iteration {it + 1}/{args.ppo_iterations}: {total:.2f} s", flush=True)
        if it >= args.ppo_warmup:
            for k, v in times.items():
                phases.setdefault(k, []).append(v)
        info = {"generated_tokens": sum(len(r) for r in generation.reply_ids),
                "rollout_tokens": int(batch["attention_mask"].sum()),
                "update_steps": profile.ppo_epochs * -(-n // profile.ppo_minibatch_size)}
    # Cross-check: the same rollout phases in one call of the library's collect_rollout
    with common.Stopwatch() as sw:
        ppo.collect_rollout(model, tokenizer, reward_fn, prompts[-n:], profile.ppo_config(), seed=99)
    info["collect_rollout_s"] = sw.seconds
    medians = {k: common.median(v) for k, v in phases.items()}
    total = sum(medians.values())
    table = [[k, common.ms(v), f"{100 * v / total:.0f}%"] for k, v in medians.items()]
    table.append(["**one iteration**", common.ms(total), "100%"])
    info["rollout_phases_s"] = total - medians["update (ppo_update)"] - medians[
        "rewards + advantages (token_rewards, GAE)"]
    return table, info


# --------------------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", default="2,4,8", help="numbers of candidates per prompt")
    parser.add_argument("--lengths", default="32,64,128", help="tokens per candidate (prompt + reply + eos)")
    parser.add_argument("--batch", type=int, default=0, help="prompts per step (default: the profile's, 8)")
    parser.add_argument("--steps", type=int, default=6, help="optimiser steps per run, warm-up included")
    parser.add_argument("--warmup", type=int, default=2, help="steps dropped at the start of every run")
    parser.add_argument("--repeats", type=int, default=2, help="A/B rounds of RRHF and PRO per configuration")
    parser.add_argument("--ppo-iterations", type=int, default=3, help="PPO iterations to time")
    parser.add_argument("--ppo-warmup", type=int, default=1, help="PPO iterations dropped at the start")
    parser.add_argument("--skip", default="", help="comma-separated: ranking, ppo")
    parser.add_argument("--json", default=None, help="also write the tables to this JSON file")
    args = parser.parse_args()
    if args.steps <= args.warmup or args.ppo_iterations <= args.ppo_warmup:
        parser.error("--steps must exceed --warmup and --ppo-iterations must exceed --ppo-warmup")
    skip = set(args.skip.split(","))

    common.single_thread()
    from rrhf_lite.course.profiles import get_profile

    lengths = [int(x) for x in args.lengths.split(",")]
    profile = get_profile("tiny", max_length=max(get_profile("tiny").max_length, *lengths))
    common.print_header("Scaling: tiny profile, OMP_NUM_THREADS=1")
    out = {"versions": common.versions(), "args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="rrhf-bench-") as tmp, common.Stopwatch() as total:
        model_dir = common.build_model_dir(Path(tmp) / "model", profile)
        if "ranking" not in skip:
            print(f"## RRHF and PRO: step time vs candidates n and tokens per candidate L "
                  f"(batch {args.batch or profile.ranking_batch_size} prompts, {args.repeats} x {args.steps} steps, "
                  f"{args.warmup} warm-up dropped per run)")
            table = bench_ranking(args, model_dir, profile)
            print()
            out["ranking"] = common.print_table(RANKING_HEADERS, table)
            print()
        if "ppo" not in skip:
            ppo_profile = get_profile("tiny")
            print(f"## PPO: one iteration ({ppo_profile.ppo_rollout_prompts} prompts x "
                  f"{ppo_profile.max_new_tokens} new tokens, {ppo_profile.ppo_epochs} epochs of minibatches of "
                  f"{ppo_profile.ppo_minibatch_size}); median of {args.ppo_iterations - args.ppo_warmup} iterations")
            table, info = bench_ppo(args, common.build_model_dir(Path(tmp) / "ppo-model", ppo_profile), ppo_profile,
                                    Path(tmp) / "ppo")
            print()
            out["ppo"] = common.print_table(["phase", "median ms", "share"], table)
            print(f"\n  {info['generated_tokens']} tokens generated, {info['rollout_tokens']} tokens in the rollout "
                  f"batch, {info['update_steps']} update steps; collect_rollout() in one call: "
                  f"{info['collect_rollout_s']:.2f} s (sum of its phases above: {info['rollout_phases_s']:.2f} s)")
            out["ppo_info"] = info
    print(f"\ntotal wall time {total.seconds / 60:.1f} min")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
