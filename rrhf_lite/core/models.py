"""Tokenizer and model: the tiny world's own tokenizer and Llama, built offline and saved like a hub model.

The tiny profile needs a model without a download, so this module builds one the way a hub model is built:

1. :func:`build_tokenizer` trains a byte-level BPE tokenizer (the same kind GPT-2, Llama 3 and Qwen use) on
   the world's text with the ``tokenizers`` library, and wraps it as a ``transformers`` fast tokenizer with a
   beginning-of-sequence token, an end-of-sequence token, a *separate* padding token (PPO and reward models
   need to tell "the reply ended" from "this is padding"), and a chat template for the HH dialogue format.
2. :func:`rrhf_lite.course.pretrain.build_tiny_model` (the course's) makes a ``LlamaForCausalLM`` from a small
   config. Widths are multiples of 64, which bitsandbytes' 4-bit CPU kernels require.
3. Both are saved with ``save_pretrained`` and read back with ``AutoTokenizer`` / ``AutoModelForCausalLM``
   (:func:`load_pretrained`): the code path a hub model such as ``Qwen/Qwen2.5-0.5B`` takes.

For training, :func:`load_for_training` is the one loader for every profile: the base (or SFT) model, frozen, in
4-bit NF4 when the profile says ``load_in_4bit`` (QLoRA: Dettmers et al. 2023), with fresh or saved LoRA adapters
(Hu et al. 2021) on top, and either its language-model head or a scalar reward head.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

import rrhf_lite.core.bitsandbytes_import  # noqa: F401  imports bitsandbytes before peft does, without a hub request

# isort: split
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedTokenizerFast,
)
from transformers.utils import logging as hf_logging

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
# Every linear layer of a Llama-style block (Llama, Qwen, Mistral and our tiny model share these names).
LLAMA_LINEAR_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ModelConfig:
    """How a model is loaded for training and scoring: precision, 4-bit quantisation, LoRA adapters.

    The defaults suit a small model on a CPU or any GPU in full precision; for QLoRA (Dettmers et al. 2023) set
    ``load_in_4bit=True`` and a 16-bit ``compute_dtype``. A course profile carries the same fields
    (:meth:`rrhf_lite.course.profiles.Profile.model_config`).
    """

    load_in_4bit: bool = False  # quantise the frozen base to 4-bit NF4 with bitsandbytes (QLoRA)
    compute_dtype: str = "float32"  # dtype of activations: float32 on CPU, float16 on a T4, bfloat16 on Ampere+
    lora_r: int = 16  # rank of the LoRA update matrices
    lora_alpha: int = 32  # LoRA scaling numerator (the update is scaled by alpha / r)
    lora_dropout: float = 0.0  # dropout on the LoRA input; 0 keeps runs deterministic (PPO needs 0)
    lora_target_modules: tuple[str, ...] = LLAMA_LINEAR_LAYERS  # layers that get adapters (Llama/Qwen names)
    gradient_checkpointing: bool = False  # recompute activations in the backward pass to save memory
    seed: int = 0  # initialises what loading creates at random (a fresh reward head)
    base_model_revision: str | None = None  # the hub commit to load a hub model at (a local folder has none)


def model_config(config) -> ModelConfig:
    """``config`` as a :class:`ModelConfig`: itself, or the fields of that name read from any object that has them
    (a course profile)."""
    if isinstance(config, ModelConfig):
        return config
    return ModelConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(ModelConfig)})

# Renders a list of {"role", "content"} messages in the HH-RLHF text format used everywhere in this package:
# "<|bos|>\n\nHuman: ...\n\nAssistant: ...<|eos|>". The end-of-sequence token follows only the final assistant
# turn, as in pretraining text; add_generation_prompt=True ends with "\n\nAssistant:" for the model to continue.
HH_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '\n\nHuman: ' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ '\n\nAssistant: ' + message['content'] }}"
    "{% if loop.last %}{{ eos_token }}{% endif %}"
    "{% else %}{{ raise_exception('roles must be user or assistant, got ' + message['role']) }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '\n\nAssistant:' }}{% endif %}"
)


def train_byte_level_bpe(texts: Iterable[str], vocab_size: int, special_tokens: list[str]) -> Tokenizer:
    """A byte-level BPE (GPT-2's, Llama 3's and Qwen's kind: any string round-trips) trained on ``texts``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def build_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts``; any string round-trips through it exactly."""
    tok = train_byte_level_bpe(texts, vocab_size, [PAD, BOS, EOS])
    # Like Llama's tokenizer: every encoded text starts with <|bos|>. The <|eos|> is added by whoever builds
    # training examples, because a prompt alone must not end with it.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, tok.token_to_id(BOS))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   chat_template=HH_CHAT_TEMPLATE, clean_up_tokenization_spaces=False,
                                   model_max_length=1_000_000)


