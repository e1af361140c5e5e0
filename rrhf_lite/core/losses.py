"""Every loss in the package: tensors in, tensors out, one short function each.

Each docstring gives the formula and the paper it comes from. None of them touches a model, so each can be
tested with numbers worked out by hand (``tests/test_losses.py``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

# Largest log-ratio log(pi / pi_old) (or log(pi_ref / pi) in the k3 KL estimate) that is exponentiated: e^20 ~ 5e8.
# Beyond it exp() heads for float32's overflow at ~88 (inf, then inf - inf = NaN). PPO keeps the ratio near 1, so the
# cap only ever acts on a policy that has already blown up; it keeps the loss finite so the guard can name the step.
MAX_LOG_RATIO = 20.0


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


# --------------------------------------------------------------------------------------------------------------------
# Ranking losses: B queries, n candidate responses each, every input a [B, n] tensor.
# --------------------------------------------------------------------------------------------------------------------


class RankingLoss(NamedTuple):
    """What :func:`rrhf_loss` and :func:`pro_loss` return (three scalars)."""

    loss: torch.Tensor  # what to backprop: rank + the weighted SFT term
    rank: torch.Tensor  # the ranking term alone
    sft: torch.Tensor  # the SFT term alone, unweighted: NLL of the best candidate (summed or per token, see each loss)


def _ranking_inputs(logp_sums, lengths, rewards, valid):
    """Check the ``[B, n]`` inputs and overwrite padding slots with harmless values.

    ``torch.where`` (not multiplication by the mask) is what keeps a NaN in a padding slot out of both the loss and
    the gradient: ``0 * nan`` is ``nan``, but ``where`` simply never reads the slot.
    """
    shape = logp_sums.shape
    if len(shape) != 2 or lengths.shape != shape or rewards.shape != shape:
        raise ValueError(f"logp_sums, lengths and rewards must all be [B, n]; got {tuple(shape)}, "
                         f"{tuple(lengths.shape)}, {tuple(rewards.shape)}")
    valid = torch.ones(shape, dtype=torch.bool, device=logp_sums.device) if valid is None else valid.bool()
    if valid.shape != shape:
        raise ValueError(f"valid must have the shape of logp_sums {tuple(shape)}; got {tuple(valid.shape)}")
    counts = valid.sum(dim=1)
    if (counts < 2).any():
        raise ValueError(f"every query needs at least 2 valid candidates to rank; valid counts per query: "
                         f"{counts.tolist()}")
    logp_sums = torch.where(valid, logp_sums, 0.0)
    lengths = torch.where(valid, lengths, 1).to(logp_sums.dtype).clamp(min=1)  # an empty reply counts as 1 token
    rewards = torch.where(valid, rewards, 0)
    return logp_sums, lengths, rewards, valid


def _best_candidate_nll(logps: torch.Tensor, rewards: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``[B]``: ``-logps`` of the best-scored valid candidate of each query (``logps`` summed or per token).

    When several candidates tie for the best reward their NLLs are averaged, so candidate order does not matter.
    """
    top = torch.where(valid, rewards, float("-inf")).amax(dim=1, keepdim=True)
    best = valid & (rewards == top)
    return -torch.where(best, logps, 0.0).sum(dim=1) / best.sum(dim=1)


