"""Numerical safety: every loss stays finite (with finite gradients) at extreme inputs, and a NaN stops training.

The property tests draw log-probs down to -1e4, rewards, values and advantages up to +-1e4, and masks down to a
single real token, with NaN and inf in the masked-out positions (padding holds garbage in real batches).
"""

import math
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rrhf_lite.core.loop import CHECKPOINT_FILE, NonFiniteLossError, save_checkpoint, train
from rrhf_lite.core.losses import (
    MAX_LOG_RATIO,
    dpo_loss,
    gae,
    group_advantages,
    grpo_loss,
    kl_penalty,
    ppo_policy_loss,
    ppo_value_loss,
    pro_loss,
    reward_loss,
    rloo_loss,
    rrhf_loss,
    sft_loss,
    whiten,
)

sys.path.insert(0, str(Path(__file__).parent))
from loop_task import make_batches, make_model, mse_step  # noqa: E402

FEW = settings(max_examples=40, deadline=None)
LOGP = st.floats(-1e4, 0.0, width=32)
BIG = st.floats(-1e4, 1e4, width=32)
GARBAGE = st.sampled_from([math.nan, math.inf, -math.inf, 1e30])


@st.composite
def masked(draw, elements, min_real: int = 1):
    """``(x, mask)`` of shape [B, T]: real entries from ``elements``, garbage where the mask is 0. Each row has at least
    ``min_real`` real positions, often exactly that many (all but one masked), starting at position 0."""
    b, t = draw(st.integers(1, 3)), draw(st.integers(max(1, min_real), 8))
    lengths = [draw(st.sampled_from([min_real, t]) | st.integers(min_real, t)) for _ in range(b)]
    mask = torch.tensor([[i < n for i in range(t)] for n in lengths])
    fill = draw(GARBAGE)
    x = torch.tensor([[draw(elements) if mask[r, i] else fill for i in range(t)] for r in range(b)])
    return x, mask


def values_like(draw, mask, elements):
    fill = draw(GARBAGE)
    return torch.tensor([[draw(elements) if m else fill for m in row] for row in mask.tolist()])


def finite(*tensors) -> bool:
    return all(torch.isfinite(t).all() for t in tensors)


# --- SFT and the reward model ---------------------------------------------------------------------------------------

@FEW
@given(data=masked(LOGP, min_real=0))
def test_sft_loss_is_finite_and_exact_at_extremes(data):
    logps, mask = data
    logps = torch.where(mask, logps, 0.0).requires_grad_()  # the model's log-probs are 0 outside the response
    loss = sft_loss(logps, mask.float())
    loss.backward()
    assert finite(loss, logps.grad) and loss >= 0
    n = mask.sum().item()
    expected = -logps.detach()[mask].double().sum().item() / max(n, 1)
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


@FEW
@given(rewards=st.lists(st.tuples(BIG, BIG, BIG), min_size=1, max_size=4), center=st.sampled_from([0.0, 0.01, 1.0]))
def test_reward_loss_is_finite_with_finite_gradients_at_extremes(rewards, center):
    chosen, rejected, margin = (torch.tensor(c, requires_grad=i < 2) for i, c in enumerate(zip(*rewards)))
    loss = reward_loss(chosen, rejected, margin=margin, center_coef=center)
    loss.backward()
    assert finite(loss, chosen.grad, rejected.grad) and loss >= 0


# --- RRHF and PRO: [B, n] candidates, at least 2 real per query ---------------------------------------------------

@FEW
@given(data=st.data(), which=st.sampled_from(["rrhf", "pro", "pro-no-temperature"]))
def test_ranking_losses_are_finite_with_most_slots_padding(data, which):
    logps, valid = data.draw(masked(LOGP, min_real=2))
    lengths = values_like(data.draw, valid, st.integers(0, 500).map(float))  # an empty reply has length 0
    rewards = values_like(data.draw, valid, BIG)
    logps.requires_grad_()
    loss_fn = {"rrhf": rrhf_loss, "pro": pro_loss,
               "pro-no-temperature": lambda *a, **k: pro_loss(*a, use_temperature=False, **k)}[which]
    out = loss_fn(logps, lengths, rewards, valid=valid)
    out.loss.backward()
    assert finite(*out, logps.grad)
    assert (logps.grad[~valid] == 0).all()


# --- DPO and IPO -----------------------------------------------------------------------------------------------------

@FEW
@given(logps=st.lists(st.tuples(LOGP, LOGP, LOGP, LOGP), min_size=1, max_size=4), beta=st.floats(1e-3, 10.0),
       ls=st.floats(0.0, 0.5), lengths=st.tuples(st.integers(1, 500), st.integers(1, 500)),
       loss_type=st.sampled_from(["sigmoid", "ipo"]))