def hub_revision(path: str | Path, revision: str | None) -> dict:
    """``{"revision": revision}`` for a hub id, nothing for a folder on this machine: what ``from_pretrained`` is given,
    so that a run downloads the commit it was pinned to and not whatever the hub holds that day."""
    return {"revision": revision} if revision and not Path(path).expanduser().exists() else {}


def load_tokenizer(path: str | Path, add_pad: bool = False, revision: str | None = None) -> PreTrainedTokenizerFast:
    """Load a tokenizer and check it has a padding token distinct from end-of-sequence.

    Many hub tokenizers have no pad token, or reuse eos as pad (Qwen2.5 does). Then "the reply ended" and "this
    is padding" look the same, and a reward model or PPO reads the wrong position. With ``add_pad=True`` a
    ``<|pad|>`` token is added (the model's embedding matrix must have room for it, see :func:`_fit_embeddings`);
    otherwise it is an error. ``revision``: the hub commit (:func:`hub_revision`).
    """
    tokenizer = AutoTokenizer.from_pretrained(path, **hub_revision(path, revision))
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        if not add_pad:
            problem = "no pad token" if tokenizer.pad_token is None else "a pad token equal to its eos token"
            raise ValueError(f"the tokenizer at {path} has {problem}; set a distinct one "
                             f"(tokenizer.add_special_tokens({{'pad_token': '<|pad|>'}})) or pass add_pad=True")
        tokenizer.add_special_tokens({"pad_token": PAD})
    return tokenizer


