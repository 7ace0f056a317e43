"""V-DPO (YuxiXie/V-DPO): DPO on guided scores s̃(y|m) = γ s(y|m) - (γ - 1) sg u(y|∅), the reference unguided.

u is the policy (V-DPO's `dynamic_llm`, the default) or the reference on ∅: an all-zero normalised image, or the
mean of u over n Gaussian images (`vdpo_blank_images`). The span is the response (LLaMA-Factory's pairwise rows
label the final answer only); with γ = 1, from the first token where chosen and rejected differ. One image per row
serves both responses, as in V-DPO's code for rows without per-response images; `vdpo_response_images: columns`
scores each response on its own image, read from the dataset's `chosen_image` and `rejected_image` columns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from ue_dpo.argument_checks import UEDPOUserError, check_choice, check_integer, check_number
from ue_dpo.methods.base import KeyGroup, MethodKey, PreferenceMethod, SecondImage, WeightedTokens

if TYPE_CHECKING:
    from ue_dpo.core.loss import PreferenceLoss

DEFAULT_VDPO_GAMMA = 2.0  # the development scripts' value (commits 4a1ee98, d84621c)
GUIDANCE_MODELS = ("policy", "reference")
RESPONSE_IMAGES = ("shared", "columns")


def check_vdpo_keys(args) -> None:
    check_number("vdpo_gamma", args.vdpo_gamma)
    if args.vdpo_gamma == 0:
        raise UEDPOUserError(
            "`vdpo_gamma: 0` (the released LLaVA-1.5 script's value) makes s̃ = sg[u(y|∅)]: the loss then has no "
            f"gradient and nothing trains. Use γ > 0 (default {DEFAULT_VDPO_GAMMA}, as V-DPO's earlier scripts)."
        )
    if not args.vdpo_gamma > 0:
        raise UEDPOUserError(f"`vdpo_gamma: {args.vdpo_gamma}` must be positive (default {DEFAULT_VDPO_GAMMA}).")
    check_integer("vdpo_blank_images", args.vdpo_blank_images, "an integer >= 0")
    if args.vdpo_blank_images < 0:
        raise UEDPOUserError(
            f"`vdpo_blank_images: {args.vdpo_blank_images}` must be >= 0 (0: the all-zero image; n: n Gaussian images)."
        )
    check_choice("vdpo_guidance", args.vdpo_guidance, GUIDANCE_MODELS)
    check_choice("vdpo_response_images", args.vdpo_response_images, RESPONSE_IMAGES)
    if args.vdpo_gamma == 1 and (args.vdpo_blank_images != 0 or args.vdpo_guidance != "policy"):
        raise UEDPOUserError(
            "with `vdpo_gamma: 1` the guidance u(y|∅) drops out of s̃, so `vdpo_blank_images` and `vdpo_guidance` "
            "have no effect; remove them or set another vdpo_gamma."
        )
    if args.ue_precompute_ref and args.vdpo_guidance == "reference" and args.vdpo_gamma != 1:
        raise UEDPOUserError(
            "`ue_precompute_ref` cannot be used with `vdpo_guidance: reference`: the guidance needs the reference "
            "on the blank image, which the cache does not hold. Remove `ue_precompute_ref` or use "
            "`vdpo_guidance: policy`."
        )


VDPO_KEYS = KeyGroup(
    keys=(
        MethodKey(
            "vdpo_gamma",
            float | None,
            DEFAULT_VDPO_GAMMA,
            "γ > 0 of `ue_weighting: vdpo`: s̃ = γ s(y|m) - (γ - 1) sg u(y|∅) (default 2.0, V-DPO's earlier scripts; "
            "0, its released script's value, leaves no gradient and is refused; 1 is DPO from the first differing "
            "token).",
        ),
        MethodKey(
            "vdpo_blank_images",
            int | None,
            0,
            "The blank image ∅ of `ue_weighting: vdpo`: 0 (the default, its released script) the all-zero normalised "
            "image; n >= 1 the mean of u over n images drawn N(CLIP mean, CLIP std) per channel (one pass each).",
        ),
        MethodKey(
            "vdpo_guidance",
            Literal[GUIDANCE_MODELS] | None,
            "policy",
            "Which model gives u(y|∅) in `ue_weighting: vdpo`: the policy, without gradient (the default, V-DPO's "
            "dynamic_llm as its script sets it), or the reference.",
        ),
        MethodKey(
            "vdpo_response_images",
            Literal[RESPONSE_IMAGES] | None,
            "shared",
            "The images (m_w, m_l) of `ue_weighting: vdpo`: shared (the default: the row's image scores both "
            "responses) or columns (each response scored on its own image, from the dataset's `chosen_image` and "
            "`rejected_image` columns registered in dataset_info.json, each the size of the row's image; a row with "
            "an image and none there is refused).",
        ),
    ),
    refusal="`{key}` applies to {readers} only, but `ue_weighting: {method}`; remove `{key}` or set {readers}.",
    check=check_vdpo_keys,
)


class VDPO(PreferenceMethod):
    name = "vdpo"
    summary = "V-DPO (YuxiXie/V-DPO): DPO on s̃ = γ s(y|m) - (γ-1) sg u(y|∅), ∅ a blank image, the reference unguided"
    key_groups = (VDPO_KEYS,)

    @property
    def reads_response_images(self) -> bool:
        return self.args.vdpo_response_images == "columns"

    @property
    def guided(self) -> bool:
        return self.args.vdpo_gamma != 1

    @property
    def second_images(self) -> dict[str, SecondImage]:
        if not self.guided:
            return {}
        if self.args.vdpo_blank_images == 0:
            return {"blank": SecondImage("zeros")}
        return {f"blank_{index}": SecondImage("gaussian") for index in range(self.args.vdpo_blank_images)}

    @property
    def weight_target(self) -> str:
        return "logratio"  # the span's 0/1 weights apply to policy and reference alike

    def weigh(self, step) -> WeightedTokens:
        import torch  # see `methods.base`

        from ue_dpo.core.peer_losses import from_first_difference

        clean = step.statistics("clean")
        response = step.response
        span = response.mask
        if not self.guided:
            pairs = response.pairs
            span = torch.cat(
                from_first_difference(response.targets[:pairs], response.targets[pairs:], span[:pairs], span[pairs:])
            )
        return WeightedTokens(response, clean.target_logprob, span.to(clean.target_logprob.dtype), {"span": span})

    def loss(self, step, tokens: WeightedTokens, *, beta: float, label_smoothing: float) -> PreferenceLoss:
        import torch  # see `methods.base`

        from ue_dpo.core.peer_losses import vdpo_loss

        pairs, span = tokens.response.pairs, tokens.weights
        policy, reference = self.sequence_logps(step, tokens)
        guidance = torch.zeros_like(policy)
        if self.guided:
            passes = []
            for image in self.second_images:
                if self.args.vdpo_guidance == "policy":
                    with torch.no_grad():
                        passes.append(step.statistics(image).target_logprob)
                else:
                    passes.append(step.reference_statistics(image).target_logprob)
            guidance = (torch.stack(passes).mean(0) * span).sum(-1)
        result = vdpo_loss(
            policy[:pairs],
            policy[pairs:],
            reference[:pairs],
            reference[pairs:],
            guidance[:pairs],
            guidance[pairs:],
            beta=beta,
            gamma=self.args.vdpo_gamma,
            label_smoothing=label_smoothing,
        )
        if not self.guided:  # no guidance pass ran
            result.terms.clear()
        return result
