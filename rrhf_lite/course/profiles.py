"""Profiles: every hyperparameter of a run, in one dataclass per hardware target.

A *profile* says which model and data a run uses and how hard it trains. There are four:

* ``tiny`` (the default): a ~1M-parameter Llama built from scratch on the synthetic preference world of
  :mod:`rrhf_lite.course.world`. Fully offline; every notebook runs on a 2-core CPU in minutes.
* ``colab-t4``: a real Hugging Face base model and ``Anthropic/hh-rlhf`` on a free Colab T4 (16 GB, no bf16),
  trained with QLoRA (4-bit NF4 base + LoRA adapters).
* ``gpu-24gb``: a larger base model on a 24 GB consumer GPU, also QLoRA.
* ``rehearsal``: the ``colab-t4`` code path on a CPU with no hub: local stand-ins (a random-weight Qwen2 model,
  HH-RLHF-format files, a random-weight judge) that the package builds on first use, 4-bit through bitsandbytes'
  CPU kernels, and step counts small enough for CI. It checks the real path, not the quality.

Fields that say where a model or data comes from (``dataset``, ``base_model``, ``judge_model``) take a hub id
(``"Anthropic/hh-rlhf"``), a local path (``"/content/my_prefs"``), or ``"stand-in:<name>"`` for one of the
rehearsal's local stand-ins (:mod:`rrhf_lite.course.standins`).

Pick one with the environment variable ``RRHF_LITE_PROFILE`` (``tiny`` if unset), or in a notebook::

    profile = get_profile("tiny", pretrain_steps=100)   # any field can be overridden

Every field has a one-line comment; a test checks that none is missing.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from rrhf_lite.core.models import LLAMA_LINEAR_LAYERS, ModelConfig, model_config
from rrhf_lite.methods.dpo import DPOConfig
from rrhf_lite.methods.grpo import GRPOConfig
from rrhf_lite.methods.ppo import PPOConfig
from rrhf_lite.methods.ranking import PROConfig, RRHFConfig
from rrhf_lite.methods.reward import RewardConfig
from rrhf_lite.methods.sft import SFTConfig

PROFILE_ENV_VAR = "RRHF_LITE_PROFILE"
RUNS_ENV_VAR = "RRHF_LITE_RUNS"


def default_runs_dir() -> Path:
    """``$RRHF_LITE_RUNS`` if set; else ``runs/`` in the repository when installed from a checkout; else ``./runs``.

    A leading ``~`` is the home folder (``%env`` in a notebook and a quoted shell value leave it to us), never a
    folder named ``~`` in the working directory."""
    if os.environ.get(RUNS_ENV_VAR, "").strip():
        return Path(os.environ[RUNS_ENV_VAR]).expanduser()
    repo = Path(__file__).resolve().parents[2]  # <repo>/rrhf_lite/course/profiles.py
    if (repo / "pyproject.toml").exists() and (repo / "notebooks").is_dir():
        return repo / "runs"
    return Path.cwd() / "runs"


def shown(path: str | os.PathLike, runs_root: str | os.PathLike | None = None) -> str:
    """``path`` as a lesson prints it, without the folders of the machine it runs on (a published page shows it):
    relative to the runs root's parent when it is under the runs root (``runs_root``, default
    :func:`default_runs_dir`), else relative to the current directory when under it, else unchanged.

    >>> shown("/home/me/rrhf-lite/runs/tiny/sft/ab12", runs_root="/home/me/rrhf-lite/runs")
    'runs/tiny/sft/ab12'
    """
    full, root, here = Path(path).resolve(), Path(runs_root or default_runs_dir()).resolve(), Path.cwd().resolve()
    if full.is_relative_to(root):
        return str(full.relative_to(root.parent))
    if full.is_relative_to(here):
        return str(full.relative_to(here))
    return str(path)


@dataclass(frozen=True)
class Profile:
    """The ``tiny`` profile: offline, CPU, synthetic world. The other profiles override a few fields."""

    name: str = "tiny"  # folder name under runs/; also how get_profile() finds the profile
    seed: int = 0  # one seed for data, initialisation and sampling; same seed -> same numbers on CPU
    method_seed: int | None = None  # training seed of RRHF/PRO/DPO/PPO alone (rrhf_lite.course.study); None = seed

    # --- data ---------------------------------------------------------------------------------------
    dataset: str = "tiny-world"  # "tiny-world" (built offline), a hub id like "Anthropic/hh-rlhf", or a local path
    world_harmful_fraction: float = 0.25  # share of prompts that ask for something harmful
    world_label_temperature: float = 2.0  # Bradley-Terry temperature of simulated labellers (gold / T + noise)
    world_test_fraction: float = 0.25  # share of each topic's requests held out (plus its 2 held-out phrasings)
    pretrain_dialogues: int = 10_000  # dialogues of mixed quality the tiny base model is pretrained on

    # --- model --------------------------------------------------------------------------------------
    base_model: str | None = None  # hub id or local folder of the base model; None = build the tiny Llama below
    judge_model: str | None = None  # the gold judge: None = the tiny world's; else a reward model (hub id or folder)
    # The hub commits to download (None: the hub's latest, whatever it is that day; a local folder has none)
    base_model_revision: str | None = None  # commit of base_model on the hub
    dataset_revision: str | None = None  # commit of dataset on the hub
    judge_revision: str | None = None  # commit of judge_model on the hub
    tokenizer_vocab_size: int = 1024  # byte-level BPE vocabulary trained on the world's text (tiny, stand-ins)
    n_layer: int = 4  # transformer blocks of the tiny model (and of the rehearsal's stand-ins)
    n_head: int = 4  # attention heads of the tiny model (and of the stand-ins)
    hidden_size: int = 128  # width of the tiny model; a multiple of 64 (bitsandbytes' CPU 4-bit path needs it)
    intermediate_size: int = 384  # MLP width of the tiny model; also a multiple of 64
    max_length: int = 128  # longest prompt + response in tokens; longer examples are truncated

    # --- QLoRA / LoRA (used from the SFT stage on) ---------------------------------------------------
    load_in_4bit: bool = False  # quantise the frozen base to 4-bit NF4 with bitsandbytes (QLoRA)
    compute_dtype: str = "float32"  # dtype of activations: float32 on CPU, float16 on a T4, bfloat16 on Ampere+
    lora_r: int = 16  # rank of the LoRA update matrices
    lora_alpha: int = 32  # LoRA scaling numerator (the update is scaled by alpha / r)
    lora_dropout: float = 0.0  # dropout on the LoRA input; 0 keeps runs deterministic
    lora_target_modules: tuple[str, ...] = LLAMA_LINEAR_LAYERS  # layers that get adapters (Llama/Qwen names)
    gradient_checkpointing: bool = False  # recompute activations in the backward pass to save memory (GPU profiles)

    # --- pretraining the tiny base model (notebook 00) ----------------------------------------------
    pretrain_steps: int = 200  # optimiser steps of next-token training on the world's dialogues
    pretrain_batch_size: int = 32  # dialogues per step
    pretrain_lr: float = 3e-3  # peak AdamW learning rate (a tiny model from scratch tolerates a high rate)
    pretrain_warmup_steps: int = 20  # linear warm-up before the cosine decay
    weight_decay: float = 0.01  # AdamW weight decay for all training stages
    max_grad_norm: float = 1.0  # gradient clipping threshold for all training stages
    log_every: int = 10  # record metrics (and update the progress bar) every this many steps

    # --- SFT (notebook 01) ---------------------------------------------------------------------------
    sft_examples: int = 2_000  # demonstrations: the world's (tiny) or HH-RLHF chosen replies (real profiles)
    sft_expert_fraction: float = 0.3  # tiny world: share of demonstrations that are expert replies (rest: decent)
    sft_steps: int = 150  # optimiser steps of supervised fine-tuning
    sft_batch_size: int = 16  # demonstrations per step
    sft_lr: float = 2e-3  # peak learning rate for the LoRA adapters (LoRA tolerates ~10x a full fine-tune's rate)
    sft_warmup_steps: int = 15  # linear warm-up steps

    # --- reward model (notebook 02) ------------------------------------------------------------------
    rm_pairs: int = 4_000  # labelled comparisons (prompt/chosen/rejected) to train on
    rm_eval_pairs: int = 1_000  # held-out comparisons on test prompts for accuracy and calibration
    rm_steps: int = 250  # optimiser steps
    rm_batch_size: int = 16  # comparisons per step (two sequences each)
    rm_lr: float = 1e-3  # peak learning rate (LoRA adapters + the fresh scalar head); 2e-3 overfits the noise
    rm_warmup_steps: int = 25  # linear warm-up steps
    rm_center_coef: float = 0.01  # weight of the (r_c + r_r)^2 term that keeps rewards centred near 0
    rm_eval_every: int = 100  # steps between held-out accuracy evaluations (a multiple of log_every)

    # --- sampling, best-of-n and the ranking data (notebook 03) -------------------------------------
    sample_prompts: int = 400  # training prompts that get a ranked set of candidate replies (RRHF/PRO/DPO data)
    samples_per_prompt: int = 3  # candidates sampled from the SFT policy per prompt
    base_samples_per_prompt: int = 1  # candidates sampled from the base model per prompt ("another model", RRHF)
    sample_top_p: float = 1.0  # nucleus sampling: keep the smallest token set with this much probability
    bon_n: int = 16  # samples per held-out prompt for the best-of-n curves (n = 1, 2, 4, ... up to this)
    ppl_quantile: float = 0.5  # perplexity filter: keep pairs whose replies are both below this quantile

    # --- RRHF and PRO: training on rankings (notebooks 04, 05) -----------------------------------------
    ranking_steps: int = 100  # optimiser steps (each sees ranking_batch_size prompts with all their candidates)
    ranking_batch_size: int = 8  # prompts per step; with 5 candidates each, 40 sequences in one forward pass
    ranking_warmup_steps: int = 10  # linear warm-up steps
    rrhf_lr: float = 3e-4  # RRHF: peak learning rate of the fresh LoRA adapters
    rrhf_length_penalty: float = 1.0  # RRHF: p_i = log pi(y_i) / |y_i|**this (1 = mean log-prob, as in the paper)
    rrhf_sft_weight: float = 1.0  # RRHF: weight of the SFT term on the best candidate (the paper uses 1)
    pro_lr: float = 2e-4  # PRO: peak learning rate of the fresh LoRA adapters
    pro_sft_weight: float = 0.05  # PRO: weight of the SFT term (the official HH script uses 0.05)
    pro_sft_scale: str = "official"  # PRO: "official" = summed NLL x weight x (n-1)^2 as DAMO-ConvAI/PRO; "per_token"
    pro_use_temperature: bool = True  # PRO: scale each contrast by reward gaps (the paper's dynamic temperature)
    pro_ranking_length: int = 0  # PRO: candidates kept per prompt (best, worst, spread between); 0 = all

    # --- DPO (notebook 06) -------------------------------------------------------------------------------
    dpo_steps: int = 50  # optimiser steps (two passes over the 400 pairs of stage 03)
    dpo_batch_size: int = 16  # preference pairs per step (chosen and rejected in one forward pass)
    dpo_lr: float = 1e-4  # peak learning rate of the fresh LoRA adapters (1e-3 collapses the tiny model)
    dpo_warmup_steps: int = 5  # linear warm-up steps
    dpo_beta: float = 0.1  # strength of the implicit KL constraint: small beta lets the policy move further
    dpo_loss_type: str = "sigmoid"  # "sigmoid" (DPO), "ipo" (Azar et al. 2023) or "simpo" (Meng et al. 2024)
    dpo_label_smoothing: float = 0.0  # assumed label-flip rate (conservative DPO); 0 = plain DPO
    # SimPO (Meng et al. 2024), trained by the DPO trainer (loss_type="simpo") on DPO's pairs, with DPO's other settings
    simpo_beta: float = 2.0  # scale of the length-normalised log-probs (the paper: 2 to 2.5)
    simpo_gamma: float = 1.0  # target margin (the paper: gamma / beta about 0.5)

    # --- PPO (notebook 07): one base model, adapters for the rest ------------------------------------
    ppo_iterations: int = 40  # rounds of (sample a rollout, score it, epochs of updates)
    ppo_rollout_prompts: int = 64  # training prompts per rollout, one sampled reply each
    ppo_epochs: int = 3  # passes over each rollout
    ppo_minibatch_size: int = 16  # rollout replies per gradient step
    ppo_lr: float = 5e-4  # peak learning rate of the policy adapters and the value head
    ppo_clip_range: float = 0.2  # epsilon of the clipped policy objective (Schulman et al. 2017)
    ppo_value_clip_range: float = 0.2  # clipping of value updates around the rollout's values
    ppo_vf_coef: float = 0.5  # weight of the value loss next to the policy loss
    ppo_gamma: float = 1.0  # discount; 1 = no discounting within a reply (Huang et al.)
    ppo_lam: float = 0.95  # GAE lambda
    ppo_kl_coef: float = 0.5  # beta of the per-token KL penalty -beta*(log pi - log pi_ref); start value if adaptive
    ppo_kl_estimator: str = "k1"  # per-token KL estimate in the reward: "k1" (log-ratio) or "k3" (always >= 0)
    ppo_adaptive_kl: bool = True  # adapt beta towards ppo_kl_target (Ziegler et al. 2019); False keeps it fixed
    ppo_kl_target: float = 0.5  # target sequence-level KL (nats) of the adaptive controller
    ppo_kl_horizon: int = 256  # controller horizon in replies (4 rollouts): beta moves up to 5% a rollout, so it acts
    ppo_no_eos_penalty: float = -1.0  # score given instead of the reward model's to replies that never end
    ppo_value_init: str = "reward"  # value head initialised from the reward model's head ("reward") or at zero ("zero")
    ppo_snapshot_every: int = 0  # keep the policy's adapter every this many iterations (0: only the final one)
    ppo_checkpoint_every: int = 5  # save PPO's state every this many iterations (an interrupted stage resumes there)

    # --- GRPO and RLOO: critic-free RL on groups of replies, at PPO's sample budget (40 x 16 x 4 = 40 x 64) ---------
    grpo_iterations: int = 40  # rounds of (a group of replies per prompt, scored, updates)
    grpo_prompts_per_iteration: int = 16  # training prompts per rollout
    grpo_group_size: int = 4  # replies per prompt (GRPO's G, RLOO's k)
    grpo_epochs: int = 1  # GRPO: passes over each rollout
    grpo_prompts_per_step: int = 4  # GRPO: prompts (whole groups) per gradient step; RLOO: per forward pass (one step
    # per rollout, its gradient summed over the passes)
    grpo_lr: float = 5e-4  # peak learning rate of the LoRA adapters, decaying linearly to 0 (PPO's)
    grpo_beta: float = 0.04  # GRPO: weight of the k3 KL term in the loss (the paper's 0.04)
    grpo_clip_range: float = 0.2  # GRPO: epsilon of the clipped ratio
    grpo_scale_rewards: bool = True  # GRPO: divide advantages by the group's std (the paper); False: Dr. GRPO
    grpo_normalisation: str = "per_reply"  # GRPO: "per_reply" token means (the paper) or "constant" (Dr. GRPO)
    rloo_beta: float = 0.05  # RLOO: KL penalty folded into each reply's reward, r - beta * KL (the paper's 0.05)

    # --- side by side (notebook 09): over-optimisation and one online round ---------------------------
    overopt_kl_coefs: tuple[float, ...] = (0.1, 0.02)  # fixed betas of lesson 09's sweep; the last: "PPO, weak KL"
    overopt_snapshot_every: int = 8  # the weak-KL run's adapter is kept every this many iterations (held-out points)
    online_method: str = "rrhf"  # the aligned policy that samples the online round's comparisons, trained again
    online_samples_per_prompt: int = 2  # replies it samples per training prompt: one fresh labelled pair each
    bon_table_n: tuple[int, ...] = (4, 16)  # best-of-n rows of the results table (n <= bon_n)

    # --- evaluation ---------------------------------------------------------------------------------
    eval_prompts: int = 200  # held-out prompts on which samples are drawn and judged
    max_new_tokens: int = 64  # longest sampled reply in tokens
    sample_temperature: float = 0.7  # temperature of every sample: candidates, best-of-n, evaluation, PPO rollouts
    eval_samples_per_prompt: int = 2  # replies per held-out prompt when a model is evaluated (less noise)
    generation_batch_size: int = 200  # prompts per generate() call (divides the 400 replies of an evaluation evenly)

    # --- where outputs go ---------------------------------------------------------------------------
    runs_dir: str = ""  # root of the stage cache; "" = default_runs_dir() ($RRHF_LITE_RUNS or <repo>/runs)

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = check_field(field.name, field.type, getattr(self, field.name))
            object.__setattr__(self, field.name, value)  # a list given for a tuple field, as a tuple
        beyond = [n for n in self.bon_table_n if n > self.bon_n]  # found late otherwise: in lesson 09's table
        if beyond:
            raise ProfileError(f"profile field bon_table_n: expected values <= bon_n ({self.bon_n}), the samples "
                               f"per prompt that best-of-n selects from; got {list(self.bon_table_n)}")
        # fields that must divide another, found late otherwise: when the model is built, or GRPO's trainer starts
        for part, whole, why in (("n_head", "hidden_size", "the attention heads split the width evenly"),
                                 ("grpo_prompts_per_step", "grpo_prompts_per_iteration", "every step takes whole "
                                                                                        "groups of a rollout")):
            if getattr(self, whole) % getattr(self, part):
                raise ProfileError(f"profile field {part}: expected a divisor of {whole} ({getattr(self, whole)}): "
                                   f"{why}; got {getattr(self, part)!r}")

    @property
    def runs_path(self) -> Path:
        """Folder that holds this profile's stages: ``<runs_dir>/<name>/`` (``~`` is the home folder)."""
        return (Path(self.runs_dir).expanduser() if self.runs_dir else default_runs_dir()) / self.name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # --- the methods' configs, read from the fields above (each method's module documents its own) ----------
    def model_config(self) -> ModelConfig:
        """How every stage loads its models: precision, 4-bit, LoRA (:class:`rrhf_lite.core.models.ModelConfig`)."""
        return model_config(self)

    def _prefixed(self, config_class, prefix: str) -> dict:
        """The fields of ``config_class`` that this profile holds as ``<prefix>_<field>``, by their config name."""
        return {f.name: getattr(self, f"{prefix}_{f.name}") for f in dataclasses.fields(config_class)
                if hasattr(self, f"{prefix}_{f.name}")}

    def _loop(self, prefix: str, checkpoint_every: int) -> dict:
        return {"steps": getattr(self, f"{prefix}_steps"), "batch_size": getattr(self, f"{prefix}_batch_size"),
                "warmup_steps": getattr(self, f"{prefix}_warmup_steps"), "weight_decay": self.weight_decay,
                "max_grad_norm": self.max_grad_norm, "max_length": self.max_length, "log_every": self.log_every,
                "checkpoint_every": checkpoint_every * self.log_every, "seed": self.seed}

    def sft_config(self) -> SFTConfig:
        return SFTConfig(**self._loop("sft", 10), lr=self.sft_lr)

    def reward_config(self) -> RewardConfig:
        return RewardConfig(**self._loop("rm", 10), lr=self.rm_lr, center_coef=self.rm_center_coef,
                            eval_every=self.rm_eval_every)

    def rrhf_config(self) -> RRHFConfig:
        return RRHFConfig(**self._loop("ranking", 5), lr=self.rrhf_lr, length_penalty=self.rrhf_length_penalty,
                          sft_weight=self.rrhf_sft_weight)

    def pro_config(self) -> PROConfig:
        return PROConfig(**self._loop("ranking", 5), lr=self.pro_lr, sft_weight=self.pro_sft_weight,
                         sft_scale=self.pro_sft_scale, use_temperature=self.pro_use_temperature)

    def dpo_config(self) -> DPOConfig:
        return DPOConfig(**self._loop("dpo", 5), lr=self.dpo_lr, beta=self.dpo_beta, loss_type=self.dpo_loss_type,
                         label_smoothing=self.dpo_label_smoothing, simpo_gamma=self.simpo_gamma)

    def simpo_config(self) -> DPOConfig:
        """SimPO's config: DPO's (:meth:`dpo_config`) with ``loss_type="simpo"``, ``simpo_beta`` and ``simpo_gamma``."""
        return dataclasses.replace(self.dpo_config(), loss_type="simpo", beta=self.simpo_beta,
                                   simpo_gamma=self.simpo_gamma)

    def ppo_config(self) -> PPOConfig:
        """PPO's config: the ``ppo_*`` fields without their prefix, and the sampling and loop fields it shares."""
        return PPOConfig(**self._prefixed(PPOConfig, "ppo"), temperature=self.sample_temperature,
                         max_new_tokens=self.max_new_tokens, max_length=self.max_length,
                         generation_batch_size=self.generation_batch_size, weight_decay=self.weight_decay,
                         max_grad_norm=self.max_grad_norm, seed=self.seed)

    def grpo_config(self, method: str = "grpo") -> GRPOConfig:
        """GRPO's config (``method="rloo"``: RLOO's, with ``rloo_beta`` and one step per rollout): the ``grpo_*``
        fields without their prefix, and the sampling and loop fields it shares with PPO."""
        own = self._prefixed(GRPOConfig, "grpo")
        if method == "rloo":
            own.update(beta=self.rloo_beta, epochs=1)
        return GRPOConfig(**own, method=method, no_eos_penalty=self.ppo_no_eos_penalty,
                          temperature=self.sample_temperature, max_new_tokens=self.max_new_tokens,
                          max_length=self.max_length, generation_batch_size=self.generation_batch_size,
                          weight_decay=self.weight_decay, max_grad_norm=self.max_grad_norm,
                          checkpoint_every=self.ppo_checkpoint_every, seed=self.seed)

    def rloo_config(self) -> GRPOConfig:
        """RLOO's config: :meth:`grpo_config` with ``method="rloo"``."""
        return self.grpo_config("rloo")

    def values(self, fields: tuple[str, ...] | list[str]) -> dict:
        """The named fields' values; a name of one of the config methods above (``"dpo_config"``) stands for the
        whole config it builds, as a dict: what a stage trains with, whichever fields of the profile it is made of."""
        def value(name):
            attribute = getattr(self, name)
            return dataclasses.asdict(attribute()) if name.endswith("_config") and callable(attribute) else attribute

        return {name: value(name) for name in sorted(fields)}

    def fingerprint(self, fields: tuple[str, ...] | list[str]) -> str:
        """Short hash of the named fields (and configs, see :meth:`values`): two profiles that agree on them share
        cached stages."""
        blob = json.dumps(self.values(fields), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:10]


