"""Per-token quantities UE-DPO reads from raw logits (not log-probs).

For a response token a_t, with v the clean image and v' the noised one, and
â_t = argmax_y logit(y | v'):
    u_t = logit(â_t | v) - logit(a_t | v)     how much more the clean model believes the noised guess
    Δ_t = logit(a_t | v) - logit(a_t | v')    how much the image supports the right token
"""

from dataclasses import dataclass

import torch


@dataclass
class TargetLogitSummary:
    """What the loss needs from one pass over the vocabulary, per token position (see `core.chunked`)."""

    target_logit: torch.Tensor  # logit(a_t)
    target_logprob: torch.Tensor  # log softmax(a_t)
    argmax: torch.Tensor  # argmax_y logit(y), int64
    probe_logit: torch.Tensor | None  # logit(probe_t) for a given probe id per position, else None
    reference_kl: torch.Tensor | None = None  # KL(π_ref ‖ π) at each position, where asked for


def blind_spot_statistics(
    clean_target_logit: torch.Tensor, clean_noised_argmax_logit: torch.Tensor, noised_target_logit: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, Δ) from logit(a|v), logit(â|v) and logit(a|v'); all inputs are detached first."""
    clean_target = clean_target_logit.detach().float()
    uncertainty = clean_noised_argmax_logit.detach().float() - clean_target
    visual_gain = clean_target - noised_target_logit.detach().float()
    return uncertainty, visual_gain
