"""rrhf-lite: learn preference alignment (SFT, reward models, best-of-n, RRHF, PRO, DPO, PPO) by running it."""

__version__ = "0.1.0"
