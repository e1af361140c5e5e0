"""Candidate replies from several sources, scored, saved as the datasets RRHF, PRO and DPO train on.

RRHF (Yuan et al. 2023) ranks replies from *several* sources for each prompt: the model's own samples, samples
of other models, and human-written replies (on HH-RLHF, the dataset's chosen and rejected ones), all scored by a
reward model. Here the sources are the SFT policy, the base model, and the "experts" (the tiny world's best reply;
HH-RLHF's chosen and rejected replies on the real profiles). The outputs use the ecosystem's column names:

* rankings: ``prompt / responses / scores`` (+ ``sources``, and ``gold_scores`` on the tiny world);
* pairs: ``prompt / chosen / rejected``, the best and the worst reply of each ranking by score.

**Perplexity filtering** (Kutalev and Markoff 2024) builds a preference set *fitted to a target model*: score every
reply's perplexity under that model and keep the pairs whose replies the model could plausibly have written
(perplexity under a threshold, or under a quantile of what was seen). Replies far outside the model's own
distribution (a stranger's phrasing, text from a much stronger model) teach an offline method such as DPO little
and can pull it where it cannot follow.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rrhf_lite.core.validation import validate_rankings


def merge_sources(sources: dict[str, list[list[str]]]) -> tuple[list[list[str]], list[list[str]]]:
    """Per prompt, the replies of every source one after the other, and which source wrote each one.

    ``sources`` maps a source's name to its replies, one list per prompt (all sources cover the same prompts).
    """
    lengths = {name: len(replies) for name, replies in sources.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"every source must cover the same prompts; replies per source: {lengths}")
    n_prompts = next(iter(lengths.values()))
    responses = [[r for replies in sources.values() for r in replies[i]] for i in range(n_prompts)]
    labels = [[name for name, replies in sources.items() for _ in replies[i]] for i in range(n_prompts)]
    return responses, labels


def build_rankings(prompts: list[str], sources: dict[str, list[list[str]]], score_fn, gold_fn=None):
    """Score every reply and return a ``prompt / responses / scores / sources`` dataset (+ ``gold_scores``).

    ``score_fn(prompts, replies) -> list[float]`` is the proxy (the reward model); ``gold_fn``, with the same
    signature, the gold judge where there is one. Both are called once on all replies, flattened. The result is
    checked with :func:`rrhf_lite.core.validation.validate_rankings`: a score that is not a finite number (a reward
    model gone NaN) raises :class:`rrhf_lite.core.validation.DataValidationError` naming the row; empty samples are
    kept, with a warning.
    """
    import datasets

    responses, labels = merge_sources(sources)
    if len(responses) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but the sources cover {len(responses)}")
    flat_prompts = [p for p, rs in zip(prompts, responses) for _ in rs]
    flat_replies = [r for rs in responses for r in rs]
    columns = {"prompt": prompts, "responses": responses, "sources": labels,
               "scores": _unflatten(list(score_fn(flat_prompts, flat_replies)), responses)}
    if gold_fn is not None:
        columns["gold_scores"] = _unflatten(list(gold_fn(flat_prompts, flat_replies)), responses)
    validate_rankings(columns, allow_empty_responses=True, min_candidates=1)
    return datasets.Dataset.from_dict(columns)


def _unflatten(values: list[float], like: list[list]) -> list[list[float]]:
    out, start = [], 0
    for group in like:
        out.append([float(v) for v in values[start:start + len(group)]])
        start += len(group)
    return out


def rankings_to_pairs(rankings):
    """``prompt / chosen / rejected``: the best- and the worst-scored reply of each ranking.

    Rankings whose best and worst scores are equal carry no preference and are dropped. Extra columns:
    ``score_chosen``/``score_rejected``, and ``gold_chosen``/``gold_rejected`` when the rankings have gold scores.
    """
    import datasets

    validate_rankings(rankings, allow_empty_responses=True, min_candidates=1)
    has_gold = "gold_scores" in rankings.column_names
    rows: dict[str, list] = {k: [] for k in ("prompt", "chosen", "rejected", "score_chosen", "score_rejected")}
    if has_gold:
        rows.update(gold_chosen=[], gold_rejected=[])
    for row in rankings:
        scores = row["scores"]
        best = max(range(len(scores)), key=scores.__getitem__)
        worst = min(range(len(scores)), key=scores.__getitem__)
        if scores[best] == scores[worst]:
            continue
        rows["prompt"].append(row["prompt"])
        rows["chosen"].append(row["responses"][best])
        rows["rejected"].append(row["responses"][worst])
        rows["score_chosen"].append(scores[best])
        rows["score_rejected"].append(scores[worst])
        if has_gold:
            rows["gold_chosen"].append(row["gold_scores"][best])
            rows["gold_rejected"].append(row["gold_scores"][worst])
    return datasets.Dataset.from_dict(rows)


def perplexities(model, tokenizer, prompts: list[str], responses: list[str], max_length: int,
                 batch_size: int = 64) -> torch.Tensor:
    """Perplexity of each response given its prompt under ``model``: ``exp(-mean log-prob of its tokens)``."""
    from rrhf_lite.core.logprobs import response_logprobs

    sums, counts = response_logprobs(model, tokenizer, prompts, responses, max_length, batch_size)
    return torch.exp(-sums / counts.clamp(min=1))


@dataclass
class PerplexityFilter:
    """What :func:`perplexity_filter` kept, with the threshold it used and the share of pairs kept."""

    dataset: object  # the kept pairs (a datasets.Dataset)
    threshold: float  # the perplexity above which a reply was too unlikely under the target model
    kept_fraction: float  # len(dataset) / pairs given


def perplexity_filter(pairs, *, max_perplexity: float | None = None, quantile: float | None = None,
                      chosen_column: str = "ppl_chosen", rejected_column: str = "ppl_rejected") -> PerplexityFilter:
    """Keep the pairs whose chosen *and* rejected replies have perplexity at most a threshold.

    Give the threshold directly (``max_perplexity``) or as a ``quantile`` of all replies' perplexities (0.5 keeps
    pairs whose both replies are at most the median). The perplexities are columns of ``pairs`` (see
    :func:`perplexities`).
    """
    if (max_perplexity is None) == (quantile is None):
        raise ValueError("give exactly one of max_perplexity and quantile")
    for column in (chosen_column, rejected_column):
        if column not in pairs.column_names:
            raise ValueError(f"pairs have no column {column!r}; add perplexities first (columns: {pairs.column_names})")
    chosen, rejected = torch.tensor(pairs[chosen_column]), torch.tensor(pairs[rejected_column])
    if quantile is not None:
        if not 0.0 < quantile <= 1.0:
            raise ValueError(f"quantile must be in (0, 1], got {quantile}")
        threshold = torch.quantile(torch.cat([chosen, rejected]).double(), quantile).item()
    else:
        threshold = float(max_perplexity)
    keep = ((chosen <= threshold) & (rejected <= threshold)).nonzero().flatten().tolist()
    return PerplexityFilter(pairs.select(keep), threshold, len(keep) / max(1, len(pairs)))
