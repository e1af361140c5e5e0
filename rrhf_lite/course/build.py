"""Build the course's stages from the command line: on one process, or data-parallel on several GPUs.

    python -m rrhf_lite.course.build sft reward samples dpo rrhf --profile gpu-24gb
    accelerate launch --num_processes 2 -m rrhf_lite.course.build sft reward samples dpo rrhf --profile gpu-24gb
    python -m rrhf_lite.course.build ppo ppo-sweep --profile gpu-24gb   # PPO trains on one process only

Each stage is loaded if it is cached and built otherwise (with whatever it needs first), exactly as a lesson asks
for it, so the lessons then find it in ``runs/``. Under ``accelerate launch`` every process trains on its slice of
each batch and the main process writes the stage (:mod:`rrhf_lite.core.loop`, :mod:`rrhf_lite.course.stages`). ``--set
field=value`` overrides a profile field (the value is read as JSON where it can be: ``--set sft_steps=20``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from rrhf_lite.course import pipeline
from rrhf_lite.course.profiles import get_profile, weak_kl_profile

STAGES = {
    "base": pipeline.base_model_path,
    "sft": pipeline.sft_stage,
    "reward": pipeline.reward_stage,
    "samples": pipeline.samples_stage,
    "rrhf": lambda profile, force: pipeline.method_stage(profile, "rrhf", force=force),
    "pro": lambda profile, force: pipeline.method_stage(profile, "pro", force=force),
    **{f"dpo-{data}": (lambda profile, force, data=data: pipeline.method_stage(profile, "dpo", data, force=force))
       for data in pipeline.DPO_DATA},
    "simpo": lambda profile, force: pipeline.method_stage(profile, "simpo", force=force),
    "ppo": lambda profile, force: pipeline.method_stage(profile, "ppo", force=force),
    # GRPO and RLOO on the reward model, and GRPO on the gold judge (a verifiable reward on the tiny world)
    "grpo": lambda profile, force: pipeline.method_stage(profile, "grpo", force=force),
    "rloo": lambda profile, force: pipeline.method_stage(profile, "rloo", force=force),
    "grpo-gold": lambda profile, force: pipeline.method_stage(profile, "grpo", "gold", force=force),
    # lesson 09's PPO runs with fixed KL coefficients (profiles.weak_kl_profile), the weakest last: its folder
    "ppo-sweep": lambda profile, force: [pipeline.method_stage(weak_kl_profile(profile, beta), "ppo", force=force)
                                         for beta in profile.overopt_kl_coefs][-1],
    # the weakest of them measured on held-out prompts at its snapshots (lesson 09)
    "ppo-trajectory": pipeline.trajectory_stage,
    "online": pipeline.online_stage,
}
STAGES["dpo"] = STAGES["dpo-pairs"]


def _json_or_text(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_overrides(items: list[str], profile_name: str | None) -> dict:
    """``["sft_steps=20", "bon_table_n=[2, 4]", "lora_target_modules=q_proj,v_proj"]`` -> ``{"sft_steps": 20,
    "bon_table_n": (2, 4), "lora_target_modules": ("q_proj", "v_proj")}``. Types and ranges are checked when the
    profile is made (:func:`~rrhf_lite.course.profiles.check_field`)."""
    overrides = {}
    tuples = {f.name for f in dataclasses.fields(type(get_profile(profile_name))) if "tuple" in str(f.type)}
    for item in items:
        field, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--set takes field=value, got {item!r}")
        value = _json_or_text(text)  # a plain string: a path, a hub id
        if field in tuples and isinstance(value, str):  # q_proj,v_proj or 0.1,0.02: a comma-separated list
            value = [_json_or_text(part.strip()) for part in value.split(",")]
        overrides[field] = tuple(value) if field in tuples and isinstance(value, list) else value
    return overrides


def main(argv=None) -> dict[str, str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stages", nargs="+", choices=list(STAGES), help="stages to build or load, in this order")
    parser.add_argument("--profile", default=None, help="profile name (default: $RRHF_LITE_PROFILE or tiny)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a profile field (repeatable)")
    parser.add_argument("--force", action="store_true", help="build the named stages again even if cached")
    args = parser.parse_args(argv)
    profile = get_profile(args.profile, **parse_overrides(args.overrides, args.profile))
    return {name: str(STAGES[name](profile, force=args.force)) for name in args.stages}


if __name__ == "__main__":
    main()
