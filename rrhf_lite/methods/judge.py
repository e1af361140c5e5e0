"""The gold judge on real data: a public reward model that the course does not train.

On the tiny world the gold judge is a rule (:func:`rrhf_lite.course.world.judge`). On HH-RLHF nobody can grade every
sample by hand, so the real profiles follow Gao et al. (2022): a larger, independent reward model plays the humans, and
everything the tiny world's judge measures is measured with it instead: the gold reward and win rate of every
method, the reward-KL frontier, over-optimisation, and the labels of the online round (its scores seen through
Bradley-Terry noise, as the tiny world's labellers see theirs).

The judge reads a dialogue as chat messages, rendered with *its own* tokenizer's chat template (a reward model is
trained on one format and should be read in it): the HH text ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` becomes
``[{"role": "user", ...}, {"role": "assistant", ...}, ...]`` (:func:`rrhf_lite.core.preferences.parse_turns`). Its score
is the classification head's single output at the last token. Like the proxy's, its scores are normalised to mean 0 and
standard deviation 1 on the SFT model's samples (``pipeline.judge_stage``), so a judge score of +0.5 means "half a
standard deviation better than a typical SFT reply".
"""

from __future__ import annotations

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rrhf_lite.core.logprobs import in_given_order, length_batches
from rrhf_lite.core.models import check_finite_weights, default_device, hub_revision, quiet_loading
from rrhf_lite.core.preferences import parse_turns


def load_judge(path, dtype: str = "float32", revision: str | None = None):
    """The judge model (frozen, in ``dtype``, on the GPU if there is one) and its tokenizer; ``revision``: the hub
    commit to load it at."""
    pinned = hub_revision(path, revision)
    tokenizer = AutoTokenizer.from_pretrained(path, **pinned)
    with quiet_loading():
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=getattr(torch, dtype), **pinned)
    check_finite_weights(model, path)
    if getattr(model.config, "num_labels", 1) != 1:
        raise ValueError(f"the judge at {path} has {model.config.num_labels} labels; a reward model has one")
    return model.to(default_device()).eval(), tokenizer


def render(tokenizer, prompt: str, reply: str) -> str:
    """The dialogue ``prompt + reply`` as the judge reads it: its chat template, else the HH text itself."""
    if not tokenizer.chat_template:
        return prompt + reply
    return tokenizer.apply_chat_template(parse_turns(prompt + reply), tokenize=False)


@torch.no_grad()
def judge_scores(model, tokenizer, prompts: list[str], replies: list[str], max_length: int,
                 batch_size: int = 16) -> torch.Tensor:
    """The judge's raw score of every (prompt, reply), ``[N]`` on the CPU, in batches of similar length
    (:func:`rrhf_lite.core.logprobs.length_batches`: HH-RLHF's dialogues run from one turn to many).

    Dialogues longer than ``max_length`` tokens lose their start (the reply is what is judged). Without a pad token
    the judge reads one dialogue at a time, so no padding can be mistaken for text.
    """
    if tokenizer.pad_token_id is None:
        batch_size = 1
    old_side, tokenizer.truncation_side = tokenizer.truncation_side, "left"
    # a chat template writes every special token the judge expects (a bos, say): add none twice
    encode = dict(add_special_tokens=not tokenizer.chat_template, truncation=True, max_length=max_length)
    try:
        texts = [render(tokenizer, p, r) for p, r in zip(prompts, replies)]
        batches = length_batches([len(ids) for ids in tokenizer(texts, **encode)["input_ids"]] if texts else [],
                                 batch_size)
        scores = []
        for rows in batches:
            enc = tokenizer([texts[i] for i in rows], **encode, padding=len(rows) > 1,
                            return_tensors="pt").to(model.device)
            scores.append(model(**enc, use_cache=False).logits[:, 0].float().cpu())
    finally:
        tokenizer.truncation_side = old_side
    return in_given_order(batches, scores)