@dataclass(frozen=True)
class ColabT4Profile(Profile):
    """Free Colab T4: 16 GB, fp16 only. A 0.5B base model in 4-bit with LoRA, trained on HH-RLHF."""

    name: str = "colab-t4"  # folder name under runs/
    dataset: str = "Anthropic/hh-rlhf"  # Bai et al. 2022 helpful + harmless comparisons
    world_label_temperature: float = 1.0  # labellers of the online round: judge score (std 1 on SFT) / T + noise
    base_model: str | None = "Qwen/Qwen2.5-0.5B"  # small base model whose hidden size (896) is a multiple of 64
    # The gold judge on real data: a public reward model, not trained by this course, in the role Gao et al. (2022)
    # gave their large "gold" RM. Skywork-Reward-V2-Qwen3-0.6B: Bradley-Terry RM trained on 26M curated preference
    # pairs, the smallest of a series that leads the RewardBench v1/v2, RM-Bench and PPE benchmarks; 0.6B
    # parameters = 1.2 GB in fp16, so it fits on a T4 beside the 4-bit policy, the reward model and PPO's state.
    judge_model: str | None = "Skywork/Skywork-Reward-V2-Qwen3-0.6B"  # independent judge (sequence classification)
    max_length: int = 512  # HH dialogues are long; 512 tokens keeps most of them whole
    load_in_4bit: bool = True  # QLoRA: NF4 4-bit base, LoRA adapters in fp32
    compute_dtype: str = "float16"  # a T4 has no native bf16 (torch reports emulated support; do not use it)
    gradient_checkpointing: bool = True  # trade compute for memory so PPO fits in 16 GB
    sft_examples: int = 20_000  # HH-RLHF chosen replies used as demonstrations
    sft_steps: int = 1_000  # optimiser steps of supervised fine-tuning
    sft_batch_size: int = 8  # demonstrations per step
    sft_lr: float = 2e-4  # the QLoRA paper's rate for adapters on a pretrained model
    sft_warmup_steps: int = 50  # linear warm-up steps
    rm_pairs: int = 40_000  # HH-RLHF comparisons to train the reward model on
    rm_eval_pairs: int = 2_000  # held-out HH-RLHF test comparisons
    rm_steps: int = 2_000  # optimiser steps (about 0.8 epoch at batch 16)
    rm_batch_size: int = 16  # comparisons per step (two sequences each)
    rm_lr: float = 1e-4  # adapters + scalar head
    rm_warmup_steps: int = 100  # linear warm-up steps
    sample_prompts: int = 2_000  # HH-RLHF training prompts that get ranked candidates
    samples_per_prompt: int = 2  # SFT samples per prompt (plus 1 base sample and HH's chosen and rejected: 5)
    bon_n: int = 8  # samples per held-out prompt for best-of-n
    bon_table_n: tuple[int, ...] = (2, 8)  # best-of-n rows of the results table (n <= bon_n)
    generation_batch_size: int = 32  # prompts per generate() call: long HH prompts fill a T4 quickly
    ppo_iterations: int = 40  # PPO rollouts of 64 prompts
    eval_prompts: int = 100  # held-out HH-RLHF prompts to sample on
    max_new_tokens: int = 128  # HH replies are longer than the tiny world's
    log_every: int = 20  # record metrics every this many steps


