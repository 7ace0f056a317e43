"""The keys of the counterfactual image v', read by every method that runs a pass on it."""

from typing import Literal

from ue_dpo.argument_checks import UEDPOUserError, check_choice, check_integer
from ue_dpo.methods.base import KeyGroup, MethodKey

NOISE_SPACES = ("pixel_values", "image")
NOISE_SCHEDULES = ("sigmoid", "linear")


def check_noise_keys(args) -> None:
    check_integer("ue_noise_step", args.ue_noise_step, "an integer in [0, 999]")
    if not 0 <= args.ue_noise_step <= 999:
        raise UEDPOUserError(f"`ue_noise_step: {args.ue_noise_step}` is out of range; use an integer in [0, 999].")
    if args.ue_seed is not None:
        check_integer("ue_seed", args.ue_seed, "an integer, or leave it out to use the training `seed`")
    check_choice("ue_noise_schedule", args.ue_noise_schedule, NOISE_SCHEDULES)
    check_choice("ue_noise_space", args.ue_noise_space, NOISE_SPACES)


NOISED_IMAGE_KEYS = KeyGroup(
    keys=(
        MethodKey(
            "ue_noise_step",
            int | None,
            500,
            "Diffusion step k in [0, 999] of the counterfactual image v' (default 500: sqrt(abar) ≈ 0.863).",
        ),
        MethodKey(
            "ue_noise_schedule",
            Literal[NOISE_SCHEDULES] | None,
            "sigmoid",
            "Beta schedule: sigmoid (VCD/TPO, 1e-5..5e-3, in float32 as they compute it; the default) or "
            "linear (DDPM, 1e-4..0.02).",
        ),
        MethodKey(
            "ue_noise_space",
            Literal[NOISE_SPACES] | None,
            "pixel_values",
            "Where the noise is added: pixel_values (the default; VCD: the processor's normalised tensor, one "
            "ε per image pixel, so Qwen2-VL's two temporal copies of a patch share it) or image (TPO: "
            "ToTensor, noise and ToPILImage on the image at its own resolution, before any resizing; "
            "ToPILImage's byte conversion truncates and wraps out-of-range values modulo 256, it does not "
            "clamp them).",
        ),
        MethodKey(
            "ue_seed",
            int | None,
            None,
            "Seed of the image noise; with the sample's content and the noise step it fixes v'. Default: the "
            "training `seed`.",
        ),
    ),
    refusal="`{key}: {value}` sets the noised image v', which `ue_weighting: {method}` does not use; remove `{key}` "
    "or use {readers}.",
    check=check_noise_keys,
)


def noise_keys_unread(args, key: str) -> dict[str, str]:
    """The keys of v' when `key: column` makes m' the dataset's image, so that no noise is drawn."""
    if getattr(args, key) != "column":
        return {}
    reason = f"with `{key}: column` m' is the dataset's `second_image`, and no noise is drawn"
    return dict.fromkeys(NOISED_IMAGE_KEYS.defaults, reason)