def default_device() -> torch.device:
    """The GPU when there is one, else the CPU: where every model of a run is placed. Under ``accelerate launch``,
    process k of a machine takes GPU k (``LOCAL_RANK``)."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def check_finite_weights(model: torch.nn.Module, source: str | Path) -> None:
    """Raise ``ValueError`` naming ``source`` and the first weight that holds NaN or infinite values: such a model
    computes NaN logits and scores, which would otherwise show up as a NaN reward in a table or a stop at a training
    step, far from the file at fault. (4-bit weights are stored as integers and are not checked.)"""
    for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers()):
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"{source}: weight {name} holds NaN or infinite values; the file is damaged or was "
                             f"saved from a run that diverged")


def load_pretrained(path: str | Path, dtype: torch.dtype | str = torch.float32, add_pad: bool = False):
    """Load a saved (or hub) causal LM and its tokenizer with the Auto classes. Returns ``(model, tokenizer)``.

    ``add_pad=True`` gives a hub tokenizer without a distinct pad token one (see :func:`load_tokenizer`).
    """
    tokenizer = load_tokenizer(path, add_pad=add_pad)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    with quiet_loading():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(default_device())
    check_finite_weights(model, path)
    _fit_embeddings(model, tokenizer)
    return model, tokenizer


def quantization_config(config) -> BitsAndBytesConfig | None:
    """4-bit NF4 with double quantisation (the QLoRA recipe) when ``config.load_in_4bit``, else None."""
    if not config.load_in_4bit:
        return None
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=getattr(torch, config.compute_dtype))


def disable_cpu_4bit_repacking(model: torch.nn.Module) -> int:
    """Work around a bitsandbytes CPU bug; returns the number of 4-bit layers touched.

    On CPUs with AVX512-BF16, bitsandbytes repacks 4-bit weights in place the first time a layer runs in
    inference mode (eval or generate). After that, gradients through those frozen layers silently become zero,
    so LoRA adapters below them stop learning. Turning the repacking off costs a little inference speed on such
    CPUs and nothing elsewhere.
    """
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


def _fit_embeddings(model, tokenizer) -> None:
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        if getattr(model, "is_loaded_in_4bit", False):
            raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the 4-bit model only {rows} embeddings; "
                             f"give the tokenizer a pad token from its existing vocabulary")
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id


def lora_config(config, task_type: str) -> LoraConfig:
    """peft's LoRA config for the layers ``config.lora_target_modules`` names; ``task_type`` is "CAUSAL_LM" or
    "SEQ_CLS"."""
    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.lora_target_modules), task_type=task_type)


@contextlib.contextmanager
def quiet_loading():
    """Silence, for the block, what the libraries say on every load that a lesson expects: transformers' progress bar
    over the weights and its load report (a reward model's fresh head is reported missing: :func:`load_model`
    checks the missing keys itself), and the FutureWarnings peft raises by calling transformers' renamed
    gradient-checkpointing methods."""
    # transformers 5 checks a tensor-parallel plan (and warns about every layer it does not shard) exactly when the
    # loading logger's level is WARNING or above: its logger is quietened along with the load report's
    loggers = [hf_logging.get_logger(f"transformers.{name}") for name in ("modeling_utils",
                                                                          "distributed.tensor_parallel")]
    levels, bars = [logger.level for logger in loggers], hf_logging.is_progress_bar_enabled()
    for logger in loggers:
        logger.setLevel(hf_logging.ERROR)
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*", category=FutureWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        if bars:
            hf_logging.enable_progress_bar()


def load_model(path: str | Path, config=ModelConfig(), *, head: str = "lm"):
    """Load ``path`` frozen, without adapters, as ``config`` (a :class:`ModelConfig`, or a profile) says. Returns
    ``(model, tokenizer)``.

    In ``config.compute_dtype``; in 4-bit NF4 when ``config.load_in_4bit`` (QLoRA), prepared for k-bit
    training. The same loader serves sampling and scoring (:func:`rrhf_lite.course.scoring.load_policy`) and training
    (:func:`load_for_training`), so "the SFT model" is one model everywhere: on a 4-bit profile the baseline's
    samples come from the same quantised weights that the methods start from and measure their KL against.

    Args:
        path: a saved model folder or a hub id (the base, or an SFT model with its adapter merged in).
        head: ``"lm"`` for a causal LM or ``"reward"`` for a scalar reward head on the last non-padding token
            (``AutoModelForSequenceClassification`` with one label; a fresh head is initialised from the seed).

    A tokenizer without a pad token of its own (none, or eos doubling as pad) gets one (:func:`load_tokenizer`).
    """
    if head not in ("lm", "reward"):
        raise ValueError(f"head must be 'lm' or 'reward', got {head!r}")
    config = model_config(config)
    dtype = getattr(torch, config.compute_dtype)
    pinned = hub_revision(path, config.base_model_revision)
    tokenizer = load_tokenizer(path, add_pad=True, revision=config.base_model_revision)
    cls = AutoModelForCausalLM if head == "lm" else AutoModelForSequenceClassification
    extra = {"num_labels": 1} if head == "reward" else {}
    quantization = quantization_config(config)
    placement = {"device_map": {"": default_device().index or 0}} if quantization and torch.cuda.is_available() else {}
    torch.manual_seed(config.seed)  # a fresh reward head is initialised at random: same seed, same head
    with quiet_loading():
        model, info = cls.from_pretrained(path, dtype=dtype, quantization_config=quantization, **placement,
                                          output_loading_info=True, **pinned, **extra)
    missing = [k for k in info["missing_keys"] if not (head == "reward" and k.startswith("score."))]
    if missing:  # only a reward model's fresh head may be missing from a checkpoint
        raise ValueError(f"{path}: weights missing from the checkpoint: {missing[:5]}")
    check_finite_weights(model, path)
    if not quantization:
        model.to(default_device())
    _fit_embeddings(model, tokenizer)
    with quiet_loading():
        # non-reentrant checkpointing: what torch recommends (and will require), and it needs no input gradients
        if config.load_in_4bit:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing,
                                                    gradient_checkpointing_kwargs={"use_reentrant": False})
            if model.device.type == "cpu":
                disable_cpu_4bit_repacking(model)
        elif config.gradient_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model, tokenizer


def load_for_training(path: str | Path, config=ModelConfig(), *, head: str = "lm", adapter: str | Path | None = None,
                      trainable: bool = True):
    """Load ``path`` for training with LoRA (QLoRA when ``config.load_in_4bit``). Returns ``(model, tokenizer)``.

    Args:
        path, config, head: as for :func:`load_model`: ``"lm"`` (SFT, DPO, RRHF, PRO, the PPO policy) or
            ``"reward"``.
        adapter: a folder saved by ``model.save_pretrained`` to continue from, or None for fresh adapters.
        trainable: False loads the adapter frozen (for scoring only).

    Only the LoRA matrices (and a reward head) receive gradients; the base stays frozen, which is what lets the
    frozen base double as the reference model (adapters disabled) in DPO and PPO. Fresh adapters start with
    ``B = 0``: the model before training computes exactly what :func:`load_model` gives.
    """
    config = model_config(config)
    model, tokenizer = load_model(path, config, head=head)
    with quiet_loading():
        if adapter is not None:
            model = PeftModel.from_pretrained(model, adapter, is_trainable=trainable)
            check_finite_weights(model, adapter)
        else:
            model = get_peft_model(model, lora_config(config, "CAUSAL_LM" if head == "lm" else "SEQ_CLS"))
    return model, tokenizer


def merge_adapter(base: str | Path, adapter: str | Path, out_dir: str | Path, dtype: str = "float32",
                  revision: str | None = None) -> Path:
    """Fold a LoRA adapter into full-precision base weights and save the result as a plain model.

    The SFT stage does this so that every later method starts from "the SFT model" as its base: a fresh adapter on
    top, and the SFT model itself (adapters disabled) as the reference. On 4-bit profiles the merge happens in
    16/32-bit, and later stages quantise the merged model again when they load it.
    """
    with quiet_loading():
        model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype), **hub_revision(base, revision))
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    _fit_embeddings(model, tokenizer)
    with quiet_loading():
        merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    reproducible_saved_files(out_dir)
    return Path(out_dir)


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# Written by transformers into tokenizer_config.json from how the tokenizer was *loaded* (offline or not, from a
# folder or not), not from what it is: left out, so that the same tokenizer saves the same bytes anywhere.
LOAD_TIME_KEYS = ("local_files_only", "is_local", "name_or_path")


def reproducible_saved_files(folder: str | Path) -> None:
    """Make what ``save_pretrained`` wrote into ``folder`` the same bytes for the same model, wherever and however it
    was built: in peft's ``adapter_config.json`` the keys and ``target_modules`` sorted (peft writes a set, in an
    order that changes from process to process) and ``base_model_name_or_path`` left out when it is a folder on this
    machine (an adapter is always loaded onto a base model given explicitly; a hub id is kept); peft's model-card
    template (``README.md``, "More Information Needed" throughout, the base model's folder on top) removed; in
    ``tokenizer_config.json`` the load-time settings :data:`LOAD_TIME_KEYS` left out."""
    folder = Path(folder)
    adapter = folder / "adapter_config.json"
    if adapter.is_file():
        config = json.loads(adapter.read_text())
        if isinstance(config.get("target_modules"), list):
            config["target_modules"] = sorted(config["target_modules"])
        base = config.get("base_model_name_or_path")
        if isinstance(base, str) and (os.path.isabs(base) or Path(base).expanduser().exists()):
            config["base_model_name_or_path"] = None
        adapter.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    card = folder / "README.md"  # peft's empty model-card template, whose front matter names the base model's folder
    if card.is_file() and "library_name: peft" in card.read_text(errors="ignore")[:500]:
        card.unlink()
    tokenizer = folder / "tokenizer_config.json"
    if tokenizer.is_file():
        config = json.loads(tokenizer.read_text())
        tokenizer.write_text(json.dumps({k: v for k, v in config.items() if k not in LOAD_TIME_KEYS}, indent=2,
                                        ensure_ascii=False) + "\n")
