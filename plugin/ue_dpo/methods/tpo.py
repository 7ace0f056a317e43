"""TPO (alibaba/TPO): each model's tokens weighted by how much its own clean image raises their logit over v'.

w from `core.peer_weights.tpo_token_weights`, added as log w to every token's log-prob of the policy (with gradient,
through both of its passes) and of the reference (from the reference's own clean and noised passes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ue_dpo.methods.base import PreferenceMethod, WeightedTokens, chosen_and_rejected
from ue_dpo.methods.noised_image import NOISED_IMAGE_KEYS

if TYPE_CHECKING:
    import torch


def tpo_weights(clean_target_logit, noised_target_logit, weighted_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """TPO's w (1 outside `weighted_mask`) and s (0 outside) for chosen rows, then rejected rows."""
    import torch  # see `methods.base`

    from ue_dpo.core.peer_weights import tpo_token_weights

    weights, scores = [], []
    for rows, preferred, _ in chosen_and_rejected(weighted_mask.shape[0]):
        branch_weights, score = tpo_token_weights(
            clean_target_logit[rows], noised_target_logit[rows], preferred=preferred
        )
        weights.append(torch.where(weighted_mask[rows], branch_weights, 1.0))
        scores.append(torch.where(weighted_mask[rows], score, 0.0))
    return torch.cat(weights), torch.cat(scores)


class TPO(PreferenceMethod):
    name = "tpo"
    summary = (
        "TPO (alibaba/TPO): w = σ(s)+0.5 on chosen, 1-σ(s)+0.5 on rejected tokens, s = logit(a|v) - "
        "logit(a|v'), added as log w to policy and reference"
    )
    key_groups = (NOISED_IMAGE_KEYS,)
    precomputed_reference_refusal = (
        "TPO weights the reference by the reference's own clean/noised logits, which the cache does not hold."
    )

    @property
    def reads_noised_image(self) -> bool:
        return True

    def weigh(self, step) -> WeightedTokens:
        clean, noised = step.statistics("clean"), step.statistics("noised")
        weights, score = tpo_weights(clean.target_logit, noised.target_logit, step.response.weighted_mask)
        return WeightedTokens(step.response, clean.target_logprob, weights, {"score": score})

    def sequence_logps(self, step, tokens: WeightedTokens) -> tuple[torch.Tensor, torch.Tensor]:
        from ue_dpo.core.loss import log_weighted_sequence_logps  # loads torch (see `methods.base`)

        reference_clean, reference_noised = step.reference_statistics("clean"), step.reference_statistics("noised")
        mask = tokens.response.mask
        reference_weights, _ = tpo_weights(
            reference_clean.target_logit, reference_noised.target_logit, tokens.response.weighted_mask
        )
        return (
            log_weighted_sequence_logps(tokens.policy_logps, tokens.weights, mask),
            log_weighted_sequence_logps(reference_clean.target_logprob, reference_weights, mask),
        )

    def metric_terms(self, tokens: WeightedTokens) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        (chosen, *_), (rejected, *_) = chosen_and_rejected(tokens.weights.shape[0])
        weighted_mask = tokens.response.weighted_mask
        return {
            "tpo/weight_chosen_mean": (tokens.weights[chosen], weighted_mask[chosen]),
            "tpo/weight_rejected_mean": (tokens.weights[rejected], weighted_mask[rejected]),
            "tpo/score_mean": (tokens.details["score"], weighted_mask),
        }
