"""Shared test fixtures: a small Llama and its tokenizer, built from the tiny world and saved like a hub model."""

from pathlib import Path

import pytest

from rrhf_lite.models import build_tiny_model, build_tokenizer
from rrhf_lite.profiles import get_profile
from rrhf_lite.world import TinyWorld

# A model small enough for unit tests (a few seconds to build), with small LoRA adapters.
SMALL = dict(n_layer=2, hidden_size=64, intermediate_size=128, n_head=2, lora_r=4, lora_alpha=8)


def save_small_model(path: Path) -> Path:
    """Build the ``SMALL`` model and its tokenizer and ``save_pretrained`` both into ``path``."""
    tokenizer = build_tokenizer(TinyWorld(seed=0).dialogues(1000), vocab_size=400)
    build_tiny_model(tokenizer, get_profile("tiny", **SMALL)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def saved_model(tmp_path_factory) -> Path:
    """Folder of a saved ``SMALL`` model, shared by every test of a worker (tests must not modify it)."""
    return save_small_model(tmp_path_factory.mktemp("base"))