@dataclass(frozen=True)
class GPU24GBProfile(ColabT4Profile):
    """A 24 GB consumer GPU (RTX 3090/4090 class): the T4 recipe with a 1.5B base model and bf16 compute."""

    name: str = "gpu-24gb"  # folder name under runs/
    base_model: str | None = "Qwen/Qwen2.5-1.5B"  # larger base model; hidden size 1536 is a multiple of 64
    max_length: int = 768  # more room for long multi-turn HH dialogues
    compute_dtype: str = "bfloat16"  # Ampere and newer have native bf16
    sft_batch_size: int = 16  # demonstrations per step: twice the T4's


@dataclass(frozen=True)
class RehearsalProfile(ColabT4Profile):
    """``colab-t4`` rehearsed on a CPU with no model hub: the same code path, with local stand-ins.

    It differs from ``colab-t4`` only where this machine forces it (a test checks the list, :data:`REHEARSAL_CHANGES`):
    the model, data and judge are local stand-ins built on first use by :mod:`rrhf_lite.course.standins` (a Qwen2 model
    and a Qwen3 reward model with random weights, HH-RLHF-format files written from the tiny world); compute is float32
    (bitsandbytes' 4-bit CPU kernels); and every count is small enough that all nine lessons run in CI. Still
    4-bit NF4 with LoRA, gradient checkpointing, max_length 512, a base tokenizer with no pad token of its own.
    """

    name: str = "rehearsal"  # folder name under runs/
    dataset: str = "stand-in:hh-rlhf"  # HH-RLHF's raw format (multi-turn), written from the tiny world
    base_model: str | None = "stand-in:qwen2"  # a Qwen2ForCausalLM config, random weights; eos <|endoftext|>, no pad
    judge_model: str | None = "stand-in:reward-model"  # a Qwen3ForSequenceClassification, random weights
    n_layer: int = 2  # stand-ins' transformer blocks
    compute_dtype: str = "float32"  # the CPU: bitsandbytes' 4-bit CPU kernels compute in float32
    log_every: int = 2  # record metrics every this many steps (runs are a few steps long)
    sft_examples: int = 64  # demonstrations
    sft_steps: int = 4  # optimiser steps
    sft_warmup_steps: int = 1  # linear warm-up steps
    rm_pairs: int = 64  # comparisons to train the reward model on
    rm_eval_pairs: int = 32  # held-out comparisons
    rm_steps: int = 4  # optimiser steps
    rm_batch_size: int = 8  # comparisons per step
    rm_warmup_steps: int = 1  # linear warm-up steps
    rm_eval_every: int = 2  # steps between held-out evaluations
    sample_prompts: int = 16  # training prompts with ranked candidates
    eval_prompts: int = 8  # held-out prompts to sample on
    max_new_tokens: int = 16  # longest sampled reply (random weights rarely stop on their own)
    ranking_steps: int = 3  # RRHF/PRO optimiser steps
    ranking_batch_size: int = 4  # prompts per step
    ranking_warmup_steps: int = 1  # linear warm-up steps
    dpo_steps: int = 3  # DPO optimiser steps
    dpo_batch_size: int = 4  # pairs per step
    dpo_warmup_steps: int = 1  # linear warm-up steps
    ppo_iterations: int = 2  # PPO iterations
    ppo_rollout_prompts: int = 8  # prompts per rollout
    ppo_epochs: int = 1  # passes over each rollout
    ppo_minibatch_size: int = 4  # replies per gradient step
    grpo_iterations: int = 2  # GRPO and RLOO iterations
    grpo_prompts_per_iteration: int = 4  # prompts per rollout (4 replies each)
    grpo_prompts_per_step: int = 2  # GRPO: prompts per gradient step
    overopt_snapshot_every: int = 1  # snapshot every iteration of the weak-KL run


