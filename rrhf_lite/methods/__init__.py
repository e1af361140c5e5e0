"""The second floor: one module per method (SFT, the reward model, RRHF and PRO, DPO, PPO, GRPO and RLOO), each with
its small config and a trainer that takes a model, a tokenizer and data; best-of-n, candidates and evaluation.

Imports only from :mod:`rrhf_lite.core`: copy a method's module and the core, and train your own model with it."""
