"""The losses of the peer preference methods, on per-pair summed log-probs (`[B]` tensors).

s(y|m) is the policy's summed log-prob of response y given image m, r the reference's, w/l chosen/rejected, m' a
second image, ℓ(z) = -log σ(z), sg stop-gradient.

    mDPO / MFPO  L = ℓ(β[(s_w - s_l) - (r_w - r_l)]) + ℓ(β[(s(y_w|m) - s(y_w|m')) - (r(y_w|m) - r(y_w|m'))])
                     + ℓ(β[s(y_w|m) - r(y_w|m)] - η)                      (text, image and anchor terms; η = 0)
    CHiP         L = ℓ(β h),  h = [(s_w - s_l) - (r_w - r_l)] + [(s_w - r_w) - (s(y_w|m') - r(y_w|m'))]
                                  - α (KL_l - sg KL_w)
    V-DPO        L = (1 - ε) ℓ(β h) + ε ℓ(-β h),  h = [s̃_w - r_w] - [s̃_l - r_l],  s̃ = γ s - (γ - 1) sg u(y|∅)
"""

import torch
import torch.nn.functional as F

from ue_dpo.core.loss import PreferenceLoss


def _rewards(beta: float, policy: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return (beta * (policy - reference)).detach()


def mdpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    policy_chosen_second: torch.Tensor,
    reference_chosen_second: torch.Tensor,
    *,
    beta: float,
    image_term_mask: torch.Tensor | None = None,
    text_margin: torch.Tensor | None = None,
) -> PreferenceLoss:
    """mDPO's (and MFPO's, whose margin η is 0) three terms, weighted 1:1:1. `image_term_mask` `[B]` keeps the
    image term of the pairs that have an image (a pair without one has no second image to prefer its own over).
    `text_margin` replaces the text term's (s_w - s_l) - (r_w - r_l), e.g. by its token-weighted sums; the other
    terms keep the plain sums."""
    chosen_logratio = policy_chosen - reference_chosen
    if text_margin is None:
        text_margin = chosen_logratio - (policy_rejected - reference_rejected)
    text = -F.logsigmoid(beta * text_margin)
    image = -F.logsigmoid(beta * (chosen_logratio - (policy_chosen_second - reference_chosen_second)))
    if image_term_mask is not None:
        image = torch.where(image_term_mask, image, 0.0)
    anchor = -F.logsigmoid(beta * chosen_logratio)
    return PreferenceLoss(
        losses=text + image + anchor,
        chosen_rewards=_rewards(beta, policy_chosen, reference_chosen),
        rejected_rewards=_rewards(beta, policy_rejected, reference_rejected),
        terms={"text_loss": text.detach(), "image_loss": image.detach(), "anchor_loss": anchor.detach()},
    )


def chip_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    policy_chosen_second: torch.Tensor,
    reference_chosen_second: torch.Tensor,
    kl_chosen: torch.Tensor,
    kl_rejected: torch.Tensor,
    *,
    beta: float,
    alpha: float,
) -> PreferenceLoss:
    """CHiP's one sigmoid over DPO, the cross-modal term and TDPO's KL term (the paper's formula, per pair)."""
    chosen_logratio = policy_chosen - reference_chosen
    text = chosen_logratio - (policy_rejected - reference_rejected)
    image = chosen_logratio - (policy_chosen_second - reference_chosen_second)
    kl_term = alpha * (kl_rejected - kl_chosen.detach())
    logits = text + image - kl_term
    return PreferenceLoss(
        losses=-F.logsigmoid(beta * logits),
        chosen_rewards=_rewards(beta, policy_chosen, reference_chosen),
        rejected_rewards=_rewards(beta, policy_rejected, reference_rejected),
        terms={"kl_chosen": kl_chosen.detach(), "kl_rejected": kl_rejected.detach()},
    )


def guided_scores(policy: torch.Tensor, guidance: torch.Tensor, gamma: float) -> torch.Tensor:
    """V-DPO's s̃ = γ s - (γ - 1) sg u."""
    return gamma * policy - (gamma - 1.0) * guidance.detach()


def vdpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    guidance_chosen: torch.Tensor,
    guidance_rejected: torch.Tensor,
    *,
    beta: float,
    gamma: float,
    label_smoothing: float = 0.0,
) -> PreferenceLoss:
    """V-DPO's loss over the guided scores; the reference is not guided."""
    guided_chosen = guided_scores(policy_chosen, guidance_chosen, gamma)
    guided_rejected = guided_scores(policy_rejected, guidance_rejected, gamma)
    margin = (guided_chosen - reference_chosen) - (guided_rejected - reference_rejected)
    losses = -(1.0 - label_smoothing) * F.logsigmoid(beta * margin) - label_smoothing * F.logsigmoid(-beta * margin)
    return PreferenceLoss(
        losses=losses,
        chosen_rewards=_rewards(beta, guided_chosen, reference_chosen),
        rejected_rewards=_rewards(beta, guided_rejected, reference_rejected),
        terms={"guidance_chosen": guidance_chosen.detach(), "guidance_rejected": guidance_rejected.detach()},
    )


def from_first_difference(chosen_targets, rejected_targets, chosen_mask, rejected_mask):
    """V-DPO's span at γ = 1: each pair's response tokens from the first column where the chosen and the rejected
    response differ (a token, or one response ending), for both rows. `[B, K]` each; the rows' responses start in
    the same column (they share the prompt)."""
    differs = (chosen_targets != rejected_targets) | (chosen_mask != rejected_mask)
    differs = differs & (chosen_mask | rejected_mask)
    started = differs.int().cumsum(-1) > 0
    return chosen_mask & started, rejected_mask & started
