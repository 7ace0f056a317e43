"""UE-DPO's pure math against hand-computed values, naive references and autograd."""

import math
import types

import numpy as np
import pytest
import torch

from ue_dpo.core.loss import dpo_sigmoid_loss, weighted_sequence_logps
from ue_dpo.core.noise import (
    add_diffusion_noise,
    diffusion_betas,
    noise_coefficients,
    sample_noise_seed,
    tpo_noised_image,
    wrapped_image_bytes,
)
from ue_dpo.core.token_stats import blind_spot_statistics
from ue_dpo.core.weights import blind_spot_weights


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ---- noise schedule -------------------------------------------------------------------------


def test_sigmoid_schedule_matches_vcd_formula_by_hand():
    betas = diffusion_betas("sigmoid")
    assert betas.shape == (1000,) and betas.dtype == torch.float32
    # beta_0 = sigmoid(-6) * (5e-3 - 1e-5) + 1e-5
    assert betas[0].item() == pytest.approx(sigmoid(-6.0) * 4.99e-3 + 1e-5, rel=1e-6)
    assert betas[-1].item() == pytest.approx(sigmoid(6.0) * 4.99e-3 + 1e-5, rel=1e-6)
    abar = 1.0
    for k in range(501):
        abar *= 1.0 - (sigmoid(-6.0 + 12.0 * k / 999) * 4.99e-3 + 1e-5)
    signal, noise = noise_coefficients(500, "sigmoid")
    assert signal == pytest.approx(math.sqrt(abar), rel=1e-6)
    assert noise == pytest.approx(math.sqrt(1 - abar), rel=1e-6)
    assert signal == pytest.approx(0.863, abs=5e-4)


def test_sigmoid_schedule_coefficients_are_vcds_and_tpos_float32_values():
    # VCD's `add_diffusion_noise` (and TPO's copy of it), written out: default float32 tensors throughout
    betas = torch.sigmoid(torch.linspace(-6, 6, 1000)) * (0.5e-2 - 1e-5) + 1e-5
    alphas_prod = torch.cumprod(1 - betas, dim=0)
    for step in (0, 250, 500, 999):
        assert noise_coefficients(step, "sigmoid") == (
            float(torch.sqrt(alphas_prod)[step]),
            float(torch.sqrt(1 - alphas_prod)[step]),
        )


def test_linear_schedule_endpoints_and_step_range():
    betas = diffusion_betas("linear")
    assert betas[0].item() == pytest.approx(1e-4)
    assert betas[-1].item() == pytest.approx(0.02)
    assert noise_coefficients(0, "linear")[0] == pytest.approx(math.sqrt(1 - 1e-4))
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        noise_coefficients(1000)
    with pytest.raises(ValueError, match="schedule"):
        diffusion_betas("cosine")


def test_noise_is_reproducible_from_seed_and_has_the_schedule_moments():
    image = torch.full((3, 200, 200), 0.5)
    seed = sample_noise_seed(7, b"sample-a", 500)
    first = add_diffusion_noise(image, step=500, seed=seed)
    assert torch.equal(first, add_diffusion_noise(image, step=500, seed=seed))
    other = add_diffusion_noise(image, step=500, seed=sample_noise_seed(7, b"sample-b", 500))
    assert not torch.equal(first, other)
    signal, noise = noise_coefficients(500)
    assert first.mean().item() == pytest.approx(signal * 0.5, abs=0.01)
    assert first.std().item() == pytest.approx(noise, rel=0.02)


def test_noise_seed_depends_on_run_seed_sample_and_step_only():
    assert sample_noise_seed(1, b"x", 500) == sample_noise_seed(1, b"x", 500)
    seeds = {
        sample_noise_seed(1, b"x", 500),
        sample_noise_seed(2, b"x", 500),
        sample_noise_seed(1, b"y", 500),
        sample_noise_seed(1, b"x", 400),
    }
    assert len(seeds) == 4
    assert all(0 <= seed < 2**63 for seed in seeds)


