"""Local stand-ins for what the real track downloads, so that its code path runs on a machine with no model hub.

The ``colab-t4`` profile downloads three things: a base model (``Qwen/Qwen2.5-0.5B``), a preference dataset
(``Anthropic/hh-rlhf``) and a judge (a public reward model). The ``rehearsal`` profile names
``"stand-in:<name>"`` instead, and this module builds each stand-in the first time it is asked for, into the stage
cache (``runs/<profile>/stand-ins/<key>/<name>``), in the *form* of the real thing:

* ``qwen2``: a ``Qwen2ForCausalLM`` (Qwen2.5's architecture: grouped-query attention, biased q/k/v projections,
  tied embeddings) with random weights, saved with ``save_pretrained``. Its tokenizer is a byte-level BPE like
  Qwen's, with end-of-sequence ``<|endoftext|>``, no beginning-of-sequence token and **no pad token of its own**
  (saved without one; loaded, Qwen2's tokenizer class pads with ``<|endoftext|>``, as the hub's does), and an
  embedding matrix with a few spare rows, as Qwen's has (151,936 rows for 151,665 tokens): room for the pad token
  the package adds.
* ``hh-rlhf``: ``train.jsonl`` and ``test.jsonl`` in HH-RLHF's raw format, whole ``chosen`` and ``rejected``
  dialogues with ``"\\n\\nHuman:"`` / ``"\\n\\nAssistant:"`` turns, a third of them multi-turn. The dialogues come
  from the tiny world, labelled by its noisy labellers, so they are as noisy as HH's.
* ``reward-model``: a ``Qwen3ForSequenceClassification`` with one label and random weights, the architecture of
  the ``colab-t4`` judge (Skywork-Reward-V2-Qwen3-0.6B), with its own tokenizer and a ChatML chat template.

Random weights say nothing about quality; what the rehearsal checks is that every stage of the real path runs:
loading with the Auto classes, 4-bit quantisation, a tokenizer without a pad token, multi-turn parsing, a judge
with another tokenizer and a chat template.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import torch
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForSequenceClassification,
)

from rrhf_lite.core.models import train_byte_level_bpe
from rrhf_lite.course.stages import build_or_load
from rrhf_lite.course.world import TinyWorld, expert_response

STAND_IN = "stand-in:"
STAND_INS = ("qwen2", "hh-rlhf", "reward-model")
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
# ChatML, the format of Qwen's chat templates: what the judge stand-in reads, as the real judge does.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TRAIN_ROWS, TEST_ROWS = 480, 160  # HH-format comparisons written per split
MULTI_TURN_FRACTION = 1 / 3  # share of dialogues with an earlier exchange before the compared reply
STANDIN_FIELDS = ("seed", "world_harmful_fraction", "world_label_temperature", "world_test_fraction",
                  "tokenizer_vocab_size", "n_layer", "n_head", "hidden_size", "intermediate_size", "max_length")


def is_stand_in(source) -> bool:
    return isinstance(source, str) and source.startswith(STAND_IN)


def hh_dialogues(world: TinyWorld, n: int, split: str) -> list[dict[str, str]]:
    """``n`` comparisons in HH-RLHF's raw format: ``{"chosen": dialogue, "rejected": dialogue}``.

    Both dialogues share every turn but the last reply. A share :data:`MULTI_TURN_FRACTION` of them starts with an
    earlier exchange (another request of the same split, answered by the expert), as many HH dialogues do.
    """
    pairs = world.preference_dataset(n, split)
    earlier = world.sample_prompts(n, split)
    rng = random.Random(f"stand-in-turns-{world.seed}-{split}")
    rows = []
    for row, before in zip(pairs, earlier):
        history = before + expert_response(before) if rng.random() < MULTI_TURN_FRACTION else ""
        rows.append({"chosen": history + row["prompt"] + row["chosen"],
                     "rejected": history + row["prompt"] + row["rejected"]})
    return rows


def _rows_with_room(n_tokens: int, multiple: int = 64) -> int:
    """Embedding rows for ``n_tokens``: rounded up past them to a multiple of 64, with at least one spare row."""
    return math.ceil((n_tokens + 1) / multiple) * multiple


def build_base_model(texts: list[str], profile, out: Path) -> None:
    """The ``qwen2`` stand-in: tokenizer (eos ``<|endoftext|>``, no bos, no pad) and a random-weight Qwen2."""
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=train_byte_level_bpe(texts, profile.tokenizer_vocab_size,
                                                                        [ENDOFTEXT]),
                                        eos_token=ENDOFTEXT, clean_up_tokenization_spaces=False,
                                        model_max_length=32_768)
    eos = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    config = Qwen2Config(vocab_size=_rows_with_room(len(tokenizer)), hidden_size=profile.hidden_size,
                         intermediate_size=profile.intermediate_size, num_hidden_layers=profile.n_layer,
                         num_attention_heads=profile.n_head, num_key_value_heads=max(1, profile.n_head // 2),
                         max_position_embeddings=max(1024, profile.max_length), tie_word_embeddings=True,
                         bos_token_id=eos, eos_token_id=eos)
    torch.manual_seed(profile.seed)
    Qwen2ForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


def build_judge(texts: list[str], profile, out: Path) -> None:
    """The ``reward-model`` stand-in: a random-weight Qwen3 reward model with a ChatML tokenizer of its own."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_byte_level_bpe(texts, profile.tokenizer_vocab_size, [ENDOFTEXT, IM_START, IM_END]),
        eos_token=IM_END, pad_token=ENDOFTEXT, chat_template=CHATML_TEMPLATE, clean_up_tokenization_spaces=False,
        model_max_length=32_768)
    head_dim = profile.hidden_size // profile.n_head
    config = Qwen3Config(vocab_size=_rows_with_room(len(tokenizer)), hidden_size=profile.hidden_size,
                         intermediate_size=profile.intermediate_size, num_hidden_layers=profile.n_layer,
                         num_attention_heads=profile.n_head, num_key_value_heads=max(1, profile.n_head // 2),
                         head_dim=head_dim, max_position_embeddings=max(1024, profile.max_length),
                         num_labels=1, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(profile.seed + 1)
    Qwen3ForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


def build_stand_ins(profile, out: Path) -> None:
    """Write every stand-in into ``out``: ``qwen2/``, ``hh-rlhf/{train,test}.jsonl``, ``reward-model/``."""
    world = TinyWorld.from_profile(profile)
    data = out / "hh-rlhf"
    data.mkdir(parents=True)
    texts = []
    for split, n in (("train", TRAIN_ROWS), ("test", TEST_ROWS)):
        rows = hh_dialogues(world, n, split)
        (data / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        texts += [row[c] for row in rows for c in ("chosen", "rejected")]
    build_base_model(texts, profile, out / "qwen2")
    build_judge(texts, profile, out / "reward-model")


def stand_ins_stage(profile, force: bool = False) -> Path:
    """The folder holding every stand-in, built on first use and cached like any stage."""
    return build_or_load("stand-ins", profile, STANDIN_FIELDS, lambda out: build_stand_ins(profile, out),
                         depends_on=[f"rows={TRAIN_ROWS}/{TEST_ROWS}"], code=("course.standins",), force=force)


def resolve(source: str | None, profile) -> str | Path | None:
    """Where a profile's model, data or judge comes from: a hub id or a local path as given, or the folder of a
    stand-in (``"stand-in:qwen2"`` -> ``runs/<profile>/stand-ins/<key>/qwen2``, built first if needed)."""
    if not is_stand_in(source):
        return source
    name = source[len(STAND_IN):]
    if name not in STAND_INS:
        raise ValueError(f"unknown stand-in {source!r}; there are {[STAND_IN + s for s in STAND_INS]}")
    return stand_ins_stage(profile) / name
