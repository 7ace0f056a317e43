"""UE-DPO: λ on the response tokens where the clean image leaves the model less sure than a noised one would.

With u and Δ from `core.token_stats` (the policy on v without and on v' with no gradient), λ from
`core.weights.blind_spot_weights` per response branch, and `sg(λ)` on log πθ (or on the log-ratio,
`ue_weight_target: logratio`). α = 0 is exactly DPO and runs no pass on v'.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from ue_dpo.argument_checks import UEDPOUserError, check_choice, check_number
from ue_dpo.methods.base import KeyGroup, MethodKey, PreferenceMethod, WeightedTokens, chosen_and_rejected
from ue_dpo.methods.noised_image import NOISED_IMAGE_KEYS

if TYPE_CHECKING:
    import torch

    from ue_dpo.core.token_stats import TargetLogitSummary

STAT_SCOPES = ("sequence", "batch")
WEIGHT_TARGETS = ("policy", "logratio")
BRANCHES = ("both", "chosen", "rejected")


def check_ue_keys(args) -> None:
    check_number("ue_alpha", args.ue_alpha)
    if not 0.0 <= args.ue_alpha < 1.0:
        raise UEDPOUserError(
            f"`ue_alpha: {args.ue_alpha}` is out of range; UE-DPO needs 0 <= ue_alpha < 1 "
            "(λ_l = 1 - α·σ(·) must stay positive). The paper uses 0.15-0.3."
        )
    check_number("ue_tau", args.ue_tau)
    if not 0.0 < args.ue_tau <= 0.5:
        raise UEDPOUserError(f"`ue_tau: {args.ue_tau}` is out of range; use 0 < ue_tau <= 0.5 (default 0.4).")
    check_choice("ue_stat_scope", args.ue_stat_scope, STAT_SCOPES)
    check_choice("ue_weight_target", args.ue_weight_target, WEIGHT_TARGETS)
    check_choice("ue_branches", args.ue_branches, BRANCHES)


UE_KEYS = KeyGroup(
    keys=(
        MethodKey(
            "ue_alpha",
            float | None,
            0.3,
            "UE-DPO weight strength α in [0, 1): λ_w ∈ [1, 1+α], λ_l ∈ [1-α, 1]. 0 gives plain DPO. Default 0.3.",
        ),
        MethodKey(
            "ue_tau",
            float | None,
            0.4,
            "Quantile τ in (0, 0.5]: chosen tokens with Δ below the τ-quantile and rejected tokens with Δ at "
            "or above the (1-τ)-quantile are selected for re-weighting. Default 0.4.",
        ),
        MethodKey(
            "ue_stat_scope",
            Literal[STAT_SCOPES] | None,
            "sequence",
            "Over which tokens the quantile q and the mean/std of u are taken: each response (sequence, the "
            "default) or, separately for chosen and for rejected responses, all response tokens of image "
            "samples in the current micro-batch of every rank, gathered across ranks (batch; not across "
            "gradient-accumulation steps).",
        ),
        MethodKey(
            "ue_weight_target",
            Literal[WEIGHT_TARGETS] | None,
            "policy",
            "λ multiplies log πθ (policy, the default, as the paper) or the log-ratio log πθ - log π_ref (logratio).",
        ),
        MethodKey(
            "ue_branches",
            Literal[BRANCHES] | None,
            "both",
            "Which responses get λ: both (the default), chosen only (the paper's 'w/o dispref.') or rejected "
            "only ('w/o pref.'); the other keeps λ = 1.",
        ),
    ),
    refusal="`{key}: {value}` applies to {readers} only, but `ue_weighting: {method}` ignores it; remove `{key}` or "
    "use {readers}.",
    check=check_ue_keys,
)


class UEDPO(PreferenceMethod):
    name = "ue"
    summary = "UE-DPO (default): λ from u and Δ on the policy's clean and noised passes"
    key_groups = (UE_KEYS, NOISED_IMAGE_KEYS)

    @property
    def reads_noised_image(self) -> bool:
        return self.args.ue_alpha > 0

    @property
    def weight_target(self) -> str:
        return self.args.ue_weight_target

    def weigh(self, step) -> WeightedTokens:
        import torch  # see `methods.base`

        if not self.reads_noised_image:  # α = 0: λ ≡ 1, and v' would change nothing
            return self.unweighted(step)
        with torch.no_grad():  # the current policy on v', adapters on
            noised = step.statistics("noised")
        clean = step.statistics("clean", probe_ids=noised.argmax)
        weights, details = self.blind_spot_weights(
            clean, noised, step.response.weighted_mask, gather=step.gather_across_ranks
        )
        return WeightedTokens(step.response, clean.target_logprob, weights, details)

    def blind_spot_weights(
        self, clean: TargetLogitSummary, noised: TargetLogitSummary, weighted_mask: torch.Tensor, *, gather
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """λ, and u, Δ, the selection and the categories by name; the branch `ue_branches` leaves out keeps λ = 1,
        unselected."""
        import torch  # see `methods.base`

        from ue_dpo.core.token_stats import blind_spot_statistics
        from ue_dpo.core.weights import UNSELECTED, blind_spot_categories, blind_spot_weights

        args = self.args
        uncertainty, delta = blind_spot_statistics(clean.target_logit, clean.probe_logit, noised.target_logit)
        weights, selected, categories = [], [], []
        for rows, preferred, branch in chosen_and_rejected(weighted_mask.shape[0]):
            branch_weights = blind_spot_weights(
                uncertainty[rows],
                delta[rows],
                weighted_mask[rows],
                alpha=args.ue_alpha,
                tau=args.ue_tau,
                preferred=preferred,
                scope=args.ue_stat_scope,
                gather=gather,
            )
            category = blind_spot_categories(uncertainty[rows], branch_weights.selected, preferred=preferred)
            if args.ue_branches not in ("both", branch):  # still computed: `batch` scope gathers on every rank
                branch_weights.weights.fill_(1.0)
                branch_weights.selected.fill_(False)
                category.fill_(UNSELECTED)
            weights.append(branch_weights.weights)
            selected.append(branch_weights.selected)
            categories.append(category)
        details = {
            "uncertainty": uncertainty,
            "delta": delta,
            "selected": torch.cat(selected),
            "category": torch.cat(categories),
        }
        return torch.cat(weights), details

    def metric_terms(self, tokens: WeightedTokens) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        if not tokens.details:
            return {}
        (chosen, *_), (rejected, *_) = chosen_and_rejected(tokens.weights.shape[0])
        weighted_mask, details = tokens.response.weighted_mask, tokens.details
        return {
            "ue/selected_share_chosen": (details["selected"][chosen], weighted_mask[chosen]),
            "ue/selected_share_rejected": (details["selected"][rejected], weighted_mask[rejected]),
            "ue/lambda_chosen_mean": (tokens.weights[chosen], weighted_mask[chosen]),
            "ue/lambda_rejected_mean": (tokens.weights[rejected], weighted_mask[rejected]),
            "ue/u_mean": (details["uncertainty"], weighted_mask),
            "ue/delta_mean": (details["delta"], weighted_mask),
        }
