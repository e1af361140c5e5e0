"""The memory estimate (``rrhf_lite.course.memory.estimate_memory``) against what training steps measure on this CPU.

    OMP_NUM_THREADS=1 python benchmarks/bench_memory.py [--lengths 128,256] [--json FILE]

For small Qwen2-shaped models (random weights, float32, no 4-bit: what a CPU measures well), every stage's step
(SFT, reward model, DPO, RRHF) with gradient checkpointing off and on, through the library's own code
(``load_for_training``, the step functions, the shared loop): two optimiser steps, every sequence exactly
``max_length`` tokens (half prompt, half reply; no padding), after one step's forward pass without gradients (what
a process does once, lazy imports and kernels' set-up, is not training's memory). *Measured* is the resident
memory's high-water mark during training minus the RSS just before it (model, adapters and data already there;
glibc's mmap threshold fixed at 128 KiB so that freed tensors leave the RSS); *estimated* is what the estimate says
training adds: the adapters' gradients and AdamW's moments (12 of the 16 bytes per adapter parameter: the weights
exist before), the activations and the log-prob head. The goal in issue 18: within 25%.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

MODELS = {  # Qwen2 shapes, small enough for a CPU; "wide-vocab" makes the LM head's chunks matter
    "small": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=4096, tie_word_embeddings=True),
    "wide-vocab": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=65536, tie_word_embeddings=True),
}
STAGES = ("sft", "reward", "dpo", "rrhf")


def worker(spec: dict) -> None:
    import functools

    import torch

    common.single_thread()
    from rrhf_lite.core.logprobs import pad_batch
    from rrhf_lite.core.loop import train
    from rrhf_lite.core.models import load_for_training
    from rrhf_lite.course.memory import ADAPTER_BYTES, GIB, Shapes, adapter_parameters, estimate_memory
    from rrhf_lite.course.profiles import get_profile
    from rrhf_lite.methods.dpo import add_reference_logprobs, collate_preferences, dpo_step
    from rrhf_lite.methods.ranking import collate_rankings, ranking_step
    from rrhf_lite.methods.reward import collate_comparisons, reward_step
    from rrhf_lite.methods.sft import sft_step

    stage, length = spec["stage"], spec["length"]
    profile = get_profile("tiny", max_length=length, gradient_checkpointing=spec["checkpointing"], sft_batch_size=4,
                          rm_batch_size=2, dpo_batch_size=2, ranking_batch_size=1)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        # a tokenizer of 1,000 tokens with its own pad token; the vocabulary's rows are the shapes' own
        path = common.save_random_qwen2(Path(tmp) / "model", MODELS[spec["model"]], tokens=1000, dialogues=500,
                                        pad="<|pad|>")
        model, tokenizer = load_for_training(path, profile, head="reward" if stage == "reward" else "lm")
    estimate = estimate_memory(profile, model.config, stage)
    g = torch.Generator().manual_seed(0)

    def sequence() -> dict:
        ids = torch.randint(10, 1000, (length,), generator=g).tolist()
        return {"input_ids": ids, "response_mask": [0] * (length // 2) + [1] * (length - length // 2)}

    pad = tokenizer.pad_token_id
    rows, count = [], 2 * estimate.sequences
    if stage == "sft":
        rows, collate = [sequence() for _ in range(count)], functools.partial(pad_batch, pad_token_id=pad)
        step, batch_size = sft_step, profile.sft_batch_size
    elif stage == "reward":
        rows = [{"chosen": sequence()["input_ids"], "rejected": sequence()["input_ids"]} for _ in range(count)]
        collate, step = functools.partial(collate_comparisons, pad_token_id=pad), reward_step
        batch_size = profile.rm_batch_size
    elif stage == "dpo":
        rows = add_reference_logprobs(model, [{"chosen": sequence(), "rejected": sequence()} for _ in range(count)],
                                      pad)
        collate = functools.partial(collate_preferences, pad_token_id=pad)
        step, batch_size = functools.partial(dpo_step, beta=0.1), profile.dpo_batch_size
    else:
        per_prompt = estimate.sequences // profile.ranking_batch_size
        rows = [{"candidates": [sequence() for _ in range(per_prompt)],
                 "scores": [float(-i) for i in range(per_prompt)]} for _ in range(count)]
        collate = functools.partial(collate_rankings, pad_token_id=pad)
        step, batch_size = functools.partial(ranking_step, loss_fn=profile.rrhf_config().loss()), \
            profile.ranking_batch_size
    batches = torch.utils.data.DataLoader(rows, batch_size=batch_size, collate_fn=collate)
    with torch.no_grad():  # what runs once per process (lazy imports, kernels' set-up) runs before the measurement
        step(model, next(iter(batches)))
    with common.PeakMemory() as memory:
        train(model, batches, step, steps=2, lr=1e-4, log_every=2, seed=0, progress=False)
    adapters = adapter_parameters(Shapes.from_config(model.config), profile)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # what training adds to the RSS: everything but the weights and the adapters' own float32 matrices
    expected = estimate.total - estimate.parts["weights"] - estimate.parts["adapters"] * 4 / ADAPTER_BYTES
    common.emit_result({**spec, "sequences": estimate.sequences, "measured_mib": memory.delta_mb,
                        "estimated_mib": expected / 2**20,
                        "parts_mib": {k: v / 2**20 for k, v in estimate.parts.items()}, "adapter_parameters": adapters,
                        "trainable_parameters": trainable, "hwm_reset": memory.hwm_reset,
                        "estimate_gib": estimate.total / GIB})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="128,256")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    common.print_header("memory estimate vs measured training-step memory (CPU, float32)")
    rows, results = [], []
    for model in args.models.split(","):
        for stage in args.stages.split(","):
            for length in [int(x) for x in args.lengths.split(",")]:
                for checkpointing in (False, True):
                    spec = {"model": model, "stage": stage, "length": length, "checkpointing": checkpointing}
                    r = common.run_worker(__file__, spec, timeout=1800, extra_env={"MALLOC_MMAP_THRESHOLD_": "131072"})
                    results.append(r)
                    ratio = r["estimated_mib"] / r["measured_mib"]
                    rows.append([model, stage, length, "on" if checkpointing else "off", r["sequences"],
                                 f"{r['measured_mib']:.0f}", f"{r['estimated_mib']:.0f}", f"{ratio:.2f}",
                                 "yes" if abs(ratio - 1) <= 0.25 else "NO"])
                    print(f"  {model} {stage} L={length} checkpointing={checkpointing}: {ratio:.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print()
    common.print_table(["model", "stage", "L", "checkpointing", "sequences", "measured MiB", "estimated MiB",
                        "estimated / measured", "within 25%"], rows)


if __name__ == "__main__":
    common.main_or_worker(main, worker)