def test_wrapped_image_bytes_truncate_and_wrap_as_topilimage():
    from torchvision.transforms import ToPILImage

    values = torch.tensor([-0.30, 1.3, 172.6 / 255, -0.001, 1.0, 2.5, -1.5])
    # x * 255 = -76.5, 331.5, 172.6, -0.255, 255, 637.5, -382.5; truncated toward zero: -76, 331, 172, 0, 255, 637,
    # -382; modulo 256: 180, 75, 172, 0, 255, 125, 130 (clamping would give 0, 255, ...; rounding 173 for 172.6)
    expected = [180, 75, 172, 0, 255, 125, 130]
    assert wrapped_image_bytes(values).tolist() == expected
    as_topilimage = np.asarray(ToPILImage()(values.view(1, 1, -1).repeat(3, 1, 1)))  # [1, 7, 3]
    assert as_topilimage[0, :, 0].tolist() == expected


def test_tpo_noised_image_is_totensor_noise_topilimage_at_the_image_resolution():
    signal, noise = noise_coefficients(500)
    # grey pixels 0, 255, 200 of a 1 x 3 image; eps picked so that v' = -0.30, 1.3 and exactly signal * 200 / 255
    pixels = torch.tensor([0, 255, 200], dtype=torch.uint8).view(1, 3, 1).repeat(1, 1, 3)
    eps = torch.tensor([-0.30 / noise, (1.3 - signal) / noise, 0.0]).view(1, 1, 3).repeat(3, 1, 1)
    noised = tpo_noised_image(pixels, eps, step=500)
    assert noised.shape == (1, 3, 3) and noised.dtype == torch.uint8
    # 200 / 255 * 0.8630 * 255 = 172.60: truncated to 172
    assert noised[0, :, 0].tolist() == [180, 75, 172]
    assert torch.equal(noised, noised[..., :1].expand(1, 3, 3))


# ---- token statistics ----------------------------------------------------------------------


def test_blind_spot_statistics_by_hand():
    u, delta = blind_spot_statistics(torch.tensor([2.0, 5.0]), torch.tensor([3.5, 5.0]), torch.tensor([1.0, 6.0]))
    assert u.tolist() == [1.5, 0.0]  # logit(â|v) - logit(a|v)
    assert delta.tolist() == [1.0, -1.0]  # logit(a|v) - logit(a|v')


# ---- token weights -------------------------------------------------------------------------

DELTA = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]])
U = torch.tensor([[0.5, 1.5, -1.0, 2.0, 9.0, 0.0, 1.0, 3.0, -2.0, 4.0]])
FULL = torch.ones_like(DELTA, dtype=torch.bool)


def _expected(values: list[float], selected_u: list[float], alpha: float, sign: float) -> list[float]:
    mean = sum(selected_u) / len(selected_u)
    std = math.sqrt(sum((x - mean) ** 2 for x in selected_u) / (len(selected_u) - 1))
    return [1.0 + sign * alpha * sigmoid((x - mean) / (std + 1e-6)) for x in values]


def test_chosen_weights_select_low_delta_tokens_by_hand():
    # q_0.4 of 1..10 (linear interpolation): position 0.4 * 9 = 3.6 -> 4 + 0.6 * (5 - 4) = 4.6; Δ < 4.6 -> first 4
    result = blind_spot_weights(U, DELTA, FULL, alpha=0.3, tau=0.4, preferred=True)
    assert result.selected[0].tolist() == [True] * 4 + [False] * 6
    expected = _expected([0.5, 1.5, -1.0, 2.0], [0.5, 1.5, -1.0, 2.0], 0.3, +1.0)
    torch.testing.assert_close(result.weights[0, :4], torch.tensor(expected))
    assert result.weights[0, 4:].tolist() == [1.0] * 6


def test_rejected_weights_select_high_delta_tokens_by_hand():
    # q_0.6: position 5.4 -> 6.4; Δ >= 6.4 -> the last 4
    result = blind_spot_weights(U, DELTA, FULL, alpha=0.3, tau=0.4, preferred=False)
    assert result.selected[0].tolist() == [False] * 6 + [True] * 4
    expected = _expected([1.0, 3.0, -2.0, 4.0], [1.0, 3.0, -2.0, 4.0], 0.3, -1.0)
    torch.testing.assert_close(result.weights[0, 6:], torch.tensor(expected))
    assert result.weights[0, :6].tolist() == [1.0] * 6


