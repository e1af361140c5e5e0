"""Tokenizer and tiny model: round trips, special tokens, chat template, save/load through the Auto classes."""

import logging
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import SMALL  # tests/conftest.py; the `saved_model` fixture lives there too
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from rrhf_lite.core.models import build_tokenizer, load_for_training, load_model, load_pretrained
from rrhf_lite.course.pretrain import build_tiny_model
from rrhf_lite.course.profiles import get_profile
from rrhf_lite.course.world import TinyWorld, format_prompt
from rrhf_lite.methods.judge import load_judge


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(TinyWorld(seed=0).dialogues(3000), vocab_size=1024)


@pytest.mark.parametrize("text", [
    "\n\nHuman: How do I bake bread?\n\nAssistant: Knead the dough for ten minutes.",
    "Text the world never wrote: Zürich, naïve café, 3.14159 — and emoji 🤖!",
    "  leading and trailing spaces  ",
])
def test_round_trip(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_special_tokens_are_distinct(tokenizer):
    ids = {tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id}
    assert len(ids) == 3 and None not in ids


def test_world_words_are_single_tokens(tokenizer):
    # BPE trained on the world's text learns its words whole, so replies are short in tokens.
    assert len(tokenizer(" Knead the dough for ten minutes.", add_special_tokens=False)["input_ids"]) == 7


def test_chat_template_renders_the_hh_format(tokenizer):
    messages = [{"role": "user", "content": "How do I bake bread?"},
                {"role": "assistant", "content": "Bake it in a hot oven."}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == "<|bos|>" + format_prompt("How do I bake bread?") + " Bake it in a hot oven.<|eos|>"
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|bos|>" + format_prompt("How do I bake bread?")


def test_saved_and_reloaded_model_gives_identical_logits(tokenizer, tmp_path):
    profile = get_profile("tiny", n_layer=1, hidden_size=64, intermediate_size=128, n_head=2)
    model = build_tiny_model(tokenizer, profile).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded, tok2 = load_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).is_fast
    assert isinstance(reloaded, type(AutoModelForCausalLM.from_config(model.config)))
    batch = tok2(["\n\nHuman: How do I brew tea?\n\nAssistant:", "\n\nHuman: Hi"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reloaded(**batch).logits)
    assert tok2.pad_token_id == tokenizer.pad_token_id != tokenizer.eos_token_id


def test_widths_must_be_multiples_of_64(tokenizer):
    with pytest.raises(ValueError, match="multiple of 64"):
        build_tiny_model(tokenizer, get_profile("tiny", hidden_size=100))


def test_tokenizer_without_pad_token_is_refused(tokenizer, tmp_path):
    model = build_tiny_model(tokenizer, get_profile("tiny", n_layer=1, hidden_size=64, intermediate_size=64, n_head=1))
    model.save_pretrained(tmp_path)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no pad token"):
        load_pretrained(tmp_path)


def test_a_fresh_reward_head_loads_quietly_and_other_missing_weights_are_refused(saved_model, tmp_path, capfd):
    profile = get_profile("tiny", **SMALL)
    capfd.readouterr()
    load_model(saved_model, profile, head="reward")  # a causal-LM checkpoint: the score head is new by design
    said = "".join(capfd.readouterr())
    assert "LOAD REPORT" not in said and "Loading weights" not in said and "not sharded" not in said
    broken = tmp_path / "broken"
    shutil.copytree(saved_model, broken)
    weights = load_file(broken / "model.safetensors")
    weights.pop(next(k for k in weights if "mlp" in k))
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="weights missing from the checkpoint"):
        load_model(broken, profile)


def test_a_model_or_adapter_with_nan_weights_is_refused_when_loaded_naming_file_and_weight(saved_model, tmp_path):
    """A damaged or diverged model loaded silently: its logits and scores were NaN, seen at best as a NaN reward in
    a table or a training stop at step 1 that blamed the learning rate."""
    profile = get_profile("tiny", **SMALL)
    broken = tmp_path / "broken"
    shutil.copytree(saved_model, broken)
    weights = load_file(broken / "model.safetensors")
    name = next(k for k in weights if "mlp" in k)
    weights[name][0, 0] = float("nan")
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    for load in (lambda: load_model(broken, profile), lambda: load_pretrained(broken), lambda: load_judge(broken)):
        with pytest.raises(ValueError, match=rf"{broken}: weight .*{name} holds NaN"):
            load()
    model, _ = load_for_training(saved_model, profile)
    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)
    weights = load_file(adapter / "adapter_model.safetensors")
    weights[next(iter(weights))].fill_(float("inf"))
    save_file(weights, adapter / "adapter_model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"{adapter}: weight .*lora.* holds NaN or infinite values"):
        load_for_training(saved_model, profile, adapter=adapter)


def test_pretraining_loss_in_length_groups_is_transformers_causal_lm_loss():
    from rrhf_lite.course.pretrain import lm_batches, lm_step

    tokenizer = build_tokenizer(TinyWorld(seed=0).dialogues(3000), vocab_size=1024)  # other tests change the fixture's
    texts = sorted(TinyWorld(seed=1).dialogues(64), key=len)
    texts = texts[:8] + texts[-8:]  # short and long dialogues in one batch
    batch = next(iter(lm_batches(tokenizer, texts, batch_size=16, max_length=128, seed=0)))
    lengths = batch["attention_mask"].sum(-1)
    assert lengths.max() > 1.5 * lengths.float().median()  # enough padding for two groups
    model = build_tiny_model(tokenizer, get_profile("tiny", **SMALL))
    grads = []
    for loss in (lm_step(model, batch)[0], model(**batch).loss):  # ours in two groups, transformers' in one pass
        model.zero_grad()
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        assert loss.item() == pytest.approx(model(**batch).loss.item(), abs=1e-5)
    for ours, theirs in zip(*grads):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-4)
    with pytest.raises(ValueError, match="labels must be -100 on padding only"):
        lm_step(model, {**batch, "labels": batch["input_ids"]})