def rrhf_loss(logp_sums: torch.Tensor, lengths: torch.Tensor, rewards: torch.Tensor, *,
              valid: torch.Tensor | None = None, length_penalty: float = 1.0, sft_weight: float = 1.0) -> RankingLoss:
    """RRHF: rank responses by their length-normalised log-probability (Yuan et al. 2023, "RRHF: Rank Responses
    to Align Language Models with Human Feedback", method section: the equations for p_i, L_rank, L_ft and L).

        p_i    = log pi(y_i | x) / |y_i| ** length_penalty          (log pi(y_i | x) = sum of its token log-probs)
        L_rank = sum over pairs (i, j) with r_i < r_j of max(0, p_i - p_j)
        L_ft   = -log pi(y_best | x),   y_best = the candidate with the highest reward (summed over its tokens)
        L      = L_rank + sft_weight * L_ft

    In words: whenever a worse-scored reply i gets a higher (normalised) log-prob than a better one j, pay the gap.
    Pairs already in the right order cost nothing, and so do ties (r_i == r_j is not a preference). L_rank is summed
    over the pairs of a query and averaged over queries.

    Choices:

    * L_ft is a *sum* of token log-probs, as the paper writes it (the official code takes a mean over the padded
      length instead). The scale matters: L_rank compares per-token means, so a per-token L_ft would be ~|y| times
      weaker than the paper's anchor (``rrhf_sft_weight`` scales it). If several candidates tie for the best reward,
      their NLLs are averaged.
    * The SFT term matters: the ranking loss alone is satisfied by pushing the worse replies down without lifting
      any good one, and the model degenerates (reported by the SimPO authors).

    Where the official code (github.com/GanjinZero/RRHF) departs from the paper: it divides every candidate's
    log-prob by the same padded length, not by that candidate's own length (issue #37); its SFT term is averaged
    over the padded length (#51); its rank loss assumes one query per device with 2-D rewards (#29, #48), and a
    batch size above 1 crashes (#23). This function follows the paper, for any batch size and any number of
    candidates (padding slots marked False in ``valid``).

    Args:
        logp_sums: ``[B, n]`` summed response-token log-probs of each candidate (differentiable).
        lengths: ``[B, n]`` number of response tokens of each candidate (padding not counted).
        rewards: ``[B, n]`` score of each candidate.
        valid: optional ``[B, n]`` bool, False on padding slots; those slots are ignored entirely, even if they
            hold NaN. Every query needs at least 2 valid candidates.
        length_penalty: exponent on the length in p_i (1 = mean log-prob per token, 0 = the plain sum).
        sft_weight: weight of L_ft (the paper uses 1).
    """
    logp_sums, lengths, rewards, valid = _ranking_inputs(logp_sums, lengths, rewards, valid)
    p = logp_sums / lengths**length_penalty
    # worse[b, i, j] is True when candidate i has a lower reward than candidate j (both real candidates).
    worse = (rewards[:, :, None] < rewards[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    gaps = (p[:, :, None] - p[:, None, :]).clamp(min=0)  # max(0, p_i - p_j)
    rank = torch.where(worse, gaps, 0.0).sum(dim=(1, 2)).mean()
    sft = _best_candidate_nll(logp_sums, rewards, valid).mean()
    return RankingLoss(rank + sft_weight * sft, rank, sft)


PRO_SFT_SCALES = ("official", "per_token")


def pro_loss(logp_sums: torch.Tensor, lengths: torch.Tensor, rewards: torch.Tensor, *,
             valid: torch.Tensor | None = None, use_temperature: bool = True, sft_weight: float = 0.05,
             sft_scale: str = "official") -> RankingLoss:
    """PRO: Preference Ranking Optimization (Song et al. 2023, "Preference Ranking Optimization for Human
    Alignment", the PRO loss with the reward-based "dynamic temperature", plus the SFT term).

    Sort the candidates by reward, best first (done here, so unsorted input is fine). With s_k the mean token
    log-prob of candidate k:

        L_rank = sum_{k=1}^{n-1} -log[ exp(s_k * T_k^k) / sum_{i>=k} exp(s_i * T_k^i) ]
        T_k^i  = r_k - r_i  for i > k   (>= 0 after sorting),      T_k^k = max_{i>k} T_k^i
        L      = L_rank + sft_weight * (n - 1)^2 * L_sft,   L_sft = -log pi(y_best)   (summed over its tokens)

    Each term k is a softmax cross-entropy: "candidate k should beat everyone ranked below it". With n = 2 and no
    temperature it is -log sigmoid(s_1 - s_2), the Bradley-Terry / DPO-style logistic loss on the score gap; PRO
    chains n - 1 such contrasts. The temperature scales each rival by how much worse its reward is, so a reply that
    is much worse is pushed down harder than a near-tie. ``use_temperature=False`` sets every T to 1 (the maintainers
    report that PRO still does reasonably well that way).

    Choices:

    * Normalisation: the n - 1 terms are *summed*, as in the paper (not divided by n - 1), then averaged over
      queries. So the ranking term grows with the ranking length; keep n fixed when comparing runs.
    * L_sft, as the official code (github.com/DAMO-ConvAI/PRO) computes it (``sft_scale="official"``, the default):
      the *summed* NLL of the best reply (ties for the best reward averaged), weighted by ``sft_weight * (n - 1)**2``
      with n the query's number of candidates. The paper writes only "beta * L_sft"; the code's scale is what its
      results come from. ``sft_scale="per_token"`` is the weaker anchor this package used before: the *mean* NLL per
      token, weighted by ``sft_weight`` alone, whatever n (at n = 5 and 30-token replies, ~480 times weaker). The
      anchor is what keeps PRO near the SFT model: RRHF's is its summed fine-tuning term with weight 1.
    * Candidates are sorted inside the function: the official code assumes sorted input, and unsorted rewards there
      make the temperatures negative. Here every T is >= 0. Padding slots sort last and are left out of every
      softmax. Tied rewards keep their input order (a stable sort), so with ties the loss can depend on that order.
    * ``logsumexp`` keeps the softmax finite even for log-probs around -1e4 times reward gaps around 1e4.

    Args: as for :func:`rrhf_loss`; ``sft_weight`` defaults to 0.05 (the official HH script); ``sft_scale`` is
    ``"official"`` or ``"per_token"`` (above).
    """
    if sft_scale not in PRO_SFT_SCALES:
        raise ValueError(f"sft_scale must be one of {PRO_SFT_SCALES}, got {sft_scale!r}")
    logp_sums, lengths, rewards, valid = _ranking_inputs(logp_sums, lengths, rewards, valid)
    scores = logp_sums / lengths  # s: mean log-prob per token, [B, n]
    order = torch.where(valid, rewards, float("-inf")).argsort(dim=1, descending=True, stable=True)
    s, r, ok = (t.gather(1, order) for t in (scores, rewards, valid))  # best first, padding last
    pos = torch.arange(s.shape[1], device=s.device)
    below = (pos[None, :] > pos[:, None]) & ok[:, None, :]  # below[b, k, i]: real candidate i is ranked below k
    if use_temperature:
        temp = torch.where(below, (r[:, :, None] - r[:, None, :]).to(s.dtype), 0.0)  # T_k^i = r_k - r_i
        own_temp = temp.amax(dim=2)  # T_k^k = max_{i>k} T_k^i
    else:
        temp, own_temp = below.to(s.dtype), torch.ones_like(s)
    own = s * own_temp  # s_k * T_k^k, [B, n]
    rivals = torch.where(below, s[:, None, :] * temp, float("-inf"))  # s_i * T_k^i for i > k, [B, n, n]
    log_denominator = torch.logsumexp(torch.cat([own[:, :, None], rivals], dim=2), dim=2)
    has_rival = below.any(dim=2)  # k is a real candidate with at least one real candidate below it
    rank = torch.where(has_rival, log_denominator - own, 0.0).sum(dim=1).mean()
    if sft_scale == "per_token":
        sft = _best_candidate_nll(scores, rewards, valid)
        weight = torch.full_like(sft, sft_weight)
    else:
        sft = _best_candidate_nll(logp_sums, rewards, valid)
        weight = sft_weight * (valid.sum(dim=1) - 1).to(sft.dtype) ** 2
    return RankingLoss(rank + (weight * sft).mean(), rank, sft.mean())


# --------------------------------------------------------------------------------------------------------------------
# DPO and IPO: one chosen and one rejected reply per prompt.
# --------------------------------------------------------------------------------------------------------------------


class DPOLoss(NamedTuple):
    """What :func:`dpo_loss` returns."""

    loss: torch.Tensor  # scalar, mean over the batch
    chosen_rewards: torch.Tensor  # [B] implicit reward beta * (log pi - log pi_ref) of the chosen reply, detached
    rejected_rewards: torch.Tensor  # [B] the same for the rejected reply, detached


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, *, beta: float = 0.1, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
             chosen_lengths: torch.Tensor | None = None, rejected_lengths: torch.Tensor | None = None,
             simpo_gamma: float = 0.0) -> DPOLoss:
    """Direct Preference Optimization (Rafailov et al. 2023, eq. 7) and two variants: IPO (Azar et al. 2023, eq. 17)
    and SimPO (Meng et al. 2024, eq. 6).

    Inputs are ``[B]`` log-probs of whole responses, i.e. token log-probs *summed* over the response, under the
    policy and under the frozen reference. With the log-ratio margin

        h = (log pi(y_c) - log pi_ref(y_c)) - (log pi(y_r) - log pi_ref(y_r))

    ``loss_type="sigmoid"`` (DPO):

        L = -(1 - ls) * log sigmoid(beta * h) - ls * log sigmoid(-beta * h)

    ``ls = label_smoothing`` is conservative DPO (cDPO): it assumes each label is flipped with probability ls, so the
    loss stops pushing once the margin is large instead of pushing for ever. ls = 0 is plain DPO.

    ``loss_type="ipo"``: each log-ratio is divided by its own number of response tokens, then

        L = (h_norm - 1 / (2 * beta))**2,   h_norm = (log pi(y_c) - log pi_ref(y_c)) / |y_c| - (same for y_r) / |y_r|

    ``loss_type="simpo"``: no reference at all; each reply's score is its *mean* token log-prob (RRHF's score), and
    the margin must exceed a target ``gamma`` (``simpo_gamma``):

        L = -log sigmoid(beta * log pi(y_c) / |y_c| - beta * log pi(y_r) / |y_r| - gamma)

    (the paper uses beta of about 2 to 2.5 and gamma / beta about 0.5; ``ref_chosen`` and ``ref_rejected`` are
    ignored and may be None).

    IPO regresses the margin onto a fixed target instead of pushing it to infinity, which is its answer to DPO
    over-fitting deterministic preferences. The paper writes h with whole-sequence log-probs; dividing by length
    (as TRL's IPO does) keeps the target 1/(2 beta) on a per-token scale, so it means the same for short and long
    replies. ``label_smoothing`` is not used by IPO.

    Why sums and not means for DPO: the derivation says the optimal policy satisfies
    beta * log(pi(y|x) / pi_ref(y|x)) = r(x, y) - beta * log Z(x), where pi(y|x) is the probability of the *whole*
    sequence, the product of its token probabilities, so its log is the sum. Averaging per token gives a different
    objective (length-normalised DPO, as in SimPO), not DPO.

    Sanity check: at step 0 the policy equals the reference, so h = 0, the loss is ln 2 ~ 0.6931 and both implicit
    rewards are 0.

    Returns:
        ``DPOLoss(loss, chosen_rewards, rejected_rewards)``, the rewards being beta * (log pi - log pi_ref) of the
        summed log-probs (SimPO: beta times the mean log-prob), detached: they are for logging, e.g. reward accuracy
        and margins.
    """
    if loss_type not in ("sigmoid", "ipo", "simpo"):
        raise ValueError(f"unknown loss_type {loss_type!r}; expected 'sigmoid', 'ipo' or 'simpo'")
    if loss_type != "sigmoid" and (chosen_lengths is None or rejected_lengths is None):
        raise ValueError(f"loss_type={loss_type!r} normalises by length: pass chosen_lengths and rejected_lengths")
    if loss_type == "simpo":
        chosen_score, rejected_score = beta * policy_chosen / chosen_lengths, beta * policy_rejected / rejected_lengths
        losses = -F.logsigmoid(chosen_score - rejected_score - simpo_gamma)
        return DPOLoss(losses.mean(), chosen_score.detach(), rejected_score.detach())
    chosen_ratio = policy_chosen - ref_chosen  # log pi(y_c) / pi_ref(y_c)
    rejected_ratio = policy_rejected - ref_rejected
    if loss_type == "sigmoid":
        h = chosen_ratio - rejected_ratio
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    else:
        h = chosen_ratio / chosen_lengths - rejected_ratio / rejected_lengths
        losses = (h - 1 / (2 * beta)) ** 2
    return DPOLoss(losses.mean(), beta * chosen_ratio.detach(), beta * rejected_ratio.detach())


# --------------------------------------------------------------------------------------------------------------------
# PPO pieces (Schulman et al. 2017; Huang et al. 2024, "The N implementation details of RLHF with PPO").
# Per-token tensors are [B, T] over response tokens; ``mask`` is 1 (True) on real response tokens, and whatever sits
# after the end of a response (padding) is ignored.
# --------------------------------------------------------------------------------------------------------------------


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the positions where the bool ``mask`` is True (0 when there are none)."""
    return torch.where(mask, x, 0.0).sum() / mask.sum().clamp(min=1)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016), backwards over the response tokens:

        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}
        returns = A + V   (the value head's regression target)

    Masked positions are treated as terminal: V and r are 0 there, so the value after the last real token is 0 and
    nothing after the end leaks backwards. gamma = 1 (no discounting inside one reply) and lam = 0.95 are the usual
    RLHF settings. The outputs are fixed targets, so the inputs are detached.

    Args:
        rewards: ``[B, T]`` per-token rewards (e.g. the KL penalty on every token plus the RM score on the last).
        values: ``[B, T]`` value-head predictions V_t.
        mask: ``[B, T]`` 1 on real response tokens.

    Returns:
        ``(advantages, returns)``, both ``[B, T]`` and 0 outside the mask.
    """
    mask = mask.bool()
    rewards = torch.where(mask, rewards.detach(), 0.0)
    values = torch.where(mask, values.detach(), 0.0)
    advantages = []
    next_value = next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = torch.where(mask[:, t], delta + gamma * lam * next_advantage, 0.0)
        next_value = values[:, t]
        advantages.append(next_advantage)
    advantages = torch.stack(advantages[::-1], dim=1)
    return advantages, advantages + values


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise ``x`` to mean 0 and variance 1 over the masked positions of the whole batch:

        whiten(x) = (x - mean) / sqrt(var + 1e-8)        (population variance, masked positions only)

    ``shift_mean=False`` adds the mean back (only rescales), which is what the N-details recipe does for rewards so
    that their sign still means something; advantages are whitened fully. Positions outside the mask come out 0.
    """
    mask = mask.bool()
    mean = _masked_mean(x, mask)
    var = _masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return torch.where(mask, out, 0.0)


def ppo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, *, clip_range: float = 0.2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), as a loss to minimise, per token:

        ratio = exp(log pi(a_t) - log pi_old(a_t))
        L     = masked mean of max(-A_t * ratio, -A_t * clip(ratio, 1 - eps, 1 + eps))

    The max of the two negatives is the min of the two objectives: once the ratio has moved past 1 +/- eps in the
    direction the advantage favours, the clipped branch wins and its gradient is 0, so one batch cannot drag the
    policy far from the one that sampled it.

    Returns ``(loss, clip_fraction, approx_kl)``; the last two are detached diagnostics:

    * clip_fraction: share of real tokens where the clipped branch is active (strictly larger than the unclipped).
    * approx_kl: masked mean of 0.5 * (log pi - log pi_old)**2, the "k2" estimator of KL(pi_old || pi) (as in the
      N-details implementation); it is non-negative and accurate while the two policies are close.

    Numerical safety: the log-ratio is capped at ``MAX_LOG_RATIO`` (20) before ``exp``, which would overflow in
    float32 past ~88 and turn the loss into inf or NaN. Within PPO pi and pi_old are close (a large clip_fraction or
    approx_kl is the alarm to watch for), so the cap never changes a healthy run; past it the ratio stays at e^20
    and the token's gradient is 0.
    """
    mask = mask.bool()
    log_ratio = torch.where(mask, logprobs - old_logprobs, 0.0)
    advantages = torch.where(mask, advantages, 0.0)
    ratio = torch.exp(log_ratio.clamp(max=MAX_LOG_RATIO))
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    loss = _masked_mean(torch.max(unclipped, clipped), mask)
    clip_fraction = _masked_mean((clipped > unclipped).to(ratio.dtype), mask)
    approx_kl = _masked_mean(0.5 * log_ratio.detach() ** 2, mask)
    return loss, clip_fraction, approx_kl


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, *,
                   clip_range: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss (as in OpenAI's baselines PPO and the N-details recipe):

        V_clip = clip(V, V_old - eps, V_old + eps)
        L      = 0.5 * masked mean of max((V - R)**2, (V_clip - R)**2)

    Taking the max makes the update pessimistic: the value head gets no credit for moving more than eps away from
    its old prediction. Note that eps is in reward units here, so it depends on the reward scale.

    Returns ``(loss, clip_fraction)``, the second (detached) being the share of real tokens where the clipped term
    is the larger one.
    """
    mask = mask.bool()
    values, old_values, returns = (torch.where(mask, t, 0.0) for t in (values, old_values, returns))
    clipped_values = torch.clamp(values, old_values - clip_range, old_values + clip_range)
    unclipped = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * _masked_mean(torch.max(unclipped, clipped), mask)
    clip_fraction = _masked_mean((clipped > unclipped).to(values.dtype), mask)
    return loss, clip_fraction


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from the log-probs of tokens sampled from pi (Schulman 2020,
    "Approximating KL divergence", http://joschu.net/blog/kl-approx.html):

        k1 = log pi - log pi_ref                         unbiased, but single tokens can be negative
        k3 = (r - 1) - log r,  r = pi_ref / pi           unbiased and never negative (r - 1 >= log r)

    RLHF with PPO puts -beta * k1 into every token's reward (Ziegler et al. 2019); its mean over samples is the KL.
    ``expm1`` computes r - 1 accurately when r is close to 1. For k3, log r is capped at ``MAX_LOG_RATIO`` (20) so
    that a token pi finds e^20 times less likely than pi_ref gives a large finite penalty (~5e8), not inf.
    """
    if kind == "k1":
        return logprobs - ref_logprobs
    if kind == "k3":
        log_r = (ref_logprobs - logprobs).clamp(max=MAX_LOG_RATIO)
        return torch.expm1(log_r) - log_r
    raise ValueError(f"unknown KL estimator kind {kind!r}; expected 'k1' or 'k3'")


# --------------------------------------------------------------------------------------------------------------------
# Critic-free RL on groups of replies: GRPO (Shao et al. 2024) and RLOO (Ahmadian et al. 2024). Each prompt gets k
# sampled replies and one reward per reply (``[B, k]``); where RRHF ranks the k replies, these turn the k rewards into
# policy-gradient weights. Equal rewards in a group give zero advantage in both (and zero ranking loss in RRHF).
# --------------------------------------------------------------------------------------------------------------------
GRPO_NORMALISATIONS = ("per_reply", "constant")


def group_advantages(rewards: torch.Tensor, *, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """GRPO's outcome advantage (Shao et al. 2024, sec. 4.1.2), one per reply, ``[B, k]`` from ``[B, k]`` rewards:

        A_i = (r_i - mean(r)) / (std(r) + eps)      over the k replies to the same prompt

    ``std`` is the sample standard deviation (k - 1 in the denominator, as TRL computes it); ``eps`` keeps a group of
    equal rewards at A = 0 instead of 0 / 0. ``scale=False`` drops the division, as Dr. GRPO (Liu et al. 2025)
    recommends: dividing by the group's spread gives prompts whose replies all score alike (too easy, too hard) as
    much weight as the others. Every token of reply i gets A_i."""
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    return centred / (rewards.std(dim=1, keepdim=True) + eps) if scale else centred


def leave_one_out_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """RLOO's advantage (Ahmadian et al. 2024, eq. 5), ``[B, k]``: each reply's reward minus the mean of the *other*
    k - 1 replies' rewards to the same prompt,

        A_i = R_i - (1 / (k - 1)) sum_{j != i} R_j  =  k / (k - 1) * (R_i - mean(R)),

    a baseline that does not depend on reply i itself, so the gradient estimate stays unbiased. ``R`` is the sequence
    reward with the KL penalty already folded in (``r - beta * KL``, :func:`rloo_loss`). Needs k >= 2."""
    k = rewards.shape[1]
    if k < 2:
        raise ValueError(f"a leave-one-out baseline needs at least 2 replies per prompt, got {k}")
    return (rewards - rewards.mean(dim=1, keepdim=True)) * (k / (k - 1))


class GRPOLoss(NamedTuple):
    loss: torch.Tensor  # scalar, to minimise
    clip_fraction: torch.Tensor  # share of real tokens where the clipped branch is active (detached)
    kl: torch.Tensor  # mean per-token k3 estimate of KL(pi || pi_ref) (detached)


def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
              advantages: torch.Tensor, mask: torch.Tensor, *, clip_range: float = 0.2, beta: float = 0.04,
              normalisation: str = "per_reply", max_tokens: int | None = None) -> GRPOLoss:
    """GRPO's objective (Shao et al. 2024, eq. 3) as a loss, from per-token ``[N, T]`` log-probs of N sampled replies
    (all groups flattened) under the policy, the policy that sampled them and the reference, and one advantage per
    reply ``[N]`` (:func:`group_advantages`):

        per token:  o_t = min(ratio_t * A, clip(ratio_t, 1 - eps, 1 + eps) * A) - beta * k3_t
        ratio_t = exp(log pi - log pi_old),   k3_t = pi_ref/pi - log(pi_ref/pi) - 1   (:func:`kl_penalty`, always >= 0)

    ``normalisation="per_reply"`` (the paper): the mean of o_t over each reply's tokens, then the mean over replies,
    ``(1/N) sum_i (1/|o_i|) sum_t o_t``. Dr. GRPO (Liu et al. 2025) showed that the 1/|o_i| favours short replies
    when A > 0 and long ones when A < 0; ``"constant"`` divides every reply's token sum by the same ``max_tokens``
    (e.g. ``max_new_tokens``) instead: ``(1/N) sum_i (1/max_tokens) sum_t o_t``. The KL is a term of the loss, not of
    the reward (unlike PPO's and RLOO's). Returns :class:`GRPOLoss`."""
    if normalisation not in GRPO_NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {GRPO_NORMALISATIONS}, got {normalisation!r}")
    if normalisation == "constant" and not max_tokens:
        raise ValueError("normalisation='constant' divides by a constant number of tokens: pass max_tokens")
    mask = mask.bool()
    log_ratio = torch.where(mask, logprobs - old_logprobs, 0.0)
    ratio = torch.exp(log_ratio.clamp(max=MAX_LOG_RATIO))
    adv = advantages.unsqueeze(1).expand_as(ratio)
    surrogate = torch.min(ratio * adv, ratio.clamp(1 - clip_range, 1 + clip_range) * adv)
    kl = torch.where(mask, kl_penalty(torch.where(mask, logprobs, 0.0), torch.where(mask, ref_logprobs, 0.0), "k3"),
                     0.0)
    per_token = torch.where(mask, surrogate - beta * kl, 0.0)
    tokens = mask.sum(dim=1).clamp(min=1)
    per_reply = per_token.sum(dim=1) / (tokens if normalisation == "per_reply" else max_tokens)
    clipped = (ratio.clamp(1 - clip_range, 1 + clip_range) * adv < ratio * adv) & mask
    return GRPOLoss(-per_reply.mean(), (clipped.sum() / mask.sum()).detach(), _masked_mean(kl, mask).detach())


def rloo_loss(logp_sums: torch.Tensor, scores: torch.Tensor, kl: torch.Tensor, *, beta: float = 0.05) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024): REINFORCE on whole replies with the leave-one-out baseline, ``[B, k]`` inputs:
    ``logp_sums`` the policy's summed log-prob of each sampled reply (with gradient), ``scores`` the reward function's
    score, ``kl`` each reply's summed log pi - log pi_ref (the paper folds the KL penalty into the sequence reward,
    ``R = score - beta * KL``, as PPO does per token). Then

        L = -(1 / (B k)) sum_{b, i} A_bi * log pi(y_bi | x_b),   A = :func:`leave_one_out_advantages` of R

    with A held constant (detached). One gradient step per batch of samples (the paper's setting): no ratio, no
    clipping, no value model."""
    rewards = (scores - beta * kl).detach()
    return -(leave_one_out_advantages(rewards) * logp_sums).mean()
