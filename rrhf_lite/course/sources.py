"""What a profile's data is: demonstrations, comparisons, prompts, from the tiny world or from real preference data.

One function per kind of data, the same for every profile; only here does the tiny world differ from HH-RLHF:

* :func:`sft_data`: demonstrations, ``prompt/completion`` (the world's, or the dataset's chosen replies, as in the DPO
  paper);
* :func:`preference_data`: comparisons, ``prompt/chosen/rejected``, from the train or test split;
* :func:`eval_prompts` / :func:`evaluation_prompts`: the held-out prompts every lesson measures on;
* :func:`candidate_prompts`: the training prompts of the ranking data, each with its "expert" replies.

Real data comes through :func:`rrhf_lite.core.preferences.load_preferences`, so ``profile.dataset`` can be a hub id, a
local file or folder (HH-RLHF's raw dialogues, ``prompt/chosen/rejected`` strings, or conversational messages), or a
stand-in of the ``rehearsal`` profile (:mod:`rrhf_lite.course.standins`).
"""

from __future__ import annotations

from rrhf_lite.course.standins import resolve
from rrhf_lite.course.world import TinyWorld, expert_response

TINY_WORLD = "tiny-world"


def is_tiny_world(profile) -> bool:
    """Whether the profile trains on the synthetic world (which has its own gold judge and labellers)."""
    return profile.dataset == TINY_WORLD


def has_gold(profile) -> bool:
    """Whether the profile has a gold judge: the tiny world's, or a ``judge_model`` on real data."""
    return is_tiny_world(profile) or profile.judge_model is not None


def gold_name(profile) -> str:
    """What "gold" means in this profile, for titles and printouts."""
    if is_tiny_world(profile):
        return "gold judge"
    return f"judge ({profile.judge_model})" if profile.judge_model else "no judge"


def preference_data(profile, split: str, n: int):
    """``n`` comparisons, ``prompt/chosen/rejected``, from the train or test split.

    Every dialogue of the course is in HH-RLHF's turn format (``"\n\nHuman: ...\n\nAssistant:"``): the base
    models are fine-tuned on it, and the judge reads it back into chat messages (:mod:`rrhf_lite.methods.judge`). So
    conversational data is rendered in that format here, not with a chat template
    (:func:`rrhf_lite.core.preferences.load_preferences` can do either).
    """
    if is_tiny_world(profile):
        return TinyWorld.from_profile(profile).preference_dataset(n, split)
    from rrhf_lite.core.preferences import load_preferences

    return load_preferences(str(resolve(profile.dataset, profile)), split=split, max_rows=n,
                            revision=profile.dataset_revision)


def sft_data(profile):
    """Demonstrations, ``prompt/completion``: the world's, or the dataset's chosen replies (as in the DPO paper)."""
    if is_tiny_world(profile):
        return TinyWorld.from_profile(profile).sft_dataset(profile.sft_examples,
                                                           expert_fraction=profile.sft_expert_fraction)
    pairs = preference_data(profile, "train", profile.sft_examples)
    return pairs.rename_column("chosen", "completion").remove_columns(["rejected"])


def eval_prompts(profile) -> list[str]:
    """``profile.eval_prompts`` distinct held-out prompts, on which every lesson samples and judges its model.

    Tiny world: test requests, none of them in any training data
    (:meth:`~rrhf_lite.course.world.TinyWorld.held_out_prompts`). Real data: the first distinct prompts of the test
    split (HH-RLHF repeats some prompts across rows); fewer if the split has fewer.
    """
    if is_tiny_world(profile):
        return TinyWorld.from_profile(profile).held_out_prompts(profile.eval_prompts)
    rows = preference_data(profile, "test", 4 * profile.eval_prompts)["prompt"]
    return list(dict.fromkeys(rows))[:profile.eval_prompts]


def evaluation_prompts(profile) -> list[str]:
    """The held-out prompts, each ``eval_samples_per_prompt`` times: what a model is measured on (see 08). Replies
    to one prompt are not independent, so intervals resample the distinct prompts
    (:func:`rrhf_lite.methods.evaluate.bootstrap_interval`)."""
    return eval_prompts(profile) * profile.eval_samples_per_prompt


def comparison_prompts(profile, n: int) -> list[str]:
    """The prompts of the first ``n`` training comparisons (the same ones on every call): where rewards are
    normalised on the SFT model's samples."""
    return list(preference_data(profile, "train", n)["prompt"])


def rollout_prompts(profile, n: int) -> list[str]:
    """``n`` training prompts for PPO's rollouts: the tiny world's train split, or the dataset's train prompts."""
    if is_tiny_world(profile):
        return TinyWorld.from_profile(profile).sample_prompts(n, "train")
    return list(preference_data(profile, "train", n)["prompt"])


def candidate_prompts(profile) -> tuple[list[str], list[list[str]]]:
    """Training prompts for the ranking data and, per prompt, the "expert" replies that join the candidates.

    Tiny world: the world's best reply. Real data: the dataset's chosen and rejected replies, as RRHF does.
    """
    if is_tiny_world(profile):
        prompts = TinyWorld.from_profile(profile).sample_prompts(profile.sample_prompts, "train")
        return prompts, [[expert_response(p)] for p in prompts]
    pairs = preference_data(profile, "train", profile.sample_prompts)
    return list(pairs["prompt"]), [[c, r] for c, r in zip(pairs["chosen"], pairs["rejected"])]