# The fields in which ``rehearsal`` may differ from ``colab-t4``: where the stand-ins come from, what a CPU forces,
# and sizes and counts. Anything else must be the same (tests/test_profiles.py).
REHEARSAL_CHANGES = frozenset({
    "name", "dataset", "base_model", "judge_model", "n_layer", "compute_dtype", "log_every", "sft_examples",
    "sft_steps", "sft_warmup_steps", "rm_pairs", "rm_eval_pairs", "rm_steps", "rm_batch_size", "rm_warmup_steps",
    "rm_eval_every", "sample_prompts", "eval_prompts", "max_new_tokens", "ranking_steps",
    "ranking_batch_size", "ranking_warmup_steps", "dpo_steps", "dpo_batch_size", "dpo_warmup_steps",
    "ppo_iterations", "ppo_rollout_prompts", "ppo_epochs", "ppo_minibatch_size", "grpo_iterations",
    "grpo_prompts_per_iteration", "grpo_prompts_per_step", "overopt_snapshot_every"})

# What a field may hold beyond its type (checked when a profile is made, however it is made: a notebook's
# get_profile(...), --set on the command line, a subclass). Integers are > 0 unless listed as >= 0 here.
NON_NEGATIVE_INTS = {"seed", "method_seed", "pretrain_warmup_steps", "sft_warmup_steps", "rm_warmup_steps",
                     "ranking_warmup_steps", "dpo_warmup_steps", "pro_ranking_length", "ppo_snapshot_every",
                     "ppo_checkpoint_every", "rm_eval_every", "base_samples_per_prompt", "overopt_snapshot_every"}