def test_dpo_losses_are_finite_with_finite_gradients_at_extremes(logps, beta, ls, lengths, loss_type):
    pc, pr, rc, rr = (torch.tensor(c, requires_grad=i < 2) for i, c in enumerate(zip(*logps)))
    n = len(logps)
    out = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type, label_smoothing=ls,
                   chosen_lengths=torch.full((n,), lengths[0]), rejected_lengths=torch.full((n,), lengths[1]))
    out.loss.backward()
    assert finite(*out, pc.grad, pr.grad) and out.loss >= 0


# --- PPO pieces ----------------------------------------------------------------------------------------------------

@FEW
@given(data=st.data(), gamma=st.floats(0.0, 1.0), lam=st.floats(0.0, 1.0))
def test_gae_and_whiten_are_finite_with_garbage_outside_the_mask(data, gamma, lam):
    rewards, mask = data.draw(masked(BIG))
    values = values_like(data.draw, mask, BIG)
    advantages, returns = gae(rewards, values, mask, gamma=gamma, lam=lam)
    assert finite(advantages, returns)
    assert (advantages[~mask] == 0).all() and (returns[~mask] == 0).all()
    for shift_mean in (True, False):
        assert finite(whiten(advantages, mask, shift_mean=shift_mean))
    assert finite(whiten(rewards, mask))  # NaN and inf outside the mask never reach the statistics


@FEW
@given(data=st.data(), clip=st.floats(0.05, 0.5))
def test_ppo_losses_are_finite_with_finite_gradients_at_extremes(data, clip):
    logprobs, mask = data.draw(masked(LOGP))
    old, advantages = values_like(data.draw, mask, LOGP), values_like(data.draw, mask, BIG)
    values, old_values, returns = (values_like(data.draw, mask, BIG) for _ in range(3))
    logprobs.requires_grad_()
    values.requires_grad_()
    policy, clip_fraction, approx_kl = ppo_policy_loss(logprobs, old, advantages, mask, clip_range=clip)
    value, value_clip_fraction = ppo_value_loss(values, old_values, returns, mask, clip_range=clip)
    (policy + value).backward()
    assert finite(policy, clip_fraction, approx_kl, value, value_clip_fraction, logprobs.grad, values.grad)
    assert (logprobs.grad[~mask] == 0).all() and (values.grad[~mask] == 0).all()


@FEW
@given(data=st.data(), kind=st.sampled_from(["k1", "k3"]))
def test_kl_penalty_is_finite_at_extremes_and_k3_never_negative(data, kind):
    logprobs, mask = data.draw(masked(LOGP))
    ref = values_like(data.draw, mask, LOGP)
    kl = kl_penalty(logprobs[mask], ref[mask], kind)
    assert finite(kl)
    if kind == "k3":
        assert (kl >= 0).all()


@FEW
@given(data=st.data())
def test_the_log_ratio_cap_changes_nothing_within_it(data):
    # The cap only acts past a log-ratio of MAX_LOG_RATIO; below it, both formulas are exactly as written.
    n = data.draw(st.integers(1, 6))
    log_ratio = torch.tensor(data.draw(st.lists(st.floats(-MAX_LOG_RATIO, MAX_LOG_RATIO), min_size=n, max_size=n)),
                             dtype=torch.float64)[None]
    old = torch.tensor(data.draw(st.lists(st.floats(-30.0, 0.0), min_size=n, max_size=n)), dtype=torch.float64)[None]
    adv = torch.tensor(data.draw(st.lists(st.floats(-10.0, 10.0), min_size=n, max_size=n)), dtype=torch.float64)[None]
    mask = torch.ones_like(adv, dtype=torch.bool)
    ratio = log_ratio.exp()
    expected = torch.max(-adv * ratio, -adv * ratio.clamp(0.8, 1.2)).mean()
    assert ppo_policy_loss(old + log_ratio, old, adv, mask)[0].item() == pytest.approx(expected.item(), rel=1e-9)
    log_r = -log_ratio  # k3 of (logp, ref) with log r = ref - logp
    k3 = kl_penalty(old, old + log_r, "k3")[0]
    assert k3.tolist() == pytest.approx((log_r.exp() - 1 - log_r)[0].tolist(), rel=1e-9, abs=1e-12)


def test_the_cap_keeps_a_blown_up_ratio_finite():
    logprobs, old = torch.tensor([[0.0, -1.0]], requires_grad=True), torch.tensor([[-1e4, -1.0]])
    for adv in (-1e4, 0.0, 1e4):  # with the uncapped ratio e^1e4 these give inf, NaN (0 * inf) and a finite value
        loss, *_ = ppo_policy_loss(logprobs, old, torch.tensor([[adv, 1.0]]), torch.ones(1, 2, dtype=torch.bool))
        loss.backward()
        assert finite(loss, logprobs.grad)
    assert kl_penalty(torch.tensor([-1e4]), torch.tensor([0.0]), "k3").item() == pytest.approx(
        math.exp(MAX_LOG_RATIO) - 1 - MAX_LOG_RATIO)


