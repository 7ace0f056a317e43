"""mDPO (luka-group/mDPO), MFPO (the paper's loss) and mDPO with UE-DPO's λ in its text term.

    L = ℓ(β[(s_w - s_l) - (r_w - r_l)]) + ℓ(β[(s(y_w|m) - s(y_w|m')) - (r(y_w|m) - r(y_w|m'))]) + ℓ(β[s_w - r_w])

(`core.peer_losses.mdpo_loss`). m' differs: mDPO's `RandomResizedCrop` (scale (0.01, 0.2)), drawn separately for
the policy and the reference pass as its code draws it afresh on each forward; MFPO's the global diffusion noise v'
(its paper's fallback where grounding fails), shared by both. Either can read m' from the dataset instead
(`mdpo_second_image: column`, `mfpo_second_image: column`), and MFPO can fill the regions of a mask column with v'
(`mfpo_second_image: region_mask`). The pass on m' reads all rows; the image term reads the chosen rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from ue_dpo.argument_checks import check_choice
from ue_dpo.methods.base import (
    SUPPLIED_IMAGE,
    KeyGroup,
    MethodKey,
    PreferenceMethod,
    SecondImage,
    WeightedTokens,
)
from ue_dpo.methods.noised_image import NOISED_IMAGE_KEYS, noise_keys_unread
from ue_dpo.methods.ue import UE_KEYS, UEDPO

if TYPE_CHECKING:
    import torch

    from ue_dpo.core.loss import PreferenceLoss

POLICY_CROP, REFERENCE_CROP = "crop_policy", "crop_reference"
REGION_NOISED = "region_noised"
MDPO_SECOND_IMAGES = ("crop", "column")
MFPO_SECOND_IMAGES = ("noise", "column", "region_mask")
SECOND_IMAGE_REFUSAL = (
    "`{key}` applies to {readers} only, but `ue_weighting: {method}`; remove `{key}` or set {readers}."
)

MDPO_IMAGE_KEYS = KeyGroup(
    keys=(
        MethodKey(
            "mdpo_second_image",
            Literal[MDPO_SECOND_IMAGES] | None,
            "crop",
            "m' of `ue_weighting: mdpo` and `mdpo_ue`: crop (the default, mDPO's random 1-20% crop, drawn apart for "
            "the policy and the reference) or column (each row's image in the dataset's `second_image` column, "
            "registered in dataset_info.json; a row with an image and none there is refused).",
        ),
    ),
    refusal=SECOND_IMAGE_REFUSAL,
    check=lambda args: check_choice("mdpo_second_image", args.mdpo_second_image, MDPO_SECOND_IMAGES),
)
MFPO_IMAGE_KEYS = KeyGroup(
    keys=(
        MethodKey(
            "mfpo_second_image",
            Literal[MFPO_SECOND_IMAGES] | None,
            "noise",
            "m' of `ue_weighting: mfpo`: noise (the default, the global noise v' of the ue_noise_* keys, MFPO's "
            "fallback where grounding fails), column (each row's image in the dataset's `second_image` column) or "
            "region_mask (v' inside the white regions of the row's `region_mask` image, the clean image elsewhere; "
            "v' everywhere where the mask has no white pixel). Columns are registered in dataset_info.json.",
        ),
    ),
    refusal=SECOND_IMAGE_REFUSAL,
    check=lambda args: check_choice("mfpo_second_image", args.mfpo_second_image, MFPO_SECOND_IMAGES),
)


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
    key_groups = (MDPO_IMAGE_KEYS,)

    @property
    def second_images(self) -> dict[str, SecondImage]:
        if self.args.mdpo_second_image == "column":
            return {SUPPLIED_IMAGE: SecondImage("column")}
        return {POLICY_CROP: SecondImage("crop"), REFERENCE_CROP: SecondImage("crop")}

    @property
    def policy_image(self) -> str:
        """The image of the policy's pass on m'."""
        return SUPPLIED_IMAGE if self.args.mdpo_second_image == "column" else POLICY_CROP

    @property
    def reference_image(self) -> str:
        return SUPPLIED_IMAGE if self.args.mdpo_second_image == "column" else REFERENCE_CROP

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
    key_groups = (NOISED_IMAGE_KEYS, MFPO_IMAGE_KEYS)

    @classmethod
    def unread_keys(cls, args) -> dict[str, str]:
        return noise_keys_unread(args, "mfpo_second_image")

    @property
    def reads_noised_image(self) -> bool:
        return self.args.mfpo_second_image == "noise"

    @property
    def second_images(self) -> dict[str, SecondImage]:
        if self.args.mfpo_second_image == "column":
            return {SUPPLIED_IMAGE: SecondImage("column")}
        if self.args.mfpo_second_image == "region_mask":
            return {REGION_NOISED: SecondImage("region_noise")}
        return {}

    @property
    def policy_image(self) -> str:
        return {"noise": "noised", "column": SUPPLIED_IMAGE, "region_mask": REGION_NOISED}[self.args.mfpo_second_image]

    @property
    def reference_image(self) -> str:
        return self.policy_image


class MDPOWithUE(MDPO):
    """mDPO whose text term is UE-DPO's: λ from u and Δ (the `ue_*` keys) on its tokens, as `ue_weighting: ue`."""

    name = "mdpo_ue"
    summary = "mDPO with UE-DPO's λ (the ue_* keys) in its text-DPO term; its image and anchor terms unweighted"
    key_groups = (UE_KEYS, NOISED_IMAGE_KEYS, MDPO_IMAGE_KEYS)

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
