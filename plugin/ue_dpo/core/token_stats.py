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
    """What the loss needs from one pass over the vocabulary, per token position."""

    target_logit: torch.Tensor  # logit(a_t)
    target_logprob: torch.Tensor  # log softmax(a_t)
    argmax: torch.Tensor  # argmax_y logit(y), int64
    probe_logit: torch.Tensor | None  # logit(probe_t) for a given probe id per position, else None


def summarize_logits(
    logits: torch.Tensor, targets: torch.Tensor, probe_ids: torch.Tensor | None = None, chunk_size: int = 1024
) -> TargetLogitSummary:
    """Reduce `[..., V]` logits to per-position values, `chunk_size` positions at a time in float32.

    Gradients flow through `target_logit`, `target_logprob` and `probe_logit`.
    """
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_targets = targets.reshape(-1, 1)
    flat_probes = None if probe_ids is None else probe_ids.reshape(-1, 1)
    target_logits, target_logprobs, argmaxes, probe_logits = [], [], [], []
    for start in range(0, flat_logits.shape[0], chunk_size):
        chunk = flat_logits[start : start + chunk_size].float()
        target = chunk.gather(-1, flat_targets[start : start + chunk_size]).squeeze(-1)
        target_logits.append(target)
        target_logprobs.append(target - torch.logsumexp(chunk, dim=-1))
        argmaxes.append(chunk.detach().argmax(dim=-1))
        if flat_probes is not None:
            probe_logits.append(chunk.gather(-1, flat_probes[start : start + chunk_size]).squeeze(-1))
    def joined(parts: list[torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if not parts:
            return flat_logits.new_zeros(targets.shape, dtype=dtype)
        return torch.cat(parts).reshape(targets.shape)

    return TargetLogitSummary(
        target_logit=joined(target_logits),
        target_logprob=joined(target_logprobs),
        argmax=joined(argmaxes, torch.long),
        probe_logit=None if flat_probes is None else joined(probe_logits),
    )


def blind_spot_statistics(
    clean_target_logit: torch.Tensor, clean_noised_argmax_logit: torch.Tensor, noised_target_logit: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, Δ) from logit(a|v), logit(â|v) and logit(a|v'); all inputs are detached first."""
    clean_target = clean_target_logit.detach().float()
    uncertainty = clean_noised_argmax_logit.detach().float() - clean_target
    visual_gain = clean_target - noised_target_logit.detach().float()
    return uncertainty, visual_gain
