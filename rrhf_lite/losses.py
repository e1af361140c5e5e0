"""Every loss in the package: tensors in, tensors out, one short function each.

Each docstring gives the formula and the paper it comes from. None of them touches a model, so each can be
tested with numbers worked out by hand (``tests/test_losses.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sft_loss(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Supervised fine-tuning: mean negative log-likelihood over the response tokens of the whole batch.

        L_SFT = - (1 / sum_i |y_i|) * sum_i sum_t log pi(y_i,t | x_i, y_i,<t)

    Every response token in the batch weighs the same (long replies are not down-weighted per example), which is
    what ``transformers``' causal-LM loss and TRL's SFT do with prompt tokens masked out.

    Args:
        token_logps: ``[batch, T]`` log-probs of the actual tokens (0 outside the response).
        mask: ``[batch, T]`` 1 on response tokens.
    """
    return -(token_logps * mask).sum() / mask.sum().clamp(min=1)


def reward_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | float = 0.0,
                center_coef: float = 0.0) -> torch.Tensor:
    """Bradley-Terry reward-model loss (Ouyang et al. 2022, eq. 1; Bai et al. 2022, sec. 2):

        L_RM = - mean log sigmoid(r(x, y_c) - r(x, y_r) - m)  +  c * mean (r(x, y_c) + r(x, y_r))^2

    ``m`` is an optional margin (Llama 2 uses one that grows with how clearly raters preferred ``y_c``); the second
    term, with a small ``c`` such as 0.01, keeps rewards centred near 0 (it does not change which reply wins).
    ``logsigmoid`` is used instead of ``log(sigmoid(.))`` so large gaps cannot underflow to ``log 0``.

    Args:
        chosen, rejected: ``[batch]`` scalar rewards of the preferred and the other reply.
    """
    loss = -F.logsigmoid(chosen - rejected - margin).mean()
    if center_coef:
        loss = loss + center_coef * ((chosen + rejected) ** 2).mean()
    return loss
