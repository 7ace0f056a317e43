"""CHiP (LVUGAI/CHiP): DPO, the cross-modal term on v' and TDPO's KL term in one sigmoid, the paper's formula.

    h = [(s_w - s_l) - (r_w - r_l)] + [(s_w - r_w) - (s(y_w|v') - r(y_w|v'))] - α (KL_l - sg KL_w),  L = ℓ(β h)

KL_y = Σ_t KL(π_ref ‖ πθ) over the response's tokens (its code sums), from the reference's distribution kept at the
response positions of its clean pass (`StepForward.reference_statistics(..., keep_distribution=True)`), computed
chunked over the vocabulary. v' is the `ue_noise_*` image, shared by policy and reference as CHiP draws it once per
sample; or, with `chip_second_image: column`, each row's image in the dataset's `second_image` column.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from ue_dpo.argument_checks import UEDPOUserError, check_choice, check_number
from ue_dpo.methods.base import SUPPLIED_IMAGE, KeyGroup, MethodKey, PreferenceMethod, SecondImage, WeightedTokens
from ue_dpo.methods.noised_image import NOISED_IMAGE_KEYS, noise_keys_unread

if TYPE_CHECKING:
    from ue_dpo.core.loss import PreferenceLoss

DEFAULT_CHIP_ALPHA = 0.1  # CHiP's `tok_beta`
CHIP_SECOND_IMAGES = ("noise", "column")


def check_chip_keys(args) -> None:
    check_number("chip_alpha", args.chip_alpha)
    if not args.chip_alpha >= 0:
        raise UEDPOUserError(
            f"`chip_alpha: {args.chip_alpha}` must be >= 0 (the weight of TDPO's KL term; default "
            f"{DEFAULT_CHIP_ALPHA})."
        )
    check_choice("chip_second_image", args.chip_second_image, CHIP_SECOND_IMAGES)


CHIP_KEYS = KeyGroup(
    keys=(
        MethodKey(
            "chip_alpha",
            float | None,
            DEFAULT_CHIP_ALPHA,
            "α >= 0 of `ue_weighting: chip`: the weight of TDPO's KL term α(KL_l - sg KL_w) (CHiP's tok_beta, default "
            "0.1; 0 drops the term).",
        ),
        MethodKey(
            "chip_second_image",
            Literal[CHIP_SECOND_IMAGES] | None,
            "noise",
            "m' of `ue_weighting: chip`: noise (the default, CHiP's diffusion noise: v' of the ue_noise_* keys) or "
            "column (each row's image in the dataset's `second_image` column, registered in dataset_info.json; a row "
            "with an image and none there is refused).",
        ),
    ),
    refusal="`{key}` applies to {readers} only, but `ue_weighting: {method}`; remove `{key}` or set {readers}.",
    check=check_chip_keys,
)


class CHiP(PreferenceMethod):
    name = "chip"
    summary = (
        "CHiP (LVUGAI/CHiP): one sigmoid over DPO + the image term on v' - chip_alpha·(KL_l - sg KL_w), KL(π_ref ‖ "
        "πθ) summed over the response"
    )
    key_groups = (CHIP_KEYS, NOISED_IMAGE_KEYS)
    precomputed_reference_refusal = (
        "its KL term needs the reference's whole distribution at every response token, and its image term the "
        "reference on v'; the cache holds neither."
    )
    label_smoothing_refusal = "its loss is one plain sigmoid, as in its code."

    @classmethod
    def unread_keys(cls, args) -> dict[str, str]:
        return noise_keys_unread(args, "chip_second_image")

    @property
    def reads_noised_image(self) -> bool:
        return self.args.chip_second_image == "noise"

    @property
    def second_images(self) -> dict[str, SecondImage]:
        return {SUPPLIED_IMAGE: SecondImage("column")} if self.args.chip_second_image == "column" else {}

    @property
    def second_image(self) -> str:
        """The image of the passes on m'."""
        return SUPPLIED_IMAGE if self.args.chip_second_image == "column" else "noised"

    def weigh(self, step) -> WeightedTokens:
        import torch  # see `methods.base`

        reference = step.reference_statistics("clean", keep_distribution=True)
        clean = step.statistics("clean", kl_from_reference="clean")
        details = {"reference_logps": reference.target_logprob, "reference_kl": clean.reference_kl}
        return WeightedTokens(step.response, clean.target_logprob, torch.ones_like(clean.target_logprob), details)

    def loss(self, step, tokens: WeightedTokens, *, beta: float, label_smoothing: float) -> PreferenceLoss:
        from ue_dpo.core.peer_losses import chip_loss  # loads torch (see `methods.base`)

        pairs, mask = tokens.response.pairs, tokens.response.mask.to(tokens.policy_logps.dtype)
        policy = (tokens.policy_logps * mask).sum(-1)
        reference = (tokens.details["reference_logps"] * mask).sum(-1)
        divergence = (tokens.details["reference_kl"] * mask).sum(-1)
        policy_noised = (step.statistics(self.second_image).target_logprob[:pairs] * mask[:pairs]).sum(-1)
        reference_noised = (step.reference_statistics(self.second_image).target_logprob[:pairs] * mask[:pairs]).sum(-1)
        return chip_loss(
            policy[:pairs],
            policy[pairs:],
            reference[:pairs],
            reference[pairs:],
            policy_noised,
            reference_noised,
            divergence[:pairs],
            divergence[pairs:],
            beta=beta,
            alpha=self.args.chip_alpha,
        )