# --- a NaN stops training, naming the step, and the last good checkpoint survives ---------------------------------

KW = dict(lr=0.1, log_every=5, progress=False)


def test_nan_loss_stops_naming_the_step_and_a_rerun_resumes_from_the_last_good_checkpoint(tmp_path):
    reference = train(make_model(), make_batches(), mse_step, steps=30, **KW)
    calls = {"n": 0}

    def nan_at_step_13(model, batch):
        calls["n"] += 1
        loss, metrics = mse_step(model, batch)
        return (loss * math.nan if calls["n"] == 13 else loss), metrics

    with pytest.raises(NonFiniteLossError) as info:
        train(make_model(), make_batches(), nan_at_step_13, steps=30, checkpoint_dir=tmp_path, checkpoint_every=5,
              **KW)
    message = str(info.value)
    assert "the loss is nan at step 13" in message and f"(step 10) is kept in {tmp_path}" in message
    assert (info.value.step, info.value.checkpoint_step) == (13, 10)
    state = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=False)
    assert state["step"] == 10 and all(torch.isfinite(t).all() for t in state["trainable"].values())
    # The cause fixed, the same call picks up at step 10 and ends exactly where a run without the NaN ends.
    assert train(make_model(), make_batches(), mse_step, steps=30, checkpoint_dir=tmp_path, checkpoint_every=5,
                 **KW) == reference


def test_a_nan_gradient_at_a_checkpoint_step_never_reaches_the_weights_or_the_checkpoint(tmp_path):
    calls = {"n": 0}
    model = make_model()

    def nan_gradient_at_step_10(model, batch):
        calls["n"] += 1
        loss, metrics = mse_step(model, batch)
        if calls["n"] == 10:  # the loss itself is finite; only its gradient is NaN
            loss.register_hook(lambda grad: grad * math.nan)
            before["weight"] = model.weight.detach().clone()
        return loss, metrics

    before = {}
    with pytest.raises(NonFiniteLossError, match=r"the gradient norm is nan at step 10; .*\(the last good checkpoint "
                                                 r"\(step 5\) is kept"):
        train(model, make_batches(), nan_gradient_at_step_10, steps=30, checkpoint_dir=tmp_path, checkpoint_every=5,
              **KW)
    assert torch.equal(model.weight, before["weight"])  # stopped before the optimiser step
    assert torch.load(tmp_path / CHECKPOINT_FILE, weights_only=False)["step"] == 5  # step 10 was never saved


def test_without_a_checkpoint_the_message_says_so():
    def always_inf(model, batch):
        return mse_step(model, batch)[0] * math.inf, {}

    with pytest.raises(NonFiniteLossError, match=r"the loss is inf at step 1; .*no checkpoint_dir was given"):
        train(make_model(), make_batches(), always_inf, steps=5, **KW)


def test_non_finite_weights_are_never_saved_over_a_good_checkpoint(tmp_path):
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    save_checkpoint(tmp_path, model, optimizer, scheduler, 5, [])
    good = (tmp_path / CHECKPOINT_FILE).read_bytes()
    with torch.no_grad():
        model.weight[0, 1] = math.inf
    with pytest.raises(FloatingPointError, match=r"not finite after step 10; the checkpoint .* was not overwritten"):
        save_checkpoint(tmp_path, model, optimizer, scheduler, 10, [])
    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == good


@FEW
@given(data=st.data(), normalisation=st.sampled_from(["per_reply", "constant"]), scale=st.booleans())
def test_grpo_and_rloo_losses_are_finite_with_finite_gradients_at_extremes(data, normalisation, scale):
    logprobs, mask = data.draw(masked(LOGP))
    old, ref = values_like(data.draw, mask, LOGP), values_like(data.draw, mask, LOGP)
    group = data.draw(st.integers(2, 4))
    rewards = torch.tensor([[data.draw(BIG) for _ in range(group)] for _ in range(logprobs.shape[0])])
    advantages = group_advantages(rewards, scale=scale)[:, 0]
    logprobs.requires_grad_()
    out = grpo_loss(logprobs, old, ref, advantages, mask, normalisation=normalisation, max_tokens=mask.shape[1])
    out.loss.backward()
    assert finite(out.loss, out.clip_fraction, out.kl, logprobs.grad, group_advantages(rewards, scale=scale))
    assert (logprobs.grad[~mask] == 0).all()
    sums = torch.tensor([[data.draw(LOGP) for _ in range(group)] for _ in range(2)], requires_grad=True)
    loss = rloo_loss(sums, rewards[:1].expand(2, -1), torch.zeros(2, group))
    loss.backward()
    assert finite(loss, sums.grad)