def test_bitsandbytes_import_drops_only_its_report_of_the_missing_kernels_package(caplog):
    """While bitsandbytes is imported, ``kernels`` is unimportable and bitsandbytes logs that ImportError: that one
    record is dropped (whatever its wording); every other record of that logger passes."""
    from rrhf_lite.core import bitsandbytes_import

    logger = logging.getLogger("rrhf_lite.test")
    logger.addFilter(bitsandbytes_import._not_about_kernels_missing)
    try:
        with caplog.at_level(logging.WARNING, logger=logger.name):
            with bitsandbytes_import._kernels_unimportable():
                try:
                    import kernels  # noqa: F401
                except ImportError as missing:
                    logger.warning("any wording at all: %s", missing)
            logger.warning("another warning: %s", ImportError("no module named 'other'", name="other"))
            logger.warning("a third, with no arguments")
    finally:
        logger.removeFilter(bitsandbytes_import._not_about_kernels_missing)
    assert [r.getMessage() for r in caplog.records] == [
        "another warning: no module named 'other'", "a third, with no arguments"]
    import kernels  # importable again afterwards: transformers uses it

    assert kernels.get_kernel


NETWORK_GUARD = """
import json, socket
opened = []
def refuse(*args, **kwargs):
    opened.append(repr(args[:2]))
    raise OSError("network blocked by the test")
socket.getaddrinfo = refuse
socket.create_connection = refuse
socket.socket.connect = lambda self, address: refuse(address)
socket.socket.connect_ex = lambda self, address: refuse(address)
import rrhf_lite.core.models
print(json.dumps(opened))
"""


@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE=1", "online"])
def test_importing_the_models_module_prints_nothing_and_opens_no_connection(offline, monkeypatch):
    """A fresh interpreter imports rrhf_lite.core.models (and so peft and bitsandbytes), with and without HF_HUB_OFFLINE
    (make main runs without it): nothing printed, no name looked up, no connection opened. On a CPU with
    AVX512-BF16, bitsandbytes would otherwise ask the hub for a kernel the package never runs."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    done = subprocess.run([sys.executable, "-c", NETWORK_GUARD], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout == "[]\n", f"importing rrhf_lite.core.models tried the network: {done.stdout}"


def test_a_hub_model_is_loaded_at_the_pinned_revision(saved_model, tmp_path):
    """profile.base_model_revision reaches from_pretrained: offline, a hub cache that holds one commit of "org/tiny"
    loads at that commit and refuses another (a local folder takes no revision)."""
    import os

    from rrhf_lite.core.models import hub_revision

    commit = "1" * 40
    repo = tmp_path / "hub" / "models--org--tiny"
    shutil.copytree(saved_model, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert hub_revision(saved_model, commit) == {} and hub_revision("org/tiny", commit) == {"revision": commit}
    code = ("import sys\nfrom rrhf_lite.core.models import ModelConfig, load_model\n"
            "model, tokenizer = load_model('org/tiny', ModelConfig(base_model_revision=sys.argv[1]))\nprint('loaded')")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    pinned = subprocess.run([sys.executable, "-c", code, commit], env=env, capture_output=True, text=True, timeout=300)
    assert pinned.returncode == 0 and "loaded" in pinned.stdout, pinned.stderr[-2000:]
    other = subprocess.run([sys.executable, "-c", code, "2" * 40], env=env, capture_output=True, text=True,
                           timeout=300)
    assert other.returncode != 0 and "loaded" not in other.stdout
