"""mDPO (luka-group/mDPO), MFPO (the paper's loss) and mDPO with UE-DPO's λ in its text term.

    L = ℓ(β[(s_w - s_l) - (r_w - r_l)]) + ℓ(β[(s(y_w|m) - s(y_w|m')) - (r(y_w|m) - r(y_w|m'))]) + ℓ(β[s_w - r_w])

(`core.peer_losses.mdpo_loss`). m' differs: mDPO's `RandomResizedCrop` (scale (0.01, 0.2)), drawn separately for
the policy and the reference pass as its code draws it afresh on each forward; MFPO's the global diffusion noise v'
(its paper's fallback where grounding fails), shared by both. The pass on m' reads all rows; the image term reads
the chosen rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ue_dpo.methods.base import PreferenceMethod, SecondImage, WeightedTokens
from ue_dpo.methods.noised_image import NOISED_IMAGE_KEYS
from ue_dpo.methods.ue import UE_KEYS, UEDPO

if TYPE_CHECKING:
    import torch

    from ue_dpo.core.loss import PreferenceLoss

POLICY_CROP, REFERENCE_CROP = "crop_policy", "crop_reference"


class MDPO(PreferenceMethod):
    name = "mdpo"
    summary = (
        "mDPO (luka-group/mDPO): DPO + an image term against a random 1-20% crop m' (drawn apart for policy and "
        "reference) + an anchor ℓ(β(s_w - r_w)), 1:1:1"
    )
    precomputed_reference_refusal = (
        "its image term needs the reference on the second image m', which the cache does not hold."
    )
    label_smoothing_refusal = "its three terms are plain sigmoid losses, as in its code."
    policy_image, reference_image = POLICY_CROP, REFERENCE_CROP

    @property
    def second_images(self) -> dict[str, SecondImage]:
        return {POLICY_CROP: SecondImage("crop"), REFERENCE_CROP: SecondImage("crop")}

    def weigh(self, step) -> WeightedTokens:
        return self.unweighted(step)

    def loss(self, step, tokens: WeightedTokens, *, beta: float, label_smoothing: float) -> PreferenceLoss:
        from ue_dpo.core.loss import weighted_sequence_logps  # loads torch (see `methods.base`)
        from ue_dpo.core.peer_losses import mdpo_loss

        response = tokens.response
        pairs, mask = response.pairs, response.mask
        reference_tokens = step.reference_token_logps()
        # the text term carries the method's token weights (1, or UE-DPO's λ); the image and anchor terms do not
        text_policy, text_reference = weighted_sequence_logps(
            tokens.policy_logps, reference_tokens, tokens.weights, mask, self.weight_target
        )
        plain_policy = (tokens.policy_logps * mask).sum(-1)
        plain_reference = (reference_tokens * mask).sum(-1)
        chosen_mask = mask[:pairs].to(tokens.policy_logps.dtype)
        policy_second = step.statistics(self.policy_image).target_logprob[:pairs]
        reference_second = step.reference_statistics(self.reference_image).target_logprob[:pairs]
        return mdpo_loss(
            plain_policy[:pairs],
            plain_policy[pairs:],
            plain_reference[:pairs],
            plain_reference[pairs:],
            (policy_second * chosen_mask).sum(-1),
            (reference_second * chosen_mask).sum(-1),
            beta=beta,
            image_term_mask=response.has_image[:pairs],
            text_margin=(text_policy[:pairs] - text_policy[pairs:]) - (text_reference[:pairs] - text_reference[pairs:]),
        )


class MFPO(MDPO):
    name = "mfpo"
    summary = (
        "MFPO (paper, no public code): mDPO's three terms (margin η = 0) with m' = v', the global diffusion noise "
        "of its grounding fallback, shared by policy and reference"
    )
    key_groups = (NOISED_IMAGE_KEYS,)
    policy_image = reference_image = "noised"

    @property
    def reads_noised_image(self) -> bool:
        return True

    @property
    def second_images(self) -> dict[str, SecondImage]:
        return {}


class MDPOWithUE(MDPO):
    """mDPO whose text term is UE-DPO's: λ from u and Δ (the `ue_*` keys) on its tokens, as `ue_weighting: ue`."""

    name = "mdpo_ue"
    summary = "mDPO with UE-DPO's λ (the ue_* keys) in its text-DPO term; its image and anchor terms unweighted"
    key_groups = (UE_KEYS, NOISED_IMAGE_KEYS)

    def __init__(self, args):
        super().__init__(args)
        self.text_weighting = UEDPO(args)

    @property
    def reads_noised_image(self) -> bool:
        return self.text_weighting.reads_noised_image

    @property
    def weight_target(self) -> str:
        return self.text_weighting.weight_target

    def weigh(self, step) -> WeightedTokens:
        return self.text_weighting.weigh(step)

    def metric_terms(self, tokens: WeightedTokens) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return self.text_weighting.metric_terms(tokens)