AT_LEAST = {"grpo_group_size": 2, "bon_n": 1}  # a group needs two replies to have a baseline
AT_MOST = {"seed": 2**32 - 1, "method_seed": 2**32 - 1}  # numpy's generators take seeds below 2**32
EMPTY_MEANS_DEFAULT = {"runs_dir"}  # str fields where "" has a meaning of its own; no other str field may be blank
FRACTIONS = {"world_harmful_fraction", "world_test_fraction", "sft_expert_fraction", "lora_dropout", "ppl_quantile",
             "sample_top_p", "dpo_label_smoothing", "ppo_gamma", "ppo_lam"}  # in [0, 1]
POSITIVE_FLOATS = {"world_label_temperature", "max_grad_norm", "dpo_beta", "simpo_beta", "ppo_clip_range",
                   "ppo_value_clip_range", "ppo_kl_target", "grpo_clip_range", "sample_temperature", "sample_top_p",
                   "ppl_quantile", "overopt_kl_coefs"}  # and every *_lr; the other floats are >= 0, but:
ANY_FLOAT = {"ppo_no_eos_penalty"}
CHOICES = {"compute_dtype": ("float32", "float16", "bfloat16"), "dpo_loss_type": ("sigmoid", "ipo", "simpo"),
           "ppo_kl_estimator": ("k1", "k3"), "ppo_value_init": ("reward", "zero"),
           "pro_sft_scale": ("official", "per_token"), "grpo_normalisation": ("per_reply", "constant"),
           "online_method": ("rrhf", "pro")}