def test_quantile_ignores_masked_tokens():
    mask = torch.tensor([[True] * 5 + [False] * 5])
    # q_0.4 of 1..5: position 1.6 -> 2.6; Δ < 2.6 selects Δ = 1, 2
    result = blind_spot_weights(U, DELTA, mask, alpha=0.3, tau=0.4, preferred=True)
    assert result.selected[0].tolist() == [True, True] + [False] * 8
    torch.testing.assert_close(result.weights[0, :2], torch.tensor(_expected([0.5, 1.5], [0.5, 1.5], 0.3, 1.0)))


def test_weights_stay_in_range_and_are_one_outside_the_selection():
    torch.manual_seed(1)
    u, delta = torch.randn(6, 40), torch.randn(6, 40)
    mask = torch.rand(6, 40) > 0.2
    for preferred, low, high in ((True, 1.0, 1.25), (False, 0.75, 1.0)):
        result = blind_spot_weights(u, delta, mask, alpha=0.25, tau=0.4, preferred=preferred)
        assert result.weights.min() >= low and result.weights.max() <= high
        assert torch.all(result.weights[~result.selected] == 1.0)
        assert not torch.any(result.selected & ~mask)
        share = result.selected.sum() / mask.sum()
        assert 0.3 < share.item() < 0.45


def test_fewer_than_two_selected_tokens_leave_weights_at_one():
    # q_0.4 of [1, 2] = 1.4 -> only one token selected
    result = blind_spot_weights(
        torch.tensor([[3.0, -3.0]]),
        torch.tensor([[1.0, 2.0]]),
        torch.ones(1, 2, dtype=torch.bool),
        alpha=0.3,
        tau=0.4,
        preferred=True,
    )
    assert result.weights.tolist() == [[1.0, 1.0]]
    assert not result.selected.any()
    tied = blind_spot_weights(
        torch.randn(1, 8), torch.zeros(1, 8), torch.ones(1, 8, dtype=torch.bool), alpha=0.3, tau=0.4, preferred=True
    )  # Δ < q never holds when all Δ are equal
    assert tied.weights.tolist() == [[1.0] * 8]
    empty = blind_spot_weights(
        torch.randn(1, 4), torch.randn(1, 4), torch.zeros(1, 4, dtype=torch.bool), alpha=0.3, tau=0.4, preferred=True
    )
    assert empty.weights.tolist() == [[1.0] * 4]


def test_batch_scope_uses_statistics_of_all_ranks():
    torch.manual_seed(2)
    u, delta = torch.randn(4, 12), torch.randn(4, 12)
    mask = torch.ones(4, 12, dtype=torch.bool)
    other_u, other_delta = u[2:][mask[2:]], delta[2:][mask[2:]]
    local = slice(0, 2)
    calls = iter([other_u, other_delta])

    def gather(values):  # simulates two ranks: this one holds rows 0-1, the other rows 2-3
        return torch.cat([values, next(calls)])

    distributed = blind_spot_weights(
        u[local], delta[local], mask[local], alpha=0.3, tau=0.4, preferred=True, scope="batch", gather=gather
    )
    whole = blind_spot_weights(u, delta, mask, alpha=0.3, tau=0.4, preferred=True, scope="batch")
    torch.testing.assert_close(distributed.weights, whole.weights[local])
    sequence = blind_spot_weights(u, delta, mask, alpha=0.3, tau=0.4, preferred=True, scope="sequence")
    assert not torch.allclose(sequence.weights, whole.weights)


# ---- loss ----------------------------------------------------------------------------------


