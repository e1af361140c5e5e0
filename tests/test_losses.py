"""Losses, with values worked out by hand."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from rrhf_lite.core.losses import (
    dpo_loss,
    gae,
    group_advantages,
    grpo_loss,
    kl_penalty,
    leave_one_out_advantages,
    ppo_policy_loss,
    ppo_value_loss,
    pro_loss,
    reward_loss,
    rloo_loss,
    rrhf_loss,
    sft_loss,
    whiten,
)


def test_sft_loss_is_mean_nll_over_response_tokens():
    # Two sequences: response log-probs (-1, -2) and (-3); the prompt position (-9) is masked out.
    token_logps = torch.tensor([[-9.0, -1.0, -2.0], [-9.0, -3.0, 0.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    assert sft_loss(token_logps, mask).item() == pytest.approx((1 + 2 + 3) / 3)


def test_sft_loss_of_an_all_masked_batch_is_zero_not_nan():
    assert sft_loss(torch.zeros(2, 3), torch.zeros(2, 3)).item() == 0.0


def test_reward_loss_hand_values():
    # Equal rewards: -log sigmoid(0) = ln 2.
    assert reward_loss(torch.tensor([1.0]), torch.tensor([1.0])).item() == pytest.approx(math.log(2))
    # Gap 2: -log sigmoid(2) = log(1 + e^-2).
    assert reward_loss(torch.tensor([3.0]), torch.tensor([1.0])).item() == pytest.approx(math.log(1 + math.exp(-2)))
    # A margin of 2 turns gap 2 into gap 0.
    assert reward_loss(torch.tensor([3.0]), torch.tensor([1.0]), margin=2.0).item() == pytest.approx(math.log(2))
    # Centring: + c * (r_c + r_r)^2 = 0.01 * 16.
    assert reward_loss(torch.tensor([3.0]), torch.tensor([1.0]), center_coef=0.01).item() == pytest.approx(
        math.log(1 + math.exp(-2)) + 0.16)


def test_reward_loss_only_sees_differences_and_is_finite_at_extremes():
    c, r = torch.tensor([0.5, -1.0]), torch.tensor([0.2, 3.0])
    assert reward_loss(c + 7.0, r + 7.0).item() == pytest.approx(reward_loss(c, r).item())
    assert torch.isfinite(reward_loss(torch.tensor([-1e4]), torch.tensor([1e4])))
    assert reward_loss(torch.tensor([1e4]), torch.tensor([-1e4])).item() == pytest.approx(0.0)


# ---------------------------------------------------------------------------------------------------------------------
# Helpers for the ranking losses
# ---------------------------------------------------------------------------------------------------------------------

def t(*rows, dtype=torch.float32):
    return torch.tensor(rows, dtype=dtype)


def nll_pro_term(own, rivals):
    """-log[ exp(own) / (exp(own) + sum exp(rivals)) ] in plain math."""
    return -own + math.log(math.exp(own) + sum(math.exp(x) for x in rivals))


# ---------------------------------------------------------------------------------------------------------------------
# RRHF: hand values and sanity checks
# ---------------------------------------------------------------------------------------------------------------------

def test_rrhf_hand_values_one_misordered_pair():
    # p = logp_sum / length = (-6/2, -4/4, -2/1) = (-3, -1, -2); rewards (1, 2, 3).
    # Pairs with r_i < r_j: (0,1): max(0, -3 - -1) = 0; (0,2): max(0, -3 - -2) = 0; (1,2): max(0, -1 - -2) = 1.
    # Rank = 1. SFT: best is candidate 2 (r = 3): -(-2)/1 = 2. Loss = 1 + 1 * 2 = 3.
    out = rrhf_loss(t([-6.0, -4.0, -2.0]), t([2, 4, 1]), t([1.0, 2.0, 3.0]))
    assert out.rank.item() == pytest.approx(1.0)
    assert out.sft.item() == pytest.approx(2.0)
    assert out.loss.item() == pytest.approx(3.0)
    # sft_weight scales only the SFT term: 1 + 0.5 * 2 = 2.
    assert rrhf_loss(t([-6.0, -4.0, -2.0]), t([2, 4, 1]), t([1.0, 2.0, 3.0]), sft_weight=0.5).loss.item() == \
        pytest.approx(2.0)
    # length_penalty = 0 ranks the plain sums (-6, -4, -2): already in reward order, so rank = 0.
    assert rrhf_loss(t([-6.0, -4.0, -2.0]), t([2, 4, 1]), t([1.0, 2.0, 3.0]), length_penalty=0.0).rank.item() == 0.0


def test_rrhf_sums_pairs_within_a_query_and_averages_over_queries():
    # Query 1: p = (0, -1, -2) with rewards (1, 2, 3): every pair reversed: (0-(-1)) + (0-(-2)) + (-1-(-2)) = 4.
    # Query 2: p = (-1, -3) with rewards (5, 0): in order, 0; third slot is padding full of NaN.
    # Rank = (4 + 0) / 2 = 2. SFT (summed NLL): query 1 best = candidate 2, nll 2; query 2 best = candidate 0,
    # nll 2 (its two tokens sum to -2) -> 2.
    nan = float("nan")
    out = rrhf_loss(t([0.0, -1.0, -2.0], [-2.0, -6.0, nan]), t([1, 1, 1], [2, 2, nan]),
                    t([1.0, 2.0, 3.0], [5.0, 0.0, nan]), valid=t([1, 1, 1], [1, 1, 0]).bool())
    assert out.rank.item() == pytest.approx(2.0)
    assert out.sft.item() == pytest.approx(2.0)


def test_rrhf_ties_contribute_nothing_and_tied_best_candidates_are_averaged():
    # Equal rewards: neither order is preferred, so no pair is penalised, whatever the log-probs.
    assert rrhf_loss(t([-1.0, -3.0]), t([1, 1]), t([2.0, 2.0])).rank.item() == 0.0
    assert rrhf_loss(t([-3.0, -1.0]), t([1, 1]), t([2.0, 2.0])).rank.item() == 0.0
    # Two candidates tie for the best reward: SFT = mean of their summed NLLs = (2 + 9) / 2 = 5.5.
    out = rrhf_loss(t([-2.0, -9.0, -1.0]), t([2, 3, 1]), t([7.0, 7.0, 0.0]))
    assert out.sft.item() == pytest.approx(5.5)


def test_rrhf_gradient_pushes_the_worse_candidate_down_and_the_better_up():
    # p = (-4/2, -4/1, -1/1) = (-2, -4, -1) with rewards (3, 1, 2). The only costly pair is (2 worse than 0):
    # max(0, p_2 - p_0) = -1 - -2 = 1. Its gradient: d/dlogp_0 = -1/2 (raise the better one), d/dlogp_2 = +1.
    logps = t([-4.0, -4.0, -1.0]).requires_grad_()
    out = rrhf_loss(logps, t([2, 1, 1]), t([3.0, 1.0, 2.0]), sft_weight=0.0)
    assert out.rank.item() == pytest.approx(1.0)
    out.loss.backward()
    assert logps.grad[0].tolist() == pytest.approx([-0.5, 0.0, 1.0])


# ---------------------------------------------------------------------------------------------------------------------
# PRO: hand values and sanity checks
# ---------------------------------------------------------------------------------------------------------------------

def test_pro_hand_values_n3_with_and_without_temperature():
    # Input deliberately unsorted. Sorted best first: rewards (3, 1, 0), mean log-probs s = (-1, -2, -0.5)
    # (candidate 1: -2/2; candidate 0: -4/2; candidate 2: -1.5/3).
    logps, lengths, rewards = t([-4.0, -2.0, -1.5]), t([2, 2, 3]), t([1.0, 3.0, 0.0])
    # No temperature: k=1: -log e^-1 / (e^-1 + e^-2 + e^-0.5); k=2: -log e^-2 / (e^-2 + e^-0.5).
    expected_plain = nll_pro_term(-1.0, [-2.0, -0.5]) + nll_pro_term(-2.0, [-0.5])
    out = pro_loss(logps, lengths, rewards, use_temperature=False)
    assert out.rank.item() == pytest.approx(expected_plain)
    # Temperatures: T_1^2 = 3-1 = 2, T_1^3 = 3-0 = 3, T_1^1 = max = 3; T_2^3 = 1-0 = 1, T_2^2 = 1.
    # k=1: own -1*3 = -3, rivals -2*2 = -4 and -0.5*3 = -1.5; k=2: own -2*1 = -2, rival -0.5*1 = -0.5.
    expected_temp = nll_pro_term(-3.0, [-4.0, -1.5]) + nll_pro_term(-2.0, [-0.5])
    out = pro_loss(logps, lengths, rewards)
    assert out.rank.item() == pytest.approx(expected_temp)
    # SFT as the official code: the best (reward 3) has summed log-prob -2 -> NLL 2, weighted 0.05 * (3 - 1)^2.
    assert out.sft.item() == pytest.approx(2.0)
    assert out.loss.item() == pytest.approx(expected_temp + 0.05 * 4 * 2.0)
    # The per-token variant: mean log-prob -1 -> NLL 1, weighted 0.05 whatever n.
    per_token = pro_loss(logps, lengths, rewards, sft_scale="per_token")
    assert per_token.sft.item() == pytest.approx(1.0)
    assert per_token.loss.item() == pytest.approx(expected_temp + 0.05)
    with pytest.raises(ValueError, match="sft_scale"):
        pro_loss(logps, lengths, rewards, sft_scale="mean")


def test_pro_official_sft_weight_follows_each_querys_number_of_candidates():
    # Query 1: 3 candidates, best summed log-prob -4 -> weight 0.05 * 2^2; query 2: 2 candidates (+ padding),
    # best -1 -> weight 0.05 * 1^2. The SFT part of the loss is the mean of the weighted NLLs.
    nan = float("nan")
    out = pro_loss(t([-4.0, -2.0, -1.5], [-1.0, -3.0, nan]), t([2, 2, 3], [1, 1, nan]),
                   t([3.0, 1.0, 0.0], [1.0, 0.0, nan]), valid=t([1, 1, 1], [1, 1, 0]).bool())
    assert (out.loss - out.rank).item() == pytest.approx((0.05 * 4 * 4.0 + 0.05 * 1 * 1.0) / 2)
    assert out.sft.item() == pytest.approx((4.0 + 1.0) / 2)


def test_pro_with_two_candidates_is_a_logistic_loss_on_the_score_gap():
    # Query 1: s = (-3/3, -2/1) = (-1, -2), rewards (2, 0.5): best minus worst score = -1 - -2 = 1.
    # Query 2: s = (-2/1, -4/4) = (-2, -1), rewards (-1, 4): best is candidate 1, gap -1 - -2 = 1 again.
    logps, lengths, rewards = t([-3.0, -2.0], [-2.0, -4.0]), t([3, 1], [1, 4]), t([2.0, 0.5], [-1.0, 4.0])
    plain = pro_loss(logps, lengths, rewards, use_temperature=False)
    assert plain.rank.item() == pytest.approx(-F.logsigmoid(torch.tensor([1.0, 1.0])).mean().item())
    # With the temperature both T equal the reward gap (1.5 and 5): -log sigmoid(gap_r * gap_s).
    temp = pro_loss(logps, lengths, rewards)
    assert temp.rank.item() == pytest.approx(-F.logsigmoid(torch.tensor([1.5 * 1.0, 5.0 * 1.0])).mean().item())


def test_pro_sums_the_positions_and_leaves_padding_out_of_every_softmax():
    # Query 1 has 3 candidates, query 2 has 2 plus a NaN padding slot. The batch loss is the mean of the two
    # queries computed alone, i.e. padding changes nothing and the n-1 terms are summed (not averaged).
    nan = float("nan")
    q1 = (t([-1.0, -2.0, -0.5]), t([1, 1, 1]), t([3.0, 1.0, 0.0]))
    q2 = (t([-2.0, -1.0]), t([1, 1]), t([0.0, 1.0]))
    both = pro_loss(t([-1.0, -2.0, -0.5], [-2.0, -1.0, nan]), t([1, 1, 1], [1, 1, nan]),
                    t([3.0, 1.0, 0.0], [0.0, 1.0, nan]), valid=t([1, 1, 1], [1, 1, 0]).bool())
    alone = (pro_loss(*q1).loss + pro_loss(*q2).loss) / 2
    assert both.loss.item() == pytest.approx(alone.item())
    # q1 alone, by hand (no temperature): two terms summed.
    assert pro_loss(*q1, use_temperature=False).rank.item() == pytest.approx(
        nll_pro_term(-1.0, [-2.0, -0.5]) + nll_pro_term(-2.0, [-0.5]))


# ---------------------------------------------------------------------------------------------------------------------
# Ranking losses: properties
# ---------------------------------------------------------------------------------------------------------------------

@st.composite
def ranking_batches(draw, dtype=torch.float64, distinct_rewards=False):
    """B queries x n candidates: log-prob sums in [-1e4, 0], lengths 1..500, integer rewards in [-1e4, 1e4]
    (integers, so that shifting them is exact; small values are mixed in to produce ties)."""
    b, n = draw(st.integers(1, 3)), draw(st.integers(2, 5))
    reward = st.integers(-10_000, 10_000) | st.integers(-2, 2)
    rows = [draw(st.lists(reward, min_size=n, max_size=n, unique=distinct_rewards)) for _ in range(b)]
    logps = draw(st.lists(st.floats(-1e4, 0.0), min_size=b * n, max_size=b * n))
    lengths = draw(st.lists(st.integers(1, 500), min_size=b * n, max_size=b * n))
    return (torch.tensor(logps, dtype=dtype).view(b, n), torch.tensor(lengths).view(b, n),
            torch.tensor(rows, dtype=dtype))


RANKING_LOSSES = [rrhf_loss, pro_loss, lambda *a, **k: pro_loss(*a, use_temperature=False, **k)]
FEW = settings(max_examples=50, deadline=None)


@FEW
@given(batch=ranking_batches(dtype=torch.float32), which=st.sampled_from(RANKING_LOSSES))
def test_ranking_losses_are_finite_with_finite_gradients_at_extremes(batch, which):
    logps, lengths, rewards = batch
    logps.requires_grad_()
    out = which(logps, lengths, rewards)
    out.loss.backward()
    assert all(torch.isfinite(x) for x in out)
    assert torch.isfinite(logps.grad).all()


@FEW
@given(batch=ranking_batches(), shift=st.integers(-10_000, 10_000), which=st.sampled_from(RANKING_LOSSES))
def test_ranking_losses_ignore_a_constant_added_to_every_reward(batch, shift, which):
    logps, lengths, rewards = batch
    assert which(logps, lengths, rewards + shift).loss.item() == pytest.approx(
        which(logps, lengths, rewards).loss.item(), rel=1e-9, abs=1e-6)


@FEW
@given(batch=ranking_batches(), data=st.data())
def test_rrhf_does_not_depend_on_candidate_order(batch, data):
    logps, lengths, rewards = batch
    perm = torch.tensor(data.draw(st.permutations(range(logps.shape[1]))))
    before, after = rrhf_loss(logps, lengths, rewards), rrhf_loss(logps[:, perm], lengths[:, perm], rewards[:, perm])
    assert after.loss.item() == pytest.approx(before.loss.item(), rel=1e-9, abs=1e-6)


@FEW
@given(batch=ranking_batches(distinct_rewards=True), data=st.data(), temperature=st.booleans())
def test_pro_does_not_depend_on_candidate_order_when_rewards_are_distinct(batch, data, temperature):
    logps, lengths, rewards = batch
    perm = torch.tensor(data.draw(st.permutations(range(logps.shape[1]))))
    before = pro_loss(logps, lengths, rewards, use_temperature=temperature)
    after = pro_loss(logps[:, perm], lengths[:, perm], rewards[:, perm], use_temperature=temperature)
    assert after.loss.item() == pytest.approx(before.loss.item(), rel=1e-9, abs=1e-6)


@FEW
@given(batch=ranking_batches(), which=st.sampled_from(RANKING_LOSSES), data=st.data())
def test_ranking_losses_ignore_padding_slots_even_when_they_hold_nan(batch, which, data):
    logps, lengths, rewards = batch
    b, n = logps.shape
    # Insert a padding slot full of NaN at a random position of every query.
    at = data.draw(st.integers(0, n))
    nan = torch.full((b, 1), float("nan"), dtype=logps.dtype)

    def pad(x, fill):
        return torch.cat([x[:, :at], fill, x[:, at:]], dim=1)

    valid = pad(torch.ones(b, n, dtype=torch.bool), torch.zeros(b, 1, dtype=torch.bool))
    padded_logps = pad(logps, nan).requires_grad_()
    logps.requires_grad_()
    plain = which(logps, lengths, rewards)
    padded = which(padded_logps, pad(lengths.double(), nan), pad(rewards, nan), valid=valid)
    plain.loss.backward()
    padded.loss.backward()
    assert padded.loss.item() == pytest.approx(plain.loss.item(), rel=1e-9, abs=1e-9)
    assert torch.allclose(padded_logps.grad[valid].view(b, n), logps.grad)
    assert (padded_logps.grad[~valid] == 0).all()


@FEW
@given(batch=ranking_batches())
def test_rrhf_rank_term_is_zero_when_the_model_already_orders_by_reward(batch):
    _, lengths, rewards = batch
    # Mean log-probs that increase with the reward (ties get equal scores): nothing to fix.
    p = -1.0 - (rewards.max() - rewards) / 1e4
    assert rrhf_loss(p * lengths, lengths, rewards).rank.item() == 0.0


@pytest.mark.parametrize("which", [rrhf_loss, pro_loss])
def test_ranking_losses_reject_bad_inputs(which):
    with pytest.raises(ValueError, match="at least 2 valid"):
        which(t([-1.0]), t([1]), t([0.0]))
    with pytest.raises(ValueError, match="at least 2 valid"):
        which(t([-1.0, -2.0], [-1.0, -2.0]), t([1, 1], [1, 1]), t([0.0, 1.0], [0.0, 1.0]),
              valid=t([1, 1], [1, 0]).bool())
    with pytest.raises(ValueError, match=r"\[B, n\]"):
        which(t([-1.0, -2.0]), t([1, 1, 1]), t([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"\[B, n\]"):
        which(torch.tensor([-1.0, -2.0]), torch.tensor([1, 1]), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="valid must have"):
        which(t([-1.0, -2.0]), t([1, 1]), t([0.0, 1.0]), valid=torch.ones(1, 3, dtype=torch.bool))


# ---------------------------------------------------------------------------------------------------------------------
# DPO / IPO
# ---------------------------------------------------------------------------------------------------------------------

def test_dpo_hand_values():
    # log-ratios: chosen -10 - -11 = +1, rejected -12 - -11 = -1, so h = 2; beta = 0.5 -> beta*h = 1.
    pc, pr, rc, rr = torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]), torch.tensor([-11.0])
    out = dpo_loss(pc, pr, rc, rr, beta=0.5)
    assert out.loss.item() == pytest.approx(math.log(1 + math.exp(-1)))  # -log sigmoid(1)
    assert out.chosen_rewards.tolist() == pytest.approx([0.5])
    assert out.rejected_rewards.tolist() == pytest.approx([-0.5])
    # cDPO with ls = 0.1: 0.9 * -log sigmoid(1) + 0.1 * -log sigmoid(-1).
    smooth = dpo_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=0.1)
    assert smooth.loss.item() == pytest.approx(0.9 * math.log(1 + math.exp(-1)) + 0.1 * math.log(1 + math.exp(1)))


def test_ipo_hand_values():
    # Same log-ratios (+1, -1), lengths 2 and 4: h_norm = 1/2 - (-1/4) = 0.75; beta = 0.5 -> target 1/(2*0.5) = 1.
    # Loss = (0.75 - 1)^2 = 0.0625. Implicit rewards still use the summed log-ratios: 0.5 * (+1, -1).
    out = dpo_loss(torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]), torch.tensor([-11.0]),
                   beta=0.5, loss_type="ipo", chosen_lengths=torch.tensor([2]), rejected_lengths=torch.tensor([4]))
    assert out.loss.item() == pytest.approx(0.0625)
    assert (out.chosen_rewards.item(), out.rejected_rewards.item()) == pytest.approx((0.5, -0.5))


def test_dpo_at_the_reference_is_ln2_with_zero_rewards():
    logps = torch.tensor([-35.0, -120.5, -3.0], requires_grad=True)
    other = torch.tensor([-40.0, -80.0, -7.5])
    out = dpo_loss(logps, other, logps.detach(), other, beta=0.1)
    assert out.loss.item() == pytest.approx(math.log(2))
    assert out.chosen_rewards.tolist() == [0.0] * 3 and out.rejected_rewards.tolist() == [0.0] * 3
    assert not out.chosen_rewards.requires_grad


def test_swapping_chosen_and_rejected_mirrors_dpo():
    pc, pr = torch.tensor([-10.0, -30.0]), torch.tensor([-14.0, -25.0])
    rc, rr = torch.tensor([-11.0, -28.0]), torch.tensor([-13.0, -27.0])
    beta = 0.2
    fwd, back = dpo_loss(pc, pr, rc, rr, beta=beta), dpo_loss(pr, pc, rr, rc, beta=beta)
    # -log sigmoid(x) - (-log sigmoid(-x)) = -x, with x = beta * h per example, averaged.
    h = (pc - rc) - (pr - rr)
    assert (fwd.loss - back.loss).item() == pytest.approx(-(beta * h).mean().item())
    assert torch.equal(fwd.chosen_rewards, back.rejected_rewards)
    assert torch.equal(fwd.rejected_rewards, back.chosen_rewards)


@FEW
@given(logps=st.lists(st.floats(-1e4, 0.0), min_size=4, max_size=4), beta=st.floats(0.01, 1.0),
       ls=st.floats(0.0, 0.5), lengths=st.lists(st.integers(1, 500), min_size=2, max_size=2),
       loss_type=st.sampled_from(["sigmoid", "ipo"]))
def test_dpo_is_finite_for_extreme_log_probs(logps, beta, ls, lengths, loss_type):
    pc, pr, rc, rr = (torch.tensor([x], requires_grad=i < 2) for i, x in enumerate(logps))
    out = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type, label_smoothing=ls,
                   chosen_lengths=torch.tensor([lengths[0]]), rejected_lengths=torch.tensor([lengths[1]]))
    out.loss.backward()
    assert all(torch.isfinite(x).all() for x in out)
    assert torch.isfinite(pc.grad).all() and torch.isfinite(pr.grad).all()


def test_dpo_rejects_bad_options():
    x = torch.tensor([-1.0])
    with pytest.raises(ValueError, match="unknown loss_type"):
        dpo_loss(x, x, x, x, loss_type="hinge-ish")
    with pytest.raises(ValueError, match="chosen_lengths"):
        dpo_loss(x, x, x, x, loss_type="ipo")
    with pytest.raises(ValueError, match="chosen_lengths"):
        dpo_loss(x, x, x, x, loss_type="ipo", chosen_lengths=torch.tensor([3]))


# ---------------------------------------------------------------------------------------------------------------------
# PPO pieces
# ---------------------------------------------------------------------------------------------------------------------

def test_gae_hand_values():
    # gamma = 1, lam = 0.95; rewards (0, 0, 1), values (0.5, 0.6, 0.7), value after the end = 0.
    # t=2: delta = 1 + 0 - 0.7 = 0.3;                A_2 = 0.3
    # t=1: delta = 0 + 0.7 - 0.6 = 0.1;              A_1 = 0.1 + 0.95 * 0.3 = 0.385
    # t=0: delta = 0 + 0.6 - 0.5 = 0.1;              A_0 = 0.1 + 0.95 * 0.385 = 0.46575
    # returns = A + V = (0.96575, 0.985, 1.0)
    adv, ret = gae(t([0.0, 0.0, 1.0]), t([0.5, 0.6, 0.7]), t([1, 1, 1]))
    assert adv[0].tolist() == pytest.approx([0.46575, 0.385, 0.3])
    assert ret[0].tolist() == pytest.approx([0.96575, 0.985, 1.0])


def test_gae_treats_masked_positions_as_terminal():
    # The mask cuts the last token, whose reward (9) and value (0.7) must be ignored.
    # t=1 is now the last real token: delta = 1 + 0 - 0.6 = 0.4;  A_1 = 0.4
    # t=0: delta = 0 + 0.6 - 0.5 = 0.1;                            A_0 = 0.1 + 0.95 * 0.4 = 0.48
    adv, ret = gae(t([0.0, 1.0, 9.0]), t([0.5, 0.6, 0.7]), t([1, 1, 0]))
    assert adv[0].tolist() == pytest.approx([0.48, 0.4, 0.0])
    assert ret[0].tolist() == pytest.approx([0.98, 1.0, 0.0])
    # A batch of two: each row is independent, and gamma < 1 discounts the next value.
    # Row 2 with gamma = 0.5, lam = 1, mask (1, 0, 0): A_0 = 2 + 0 - 1 = 1.
    adv, _ = gae(t([0.0, 1.0, 9.0], [2.0, 5.0, 5.0]), t([0.5, 0.6, 0.7], [1.0, 3.0, 3.0]),
                 t([1, 1, 0], [1, 0, 0]), gamma=0.5, lam=1.0)
    # Row 1: A_1 = 1 - 0.6 = 0.4; A_0 = (0 + 0.5 * 0.6 - 0.5) + 0.5 * 0.4 = -0.2 + 0.2 = 0.
    assert adv.flatten().tolist() == pytest.approx([0.0, 0.4, 0.0, 1.0, 0.0, 0.0])


def test_whiten_hand_values():
    # Real values (1, 2, 3): mean 2, population variance 2/3; the NaN after the end is ignored.
    x, mask = t([1.0, 2.0, 3.0, float("nan")]), t([1, 1, 1, 0])
    s = math.sqrt(2 / 3)
    assert whiten(x, mask)[0].tolist() == pytest.approx([-1 / s, 0.0, 1 / s, 0.0], abs=1e-5)
    assert whiten(x, mask, shift_mean=False)[0].tolist() == pytest.approx([2 - 1 / s, 2.0, 2 + 1 / s, 0.0], abs=1e-5)


def test_ppo_policy_loss_hand_values():
    # Four real tokens (old log-prob -1) and one padding token holding NaN.
    #   A = +1, ratio 1.1: inside the clip range -> -1.1 (unclipped branch)
    #   A = +1, ratio 1.5: max(-1.5, -1.2) = -1.2 (clipped, no gradient)
    #   A = +1, ratio 0.5: max(-0.5, -0.8) = -0.5 (unclipped: clipping never stops a move the advantage dislikes)
    #   A = -1, ratio 0.5: max(0.5, 0.8) = 0.8   (clipped, no gradient)
    # loss = (-1.1 - 1.2 - 0.5 + 0.8) / 4 = -0.5; clip fraction = 2 / 4.
    ratios = [1.1, 1.5, 0.5, 0.5]
    nan = float("nan")
    logprobs = t([math.log(r) - 1.0 for r in ratios] + [nan]).requires_grad_()
    old, adv, mask = t([-1.0] * 4 + [nan]), t([1.0, 1.0, 1.0, -1.0, nan]), t([1, 1, 1, 1, 0])
    loss, clip_fraction, approx_kl = ppo_policy_loss(logprobs, old, adv, mask, clip_range=0.2)
    assert loss.item() == pytest.approx(-0.5)
    assert clip_fraction.item() == pytest.approx(0.5)
    assert approx_kl.item() == pytest.approx(sum(0.5 * math.log(r) ** 2 for r in ratios) / 4)
    loss.backward()
    # d/dlogp of -A * ratio / 4 = -A * ratio / 4 on the unclipped tokens, 0 on the clipped ones and on padding.
    assert logprobs.grad[0].tolist() == pytest.approx([-1.1 / 4, 0.0, -0.5 / 4, 0.0, 0.0])


def test_ppo_policy_loss_at_the_old_policy_is_minus_the_mean_advantage():
    logps, adv = t([-1.0, -2.0, -3.0]), t([0.5, -2.0, 0.3])
    loss, clip_fraction, approx_kl = ppo_policy_loss(logps, logps, adv, t([1, 1, 1]))
    assert loss.item() == pytest.approx(-(0.5 - 2.0 + 0.3) / 3)
    assert clip_fraction.item() == 0.0 and approx_kl.item() == 0.0


def test_ppo_value_loss_hand_values():
    # Old values 0, returns 1, eps = 0.2:
    #   V =  0.1: inside the range: (0.1 - 1)^2 = 0.81 both ways (not clipped)
    #   V =  0.5: clipped to 0.2: max((0.5-1)^2, (0.2-1)^2) = max(0.25, 0.64) = 0.64 (clipped)
    #   V = -0.5: clipped to -0.2: max(2.25, 1.44) = 2.25 (unclipped)
    # loss = 0.5 * (0.81 + 0.64 + 2.25) / 3 = 0.61666...; clip fraction 1/3. The 4th token is padding.
    values = t([0.1, 0.5, -0.5, 100.0]).requires_grad_()
    loss, clip_fraction = ppo_value_loss(values, t([0.0] * 4), t([1.0, 1.0, 1.0, float("nan")]), t([1, 1, 1, 0]))
    assert loss.item() == pytest.approx(0.5 * 3.7 / 3)
    assert clip_fraction.item() == pytest.approx(1 / 3)
    loss.backward()
    # Gradient 0.5 * 2 * (V - R) / 3 on unclipped tokens, 0 on the clipped one and on padding.
    assert values.grad[0].tolist() == pytest.approx([-0.9 / 3, 0.0, -1.5 / 3, 0.0])


def test_kl_penalty_hand_values():
    logp, ref = t([-1.0, -2.0, -0.5]), t([-2.0, -1.0, -0.5])
    # k1 = logp - ref = (1, -1, 0).
    assert kl_penalty(logp, ref)[0].tolist() == pytest.approx([1.0, -1.0, 0.0])
    # k3 with log r = ref - logp = (-1, 1, 0): (e^-1 - 1) + 1 = e^-1, (e - 1) - 1 = e - 2, 0.
    assert kl_penalty(logp, ref, kind="k3")[0].tolist() == pytest.approx([math.exp(-1), math.e - 2, 0.0])
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_penalty(logp, ref, kind="k2")


@FEW
@given(logp=st.lists(st.floats(-50.0, 0.0), min_size=6, max_size=6),
       ref=st.lists(st.floats(-50.0, 0.0), min_size=6, max_size=6))
def test_k3_is_never_negative(logp, ref):
    assert (kl_penalty(torch.tensor(logp), torch.tensor(ref), kind="k3") >= 0).all()


@FEW
@given(data=st.data(), length=st.integers(1, 6), cut=st.integers(0, 6))
def test_ppo_pieces_are_finite_for_extreme_inputs(data, length, cut):
    # Per-token log-probs down to -50 (probability e^-50), advantages, values, returns and rewards up to +-1e4.
    # (Beyond a log-ratio of ~88 the float32 ratio itself overflows; PPO keeps pi and pi_old close.)
    def row(lo, hi):
        return torch.tensor([data.draw(st.lists(st.floats(lo, hi), min_size=length, max_size=length))])

    mask = (torch.arange(length) < max(1, min(cut, length)))[None]  # at least one real token
    logp, old = row(-50.0, 0.0).requires_grad_(), row(-50.0, 0.0)
    values, old_values, returns, rewards = (row(-1e4, 1e4) for _ in range(4))
    values.requires_grad_()
    adv, ret = gae(rewards, old_values, mask)
    adv = whiten(adv, mask)
    policy, clip_fraction, approx_kl = ppo_policy_loss(logp, old, adv + row(-1e4, 1e4), mask)
    value, value_clip_fraction = ppo_value_loss(values, old_values, returns, mask)
    (policy + value).backward()
    for x in (adv, ret, policy, clip_fraction, approx_kl, value, value_clip_fraction, logp.grad, values.grad):
        assert torch.isfinite(x).all()


# --------------------------------------------------------------------------------------------------------------------
# GRPO, RLOO and SimPO: known answers
# --------------------------------------------------------------------------------------------------------------------


def test_group_advantages_standardise_within_each_prompt_and_vanish_for_equal_rewards():
    rewards = torch.tensor([[0.0, 0.0, 4.0], [1.0, 1.0, 1.0], [1.0, 2.0, 3.0]])
    # mean 4/3, sample std sqrt(16/3): A = (r - 4/3) / sqrt(16/3)
    expected = (torch.tensor([0.0, 0.0, 4.0]) - 4 / 3) / math.sqrt(16 / 3)
    assert torch.allclose(group_advantages(rewards, eps=0.0)[0], expected, atol=1e-6)
    assert group_advantages(rewards)[1].abs().max() == 0  # equal rewards: no signal (and no 0 / 0)
    assert group_advantages(rewards, scale=False)[2].tolist() == [-1.0, 0.0, 1.0]  # Dr. GRPO: centred only
    # adding a constant to a group's rewards changes nothing
    assert torch.allclose(group_advantages(rewards + 5.0), group_advantages(rewards), atol=1e-6)


def test_leave_one_out_baseline_excludes_the_reply_itself():
    assert leave_one_out_advantages(torch.tensor([[1.0, 2.0, 3.0]])).tolist() == [[-1.5, 0.0, 1.5]]
    assert leave_one_out_advantages(torch.tensor([[2.0, 2.0]])).tolist() == [[0.0, 0.0]]
    # reply 0's baseline is the mean of the others: raising reply 0's reward raises its advantage one for one
    a, b = leave_one_out_advantages(torch.tensor([[0.0, 1.0, 2.0, 3.0], [5.0, 1.0, 2.0, 3.0]]))
    assert (b[0] - a[0]).item() == pytest.approx(5.0)
    with pytest.raises(ValueError, match="at least 2 replies"):
        leave_one_out_advantages(torch.tensor([[1.0]]))


def test_grpo_loss_at_the_sampling_policy_is_minus_the_mean_advantage_per_reply():
    # two replies of 3 and 1 tokens; policy = old = reference: ratio 1, KL 0
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    adv = torch.tensor([1.0, -2.0])
    out = grpo_loss(logp, logp, logp, adv, mask, beta=0.04)
    assert out.loss.item() == pytest.approx(-(1.0 + -2.0) / 2)  # each reply's token mean is its advantage
    assert out.kl.item() == 0.0 and out.clip_fraction.item() == 0.0
    # Dr. GRPO's constant normaliser: token sums over max_tokens = 4, so the long reply weighs 3x the short one
    constant = grpo_loss(logp, logp, logp, adv, mask, normalisation="constant", max_tokens=4)
    assert constant.loss.item() == pytest.approx(-(3 * 1.0 / 4 + 1 * -2.0 / 4) / 2)
    with pytest.raises(ValueError, match="max_tokens"):
        grpo_loss(logp, logp, logp, adv, mask, normalisation="constant")


def test_grpo_loss_clips_the_ratio_and_adds_the_k3_kl():
    old = torch.zeros(1, 2)
    mask = torch.ones(1, 2)
    new = torch.log(torch.tensor([[1.5, 1.0]]))  # token 0 ratio 1.5, past 1 + 0.2; token 1 ratio 1
    out = grpo_loss(new, old, old, torch.tensor([1.0]), mask, beta=0.0, clip_range=0.2)
    assert out.loss.item() == pytest.approx(-(1.2 + 1.0) / 2)  # min(1.5 A, 1.2 A) with A > 0
    assert out.clip_fraction.item() == pytest.approx(0.5)
    # the KL term: k3 = r - log r - 1 with r = pi_ref / pi = 1 / 1.5 on token 0
    r = 1 / 1.5
    with_kl = grpo_loss(new, old, old, torch.tensor([1.0]), mask, beta=0.1, clip_range=0.2)
    assert with_kl.loss.item() == pytest.approx(-(1.2 + 1.0) / 2 + 0.1 * (r - math.log(r) - 1) / 2, rel=1e-5)
    assert with_kl.kl.item() == pytest.approx((r - math.log(r) - 1) / 2, rel=1e-5)


def test_rloo_loss_is_reinforce_with_the_leave_one_out_baseline_and_the_kl_in_the_reward():
    logp = torch.tensor([[-2.0, -1.0]], requires_grad=True)
    scores, kl = torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0]])
    loss = rloo_loss(logp, scores, kl, beta=0.25)  # R = [1 - 0.5, 0] -> A = [0.5, -0.5]
    assert loss.item() == pytest.approx(-(0.5 * -2.0 + -0.5 * -1.0) / 2)
    loss.backward()
    assert logp.grad.tolist() == [[-0.25, 0.25]]  # -A / (B k): push the better reply up, the other down


def test_simpo_has_no_reference_and_a_length_normalised_margin_with_a_target():
    chosen, rejected = torch.tensor([-4.0]), torch.tensor([-9.0])
    lengths_c, lengths_r = torch.tensor([2.0]), torch.tensor([3.0])
    out = dpo_loss(chosen, rejected, None, None, beta=2.0, loss_type="simpo", simpo_gamma=1.0,
                   chosen_lengths=lengths_c, rejected_lengths=lengths_r)
    margin = 2.0 * (-4.0 / 2) - 2.0 * (-9.0 / 3) - 1.0  # = 1
    assert out.loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-margin))))
    assert out.chosen_rewards.item() == pytest.approx(-4.0) and out.rejected_rewards.item() == pytest.approx(-6.0)
    with pytest.raises(ValueError, match="normalises by length"):
        dpo_loss(chosen, rejected, None, None, loss_type="simpo")