class ProfileError(ValueError):
    """A profile field given a value it cannot hold: names the field, the value and what it expects."""


def check_field(name: str, annotation: str, value):
    """``value`` for the profile field ``name`` (annotated ``annotation``, e.g. ``"int | None"``,
    ``"tuple[str, ...]"``), checked: its type, then its range (:data:`NON_NEGATIVE_INTS`, :data:`FRACTIONS`, ...).
    Numbers must be finite; strings non-blank (but see :data:`EMPTY_MEANS_DEFAULT`), and not ``"none"`` where None
    is allowed; lists non-empty.
    Returns it (a list given for a tuple, as a tuple); raises :class:`ProfileError` naming what is wrong."""
    def fail(expected: str):
        raise ProfileError(f"profile field {name}: expected {expected}, got {value!r}")

    kinds = [k.strip() for k in str(annotation).split("|")]
    if value is None:
        return value if "None" in kinds else fail(f"{' or '.join(kinds)}, not None")
    kind = next(k for k in kinds if k != "None")
    if kind.startswith("tuple["):
        item = kind[len("tuple["):].split(",")[0].strip()
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            example = '["q_proj", "v_proj"]' if item == "str" else "[1, 2]"
            fail(f"a list of {item} values, e.g. {example}")
        if not value:
            fail(f"a non-empty list of {item} values")
        return tuple(check_field(f"{name}[{i}]", item, v) for i, v in enumerate(value))
    if kind == "bool":
        return value if isinstance(value, bool) else fail("true or false")
    if kind == "str":
        if not isinstance(value, str):
            fail("a string")
        if name in CHOICES and value not in CHOICES[name]:
            fail(f"one of {list(CHOICES[name])}")
        if "None" in kinds and value.strip().lower() in ("none", "null"):
            fail("None (null on the command line), not a string")
        if not value.strip() and not (value == "" and name in EMPTY_MEANS_DEFAULT):
            # "" as a dataset is the current folder, as a revision "the hub's latest": never what was meant
            fail("a non-empty string" + (", or None" if "None" in kinds else ""))
        return value
    base = name.split("[")[0]
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            fail("an integer")
        least = AT_LEAST.get(base, 0 if base in NON_NEGATIVE_INTS else 1)
        if base in AT_MOST and value > AT_MOST[base]:
            fail(f"an integer between {least} and {AT_MOST[base]}")
        return value if value >= least else fail(f"an integer >= {least}")
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail("a number")
        if not math.isfinite(value):  # nan, inf (1e309 is read as inf): training would go to NaN
            fail("a finite number")
        if base in ANY_FLOAT:
            return value
        if base in FRACTIONS and not 0 <= value <= 1:
            fail("a number between 0 and 1")
        if (base in POSITIVE_FLOATS or base.endswith("_lr")) and not value > 0:
            fail("a number > 0")
        return value if value >= 0 else fail("a number >= 0")
    return value