def _lf_dpo_loss(policy_w, policy_l, ref_w, ref_l, beta, label_smoothing):
    """LLaMA-Factory 0.9.5's own DPO sigmoid loss (CustomDPOTrainer.compute_preference_loss)."""
    from llamafactory.train.dpo.trainer import CustomDPOTrainer
    from trl import DPOTrainer

    fake = types.SimpleNamespace(
        beta=beta,
        label_smoothing=label_smoothing,
        loss_type="sigmoid",
        reference_free=False,
        f_divergence_type="reverse_kl",
        bco_gemma=0.0,
        use_weighting=False,
        finetuning_args=types.SimpleNamespace(use_ref_model=True),
        accelerator=types.SimpleNamespace(device=torch.device("cpu")),
    )
    fake.dpo_loss = types.MethodType(DPOTrainer.dpo_loss, fake)
    return CustomDPOTrainer.compute_preference_loss(fake, policy_w, policy_l, ref_w, ref_l)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_unit_weights_give_llamafactory_dpo_loss(label_smoothing):
    torch.manual_seed(3)
    policy_tokens, ref_tokens = -torch.rand(4, 9) * 3, -torch.rand(4, 9) * 3
    mask = torch.rand(4, 9) > 0.3
    policy, reference = weighted_sequence_logps(policy_tokens, ref_tokens, torch.ones(4, 9), mask)
    ours = dpo_sigmoid_loss(
        policy[:2], policy[2:], reference[:2], reference[2:], beta=0.1, label_smoothing=label_smoothing
    )
    theirs, chosen_rewards, rejected_rewards = _lf_dpo_loss(
        (policy_tokens * mask).sum(-1)[:2],
        (policy_tokens * mask).sum(-1)[2:],
        (ref_tokens * mask).sum(-1)[:2],
        (ref_tokens * mask).sum(-1)[2:],
        0.1,
        label_smoothing,
    )
    torch.testing.assert_close(ours.losses, theirs)
    torch.testing.assert_close(ours.chosen_rewards, chosen_rewards)
    torch.testing.assert_close(ours.rejected_rewards, rejected_rewards)


def test_loss_by_hand_for_one_pair():
    policy_w, policy_l = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-0.5, -3.0]])
    ref_w, ref_l = torch.tensor([[-1.5, -1.5]]), torch.tensor([[-1.0, -2.0]])
    lam_w, lam_l = torch.tensor([[1.2, 1.0]]), torch.tensor([[1.0, 0.8]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    pw, rw = weighted_sequence_logps(policy_w, ref_w, lam_w, mask)
    pl, rl = weighted_sequence_logps(policy_l, ref_l, lam_l, mask)
    # chosen: (1.2 * -1 + -2) - (-3) = -0.2; rejected: (-0.5 + 0.8 * -3) - (-3) = 0.1; z = 0.1 * (-0.2 - 0.1)
    loss = dpo_sigmoid_loss(pw, pl, rw, rl, beta=0.1).losses
    assert loss.item() == pytest.approx(-math.log(sigmoid(0.1 * (-0.3))), rel=1e-6)
    pw, rw = weighted_sequence_logps(policy_w, ref_w, lam_w, mask, target="logratio")
    # logratio: 1.2 * (-1 + 1.5) + 1.0 * (-2 + 1.5) = 0.1
    assert (pw - rw).item() == pytest.approx(0.1, abs=1e-6)


def test_gradient_per_token_is_scaled_by_exactly_lambda():
    torch.manual_seed(4)
    policy = (-torch.rand(2, 6) * 2).requires_grad_()
    reference = -torch.rand(2, 6) * 2
    weights = torch.tensor([[1.3, 1.0, 1.1, 1.0, 1.25, 1.0], [0.7, 1.0, 0.9, 1.0, 1.0, 0.8]])
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 5] = False
    seq_policy, seq_reference = weighted_sequence_logps(policy, reference, weights, mask)
    loss = dpo_sigmoid_loss(seq_policy[:1], seq_policy[1:], seq_reference[:1], seq_reference[1:], beta=0.1).losses.sum()
    (grad,) = torch.autograd.grad(loss, policy)
    z = 0.1 * ((seq_policy[0] - seq_reference[0]) - (seq_policy[1] - seq_reference[1])).item()
    d_loss_d_margin = -0.1 * (1.0 - sigmoid(z))  # d/dS_w of -log σ(β(S_w - S_l))
    expected = torch.stack([weights[0] * d_loss_d_margin, -weights[1] * d_loss_d_margin * mask[1]])
    torch.testing.assert_close(grad, expected)
    assert not weights.requires_grad  # sg(λ)
