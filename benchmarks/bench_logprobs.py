"""The log-prob part of a DPO and an RRHF step at a real vocabulary: peak memory and time of three ways to compute it.

    OMP_NUM_THREADS=1 python benchmarks/bench_logprobs.py [--lengths 256,512,1024] [--repeats 3] [--trl]

What is measured is the part of a training step between the decoder and the loss, where the vocabulary lives: from
the last hidden states of a Qwen2.5-0.5B-wide model (896) through a frozen LM head of Qwen's real vocabulary
(151,936 x 896, float32 on the CPU) to the response tokens' log-probs, the method's loss (``rrhf_lite.core.losses``:
DPO on chosen + rejected with cached reference log-probs; RRHF on 4 candidates per prompt), and the backward pass
into the hidden states, where the decoder's own backward would take over. The decoder is the same for every side and
is left out, so the figures are those of the part that differs. Every sequence has exactly ``L`` tokens, of which
the prompt takes a random 25-75% (the batch's shortest prompt decides where the materialised path starts).

Sides, each run in its own subprocess, alternating within every repeat (A B C A B C ...):

* ``materialised``: the library before chunking (commit bef84c3), as its ``sequence_logprobs`` did it: logits from
  the batch's first response position on (``logits_to_keep``), a float32 copy of the response positions,
  log-softmax, gather; autograd keeps what it needs for the backward.
* ``chunked``: the library now, :func:`rrhf_lite.core.logprobs.head_logprobs`: only response positions, at most
  ``LOGIT_CHUNK_ELEMENTS`` logits at a time, the gradient with respect to the hidden states formed in the forward.
* ``trl``: TRL 1.16's ``ChunkedLogProbFunction`` (needs ``pip install trl==1.16.0``; the ``bench`` extra), called as
  its trainers call it without Triton, i.e. on a CPU: over every position of the sequence, chunks of 32,768
  vocabulary entries, 4,096 positions per tile; ``--trl-compact`` adds the GPU variant (response positions only).

Peak memory is the resident set size's high-water mark during the first step of a fresh process minus the RSS
before it (hidden states and head already allocated), with glibc's mmap threshold fixed at 128 KiB so that every
large tensor is returned to the system when freed; time is the CPU time of the later steps (one thread), median.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

VOCAB, HIDDEN = 151_936, 896  # Qwen2.5-0.5B: vocabulary and width
SIDES = ("materialised", "chunked")


def make_batch(sequences: int, length: int, seed: int):
    """Hidden states ``[S, L, HIDDEN]`` (a leaf that wants a gradient), token ids and a response mask."""
    import torch

    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(sequences, length, HIDDEN, generator=g).requires_grad_(True)
    input_ids = torch.randint(0, VOCAB, (sequences, length), generator=g)
    prompt = torch.randint(length // 4, 3 * length // 4 + 1, (sequences,), generator=g)
    response_mask = (torch.arange(length)[None, :] >= prompt[:, None]).long()
    return hidden, {"input_ids": input_ids, "response_mask": response_mask}


def materialised_logprobs(hidden, head, batch):
    """Per-sequence summed log-probs the way ``sequence_logprobs`` computed them before the chunked head."""
    import torch
    import torch.nn.functional as F

    mask = batch["response_mask"][:, 1:].bool()
    first = int(mask.float().argmax(dim=1).min())
    logits = head(hidden[:, first:])[:, :-1]  # what logits_to_keep = L - first returned, minus the last position
    kept = batch["response_mask"][:, 1 + first:].bool()
    picked = logits[kept].float()
    values = F.log_softmax(picked, dim=-1).gather(-1, batch["input_ids"][:, 1 + first:][kept][:, None])[:, 0]
    grid = torch.zeros(kept.shape, dtype=values.dtype).masked_scatter(kept, values)
    return grid.sum(-1)


def chunked_logprobs(hidden, head, batch):
    from rrhf_lite.core.logprobs import head_logprobs

    kept = batch["response_mask"][:, 1:].bool()
    logps, _ = head_logprobs(hidden[:, :-1][kept], head, batch["input_ids"][:, 1:][kept])
    return kept.new_zeros(kept.shape, dtype=logps.dtype).masked_scatter(kept, logps).sum(-1)


def trl_logprobs(hidden, head, batch, compact: bool):
    from trl.kernels import ChunkedLogProbFunction

    labels = batch["input_ids"][:, 1:]
    kept = batch["response_mask"][:, 1:].bool()
    states = hidden[:, :-1]
    rows, targets = (states[kept], labels[kept]) if compact else (states.reshape(-1, HIDDEN), labels.reshape(-1))
    logps = ChunkedLogProbFunction.apply(rows, head.weight, None, targets, 1.0, 32768, None, 1.0, ())[0]
    grid = kept.new_zeros(kept.shape, dtype=logps.dtype)
    grid = grid.masked_scatter(kept, logps) if compact else logps.view(kept.shape).masked_fill(~kept, 0)
    return grid.sum(-1)


def loss_of(task: str, sums, lengths):
    """DPO on (chosen, rejected) halves with fixed reference log-probs; RRHF on groups of 4 candidates."""
    import torch

    from rrhf_lite.core.losses import dpo_loss, rrhf_loss

    if task == "dpo":
        chosen, rejected = sums.chunk(2)
        ref = torch.linspace(-1.0, 1.0, len(chosen))
        return dpo_loss(chosen, rejected, chosen.detach() + ref, rejected.detach() - ref, beta=0.1).loss
    groups = len(sums) // 4
    rewards = torch.arange(4, dtype=torch.float32).repeat(groups, 1)
    return rrhf_loss(sums.view(groups, 4), lengths.view(groups, 4).float(), rewards).loss


def worker(spec: dict) -> None:
    import time

    import torch

    common.single_thread()
    torch.manual_seed(0)
    head = torch.nn.Linear(HIDDEN, VOCAB, bias=False).requires_grad_(False)
    torch.nn.init.normal_(head.weight, std=0.02)
    fn = {"materialised": materialised_logprobs, "chunked": chunked_logprobs,
          "trl": lambda h, m, b: trl_logprobs(h, m, b, compact=False),
          "trl-compact": lambda h, m, b: trl_logprobs(h, m, b, compact=True)}[spec["side"]]
    times, peaks, values = [], [], []
    for step in range(spec["steps"]):
        hidden, batch = make_batch(spec["sequences"], spec["length"], seed=step)
        with common.PeakMemory() as memory:
            start = time.thread_time()
            sums = fn(hidden, head, batch)
            loss = loss_of(spec["task"], sums, batch["response_mask"][:, 1:].sum(-1))
            loss.backward()
            seconds = time.thread_time() - start
        values.append((loss.item(), hidden.grad.abs().sum().item()))
        times.append(seconds)
        peaks.append(memory.delta_mb)
    common.emit_result({"side": spec["side"], "task": spec["task"], "length": spec["length"],
                        "sequences": spec["sequences"], "times": times, "peaks_mb": peaks, "values": values,
                        "hwm_reset": memory.hwm_reset})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="256,512,1024")
    parser.add_argument("--sequences", default="16,8,4", help="sequences per step at each length (DPO: half chosen; "
                        "RRHF: groups of 4)")
    parser.add_argument("--tasks", default="dpo,rrhf")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2, help="steps per run (the first is dropped: warm-up)")
    parser.add_argument("--trl", action="store_true", help="also TRL 1.16's chunked function (needs trl installed)")
    parser.add_argument("--trl-compact", action="store_true", help="and TRL's function on response positions only")
    parser.add_argument("--json", default=None, help="write every run's raw figures here")
    args = parser.parse_args()
    sides = SIDES + (("trl",) if args.trl else ()) + (("trl-compact",) if args.trl_compact else ())
    lengths = [int(x) for x in args.lengths.split(",")]
    sequences = [int(x) for x in args.sequences.split(",")]
    common.print_header(f"log-prob part of a step: vocabulary {VOCAB:,}, hidden {HIDDEN}, sides {', '.join(sides)}")
    runs = []
    for task in args.tasks.split(","):
        for length, count in zip(lengths, sequences):
            for repeat in range(args.repeats):
                for side in sides:
                    spec = {"side": side, "task": task, "length": length, "sequences": count, "steps": args.steps}
                    runs.append(common.run_worker(__file__, spec, timeout=3600,
                                                  extra_env={"MALLOC_MMAP_THRESHOLD_": "131072"}))
                    print(f"  {task} L={length} x{count} repeat {repeat + 1}: {side} done", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))
    rows = []
    for task in args.tasks.split(","):
        for length, count in zip(lengths, sequences):
            mine = {side: [r for r in runs if (r["task"], r["length"], r["side"]) == (task, length, side)]
                    for side in sides}
            stats = {side: (common.median(t for r in rs for t in r["times"][1:]),
                            common.median(r["peaks_mb"][0] for r in rs)) for side, rs in mine.items()}
            base_t, base_m = stats["materialised"]
            for side in sides:
                t, m = stats[side]
                loss = mine[side][0]["values"][0][0]
                rows.append([task, length, count, side, f"{t:.2f}", f"{t / base_t:.2f}", f"{m:.0f}",
                             f"{m / base_m:.2f}", f"{loss:.6f}"])
    print()
    common.print_table(["step", "L", "sequences", "side", "CPU s", "time vs materialised", "peak Δ MiB",
                        "memory vs materialised", "loss (step 1)"], rows)


if __name__ == "__main__":
    common.main_or_worker(main, worker)
