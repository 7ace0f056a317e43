"""The UE-DPO objective.

    L = -log σ( β Σ_t [sg(λ_w) log πθ(a^w_t) - log π_ref(a^w_t)]
              - β Σ_t [sg(λ_l) log πθ(a^l_t) - log π_ref(a^l_t)] )

With `target="logratio"` λ multiplies the whole log-ratio, log πθ - log π_ref (RLHF-V's DDPO weights
enter this way). TPO's weights enter as log w added to each token's log-probability instead.
With λ ≡ 1 this is DPO's sigmoid loss; `label_smoothing` ε gives cDPO's
(1 - ε)·L(z) + ε·L(-z) as LLaMA-Factory's DPO does.
"""

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

WeightTarget = Literal["policy", "logratio"]


def weighted_sequence_logps(
    policy_token_logps: torch.Tensor,
    reference_token_logps: torch.Tensor,
    weights: torch.Tensor,
    mask: torch.Tensor,
    target: WeightTarget = "policy",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence (Σ λ log πθ, Σ log π_ref), or both weighted for `target="logratio"`."""
    mask = mask.to(policy_token_logps.dtype)
    weights = weights.detach().to(policy_token_logps.dtype)
    policy = (weights * policy_token_logps * mask).sum(-1)
    if target == "policy":
        reference = (reference_token_logps * mask).sum(-1)
    elif target == "logratio":
        reference = (weights * reference_token_logps * mask).sum(-1)
    else:
        raise ValueError(f"unknown weight target {target!r}; use 'policy' or 'logratio'")
    return policy, reference


def log_weighted_sequence_logps(token_logps: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence Σ_t [log π(a_t) + log w_t] (TPO's score; w is not detached, so gradients reach it too)."""
    mask = mask.to(token_logps.dtype)
    return ((token_logps + torch.log(weights.to(token_logps.dtype))) * mask).sum(-1)


@dataclass
class PreferenceLoss:
    losses: torch.Tensor  # per pair
    chosen_rewards: torch.Tensor  # β (policy - reference), detached
    rejected_rewards: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # a method's own per-pair quantities, detached


def dpo_sigmoid_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> PreferenceLoss:
    margin = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    losses = -F.logsigmoid(beta * margin) * (1.0 - label_smoothing) - F.logsigmoid(-beta * margin) * label_smoothing
    return PreferenceLoss(
        losses=losses,
        chosen_rewards=(beta * (policy_chosen - reference_chosen)).detach(),
        rejected_rewards=(beta * (policy_rejected - reference_rejected)).detach(),
    )
