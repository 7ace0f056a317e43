"""DDPO (RLHF-V's dense DPO): γ on the response tokens that differ between chosen and rejected, on the log-ratio.

"Differ" is RLHF-V's `get_diff_ids` over whole rows (`core.peer_weights.ddpo_token_weights`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ue_dpo.argument_checks import UEDPOUserError, check_number
from ue_dpo.methods.base import KeyGroup, MethodKey, PreferenceMethod, WeightedTokens, chosen_and_rejected

if TYPE_CHECKING:
    import torch

DEFAULT_DDPO_GAMMA = 3.0  # RLAIF-V's `dpo_token_weight` default


def check_ddpo_keys(args) -> None:
    check_number("ddpo_gamma", args.ddpo_gamma)
    if not args.ddpo_gamma > 0:
        raise UEDPOUserError(f"`ddpo_gamma: {args.ddpo_gamma}` must be positive (default {DEFAULT_DDPO_GAMMA}).")


DDPO_KEYS = KeyGroup(
    keys=(
        MethodKey(
            "ddpo_gamma",
            float | None,
            DEFAULT_DDPO_GAMMA,
            "γ > 0 of `ue_weighting: ddpo`: the weight of differing tokens (default 3.0 as in RLAIF-V; the "
            "RLHF-V paper uses 5; 1 is plain DPO).",
        ),
    ),
    refusal="`{key}` applies to {readers} only, but `ue_weighting: {method}`; remove `{key}` or set {readers}.",
    check=check_ddpo_keys,
)


class DDPO(PreferenceMethod):
    name = "ddpo"
    summary = (
        "DDPO (RLHF-V's dense DPO): ddpo_gamma on the tokens that differ between chosen and rejected, on "
        "policy and reference"
    )
    key_groups = (DDPO_KEYS,)

    @property
    def weight_target(self) -> str:
        return "logratio"

    def weigh(self, step) -> WeightedTokens:
        from ue_dpo.core.peer_weights import ddpo_token_weights  # loads torch (see `methods.base`)

        clean = step.statistics("clean")
        response = step.response
        weights, differing = ddpo_token_weights(
            response.inputs["input_ids"],
            response.inputs["attention_mask"],
            response.positions,
            response.mask,
            gamma=self.args.ddpo_gamma,
        )
        return WeightedTokens(response, clean.target_logprob, weights, {"differing": differing})

    def metric_terms(self, tokens: WeightedTokens) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        (chosen, *_), (rejected, *_) = chosen_and_rejected(tokens.weights.shape[0])
        mask, differing = tokens.response.mask, tokens.details["differing"]
        return {
            "ddpo/differing_share_chosen": (differing[chosen], mask[chosen]),
            "ddpo/differing_share_rejected": (differing[rejected], mask[rejected]),
        }