PROFILES: dict[str, type[Profile]] = {"tiny": Profile, "colab-t4": ColabT4Profile, "gpu-24gb": GPU24GBProfile,
                                      "rehearsal": RehearsalProfile}


def weak_kl_profile(profile: Profile, kl_coef: float | None = None) -> Profile:
    """The same PPO with only its KL term changed: a fixed coefficient ``kl_coef`` (one of ``overopt_kl_coefs``; by
    default the last and weakest, the run that over-optimises the proxy in lesson 09) instead of lesson 07's adaptive
    one. The weakest run's adapter is also kept every ``overopt_snapshot_every`` iterations."""
    weakest = profile.overopt_kl_coefs[-1]
    kl_coef = weakest if kl_coef is None else kl_coef
    return dataclasses.replace(profile, ppo_kl_coef=kl_coef, ppo_adaptive_kl=False,
                               ppo_snapshot_every=profile.overopt_snapshot_every if kl_coef == weakest else 0)


def closest(name: str, names) -> str | None:
    """The one of ``names`` closest to a mistyped ``name`` (case, spaces and ``-``/``_`` aside), or None."""
    def plain(text):
        return text.lower().replace("-", "_").strip()

    by_plain = {plain(n): n for n in names}
    close = difflib.get_close_matches(plain(name), list(by_plain), n=1, cutoff=0.75)
    return by_plain[close[0]] if close else None


def get_profile(name: str | None = None, /, **overrides) -> Profile:
    """The profile called ``name`` (default: ``$RRHF_LITE_PROFILE`` or ``tiny``), with fields overridden.

    >>> get_profile("tiny", seed=3).seed
    3
    """
    name = name or os.environ.get(PROFILE_ENV_VAR) or "tiny"
    if name not in PROFILES:
        guess = closest(name, PROFILES)
        hint = f" (did you mean {guess!r}?)" if guess else ""
        raise ValueError(f"unknown profile {name!r}{hint}; choose one of {sorted(PROFILES)} "
                         f"(env var {PROFILE_ENV_VAR})")
    cls = PROFILES[name]
    if "name" in overrides:
        raise ProfileError(f"profile field name: it is the profile's name ({name!r}), chosen by get_profile's first "
                           f"argument, --profile or ${PROFILE_ENV_VAR}, not overridden")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        guesses = {field: closest(field, known) for field in unknown}
        hints = [f"{field!r} -> {guess!r}" for field, guess in guesses.items() if guess]
        raise TypeError(f"profile {name!r} has no field(s) {unknown}" + (f"; did you mean {', '.join(hints)}?"
                                                                          if hints else ""))
    return cls(**overrides)
