"""The README's code runs as it stands: the snippet that trains DPO, RRHF and PPO on one's own model and data."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from rrhf_lite.course.profiles import get_profile
from rrhf_lite.course.standins import build_base_model
from rrhf_lite.course.world import TinyWorld

README = Path(__file__).resolve().parents[1] / "README.md"
MODEL_ID = "Qwen/Qwen2.5-0.5B"


def own_model_snippet() -> str:
    text = README.read_text()
    match = re.search(r"<!-- own-model snippet[^>]*-->\n```python\n(.*?)```", text, re.S)
    assert match, "README.md has no own-model snippet"
    return match.group(1)


def offline_hub_cache(root: Path, repo_id: str, build) -> Path:
    """A Hugging Face hub cache holding ``repo_id`` (what a download leaves behind), so that ``from_pretrained(
    repo_id)`` finds it with ``HF_HUB_OFFLINE=1``; ``build(folder)`` writes the model's files."""
    commit = "0" * 40
    repo = root / f"models--{repo_id.replace('/', '--')}"
    build(repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return root


def test_the_own_model_snippet_trains_dpo_rrhf_and_ppo_with_no_profile(tmp_path):
    snippet = own_model_snippet()
    assert f'model_id = "{MODEL_ID}"' in snippet and "get_profile" not in snippet and "stage" not in snippet
    world = TinyWorld(seed=0)
    # The hub model's stand-in: a random-weight Qwen2 (Qwen2.5's architecture) whose tokenizer has no pad token,
    # as the rehearsal profile builds it, cached under the hub id the snippet names.
    profile = get_profile("rehearsal")
    cache = offline_hub_cache(tmp_path / "hub", MODEL_ID,
                              lambda folder: build_base_model(world.dialogues(300), profile, folder))
    with open(tmp_path / "my_pairs.jsonl", "w") as f:
        for row in world.preference_dataset(12):
            f.write(json.dumps({k: row[k] for k in ("prompt", "chosen", "rejected")}) + "\n")
    with open(tmp_path / "my_rankings.jsonl", "w") as f:
        for row in world.ranking_dataset(8, k=3):
            f.write(json.dumps({k: row[k] for k in ("prompt", "responses", "scores")}) + "\n")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "ds")}
    result = subprocess.run([sys.executable, "-c", snippet + "\nprint('history rows:', len(history))"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "history rows: 10" in result.stdout  # PPO's history: one row per iteration
    for name in ("my-dpo-adapter", "my-rrhf-adapter", "my-ppo-adapter"):
        assert (tmp_path / name / "adapter_config.json").exists(), name
